"""Method R end to end on arrays: graph -> per-volume GCN fit -> refined masks, baselines, Dice.

:func:`refine_volume` refines one volume; :func:`refine_batch` builds every graph on the host and fits
them all with the vmapped :func:`~ugcn.refine.fit.fit_batch` (one compiled program per bucket and batch
size). Inputs are plain arrays, so any segmentation model (or a folder of MC sample maps) can feed it; the
uncertainty map is whatever estimator the caller chose, and ``tau`` is on its scale.

Outputs (all ``u8[X, Y, Z]``, 0 outside the ROI):
  - ``refined``: GCN prediction ``out > threshold`` on every node; ROI voxels that are not nodes are 0
    (docs/method.md R12, as the reference).
  - ``refined_unlabelled``: ``Ŷ`` with only the unlabelled (uncertain) nodes replaced by the GCN.
  - ``expectation_mask``: ``E > 0.5`` inside the ROI (restricted to the ROI like every other method).
  - ``cnn``: ``Ŷ``, the largest 26-connected component of the prediction.
  - ``crf``: the dense-CRF baseline (``crf=True``; ``None`` when pydensecrf is missing: a message says so).

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
from tqdm.auto import tqdm

from ugcn.evaluate.metrics import dice
from ugcn.graph.voxel_graph import VoxelGraph, build_voxel_graph
from ugcn.parallel.mesh import mesh_size, padded_size, resolve_mesh
from ugcn.refine.crf import CRFConfig, CRFUnavailableError, crf_refine
from ugcn.refine.fit import FitConfig, bucket_size, fit_batch, fit_gcn, pad_graph, stack_graphs

MASK_NAMES = ("refined", "refined_unlabelled", "expectation_mask", "cnn", "crf")


@dataclasses.dataclass(frozen=True)
class RefineConfig:
    """Every setting of method R (docs/method.md defaults).

    Attributes:
      tau, tau_mode, dilation, k_random, margin, lam, feature_norm, row_normalize, val_fraction,
        max_nodes: see :func:`~ugcn.graph.voxel_graph.build_voxel_graph`.
      threshold: GCN output threshold.
      crf: :class:`~ugcn.refine.crf.CRFConfig` of the dense-CRF baseline (default: unary from ``E``, widths in
        mm, tuned on the demo's phantoms); :data:`~ugcn.refine.crf.REFERENCE_CRF` is the published setting.
      fit: :class:`~ugcn.refine.fit.FitConfig` (epochs, hidden, learning rate, weight decay, dropout).
      min_bucket_nodes, min_bucket_edges: smallest padding buckets (larger values = fewer recompiles
        for small graphs).
    """

    tau: float = 0.8
    tau_mode: str = "absolute"
    dilation: tuple = (5, 7, 7)
    k_random: int = 16
    margin: int = 0
    lam: float = 0.5
    feature_norm: str = "zscore"
    row_normalize: bool = False
    val_fraction: float = 0.2
    max_nodes: Optional[int] = 2_000_000
    threshold: float = 0.5
    crf: CRFConfig = CRFConfig()
    fit: FitConfig = FitConfig()
    min_bucket_nodes: int = 256
    min_bucket_edges: int = 256

    def graph_kwargs(self) -> dict:
        return dict(
            tau=self.tau, tau_mode=self.tau_mode, dilation=tuple(self.dilation), k_random=self.k_random,
            margin=self.margin, lam=self.lam, feature_norm=self.feature_norm, row_normalize=self.row_normalize,
            val_fraction=self.val_fraction, max_nodes=self.max_nodes,
        )


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
      status: ``"refined"``, ``"empty_prediction"``, ``"no_uncertain_voxels"`` or ``"no_labelled_nodes"``.
      messages: what was unusual, in words.
      graph_stats: nodes, edges, labelled, unlabelled, train, ROI, threshold (empty when no graph).
      timings: seconds: ``graph``, ``fit`` (includes compilation on a first call), ``crf``, ``total``.
      dice: Dice per mask name against the label (``None`` without a label).
      uncertainty_name: the estimator's name, for reports.
      graph: the :class:`VoxelGraph` (``None`` when none was built).
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
            "timings_s": {k: round(float(v), 4) for k, v in self.timings.items()},
            "dice": self.dice,
            "voxels": {name: int(np.count_nonzero(m)) for name, m in self.masks().items()},
        }


class _Prepared(NamedTuple):
    """A volume after graph construction: either a finished result or a graph waiting for its fit."""

    result: Optional[RefineResult]
    graph: Optional[VoxelGraph]
    base: dict
    timings: dict
    messages: list

    @property
    def fitted_graph(self) -> VoxelGraph:
        """The graph waiting for its fit (only when ``result`` is ``None``)."""
        if self.graph is None:
            raise AssertionError("this volume needs no fit: it has a result already")
        return self.graph


def _prepare(image, prediction, expectation, uncertainty, config: RefineConfig, seed: int) -> _Prepared:
    t0 = time.perf_counter()
    prediction = np.asarray(prediction)
    if prediction.ndim != 3:
        raise ValueError(f"prediction must be [X, Y, Z], got shape {prediction.shape}")
    shape = prediction.shape
    empty = np.zeros(shape, np.uint8)
    if not np.any(prediction):
        result = RefineResult(empty, empty.copy(), empty.copy(), empty.copy(), status="empty_prediction",
                              messages=["the prediction is empty: nothing to refine, every mask is empty"])
        return _Prepared(result, None, {}, {"graph": 0.0}, [])
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
        return _Prepared(result, None, base, timings, messages)
    if not graph.train_mask.any():  # tiny graphs: the validation split took every labelled node
        graph = dataclasses.replace(graph, train_mask=graph.label_mask.copy())
        messages.append("the validation split left no training node: trained on every labelled node")
    fg = graph.labels[graph.train_mask] > 0.5
    if fg.all() or not fg.any():
        cls = "foreground" if fg.all() else "background"
        messages.append(f"every labelled training node is {cls}: the GCN can only learn to predict {cls}")
    return _Prepared(None, graph, base, timings, messages)


def _finish(prep: _Prepared, node_probs: np.ndarray, fit_s: float, config: RefineConfig) -> RefineResult:
    graph = prep.fitted_graph
    shape = graph.volume_shape
    coords = tuple(graph.node_coords.T)
    gcn = node_probs > config.threshold
    refined = np.zeros(shape, np.uint8)
    refined[coords] = gcn
    unlabelled = prep.base["cnn"].copy()
    free = ~graph.label_mask
    unlabelled[tuple(graph.node_coords[free].T)] = gcn[free]
    timings = dict(prep.timings, fit=fit_s)
    return RefineResult(refined, unlabelled, prep.base["expectation_mask"], prep.base["cnn"],
                        node_probs=node_probs, messages=list(prep.messages), graph_stats=graph.stats(),
                        timings=timings, graph=graph)


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
    prep = _prepare(image, prediction, expectation, uncertainty, config, seed)
    if prep.result is not None:
        return _complete(prep.result, x, crf, t_start, uncertainty_name, config)
    graph = prep.fitted_graph
    n_nodes, n_edges = _buckets([graph], config)
    t0 = time.perf_counter()
    out = fit_gcn(pad_graph(graph, n_nodes, n_edges), jax.random.PRNGKey(seed), config.fit)
    probs = np.asarray(out.node_probs)[: graph.n_nodes]
    result = _finish(prep, probs, time.perf_counter() - t0, config)
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
        preps.append(_prepare(x.image, x.prediction, x.expectation, x.uncertainty, config, seed))
    todo = [i for i, p in enumerate(preps) if p.result is None]
    probs = {}
    if todo:
        mesh = resolve_mesh(devices)
        n_nodes, n_edges = _buckets([preps[i].fitted_graph for i in todo], config)
        size = padded_size(min(batch_size or len(todo), len(todo)), mesh_size(mesh))
        chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
        for chunk in tqdm(chunks, desc="fits", disable=not progress):
            filled = chunk + [chunk[0]] * (size - len(chunk))
            stacked = stack_graphs([preps[i].fitted_graph for i in filled], n_nodes, n_edges)
            keys = jax.numpy.stack([jax.random.PRNGKey(seeds[i]) for i in filled])
            t0 = time.perf_counter()
            out = np.asarray(fit_batch(stacked, keys, config.fit, strategy=strategy, devices=mesh).node_probs)
            elapsed = (time.perf_counter() - t0) / len(chunk)
            for row, i in enumerate(chunk):
                probs[i] = (out[row, : preps[i].fitted_graph.n_nodes], elapsed)
    results = []
    for i, (x, prep) in enumerate(zip(volumes, preps)):
        if prep.result is not None:
            result = prep.result
        else:
            result = _finish(prep, probs[i][0], probs[i][1], config)
        results.append(_complete(result, x, crf, starts[i], uncertainty_name, config))
    return results
