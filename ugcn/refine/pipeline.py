"""Method R end to end on arrays: graph -> per-volume GCN fit -> refined masks, baselines, Dice.

:func:`refine_volume` refines one volume; :func:`refine_batch` builds every graph on the host and fits
them all with the vmapped :func:`~ugcn.refine.fit.fit_batch` (one compiled program per bucket and batch
size). Inputs are plain arrays, so any segmentation model (or a folder of MC sample maps) can feed it; the
uncertainty map is whatever estimator the caller chose, and ``tau`` is on its scale.

Outputs (all ``u8[X, Y, Z]``, 0 outside the ROI):
  - ``refined``: the refinement: with ``replace="all"`` (the method) the GCN prediction ``out > threshold``
    on every node, ROI voxels that are not nodes 0 (docs/method.md R12, as the reference); with
    ``replace="unlabelled"`` (the default) the next mask.
  - ``refined_unlabelled``: ``Ŷ`` with only the unlabelled (uncertain) nodes replaced by the GCN.
  - ``expectation_mask``: ``E > 0.5`` inside the ROI (restricted to the ROI like every other method).
  - ``cnn``: ``Ŷ``, the largest 26-connected component of the prediction.
  - ``crf``: the dense-CRF baseline (``crf=True``; ``None`` when pydensecrf is missing: a message says so).

Self-check (:mod:`ugcn.refine.selfcheck`): every fit is scored against ``Ŷ`` on the held-out labelled
nodes; with several candidate graphs (``config.variants``) the best passing one is kept
(:mod:`ugcn.refine.variants`). When no fit passes, both refined masks are ``Ŷ``, a ``RuntimeWarning`` says
why, and the status is ``"fallback"`` (``check.fallback=False``: the failed fit is returned, status
``"check_failed"``, with the same warning). ``RefineResult.selfcheck``/``selection`` record the scores.

Deliberate handling of degenerate inputs (``status`` and ``messages`` say what happened; never NaN):
  - empty prediction -> every mask empty, status ``"empty_prediction"``.
  - no voxel with ``U > τ`` in the ROI -> nothing to refine, the refined masks are ``Ŷ``
    (status ``"no_uncertain_voxels"``).
  - no labelled node (everything uncertain) -> nothing to learn from, the refined masks are ``Ŷ`` and a
    warning is issued (status ``"no_labelled_nodes"``).
  - labelled nodes of one class only -> the fit is still defined (BCE on one class) and simply predicts
    that class everywhere; a message says so.
  - a graph above ``max_nodes`` -> ``ValueError`` naming the count and the options to change.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from typing import NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from ugcn.config import setting
from ugcn.evaluate.metrics import dice
from ugcn.graph.voxel_graph import FEATURE_NORMS, LONG_RANGE, TAU_MODES, VoxelGraph, build_voxel_graph
from ugcn.parallel.mesh import mesh_size, padded_size, resolve_mesh
from ugcn.refine.crf import CRFConfig, CRFUnavailableError, crf_refine
from ugcn.refine.fit import FitConfig, bucket_size, fit_batch, fit_gcn, pad_graph, stack_graphs
from ugcn.refine.selfcheck import SelfCheckConfig, check_fit, scores_dict, validation_scores
from ugcn.refine.variants import CONFIGURED, DEFAULT_VARIANTS, Variant, select_variant

MASK_NAMES = ("refined", "refined_unlabelled", "expectation_mask", "cnn", "crf")


REPLACE_MODES = ("all", "unlabelled")
#: What the GCN sees of a node (:attr:`RefineConfig.node_features`): the graph's feature columns are the M
#: intensity channels, then ``E``, then ``U``.
NODE_FEATURES = ("all", "no_uncertainty", "intensity")


def select_node_features(features: np.ndarray, node_features: str) -> np.ndarray:
    """The columns of ``features: f32[N, M + 2]`` (``[intensity × M, E, U]``) that ``node_features`` names:
    ``"all"`` (the method), ``"no_uncertainty"`` (``[intensity × M, E]``) or ``"intensity"`` (``[N, M]``)."""
    if node_features not in NODE_FEATURES:
        raise ValueError(f"node_features must be one of {NODE_FEATURES}, got {node_features!r}")
    keep = {"all": features.shape[1], "no_uncertainty": features.shape[1] - 1, "intensity": features.shape[1] - 2}
    return features[:, : keep[node_features]]


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Every setting of method R. The defaults are the safe, selecting configuration (:data:`PRESETS`
    ``"safe"``); ``RefineConfig.preset("reference")`` is the published method (docs/method.md defaults).

    Attributes:
      tau, tau_mode, max_uncertain_fraction, dilation, k_random, long_range, long_range_weight, margin, lam,
        feature_norm, row_normalize, val_fraction, max_nodes: see
        :func:`~ugcn.graph.voxel_graph.build_voxel_graph` (``tau_mode="adaptive"`` caps the uncertain share
        of ``Ŷ`` at ``max_uncertain_fraction``; the method: ``"absolute"``).
      node_features: what the GCN sees of a node: ``"all"`` (intensity, ``E``, ``U``: the method),
        ``"no_uncertainty"`` (intensity, ``E``) or ``"intensity"`` (the default). The edges (k-NN partners
        included) are built from all three either way. ``E`` and ``U`` decide which nodes are labelled
        (``U <= τ``), so on the labelled nodes they are truncated (``U`` below τ, ``E`` near 0 or 1) and every
        uncertain node lies outside their range: a fit that uses them extrapolates there. Measured on the
        regime study's cached CNN outputs (51 volumes and the synthetic sphere), dropping them turned
        every volume made worse by more than one Dice point into a gain, and kept the sphere's gain.
      threshold: GCN output threshold.
      confidence_margin: a replaced node becomes foreground only where ``out > threshold + margin`` and keeps
        ``Ŷ`` below (the method: 0); :attr:`removal_margin` is the band for turning it to background
        (:func:`gcn_classes`). On simulated CNN outputs of graded quality, 0.4 turned 4 of 15 volumes made
        worse by more than one Dice point into none; on the regime study's 32 volumes with intensity-only
        features, 0.2 left 5 volumes worse by more than one point, 0.4 none.
      removal_margin: the margin for the other direction: a node that ``Ŷ`` calls foreground is set to
        background only where ``out <= threshold - removal_margin`` (``None``: ``confidence_margin``, the same
        band both ways). Default 0.48: on the regime study's cached CNN outputs (two grids, 56 volumes) the
        volumes made worse came from removals at ``out <= 0.1`` (on the current grid -2.5 Dice points: 52
        removals, 1 of them background in the truth); removals only at ``out <= 0.02`` left the worst volume
        at -0.35 / -0.45 points and kept the synthetic case's removals (Dice 0.96). Gating removals by the
        node's intensity (unlike the certain foreground's) or by the validation score did not separate the
        harmful removals: the worst volumes have the phantoms' highest validation scores (docs/method.md).
      sparse_removal: an uncertain node that ``Ŷ`` calls foreground and the GCN does not (output below
        ``threshold``) becomes background where less than this share of its 3×3×3 voxel neighbourhood lies
        in ``Ŷ`` (:func:`sparse_nodes`; 0: off, the method). Aimed at the CNN's leaks into adjacent tissue of
        the organ's intensity, which the GCN cannot separate by intensity (it is unsure there, so the
        margins keep ``Ŷ``): the wrong uncertain foreground is thin and ragged. Default 0.35 (at most 9 of
        27; a voxel on a straight edge of a block has 12, a convex corner 8). On the regime study's 32
        cached volumes (three fit seeds) it raised the default's mean gain from +0.10..+0.13 to
        +0.24..+0.29 Dice points in the regimes with CNN Dice >= 0.8, the worst volume from -0.24..-0.34 to
        -0.06, the lowest regime mean from -0.02..+0.02 to +0.07, and left the synthetic sphere unchanged;
        0.45 (edges included) lost 1.1-1.2 points on one volume (docs/method.md).
      sparse_addition: the mirror of :attr:`sparse_removal` for the GCN's additions: an uncertain node outside
        ``Ŷ`` that the GCN adds (output above ``threshold + confidence_margin``) is kept only where, with it, at
        least this share of its 3×3×3 neighbourhood is foreground, counted on ``Ŷ`` plus the additions already
        kept, in rounds until no further addition is kept (:func:`supported_additions`; 0: off, the method). So the
        refinement never adds a voxel that the sparse removal would call a leak, yet an addition can support the
        next, and a correct shell two voxels thick still grows. Default 0.35 (with itself at least 10 of 27). On
        the held-out regime study (``--seed 1``) the GCN added a one-voxel sheet along ``Ŷ`` on one volume (59
        voxels at output > 0.9, 57 of them background): -1.29 Dice points; with the rule -0.80, the mean gain
        over each study within 0.01 points, the synthetic sphere unchanged (docs/method.md).
      context_addition, context_sigma, context_reach: less confident additions, checked by their surroundings: an
        uncertain node outside ``Ŷ`` whose GCN output is above ``context_addition`` but not above ``threshold +
        confidence_margin`` is added too where :func:`context_support` passes it: the intensity around it, smoothed
        over the voxels outside ``Ŷ`` only (Gaussian of ``context_sigma`` mm per axis), is closer to the organ's
        level (the median over the certain foreground nodes of the intensity smoothed inside ``Ŷ``) than to the
        background's (the median over the certain background nodes within ``context_reach`` mm of ``Ŷ``). It acts
        before the sparse addition, which then also applies to these nodes. ``context_addition`` at or above
        ``threshold + confidence_margin`` (1.0) adds nothing: off, the method. The GCN sees one voxel's
        intensity, which does not separate the organ from adjacent tissue of nearly its intensity (the phantoms'
        noise is 18 HU, the organ 5 HU from its neighbours); averaged over a few millimetres outside ``Ŷ`` it does
        better. Defaults 0.5, 3 mm, 6 mm: fixed on the regime study's seeds 0 and 1 (mean gain +0.25 / +0.23 ->
        +0.46 / +0.52 Dice points, worst volume -0.09 / -0.83, as without it -0.06 / -0.80), then checked on the
        held-out seeds 2 and 3 (docs/method.md, *The additions*); the synthetic sphere's additions are above 0.9
        and unchanged. At 2 mm one volume lost over 2 points.
      context_removal, context_removal_sigma, context_removal_share: the mirror for removals: an uncertain node of
        ``Ŷ`` whose GCN output is below ``context_removal`` (and above ``threshold - removal_margin``, where it goes
        anyway) becomes background where its :func:`leak_level` is above ``context_removal_share``: the intensity
        around it smoothed over the voxels of ``Ŷ`` only (Gaussian of ``context_removal_sigma`` mm per axis) lies that
        share of the way from the organ's level (the median of the same over the certain foreground nodes) to the
        intensity smoothed over the voxels outside ``Ŷ`` around it (the tissue the CNN may have leaked into). It acts
        before the sparse rules. ``context_removal`` at or below ``threshold - removal_margin`` (0) removes nothing:
        off, the method. The GCN keeps most of the CNN's leaks (Ŷ's wrong uncertain voxels have outputs spread over
        0.02-0.9 like its right ones), and a removal oracle at outputs below 0.5 would add +1.7 / +1.9 Dice points at
        CNN Dice >= 0.8 on the regime study's seeds 0 / 1. Defaults 0.5, 2 mm, 0.4: fixed on seeds 0 and 1 (AUC of
        the level, wrong against right uncertain voxels of ``Ŷ`` below 0.5: 0.87 / 0.87; 3 mm 0.82, 1 mm 0.84; mean
        gain +0.46 / +0.52 -> +1.03 / +1.08 Dice points, at CNN Dice >= 0.8 +0.40 / +0.64 -> +0.70 / +1.11, worst
        volume -0.09 / -0.83 -> -0.13 / -0.51), then checked on held-out seeds: seeds 2 / 3 +0.69 / +0.85 ->
        +1.04 / +1.74 (worst 0.00 both), seed 4 of ``study_refine.py --size strong`` +0.59 -> +0.81, at CNN Dice
        >= 0.8 +0.77 -> +0.90, worst -0.54 -> -0.60 (docs/method.md, *The removals*); the synthetic sphere stays
        at 0.96. Shares of 0.2 and below lost over a point on some volumes.
      thin_removal, thin_removal_share: what the removals leave thin: after the context removal and the sparse
        removal, an uncertain node of ``Ŷ`` that the GCN keeps without being confident (output at most ``threshold +
        confidence_margin``, still in ``Ŷ``) and whose :func:`leak_level` is above ``thin_removal_share`` becomes
        background where less than ``thin_removal`` of its 3×3×3 neighbourhood (itself included) is left in ``Ŷ``
        minus the nodes removed so far (:func:`thin_removals`; one pass, before the sparse addition; 0: off, the
        method). The GCN keeps most of a leak at outputs 0.5-0.9, where the leak level alone does not separate it
        safely; once the doubtful part of a leak is gone, what is left of it is thin. 0.4 (at most 10 of 27) and 0.3:
        fixed post hoc on the regime study's seeds 0-4 (mean gain at CNN Dice >= 0.8 +0.70 / +1.11 / +0.90 ->
        +0.88 / +1.18 / +1.03 on seeds 0 / 1 / 4, worst volume -0.16 / -0.51 / -0.59; 770 of its 910 removals
        there were wrong voxels of ``Ŷ``), pre-registered before the held-out seed 5 of ``--size strong`` (every regime
        below CNN Dice 0.8 there): mean gain +0.85 -> +0.88 over its 32 volumes, worst volume -0.23 -> -0.21, lowest
        regime mean +0.49 -> +0.50 (docs/method.md, *The removals*); the synthetic sphere stays at 0.96.
      fill_addition, fill_addition_share, fill_addition_removed, fill_addition_fpr: less confident additions where
        ``Ŷ`` surrounds them, in volumes without signs of a leak: after the removals, an uncertain node outside ``Ŷ``
        that the GCN has not added, with output above ``fill_addition`` (but not above ``threshold +
        confidence_margin``, where it is added anyway), is added where at least ``fill_addition_share`` of its 3×3×3
        neighbourhood lies in ``Ŷ`` (:func:`fill_additions`; before the sparse addition, which then also applies to
        these nodes), but only in a volume where the removals so far took less than ``fill_addition_removed`` of
        ``Ŷ``'s voxels and the GCN puts at most ``fill_addition_fpr`` of the labelled background nodes (``Ŷ`` = 0)
        above ``threshold``. ``fill_addition`` at or above ``threshold + confidence_margin`` adds nothing: off, the
        method. On the regime study's volumes the CNN's uncertain misses next to ``Ŷ`` are often right at GCN
        outputs 0.3-0.9, but in some volumes (a CNN that already over-reaches, a GCN that calls much of the certain
        background foreground) almost none of them are: the two gates are those volumes' signs. Defaults 0.3, 0.35
        (with ``Ŷ``'s own count, at least 10 of 27), 0.03, 0.25: fixed post hoc on seeds 0-6 (mean gain over the 64
        volumes of the regimes at CNN Dice >= 0.8 +1.00 -> +1.23, no volume below -1, no seed's mean lower;
        docs/method.md, *The fill addition*), pre-registered and then checked once on the held-out seed 7 of
        ``study_refine.py --size strong`` (every regime at CNN Dice >= 0.8): +1.03 -> +1.09 over its 32 volumes, +0.68
        -> +0.76 over the 23 whose CNN Dice is >= 0.8, worst volume -0.40 -> -0.47; a small gain out of sample.
      replace: what the ``refined`` mask takes from the GCN: ``"all"`` nodes (the method) or only the
        ``"unlabelled"`` (uncertain) ones, keeping ``Ŷ`` on the labelled nodes.
      variants: extra candidate graphs (:class:`~ugcn.refine.variants.Variant`) fitted beside the configured
        one in one batched program; the candidate with the best validation score is returned
        (:func:`~ugcn.refine.variants.select_variant`). ``()``: the configured graph only.
      check: :class:`~ugcn.refine.selfcheck.SelfCheckConfig`: when a fit fails the self-check, the refined
        masks fall back to ``Ŷ`` with a warning (status ``"fallback"``).
      crf: :class:`~ugcn.refine.crf.CRFConfig` of the dense-CRF baseline (default: unary from ``E``, widths in
        mm, tuned on the demo's phantoms); :data:`~ugcn.refine.crf.REFERENCE_CRF` is the published setting.
      fit: :class:`~ugcn.refine.fit.FitConfig` (epochs, hidden, learning rate, weight decay, dropout, loss).
      min_bucket_nodes, min_bucket_edges: smallest padding buckets (larger values = fewer recompiles
        for small graphs).
    """

    tau: float = setting(0.8, min=0, help="uncertainty threshold on the estimator's scale (absolute, adaptive) or "
                         "quantile level in [0, 1] over the ROI (quantile)")
    tau_mode: str = setting("adaptive", choices=TAU_MODES, help="absolute: U > tau (the method); quantile: U above "
                            "its tau-quantile over the ROI; adaptive: as absolute, but the uncertain share of the "
                            "prediction is capped at --max-uncertain-fraction")
    max_uncertain_fraction: float = setting(0.5, gt=0, max=1, help="the cap of --tau-mode adaptive")
    dilation: tuple = setting((5, 7, 7), min=1, help="box size of the dilation of the uncertain voxels along the "
                              "array axes 0, 1, 2 (the ROI)")
    k_random: int = setting(8, min=0, help="long-range edges per node (0: none; the method: 16)")
    long_range: str = setting("knn", choices=LONG_RANGE, help="long-range partners: random (the method) or the "
                              "k nearest nodes in feature space (knn)")
    long_range_weight: float = setting(1.0, min=0, help="factor on the long-range edges' weights (1: the method)")
    margin: int = setting(0, min=0, help="voxels added around the ROI box, clipped to the volume")
    lam: float = setting(0.0, min=0, help="weight of the diversity term in the edge weights (0 drops it; the method: "
                         "0.5)")
    feature_norm: str = setting("zscore", choices=FEATURE_NORMS, help="node intensity features: zscore, or "
                                "reference (divided by the variance, the reference code's quirk)")
    row_normalize: bool = setting(False, help="divide each node's feature vector by its sum (the reference code)")
    val_fraction: float = setting(0.2, min=0, lt=1, help="share of the labelled nodes held out of the fit for the "
                                  "self-check")
    max_nodes: Optional[int] = setting(2_000_000, min=1, help="refuse a volume whose graph would have more nodes "
                                       "(none: no limit)")
    node_features: str = setting("intensity", choices=NODE_FEATURES, help="node features the GCN sees: all "
                                 "(intensity, E, U: the method), no_uncertainty (intensity, E) or intensity")
    threshold: float = setting(0.5, gt=0, lt=1, help="GCN output threshold")
    confidence_margin: float = setting(
        0.4, min=0, lt=0.5, help="a replaced node takes the GCN's class only where its probability is beyond "
        "threshold +- margin, else keeps the prediction (the method: 0)")
    removal_margin: Optional[float] = setting(
        0.48, min=0, lt=0.5, help="a node the prediction calls foreground becomes background only where its "
        "probability is <= threshold - this margin (none: --confidence-margin)")
    sparse_removal: float = setting(
        0.35, min=0, max=1, help="an uncertain predicted voxel the GCN calls background (output < threshold) is "
        "removed where less than this share of its 3x3x3 neighbourhood is predicted (0: off)")
    sparse_addition: float = setting(
        0.35, min=0, max=1, help="an uncertain voxel outside the prediction the GCN adds is kept only where, with "
        "it, at least this share of its 3x3x3 neighbourhood is foreground (the prediction plus the kept additions, "
        "grown in rounds) (0: off)")
    context_addition: float = setting(
        0.5, min=0, max=1, help="an uncertain voxel outside the prediction whose GCN output is above this but not "
        "above threshold + confidence margin is also added where the intensity around it (smoothed outside the "
        "prediction) is closer to the organ's than to the nearby certain background's (at or above threshold + "
        "margin: off)")
    context_sigma: float = setting(3.0, gt=0, help="width (mm, Gaussian sigma per axis) of the smoothing of "
                                   "--context-addition")
    context_reach: float = setting(6.0, gt=0, help="certain background within this distance (mm) of the prediction "
                                   "is the background reference of --context-addition")
    context_removal: float = setting(
        0.5, min=0, max=1, help="an uncertain predicted voxel whose GCN output is below this (but above threshold - "
        "removal margin, where it is removed anyway) is also removed where the intensity around it, smoothed over the "
        "prediction, lies at least --context-removal-share of the way from the organ's level to the level smoothed "
        "outside the prediction around it (at or below threshold - removal margin: off)")
    context_removal_sigma: float = setting(2.0, gt=0, help="width (mm, Gaussian sigma per axis) of the smoothing of "
                                           "--context-removal")
    context_removal_share: float = setting(0.4, gt=0, help="how far (0: the organ's level, 1: the local background's) "
                                           "the smoothed intensity of a voxel of --context-removal must lie")
    thin_removal: float = setting(
        0.4, min=0, max=1, help="after the removals above, an uncertain predicted voxel the GCN is not confident about "
        "(output at most threshold + confidence margin) whose leak level (as --context-removal's) is above "
        "--thin-removal-share is also removed where less than this share of its 3x3x3 neighbourhood is left in the "
        "prediction minus the removals so far (0: off)")
    thin_removal_share: float = setting(0.3, gt=0, help="the leak level above which --thin-removal may remove a "
                                        "voxel (0: the organ's level, 1: the local background's)")
    fill_addition: float = setting(
        0.3, min=0, max=1, help="after the removals, an uncertain voxel outside the prediction whose GCN output is "
        "above this (but not above threshold + confidence margin) is also added where at least --fill-addition-share "
        "of its 3x3x3 neighbourhood is predicted, in volumes where the removals took less than --fill-addition-removed "
        "of the prediction and the GCN puts at most --fill-addition-fpr of the labelled background above threshold (at "
        "or above threshold + margin: off)")
    fill_addition_share: float = setting(0.35, gt=0, max=1, help="the share of its 3x3x3 neighbourhood in the "
                                         "prediction that --fill-addition asks of a voxel")
    fill_addition_removed: float = setting(0.03, min=0, help="--fill-addition adds nothing in a volume where the "
                                           "removals took at least this share of the prediction's voxels")
    fill_addition_fpr: float = setting(0.25, min=0, max=1, help="--fill-addition adds nothing in a volume where the "
                                       "GCN puts more than this share of the labelled background nodes above threshold")
    replace: str = setting("unlabelled", choices=REPLACE_MODES, help="what the refined mask takes from the GCN: all "
                           "nodes (the method) or only the unlabelled (uncertain) ones")
    variants: tuple[Variant, ...] = DEFAULT_VARIANTS
    check: SelfCheckConfig = SelfCheckConfig()
    crf: CRFConfig = CRFConfig()
    fit: FitConfig = FitConfig()
    min_bucket_nodes: int = setting(256, min=1, cli=False)
    min_bucket_edges: int = setting(256, min=1, cli=False)

    def __post_init__(self):
        if self.replace not in REPLACE_MODES:
            raise ValueError(f"replace must be one of {REPLACE_MODES}, got {self.replace!r}")
        if self.node_features not in NODE_FEATURES:
            raise ValueError(f"node_features must be one of {NODE_FEATURES}, got {self.node_features!r}")

    @staticmethod
    def preset(name: str, **overrides) -> RefineConfig:
        """The configuration called ``name`` in :data:`PRESETS`, with ``overrides`` (field=value) applied."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose one of {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def graph_kwargs(self) -> dict:
        return dict(
            tau=self.tau, tau_mode=self.tau_mode, dilation=tuple(self.dilation), k_random=self.k_random,
            margin=self.margin, lam=self.lam, feature_norm=self.feature_norm, row_normalize=self.row_normalize,
            val_fraction=self.val_fraction, max_nodes=self.max_nodes, long_range=self.long_range,
            long_range_weight=self.long_range_weight, max_uncertain_fraction=self.max_uncertain_fraction,
        )

    def candidates(self) -> tuple:
        """The candidate graphs fitted per volume: the configured one, then :attr:`variants`."""
        return (CONFIGURED,) + tuple(self.variants)


PRESETS = {
    # The default: τ capped when the CNN is uncertain over most of its organ, class-balanced BCE, the better of
    # two graphs (k-NN long-range edges, 6-neighbour edges only; no diversity term) by validation score, only
    # uncertain nodes replaced where the GCN is confident (a stricter margin for removing a predicted voxel than
    # for adding one), thin uncertain foreground the GCN does not support removed and no such thin foreground added,
    # less confident additions where the intensity around them looks like the organ's, less confident removals where
    # the intensity inside the prediction around them looks like the adjacent background's, the GCN seeing intensity
    # only, and the self-check's fallback.
    "safe": RefineConfig(),
    # The published method (docs/method.md R1-R12): absolute τ, random edges, plain BCE, every node replaced.
    # The self-check still runs and falls back on a failed fit (check=SelfCheckConfig(fallback=False): warn only).
    "reference": RefineConfig(tau_mode="absolute", k_random=16, long_range="random", lam=0.5, replace="all",
                              variants=(), confidence_margin=0.0, removal_margin=None, node_features="all",
                              sparse_removal=0.0, sparse_addition=0.0, context_addition=1.0, context_removal=0.0,
                              thin_removal=0.0, fill_addition=1.0, fit=FitConfig(loss="bce")),
}


def gcn_classes(probs: np.ndarray, prediction: np.ndarray, config: RefineConfig) -> np.ndarray:
    """The class each node takes from the GCN: ``u8[N]`` from ``probs: f32[N]`` (foreground probability) and
    ``prediction: [N]`` (``Ŷ`` at the nodes).

    Foreground where ``probs > threshold + confidence_margin``; background where ``probs <= threshold - m``
    with ``m = removal_margin`` (``confidence_margin`` when ``None``); ``Ŷ`` in between. With margins of 0 this
    is ``probs > threshold`` (the method).
    """
    removal = config.confidence_margin if config.removal_margin is None else config.removal_margin
    keep = np.asarray(prediction).astype(np.uint8)
    return np.where(probs > config.threshold + config.confidence_margin, 1,
                    np.where(probs <= config.threshold - removal, 0, keep)).astype(np.uint8)


def _box_around(mask: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, tuple]:
    """``mask != 0`` cropped to the box around ``coords: i32[N, 3]`` plus one voxel (clipped to the volume), and
    ``coords`` as indices into the crop."""
    lo = np.maximum(coords.min(0) - 1, 0)
    hi = np.minimum(coords.max(0) + 2, mask.shape)
    return np.asarray(mask)[tuple(slice(a, b) for a, b in zip(lo, hi))] != 0, tuple((coords - lo).T)


def _neighbour_counts(foreground: np.ndarray) -> np.ndarray:
    """Per voxel, the foreground voxels of its 3×3×3 neighbourhood (itself included), exact integers.

    Outside the array counts as 0: on a crop of :func:`_box_around` that is the volume's own outside only where
    the crop touches the volume's border; elsewhere the crop keeps a one-voxel ring, so the counts at the
    ``coords`` are those of the whole volume.
    """
    return ndimage.correlate(foreground.astype(np.int32), np.ones((3, 3, 3), np.int32), mode="constant", cval=0)


def sparse_nodes(mask: np.ndarray, coords: np.ndarray, share: float) -> np.ndarray:
    """Which voxels ``coords: i32[N, 3]`` have less than ``share`` of their 3×3×3 neighbourhood (the voxel
    itself included; outside the volume counts as 0) in ``mask: [X, Y, Z]``: ``bool[N]``.

    Counts are exact integers (``share`` compares against ``count / 27``); only the box around ``coords``
    (plus one voxel) is filtered.
    """
    coords = np.asarray(coords)
    if coords.size == 0 or share <= 0:
        return np.zeros(coords.shape[0], bool)
    foreground, local = _box_around(mask, coords)
    return _neighbour_counts(foreground)[local] < share * 27


def supported_additions(mask: np.ndarray, coords: np.ndarray, share: float) -> np.ndarray:
    """Which candidate additions ``coords: i32[N, 3]`` (voxels outside ``mask: [X, Y, Z]``) are kept by
    :attr:`RefineConfig.sparse_addition`: ``bool[N]``.

    A candidate is kept where, with it, at least ``share`` of its 3×3×3 neighbourhood (itself included; outside
    the volume counts as 0) is foreground, i.e. where :func:`sparse_nodes` would not call it sparse once added.
    Foreground is ``mask`` plus the candidates kept so far; rounds repeat until one keeps nothing new, so the
    result does not depend on the order of ``coords``. ``share <= 0`` keeps every candidate.
    """
    coords = np.asarray(coords)
    if coords.size == 0 or share <= 0:
        return np.ones(coords.shape[0], bool)
    grown, local = _box_around(mask, coords)
    kept = np.zeros(coords.shape[0], bool)
    while True:
        # a candidate not yet kept is not in `grown`: +1 counts it as added (as the sparse removal counts itself)
        new = ~kept & ~(_neighbour_counts(grown)[local] + 1 < share * 27)
        if not new.any():
            return kept
        kept |= new
        grown[tuple(c[new] for c in local)] = True


def uses_context(config: RefineConfig) -> bool:
    """Whether :attr:`RefineConfig.context_addition` adds anything: below ``threshold + confidence_margin``."""
    return config.context_addition < config.threshold + config.confidence_margin


def masked_smooth(image: np.ndarray, mask: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Normalised Gaussian convolution: per voxel, the Gaussian-weighted mean of ``image`` over the voxels of
    ``mask`` only (``sigma`` in voxels per spatial axis; scipy's ``gaussian_filter``, truncated at 4 sigma, reflected
    at the border). ``image: f[X, Y, Z]`` or ``[X, Y, Z, M]``, ``mask: bool[X, Y, Z]``; returns ``f64`` of
    ``image``'s shape, NaN where no voxel of ``mask`` lies within reach."""
    image = np.asarray(image, np.float64)
    m = np.asarray(mask, np.float64)
    sig = tuple(float(s) for s in sigma)
    den = ndimage.gaussian_filter(m, sig)
    if image.ndim == 4:
        num = ndimage.gaussian_filter(image * m[..., None], sig + (0.0,))
        den = den[..., None]
    else:
        num = ndimage.gaussian_filter(image * m, sig)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / np.where(den > 1e-12, den, 1.0), np.nan)


