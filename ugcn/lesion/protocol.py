"""Method L end to end: per-case lesion data, fitting and scoring every method, the 4-fold protocol.

Layers (each usable alone):

1. :func:`case_lesions` — arrays in (image, predicted mask, named uncertainty maps, optional ground truth),
   lesions out: their table (size, centroid, ``IoU_adj``, TP/FP), graphs and baseline aggregations.
   No dependency on how the maps were made.
2. :func:`fit_lesion_methods` / :func:`score_lesion_methods` — fit the GCNN (classification and regression)
   and MetaSeg on validation lesions; score lesions with every method (higher = more uncertain).
3. :func:`evaluate_lesion_scores` — AUC of the accuracy-confidence curve and Spearman's rho against the
   lesion size for every method.
4. :func:`run_protocol` — from a data set folder: k folds (25 % test, the rest 80 % train / 20 %
   validation); per fold a 3D U-Net trained on the train cases, T MC-dropout passes on validation and test
   cases, lesions, fitting on validation lesions, scoring test lesions. Writes the results table (the layout
   of the paper's Table 2: method -> AUC %, rho), per-fold Dice and TP/FP counts, every test lesion's
   scores, and the curves, as CSV/JSON/Markdown/PNG.

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

import csv
import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from ugcn.evaluate.accuracy_confidence import AccuracyConfidence, accuracy_confidence_curve, spearman
from ugcn.evaluate.metrics import dice
from ugcn.evaluate.plots import plot_accuracy_confidence
from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS, LesionGraphs, build_lesion_graphs, concat_lesion_graphs
from ugcn.io import atomic_directory, jsonable
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
    import jax.numpy as jnp

    from ugcn.uncertainty import estimator_maps
    from ugcn.uncertainty.stats import stats_from_samples

    samples = jnp.asarray(samples, jnp.float32)
    if samples.ndim != 5 or samples.shape[-1] < 2:
        raise ValueError(f"samples must be [T, X, Y, Z, C] with C >= 2, got shape {tuple(samples.shape)}")
    stats = stats_from_samples(samples)
    names = list(estimators)
    maps = {k: np.asarray(v, np.float32) for k, v in estimator_maps(names, stats, samples).items()}
    pred = (np.argmax(np.asarray(stats.sum_p / stats.count), axis=-1) > 0).astype(np.uint8)
    return pred, maps


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
    common = dict(epochs=gcnn_epochs, seed=seed, batch_size=gcnn_batch_size, epsilon=epsilon, progress=progress)
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
            curve: Optional[AccuracyConfidence] = accuracy_confidence_curve(s, is_fp)
            out[name] = {"auc": curve.auc, "spearman": spearman(s, voxels), "curve": curve}
        else:
            out[name] = {"auc": float("nan"), "spearman": float("nan"), "curve": None}
    return out


# --------------------------------------------------------------------------------------------------------
# 4. The k-fold protocol
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LesionProtocolConfig:
    """Settings of :func:`run_protocol` (defaults: the paper's protocol with a CPU-sized U-Net).

    Attributes:
      folds, val_fraction, seed: k folds, validation share of the non-test cases, seed of everything.
      estimators: voxel uncertainty maps (registry names of :mod:`ugcn.uncertainty`).
      mc_samples, mc_chunk: T MC-dropout passes, evaluated ``mc_chunk`` at a time.
      mask_from: ``"mean"`` (MC expectation) or ``"deterministic"`` (dropout off).
      unet_*: the 3D U-Net (``ugcn.segment.UNetConfig`` / ``train_model`` settings); ``unet_dropout``
        None = docs/method.md's 0.2 (tiny CPU networks need ~0.1 to train in a few hundred steps);
        ``unet_patch_overlap``: share of a patch overlapped by its neighbours at inference (0.5 costs 8
        network passes per voxel in 3D; 0 with a patch that tiles the volume costs one);
        ``unet_inference_patch``: tile size of MC dropout when it differs from the training patch.
      gcnn_epochs, gcnn_batch_size: GCNN training.
      epsilon: FP threshold on ``IoU_adj``.
      logsum: ``"log_of_sum"`` or ``"sum_of_logs"`` (see :mod:`ugcn.lesion.baselines`).
      min_val_fp: a fold whose validation set holds fewer FP lesions is unreliable for the learned methods
        and left out of the evaluation (:mod:`ugcn.evaluate.lesion_summary`).
      n_bootstrap: subject-bootstrap replicates of every confidence interval.
      samples_dir: instead of training a U-Net per fold: a folder of 4D NIfTI ``(X, Y, Z, T)`` of T foreground
        probability maps per case (``<case>.nii.gz`` or ``<case>_samples.nii.gz``), from any model; the
        U-Net settings are then unused. The model must not have been trained on the cases it is evaluated on.
      write_cases: write ``cases/<case>/`` (prediction, lesion ids, uncertainty maps) for every test case.
    """

    folds: int = 4
    val_fraction: float = 0.2
    seed: int = 0
    estimators: tuple[str, ...] = DEFAULT_ESTIMATORS
    mc_samples: int = 20
    mc_chunk: int = 4
    mask_from: str = "mean"
    unet_base_features: int = 8
    unet_depth: int = 2
    unet_patch: Optional[tuple[int, int, int]] = None
    unet_patch_overlap: float = 0.5
    unet_inference_patch: Optional[tuple[int, int, int]] = None
    unet_epochs: int = 10
    unet_steps_per_epoch: int = 20
    unet_batch_size: int = 4
    unet_learning_rate: float = 1e-3
    unet_dropout: Optional[float] = None
    gcnn_epochs: int = 100
    gcnn_batch_size: int = 10
    epsilon: float = FP_EPSILON
    logsum: str = "sum_of_logs"
    min_val_fp: int = 5
    n_bootstrap: int = 2000
    samples_dir: Optional[str] = None
    write_cases: bool = True

    def __post_init__(self) -> None:
        if int(self.min_val_fp) < 0:
            raise ValueError(f"min_val_fp must be >= 0, got {self.min_val_fp!r}")
        if int(self.n_bootstrap) < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {self.n_bootstrap!r}")
        if self.samples_dir is not None:
            if not Path(self.samples_dir).is_dir():
                raise ValueError(f"samples_dir {self.samples_dir}: no such folder")
            object.__setattr__(self, "samples_dir", str(self.samples_dir))
        if self.mask_from not in MASK_SOURCES:
            raise ValueError(f"mask_from must be one of {MASK_SOURCES}, got {self.mask_from!r}")
        for name in ("folds", "mc_samples", "mc_chunk", "unet_epochs", "gcnn_epochs", "gcnn_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.estimators:
            raise ValueError("estimators: give at least one uncertainty estimator")
        object.__setattr__(self, "estimators", tuple(self.estimators))
        for name in ("unet_patch", "unet_inference_patch"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(int(p) for p in getattr(self, name)))


def mc_uncertainty(
    model: Any,
    image: np.ndarray,
    key: Any,
    *,
    estimators: Sequence[str],
    n_samples: int = 20,
    chunk_size: int = 4,
    mask_from: str = "mean",
    volume_fn: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """MC dropout on one image: ``(pred_mask u8[X, Y, Z], {estimator: f32[X, Y, Z]})``.

    Args:
      model: a ``ugcn.segment.SegmentationModel``.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      key: a ``jax.random`` key.
      volume_fn: the stochastic volume function of ``model`` (pass the same one for every image, so the
        sampler compiles once).
    """
    from ugcn.segment import make_volume_fn, predict_mask
    from ugcn.uncertainty import estimator_maps, mc_sample

    if volume_fn is None:
        volume_fn = make_volume_fn(model, stochastic=True)
    result = mc_sample(volume_fn, image, key, n_samples=n_samples, chunk_size=chunk_size)
    maps = {k: np.asarray(v, np.float32) for k, v in estimator_maps(list(estimators), result.stats).items()}
    if mask_from == "mean":
        mean = np.asarray(result.stats.sum_p / result.stats.count)
        pred = (np.argmax(mean, axis=-1) > 0).astype(np.uint8)
    else:
        pred = (predict_mask(model, image) > 0).astype(np.uint8)
    return pred, maps


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """What :func:`run_protocol` measured.

    Attributes:
      table: one dict per method (:func:`ugcn.evaluate.lesion_summary.summarize_lesion_rankings`):
        ``method``, pooled ``auc_pct`` with its subject-bootstrap interval ``auc_low_pct``/``auc_high_pct``,
        ``auc_mean_pct`` (mean over folds), ``delta_pct`` (to the best baseline) with its interval,
        ``spearman`` (against the size), ``retention_auc``, ``auc_all_folds_pct``, ``reliable``, per-fold AUCs.
      folds: one dict per fold: ``fold, dice, tp, fp`` (test lesions), ``val_tp, val_fp``, ``missed``
        (ground-truth test lesions no prediction touches), ``reliable``, train/val/test case counts.
      lesions: one dict per test lesion (fold, case, lesion, size = voxel count, iou_adj, fp, every score;
        the Size method's score is ``size_score``).
      curves: pooled accuracy-confidence curve of each method over the evaluated folds (``None`` when undefined).
      notes: remarks on unreliable folds and undefined quantities.
      seconds: wall time.
      summary: best baseline, evaluated/unreliable folds, lesion and subject counts, bootstrap settings.
    """

    table: list[dict]
    folds: list[dict]
    lesions: list[dict]
    curves: dict[str, Optional[AccuracyConfidence]]
    notes: list[str]
    seconds: float
    summary: dict = dataclasses.field(default_factory=dict)

    def markdown(self) -> str:
        """The results as Markdown: methods table, per-fold table, notes."""
        sm = self.summary
        level = int(round(100 * sm.get("bootstrap", {}).get("level", 0.95)))
        best = sm.get("best_baseline")
        lines = [
            f"Test lesions of folds {sm.get('evaluated_folds')}: {sm.get('lesions')} ({sm.get('tp')} TP, "
            f"{sm.get('fp')} FP) of {sm.get('subjects')} subjects; {level} % intervals from "
            f"{sm.get('bootstrap', {}).get('replicates')} bootstrap replicates of the subjects; best baseline: "
            f"{best}.", "",
            f"| Method | pooled AUC (%) [{level} % CI] | mean over folds (%) | Δ vs {best} [{level} % CI] | "
            "Spearman ρ (size) | retention AUC | folds |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in self.table:
            flag = "" if row.get("reliable", True) else " (unreliable)"
            lines.append(
                f"| {row['method']}{flag} | {_fmt(row['auc_pct'], 1)} [{_fmt(row['auc_low_pct'], 1)}, "
                f"{_fmt(row['auc_high_pct'], 1)}] | {_fmt(row['auc_mean_pct'], 1)} | {_fmt(row['delta_pct'], 1)} "
                f"[{_fmt(row['delta_low_pct'], 1)}, {_fmt(row['delta_high_pct'], 1)}] | {_fmt(row['spearman'], 2)} | "
                f"{_fmt(row['retention_auc'], 3)} | {row['folds_defined']} |"
            )
        lines += ["", "| Fold | Dice | test TP | test FP | missed | val TP | val FP | reliable |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for f in self.folds:
            lines.append(f"| {f['fold']} | {_fmt(f['dice'], 3)} | {f['tp']} | {f['fp']} | {f['missed']} | "
                         f"{f['val_tp']} | {f['val_fp']} | {'yes' if f['reliable'] else 'no'} |")
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, np.float64)
    return float(np.nanmean(arr)) if np.any(np.isfinite(arr)) else float("nan")


def _fit_unet(images, labels, cfg: LesionProtocolConfig, seed: int, progress: bool):
    from ugcn.segment import UNetConfig
    from ugcn.segment.train import train_model

    channels = 1 if images[0].ndim == 3 else images[0].shape[-1]
    unet = UNetConfig(dims=3, in_channels=channels, num_classes=1, base_features=cfg.unet_base_features,
                      depth=cfg.unet_depth, patch_size=cfg.unet_patch, dropout_rate=cfg.unet_dropout,
                      patch_overlap=cfg.unet_patch_overlap)
    model, _ = train_model(images, labels, unet, epochs=cfg.unet_epochs, steps_per_epoch=cfg.unet_steps_per_epoch,
                           batch_size=cfg.unet_batch_size, learning_rate=cfg.unet_learning_rate, seed=seed,
                           progress=progress)
    if cfg.unet_inference_patch is not None:  # fully convolutional: infer on larger tiles than it was trained on
        model = dataclasses.replace(model, config=dataclasses.replace(model.config,
                                                                      patch_size=cfg.unet_inference_patch))
    return model


def _stochastic_fn(model: Any):
    from ugcn.segment import make_volume_fn

    return make_volume_fn(model, stochastic=True)


def find_samples(samples_dir: Any, case: str) -> Path:
    """The sample-map file of ``case`` in ``samples_dir``: ``<case>.nii.gz`` or ``<case>_samples.nii.gz`` (or .nii)."""
    folder = Path(samples_dir)
    for suffix in ("", "_samples"):
        for ext in (".nii.gz", ".nii"):
            path = folder / f"{case}{suffix}{ext}"
            if path.is_file():
                return path
    raise ValueError(f"{folder}: no sample maps for case {case!r} (expected {case}.nii.gz or {case}_samples.nii.gz)")


def _samples_uncertainty(samples_dir: Any, case: str, image: Any, estimators: Sequence[str]):
    from ugcn.io import check_same_grid
    from ugcn.uncertainty.sampling import load_sample_maps

    samples, volume = load_sample_maps(find_samples(samples_dir, case))
    check_same_grid(image, volume, what="samples")
    return uncertainty_from_samples(samples, estimators=estimators)


def run_protocol(
    data_dir: Any,
    config: LesionProtocolConfig = LesionProtocolConfig(),
    *,
    out_dir: Any = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ProtocolResult:
    """The k-fold lesion-uncertainty protocol on a labelled data set folder.

    Cases are loaded one at a time when needed (nothing but their lesion graphs is kept between folds), so
    memory holds one fold's lesions and one volume's maps, not the data set.

    Args:
      data_dir: a data set folder readable by ``ugcn.data.find_cases`` (Decathlon layout, ...).
      config: :class:`LesionProtocolConfig`.
      out_dir: where to write ``results.{csv,json,md}``, ``folds.csv``, ``lesions.csv``, ``curves.png`` and
        ``cases/<case>/{prediction,lesions,<estimator>}.nii.gz`` (``None``: write nothing). Must not exist or
        be empty unless ``overwrite``; built in a temporary sibling and swapped in at the end.
      overwrite: replace an existing ``out_dir``.
      progress: progress bars.

    Returns:
      :class:`ProtocolResult`.
    """
    if out_dir is None:
        return _run_protocol(data_dir, config, None, progress)
    _check_out_dir(Path(out_dir), overwrite)
    with atomic_directory(Path(out_dir), overwrite=True) as tmp:
        result = _run_protocol(data_dir, config, tmp, progress)
        _write_results(result, tmp, config)
    return result


def _fold_lesions(cases, indices, desc: str, *, config: LesionProtocolConfig, model, volume_fn, key, progress: bool,
                  out_cases: Optional[Path]) -> tuple[list[CaseLesions], int]:
    """The lesions of ``cases[indices]`` under one fold's U-Net (or the sample maps), and the GT lesions missed;
    writes ``out_cases/<case>/`` when given. Cases are loaded one at a time."""
    import jax

    from ugcn.data import load_case
    from ugcn.lesion.case_outputs import write_case_outputs
    from ugcn.lesion.components import missed_lesions

    found, missed = [], 0
    for i in tqdm(indices, desc=desc, disable=not progress, leave=False):
        image, label = load_case(cases[i])
        if label is None:
            raise ValueError(f"case {cases[i].name}: no label; the protocol needs a labelled data set")
        if config.samples_dir is not None:
            pred, maps = _samples_uncertainty(config.samples_dir, cases[i].name, image, config.estimators)
        else:
            pred, maps = mc_uncertainty(
                model, image.array, jax.random.fold_in(key, int(i)), estimators=config.estimators,
                n_samples=config.mc_samples, chunk_size=config.mc_chunk, mask_from=config.mask_from,
                volume_fn=volume_fn,
            )
        c = case_lesions(cases[i].name, image.array, pred, maps, label.array, affine=image.affine,
                         estimators=config.estimators, epsilon=config.epsilon, logsum=config.logsum)
        missed += missed_lesions(pred, label.array)
        if out_cases is not None:
            write_case_outputs(out_cases / cases[i].name, pred, c.table.labels, maps, image.affine, header=image.header)
        found.append(c)
    return found, missed


def _run_protocol(data_dir: Any, config: LesionProtocolConfig, out: Optional[Path], progress: bool) -> ProtocolResult:
    import jax

    from ugcn.data import find_cases, kfold_splits, load_case
    from ugcn.evaluate.lesion_summary import summarize_lesion_rankings, unreliable_folds

    start = time.time()
    cases = find_cases(data_dir)
    splits = kfold_splits(len(cases), config.folds, seed=config.seed, val_fraction=config.val_fraction)
    if config.samples_dir is not None:
        for case in cases:  # fail before the work when a file is missing
            find_samples(config.samples_dir, case.name)

    names = method_names(config.estimators)
    fold_rows, lesion_rows, notes = [], [], []
    pooled_scores = {m: [] for m in names}
    pooled_fp, pooled_vox, pooled_case, pooled_fold = [], [], [], []
    for fold, split in enumerate(tqdm(splits, desc="folds", disable=not progress)):
        fold_seed = config.seed * 1000 + fold
        model = volume_fn = None
        if config.samples_dir is None:
            train = [load_case(cases[i]) for i in split.train]
            model = _fit_unet([im.array for im, _ in train], [lb.array for _, lb in train], config, fold_seed,
                              progress)
            del train
            volume_fn = _stochastic_fn(model)
        key = jax.random.PRNGKey(fold_seed)

        fold_source = dict(config=config, model=model, volume_fn=volume_fn, key=key, progress=progress)
        case_dir = out / "cases" if out is not None and config.write_cases else None
        val_cases, _ = _fold_lesions(cases, split.val, f"fold {fold} val", out_cases=None, **fold_source)
        test_cases, missed = _fold_lesions(cases, split.test, f"fold {fold} test", out_cases=case_dir, **fold_source)
        val, test = merge_cases(val_cases), merge_cases(test_cases)
        n_val_fp = int(val.is_fp.sum())
        reliable = n_val_fp >= config.min_val_fp
        if not reliable:
            notes.append(f"fold {fold}: {n_val_fp} FP lesion(s) among {val.n} validation lesions "
                         f"(< {config.min_val_fp}): too few to fit the learned methods (GCNN, MetaSeg, shape); "
                         "the fold is left out of the evaluation of every method (its AUCs are still listed per fold)")
        methods = fit_lesion_methods(val, estimators=config.estimators, gcnn_epochs=config.gcnn_epochs,
                                     gcnn_batch_size=config.gcnn_batch_size, seed=fold_seed,
                                     epsilon=config.epsilon, progress=progress)
        scores = score_lesion_methods(methods, test)
        n_fp, n_tp = int(test.is_fp.sum()), int((~test.is_fp).sum())
        if n_fp == 0 or n_tp == 0:
            notes.append(f"fold {fold}: {n_tp} TP and {n_fp} FP test lesions; its AUC is undefined (NaN)")
        fold_rows.append({
            "fold": fold, "dice": _nanmean([c.dice for c in test_cases]), "tp": n_tp, "fp": n_fp, "missed": missed,
            "val_tp": int(val.n - n_val_fp), "val_fp": n_val_fp, "reliable": reliable,
            "train_cases": len(split.train), "val_cases": len(split.val), "test_cases": len(split.test),
        })
        for k in range(test.n):
            row = {"fold": fold, "case": str(test.case[k]), "lesion": int(test.lesion[k]),
                   "size": int(test.stats["voxels"][k]), "iou_adj": float(test.iou_adj[k]), "fp": bool(test.is_fp[k])}
            # The Size method's score (1/size) is its own column; ``size`` stays the voxel count.
            row.update({("size_score" if m == "size" else m): float(scores[m][k]) for m in names})
            lesion_rows.append(row)
        for m in names:
            pooled_scores[m].append(scores[m])
        pooled_fp.append(test.is_fp)
        pooled_vox.append(test.stats["voxels"])
        pooled_case.append(test.case)
        pooled_fold.append(np.full(test.n, fold))

    is_fp = np.concatenate(pooled_fp)
    fold_of = np.concatenate(pooled_fold)
    scores_all = {m: np.concatenate(v) for m, v in pooled_scores.items()}
    bad = unreliable_folds({f["fold"]: f["val_fp"] for f in fold_rows}, config.min_val_fp)
    table, summary = summarize_lesion_rankings(
        scores_all, is_fp, np.concatenate(pooled_case), fold_of, np.concatenate(pooled_vox),
        learned=LEARNED_METHODS, unreliable=bad, missed={f["fold"]: f["missed"] for f in fold_rows},
        reference_excludes=GCNN_METHODS, n_boot=config.n_bootstrap, seed=config.seed,
    )
    if bad and len(bad) == len(fold_rows):
        notes.append("no fold is reliable: every fold is evaluated and the learned methods are marked unreliable")
    keep = np.isin(fold_of, summary["evaluated_folds"])
    curves = {}
    for m in names:
        s = scores_all[m][keep]
        defined = s.size and np.all(np.isfinite(s)) and 0 < is_fp[keep].sum() < s.size
        curves[m] = accuracy_confidence_curve(s, is_fp[keep]) if defined else None
    return ProtocolResult(table, fold_rows, lesion_rows, curves, notes, time.time() - start, summary)


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")


def _csv(rows: list[dict]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[k for k in rows[0] if not isinstance(rows[0][k], list)],
                            extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_results(result: ProtocolResult, folder: Path, config: Optional[LesionProtocolConfig]) -> None:
    (folder / "results.csv").write_text(_csv(result.table))
    (folder / "folds.csv").write_text(_csv(result.folds))
    (folder / "lesions.csv").write_text(_csv(result.lesions))
    (folder / "results.md").write_text(result.markdown())
    payload = {"table": result.table, "folds": result.folds, "summary": result.summary, "notes": result.notes,
               "seconds": result.seconds, "config": dataclasses.asdict(config) if config is not None else None}
    (folder / "results.json").write_text(json.dumps(jsonable(payload), indent=2) + "\n")
    curves = {m: c for m, c in result.curves.items() if c is not None}
    plot_accuracy_confidence(curves, folder / "curves.png",
                             title="Accuracy-confidence curves (pooled test lesions of the evaluated folds)")


def write_protocol_outputs(
    result: ProtocolResult, out_dir: Path, *, config: Optional[LesionProtocolConfig] = None, overwrite: bool = False
) -> Path:
    """Write ``results.csv/json/md``, ``folds.csv``, ``lesions.csv``, ``curves.png`` into ``out_dir``.

    Everything is written into a temporary sibling folder that replaces ``out_dir`` at the end, so an
    error never leaves half the results. JSON holds ``null`` for undefined (NaN) values.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    with atomic_directory(out_dir, overwrite=True) as tmp:
        _write_results(result, tmp, config)
    return out_dir
