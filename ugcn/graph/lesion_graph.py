"""One graph per lesion (method L, step 3), built for all lesions of a volume at once.

Each lesion is dilated by one voxel (26-neighbourhood, clipped at the volume border); every voxel of the
dilated lesion is a node, linked to its 26 neighbours inside the same dilated lesion (both directions; the
GCN normalisation adds the self loops). Dilations of neighbouring lesions may overlap: every graph owns its
own copy of the shared voxels, because nodes are keyed by ``(lesion, voxel)`` rather than by voxel.

Node features (``M + 1 + len(estimators)``; ``n + 4`` in the paper): the ``M`` image intensities, z-scored
per volume, the binarised predicted label, and one value per listed uncertainty map, in the order given.

All index work is vectorised numpy: the ``(lesion, voxel)`` keys of the 27-voxel neighbourhoods of all
lesion voxels are made unique with one sort, and edges are found with one ``searchsorted``.

Batches are ``jraph.GraphsTuple`` padded (``jraph.pad_with_graphs``) to power-of-two node and edge budgets
(one :class:`BudgetLadder` per run), so a training run compiles once per rung, not once per batch.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import jraph
import numpy as np

#: Default uncertainty maps used as node features (and by the baselines), in this order.
DEFAULT_ESTIMATORS = ("entropy", "variance", "one_minus_pcs")

_OFFSETS_27 = np.stack(np.meshgrid(*([np.arange(-1, 2)] * 3), indexing="ij"), -1).reshape(-1, 3)
_OFFSETS_26 = _OFFSETS_27[np.any(_OFFSETS_27 != 0, axis=1)]


@dataclasses.dataclass(frozen=True)
class LesionGraphs:
    """Many lesion graphs, concatenated (graph ``g``'s nodes and edges are contiguous blocks).

    Attributes:
      nodes: ``f32[N, F]`` node features.
      senders, receivers: ``i32[E]`` node indices into ``nodes`` (both directions of each edge).
      n_node: ``i32[G]`` nodes per graph.
      n_edge: ``i32[G]`` edges per graph.
      node_voxel: ``i64[N]`` flat voxel index (C order) of each node in its volume.
      feature_names: ``F`` names, e.g. ``("intensity_0", "label", "entropy", ...)``.
    """

    nodes: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray
    node_voxel: np.ndarray
    feature_names: tuple[str, ...]

    @property
    def num_graphs(self) -> int:
        return int(self.n_node.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.nodes.shape[1])

    def node_offsets(self) -> np.ndarray:
        """``i64[G + 1]`` start of each graph's node block."""
        return np.concatenate([[0], np.cumsum(self.n_node, dtype=np.int64)])

    def edge_offsets(self) -> np.ndarray:
        """``i64[G + 1]`` start of each graph's edge block."""
        return np.concatenate([[0], np.cumsum(self.n_edge, dtype=np.int64)])

    def select(self, indices: Union[Sequence[int], np.ndarray]) -> LesionGraphs:
        """The graphs ``indices`` (in that order), renumbered, as a new :class:`LesionGraphs`."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_graphs):
            raise ValueError(f"select: graph index out of range [0, {self.num_graphs})")
        node_off, edge_off = self.node_offsets(), self.edge_offsets()
        node_idx = _ranges(node_off[idx], self.n_node[idx])
        edge_idx = _ranges(edge_off[idx], self.n_edge[idx])
        new_node_off = np.concatenate([[0], np.cumsum(self.n_node[idx], dtype=np.int64)])
        # Shift each edge from its old graph's node block to the new one.
        shift = np.repeat(new_node_off[:-1] - node_off[idx], self.n_edge[idx])
        return LesionGraphs(
            nodes=self.nodes[node_idx],
            senders=(self.senders[edge_idx] + shift).astype(np.int32),
            receivers=(self.receivers[edge_idx] + shift).astype(np.int32),
            n_node=self.n_node[idx],
            n_edge=self.n_edge[idx],
            node_voxel=self.node_voxel[node_idx],
            feature_names=self.feature_names,
        )

    def to_graphs_tuple(self) -> jraph.GraphsTuple:
        """Unpadded ``jraph.GraphsTuple``: ``edges`` are unit weights ``f32[E]``, no globals."""
        return jraph.GraphsTuple(
            nodes=self.nodes.astype(np.float32),
            edges=np.ones(self.senders.shape[0], np.float32),
            senders=self.senders.astype(np.int32),
            receivers=self.receivers.astype(np.int32),
            n_node=self.n_node.astype(np.int32),
            n_edge=self.n_edge.astype(np.int32),
            globals=None,
        )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + l)`` for every pair, without a Python loop."""
    lengths = np.asarray(lengths, np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    block_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.repeat(np.asarray(starts, np.int64) - block_start, lengths) + np.arange(total)


def concat_lesion_graphs(parts: Sequence[LesionGraphs]) -> LesionGraphs:
    """Concatenate several :class:`LesionGraphs` (e.g. of several volumes) into one."""
    if not parts:
        raise ValueError("concat_lesion_graphs: nothing to concatenate")
    names = parts[0].feature_names
    for p in parts:
        if p.feature_names != names:
            raise ValueError(f"concat_lesion_graphs: feature names differ ({p.feature_names} vs {names})")
    node_counts = np.array([p.nodes.shape[0] for p in parts], np.int64)
    shifts = np.concatenate([[0], np.cumsum(node_counts)[:-1]])
    return LesionGraphs(
        nodes=np.concatenate([p.nodes for p in parts]).astype(np.float32),
        senders=np.concatenate([p.senders + s for p, s in zip(parts, shifts)]).astype(np.int32),
        receivers=np.concatenate([p.receivers + s for p, s in zip(parts, shifts)]).astype(np.int32),
        n_node=np.concatenate([p.n_node for p in parts]).astype(np.int32),
        n_edge=np.concatenate([p.n_edge for p in parts]).astype(np.int32),
        node_voxel=np.concatenate([p.node_voxel for p in parts]).astype(np.int64),
        feature_names=names,
    )


def zscore_channels(image: np.ndarray) -> np.ndarray:
    """Per-volume z-score of each channel: ``[X, Y, Z]`` or ``[X, Y, Z, M]`` -> ``f32[X, Y, Z, M]``."""
    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image[..., None]
    if image.ndim != 4:
        raise ValueError(f"image: expected [X, Y, Z] or [X, Y, Z, M], got shape {image.shape}")
    mean = image.mean(axis=(0, 1, 2), dtype=np.float64)
    std = image.std(axis=(0, 1, 2), dtype=np.float64)
    return ((image - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def dilated_lesion_nodes(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes of every lesion's one-voxel 26-dilation, clipped at the border.

    Args:
      labels: ``int[X, Y, Z]`` lesions ``1..n``.
      n: number of lesions.

    Returns:
      ``(node_lesion i64[N], node_voxel i64[N])`` sorted by lesion then flat voxel index; lesion ids are
      0-based (lesion ``l`` of ``labels`` has id ``l - 1``). A voxel in two dilations appears twice.
    """
    labels = np.asarray(labels)
    shape = np.array(labels.shape, np.int64)
    num_voxels = int(np.prod(shape))
    fg = np.flatnonzero(labels)
    if fg.size == 0 or n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lesion = labels.ravel()[fg].astype(np.int64) - 1
    coords = np.stack(np.unravel_index(fg, labels.shape), axis=1)
    neigh = coords[:, None, :] + _OFFSETS_27[None]  # [n_fg, 27, 3]
    inside = np.all((neigh >= 0) & (neigh < shape), axis=2)
    flat = np.ravel_multi_index(tuple(np.clip(neigh, 0, shape - 1).transpose(2, 0, 1)), labels.shape)
    keys = np.unique((lesion[:, None] * num_voxels + flat)[inside])
    return keys // num_voxels, keys % num_voxels


def lesion_graph_edges(
    node_lesion: np.ndarray, node_voxel: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """26-neighbour edges between nodes of the same lesion (both directions).

    Args:
      node_lesion, node_voxel: ``i64[N]`` sorted as returned by :func:`dilated_lesion_nodes`.
      shape: the volume shape.

    Returns:
      ``(senders i32[E], receivers i32[E])`` ordered by receiver, so edges are grouped by lesion.
    """
    num_voxels = int(np.prod(shape))
    keys = node_lesion * num_voxels + node_voxel
    if keys.size == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    dims = np.array(shape, np.int64)
    coords = np.stack(np.unravel_index(node_voxel, shape), axis=1)
    neigh = coords[:, None, :] + _OFFSETS_26[None]  # [N, 26, 3]
    inside = np.all((neigh >= 0) & (neigh < dims), axis=2)
    flat = np.ravel_multi_index(tuple(np.clip(neigh, 0, dims - 1).transpose(2, 0, 1)), shape)
    wanted = node_lesion[:, None] * num_voxels + flat
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)
    found = inside & (keys[pos] == wanted)
    receivers, slot = np.nonzero(found)
    senders = pos[receivers, slot]
    return senders.astype(np.int32), receivers.astype(np.int32)


def build_lesion_graphs(
    labels: np.ndarray,
    n: int,
    image: np.ndarray,
    pred_mask: np.ndarray,
    uncertainty: Mapping[str, np.ndarray],
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
) -> LesionGraphs:
    """The graphs of all lesions of one volume.

    Args:
      labels: ``int[X, Y, Z]`` lesions ``1..n`` (from ``label_lesions``).
      n: number of lesions.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]`` intensities (z-scored here, per volume and channel).
      pred_mask: ``[X, Y, Z]`` the predicted mask (binarised: non-zero -> 1).
      uncertainty: name -> ``f32[X, Y, Z]`` voxel uncertainty maps; must hold every name in ``estimators``.
      estimators: which maps become node features, in order.

    Returns:
      :class:`LesionGraphs` with ``n`` graphs (graph ``g`` is lesion ``g + 1``) and
      ``F = M + 1 + len(estimators)`` features.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    if labels.ndim != 3:
        raise ValueError(f"labels: expected [X, Y, Z], got shape {shape}")
    channels = zscore_channels(image)
    if channels.shape[:3] != shape:
        raise ValueError(f"image shape {channels.shape[:3]} does not match the lesion labels {shape}")
    pred = np.asarray(pred_mask)
    if pred.shape != shape:
        raise ValueError(f"pred_mask shape {pred.shape} does not match the lesion labels {shape}")
    estimators = tuple(estimators)
    maps = []
    for name in estimators:
        if name not in uncertainty:
            raise ValueError(
                f"uncertainty map {name!r} is missing (have {sorted(uncertainty)}); "
                "compute it or change the estimator list"
            )
        m = np.asarray(uncertainty[name], np.float32)
        if m.shape != shape:
            raise ValueError(f"uncertainty map {name!r}: shape {m.shape} != {shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"uncertainty map {name!r}: holds NaN or infinite values")
        maps.append(m)
    if not np.all(np.isfinite(channels)):
        raise ValueError("image: holds NaN or infinite values")

    node_lesion, node_voxel = dilated_lesion_nodes(labels, n)
    senders, receivers = lesion_graph_edges(node_lesion, node_voxel, shape)
    columns = [channels.reshape(-1, channels.shape[3])[node_voxel]]
    columns.append((pred.ravel()[node_voxel] != 0).astype(np.float32)[:, None])
    columns += [m.ravel()[node_voxel][:, None] for m in maps]
    nodes = np.concatenate(columns, axis=1).astype(np.float32)
    names = tuple(f"intensity_{c}" for c in range(channels.shape[3])) + ("label",) + estimators
    return LesionGraphs(
        nodes=nodes,
        senders=senders,
        receivers=receivers,
        n_node=np.bincount(node_lesion, minlength=n).astype(np.int32),
        n_edge=np.bincount(node_lesion[receivers], minlength=n).astype(np.int32),
        node_voxel=node_voxel,
        feature_names=names,
    )


def _next_pow2(x: int, minimum: int) -> int:
    return max(minimum, 1 << int(max(x - 1, 0)).bit_length())


def bucket_budget(n_node: int, n_edge: int, *, min_nodes: int = 64, min_edges: int = 256) -> tuple[int, int]:
    """Padded ``(node, edge)`` budgets: the next powers of two above the real counts (one node spare)."""
    return _next_pow2(n_node + 1, min_nodes), _next_pow2(n_edge, min_edges)


@dataclasses.dataclass(frozen=True)
class BudgetLadder:
    """Padding budgets ``(base_nodes * 2**k, base_edges * 2**k)``, k = 0, 1, ...

    Node and edge budgets grow together, so a run compiles once per rung ``k``; with the base at about
    twice the mean batch, nearly every random batch lands on the first rung and heavy-tailed lesion sizes
    (a few very large lesions) add only a rung or two instead of padding every batch to the largest.
    """

    base_nodes: int
    base_edges: int

    def budget(self, n_node: int, n_edge: int) -> tuple[int, int]:
        """The smallest rung holding ``n_node + 1`` nodes (one spare for the padding graph) and ``n_edge``."""
        k = 0
        while self.base_nodes << k < n_node + 1 or self.base_edges << k < n_edge:
            k += 1
        return self.base_nodes << k, self.base_edges << k


#: The ladder used by default: fixed, so that every fit and every scoring run shares compiled steps.
#: 26-neighbour lesion graphs have at most 26 (typically 10-20) edges per node, hence edges = 16 x nodes.
DEFAULT_LADDER = BudgetLadder(256, 4096)


def budget_ladder(graphs: LesionGraphs, batch_size: int) -> BudgetLadder:
    """A :class:`BudgetLadder` whose first rung is about twice the mean batch of ``batch_size`` graphs."""
    mean_nodes = float(np.mean(graphs.n_node)) if graphs.num_graphs else 1.0
    mean_edges = float(np.mean(graphs.n_edge)) if graphs.num_graphs else 1.0
    return BudgetLadder(
        _next_pow2(int(np.ceil(2 * mean_nodes * batch_size)) + 1, 64),
        _next_pow2(int(np.ceil(2 * mean_edges * batch_size)), 256),
    )


def padded_batch(
    graphs: LesionGraphs,
    indices: Union[Sequence[int], np.ndarray],
    *,
    batch_size: Optional[int] = None,
    budget: Optional[tuple[int, int]] = None,
    ladder: Optional[BudgetLadder] = None,
) -> jraph.GraphsTuple:
    """Batch the graphs ``indices`` into one padded ``GraphsTuple``.

    Args:
      graphs: the graph set.
      indices: which graphs (at most ``batch_size``).
      batch_size: graph slots (default ``len(indices)``); the result has ``batch_size + 1`` graphs (the
        last ones are padding), so every batch of a run has the same number of graphs.
      budget: ``(nodes, edges)`` to pad to.
      ladder: else pad to this ladder's rung (else :func:`bucket_budget` of the real counts).

    Returns:
      ``GraphsTuple`` with ``nodes f32[N_pad, F]``, ``edges f32[E_pad]`` (1 real, 0 padding), ``n_node
      i32[batch_size + 1]``. Use ``jraph.get_graph_padding_mask`` / ``get_node_padding_mask`` for masks.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    batch_size = len(indices) if batch_size is None else int(batch_size)
    if len(indices) > batch_size or batch_size < 1:
        raise ValueError(f"padded_batch: {len(indices)} graphs do not fit {batch_size} slots")
    part = graphs.select(indices)
    if budget is None and ladder is not None:
        budget = ladder.budget(int(part.n_node.sum()), int(part.n_edge.sum()))
    if budget is None:
        budget = bucket_budget(int(part.n_node.sum()), int(part.n_edge.sum()))
    return jraph.pad_with_graphs(part.to_graphs_tuple(), budget[0], budget[1], batch_size + 1)
