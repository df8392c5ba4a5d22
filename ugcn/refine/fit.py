"""Method R's per-volume GCN fit (docs/method.md R9-R12) as one jitted program, and its vmapped batch form.

Model (Kipf & Welling 2017): ``H = ReLU(Â X W1 + b1)``, dropout on ``H`` only, ``out = sigmoid(Â H W2 + b2)``.
Because no dropout touches the input features, ``Â X`` is the same in every epoch and is computed once
before the scan: layer 1 is then a dense ``(N×F)(F×32)`` product per epoch, and layer 2 applies ``W2``
(32 -> 1) before propagating, so each epoch propagates a single channel per edge (forward and backward).
The hidden layer (:func:`_hidden_out`) never exists as an ``[H, N]`` array by default (H <= 32, dropout 0.5 or
off): :func:`_packed_out` computes it in element-wise loops over the nodes, each node's units kept in
registers, its dropout draw (a Threefry hash of the node's index, :func:`_threefry_bits`) computed in the same
loop, and which units are on stored as one uint32 per node for the backward pass, whose parameter gradients are
all linear in one ``[H, F+1]`` product over the nodes. The loss (:func:`weighted_bce`) takes its gradient from
the forward's one exponential. Measured against the earlier form (``[H, tile]`` activations in cache-sized node
tiles, :func:`_tiled_out`, still used for other dropout rates and wider layers, and optax's loss autodiffed),
interleaved in one process, medians, load 9: the per-node part of an epoch 2.19x / 2.04x faster at 97k / 291k
nodes, the whole fit 1.49x / 1.42x (``benchmarks/bench_propagation.py`` reports it against bandwidth).

Propagation: by default in ELL form (:mod:`ugcn.graph.ell`, built by :func:`pad_graph` on the host): each
node's in-edges in a row of a fixed width, a gather and a row sum, and the backward pass the same gather
(``Â`` is symmetric) instead of XLA:CPU's scatter-add; ``pad_graph(..., ell_width=0)`` keeps the COO
edges and ``segment_sum`` (measured slower on CPU, ``benchmarks/bench_refine.py``).

Batches: :func:`fit_batch` fits B volumes in one compiled program. Its "parallel" strategy is a ``vmap``
in meaning (every volume has its own parameters, optimiser state, key and loss), laid out as one
block-diagonal graph of ``B·N`` nodes, so propagation stays a single 1-D gather (and segment sum; a
vmapped scatter is slow on CPU); its "sequential" strategy (``lax.map``, the CPU default) keeps each
volume's working set in cache. :func:`fit_gcn` is the same program with B = 1. With ``devices``, the batch
is split along its volume axis over a device mesh (:mod:`ugcn.parallel`) and each device runs that same
batch program on its share: no volume spans two devices, so nothing is communicated.

Padding: a :class:`PaddedGraph` is padded to bucket sizes (:func:`bucket_size`) so that XLA compiles once
per bucket and graphs of different sizes can be stacked for :func:`fit_batch`. Padding edges carry weight 0
(they change no degree and carry no message), padding nodes are masked out of the loss. A volume's result
does not depend on its padding or batch beyond float rounding: the dropout mask of node ``i`` in an epoch
is drawn from counter ``i`` of a key that depends only on the volume's key and the epoch (jax's default
``jax_threefry_partitionable`` random bits are counter-based: a longer draw extends a shorter one).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from ugcn.buckets import bucket_size
from ugcn.config import setting
from ugcn.graph.ell import (
    EllNorm,
    NotSymmetricError,
    choose_width,
    ell_layout,
    ell_normalize,
    ell_propagate,
    overflow_count,
    overflow_size,
)
from ugcn.graph.gcn import GCNNorm, gcn_normalize, propagate

LOSSES = ("balanced_bce", "bce")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of the per-volume GCN fit (docs/method.md R10-R11 defaults, except ``loss``: the
    method uses ``"bce"``, see ``RefineConfig.preset("reference")``). Hashable: a jit static.

    Attributes:
      epochs: full-batch training epochs.
      hidden: hidden units.
      learning_rate: Adam step size.
      weight_decay: L2 coefficient added to the gradient (as PyTorch's Adam).
      dropout: dropout rate on the hidden layer.
      loss: ``"balanced_bce"`` (default: the mean of the two classes' mean BCE, see :func:`bce_loss`) or
        ``"bce"`` (the method: the mean BCE over the training nodes). With few certain foreground nodes
        (measured on CT phantoms: 3-9 %), the plain BCE is minimised by predicting background everywhere.
    """

    epochs: int = setting(200, min=1)
    hidden: int = setting(32, min=1)
    learning_rate: float = setting(1e-2, gt=0)
    weight_decay: float = setting(1e-5, min=0)
    dropout: float = setting(0.5, min=0, lt=1)
    loss: str = setting("balanced_bce", choices=LOSSES)

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")