def _smoothing_crop(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, sigma: Sequence[float], *,
                    hold_mask: bool = False) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``image`` and ``mask != 0`` cropped to the box around ``coords: i32[N, 3]`` in which :func:`masked_smooth`
    (``sigma`` in voxels per axis) gives at the ``coords`` the values of the whole volume (and which holds all of
    ``mask`` with ``hold_mask``), and ``coords`` as indices into the crop."""
    full = np.asarray(mask) != 0
    pad = np.asarray([int(4.0 * s + 0.5) + 1 for s in sigma])  # scipy truncates the kernel at int(4 sigma + 0.5)
    lo = np.maximum(coords.min(0) - pad, 0)
    hi = np.minimum(coords.max(0) + pad + 1, full.shape)
    found = ndimage.find_objects(full.astype(np.int8)) if hold_mask else []
    if found:
        lo = np.minimum(lo, [s.start for s in found[0]])
        hi = np.maximum(hi, [s.stop for s in found[0]])
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    return np.asarray(image)[box], full[box], tuple((coords - lo).T)


def context_support(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, certain_fg: np.ndarray,
                    certain_bg: np.ndarray, *, sigma: float, reach: float,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The context check of :attr:`RefineConfig.context_addition`: ``bool[N]`` per node ``coords: i32[N, 3]``.

    The intensity around a node outside ``mask`` (``Ŷ``) is its :func:`masked_smooth` over the voxels outside
    ``mask`` (``sigma`` mm per axis), so that the organ's own voxels do not pull it towards the organ. A node passes
    where that is closer (Euclidean over channels) to the organ's level, the median over the ``certain_fg`` nodes of
    the intensity smoothed over ``mask``, than to the background's, the median of the outside-smoothed intensity over
    the ``certain_bg`` nodes within ``reach`` mm of ``mask`` (all of them when none is that close). No node passes
    without certain nodes of both classes. Only a box around the nodes (4 sigma wider) and the mask is filtered,
    which gives the same values as filtering the whole volume.

    Args:
      image: ``f32[X, Y, Z]`` or ``[X, Y, Z, M]``.
      mask: ``[X, Y, Z]`` ``Ŷ`` (non-zero = foreground).
      coords: node voxels; certain_fg, certain_bg: ``bool[N]`` labelled nodes of each class.
      sigma, reach: mm; spacing: voxel size in mm along the three axes.
    """
    coords = np.asarray(coords)
    certain_fg, certain_bg = np.asarray(certain_fg, bool), np.asarray(certain_bg, bool)
    if coords.size == 0 or not certain_fg.any() or not certain_bg.any():
        return np.zeros(coords.shape[0], bool)
    sig = [sigma / float(s) for s in spacing]
    # the box holds all of the mask too, so that the distances to it are exact
    crop, inside, local = _smoothing_crop(image, mask, coords, sig, hold_mask=True)
    outside_level = masked_smooth(crop, ~inside, sig)[local]
    organ = np.median(masked_smooth(crop, inside, sig)[local][certain_fg], axis=0)
    distance = ndimage.distance_transform_edt(~inside, sampling=tuple(float(s) for s in spacing))[local]
    near = certain_bg & (distance < reach)
    background = np.median(outside_level[near if near.any() else certain_bg], axis=0)
    to_bg = np.sum(np.reshape((outside_level - background) ** 2, (coords.shape[0], -1)), axis=1)
    to_organ = np.sum(np.reshape((outside_level - organ) ** 2, (coords.shape[0], -1)), axis=1)
    return np.asarray(to_bg > to_organ, bool)


