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
features (scikit-learn).

Sign convention: every score is "higher = more uncertain (more likely FP)". The PCS-based scores use the
``one_minus_pcs`` map. MetaSeg classification scores ``P(FP)``, regression ``1 - predicted IoU_adj``.
All aggregations are one ``bincount`` per map over the lesion labels.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
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
      ``{"<u>_mean": f64[n], "<u>_logsum": f64[n], ... , "size": f64[n] (= 1/S), "voxels": i64[n] (= S)}``.
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
    return out


def metaseg_features(stats: Mapping[str, np.ndarray], estimators: Sequence[str] = DEFAULT_ESTIMATORS) -> np.ndarray:
    """MetaSeg inputs ``f64[n, len(estimators) + 1]``: the mean of each estimator, then the size S."""
    cols = [np.asarray(stats[f"{name}_mean"], np.float64) for name in estimators]
    cols.append(np.asarray(stats["voxels"], np.float64))
    return np.stack(cols, axis=1)


@dataclasses.dataclass(frozen=True)
class MetaSeg:
    """Fitted MetaSeg side learners.

    Attributes:
      classifier: standardise + logistic regression on TP/FP (``None`` if the training lesions are all
        TP or all FP: its score is then the constant training FP rate).
      regressor: standardise + linear regression on ``IoU_adj``.
      estimators: the estimator names of the feature columns.
      fp_rate: fraction of FP among the training lesions.
    """

    classifier: Optional[Any]
    regressor: Any
    estimators: tuple[str, ...]
    fp_rate: float


def fit_metaseg(
    features: np.ndarray,
    iou_adj: np.ndarray,
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    epsilon: float = FP_EPSILON,
) -> MetaSeg:
    """Fit MetaSeg's logistic (``IoU_adj < epsilon`` = FP) and linear (``IoU_adj``) models.

    Args:
      features: ``f64[n, k]`` from :func:`metaseg_features` (validation lesions).
      iou_adj: ``f32[n]`` targets.
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
    classifier = None
    if 0 < is_fp.sum() < len(is_fp):
        classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, is_fp)
    regressor = make_pipeline(StandardScaler(), LinearRegression()).fit(x, y)
    return MetaSeg(classifier, regressor, tuple(estimators), float(is_fp.mean()))


def metaseg_scores(model: MetaSeg, features: np.ndarray) -> dict[str, np.ndarray]:
    """``{"metaseg_classif": P(FP) f64[n], "metaseg_reg": 1 - predicted IoU_adj f64[n]}``."""
    x = np.asarray(features, np.float64)
    if x.shape[0] == 0:
        return {"metaseg_classif": np.zeros(0), "metaseg_reg": np.zeros(0)}
    if model.classifier is None:
        classif = np.full(x.shape[0], model.fp_rate)
    else:
        classes = list(model.classifier.classes_)
        classif = model.classifier.predict_proba(x)[:, classes.index(True)]
    return {"metaseg_classif": classif, "metaseg_reg": 1.0 - model.regressor.predict(x)}


def baseline_method_names(estimators: Sequence[str] = DEFAULT_ESTIMATORS) -> list[str]:
    """Score names produced by the baselines, in table order: means, logsums, size, MetaSeg."""
    names = [f"{e}_{agg}" for e in estimators for agg in ("mean", "logsum")]
    return names + ["size", "metaseg_classif", "metaseg_reg"]