def bce_loss(logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray, loss: str = "bce") -> jnp.ndarray:
    """Binary cross-entropy per graph from logits: ``f32[B]`` for ``logits, labels, mask: [B, N]``.

    ``"bce"``: ``Σ_i m_i·bce_i / Σ_i m_i`` (m: the 0/1 training mask). ``"balanced_bce"``: every class present
    among the masked nodes gets half the weight (``(mean_fg bce + mean_bg bce) / 2``; a graph whose training
    nodes are all one class gets that class's mean). ``bce = -[y log σ(z) + (1-y) log(1-σ(z))]``.
    """
    return weighted_bce(logits, labels, loss_weights(labels, mask, loss))


def loss_weights(labels: ArrayLike, mask: ArrayLike, loss: str = "bce") -> jnp.ndarray:
    """``f32[B, N]`` node weights of :func:`bce_loss`, normalised to sum to 1 per graph (0 without training
    nodes): the same in every epoch, so the fit computes them once."""
    labels, mask = jnp.asarray(labels, jnp.float32), jnp.asarray(mask, jnp.float32)
    if loss == "balanced_bce":
        fg = jnp.sum(mask * labels, axis=-1, keepdims=True)
        bg = jnp.sum(mask * (1.0 - labels), axis=-1, keepdims=True)
        mask = mask * (labels / jnp.maximum(fg, 1.0) + (1.0 - labels) / jnp.maximum(bg, 1.0))
    elif loss != "bce":
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return mask / jnp.maximum(jnp.sum(mask, axis=-1, keepdims=True), 1e-12)