def uses_context_removal(config: RefineConfig) -> bool:
    """Whether :attr:`RefineConfig.context_removal` removes anything: above ``threshold - removal margin``."""
    removal = config.confidence_margin if config.removal_margin is None else config.removal_margin
    return config.context_removal > config.threshold - removal


def uses_thin_removal(config: RefineConfig) -> bool:
    """Whether :attr:`RefineConfig.thin_removal` removes anything: a share above 0."""
    return config.thin_removal > 0


def leak_level(image: np.ndarray, mask: np.ndarray, coords: np.ndarray, certain_fg: np.ndarray, *, sigma: float,
               spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """The context check of :attr:`RefineConfig.context_removal`: ``f64[N]`` per node ``coords: i32[N, 3]``, how far
    the intensity around a node lies from the organ's level towards its local background's.

    With ``inside`` the node's :func:`masked_smooth` over the voxels of ``mask`` (``Ŷ``; ``sigma`` mm per axis),
    ``outside`` the same over the voxels outside ``mask`` (the tissue next to the node) and ``organ`` the median of
    ``inside`` over the ``certain_fg`` nodes, the level is ``<inside - organ, outside - organ> / |outside - organ|²``
    (over channels): 0 at the organ's level, 1 at the local background's, above 0.5 where ``inside`` is closer to
    ``outside`` than to ``organ``. NaN where no voxel outside ``mask`` is within the kernel's reach, where ``outside``
    equals ``organ`` (up to a relative 1e-6), and everywhere without a ``certain_fg`` node. Only a box around the
    nodes (4 sigma wider) is filtered, which gives the same values as filtering the whole volume.

    Args:
      image: ``f32[X, Y, Z]`` or ``[X, Y, Z, M]``.
      mask: ``[X, Y, Z]`` ``Ŷ`` (non-zero = foreground).
      coords: node voxels; certain_fg: ``bool[N]`` labelled foreground nodes.
      sigma: mm; spacing: voxel size in mm along the three axes.
    """
    coords = np.asarray(coords)
    certain_fg = np.asarray(certain_fg, bool)
    n = coords.shape[0]
    if coords.size == 0 or not certain_fg.any():
        return np.full(n, np.nan)
    sig = [sigma / float(s) for s in spacing]
    crop, inside_mask, local = _smoothing_crop(image, mask, coords, sig)
    inside = np.reshape(masked_smooth(crop, inside_mask, sig)[local], (n, -1))
    outside = np.reshape(masked_smooth(crop, ~inside_mask, sig)[local], (n, -1))
    organ = np.median(inside[certain_fg], axis=0)
    towards = outside - organ
    num = np.sum((inside - organ) * towards, axis=1)
    den = np.sum(towards**2, axis=1)
    # equal levels up to rounding (a relative 1e-6) leave nothing to compare with
    defined = np.isfinite(num) & np.isfinite(den) & (den > 1e-12 * (np.sum(organ**2) + 1.0))
    return np.where(defined, num / np.where(defined, den, 1.0), np.nan)


def thin_removals(mask: np.ndarray, coords: np.ndarray, removed: np.ndarray, candidates: np.ndarray,
                  leak: np.ndarray, config: RefineConfig) -> np.ndarray:
    """The removals of :attr:`RefineConfig.thin_removal`: ``bool[N]`` per node ``coords: i32[N, 3]``.

    A ``candidates`` node (``bool[N]``: in the pipeline, an uncertain node of ``mask`` (``Ŷ``, ``[X, Y, Z]``) that
    the GCN keeps without being confident) is removed where its ``leak`` level (``f[N]``, :func:`leak_level`; NaN
    never passes) is above ``config.thin_removal_share`` and less than ``config.thin_removal`` of its 3×3×3
    neighbourhood (itself included; outside the volume counts as 0) lies in ``mask`` minus the ``removed`` nodes
    (``bool[N]``). One pass: a removal here does not thin its neighbours' counts.
    """
    candidates = np.asarray(candidates, bool) & (np.nan_to_num(np.asarray(leak, np.float64), nan=-np.inf)
                                                 > config.thin_removal_share)
    if not candidates.any() or config.thin_removal <= 0:
        return np.zeros(candidates.shape[0], bool)
    left = np.asarray(mask) != 0
    removed = np.asarray(removed, bool)
    if removed.any():
        left = left.copy()
        left[tuple(np.asarray(coords)[removed].T)] = False
    out = candidates.copy()
    out[candidates] = sparse_nodes(left, np.asarray(coords)[candidates], config.thin_removal)
    return out


def uses_fill_addition(config: RefineConfig) -> bool:
    """Whether :attr:`RefineConfig.fill_addition` adds anything: below ``threshold + confidence_margin``."""
    return config.fill_addition < config.threshold + config.confidence_margin


def fill_additions(mask: np.ndarray, coords: np.ndarray, candidates: np.ndarray, removed: int,
                   background_fpr: float, config: RefineConfig) -> np.ndarray:
    """The additions of :attr:`RefineConfig.fill_addition`: ``bool[N]`` per node ``coords: i32[N, 3]``.

    A ``candidates`` node (``bool[N]``: in the pipeline, an uncertain node outside ``mask`` (``Ŷ``, ``[X, Y, Z]``)
    that the GCN has not added, with output in ``(fill_addition, threshold + confidence_margin]``) is added where at
    least ``config.fill_addition_share`` of its 3×3×3 neighbourhood (outside the volume counts as 0) lies in ``mask``,
    i.e. where :func:`sparse_nodes` would not call it sparse. Nothing is added where ``removed`` (the voxels of
    ``mask`` the removals took) reaches ``config.fill_addition_removed`` of ``mask``'s voxels, or where
    ``background_fpr`` (the share of labelled background nodes the GCN puts above threshold; NaN: none labelled)
    is above ``config.fill_addition_fpr``.
    """
    candidates = np.asarray(candidates, bool)
    size = int(np.count_nonzero(mask))
    if (not candidates.any() or not uses_fill_addition(config) or not removed < config.fill_addition_removed * size
            or not background_fpr <= config.fill_addition_fpr):
        return np.zeros(candidates.shape[0], bool)
    out = candidates.copy()
    out[candidates] = ~sparse_nodes(mask, np.asarray(coords)[candidates], config.fill_addition_share)
    return out


class RefineInput(NamedTuple):
    """One volume for :func:`refine_batch` (arrays as in :func:`refine_volume`)."""

    image: np.ndarray
    prediction: np.ndarray
    expectation: np.ndarray
    uncertainty: np.ndarray
    label: Optional[np.ndarray] = None
    name: Optional[str] = None
    spacing: Optional[tuple] = None


@dataclasses.dataclass
class RefineResult:
    """Result of refining one volume.

    Attributes:
      refined, refined_unlabelled, expectation_mask, cnn: ``u8[X, Y, Z]`` (see the module docstring).
      crf: ``u8[X, Y, Z]`` or ``None``.
      node_probs: ``f32[N]`` GCN foreground probability per node (``None`` when no fit ran).
      status: ``"refined"``, ``"fallback"`` (the fit failed the self-check: refined masks = ``Ŷ``),
        ``"check_failed"`` (failed, returned anyway: ``check.fallback=False``), ``"empty_prediction"``,
        ``"no_uncertain_voxels"`` or ``"no_labelled_nodes"``.
      selfcheck: the returned fit's validation scores against ``Ŷ``, ``passed`` and ``reason`` (empty
        when no fit ran).
      selection: ``variant`` (the candidate returned, ``None`` on fallback), ``why``, and every candidate's
        scores (empty when no fit ran).
      changes: what each step did to ``Ŷ`` on the nodes the refined mask takes (the uncertain ones, or all with
        ``replace="all"``), in the pipeline's order, each counted against the classes before it: ``gcn_added`` /
        ``gcn_removed`` (the GCN's confident classes), then the nodes whose class each rule that ran changed
        (``context_addition``, ``context_removal``, ``sparse_removal``, ``thin_removal``, ``fill_addition``,
        ``sparse_addition_refused``), and ``added`` / ``removed``, the net result against ``Ŷ`` (empty when no fit
        ran or the fit fell back to ``Ŷ``).
      messages: what was unusual, in words.
      graph_stats: nodes, edges, labelled, unlabelled, train, ROI, threshold (empty when no graph).
      timings: seconds: ``graph``, ``fit`` (includes compilation on a first call), ``crf``, ``total``.
      dice: Dice per mask name against the label (``None`` without a label).
      uncertainty_name: the estimator's name, for reports.
      graph: the :class:`VoxelGraph` of the returned fit, its ``features`` the columns ``node_features`` keeps
        (``None`` when none was built).
    """

    refined: np.ndarray
    refined_unlabelled: np.ndarray
    expectation_mask: np.ndarray
    cnn: np.ndarray
    crf: Optional[np.ndarray] = None
    node_probs: Optional[np.ndarray] = None
    status: str = "refined"
    messages: list = dataclasses.field(default_factory=list)
    graph_stats: dict = dataclasses.field(default_factory=dict)
    timings: dict = dataclasses.field(default_factory=dict)
    dice: Optional[dict] = None
    uncertainty_name: str = "uncertainty"
    graph: Optional[VoxelGraph] = dataclasses.field(default=None, repr=False)
    selfcheck: dict = dataclasses.field(default_factory=dict)
    selection: dict = dataclasses.field(default_factory=dict)
    changes: dict = dataclasses.field(default_factory=dict)

    def masks(self) -> dict:
        """``{name: u8[X, Y, Z]}`` of every mask that exists (``crf`` only when computed)."""
        return {name: getattr(self, name) for name in MASK_NAMES if getattr(self, name) is not None}

    def report(self) -> dict:
        """JSON-serialisable summary: status, messages, graph counts, timings, Dice, voxel counts."""
        return {
            "status": self.status,
            "messages": list(self.messages),
            "uncertainty": self.uncertainty_name,
            "graph": self.graph_stats,
            "selfcheck": self.selfcheck,
            "selection": self.selection,
            "changes": self.changes,
            "timings_s": {k: round(float(v), 4) for k, v in self.timings.items()},
            "dice": self.dice,
            "voxels": {name: int(np.count_nonzero(m)) for name, m in self.masks().items()},
        }


class _Prepared(NamedTuple):
    """A volume after graph construction: either a finished result or a graph waiting for its fit."""

    result: Optional[RefineResult]
    graph: Optional[VoxelGraph]
    candidates: list  # [C] VoxelGraph, the first is ``graph``
    base: dict
    timings: dict
    messages: list
    context: Optional[np.ndarray] = None  # bool[N] per node of ``graph``: passes the context check (or None: off)
    leak: Optional[np.ndarray] = None  # f64[N] per node of ``graph``: leak_level (or None: context removal off)

    @property
    def fitted_graph(self) -> VoxelGraph:
        """The graph waiting for its fit (only when ``result`` is ``None``)."""
        if self.graph is None:
            raise AssertionError("this volume needs no fit: it has a result already")
        return self.graph


def _prepare(image, prediction, expectation, uncertainty, config: RefineConfig, seed: int,
             spacing: Optional[Sequence[float]] = None) -> _Prepared:
    t0 = time.perf_counter()
    prediction = np.asarray(prediction)
    if prediction.ndim != 3:
        raise ValueError(f"prediction must be [X, Y, Z], got shape {prediction.shape}")
    shape = prediction.shape
    empty = np.zeros(shape, np.uint8)
    if not np.any(prediction):
        result = RefineResult(empty, empty.copy(), empty.copy(), empty.copy(), status="empty_prediction",
                              messages=["the prediction is empty: nothing to refine, every mask is empty"])
        return _Prepared(result, None, [], {}, {"graph": 0.0}, [])
    graph = build_voxel_graph(image, prediction, expectation, uncertainty, seed=seed, **config.graph_kwargs())
    timings = {"graph": time.perf_counter() - t0}
    cnn = graph.prediction_lcc.astype(np.uint8)
    roi_e = np.zeros(shape, np.uint8)
    roi_e[graph.roi] = np.asarray(expectation)[graph.roi] > 0.5
    base = {"cnn": cnn, "expectation_mask": roi_e}
    messages = []
    if int(np.count_nonzero(prediction)) != int(cnn.sum()):
        messages.append(f"kept the largest 26-connected component: {int(cnn.sum())} of "
                        f"{int(np.count_nonzero(prediction))} predicted voxels")
    status = None
    if graph.n_unlabelled == 0:
        status = "no_uncertain_voxels"
        messages.append(f"no voxel has uncertainty > {graph.tau_value:.4g} in the ROI: nothing to refine, "
                        "the refined masks are the prediction")
    elif graph.n_labelled == 0:
        status = "no_labelled_nodes"
        msg = (f"every node has uncertainty > {graph.tau_value:.4g}: no labelled node to learn from, the "
               "refined masks are the prediction (raise tau)")
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        messages.append(msg)
    if status is not None:
        result = RefineResult(cnn, cnn.copy(), roi_e, cnn.copy(), status=status, messages=messages,
                              graph_stats=graph.stats(), timings=timings, graph=graph)
        return _Prepared(result, None, [], base, timings, messages)
    # Variants share nodes, features, labels and the split (same seed); only edges and weights differ.
    candidates = [graph] + [
        build_voxel_graph(image, prediction, expectation, uncertainty, seed=seed,
                          **variant.apply(config.graph_kwargs()))
        for variant in config.candidates()[1:]
    ]
    if config.node_features != "all":
        candidates = [dataclasses.replace(g, features=select_node_features(g.features, config.node_features))
                      for g in candidates]
        graph = candidates[0]
    timings["graph"] = time.perf_counter() - t0
    if not graph.train_mask.any():  # tiny graphs: the validation split took every labelled node
        candidates = [dataclasses.replace(g, train_mask=g.label_mask.copy()) for g in candidates]
        graph = candidates[0]
        messages.append("the validation split left no training node: trained on every labelled node "
                        "(the self-check can then only detect a collapse)")
    fg = graph.labels[graph.train_mask] > 0.5
    if fg.all() or not fg.any():
        cls = "foreground" if fg.all() else "background"
        messages.append(f"every labelled training node is {cls}: the GCN can only learn to predict {cls}")
    context = leak = None
    if uses_context(config) or uses_context_removal(config) or uses_thin_removal(config):
        if spacing is None:
            messages.append("no voxel spacing given: the context check's widths in mm assume 1 mm voxels")
        mm = (1.0, 1.0, 1.0) if spacing is None else tuple(spacing)
        labelled_fg = graph.label_mask & (cnn[tuple(graph.node_coords.T)] == 1)
        if uses_context(config):
            context = context_support(image, cnn, graph.node_coords, labelled_fg, graph.label_mask & ~labelled_fg,
                                      sigma=config.context_sigma, reach=config.context_reach, spacing=mm)
        if uses_context_removal(config) or uses_thin_removal(config):
            leak = leak_level(image, cnn, graph.node_coords, labelled_fg, sigma=config.context_removal_sigma,
                              spacing=mm)
        timings["graph"] = time.perf_counter() - t0
    return _Prepared(None, graph, candidates, base, timings, messages, context, leak)


def _finish(prep: _Prepared, node_probs: np.ndarray, fit_s: float, config: RefineConfig) -> RefineResult:
    """Self-check every candidate fit (``node_probs: f32[C, N]``), keep the best passing one, build the masks."""
    graph = prep.fitted_graph
    names = [v.name for v in config.candidates()]
    node_probs = np.asarray(node_probs).reshape(len(names), graph.n_nodes)
    validation = graph.label_mask & ~graph.train_mask
    scores = validation_scores(node_probs, graph.labels, validation, config.threshold)
    passed, reasons = check_fit(scores, config.check)
    chosen, why = select_variant(scores, passed, names)
    messages = list(prep.messages)
    status = "refined"
    # On a failure the best-scoring fit is kept for the report (and returned with check.fallback=False).
    best_failed = 0 if len(names) == 1 else int(np.argmax(np.nan_to_num(scores.balanced_accuracy, nan=-1.0)))
    index = chosen if chosen is not None else best_failed
    if chosen is None:
        status = "fallback" if config.check.fallback else "check_failed"
        detail = reasons[0] if len(names) == 1 else "; ".join(f"{n}: {r}" for n, r in zip(names, reasons))
        msg = (f"the GCN fit failed the self-check ({detail}): " + (
            "the refined masks are the prediction" if config.check.fallback
            else "returned anyway (check.fallback=False), it is likely worse than the prediction"))
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        messages.append(msg)
    shape = graph.volume_shape
    coords = tuple(graph.node_coords.T)
    cnn = prep.base["cnn"]
    y_hat, free = cnn[coords], ~graph.label_mask  # Ŷ at the nodes; the nodes the GCN may change
    probs = node_probs[index]
    # A replaced node takes the GCN's class only where the GCN is confident; in the band it keeps Ŷ.
    gcn = gcn_classes(probs, y_hat, config)
    taken = free if config.replace != "all" else np.ones_like(free)  # the nodes whose class the refined mask takes
    changes = {"gcn_added": int(np.count_nonzero(taken & (y_hat == 0) & (gcn == 1))),
               "gcn_removed": int(np.count_nonzero(taken & (y_hat == 1) & (gcn == 0)))}

    def applied(rule: str, where: np.ndarray, value: int) -> np.ndarray:
        """``gcn`` with ``where`` set to ``value``; ``changes[rule]`` counts the nodes whose class that changed."""
        changes[rule] = int(np.count_nonzero(where & (gcn != value)))
        return np.where(where, value, gcn).astype(np.uint8)

    if prep.context is not None:  # less confident additions where the intensity around them looks like the organ's
        loose = (free & (y_hat == 0) & (probs > config.context_addition)
                 & (probs <= config.threshold + config.confidence_margin) & prep.context)
        gcn = applied("context_addition", loose, 1)
    if prep.leak is not None:  # less confident removals where the intensity inside Ŷ around them looks like the
        # tissue next to them: the CNN's leak into adjacent tissue of nearly the organ's intensity
        leaky = np.nan_to_num(prep.leak, nan=-np.inf) > config.context_removal_share
        doubtful = free & (y_hat == 1) & (probs < config.context_removal) & leaky
        gcn = applied("context_removal", doubtful, 0)
    if config.sparse_removal > 0:  # thin, ragged uncertain foreground the GCN does not support: a leak
        sparse = free & (y_hat == 1) & (probs < config.threshold)
        sparse[sparse] = sparse_nodes(cnn, graph.node_coords[sparse], config.sparse_removal)
        gcn = applied("sparse_removal", sparse, 0)
    if prep.leak is not None and uses_thin_removal(config):  # what the removals left thin, where it looks leaky
        thin = thin_removals(cnn, graph.node_coords, free & (y_hat == 1) & (gcn == 0), free & (y_hat == 1) & (
            gcn == 1) & (probs <= config.threshold + config.confidence_margin), prep.leak, config)
        gcn = applied("thin_removal", thin, 0)
    if uses_fill_addition(config):  # less confident additions that Ŷ surrounds, in a volume without signs of a leak
        background = graph.label_mask & (y_hat == 0)
        fpr = float(np.mean(probs[background] > config.threshold)) if background.any() else float("nan")
        fill = fill_additions(cnn, graph.node_coords, free & (y_hat == 0) & (gcn == 0) & (probs > config.fill_addition)
                              & (probs <= config.threshold + config.confidence_margin),
                              int(np.count_nonzero(free & (y_hat == 1) & (gcn == 0))), fpr, config)
        gcn = applied("fill_addition", fill, 1)
    if config.sparse_addition > 0:  # no thin addition: what the sparse removal would remove is never added
        added = free & (y_hat == 0) & (gcn == 1)
        added[added] = ~supported_additions(cnn, graph.node_coords[added], config.sparse_addition)
        gcn = applied("sparse_addition_refused", added, 0)
    changes.update(added=int(np.count_nonzero(taken & (y_hat == 0) & (gcn == 1))),
                   removed=int(np.count_nonzero(taken & (y_hat == 1) & (gcn == 0))))
    if status == "fallback":
        refined, unlabelled = cnn.copy(), cnn.copy()
        changes = {}
    else:
        unlabelled = cnn.copy()
        unlabelled[tuple(graph.node_coords[free].T)] = gcn[free]
        if config.replace == "all":
            refined = np.zeros(shape, np.uint8)
            refined[coords] = gcn
        else:
            refined = unlabelled.copy()
    selfcheck = dict(scores_dict(scores, index), passed=bool(passed[index]), reason=reasons[index])
    selection = {
        "variant": None if chosen is None else names[chosen],
        "why": why,
        "candidates": [dict(scores_dict(scores, c), name=names[c], passed=bool(passed[c]), reason=reasons[c])
                       for c in range(len(names))],
    }
    stats = prep.candidates[index].stats()
    timings = dict(prep.timings, fit=fit_s)
    return RefineResult(refined, unlabelled, prep.base["expectation_mask"], cnn,
                        node_probs=node_probs[index], status=status, messages=messages, graph_stats=stats,
                        timings=timings, graph=prep.candidates[index], selfcheck=selfcheck, selection=selection,
                        changes=changes)


def _complete(result: RefineResult, x: RefineInput, crf: bool, t_start: float, uncertainty_name: str,
              config: RefineConfig) -> RefineResult:
    result.uncertainty_name = uncertainty_name
    label = x.label
    if crf and result.status != "empty_prediction":
        t0 = time.perf_counter()
        try:
            if x.spacing is None and config.crf.spatial_units == "mm":
                result.messages.append("no voxel spacing given: the CRF's widths in mm assume 1 mm voxels")
            spacing = (1.0, 1.0, 1.0) if x.spacing is None else tuple(x.spacing)
            result.crf = crf_refine(x.image, x.expectation, result.cnn, spacing=spacing, config=config.crf,
                                    roi=None if result.graph is None else result.graph.roi)
        except CRFUnavailableError as err:
            result.messages.append(f"CRF skipped: {err}")
        result.timings["crf"] = time.perf_counter() - t0
    elif crf:
        result.crf = np.zeros(result.cnn.shape, np.uint8)
    if label is not None:
        label = np.asarray(label)
        if label.shape != result.cnn.shape:
            raise ValueError(f"label has shape {label.shape}, the prediction {result.cnn.shape}")
        result.dice = {name: dice(mask, label) for name, mask in result.masks().items()}
    result.timings["total"] = time.perf_counter() - t_start
    return result


def _buckets(graphs: Sequence[VoxelGraph], config: RefineConfig) -> tuple[int, int]:
    n = bucket_size(max(g.n_nodes for g in graphs), config.min_bucket_nodes)
    e = bucket_size(max(g.n_edges for g in graphs), config.min_bucket_edges)
    return n, e


def refine_volume(
    image: np.ndarray,
    prediction: np.ndarray,
    expectation: np.ndarray,
    uncertainty: np.ndarray,
    *,
    config: RefineConfig = RefineConfig(),
    seed: int = 0,
    label: Optional[np.ndarray] = None,
    crf: bool = False,
    uncertainty_name: str = "uncertainty",
    spacing: Optional[Sequence[float]] = None,
) -> RefineResult:
    """Refine one volume's segmentation with method R.

    Args:
      image: ``f32[X, Y, Z]`` (or ``[X, Y, Z, M]``).
      prediction: ``[X, Y, Z]`` deterministic prediction ``Ŷ`` (non-zero = foreground).
      expectation: ``f32[X, Y, Z]`` MC expectation of the foreground probability.
      uncertainty: ``f32[X, Y, Z]`` voxel uncertainty (e.g. binary entropy in bits for ``tau = 0.8``).
      config: :class:`RefineConfig`.
      seed: seeds the graph's random edges, the train split, the initialisation and dropout.
      label: optional ``[X, Y, Z]`` ground truth: Dice per mask.
      crf: also run the dense-CRF baseline (``config.crf``).
      uncertainty_name: recorded in the report.
      spacing: voxel size in mm along ``(X, Y, Z)`` for the CRF's widths (default 1 mm, with a message).

    Returns:
      :class:`RefineResult`.
    """
    t_start = time.perf_counter()
    x = RefineInput(image, prediction, expectation, uncertainty, label,
                    spacing=None if spacing is None else tuple(spacing))
    prep = _prepare(image, prediction, expectation, uncertainty, config, seed, x.spacing)
    if prep.result is not None:
        return _complete(prep.result, x, crf, t_start, uncertainty_name, config)
    n_nodes, n_edges = _buckets(prep.candidates, config)
    t0 = time.perf_counter()
    key = jax.random.PRNGKey(seed)
    if len(prep.candidates) == 1:
        probs = np.asarray(fit_gcn(pad_graph(prep.fitted_graph, n_nodes, n_edges), key, config.fit).node_probs)[None]
    else:  # every candidate in one compiled program, same key: they differ only in their edges
        stacked = stack_graphs(prep.candidates, n_nodes, n_edges)
        keys = jax.numpy.stack([key] * len(prep.candidates))
        probs = np.asarray(fit_batch(stacked, keys, config.fit).node_probs)
    result = _finish(prep, probs[:, : prep.fitted_graph.n_nodes], time.perf_counter() - t0, config)
    return _complete(result, x, crf, t_start, uncertainty_name, config)


def refine_batch(
    inputs: Sequence[Union[RefineInput, tuple]],
    *,
    config: RefineConfig = RefineConfig(),
    seeds: Union[int, Sequence[int]] = 0,
    crf: bool = False,
    batch_size: Optional[int] = None,
    uncertainty_name: str = "uncertainty",
    progress: bool = True,
    strategy: str = "auto",
    devices=None,
) -> list:
    """Refine many volumes; the GCN fits run vmapped, ``batch_size`` volumes per compiled call.

    Graphs are built on the host, padded to one common bucket and fitted with
    :func:`~ugcn.refine.fit.fit_batch`; volume i's result equals ``refine_volume(..., seed=seeds[i])`` up
    to float rounding. A short last batch is filled with copies so the batch shape (and the compiled
    program) stays the same.

    Args:
      inputs: :class:`RefineInput` (or tuples in its field order) per volume.
      seeds: one seed per volume, or one int ``s`` meaning ``s, s+1, ...``.
      batch_size: volumes per vmapped fit (default: all of them).
      progress: tqdm bars over graph building and batches.
      strategy: how :func:`~ugcn.refine.fit.fit_batch` lays out a batch (``"auto"``, ``"parallel"``,
        ``"sequential"``); the results are the same.
      devices: spread each batch over this many devices (an int or a :func:`ugcn.parallel.device_mesh`;
        ``batch_size`` is rounded up to a multiple of the device count); ``None``: one device. Results do
        not depend on it beyond float rounding.

    Returns:
      ``list[RefineResult]`` in input order.
    """
    volumes = [RefineInput(*x) if not isinstance(x, RefineInput) else x for x in inputs]
    if not volumes:
        return []
    seeds = [seeds + i for i in range(len(volumes))] if isinstance(seeds, (int, np.integer)) else list(seeds)
    if len(seeds) != len(volumes):
        raise ValueError(f"refine_batch: {len(volumes)} volumes but {len(seeds)} seeds")
    starts, preps = [], []
    for x, seed in zip(tqdm(volumes, desc="graphs", disable=not progress), seeds):
        starts.append(time.perf_counter())
        preps.append(_prepare(x.image, x.prediction, x.expectation, x.uncertainty, config, seed, x.spacing))
    todo = [i for i, p in enumerate(preps) if p.result is None]
    probs = {}
    n_cand = len(config.candidates())
    if todo:
        mesh = resolve_mesh(devices)
        n_nodes, n_edges = _buckets([g for i in todo for g in preps[i].candidates], config)
        size = padded_size(min(batch_size or len(todo), len(todo)), mesh_size(mesh))
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
        for chunk in tqdm(chunks, desc="fits", disable=not progress):
            filled = chunk + [chunk[0]] * (size - len(chunk))
            # Every candidate of every volume of the chunk: ONE compiled program of size·C fits.
            stacked = stack_graphs([g for i in filled for g in preps[i].candidates], n_nodes, n_edges)
            keys = jax.numpy.stack([jax.random.PRNGKey(seeds[i]) for i in filled for _ in range(n_cand)])
            t0 = time.perf_counter()
            out = np.asarray(fit_batch(stacked, keys, config.fit, strategy=strategy, devices=mesh).node_probs)
            out = out.reshape(size, n_cand, -1)
            elapsed = (time.perf_counter() - t0) / len(chunk)
            for row, i in enumerate(chunk):
                probs[i] = (out[row, :, : preps[i].fitted_graph.n_nodes], elapsed)
    results = []
    for i, (x, prep) in enumerate(zip(volumes, preps)):
        if prep.result is not None:
            result = prep.result
        else:
            result = _finish(prep, probs[i][0], probs[i][1], config)
        results.append(_complete(result, x, crf, starts[i], uncertainty_name, config))
    return results
