"""Lesion uncertainty baselines (method L, step 5).

For every listed voxel-uncertainty estimator ``u`` (default entropy, variance, 1 - PCS):

* ``<u>_mean``: mean of ``u`` over the lesion's voxels;
* ``<u>_logsum``: by default the *sum of the logs* ``sum_v log u(v)`` over the lesion's voxels (Nair et
  al., cited by the paper, which says the logsum "assigns a higher uncertainty to small lesions" and
  reports Spearman rho ~ -0.98 against size). The reading "log of the sum" is available as
  ``logsum="log_of_sum"``, but it grows with the lesion (rho ~ +1 against size, AUC far below 50 % on the
  phantoms), which contradicts the published figures, so it is not the default.

plus ``size`` (``1 / S``, S the voxel count) and the MetaSeg side learners: a logistic regression (TP/FP)
and a linear regression (``IoU_adj``) on ``[mean of every listed estimator..., S]`` with standardised
features (fitted with scikit-learn, kept as coefficients so they are saved as JSON), and a shape baseline
(not in the paper): the same logistic regression on lesion shape descriptors alone (size, surface
fraction, bounding-box fill, elongation, extent), no uncertainty at all. A lesion-uncertainty method that
does not beat it has learned nothing beyond the shape of the mask.

Sign convention: every score is "higher = more uncertain (more likely FP)". The PCS-based scores use the
``one_minus_pcs`` map. MetaSeg classification scores ``P(FP)``, regression ``1 - predicted IoU_adj``.
All aggregations are one ``bincount`` per map over the lesion labels.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.preprocessing import StandardScaler

from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS
from ugcn.lesion.components import FP_EPSILON

LOGSUM_MODES = ("log_of_sum", "sum_of_logs")
#: Floor applied before a log (uncertainties can be exactly 0).
LOG_FLOOR = 1e-12


def lesion_statistics(
    labels: np.ndarray,
    n: int,
    uncertainty: Mapping[str, np.ndarray],
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    *,
    logsum: str = "sum_of_logs",
) -> dict[str, np.ndarray]:
    """Mean, logsum and size scores of every lesion of one volume.

    Args:
      labels: ``int[X, Y, Z]`` lesions ``1..n``.
      n: number of lesions.
      uncertainty: name -> ``f32[X, Y, Z]`` voxel uncertainty (higher = more uncertain).
      estimators: which maps to aggregate.
      logsum: ``"sum_of_logs"`` (default, Nair et al., matches the paper's rho) or ``"log_of_sum"``.

    Returns:
      ``{"<u>_mean": f64[n], "<u>_logsum": f64[n], ... , "size": f64[n] (= 1/S), "voxels": i64[n] (= S)}``
      and the shape descriptors of :func:`lesion_shape_statistics` (``"shape_*"``).
    """
    if logsum not in LOGSUM_MODES:
        raise ValueError(f"logsum must be one of {LOGSUM_MODES}, got {logsum!r}")
    labels = np.asarray(labels)
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    ids = flat[fg].astype(np.int64)
    voxels = np.bincount(ids, minlength=n + 1)[1:].astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for name in estimators:
        if name not in uncertainty:
            raise ValueError(f"uncertainty map {name!r} is missing (have {sorted(uncertainty)})")
        u = np.asarray(uncertainty[name], np.float64)
        if u.shape != labels.shape:
            raise ValueError(f"uncertainty map {name!r}: shape {u.shape} != labels {labels.shape}")
        values = u.ravel()[fg]
        if not np.all(np.isfinite(values)):
            raise ValueError(f"uncertainty map {name!r}: NaN or infinite values inside lesions")
        total = np.bincount(ids, weights=values, minlength=n + 1)[1:]
        out[f"{name}_mean"] = total / np.maximum(voxels, 1)
        if logsum == "log_of_sum":
            out[f"{name}_logsum"] = np.log(np.maximum(total, LOG_FLOOR))
        else:
            logs = np.log(np.maximum(values, LOG_FLOOR))
            out[f"{name}_logsum"] = np.bincount(ids, weights=logs, minlength=n + 1)[1:]
    out["size"] = 1.0 / np.maximum(voxels, 1)
    out["voxels"] = voxels
    out.update(lesion_shape_statistics(labels, n))
    return out


def metaseg_features(stats: Mapping[str, np.ndarray], estimators: Sequence[str] = DEFAULT_ESTIMATORS) -> np.ndarray:
    """MetaSeg inputs ``f64[n, len(estimators) + 1]``: the mean of each estimator, then the size S."""
    cols = [np.asarray(stats[f"{name}_mean"], np.float64) for name in estimators]
    cols.append(np.asarray(stats["voxels"], np.float64))
    return np.stack(cols, axis=1)


@dataclasses.dataclass(frozen=True)
class MetaSeg:
    """Fitted MetaSeg side learners, as plain arrays (standardisation, then linear models).

    Fitted with scikit-learn, kept as coefficients so that they are saved as JSON and scored with numpy.

    Attributes:
      mean, scale: ``f64[k]`` feature standardisation.
      classif_coef, classif_intercept: logistic regression on TP/FP (``f64[k]``, float) or ``None`` when
        the training lesions are all TP or all FP (its score is then the constant training FP rate).
      reg_coef, reg_intercept: linear regression on ``IoU_adj``.
      estimators: the estimator names of the feature columns (MetaSeg); ``()`` for other feature sets.
      fp_rate: fraction of FP among the training lesions.
      features: name of the feature set (``"metaseg"`` or ``"shape"``).
    """

    mean: np.ndarray
    scale: np.ndarray
    classif_coef: Optional[np.ndarray]
    classif_intercept: Optional[float]
    reg_coef: np.ndarray
    reg_intercept: float
    estimators: tuple[str, ...]
    fp_rate: float
    features: str = "metaseg"

    def to_json(self) -> dict:
        """A JSON-ready dict (read back by :meth:`from_json`)."""
        listed = lambda a: None if a is None else [float(v) for v in np.asarray(a).reshape(-1)]  # noqa: E731
        return {"kind": "ugcn.lesion.side_learner", "features": self.features, "estimators": list(self.estimators),
                "mean": listed(self.mean), "scale": listed(self.scale), "classif_coef": listed(self.classif_coef),
                "classif_intercept": self.classif_intercept, "reg_coef": listed(self.reg_coef),
                "reg_intercept": float(self.reg_intercept), "fp_rate": float(self.fp_rate)}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> MetaSeg:
        """Inverse of :meth:`to_json`; raises ``ValueError`` on a malformed payload."""
        try:
            if payload.get("kind") != "ugcn.lesion.side_learner":
                raise ValueError(f"kind {payload.get('kind')!r}")
            def vec(v):
                return np.asarray(v, np.float64)

            model = cls(vec(payload["mean"]), vec(payload["scale"]),
                        None if payload["classif_coef"] is None else vec(payload["classif_coef"]),
                        None if payload["classif_intercept"] is None else float(payload["classif_intercept"]),
                        vec(payload["reg_coef"]), float(payload["reg_intercept"]), tuple(payload["estimators"]),
                        float(payload["fp_rate"]), str(payload.get("features", "metaseg")))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a valid MetaSeg/side-learner record ({err})") from None
        k = model.mean.shape[0]
        if model.scale.shape != (k,) or model.reg_coef.shape != (k,) or (
                model.classif_coef is not None and model.classif_coef.shape != (k,)):
            raise ValueError("not a valid MetaSeg/side-learner record (coefficient lengths differ)")
        return model


def fit_metaseg(
    features: np.ndarray,
    iou_adj: np.ndarray,
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    epsilon: float = FP_EPSILON,
    feature_set: str = "metaseg",
) -> MetaSeg:
    """Fit MetaSeg's logistic (``IoU_adj < epsilon`` = FP) and linear (``IoU_adj``) models.

    Args:
      features: ``f64[n, k]`` from :func:`metaseg_features` (or :func:`shape_features`), validation lesions.
      iou_adj: ``f32[n]`` targets.
      estimators: names of the MetaSeg feature columns (recorded).
      epsilon: FP threshold.
      feature_set: name recorded with the model (``"metaseg"``, ``"shape"``).
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(iou_adj, np.float64)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"fit_metaseg: features {x.shape} and targets {y.shape} do not match")
    if x.shape[0] == 0:
        raise ValueError("fit_metaseg: no lesions to fit on")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("fit_metaseg: NaN or infinite features/targets")
    is_fp = y < epsilon
    scaler = StandardScaler().fit(x)
    z = scaler.transform(x)
    coef = intercept = None
    if 0 < is_fp.sum() < len(is_fp):
        logistic = LogisticRegression(max_iter=1000).fit(z, is_fp)
        sign = 1.0 if bool(logistic.classes_[1]) else -1.0  # make the coefficients score P(FP)
        coef, intercept = sign * logistic.coef_[0].astype(np.float64), float(sign * logistic.intercept_[0])
    linear = LinearRegression().fit(z, y)
    return MetaSeg(scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64), coef, intercept,
                   linear.coef_.astype(np.float64), float(linear.intercept_), tuple(estimators),
                   float(is_fp.mean()), feature_set)


