"""Method L end to end on lesion data: per-case lesions, fitting and scoring every method, evaluation.

Layers (each usable alone; the k-fold experiment that trains U-Nets or reads sample maps and runs these
layers per fold is :mod:`ugcn.experiments.lesion_protocol`):

1. :func:`case_lesions` — arrays in (image, predicted mask, named uncertainty maps, optional ground truth),
   lesions out: their table (size, centroid, ``IoU_adj``, TP/FP), graphs and baseline aggregations.
   No dependency on how the maps were made.
2. :func:`fit_lesion_methods` / :func:`score_lesion_methods` — fit the GCNN (classification and regression)
   and MetaSeg on validation lesions; score lesions with every method (higher = more uncertain).
3. :func:`evaluate_lesion_scores` — AUC of the accuracy-confidence curve and Spearman's rho against the
   lesion size for every method.
4. :func:`ugcn.experiments.lesion_protocol.run_protocol` — from a data set folder: k folds (25 % test, the
   rest 80 % train / 20 % validation); per fold a 3D U-Net trained on the train cases, T MC-dropout passes on
   validation and test cases, lesions, fitting on validation lesions, scoring test lesions. Writes the
   results table (the layout of the paper's Table 2: method -> AUC %, rho), per-fold Dice and TP/FP counts,
   every test lesion's scores, and the curves, as CSV/JSON/Markdown/PNG.

Conventions and edge cases:

* The predicted mask is the MC expectation's most probable class (``mask_from="mean"``: E_fg > 0.5), or
  the deterministic (dropout off) prediction with ``mask_from="deterministic"``.
* A case with no predicted lesion contributes no rows (and its Dice is still counted).
* A fold without any FP or without any TP test lesion has an undefined AUC (NaN); table AUCs are the mean
  over the folds where it is defined, and ``folds_defined`` says how many. The pooled AUC ranks all test
  lesions of all folds together.
* A fold without validation lesions cannot fit the learned methods (GCNN, MetaSeg): their scores for that
  fold are NaN, their AUC there is undefined, and a note says so.
* One-voxel lesions and lesions at the volume border are ordinary lesions (dilation is clipped).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ugcn.evaluate.accuracy_confidence import accuracy_confidence_curve, spearman
from ugcn.evaluate.metrics import dice
from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS, LesionGraphs, build_lesion_graphs, concat_lesion_graphs
from ugcn.lesion.baselines import (
    MetaSeg,
    baseline_method_names,
    fit_metaseg,
    fit_shape_baseline,
    lesion_statistics,
    metaseg_features,
    metaseg_scores,
    shape_features,
    shape_scores,
)
from ugcn.lesion.components import FP_EPSILON, LesionTable, lesion_table
from ugcn.lesion.gcnn import LesionModel, fit_gcnn, score_lesions

MASK_SOURCES = ("mean", "deterministic")

# --------------------------------------------------------------------------------------------------------
# 1. One case
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaseLesions:
    """The lesions of one case.

    Attributes:
      name: case name.
      table: :class:`LesionTable` (``n`` lesions; ``iou_adj``/``is_fp`` when ground truth was given).
      graphs: :class:`LesionGraphs` with ``n`` graphs (graph ``g`` = lesion ``g + 1``).
      stats: baseline aggregations ``{"<u>_mean", "<u>_logsum", "size", "voxels"}``, each ``[n]``.
      dice: Dice of the predicted mask against the ground truth (NaN without ground truth).
    """

    name: str
    table: LesionTable
    graphs: LesionGraphs
    stats: dict[str, np.ndarray]
    dice: float = float("nan")


def case_lesions(
    name: str,
    image: np.ndarray,
    pred_mask: np.ndarray,
    uncertainty: Mapping[str, np.ndarray],
    gt_mask: Optional[np.ndarray] = None,
    *,
    affine: Optional[np.ndarray] = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    epsilon: float = FP_EPSILON,
    logsum: str = "sum_of_logs",
) -> CaseLesions:
    """Lesions, graphs, targets and baseline aggregations of one case.

    Args:
      name: case name (for tables).
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      pred_mask: ``[X, Y, Z]`` predicted lesion mask (non-zero = lesion).
      uncertainty: name -> ``f32[X, Y, Z]`` voxel uncertainty maps (every name in ``estimators``).
      gt_mask: ``[X, Y, Z]`` ground truth, optional.
      affine: ``f64[4, 4]`` for millimetre centroids.
      estimators: maps used as node features and baseline aggregations.
      epsilon: FP threshold on ``IoU_adj``.
      logsum: see :func:`ugcn.lesion.baselines.lesion_statistics`.
    """
    pred_mask = np.asarray(pred_mask)
    if gt_mask is not None and np.shape(gt_mask) != pred_mask.shape:
        raise ValueError(f"{name}: ground truth shape {np.shape(gt_mask)} != prediction {pred_mask.shape}")
    table = lesion_table(pred_mask, gt_mask, affine=affine, epsilon=epsilon)
    graphs = build_lesion_graphs(table.labels, table.n, image, pred_mask, uncertainty, estimators)
    stats = lesion_statistics(table.labels, table.n, uncertainty, estimators, logsum=logsum)
    score = dice(pred_mask, gt_mask) if gt_mask is not None else float("nan")
    return CaseLesions(name, table, graphs, stats, score)


def uncertainty_from_samples(
    samples: np.ndarray, *, estimators: Sequence[str] = DEFAULT_ESTIMATORS
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The predicted mask and the voxel uncertainty maps of T samples of any model.

    Args:
      samples: ``f32[T, X, Y, Z, C]`` class probabilities (e.g. from
        :func:`ugcn.uncertainty.sampling.load_sample_maps`, which reads a 4D NIfTI of T foreground maps).
      estimators: registry names of the maps to compute.

    Returns:
      ``(pred_mask u8[X, Y, Z], {estimator: f32[X, Y, Z]})``: the mask is the expectation's most probable
      class being foreground (E_fg > 0.5 for binary maps), as ``mask_from="mean"`` does for MC dropout.
    """
    from ugcn.uncertainty.sources import from_samples

    if np.ndim(samples) != 5 or np.shape(samples)[-1] < 2:
        raise ValueError(f"samples must be [T, X, Y, Z, C] with C >= 2, got shape {tuple(np.shape(samples))}")
    sampled = from_samples(samples, list(estimators), keep_samples=False)
    return (sampled.prediction > 0).astype(np.uint8), sampled.maps


