"""``Â = D^-1/2 (W + I) D^-1/2`` of a symmetric graph in ELL form: propagation by gather and row sum, no scatter.

XLA:CPU runs a scatter-add (``segment_sum``) one update at a time; a gather followed by a dense row sum
runs faster (measured in ``benchmarks/bench_propagation.py``). The ELL (padded neighbour list) layout
stores node ``r``'s in-edges in row ``r`` of ``index: i32[N, D]`` and ``weight: f32[N, D]`` (empty slots:
weight 0, index ``r`` itself, so they read a value already in cache). In-degrees above the width ``D``
spill into a short COO "overflow" list that is propagated by ``segment_sum`` (a hybrid ELL+COO layout):
``D`` stays bounded however skewed the degrees are (k-NN hubs), and static, so XLA compiles once per
(node bucket, width, overflow bucket).

The gradient: for ``y = Â x`` the backward pass needs ``Âᵀ g``. Differentiating the gather automatically
would turn it back into a scatter-add; but ``Â`` is symmetric when ``W`` is (every edge listed in both
directions with the same weight, as voxel graphs are), so :func:`ell_propagate` has a custom VJP that
applies the same gather-based propagation to the cotangent. :func:`ell_layout` checks the symmetry
exactly and refuses graphs that lack it (use the COO :func:`ugcn.graph.gcn.propagate` for those).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ugcn.buckets import bucket_size

WIDTH_STEP = 4
# Cost of one overflow (scatter-added) edge relative to one ELL slot, for choosing the width: per edge a
# scatter-add measured 1.6-2x an ELL slot on a 2-core CPU (bench_propagation), and the overflow adds a pass
# over the N outputs; 3 keeps degree-22 random graphs at width 24 and 6-neighbour graphs at 8 (no overflow).
OVERFLOW_COST = 3.0


class NotSymmetricError(ValueError):
    """The graph lacks the symmetry (each edge's reverse with the same weight) the ELL propagation needs."""


class EllLayout(NamedTuple):
    """Host (numpy) ELL+COO layout of a symmetric graph's weighted adjacency ``W`` (self loops excluded).

    Attributes:
      ell_index: ``i32[N, D]`` senders of node r's in-edges in row r (empty slots: r).
      ell_weight: ``f32[N, D]`` their weights ``w_sr`` (empty slots: 0).
      overflow_senders, overflow_receivers: ``i32[M]`` in-edges beyond slot D (padding: 0 -> 0).
      overflow_weights: ``f32[M]`` (padding: 0).
    """

    ell_index: np.ndarray
    ell_weight: np.ndarray
    overflow_senders: np.ndarray
    overflow_receivers: np.ndarray
    overflow_weights: np.ndarray


def choose_width(in_degree: np.ndarray) -> int:
    """The ELL width ``D`` (a multiple of :data:`WIDTH_STEP`) minimising ``N·D + OVERFLOW_COST · overflow(D)``.

    ``overflow(D) = Σ_r max(deg_r - D, 0)`` edges go to the COO overflow list. Ties go to the wider layout.
    """
    deg = np.asarray(in_degree, np.int64)
    if deg.size == 0 or deg.max() == 0:
        return 0
    top = -(-int(deg.max()) // WIDTH_STEP) * WIDTH_STEP
    counts = np.bincount(deg, minlength=top + 1).astype(np.float64)
    # overflow(D) for every D: sum over degrees k > D of (k - D) * count_k
    ks = np.arange(counts.size)
    widths = np.arange(WIDTH_STEP, top + 1, WIDTH_STEP)
    overflow = np.array([np.sum(np.maximum(ks - d, 0) * counts) for d in widths])
    cost = deg.size * widths + OVERFLOW_COST * overflow
    return int(widths[np.flatnonzero(cost == cost.min())[-1]])


def _edges(senders, receivers, weights, num_nodes):
    if num_nodes >= 2**31:
        raise ValueError(f"ell_layout: {num_nodes} nodes do not fit int32 indices")
    s = np.asarray(senders).astype(np.int32, copy=False)
    r = np.asarray(receivers).astype(np.int32, copy=False)
    w = np.asarray(weights, np.float32)
    if not (s.shape == r.shape == w.shape and s.ndim == 1):
        raise ValueError(f"ell_layout: senders/receivers/weights must be 1-D of one length, got "
                         f"{s.shape}, {r.shape}, {w.shape}")
    keep = w != 0  # zero-weight edges (padding) change neither degrees nor messages
    if not keep.all():
        s, r, w = s[keep], r[keep], w[keep]
    if s.size and (min(s.min(), r.min()) < 0 or max(s.max(), r.max()) >= num_nodes):
        raise ValueError(f"ell_layout: edge endpoints outside [0, {num_nodes})")
    return s, r, w


def _edge_hash_sum(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> int:
    """``Σ_e h(a_e, b_e, w_e)`` (mod 2^64) with a splitmix64-mixed hash: equal sums for the edge list and its
    transpose mean equal multisets unless 64-bit hashes collide."""
    u = np.uint64
    x = a.astype(u) * u(0x9E3779B97F4A7C15) + b.astype(u) * u(0xC2B2AE3D27D4EB4F)
    x ^= w.view(np.uint32).astype(u) * u(0x165667B19E3779F9)
    x ^= x >> u(30)
    x *= u(0xBF58476D1CE4E5B9)
    x ^= x >> u(27)
    x *= u(0x94D049BB133111EB)
    x ^= x >> u(31)
    return int(x.sum(dtype=u))


def is_symmetric(senders: ArrayLike, receivers: ArrayLike, weights: ArrayLike, num_nodes: int) -> bool:
    """Whether the non-zero edges ``(s, r, w)`` and their reverses ``(r, s, w)`` are the same multiset.

    O(E), no sort: compares the sums of a 64-bit hash of every edge and of its reverse (a non-symmetric
    graph passes only through a hash collision).
    """
    s, r, w = _edges(senders, receivers, weights, num_nodes)
    return _edge_hash_sum(s, r, w) == _edge_hash_sum(r, s, w)


def ell_layout(
    senders: ArrayLike,
    receivers: ArrayLike,
    weights: ArrayLike,
    num_nodes: int,
    width: Optional[int] = None,
    n_overflow: Optional[int] = None,
) -> EllLayout:
    """ELL+COO layout of a symmetric weighted graph (vectorised numpy; one sort of the receivers).

    Args:
      senders, receivers: ``i32[E]``, both directions of every undirected edge.
      weights: ``f32[E]``, ``w_sr = w_rs``; zero-weight (padding) edges are dropped.
      num_nodes: N (padding nodes included: their rows are empty).
      width: ELL width D (default: :func:`choose_width` of the in-degrees).
      n_overflow: length M of the overflow list (default: :func:`overflow_size` of the edges beyond slot
        D: 0 when none, else a bucket of at least 256, so the shape rarely changes between graphs).

    Returns:
      :class:`EllLayout`.

    Raises:
      NotSymmetricError: the graph is not symmetric. ValueError: ``n_overflow`` is too small for the given width.
    """
    s, r, w = _edges(senders, receivers, weights, num_nodes)
    if _edge_hash_sum(s, r, w) != _edge_hash_sum(r, s, w):
        raise NotSymmetricError("ell_layout: the graph is not symmetric (each edge needs its reverse with the same "
                         "weight); use the COO propagation (pad_graph(..., ell_width=0))")
    order = np.argsort(r, kind="stable")  # rows by receiver (one sort of the edges)
    s, r, w = s[order], r[order], w[order]
    degree = np.bincount(r, minlength=num_nodes)
    width = choose_width(degree) if width is None else int(width)
    slot = np.arange(r.size) - (np.cumsum(degree) - degree)[r]
    in_ell = slot < width
    index = np.repeat(np.arange(num_nodes, dtype=np.int32)[:, None], width, axis=1)
    weight = np.zeros((num_nodes, width), np.float32)
    flat = r.astype(np.int64) * width + slot  # row-major position of each edge's slot
    if in_ell.all():
        index.reshape(-1)[flat], weight.reshape(-1)[flat] = s, w
    else:
        index.reshape(-1)[flat[in_ell]], weight.reshape(-1)[flat[in_ell]] = s[in_ell], w[in_ell]
    over = ~in_ell
    m = int(over.sum())
    n_overflow = overflow_size(m) if n_overflow is None else int(n_overflow)
    if n_overflow < m:
        raise ValueError(f"ell_layout: {m} edges exceed width {width}, more than n_overflow={n_overflow}")

    def pad(x, dtype):
        return np.pad(x.astype(dtype), (0, n_overflow - m))

    return EllLayout(index, weight, pad(s[over], np.int32), pad(r[over], np.int32), pad(w[over], np.float32))


def overflow_size(count: int) -> int:
    """Length of an overflow list holding ``count`` edges: 0 for none (no scatter at all: measured, a
    256-entry segment sum still costs a pass over the N outputs), else a :func:`~ugcn.buckets.bucket_size`."""
    return 0 if count == 0 else bucket_size(count)


def overflow_count(receivers: ArrayLike, weights: ArrayLike, num_nodes: int, width: int) -> int:
    """Edges of a graph that an ELL of ``width`` slots per row leaves to the overflow list."""
    r = np.asarray(receivers)[np.asarray(weights) != 0]
    degree = np.bincount(r, minlength=num_nodes)
    return int(np.maximum(degree - width, 0).sum())


class EllNorm(NamedTuple):
    """Coefficients of ``Â`` in ELL+COO form (device arrays; see :func:`ell_normalize`).

    Attributes:
      ell_index: ``i32[N, D]``; ell_coeff: ``f32[N, D]`` ``w_sr / sqrt(d_s d_r)`` (0 in empty slots).
      self_coeff: ``f32[N]`` ``1 / d_r``.
      overflow_senders, overflow_receivers: ``i32[M]``; overflow_coeff: ``f32[M]``.
    """

    ell_index: jnp.ndarray
    ell_coeff: jnp.ndarray
    self_coeff: jnp.ndarray
    overflow_senders: jnp.ndarray
    overflow_receivers: jnp.ndarray
    overflow_coeff: jnp.ndarray


def ell_normalize(index, weight, overflow_senders, overflow_receivers, overflow_weights) -> EllNorm:
    """:class:`EllNorm` of ``D^-1/2 (W + I) D^-1/2`` from an :class:`EllLayout`'s arrays (jittable).

    ``d_r = 1 + Σ_slots weight[r] + Σ_overflow w``: row sums and one short segment sum, no scatter over E.
    """
    index, weight = jnp.asarray(index), jnp.asarray(weight, jnp.float32)
    o_s, o_r = jnp.asarray(overflow_senders), jnp.asarray(overflow_receivers)
    o_w = jnp.asarray(overflow_weights, jnp.float32)
    n = index.shape[0]
    degree = 1.0 + jnp.sum(weight, axis=1) + jax.ops.segment_sum(o_w, o_r, num_segments=n)
    inv_sqrt = jax.lax.rsqrt(degree)
    coeff = _take(inv_sqrt, index) * weight * inv_sqrt[:, None]
    o_c = _take(inv_sqrt, o_s) * o_w * _take(inv_sqrt, o_r)
    return EllNorm(index, coeff, 1.0 / degree, o_s, o_r, o_c)


def _take(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    # Indices come from ell_layout (in range): skipping jnp's negative-index and clamping arithmetic is
    # measurably faster on CPU.
    return x.at[index].get(mode="promise_in_bounds")


def _apply(norm: EllNorm, x: jnp.ndarray) -> jnp.ndarray:
    """``Â x`` for ``x: f32[N]`` or ``f32[N, F]``."""
    def expand(c):
        return c.reshape(c.shape + (1,) * (x.ndim - 1))

    out = jnp.sum(_take(x, norm.ell_index) * expand(norm.ell_coeff), axis=1) + x * expand(norm.self_coeff)
    if norm.overflow_senders.shape[0] == 0:
        return out
    messages = _take(x, norm.overflow_senders) * expand(norm.overflow_coeff)
    return out + jax.ops.segment_sum(messages, norm.overflow_receivers, num_segments=x.shape[0])


@jax.custom_vjp
def _symmetric_apply(norm: EllNorm, x: jnp.ndarray) -> jnp.ndarray:
    return _apply(norm, x)


def _symmetric_apply_fwd(norm, x):
    return _apply(norm, x), norm


def _symmetric_apply_bwd(norm, g):
    # Âᵀ g = Â g (Â symmetric). The coefficients are constants of the graph: no cotangent.
    zeros = jax.tree_util.tree_map(
        lambda a: np.zeros(a.shape, jax.dtypes.float0) if not jnp.issubdtype(a.dtype, jnp.floating)
        else jnp.zeros_like(a), norm)
    return zeros, _apply(norm, jnp.asarray(g))


_symmetric_apply.defvjp(_symmetric_apply_fwd, _symmetric_apply_bwd)


def ell_propagate(norm: EllNorm, x: ArrayLike) -> jnp.ndarray:
    """``Â @ x`` for ``x: f32[N, F]`` (or ``f32[N]``) by gather and row sum; its gradient w.r.t. ``x`` is the
    same propagation of the cotangent (``Â`` is symmetric), so neither pass scatters over the ELL slots."""
    return _symmetric_apply(norm, jnp.asarray(x))