def metaseg_scores(model: MetaSeg, features: np.ndarray) -> dict[str, np.ndarray]:
    """``{"metaseg_classif": P(FP) f64[n], "metaseg_reg": 1 - predicted IoU_adj f64[n]}``."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or x.shape[1] != model.mean.shape[0]:
        raise ValueError(f"metaseg_scores: features {x.shape}, the model was fitted on {model.mean.shape[0]} columns")
    if x.shape[0] == 0:
        return {"metaseg_classif": np.zeros(0), "metaseg_reg": np.zeros(0)}
    z = (x - model.mean) / model.scale
    if model.classif_coef is None:
        classif = np.full(x.shape[0], model.fp_rate)
    else:
        classif = 1.0 / (1.0 + np.exp(-(z @ model.classif_coef + model.classif_intercept)))
    return {"metaseg_classif": classif, "metaseg_reg": 1.0 - (z @ model.reg_coef + model.reg_intercept)}


#: Columns of :func:`shape_features`.
SHAPE_FEATURES = ("shape_log_size", "shape_surface_fraction", "shape_fill", "shape_elongation", "shape_log_extent")


def lesion_shape_statistics(labels: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Shape descriptors of every lesion (no intensities, no uncertainty), each ``f64[n]``.

    * ``shape_log_size``: log of the voxel count S;
    * ``shape_surface_fraction``: share of the lesion's voxels with a 6-neighbour outside it;
    * ``shape_fill``: S / volume of its bounding box;
    * ``shape_elongation``: sqrt of the largest over the smallest eigenvalue of the voxel-coordinate
      covariance (each voxel counted as a unit cube: + 1/12 per axis), 1 for a sphere;
    * ``shape_log_extent``: log of the longest bounding-box side (voxels).

    Args:
      labels: ``int[X, Y, Z]`` lesions ``1..n`` (0 = background).
      n: number of lesions.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"lesion_shape_statistics: labels must be 3D, got {labels.shape}")
    if n == 0:
        return {k: np.zeros(0) for k in SHAPE_FEATURES}
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    ids = flat[fg].astype(np.int64)
    size = np.maximum(np.bincount(ids, minlength=n + 1)[1:], 1).astype(np.float64)  # absent ids: 1 (no NaN)
    coords = np.stack(np.unravel_index(fg, labels.shape), axis=1).astype(np.float64)  # [m, 3]
    # Surface voxels: a 6-neighbour (or the volume's outside) carries another label.
    padded = np.pad(labels, 1)
    core = padded[1:-1, 1:-1, 1:-1]
    interior = np.ones(labels.shape, bool)
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1] == core
    surface = np.bincount(ids, weights=~interior.ravel()[fg], minlength=n + 1)[1:]
    # Bounding boxes: min/max per lesion along each axis (sort by label, reduce per run).
    order = np.argsort(ids, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(ids[order]) != 0])
    sorted_coords = coords[order]
    extent = np.ones((n, 3))
    extent[ids[order][starts] - 1] = (np.maximum.reduceat(sorted_coords, starts, axis=0)
                                      - np.minimum.reduceat(sorted_coords, starts, axis=0) + 1.0)
    # Coordinate covariance per lesion from first and second moments.
    mean = np.stack([np.bincount(ids, weights=coords[:, a], minlength=n + 1)[1:] for a in range(3)], 1) / size[:, None]
    second = np.stack([np.stack([np.bincount(ids, weights=coords[:, a] * coords[:, b], minlength=n + 1)[1:]
                                 for b in range(3)], 1) for a in range(3)], 1) / size[:, None, None]
    cov = second - mean[:, :, None] * mean[:, None, :] + np.eye(3) / 12.0
    eig = np.linalg.eigvalsh(cov)  # ascending, [n, 3]
    return {
        "shape_log_size": np.log(size),
        "shape_surface_fraction": surface / size,
        "shape_fill": size / np.prod(extent, axis=1),
        "shape_elongation": np.sqrt(eig[:, 2] / np.maximum(eig[:, 0], 1e-12)),
        "shape_log_extent": np.log(extent.max(axis=1)),
    }


def shape_features(stats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Inputs ``f64[n, 5]`` of the shape baseline: the columns :data:`SHAPE_FEATURES` of ``stats``."""
    missing = [k for k in SHAPE_FEATURES if k not in stats]
    if missing:
        raise ValueError(f"shape_features: statistics lack {missing} (made by lesion_statistics)")
    return np.stack([np.asarray(stats[k], np.float64) for k in SHAPE_FEATURES], axis=1)