@dataclasses.dataclass(frozen=True)
class LesionSet:
    """The lesions of several cases, concatenated (``n`` lesions in all).

    Attributes:
      graphs: :class:`LesionGraphs` with ``n`` graphs.
      stats: baseline aggregations, each ``[n]``.
      iou_adj: ``f32[n]`` (NaN without ground truth).
      is_fp: ``bool[n]``.
      case: ``[n]`` case name of each lesion; ``lesion``: ``i64[n]`` lesion id within its case.
    """

    graphs: LesionGraphs
    stats: dict[str, np.ndarray]
    iou_adj: np.ndarray
    is_fp: np.ndarray
    case: np.ndarray
    lesion: np.ndarray

    @property
    def n(self) -> int:
        return self.graphs.num_graphs


def merge_cases(cases: Sequence[CaseLesions]) -> LesionSet:
    """Concatenate the lesions of ``cases`` (which must use the same estimators)."""
    if not cases:
        raise ValueError("merge_cases: no cases")
    keys = list(cases[0].stats)
    n = [c.table.n for c in cases]
    iou = [c.table.iou_adj if c.table.iou_adj is not None else np.full(c.table.n, np.nan, np.float32) for c in cases]
    fp = [c.table.is_fp if c.table.is_fp is not None else np.zeros(c.table.n, bool) for c in cases]
    return LesionSet(
        graphs=concat_lesion_graphs([c.graphs for c in cases]),
        stats={k: np.concatenate([c.stats[k] for c in cases]) for k in keys},
        iou_adj=np.concatenate(iou).astype(np.float32),
        is_fp=np.concatenate(fp).astype(bool),
        case=np.repeat(np.array([c.name for c in cases], dtype=object), n),
        lesion=np.concatenate([np.arange(1, k + 1) for k in n]).astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------------
# 2. Fitting and scoring every method
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LesionMethods:
    """Fitted learned methods (``None`` when there was nothing to fit on)."""

    gcnn_classif: Optional[LesionModel]
    gcnn_reg: Optional[LesionModel]
    metaseg: Optional[MetaSeg]
    estimators: tuple[str, ...]
    shape: Optional[MetaSeg] = None


#: Methods fitted on validation lesions (unreliable when the validation set holds too few FP lesions).
LEARNED_METHODS = ("gcnn_classif", "gcnn_reg", "metaseg_classif", "metaseg_reg", "shape_logreg")
#: The methods under test; every other method is a baseline.
GCNN_METHODS = ("gcnn_classif", "gcnn_reg")


def method_names(estimators: Sequence[str] = DEFAULT_ESTIMATORS) -> list[str]:
    """Every method, in the order of the paper's Table 2, then the lesion-shape baseline ``shape_logreg``."""
    return ["gcnn_classif", "gcnn_reg"] + baseline_method_names(estimators) + ["shape_logreg"]


def fit_lesion_methods(
    val: LesionSet,
    *,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    gcnn_epochs: int = 100,
    gcnn_batch_size: int = 10,
    seed: int = 0,
    epsilon: float = FP_EPSILON,
    progress: bool = False,
) -> LesionMethods:
    """Fit GCNN-classif, GCNN-reg, MetaSeg and the shape baseline on validation lesions (nothing is fitted when
    there are none)."""
    estimators = tuple(estimators)
    if val.n == 0:
        return LesionMethods(None, None, None, estimators)
    if np.any(np.isnan(val.iou_adj)):
        raise ValueError("fit_lesion_methods: validation lesions need ground truth (IoU_adj)")
    common: dict[str, Any] = dict(epochs=gcnn_epochs, seed=seed, batch_size=gcnn_batch_size, epsilon=epsilon,
                                  progress=progress)
    classif = fit_gcnn(val.graphs, val.iou_adj, task="classification", **common)
    reg = fit_gcnn(val.graphs, val.iou_adj, task="regression", **common)
    meta = fit_metaseg(metaseg_features(val.stats, estimators), val.iou_adj, estimators=estimators, epsilon=epsilon)
    shape = fit_shape_baseline(shape_features(val.stats), val.iou_adj, epsilon=epsilon)
    return LesionMethods(classif, reg, meta, estimators, shape)


def score_lesion_methods(methods: LesionMethods, lesions: LesionSet) -> dict[str, np.ndarray]:
    """Every method's lesion uncertainty ``f64[n]`` (higher = more uncertain); NaN for unfitted methods."""
    n = lesions.n
    est = methods.estimators
    scores: dict[str, np.ndarray] = {}
    for key, model in (("gcnn_classif", methods.gcnn_classif), ("gcnn_reg", methods.gcnn_reg)):
        scores[key] = score_lesions(model, lesions.graphs).astype(np.float64) if model else np.full(n, np.nan)
    for e in est:
        scores[f"{e}_mean"] = np.asarray(lesions.stats[f"{e}_mean"], np.float64)
        scores[f"{e}_logsum"] = np.asarray(lesions.stats[f"{e}_logsum"], np.float64)
    scores["size"] = np.asarray(lesions.stats["size"], np.float64)
    if methods.metaseg is not None:
        scores.update(metaseg_scores(methods.metaseg, metaseg_features(lesions.stats, est)))
    else:
        scores["metaseg_classif"] = np.full(n, np.nan)
        scores["metaseg_reg"] = np.full(n, np.nan)
    scores["shape_logreg"] = (shape_scores(methods.shape, shape_features(lesions.stats)) if methods.shape is not None
                              else np.full(n, np.nan))
    return {name: scores[name] for name in method_names(est)}


# --------------------------------------------------------------------------------------------------------
# 3. Evaluating rankings
# --------------------------------------------------------------------------------------------------------


def evaluate_lesion_scores(
    scores: Mapping[str, np.ndarray], is_fp: np.ndarray, voxels: np.ndarray
) -> dict[str, dict[str, Any]]:
    """``{method: {"auc", "spearman", "curve"}}``; NaN scores (unfitted method) give NaN metrics, no curve."""
    out = {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64)
        if s.size and np.all(np.isfinite(s)):
            curve = accuracy_confidence_curve(s, is_fp)
            out[name] = {"auc": curve.auc, "spearman": spearman(s, voxels), "curve": curve}
        else:
            out[name] = {"auc": float("nan"), "spearman": float("nan"), "curve": None}
    return out