@jax.custom_vjp
def weighted_bce(logits: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
    """``Σ_i w_i·bce(z_i, y_i)`` over the last axis, as ``max(z, 0) - y·z + log1p(exp(-|z|))``; its gradient
    ``w·(σ(z) - y)`` takes the one exponential of the forward pass (optax's form, autodiffed, costs three
    exponentials and a log1p per node and epoch, measured a quarter of the per-node part at 291k nodes)."""
    return _weighted_bce_fwd(logits, labels, weights)[0]


def _weighted_bce_fwd(logits, labels, weights):
    e = jnp.exp(-jnp.abs(logits))
    bce = jnp.maximum(logits, 0.0) - labels * logits + jnp.log1p(e)
    sigmoid = jnp.where(logits >= 0, 1.0, e) / (1.0 + e)
    return jnp.sum(weights * bce, axis=-1), (sigmoid, labels, weights)


def _weighted_bce_bwd(residuals, g):
    sigmoid, labels, weights = residuals
    return g[..., None] * weights * (sigmoid - labels), jnp.zeros_like(labels), jnp.zeros_like(weights)


weighted_bce.defvjp(_weighted_bce_fwd, _weighted_bce_bwd)


class PaddedGraph(NamedTuple):
    """A voxel graph padded to static sizes (optionally stacked on a leading batch axis ``B``).

    Attributes:
      features: ``f32[(B,) N, F]``; padding rows 0.
      labels: ``f32[(B,) N]`` targets in {0, 1}.
      train_mask: ``bool[(B,) N]`` nodes in the loss (False on padding).
      node_mask: ``bool[(B,) N]`` real nodes.
      senders, receivers: ``i32[(B,) E]``; padding edges 0 -> 0.
      weights: ``f32[(B,) E]``; padding edges 0.
      ell_index, ell_weight: ``i32/f32[(B,) N, D]`` the same edges in ELL form (:mod:`ugcn.graph.ell`), which
        the fit propagates with when ``D > 0``; ``D = 0``: the fit uses the COO edges above (segment sums).
      overflow_senders, overflow_receivers, overflow_weights: ``[(B,) M]`` in-edges beyond the ELL width.
    """

    features: np.ndarray
    labels: np.ndarray
    train_mask: np.ndarray
    node_mask: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    weights: np.ndarray
    ell_index: np.ndarray
    ell_weight: np.ndarray
    overflow_senders: np.ndarray
    overflow_receivers: np.ndarray
    overflow_weights: np.ndarray


class FitResult(NamedTuple):
    """Output of :func:`fit_gcn` (leading axis ``B`` for :func:`fit_batch`).

    Attributes:
      params: ``{"w1": f32[F, H], "b1": f32[H], "w2": f32[H, 1], "b2": f32[1]}``.
      node_probs: ``f32[(B,) N]`` foreground probability of every (padded) node, dropout off.
      losses: ``f32[(B,) epochs]`` training loss before each update (with dropout).
    """

    params: dict
    node_probs: jnp.ndarray
    losses: jnp.ndarray


def pad_graph(
    graph, n_nodes: int | None = None, n_edges: int | None = None, *, ell_width: int | None = None,
    n_overflow: int | None = None,
) -> PaddedGraph:
    """Pad a :class:`~ugcn.graph.voxel_graph.VoxelGraph` to ``n_nodes`` nodes and ``n_edges`` edges.

    Args:
      graph: any object with ``features f32[N, F]``, ``labels f32[N]``, ``train_mask bool[N]``,
        ``senders/receivers i32[E]``, ``weights f32[E]``.
      n_nodes, n_edges: target sizes (default: :func:`bucket_size` of the graph's own sizes).
      ell_width: width D of the ELL layout the fit propagates with (gather-based, :mod:`ugcn.graph.ell`;
        default: :func:`~ugcn.graph.ell.choose_width`, or 0 when the graph is not symmetric); 0: no ELL,
        the fit propagates the COO edges with segment sums (XLA:CPU scatter-adds, slower on CPU).
      n_overflow: length of the ELL's overflow list (default: a bucket of what the width leaves over).

    Returns:
      :class:`PaddedGraph` of numpy arrays.
    """
    n, e = graph.features.shape[0], graph.senders.shape[0]
    n_nodes = bucket_size(n) if n_nodes is None else int(n_nodes)
    n_edges = bucket_size(e) if n_edges is None else int(n_edges)
    if n_nodes < n or n_edges < e:
        raise ValueError(f"pad_graph: graph has {n} nodes/{e} edges, more than the bucket {n_nodes}/{n_edges}")

    def pad(x, size, value=0):
        x = np.asarray(x)
        widths = [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
        return np.pad(x, widths, constant_values=value)

    return PaddedGraph(
        features=pad(graph.features.astype(np.float32), n_nodes),
        labels=pad(graph.labels.astype(np.float32), n_nodes),
        train_mask=pad(graph.train_mask.astype(bool), n_nodes, False),
        node_mask=pad(np.ones(n, bool), n_nodes, False),
        senders=pad(graph.senders.astype(np.int32), n_edges),
        receivers=pad(graph.receivers.astype(np.int32), n_edges),
        weights=pad(graph.weights.astype(np.float32), n_edges),
        **_ell_fields(graph, n_nodes, ell_width, n_overflow),
    )


def _ell_fields(graph, n_nodes: int, width: int | None, n_overflow: int | None) -> dict:
    """The ELL fields of :class:`PaddedGraph` (width 0 and no overflow: the COO propagation)."""
    if width is None or width > 0:
        try:
            return ell_layout(graph.senders, graph.receivers, graph.weights, n_nodes, width, n_overflow)._asdict()
        except NotSymmetricError:
            if width is not None:
                raise
    empty = np.zeros(0, np.int32)
    return {"ell_index": np.zeros((n_nodes, 0), np.int32), "ell_weight": np.zeros((n_nodes, 0), np.float32),
            "overflow_senders": empty, "overflow_receivers": empty, "overflow_weights": empty.astype(np.float32)}


def stack_graphs(
    graphs: Sequence, n_nodes: int | None = None, n_edges: int | None = None, *, ell_width: int | None = None,
) -> PaddedGraph:
    """Pad graphs to one common bucket (the largest's unless given) and stack them: ``[B, ...]`` arrays.

    ``ell_width`` as in :func:`pad_graph`; by default the widest of the graphs' own choices (0 if any graph
    is not symmetric), with one overflow length for all.
    """
    if not graphs:
        raise ValueError("stack_graphs: no graphs")
    n_nodes = n_nodes or bucket_size(max(g.features.shape[0] for g in graphs))
    n_edges = n_edges or bucket_size(max(g.senders.shape[0] for g in graphs))
    width = ell_width
    if width is None:
        width = max(choose_width(_in_degree(g, n_nodes)) for g in graphs)
    n_overflow = None
    if width > 0:
        n_overflow = overflow_size(max(overflow_count(g.receivers, g.weights, n_nodes, width) for g in graphs))
    try:
        padded = [pad_graph(g, n_nodes, n_edges, ell_width=width, n_overflow=n_overflow) for g in graphs]
    except NotSymmetricError:
        if ell_width is not None:
            raise
        padded = [pad_graph(g, n_nodes, n_edges, ell_width=0) for g in graphs]
    return PaddedGraph(*(np.stack(parts) for parts in zip(*padded)))


def _in_degree(graph, n_nodes: int) -> np.ndarray:
    return np.bincount(np.asarray(graph.receivers)[np.asarray(graph.weights) != 0], minlength=n_nodes)


def init_params(key: jax.Array, n_features: int, hidden: int) -> dict:
    """Glorot-uniform weights, zero biases: ``w1 f32[F, H], b1 f32[H], w2 f32[H, 1], b2 f32[1]``."""
    k1, k2 = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    return {
        "w1": glorot(k1, (n_features, hidden), jnp.float32),
        "b1": jnp.zeros((hidden,), jnp.float32),
        "w2": glorot(k2, (hidden, 1), jnp.float32),
        "b2": jnp.zeros((1,), jnp.float32),
    }


# Nodes per tile of the hidden layer: its [H, tile] activations, dropout mask and gradient (512 KiB each at
# H = 32) stay in a core's L2 cache instead of streaming [H, N] arrays through memory five times an epoch.
# Measured (bench_propagation, ~100k nodes): 2048-8192 about equal, ~1.5-2x faster epochs than untiled.
NODE_TILE = 4096


def _dropout_draw(key: jax.Array, n: int, hidden: int, rate: float) -> jnp.ndarray:
    """The random numbers of one epoch's dropout mask (node i's depend only on key and i): ``u32[n]`` when
    ``rate = 0.5`` and ``hidden <= 32`` (one random uint32 per node gives its 32 fair coin flips: 32x fewer
    random numbers), else ``f32[hidden, n]`` uniforms. :func:`_keep` turns (a tile of) it into the mask.

    The ``u32[n]`` draw equals ``jax.random.bits(key, (n,), jnp.uint32)``; with threefry keys it is computed
    by :func:`_threefry_bits`, element-wise, so XLA fuses it into the hidden layer's loop (:func:`_unit_mask`)."""
    if rate == 0.5 and hidden <= 32:
        if _inline_threefry(key):
            return _threefry_bits(jax.random.key_data(key), n)
        return jax.random.bits(key, (n,), jnp.uint32)
    return jax.random.uniform(key, (n, hidden)).T


def _inline_threefry(key: jax.Array) -> bool:
    """Whether ``jax.random.bits(key, (n,), uint32)`` is :func:`_threefry_bits` of the key's data: threefry keys
    with the counter-based (partitionable) bit layout."""
    partitionable = jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]
    return bool(partitionable) and str(jax.random.key_impl(key)) == "threefry2x32"


def _threefry_bits(key_data: jnp.ndarray, n: int) -> jnp.ndarray:
    """``u32[n]``: the Threefry-2x32 hash (20 rounds) of counters ``(0, i)`` under the key ``u32[2]``, its two
    words xor-ed: jax's partitionable ``random.bits`` for ``n < 2^32``, written element-wise (jax lowers its
    own to a rolled loop on CPU, a separate pass over memory per round group)."""
    k1, k2 = key_data[..., 0, None], key_data[..., 1, None]
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0 = jnp.zeros(k1.shape[:-1] + (n,), jnp.uint32) + ks[0]
    x1 = jax.lax.iota(jnp.uint32, n) + ks[1]
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    for i in range(5):
        for r in rotations[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0 ^ x1


def _keep(draw: jnp.ndarray, hidden: int, rate: float) -> jnp.ndarray:
    """Dropout keep mask ``f32[hidden, t]`` scaled by ``1/(1-rate)``, from a tile of :func:`_dropout_draw`."""
    if draw.dtype == jnp.uint32:
        bits = (draw[None, :] >> jnp.arange(hidden, dtype=jnp.uint32)[:, None]) & 1
        return bits.astype(jnp.float32) * 2.0
    return (draw >= rate).astype(jnp.float32) / (1.0 - rate)


def _node_tile(n: int) -> int:
    """Tile length for N nodes: a divisor of N (bucket sizes m·2^k have large power-of-two divisors); one
    tile when N has none of at least 256."""
    tile = math.gcd(n, NODE_TILE)
    return tile if tile >= 256 else n


def _tiles(x: jnp.ndarray, tile: int) -> jnp.ndarray:
    """``[..., N] -> [N / tile, ..., tile]``."""
    return jnp.moveaxis(x.reshape(x.shape[:-1] + (x.shape[-1] // tile, tile)), -2, 0)


def _hidden_tile(w1, b1, ax_t, draw, rate):
    """Pre-activation ``f32[H, t]`` and ``ReLU(pre) ⊙ keep`` of one tile (``keep`` = 1 without dropout)."""
    pre = w1.T @ ax_t + b1[:, None]
    h = jax.nn.relu(pre)
    keep = None if draw is None else _keep(draw, w1.shape[1], rate)
    return pre, keep, (h if keep is None else h * keep)


def _hidden_out(w1, b1, w2, ax_t, draw, rate):
    """``w2ᵀ (ReLU(W1ᵀ (ÂX)ᵀ + b1) ⊙ keep)`` -> ``f32[N]`` for ``w1 f32[F, H]``, ``b1 f32[H]``, ``w2 f32[H]``,
    ``ax_t f32[F, N]`` and ``draw`` (:func:`_dropout_draw` at ``rate``, or ``None``: no dropout).

    Up to 32 units with the dropout mask as bits (the default: rate 0.5) or without dropout:
    :func:`_packed_out` (element-wise loops, no ``[H, N]`` array). Otherwise :func:`_tiled_out`.
    """
    if _packed(w1.shape[1], draw):
        return _packed_out(w1, b1, w2, ax_t, draw, 1.0 if draw is None else 1.0 / (1.0 - rate))
    return _tiled_out(w1, b1, w2, ax_t, draw, rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _tiled_out(w1, b1, w2, ax_t, draw, rate):
    """:func:`_hidden_out` node tile by node tile (:data:`NODE_TILE`): ``[H, tile]`` activations in cache.

    ``w1 f32[F, H]``, ``b1 f32[H]``, ``w2 f32[H]``, ``ax_t f32[F, N]``, ``draw``: :func:`_dropout_draw` or
    ``None`` (no dropout). The backward pass recomputes each tile's activations (3 FMAs per unit at F = 3)
    instead of keeping ``[H, N]`` residuals; only the small parameter gradients are accumulated.
    """
    tile = _node_tile(ax_t.shape[-1])

    def one(args):
        a, d = args
        return w2 @ _hidden_tile(w1, b1, a, d, rate)[2]

    draws = None if draw is None else _tiles(draw, tile)
    return jax.lax.map(one, (_tiles(ax_t, tile), draws)).reshape(-1)


def _tiled_out_fwd(w1, b1, w2, ax_t, draw, rate):
    return _tiled_out(w1, b1, w2, ax_t, draw, rate), (w1, b1, w2, ax_t, draw)


def _tiled_out_bwd(rate, residuals, dz):
    w1, b1, w2, ax_t, draw = residuals
    tile = _node_tile(ax_t.shape[-1])

    def one(acc, args):
        a, d, g = args
        pre, keep, hk = _hidden_tile(w1, b1, a, d, rate)
        dh = w2[:, None] * g[None, :]
        dpre = jnp.where(pre > 0, dh if keep is None else dh * keep, 0.0)
        return (acc[0] + a @ dpre.T, acc[1] + jnp.sum(dpre, axis=1), acc[2] + hk @ g), None

    draws = None if draw is None else _tiles(draw, tile)
    zero = (jnp.zeros_like(w1), jnp.zeros_like(b1), jnp.zeros_like(w2))
    (dw1, db1, dw2), _ = jax.lax.scan(one, zero, (_tiles(ax_t, tile), draws, _tiles(dz, tile)))
    d_draw = None if draw is None else (np.zeros(draw.shape, jax.dtypes.float0) if draw.dtype == jnp.uint32
                                        else jnp.zeros_like(draw))
    return dw1, db1, dw2, jnp.zeros_like(ax_t), d_draw


_tiled_out.defvjp(_tiled_out_fwd, _tiled_out_bwd)


def _packed(hidden: int, draw) -> bool:
    """Whether :func:`_hidden_out` takes the packed path: at most 32 units, and dropout off or drawn as one
    uint32 per node (:func:`_dropout_draw` at rate 0.5)."""
    return hidden <= 32 and (draw is None or draw.dtype == jnp.uint32)


def _pre(w1, b1, ax_t, h: int) -> jnp.ndarray:
    """Unit h's pre-activation ``f32[N]`` (``F`` products and the bias, element-wise)."""
    pre = ax_t[0] * w1[0, h]
    for f in range(1, ax_t.shape[0]):
        pre = pre + ax_t[f] * w1[f, h]
    return pre + b1[h]


def _unit_mask(w1, b1, ax_t, draw) -> jnp.ndarray:
    """``u32[N]``: bit h of node i is set when unit h is active (pre-activation > 0) and kept by dropout
    (bit h of ``draw``; ``draw = None``: all kept). One element-wise loop over the nodes, the random draw
    (:func:`_threefry_bits`) fused into it."""
    active = jnp.zeros(ax_t.shape[1:], jnp.uint32)
    for h in range(w1.shape[1]):
        active = active | jnp.where(_pre(w1, b1, ax_t, h) > 0, np.uint32(1 << h), np.uint32(0))
    return active if draw is None else active & draw


def _packed_value(w1, b1, w2, ax_t, mask, scale: float) -> jnp.ndarray:
    """``z f32[N] = Σ_h scale·w2[h]·pre_h`` over the units whose bit is set in ``mask``: ``w2ᵀ(ReLU(pre) ⊙ keep)``."""
    z = jnp.zeros(ax_t.shape[1:], jnp.float32)
    for h in range(w1.shape[1]):
        on = (mask & np.uint32(1 << h)) != 0
        z = z + jnp.where(on, _pre(w1, b1, ax_t, h), 0.0) * (scale * w2[h])
    return z


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _packed_out(w1, b1, w2, ax_t, draw, scale):
    """:func:`_hidden_out` for ``H <= 32`` with the dropout mask as bits (``draw u32[N]`` or ``None``).

    Forward: two element-wise loops over the nodes, no ``[H, N]`` array: :func:`_unit_mask` packs which units
    are on into one uint32 per node (the backward pass's only residual), :func:`_packed_value` sums them.
    Backward, with ``M[h, i] = scale·bit_h(mask_i)``, ``A' = [(ÂX)ᵀ; 1]`` and the cotangent ``g``: every
    parameter gradient is a linear function of ``Q = M (A' ⊙ g)ᵀ`` (``f32[H, F+1]``, one product over the nodes,
    in node tiles): ``dW1 = w2 ⊙ Q[:, :F]ᵀ``, ``db1 = w2 ⊙ Q[:, F]``, ``dw2[h] = Σ_f [W1; b1][f, h] Q[h, f]``
    (since ``ReLU(pre) ⊙ keep = M ⊙ pre`` and ``pre = [W1; b1]ᵀ A'``).
    """
    return _packed_value(w1, b1, w2, ax_t, _unit_mask(w1, b1, ax_t, draw), scale)


def _packed_out_fwd(w1, b1, w2, ax_t, draw, scale):
    # The barriers keep the mask and z one array each: XLA would otherwise recompute the mask (the random draw
    # included) inside the loop that sums the units, and that loop inside each consumer of z.
    mask = jax.lax.optimization_barrier(_unit_mask(w1, b1, ax_t, draw))
    z = jax.lax.optimization_barrier(_packed_value(w1, b1, w2, ax_t, mask, scale))
    return z, (w1, b1, w2, ax_t, mask, draw)


def _packed_out_bwd(scale, residuals, g):
    w1, b1, w2, ax_t, mask, draw = residuals
    f, n = ax_t.shape
    hidden = w1.shape[1]
    tile = _node_tile(n)
    shifts = jnp.arange(hidden, dtype=jnp.uint32)[:, None]

    def one(i, q):
        start = i * tile
        m = jax.lax.dynamic_slice_in_dim(mask, start, tile)
        a = jax.lax.dynamic_slice_in_dim(ax_t, start, tile, axis=1)
        gt = jax.lax.dynamic_slice_in_dim(g, start, tile)
        units = ((m[None, :] >> shifts) & 1).astype(jnp.float32) * scale  # [H, tile], in cache
        ag = jnp.concatenate([a * gt[None, :], gt[None, :]])  # [F + 1, tile]
        return q + jax.lax.dot_general(units, ag, (((1,), (1,)), ((), ())))

    q = jax.lax.fori_loop(0, n // tile, one, jnp.zeros((hidden, f + 1), jnp.float32))
    dw1 = w2[None, :] * q[:, :f].T
    db1 = w2 * q[:, f]
    dw2 = jnp.sum(jnp.concatenate([w1, b1[None, :]]).T * q, axis=1)
    d_draw = None if draw is None else np.zeros(draw.shape, jax.dtypes.float0)
    return dw1, db1, dw2, jnp.zeros_like(ax_t), d_draw


_packed_out.defvjp(_packed_out_fwd, _packed_out_bwd)


def _logits(params: dict, ax_t: jnp.ndarray, norm, draws: jnp.ndarray | None, rate: float = 0.0) -> jnp.ndarray:
    """``Â (ReLU(ÂX W1 + b1) ⊙ keep) W2 + b2`` for B graphs at once -> ``f32[B, N]``.

    ``ax_t: f32[B, F, N]`` is ``(ÂX)ᵀ``, precomputed. The hidden layer is kept node-minor (``[B, H, N]``):
    with F = 3 the products and their gradients (reductions over N) run ~3x faster on CPU than with the
    usual ``[N, H]`` layout; and it is computed in node tiles (:func:`_hidden_out`). ``draws``: ``[B, ...]``
    :func:`_dropout_draw` per graph, or ``None`` (no dropout). ``norm`` is the block-diagonal normalisation
    of the B graphs (``B·N`` nodes).
    """
    b, _, n = ax_t.shape
    # static B: XLA's CPU batched dot is ~3x slower than B plain 2-D products
    z = jnp.stack([_hidden_out(params["w1"][i], params["b1"][i], params["w2"][i, :, 0], ax_t[i],
                               None if draws is None else draws[i], rate) for i in range(b)])
    return _propagate(norm, z.reshape(b * n)).reshape(b, n) + params["b2"]


def _propagate(norm: GCNNorm | EllNorm, x: ArrayLike) -> jnp.ndarray:
    return ell_propagate(norm, x) if isinstance(norm, EllNorm) else propagate(norm, x)


def _flat_norm(graphs: PaddedGraph) -> GCNNorm | EllNorm:
    """Normalisation of B graphs ``[B, ...]`` as ONE block-diagonal graph of ``B·N`` nodes: ELL when the
    graphs carry an ELL layout (width > 0), else COO.

    A single 1-D gather/segment-sum over ``B·E`` edges is much faster on CPU than a vmapped (batched)
    scatter; with per-graph parameters the fits stay independent.
    """
    b, n = graphs.node_mask.shape
    offsets = jnp.arange(b, dtype=jnp.int32) * n
    flat = lambda idx: (idx + offsets.reshape((b,) + (1,) * (idx.ndim - 1))).reshape((-1,) + idx.shape[2:])  # noqa: E731
    if graphs.ell_index.shape[-1] > 0:
        return ell_normalize(flat(graphs.ell_index), graphs.ell_weight.reshape(b * n, -1),
                             flat(graphs.overflow_senders), flat(graphs.overflow_receivers),
                             graphs.overflow_weights.reshape(-1))
    return gcn_normalize(flat(graphs.senders), flat(graphs.receivers), graphs.weights.reshape(-1), b * n)


def _fit(graphs: PaddedGraph, keys: jax.Array, config: FitConfig) -> FitResult:
    """B independent fits in one program (graphs ``[B, ...]``, ``keys [B]``)."""
    b, n, f = graphs.features.shape
    norm = _flat_norm(graphs)
    ax = _propagate(norm, graphs.features.reshape(b * n, f)).reshape(b, n, f)  # once: no input dropout
    ax_t = jnp.swapaxes(ax, 1, 2)
    split = jax.vmap(jax.random.split)(keys)
    init_keys, drop_keys = split[:, 0], split[:, 1]
    params = jax.vmap(lambda k: init_params(k, f, config.hidden))(init_keys)
    optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.learning_rate))
    labels = graphs.labels

    weights = loss_weights(labels, graphs.train_mask, config.loss)

    def loss_fn(p, draws):
        per_graph = weighted_bce(_logits(p, ax_t, norm, draws, config.dropout), labels, weights)
        # Each graph's parameters only touch its own term: the sum's gradient is every fit's own gradient.
        return jnp.sum(per_graph), per_graph

    def epoch(carry, i):
        p, state = carry
        draws = None
        if config.dropout > 0:
            draws = jax.vmap(lambda k: _dropout_draw(jax.random.fold_in(k, i), n, config.hidden, config.dropout))(
                drop_keys
            )
        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, draws)
        # Adam and weight decay act element-wise, so one optimiser over the stacked parameters is B optimisers.
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), losses

    (params, _), losses = jax.lax.scan(epoch, (params, optimizer.init(params)), jnp.arange(config.epochs))
    probs = jax.nn.sigmoid(_logits(params, ax_t, norm, None))
    return FitResult(params, jnp.where(graphs.node_mask, probs, 0.0), losses.T)


@functools.partial(jax.jit, static_argnames="config")
def fit_gcn(graph: PaddedGraph, key: jax.Array, config: FitConfig = FitConfig()) -> FitResult:
    """Fit method R's GCN on one padded graph: ``config.epochs`` Adam steps in one ``lax.scan``.

    Args:
      graph: :class:`PaddedGraph` (no batch axis).
      key: PRNG key (initialisation and dropout).
      config: :class:`FitConfig` (static).

    Returns:
      :class:`FitResult` with ``node_probs f32[N]`` (0 on padding) and ``losses f32[epochs]``.
    """
    batched = _fit(jax.tree_util.tree_map(lambda x: x[None], graph), key[None], config)
    return jax.tree_util.tree_map(lambda x: x[0], batched)


BATCH_STRATEGIES = ("auto", "parallel", "sequential")


def resolve_strategy(strategy: str) -> str:
    """The batch strategy ``"auto"`` stands for: ``"sequential"`` on a CPU (measured faster there at every
    size tried, 4k-20k nodes, B = 4-16), ``"parallel"`` on accelerators."""
    if strategy not in BATCH_STRATEGIES:
        raise ValueError(f"strategy must be one of {BATCH_STRATEGIES}, got {strategy!r}")
    if strategy != "auto":
        return strategy
    return "sequential" if jax.default_backend() == "cpu" else "parallel"


@functools.partial(jax.jit, static_argnames=("config", "strategy"))
def _fit_batch(graphs: PaddedGraph, keys: jax.Array, config: FitConfig, strategy: str) -> FitResult:
    if strategy == "parallel":
        return _fit(graphs, keys, config)

    def one(args):
        graph, key = args
        out = _fit(jax.tree_util.tree_map(lambda x: x[None], graph), key[None], config)
        return jax.tree_util.tree_map(lambda x: x[0], out)

    return jax.lax.map(one, (graphs, keys))


@functools.lru_cache(maxsize=32)
def _per_device_fit(config: FitConfig, strategy: str):
    """The batch fit of one device's share, as one function object per (config, strategy) so that
    :func:`ugcn.parallel.shard_map_batch` compiles it once per mesh and shape."""
    return lambda graphs, keys: _fit_batch(graphs, keys, config, strategy)


def fit_batch(
    graphs: PaddedGraph, keys: jax.Array, config: FitConfig = FitConfig(), *, strategy: str = "auto",
    devices=None,
) -> FitResult:
    """:func:`fit_gcn` over a stack of graphs (:func:`stack_graphs`) and keys ``[B]``, in ONE compiled program.

    Volume b's result equals ``fit_gcn(graphs[b], keys[b])`` up to float rounding, whatever the strategy:
      - ``"parallel"``: a ``vmap`` in meaning, laid out as one block-diagonal graph of ``B·N`` nodes with
        per-volume parameters (:func:`_flat_norm`); meant for accelerators.
      - ``"sequential"``: ``lax.map`` of the single-volume fit; on a CPU each volume's working set then
        stays in cache, which beats the parallel layout (measured at B = 4, N = 20k: 4.5 s vs 6.4 s).
      - ``"auto"`` (default): see :func:`resolve_strategy`.

    ``devices`` (an int or a :func:`ugcn.parallel.device_mesh`) spreads the volumes over that many devices:
    the batch is padded to a multiple of the device count (copies of volume 0, dropped again), split along
    its leading axis (``NamedSharding(mesh, P("batch"))``) and every device runs the batch fit above on its
    own share (``shard_map``). Parameters are per volume, so nothing crosses devices, and the results are
    those of one device up to float rounding. ``None`` (default): one device, no mesh.
    """
    strategy = resolve_strategy(strategy)
    if devices is None:
        return _fit_batch(graphs, keys, config, strategy)
    from ugcn.parallel import resolve_mesh, run_sharded

    return run_sharded(_per_device_fit(config, strategy), resolve_mesh(devices), graphs, keys)
