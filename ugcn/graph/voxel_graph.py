"""The voxel graph of method R (docs/method.md, R steps 1-8), built with vectorised numpy/scipy.

From the deterministic prediction ``Ŷ``, the MC expectation ``E`` and an uncertainty map ``U`` (any
estimator; its scale decides what ``tau`` means), :func:`build_voxel_graph` returns the nodes, features,
labels and weighted edges on which a GCN is fitted per volume:

1. ``Ŷ`` is reduced to its largest 26-connected component; the ROI is that component's bounding box
   (plus an optional ``margin``, clipped to the volume).
2. ``U_τ = U > τ`` (``tau_mode="absolute"``), or ``U > quantile(U over the ROI, τ)`` (``"quantile"``), or
   (``"adaptive"``) ``U > τ`` unless that marks more than ``max_uncertain_fraction`` of ``Ŷ`` as uncertain,
   in which case ``τ`` is raised to the ``1 - max_uncertain_fraction`` quantile of ``U`` over ``Ŷ``.
3. Nodes are the ROI voxels of ``dilate(U_τ, box) | E > 0.5``, numbered in C order of their ROI index.
4. Features ``[intensity (normalised over the ROI box), E, U]``; labels ``Ŷ``; labelled = ``U <= τ``.
5. Edges: the 6 face neighbours that are nodes, plus ``k_random`` long-range edges per node: random
   partners (``long_range="random"``, the method) or the ``k_random`` nearest nodes in feature space
   (``"knn"``, as later work on the method did; see :func:`knn_edges`); both directions are listed, no self
   loops, no duplicates.
6. Weights ``w = λ·div(E_i, E_j) + exp(-ΔI²/σ_I) + exp(-‖Δx‖²/σ_x)``, positions divided by the ROI shape,
   ``σ = 2 × variance over edges of the squared differences`` (the reference's definition); the long-range
   edges' weights are then multiplied by ``long_range_weight`` (1 in the method).

Random edges, vectorised: the reference draws, node by node, up to ``k`` partners by rejection sampling
and caps every node's random degree at ``k``. Here the random edges are the union of ``⌊k/2⌋`` random
Hamiltonian cycles over the nodes (each a random permutation, closed into a cycle) plus, for odd ``k``,
one random perfect matching. Every node thus gets exactly ``k`` random partners before self loops and
duplicates (with each other and with the 6-neighbour edges) are removed: the random degree is at most
``k`` — the reference's cap — and nearly always exactly ``k``. The 6-neighbour edges are unique by
construction; random pairs that are face-adjacent are recognised from their coordinates, and the random
pairs are deduplicated by sorting their integer keys ``min(i,j)·N + max(i,j)`` once.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

TAU_MODES = ("absolute", "quantile", "adaptive")
LONG_RANGE = ("random", "knn")
FEATURE_NORMS = ("zscore", "reference")
DIV_EPS = 1e-15  # the reference's epsilon inside the diversity's logarithms


@dataclasses.dataclass(frozen=True)
class VoxelGraph:
    """A voxel graph of one volume (numpy arrays; N nodes, E directed edges).

    Attributes:
      roi: ``tuple[slice, slice, slice]`` ROI box in the full volume.
      volume_shape: ``(X, Y, Z)`` of the full volume.
      node_coords: ``i32[N, 3]`` full-volume voxel indices of the nodes (C order within the ROI).
      features: ``f32[N, F]`` ``[intensity(ies), E, U]`` (``F = M + 2`` for M image channels).
      labels: ``f32[N]`` ``Ŷ`` (largest component) at the nodes, 0/1.
      label_mask: ``bool[N]`` labelled nodes, ``U <= τ``.
      train_mask: ``bool[N]`` labelled nodes drawn for training (the rest of the labelled: validation).
      senders, receivers: ``i32[E]`` both directions of every undirected edge: the ``E/2`` pairs
        ``i < j`` (6-neighbour edges by axis, then random edges sorted), then the same pairs reversed.
      weights: ``f32[E]`` non-negative edge weights (symmetric: ``w_ij = w_ji``).
      tau_value: the absolute uncertainty threshold used (``τ``, or the quantile's value).
      n_random_edges: undirected random long-range edges kept after deduplication.
      prediction_lcc: ``bool[X, Y, Z]`` the largest 26-connected component of the prediction (``Ŷ``).
    """

    roi: tuple
    volume_shape: tuple
    node_coords: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    label_mask: np.ndarray
    train_mask: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    weights: np.ndarray
    tau_value: float
    n_random_edges: int
    prediction_lcc: np.ndarray

    @property
    def n_nodes(self) -> int:
        return int(self.node_coords.shape[0])

    @property
    def n_edges(self) -> int:
        """Directed edges (twice the undirected count)."""
        return int(self.senders.shape[0])

    @property
    def n_labelled(self) -> int:
        return int(self.label_mask.sum())

    @property
    def n_unlabelled(self) -> int:
        return self.n_nodes - self.n_labelled

    @property
    def roi_shape(self) -> tuple:
        return tuple(s.stop - s.start for s in self.roi)

    def stats(self) -> dict:
        """Counts for reports: nodes, edges (undirected), labelled/unlabelled/train nodes, ROI."""
        return {
            "nodes": self.n_nodes,
            "edges": self.n_edges // 2,
            "directed_edges": self.n_edges,
            "random_edges": self.n_random_edges,
            "labelled": self.n_labelled,
            "unlabelled": self.n_unlabelled,
            "train": int(self.train_mask.sum()),
            "labelled_foreground": int((self.labels[self.label_mask] > 0.5).sum()),
            "tau_value": float(self.tau_value),
            "roi": [[s.start, s.stop] for s in self.roi],
        }


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 26-connected component of ``mask: bool[X, Y, Z]`` (ties: the first in scan order).

    Returns ``bool[X, Y, Z]``, all False for an empty mask.
    """
    mask = np.asarray(mask, bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask.copy() if count == 1 else np.zeros_like(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple:
    """Bounding box of the non-zero voxels of ``mask: [X, Y, Z]`` as a tuple of 3 slices.

    ``margin`` voxels (one int or one per axis) are added on each side and clipped to the volume.
    Raises ``ValueError`` for an empty mask.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("bounding_box: the mask is empty")
    margins = np.broadcast_to(np.asarray(margin, int), (mask.ndim,))
    slices = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(int(idx[0]) - int(margins[axis]), 0)
        hi = min(int(idx[-1]) + 1 + int(margins[axis]), mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def uncertainty_threshold(
    uncertainty_roi: np.ndarray, tau: float, tau_mode: str, prediction_roi: Optional[np.ndarray] = None,
    max_uncertain_fraction: float = 0.5,
) -> float:
    """The absolute threshold on ``U`` (``f32[x, y, z]`` over the ROI box).

    ``"absolute"``: ``tau``. ``"quantile"``: the ``tau``-quantile of ``U`` over the ROI. ``"adaptive"``:
    ``tau``, raised to the ``1 - max_uncertain_fraction`` quantile of ``U`` over the predicted voxels
    (``prediction_roi: bool[x, y, z]``) when more than ``max_uncertain_fraction`` of them have ``U > tau``:
    a CNN that is uncertain almost everywhere on its organ leaves too few certain organ voxels to learn
    from (measured: 3-9 % foreground among the labelled nodes), so the uncertain set is capped.
    """
    if tau_mode not in TAU_MODES:
        raise ValueError(f"tau_mode must be one of {TAU_MODES}, got {tau_mode!r}")
    if tau_mode == "quantile":
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau_mode='quantile' needs 0 <= tau <= 1, got {tau}")
        return float(np.quantile(uncertainty_roi, tau))
    if tau_mode == "adaptive":
        if not 0.0 < max_uncertain_fraction <= 1.0:
            raise ValueError(f"max_uncertain_fraction must be in (0, 1], got {max_uncertain_fraction}")
        if prediction_roi is None or not np.any(prediction_roi):
            return float(tau)
        u_pred = uncertainty_roi[np.asarray(prediction_roi, bool)]
        if np.mean(u_pred > tau) <= max_uncertain_fraction:
            return float(tau)
        return max(float(tau), float(np.quantile(u_pred, 1.0 - max_uncertain_fraction)))
    return float(tau)


def normalise_intensity(image_roi: np.ndarray, feature_norm: str) -> np.ndarray:
    """Intensity feature ``f32[x, y, z, M]`` from ``image_roi: [x, y, z, M]``, per channel over the ROI box.

    ``"zscore"``: ``(v - mean) / std``. ``"reference"``: ``(v - mean) / variance``, the reference code's
    quirk (it divides by the variance, which makes the feature's scale depend on the image's units).
    A constant channel becomes 0.
    """
    if feature_norm not in FEATURE_NORMS:
        raise ValueError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
    x = image_roi.astype(np.float64)
    mean = x.mean(axis=(0, 1, 2))
    var = x.var(axis=(0, 1, 2))
    scale = np.sqrt(var) if feature_norm == "zscore" else var
    scale = np.where(scale > 0, scale, 1.0)
    return ((x - mean) / scale).astype(np.float32)


def bernoulli_diversity(p: np.ndarray, q: np.ndarray, eps: float = DIV_EPS) -> np.ndarray:
    """Symmetric KL divergence of Bernoulli(p) and Bernoulli(q) in bits, ``f64[...]``.

    ``(p - q) · (log2(p/q) - log2((1-p)/(1-q)))`` with p, q clipped to ``[eps, 1 - eps]``; always >= 0.
    Equal to ``(p - q) · (logit2(p) - logit2(q))``, which :func:`edge_weights` uses per node.
    """
    return (np.asarray(p, np.float64) - q) * (logit2(p, eps) - logit2(q, eps))


def logit2(p: np.ndarray, eps: float = DIV_EPS) -> np.ndarray:
    """``log2(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``, ``f64[...]``."""
    p = np.clip(np.asarray(p, np.float64), eps, 1.0 - eps)
    return np.log2(p) - np.log2(1.0 - p)


def _gaussian_kernel(sq_diff: np.ndarray) -> np.ndarray:
    """``exp(-d / σ)`` with ``σ = 2 Var(d)`` over all edges; a constant ``d`` (σ = 0) gives ``exp(0)=1``."""
    sigma = 2.0 * float(np.var(sq_diff)) if sq_diff.size else 0.0
    if sigma <= 0.0:
        return np.ones_like(sq_diff)
    return np.exp(-sq_diff / sigma)


def edge_weights(
    intensity: np.ndarray,
    expectation: np.ndarray,
    positions: np.ndarray,
    edges_i: np.ndarray,
    edges_j: np.ndarray,
    *,
    lam: float = 0.5,
) -> np.ndarray:
    """docs/method.md R8 weights of undirected edges ``(i, j)``.

    Args:
      intensity: ``f32[N, M]`` normalised intensities (squared differences summed over channels).
      expectation: ``f32[N]`` ``E`` at the nodes.
      positions: ``f[N, 3]`` node positions divided by the ROI shape.
      edges_i, edges_j: ``int[K]`` endpoints.
      lam: weight of the diversity term.

    Returns:
      ``f32[K]``.
    """

    def sq_dist(values: np.ndarray) -> np.ndarray:
        # np.take on 1-D columns: much faster than fancy-indexing rows of an [N, M] array.
        cols = np.ascontiguousarray(values.T)
        return sum((np.take(c, edges_i) - np.take(c, edges_j)).astype(np.float64) ** 2 for c in cols)

    d_int = sq_dist(intensity)
    d_pos = sq_dist(positions)
    # div = (E_i - E_j)(logit2 E_i - logit2 E_j): logarithms once per node, not per edge.
    e = np.asarray(expectation, np.float64)
    lg = logit2(e)
    div = (np.take(e, edges_i) - np.take(e, edges_j)) * (np.take(lg, edges_i) - np.take(lg, edges_j))
    return (lam * div + _gaussian_kernel(d_int) + _gaussian_kernel(d_pos)).astype(np.float32)


def face_neighbour_edges(index: np.ndarray) -> np.ndarray:
    """Undirected 6-neighbour edges of a node-index volume.

    Args:
      index: ``int[x, y, z]`` node index per voxel, -1 where there is no node.

    Returns:
      ``i64[K, 2]`` pairs ``(i, j)`` of face-adjacent nodes, each pair once.
    """
    pairs = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        a = index[tuple(lo)]
        b = index[tuple(hi)]
        both = (a >= 0) & (b >= 0)
        pairs.append(np.stack([a[both], b[both]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


def random_edges(n_nodes: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random partners per node: ``⌊k/2⌋`` random Hamiltonian cycles (+ a random matching if k is odd).

    Returns ``i64[K, 2]`` undirected pairs, possibly with self loops/duplicates (removed by the caller).
    """
    if n_nodes < 2 or k <= 0:
        return np.zeros((0, 2), np.int64)
    pairs = []
    n_cycles = k // 2
    if n_cycles:
        perms = rng.permuted(np.broadcast_to(np.arange(n_nodes), (n_cycles, n_nodes)), axis=1)
        pairs.append(np.stack([perms.ravel(), np.roll(perms, -1, axis=1).ravel()], axis=1))
    if k % 2:
        perm = rng.permutation(n_nodes)
        half = n_nodes // 2
        pairs.append(np.stack([perm[:half], perm[half : 2 * half]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


def knn_edges(points: np.ndarray, k: int) -> np.ndarray:
    """Each point to its ``k`` nearest other points (Euclidean), ``i64[N·k', 2]`` pairs ``(i, neighbour)``.

    ``points: f[N, D]``; ``k' = min(k, N - 1)``. Exact (scipy's k-d tree, one query for all points); the
    pairs are directed as found and may hold both ``(i, j)`` and ``(j, i)``: :func:`dedupe_random_edges`
    makes them undirected and unique. Among equidistant candidates any may be chosen.
    """
    n = int(points.shape[0])
    k = min(int(k), n - 1)
    if k <= 0:
        return np.zeros((0, 2), np.int64)
    from scipy.spatial import cKDTree

    # k + 1: the point itself is (one of) its own nearest; self pairs are dropped here, and if a duplicate
    # point took the self's place, the leftover self pair is removed with the self loops downstream.
    _, idx = cKDTree(points).query(points, k=k + 1)
    rows = np.repeat(np.arange(n), k + 1).reshape(n, k + 1)
    keep = idx != rows
    # Keep exactly k partners per point (drop the last column where no self was found).
    keep &= np.cumsum(keep, axis=1) <= k
    return np.stack([rows[keep], idx[keep]], axis=1).astype(np.int64)


def knn_space(features: np.ndarray) -> np.ndarray:
    """The space :func:`knn_edges` searches: node features ``f32[N, F]`` scaled to unit standard deviation
    per column (a constant column stays constant), so that intensity, ``E`` and ``U`` count alike."""
    x = np.asarray(features, np.float64)
    std = x.std(axis=0)
    return x / np.where(std > 0, std, 1.0)


def dedupe_random_edges(pairs: np.ndarray, coords: np.ndarray, n_nodes: int) -> np.ndarray:
    """Unique undirected long-range pairs ``(i < j)``, sorted, without self loops or face-adjacent pairs.

    Face-adjacent pairs (already 6-neighbour edges) are recognised from their coordinates
    (``‖Δ‖₁ = 1``), so only the random keys ``i·N + j`` are sorted, once.

    Args:
      pairs: ``int[K, 2]`` candidate pairs.
      coords: ``int[N, 3]`` node coordinates.
    Returns:
      ``i64[K', 2]``.
    """
    i = np.minimum(pairs[:, 0], pairs[:, 1])
    j = np.maximum(pairs[:, 0], pairs[:, 1])
    # np.take on 1-D columns: much faster than fancy-indexing rows of an [N, 3] array.
    l1 = sum(np.abs(np.take(coords[:, a], i) - np.take(coords[:, a], j)) for a in range(coords.shape[1]))
    face = l1 == 1
    keys = (i * n_nodes + j)[(i != j) & ~face]
    keys.sort()
    if keys.size:
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
    return np.stack([keys // n_nodes, keys % n_nodes], axis=1)


def _check_inputs(image, prediction, expectation, uncertainty) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4:
        raise ValueError(f"image must be [X, Y, Z] or [X, Y, Z, M], got shape {image.shape}")
    shape = image.shape[:3]
    for name, arr in (("prediction", prediction), ("expectation", expectation), ("uncertainty", uncertainty)):
        if np.shape(arr) != shape:
            raise ValueError(f"{name} has shape {np.shape(arr)}, the image {shape}: give maps on the image grid")
    for name, arr in (("image", image), ("expectation", expectation), ("uncertainty", uncertainty)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} holds NaN or infinite values")
    e = np.asarray(expectation)
    if e.size and (e.min() < 0.0 or e.max() > 1.0):
        raise ValueError("expectation must be a foreground probability in [0, 1]")
    return image


def build_voxel_graph(
    image: np.ndarray,
    prediction: np.ndarray,
    expectation: np.ndarray,
    uncertainty: np.ndarray,
    *,
    tau: float = 0.8,
    tau_mode: str = "absolute",
    dilation: Sequence[int] = (5, 7, 7),
    k_random: int = 16,
    margin: int | Sequence[int] = 0,
    lam: float = 0.5,
    seed: int = 0,
    long_range: str = "random",
    long_range_weight: float = 1.0,
    max_uncertain_fraction: float = 0.5,
    feature_norm: str = "zscore",
    row_normalize: bool = False,
    val_fraction: float = 0.2,
    max_nodes: Optional[int] = None,
) -> VoxelGraph:
    """Build method R's voxel graph (see the module docstring for every step).

    Args:
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      prediction: ``bool[X, Y, Z]`` deterministic prediction ``Ŷ`` (non-zero = foreground).
      expectation: ``f32[X, Y, Z]`` MC foreground expectation ``E`` in [0, 1].
      uncertainty: ``f32[X, Y, Z]`` voxel uncertainty ``U`` (any estimator; ``tau`` is on its scale).
      tau: threshold (``"absolute"``, ``"adaptive"``) or quantile level in [0, 1] (``"quantile"``, over the
        ROI voxels); see :func:`uncertainty_threshold`.
      dilation: box size of the dilation of ``U_τ`` along array axes (0, 1, 2); the reference's
        "5×7×7, rows×cols×slices" is axes (0, 1, 2) of the array as nibabel reads it, as here.
      k_random: long-range partners per node (0: none).
      margin: voxels added around the ROI box (int or per axis), clipped to the volume.
      lam: diversity weight λ.
      seed: seeds the random edges and the train/validation split.
      long_range: ``"random"`` (the method) or ``"knn"``: the ``k_random`` nearest nodes in feature space
        (:func:`knn_space`, :func:`knn_edges`) instead of random ones.
      long_range_weight: factor on the long-range edges' weights (1: the method).
      max_uncertain_fraction: the cap of ``tau_mode="adaptive"``.
      feature_norm: ``"zscore"`` or ``"reference"`` (divide by the variance, the reference's quirk).
      row_normalize: divide each node's feature vector by its sum (Kipf's preprocessing, as the
        reference does; off by default because signed intensities can make the sum ~0).
      val_fraction: fraction of labelled nodes held out of training (the reference: 0.2).
      max_nodes: raise ``ValueError`` before building edges when the graph would exceed it.

    Returns:
      :class:`VoxelGraph`.

    Raises:
      ValueError: bad shapes, NaNs, ``E`` outside [0, 1], an empty prediction, too many nodes.
    """
    image = _check_inputs(image, prediction, expectation, uncertainty)
    if len(tuple(dilation)) != 3 or min(dilation) < 1:
        raise ValueError(f"dilation must be 3 positive box sizes, got {dilation}")
    if k_random < 0:
        raise ValueError(f"k_random must be >= 0, got {k_random}")
    if long_range not in LONG_RANGE:
        raise ValueError(f"long_range must be one of {LONG_RANGE}, got {long_range!r}")
    if not long_range_weight >= 0:
        raise ValueError(f"long_range_weight must be >= 0, got {long_range_weight}")
    lcc = largest_component(np.asarray(prediction) != 0)
    if not lcc.any():
        raise ValueError("the prediction is empty: there is no organ to refine")
    roi = bounding_box(lcc, margin)
    e_roi = np.asarray(expectation, np.float32)[roi]
    u_roi = np.asarray(uncertainty, np.float32)[roi]
    tau_value = uncertainty_threshold(u_roi, tau, tau_mode, lcc[roi], max_uncertain_fraction)
    uncertain = u_roi > tau_value
    # A box dilation is separable: a maximum filter of the binary mask, zero outside the ROI.
    dilated = ndimage.maximum_filter(uncertain, size=tuple(int(d) for d in dilation), mode="constant", cval=0)
    node_mask = dilated | (e_roi > 0.5)
    n_nodes = int(node_mask.sum())
    if max_nodes is not None and n_nodes > max_nodes:
        raise ValueError(
            f"the graph would have {n_nodes} nodes, more than max_nodes={max_nodes}: raise max_nodes "
            "(--max-nodes), raise tau, or use a smaller dilation"
        )
    local = np.argwhere(node_mask)  # C order: the node numbering
    index = np.full(node_mask.shape, -1, np.int64)
    index[node_mask] = np.arange(n_nodes)
    offset = np.array([s.start for s in roi])

    intensity = normalise_intensity(image[roi], feature_norm)[node_mask]  # [N, M]
    e_nodes = e_roi[node_mask]
    u_nodes = u_roi[node_mask]
    features = np.concatenate([intensity, e_nodes[:, None], u_nodes[:, None]], axis=1).astype(np.float32)
    if row_normalize:
        sums = features.sum(axis=1, keepdims=True)
        features = np.where(sums != 0, features / np.where(sums != 0, sums, 1.0), 0.0).astype(np.float32)
    labels = lcc[roi][node_mask].astype(np.float32)
    label_mask = u_nodes <= tau_value

    rng_edges, rng_split = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    face = face_neighbour_edges(index)
    if long_range == "knn":
        rand = knn_edges(knn_space(features), k_random)
    else:
        rand = random_edges(n_nodes, k_random, rng_edges)
    rand = dedupe_random_edges(rand, local, max(n_nodes, 1))
    undirected = np.concatenate([face, rand])  # face pairs are unique by construction
    n_random = int(rand.shape[0])

    positions = local / np.asarray(node_mask.shape, np.float64)
    w = edge_weights(intensity, e_nodes, positions, undirected[:, 0], undirected[:, 1], lam=lam)
    if long_range_weight != 1.0:
        w[face.shape[0] :] *= np.float32(long_range_weight)
    senders = np.concatenate([undirected[:, 0], undirected[:, 1]])
    receivers = np.concatenate([undirected[:, 1], undirected[:, 0]])
    weights = np.concatenate([w, w])

    train_mask = label_mask & (rng_split.random(n_nodes) > val_fraction)
    return VoxelGraph(
        roi=roi,
        volume_shape=tuple(lcc.shape),
        node_coords=(local + offset).astype(np.int32),
        features=features,
        labels=labels,
        label_mask=label_mask,
        train_mask=train_mask,
        senders=senders.astype(np.int32),
        receivers=receivers.astype(np.int32),
        weights=weights,
        tau_value=tau_value,
        n_random_edges=n_random,
        prediction_lcc=lcc,
    )
