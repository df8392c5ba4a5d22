"""Compare voxel-wise uncertainty estimators on the same Monte Carlo samples (``ugcn estimators compare``).

For every estimator of the registry (:mod:`ugcn.uncertainty.estimators`), on the same samples of the same
cases, four criteria:

1. **Voxel-level error detection**: AUROC and AUPRC (average precision, as
   ``sklearn.metrics.average_precision_score`` defines it) of the uncertainty map against the voxels where
   the prediction is wrong. Exact: ranks from one sort, tied values averaged (AUROC =
   ``P(u_err > u_ok) + ½ P(u_err = u_ok)``; AP steps once per distinct value).
2. **Calibration**: the expected calibration error (ECE, 15 equal-width bins ``(b/15, (b+1)/15]`` of the
   confidence, weighted by bin counts) and the reliability diagram of the *expectation* (confidence
   ``max_c E_c`` vs correctness): one curve for all estimators, since they share ``E``. Per estimator,
   ``ece_confidence`` is the ECE of the confidence its map implies, ``1 - ũ``, with ``ũ`` the uncertainty
   rescaled to ``[0, 1]`` by its declared value range (or by its observed range over the evaluation region
   when it declares none): it says whether the estimator's scale reads as a probability of being right.
3. **Method R**: mean Dice (over the cases) of the GCN-refined mask with the estimator as ``U``, at the
   default threshold and at the best of a sweep. Default: ``entropy`` uses docs/method.md's absolute
   ``τ = 0.8``; any other estimator has no absolute scale that matches, so it uses ``tau_mode="quantile"``
   at the level ``q̄`` that leaves as many voxels labelled as entropy at ``τ = 0.8`` does: ``q̄`` = the share
   of ROI voxels with entropy ``<= 0.8``, pooled over the cases. The sweep is over quantile levels for every
   estimator (entropy included); "best" is the level with the highest mean Dice on these same cases (an
   oracle choice, like the τ sweep of the paper).
4. **Method L**: the accuracy-confidence AUC of the lesions (connected components of the prediction),
   ranked by the estimator's mean over each lesion (``l_auc_mean``, all lesions pooled), and by a lesion
   GCNN (classification, P(FP)) trained with this estimator as its only uncertainty feature
   (``l_auc_gcnn``: k-fold over the cases (:func:`ugcn.data.kfold_splits`); each fold's GCNN is trained on
   the lesions of its non-test cases (training and validation cases together: the segmentation model is
   fixed, so nothing else is trained on them) and scores its test cases; the AUC pools every test lesion).

Conventions:

* Maps are oriented with :meth:`Estimator.as_uncertainty` first (PCS becomes ``1 - PCS``), so higher
  always means more uncertain, for every criterion.
* The prediction is the expectation's most probable class (binary: ``E_fg > 0.5``); it is what is wrong or
  right, what method R refines and where method L's lesions come from. With ``C = 2`` classes any non-zero
  label is foreground.
* Evaluation region of criteria 1-2 (``region``): ``"box"`` (default) is the bounding box of
  (prediction ∪ label) grown by ``region_margin`` voxels, per case (far background is trivially right and
  would flatter every estimator); ``"volume"`` is every voxel. Voxels of all cases are pooled (concatenated)
  before ranking.
* Memory: every case keeps its ``K`` oriented maps (``4 K`` bytes per voxel) until the end, since methods
  R and L need them whole; the pooled voxel measures hold ``[K, V]`` for the region's ``V`` voxels.
* Undefined quantities are NaN with a note (no error voxel; method R on a multi-class model; too few cases
  or lesions for method L), never an exception.

The voxel-level measures of all ``K`` estimators come from one compiled call
(:func:`ugcn.evaluate.voxel_metrics.voxel_measures`: the maps stacked ``[K, V]``, ``vmap`` over the estimator
axis), and all maps of a case from one compiled
:func:`~ugcn.uncertainty.estimators.estimator_maps` call: one pass over the samples, not one per estimator.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
from tqdm.auto import tqdm

from ugcn import __version__
from ugcn.config import MAX_SEED, setting
from ugcn.data.layout import find_cases, kfold_splits, load_case
from ugcn.data.phantoms import brain_phantom
from ugcn.evaluate.accuracy_confidence import accuracy_confidence_auc
from ugcn.evaluate.plots import figures_or_warn, plot_estimator_comparison
from ugcn.evaluate.voxel_metrics import ECE_BINS, VoxelMeasures, voxel_measures
from ugcn.graph.voxel_graph import bounding_box, largest_component
from ugcn.io import atomic_directory, jsonable
from ugcn.lesion.gcnn import fit_gcnn, score_lesions
from ugcn.lesion.protocol import case_lesions, merge_cases
from ugcn.refine.fit import FitConfig
from ugcn.refine.inputs import find_sample_file
from ugcn.refine.pipeline import RefineConfig, RefineInput, refine_batch
from ugcn.segment import UNetConfig, load_model, make_volume_fn
from ugcn.segment.train import train_model
from ugcn.uncertainty.estimators import Estimator, estimator_maps, get_estimator, list_estimators
from ugcn.uncertainty.measures import expectation
from ugcn.uncertainty.sources import from_model, from_sample_file

REGIONS = ("box", "volume")
DEFAULT_R_SWEEP = (0.8, 0.9, 0.95, 0.98, 0.99)
ENTROPY_TAU = 0.8
CRITERIA = ("auroc", "auprc", "ece_confidence", "r_dice_default", "r_dice_best", "l_auc_mean", "l_auc_gcnn")
#: Criteria where lower is better (the rest: higher is better).
LOWER_IS_BETTER = ("ece_confidence",)
ALL = "all"

__all__ = [
    "CompareConfig",
    "CaseSamples",
    "CaseMaps",
    "EstimatorComparison",
    "resolve_estimators",
    "case_maps",
    "compare_estimators",
    "cases_from_samples_dir",
    "cases_from_model",
    "find_sample_file",
    "write_comparison",
    "quick_model",
    "quick_cases",
]


# --------------------------------------------------------------------------------------------------------
# Settings and inputs
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Settings of :func:`compare_estimators`.

    Attributes:
      region: ``"box"`` or ``"volume"`` (see the module docstring); ``region_margin``: voxels around the box.
      ece_bins: equal-width confidence bins of the ECE and reliability diagram.
      method_r: run method R (criterion 3).
      r_sweep: quantile levels of the τ sweep.
      r_epochs: GCN epochs per fit (docs/method.md: 200).
      r_k_random, r_margin: method R's random edges per node and ROI margin.
      method_l: run method L (criterion 4).
      l_folds: folds of the GCNN evaluation (clipped to the number of cases).
      gcnn_epochs, gcnn_batch_size: lesion GCNN training.
      epsilon: FP threshold on ``IoU_adj``.
      seed: seeds the R fits, folds and GCNNs.
    """

    region: str = setting("box", choices=REGIONS, help="voxels of the error and calibration measures: the box "
                          "around prediction and label, or the whole volume")
    region_margin: int = setting(4, min=0, help="voxels around the box")
    ece_bins: int = setting(ECE_BINS, min=1)
    method_r: bool = setting(True, help="run method R (criterion 3)")
    r_sweep: tuple[float, ...] = setting(DEFAULT_R_SWEEP, min=0, max=1, metavar="Q",
                                         help="method R: quantile levels of the tau sweep")
    r_epochs: int = setting(200, min=1, help="method R: GCN epochs per fit")
    r_k_random: int = setting(16, min=0, help="method R: long-range edges per node")
    r_margin: int = setting(0, min=0, help="method R: voxels added around the ROI box")
    method_l: bool = setting(True, help="run method L (criterion 4)")
    l_folds: int = setting(4, min=1, help="method L: folds of the GCNN evaluation (clipped to the number of cases)")
    gcnn_epochs: int = setting(30, min=1, help="method L: GCNN epochs")
    gcnn_batch_size: int = setting(10, min=1, help="method L: lesion graphs per GCNN batch")
    epsilon: float = setting(0.1, min=0, max=1)
    seed: int = setting(0, min=0, max=MAX_SEED, help="seed of MC dropout, R fits, folds and GCNNs")

    def __post_init__(self) -> None:
        if self.region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {self.region!r}")
        for name in ("ece_bins", "r_epochs", "gcnn_epochs", "gcnn_batch_size", "l_folds"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if int(self.region_margin) < 0 or int(self.r_margin) < 0 or int(self.r_k_random) < 0:
            raise ValueError("region_margin, r_margin and r_k_random must be >= 0")
        sweep = tuple(float(q) for q in self.r_sweep)
        if not sweep or any(not 0.0 <= q <= 1.0 for q in sweep):
            raise ValueError(f"r_sweep: give quantile levels in [0, 1], got {self.r_sweep!r}")
        object.__setattr__(self, "r_sweep", sweep)


class CaseSamples(NamedTuple):
    """One labelled case with its Monte Carlo statistics (what :func:`compare_estimators` consumes).

    Attributes:
      name: case name.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      label: ``[X, Y, Z]`` integer ground truth.
      stats: :class:`~ugcn.uncertainty.stats.SampleStats` with sums ``f32[X, Y, Z, C]``.
      samples: ``f32[T, X, Y, Z, C]`` or ``None`` (required only by estimators with ``needs="samples"``).
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    stats: Any
    samples: Optional[Any] = None


@dataclasses.dataclass(frozen=True)
class CaseMaps:
    """A case reduced to what the criteria need (samples dropped).

    Attributes:
      name: case name.
      image: ``f32[X, Y, Z(, M)]``.
      label: ``u8[X, Y, Z]`` class indices (binary: 0/1).
      expectation: ``f32[X, Y, Z, C]`` MC expectation.
      prediction: ``u8[X, Y, Z]`` ``argmax_c E_c``.
      maps: estimator name -> ``f32[X, Y, Z]`` uncertainty (oriented: higher = more uncertain).
      entropy: ``f32[X, Y, Z]`` binary entropy in bits (method R's default-τ rule).
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    expectation: np.ndarray
    prediction: np.ndarray
    maps: dict
    entropy: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.expectation.shape[-1])


def resolve_estimators(spec: Union[None, str, Sequence[Union[str, Estimator]]] = None) -> list[Estimator]:
    """The estimators to compare: names, ``module:function`` specs, :class:`Estimator` objects, or ``"all"``.

    ``None`` (or ``"all"``) = every registered estimator at call time; ``"all"`` may be combined with more,
    e.g. ``"all,my_pkg.my_mod:margin"``. Import specs are resolved first (a module may register estimators
    when imported), then ``"all"`` is expanded. Duplicates (same name, or an import spec naming a function
    that is registered already) are dropped, keeping the first.

    Raises:
      ValueError: an unknown name or a failing import spec.
    """
    if spec is None:
        items: list = [ALL]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    if not items:
        raise ValueError("no estimator given; use 'all' or names such as entropy,variance")
    resolved = [None if (isinstance(i, str) and i == ALL) else get_estimator(i) for i in items]
    out: list[Estimator] = []
    registry = {name: get_estimator(name) for name in list_estimators()}
    for est in resolved:
        group = list(registry.values()) if est is None else [est]
        for e in group:
            if any(e.name == o.name or e.fn is o.fn for o in out):
                continue
            if e.name not in registry:  # an import spec naming a registered function: use the registered one
                same = [r for r in registry.values() if r.fn is e.fn]
                if same:
                    e = same[0]
                    if any(e.name == o.name for o in out):
                        continue
            out.append(e)
    return out


# --------------------------------------------------------------------------------------------------------
# Per case: every map in one compiled call
# --------------------------------------------------------------------------------------------------------


def case_maps(case: CaseSamples, estimators: Sequence[Estimator]) -> CaseMaps:
    """All estimators' maps of one case (one :func:`estimator_maps` call), oriented, plus ``E`` and ``Ŷ``.

    Raises:
      ValueError: label/statistics shape mismatch, label values outside the classes, a map with NaN.
    """

    entropy = get_estimator("entropy")
    wanted = list(estimators) + ([] if any(e.name == entropy.name for e in estimators) else [entropy])
    samples = case.samples if any(e.needs == "samples" for e in wanted) else None
    maps = estimator_maps(wanted, case.stats, samples)
    e = np.asarray(expectation(case.stats), np.float32)
    shape, c = e.shape[:-1], e.shape[-1]
    label = np.asarray(case.label)
    if label.shape != shape:
        raise ValueError(f"{case.name}: label shape {label.shape} differs from the samples' {shape}")
    if c == 2:
        label = (label != 0).astype(np.uint8)
    elif label.min() < 0 or label.max() >= c:
        raise ValueError(f"{case.name}: label values {label.min()}..{label.max()} outside the {c} classes")
    oriented = {}
    for est in estimators:
        m = np.asarray(est.as_uncertainty(maps[est.name]), np.float32)
        if not np.all(np.isfinite(m)):
            raise ValueError(f"{case.name}: estimator {est.name!r} gives NaN or infinite values")
        oriented[est.name] = m
    return CaseMaps(case.name, np.asarray(case.image, np.float32), label.astype(np.uint8), e,
                    np.argmax(e, axis=-1).astype(np.uint8), oriented, np.asarray(maps[entropy.name], np.float32))


def _region(case: CaseMaps, config: CompareConfig) -> Optional[np.ndarray]:
    """``bool[X, Y, Z]`` evaluation region, or ``None`` when the box is empty."""
    if config.region == "volume":
        return np.ones(case.prediction.shape, bool)

    fg = (case.prediction != 0) | (case.label != 0)
    if not fg.any():
        return None
    region = np.zeros(fg.shape, bool)
    region[bounding_box(fg, int(config.region_margin))] = True
    return region


# --------------------------------------------------------------------------------------------------------
# Methods R and L
# --------------------------------------------------------------------------------------------------------


def _matched_quantile(cases: Sequence[CaseMaps], margin: int) -> float:
    """Share of ROI voxels (pooled over cases) with entropy <= 0.8: method R's default quantile level."""

    below = total = 0
    for c in cases:
        lcc = largest_component(c.prediction != 0)
        if not lcc.any():
            continue
        u = c.entropy[bounding_box(lcc, margin)]
        below += int(np.count_nonzero(u <= ENTROPY_TAU))
        total += int(u.size)
    return below / total if total else 1.0


def _method_r(cases, estimators, config: CompareConfig, progress: bool):

    notes: list[str] = []
    names = [e.name for e in estimators]
    empty = {n: {"r_dice_default": math.nan, "r_default_tau": "", "r_dice_best": math.nan,
                 "r_best_quantile": math.nan} for n in names}
    if any(c.num_classes != 2 for c in cases):
        notes.append("method R refines a binary segmentation; these samples have more than 2 classes (R: NaN)")
        return empty, {}, notes
    usable = [c for c in cases if np.any(c.prediction)]
    if not usable:
        notes.append("method R: every prediction is empty (R: NaN)")
        return empty, {}, notes
    if len(usable) < len(cases):
        notes.append(f"method R: {len(cases) - len(usable)} case(s) with an empty prediction left out")
    base = RefineConfig(k_random=config.r_k_random, margin=config.r_margin, fit=FitConfig(epochs=config.r_epochs))
    q_default = _matched_quantile(usable, config.r_margin)

    def mean_dice(name, cfg):
        inputs = [RefineInput(c.image, c.prediction != 0, c.expectation[..., 1], c.maps[name], c.label, c.name)
                  for c in usable]
        results = refine_batch(inputs, config=cfg, seeds=config.seed, uncertainty_name=name, progress=False)
        return float(np.mean([r.dice["refined"] for r in results])), results

    out: dict[str, dict] = {}
    baselines: dict[str, float] = {}
    bar = tqdm(estimators, desc="method R", disable=not progress, leave=False)
    for est in bar:
        if est.name == "entropy":
            cfg, tau_text = dataclasses.replace(base, tau=ENTROPY_TAU), f"abs {ENTROPY_TAU:g}"
        else:
            cfg, tau_text = dataclasses.replace(base, tau=q_default, tau_mode="quantile"), f"q {q_default:.4f}"
        default, results = mean_dice(est.name, cfg)
        if not baselines:
            baselines = {
                "r_dice_cnn": float(np.mean([r.dice["cnn"] for r in results])),
                "r_dice_expectation": float(np.mean([r.dice["expectation_mask"] for r in results])),
                "r_matched_quantile": q_default,
            }
            kept = sum(int(r.cnn.sum() < np.count_nonzero(c.prediction)) for r, c in zip(results, usable))
            if kept:
                notes.append(f"method R refines the largest connected component; {kept} case(s) predict several "
                             "components (lesions?), so R's Dice there covers only the largest one")
        sweep = []
        for q in config.r_sweep:
            sweep.append(mean_dice(est.name, dataclasses.replace(base, tau=q, tau_mode="quantile"))[0])
        best = int(np.argmax(sweep))
        out[est.name] = {"r_dice_default": default, "r_default_tau": tau_text, "r_dice_best": sweep[best],
                         "r_best_quantile": config.r_sweep[best], "r_sweep_dice": sweep}
    return out, baselines, notes


def _method_l(cases, estimators, config: CompareConfig, progress: bool):

    names = [e.name for e in estimators]
    notes: list[str] = []
    out = {n: {"l_auc_mean": math.nan, "l_auc_gcnn": math.nan} for n in names}
    lesions = [case_lesions(c.name, c.image, c.prediction != 0, c.maps, c.label != 0, estimators=names,
                            epsilon=config.epsilon)
               for c in tqdm(cases, desc="lesions", disable=not progress, leave=False)]
    data = merge_cases(lesions)
    n_fp, n_tp = int(data.is_fp.sum()), int((~data.is_fp).sum())
    info = {"l_lesions": data.n, "l_fp_lesions": n_fp, "l_tp_lesions": n_tp}
    if n_fp == 0 or n_tp == 0:
        notes.append(f"method L: {n_tp} TP and {n_fp} FP lesions; the accuracy-confidence AUC needs both (L: NaN)")
        return out, info, notes
    if min(n_fp, n_tp) < 5:
        notes.append(f"method L: only {n_tp} TP and {n_fp} FP lesions; its AUCs are very noisy")
    for name in names:
        out[name]["l_auc_mean"] = accuracy_confidence_auc(data.stats[f"{name}_mean"], data.is_fp)

    n_cases = len(cases)
    folds = min(int(config.l_folds), n_cases)
    try:
        # Training and validation cases both train the GCNN here, so the split's validation share is moot;
        # 0.5 keeps kfold_splits valid down to 3 cases.
        splits = kfold_splits(n_cases, folds, seed=config.seed, val_fraction=0.5)
    except ValueError:
        notes.append(f"method L: {n_cases} case(s) are too few for a k-fold GCNN evaluation (GCNN AUC: NaN)")
        return out, info, notes
    info["l_folds"] = folds
    case_index = {c.name: i for i, c in enumerate(cases)}
    lesion_case = np.array([case_index[str(n)] for n in data.case], np.int64)
    width = data.graphs.num_features - len(names)  # intensities + predicted label
    base_cols = list(range(width))
    scores = {n: np.full(data.n, np.nan) for n in names}
    for fold, split in enumerate(tqdm(splits, desc="method L folds", disable=not progress, leave=False)):
        test = np.flatnonzero(np.isin(lesion_case, split.test))
        train = np.flatnonzero(~np.isin(lesion_case, split.test))
        if test.size == 0:
            continue
        if train.size == 0:
            notes.append(f"method L fold {fold}: no lesion in the training cases; its test lesions are left out "
                         "of the GCNN AUC")
            continue
        train_graphs, test_graphs = data.graphs.select(train), data.graphs.select(test)
        for k, name in enumerate(names):
            cols = base_cols + [width + k]
            model = fit_gcnn(_columns(train_graphs, cols), data.iou_adj[train], task="classification",
                             epochs=config.gcnn_epochs, batch_size=config.gcnn_batch_size,
                             seed=config.seed * 1000 + fold, epsilon=config.epsilon)
            scores[name][test] = score_lesions(model, _columns(test_graphs, cols))
    scored = np.isfinite(scores[names[0]])
    info["l_gcnn_scored_lesions"] = int(scored.sum())
    for name in names:
        out[name]["l_auc_gcnn"] = accuracy_confidence_auc(scores[name][scored], data.is_fp[scored]) \
            if scored.any() else math.nan
    if scored.any() and not (data.is_fp[scored].any() and (~data.is_fp[scored]).any()):
        notes.append("method L: the GCNN-scored lesions lack FP or TP lesions (GCNN AUC: NaN)")
    return out, info, notes


def _columns(graphs, cols: list[int]):
    return dataclasses.replace(graphs, nodes=np.ascontiguousarray(graphs.nodes[:, cols]),
                               feature_names=tuple(graphs.feature_names[c] for c in cols))


# --------------------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EstimatorComparison:
    """What :func:`compare_estimators` measured.

    Attributes:
      rows: one dict per estimator: ``estimator, needs, higher_is_uncertain, value_range, description``
        and the criteria ``auroc, auprc, ece_confidence, r_dice_default, r_default_tau, r_dice_best,
        r_best_quantile, l_auc_mean, l_auc_gcnn`` (NaN when undefined; see ``notes``).
      summary: data set level figures: cases, voxels, error rate, ``ece_expectation``, R baselines
        (``r_dice_cnn``, ``r_dice_expectation``, ``r_matched_quantile``), lesion counts.
      reliability: ``{"name": [...], "count", "confidence", "accuracy": [K + 1][B]}``, row 0 = expectation.
      notes: remarks on undefined quantities.
      config: the :class:`CompareConfig`.
      timings: seconds per stage.
    """

    rows: list[dict]
    summary: dict
    reliability: dict
    notes: list[str]
    config: CompareConfig
    timings: dict

    def row(self, name: str) -> dict:
        """The row of estimator ``name``."""
        for r in self.rows:
            if r["estimator"] == name:
                return r
        raise ValueError(f"no estimator {name!r} in the comparison (have {[r['estimator'] for r in self.rows]})")

    def ranking(self, criterion: str) -> list[str]:
        """Estimator names, best first, by ``criterion`` (NaN last; ECE: lower is better)."""
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
        sign = 1.0 if criterion in LOWER_IS_BETTER else -1.0

        def key(r):
            v = r[criterion]
            return (1, 0.0) if v is None or not math.isfinite(v) else (0, sign * v)

        return [r["estimator"] for r in sorted(self.rows, key=key)]

    def markdown(self) -> str:
        """The table (one row per estimator) and the data-set figures, as Markdown."""
        head = ("| estimator | needs | AUROC | AUPRC | ECE(1-ũ) | R Dice default (τ) | R Dice best (q) "
                "| L AUC mean | L AUC GCNN |")
        lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            tau = f" ({r['r_default_tau']})" if r.get("r_default_tau") else ""
            q = r.get("r_best_quantile")
            best_q = f" ({q:g})" if isinstance(q, float) and math.isfinite(q) else ""
            lines.append(
                f"| {r['estimator']} | {r['needs']} | {_fmt(r['auroc'])} | {_fmt(r['auprc'])} | "
                f"{_fmt(r['ece_confidence'])} | {_fmt(r['r_dice_default'])}{tau} | {_fmt(r['r_dice_best'])}{best_q} | "
                f"{_fmt(r['l_auc_mean'])} | {_fmt(r['l_auc_gcnn'])} |"
            )
        s = self.summary
        lines.append("")
        lines.append(f"{s['cases']} cases, {s['voxels']} voxels in the region ({s['region']}), error rate "
                     f"{_fmt(s['error_rate'], 4)} (= AUPRC of a random map); ECE of the expectation "
                     f"{_fmt(s['ece_expectation'], 4)}.")
        if "r_dice_cnn" in s:
            lines.append(f"Method R baselines: Dice CNN {_fmt(s['r_dice_cnn'])}, "
                         f"E>0.5 {_fmt(s['r_dice_expectation'])}; "
                         f"default quantile for non-entropy estimators {_fmt(s['r_matched_quantile'], 4)}.")
        if "l_lesions" in s:
            lines.append(f"Method L: {s['l_lesions']} lesions ({s['l_tp_lesions']} TP, {s['l_fp_lesions']} FP).")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict:
        """JSON-serialisable payload: rows, summary, reliability, notes, settings, versions, timings."""
        return jsonable({
            "rows": self.rows, "summary": self.summary, "reliability": self.reliability, "notes": self.notes,
            "settings": dataclasses.asdict(self.config), "versions": _versions(), "timings_s": self.timings,
        })


def _fmt(v, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _versions() -> dict:

    return {"ugcn": __version__, "jax": jax.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "device": str(jax.devices()[0])}


def compare_estimators(
    cases: Iterable[CaseSamples],
    estimators: Union[None, str, Sequence[Union[str, Estimator]]] = None,
    config: CompareConfig = CompareConfig(),
    *,
    progress: bool = True,
) -> EstimatorComparison:
    """Compare uncertainty estimators on the same samples (every criterion of the module docstring).

    Args:
      cases: :class:`CaseSamples`, consumed once (a generator keeps one case's samples in memory at a time).
      estimators: see :func:`resolve_estimators` (default: every registered estimator).
      config: :class:`CompareConfig`.
      progress: progress bars over cases, estimators and folds.

    Returns:
      :class:`EstimatorComparison`.

    Raises:
      ValueError: no case, unknown estimators, a case whose samples an estimator needs but lacks, bad shapes.
    """
    ests = resolve_estimators(estimators)
    names = [e.name for e in ests]
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    reduced: list[CaseMaps] = []
    try:
        total = len(cases)  # type: ignore[arg-type]
    except TypeError:
        total = None
    for case in tqdm(cases, desc="cases", total=total, disable=not progress, leave=False):
        if case.samples is None and any(e.needs == "samples" for e in ests):
            needing = [e.name for e in ests if e.needs == "samples"]
            raise ValueError(f"{case.name}: estimator(s) {', '.join(needing)} need the samples; keep them "
                             "(with a model: keep_samples=True) or leave these estimators out")
        reduced.append(case_maps(case, ests))
    if not reduced:
        raise ValueError("compare_estimators: no case to compare on")
    timings["maps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    notes: list[str] = []
    parts: dict[str, list] = {"maps": [], "errors": [], "confidence": []}
    for c in reduced:
        region = _region(c, config)
        if region is None:
            notes.append(f"{c.name}: empty prediction and label; left out of the voxel measures (box region)")
            continue
        parts["maps"].append(np.stack([c.maps[n][region] for n in names]))
        parts["errors"].append((c.prediction != c.label)[region])
        parts["confidence"].append(c.expectation.max(axis=-1)[region])
    if parts["maps"]:
        vm = voxel_measures(
            np.concatenate(parts["maps"], axis=1), np.concatenate(parts["errors"]),
            np.concatenate(parts["confidence"]), value_ranges=[_oriented_range(e) for e in ests],
            n_bins=config.ece_bins,
        )
    else:
        k, b = len(names), config.ece_bins
        nan = np.full(k, np.nan, np.float32)
        vm = VoxelMeasures(nan, nan, nan, math.nan, np.zeros((k + 1, b)), np.full((k + 1, b), np.nan),
                           np.full((k + 1, b), np.nan), 0, 0)
    if vm.n_errors == 0:
        notes.append("no voxel of the region is wrong: error detection (AUROC, AUPRC) is undefined")
    elif vm.n_errors == vm.n_voxels:
        notes.append("every voxel of the region is wrong: AUROC is undefined")
    timings["voxel_measures"] = time.perf_counter() - t0
    del parts

    rows = []
    for k, est in enumerate(ests):
        rows.append({
            "estimator": est.name, "needs": est.needs, "higher_is_uncertain": est.higher_is_uncertain,
            "value_range": list(est.value_range) if est.value_range is not None else None,
            "auroc": float(vm.auroc[k]), "auprc": float(vm.auprc[k]), "ece_confidence": float(vm.ece_confidence[k]),
            "r_dice_default": math.nan, "r_default_tau": "", "r_dice_best": math.nan, "r_best_quantile": math.nan,
            "l_auc_mean": math.nan, "l_auc_gcnn": math.nan, "description": est.description,
        })
    summary = {
        "cases": len(reduced), "region": config.region, "voxels": vm.n_voxels, "error_voxels": vm.n_errors,
        "error_rate": vm.n_errors / vm.n_voxels if vm.n_voxels else math.nan,
        "ece_expectation": vm.ece_expectation, "num_classes": reduced[0].num_classes,
    }
    if config.method_r:
        t0 = time.perf_counter()
        r_out, r_base, r_notes = _method_r(reduced, ests, config, progress)
        for row in rows:
            row.update(r_out.get(row["estimator"], {}))
        summary.update(r_base)
        notes += r_notes
        timings["method_r"] = time.perf_counter() - t0
    if config.method_l:
        t0 = time.perf_counter()
        l_out, l_info, l_notes = _method_l(reduced, ests, config, progress)
        for row in rows:
            row.update(l_out[row["estimator"]])
        summary.update(l_info)
        notes += l_notes
        timings["method_l"] = time.perf_counter() - t0
    reliability_bins = {
        "name": ["expectation"] + names,
        "count": vm.bins_count, "confidence": vm.bins_confidence, "accuracy": vm.bins_accuracy,
        "edges": [b / config.ece_bins for b in range(config.ece_bins + 1)],
    }
    return EstimatorComparison(rows, summary, jsonable(reliability_bins), notes, config, timings)


def _oriented_range(est: Estimator) -> Optional[tuple[float, float]]:
    """Value range of ``est.as_uncertainty(map)`` (``None`` when unknown)."""
    if est.value_range is None:
        return None
    lo, hi = est.value_range
    return (lo, hi) if est.higher_is_uncertain else (0.0, hi - lo)


# --------------------------------------------------------------------------------------------------------
# Sources of samples
# --------------------------------------------------------------------------------------------------------


class _CaseStream:
    """A one-pass iterable of :class:`CaseSamples` that knows its length (for progress bars)."""

    def __init__(self, generator: Iterator[CaseSamples], length: Optional[int]):
        self._generator, self._length = generator, length

    def __iter__(self) -> Iterator[CaseSamples]:
        return self._generator

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("the number of cases is not known in advance")
        return self._length


def cases_from_samples_dir(data_dir, samples_dir, *, keep_samples: bool = True) -> Iterable[CaseSamples]:
    """Cases of a labelled data set folder with their samples read from a folder of 4D NIfTI maps.

    Yields :class:`CaseSamples` one at a time (``samples`` kept only when ``keep_samples``). All files are
    looked up before the first case is read, so a missing file fails fast.
    """

    folder = Path(samples_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder of sample maps")
    cases = find_cases(data_dir)
    files = [find_sample_file(folder, c.name) for c in cases]

    def generate():
        for case, path in zip(cases, files):
            image, label = load_case(case)
            sampled = from_sample_file(path, reference=image, keep_samples=keep_samples)
            yield CaseSamples(case.name, image.array, label.array, sampled.stats, sampled.samples)

    return _CaseStream(generate(), len(cases))


SOURCES = ("mc", "tta")


def cases_from_model(
    data, model, *, n_samples: int = 20, chunk_size: int = 4, seed: int = 0, keep_samples: bool = False,
    source: str = "mc", tta_max_shift: int = 2,
) -> Iterable[CaseSamples]:
    """Cases with ``T`` stochastic passes of a trained model: MC dropout or test-time augmentation.

    Args:
      data: a labelled data set folder, or an iterable of ``(name, image, label)`` tuples.
      model: a ``SegmentationModel`` or a model folder (``ugcn train``).
      n_samples, chunk_size: passes and passes computed together.
      seed: case ``i`` uses ``jax.random.fold_in(PRNGKey(seed), i)`` (MC); TTA uses the transforms of
        ``seed`` (:func:`ugcn.uncertainty.tta.tta_transforms`) for every case.
      keep_samples: keep ``f32[T, X, Y, Z, C]`` (needed by ``needs="samples"`` estimators).
      source: ``"mc"`` (dropout on) or ``"tta"`` (dropout off; flips and in-plane shifts up to
        ``tta_max_shift`` voxels).
    """

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if int(tta_max_shift) < 0:
        raise ValueError(f"tta_max_shift must be >= 0, got {tta_max_shift}")
    if isinstance(model, (str, Path)):
        model = load_model(model)
    volume_fn = make_volume_fn(model, stochastic=source == "mc")
    if isinstance(data, (str, Path)):

        found = find_cases(data)
        length: Optional[int] = len(found)

        def items():
            for case in found:
                image, label = load_case(case)
                yield case.name, image.array, label.array
    else:
        length = len(data) if hasattr(data, "__len__") else None

        def items():
            yield from data

    def generate():
        key = jax.random.PRNGKey(seed)
        for i, (name, image, label) in enumerate(items()):
            sampled = from_model(model, image, method=source, key=jax.random.fold_in(key, i), seed=seed,
                                 n_samples=n_samples, chunk_size=chunk_size, tta_max_shift=tta_max_shift,
                                 prediction="mean", keep_samples=keep_samples, volume_fn=volume_fn)
            yield CaseSamples(name, image, label, sampled.stats, sampled.samples)

    return _CaseStream(generate(), length)


#: Tiny 2D (axial-slice) U-Net of ``--quick``: trains in about a CPU minute and finds most phantom lesions
#: (a 3D U-Net this small needs several times the steps to find any).
QUICK_UNET: dict[str, Any] = dict(dims=2, base_features=8, depth=2, dropout_rate=0.1, epochs=12, steps_per_epoch=10,
                                  batch_size=8, learning_rate=3e-3)
QUICK_SHAPE = (32, 32, 24)
#: Phantom seeds of ``--quick`` (far from ``ugcn phantoms``' ``S * 1000 + i`` for small S).
QUICK_TRAIN_SEED, QUICK_EVAL_SEED = 910_000, 920_000


def quick_cases(n_cases: int = 8, *, shape=QUICK_SHAPE, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image, label)`` of ``n_cases`` brain phantoms for ``--quick`` (distinct from its training ones)."""

    out = []
    for i in range(int(n_cases)):
        ph = brain_phantom(QUICK_EVAL_SEED + 100 * seed + i, shape=tuple(shape))
        out.append((f"brain_{i:03d}", ph.image, ph.label))
    return out


def quick_model(*, n_train: int = 4, shape=QUICK_SHAPE, seed: int = 0, progress: bool = True):
    """A tiny MC-dropout U-Net (:data:`QUICK_UNET`) trained on ``n_train`` brain phantoms (``--quick``)."""

    phantoms = [brain_phantom(QUICK_TRAIN_SEED + 100 * seed + i, shape=tuple(shape)) for i in range(n_train)]
    q = QUICK_UNET
    unet = UNetConfig(dims=q["dims"], num_classes=1, base_features=q["base_features"], depth=q["depth"],
                      dropout_rate=q["dropout_rate"])
    model, _ = train_model([p.image for p in phantoms], [p.label for p in phantoms], unet, epochs=q["epochs"],
                           steps_per_epoch=q["steps_per_epoch"], batch_size=q["batch_size"],
                           learning_rate=q["learning_rate"], seed=seed, progress=progress)
    return model


# --------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------

CSV_COLUMNS = ("estimator", "needs", "higher_is_uncertain", "auroc", "auprc", "ece_confidence", "r_dice_default",
               "r_default_tau", "r_dice_best", "r_best_quantile", "l_auc_mean", "l_auc_gcnn", "description")
OUTPUT_FILES = ("comparison.csv", "comparison.json", "comparison.md", "comparison.png")


def _csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if isinstance(r.get(k), float) and not math.isfinite(r[k]) else r.get(k))
                         for k in CSV_COLUMNS})
    return buf.getvalue()


def write_comparison(result: EstimatorComparison, out_dir: Union[str, Path], *, overwrite: bool = False,
                     extra: Optional[dict] = None) -> Path:
    """Write ``comparison.csv``, ``.json``, ``.md`` and ``.png`` into ``out_dir`` (built in a temporary folder
    and moved into place; an existing non-empty ``out_dir`` is replaced only with ``overwrite``).

    Args:
      extra: more JSON fields (e.g. the data source), merged into ``comparison.json``.
    """
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        (tmp / "comparison.csv").write_text(_csv(result.rows))
        payload = result.to_json()
        if extra:
            payload.update(jsonable(extra))
        (tmp / "comparison.json").write_text(json.dumps(payload, indent=2) + "\n")
        (tmp / "comparison.md").write_text(result.markdown())
        if figures_or_warn("comparison.png"):
            plot_estimator_comparison(result, tmp / "comparison.png")
    return Path(out_dir)