def fit_shape_baseline(features: np.ndarray, iou_adj: np.ndarray, *, epsilon: float = FP_EPSILON) -> MetaSeg:
    """Logistic regression (TP/FP) on :func:`shape_features`: the lesion-shape baseline a GCNN must beat."""
    return fit_metaseg(features, iou_adj, estimators=(), epsilon=epsilon, feature_set="shape")


def shape_scores(model: MetaSeg, features: np.ndarray) -> np.ndarray:
    """``P(FP)`` ``f64[n]`` of the shape baseline."""
    return metaseg_scores(model, features)["metaseg_classif"]


def baseline_method_names(estimators: Sequence[str] = DEFAULT_ESTIMATORS) -> list[str]:
    """Score names produced by the baselines, in table order: means, logsums, size, MetaSeg."""
    names = [f"{e}_{agg}" for e in estimators for agg in ("mean", "logsum")]
    return names + ["size", "metaseg_classif", "metaseg_reg"]


#: File of the side learners inside a lesion model folder.
SIDE_LEARNERS_FILE = "side_learners.json"


def side_learners_text(models: Mapping[str, MetaSeg]) -> str:
    """The JSON text of ``side_learners.json`` for ``{name: MetaSeg}`` (e.g. ``{"metaseg": ..., "shape": ...}``)."""
    payload = {"kind": "ugcn.lesion.side_learners", "models": {k: m.to_json() for k, m in models.items()}}
    return json.dumps(payload, indent=2) + "\n"


def save_side_learners(directory, models: Mapping[str, MetaSeg]) -> Path:
    """Write ``{name: MetaSeg}`` as ``directory/side_learners.json`` (atomically; replaces an existing file).

    With a lesion model, prefer ``save_lesion_model(..., extra_files={SIDE_LEARNERS_FILE:
    side_learners_text(models)})``: one atomic write of the whole model directory."""
    from ugcn.io import write_text_atomic

    path = Path(directory) / SIDE_LEARNERS_FILE
    write_text_atomic(path, side_learners_text(models))
    return path


def load_side_learners(directory) -> dict[str, MetaSeg]:
    """Read :func:`save_side_learners`'s file; ``{}`` when the folder has none (a model from an older ugcn)."""
    path = Path(directory) / SIDE_LEARNERS_FILE
    if not path.is_file():
        return {}
    try:
        payload = json.loads(path.read_text())
        if payload.get("kind") != "ugcn.lesion.side_learners":
            raise ValueError(f"kind {payload.get('kind')!r}")
        return {k: MetaSeg.from_json(v) for k, v in payload["models"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: not a valid side-learner file ({err})") from None
