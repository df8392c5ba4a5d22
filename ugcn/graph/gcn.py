"""The weighted graph convolution of Kipf & Welling (2017), on ``jraph.GraphsTuple``.

``Â = D^-1/2 (W + I) D^-1/2`` with ``D`` the weighted degree of ``W + I``. jraph's own
``GraphConvolution`` ignores edge weights, so the normalisation is written here with segment sums.
The self loop is applied analytically (``x_i / d_i``) instead of appending N edges.

Both methods use this one layer: method R propagates fixed features once and its hidden layer after the
linear map; method L stacks two :class:`GraphConv` layers. Graphs are expected to list both directions of
every undirected edge. Padding edges must carry weight 0; padding nodes then only see their self loop.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
from jax.typing import ArrayLike


class GCNNorm(NamedTuple):
    """Precomputed coefficients of ``Â`` for one (possibly batched, padded) graph.

    Attributes:
      senders, receivers: ``i32[E]`` edge endpoints (message flows sender -> receiver).
      edge_coeff: ``f32[E]`` ``w_ij / sqrt(d_i d_j)``.
      self_coeff: ``f32[N]`` ``1 / d_i`` (the normalised self loop).
    """

    senders: jnp.ndarray
    receivers: jnp.ndarray
    edge_coeff: jnp.ndarray
    self_coeff: jnp.ndarray


def gcn_normalize(
    senders: ArrayLike,
    receivers: ArrayLike,
    weights: Optional[ArrayLike],
    num_nodes: int,
) -> GCNNorm:
    """Coefficients of ``D^-1/2 (W + I) D^-1/2``.

    Args:
      senders, receivers: ``i32[E]``; both directions of each undirected edge.
      weights: ``f32[E]`` non-negative edge weights (``None``: all 1). Padding edges: 0.
      num_nodes: N (static).

    Returns:
      :class:`GCNNorm` with ``edge_coeff: f32[E]`` and ``self_coeff: f32[N]``.
    """
    senders, receivers = jnp.asarray(senders), jnp.asarray(receivers)
    weights = jnp.ones(senders.shape, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    degree = jax.ops.segment_sum(weights, receivers, num_segments=num_nodes) + 1.0
    inv_sqrt = jax.lax.rsqrt(degree)
    edge_coeff = inv_sqrt[senders] * weights * inv_sqrt[receivers]
    return GCNNorm(senders, receivers, edge_coeff, 1.0 / degree)


def graph_normalize(graph: jraph.GraphsTuple) -> GCNNorm:
    """:func:`gcn_normalize` of a ``GraphsTuple`` whose ``edges`` are ``f32[E]`` weights (or ``None``)."""
    edges = graph.edges
    if edges is not None and edges.ndim == 2:
        edges = edges[:, 0]
    return gcn_normalize(graph.senders, graph.receivers, edges, graph.nodes.shape[0])


def propagate(norm: GCNNorm, x: ArrayLike) -> jnp.ndarray:
    """``Â @ x`` for ``x: f32[N, F]`` (or ``f32[N]``), by one gather and one segment sum over edges."""
    x = jnp.asarray(x)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[:, None]
    messages = x[norm.senders] * norm.edge_coeff[:, None]
    out = jax.ops.segment_sum(messages, norm.receivers, num_segments=x.shape[0])
    out = out + x * norm.self_coeff[:, None]
    return out[:, 0] if squeeze else out


class GraphConv(nn.Module):
    """One GCN layer ``Â X Θ + b`` (no activation).

    The product is ordered to move the fewest floats per edge: propagate first when the input is narrower
    than the output, else apply ``Θ`` first (``Â(XΘ) = (ÂX)Θ``).

    Attributes:
      features: output width F'.
      use_bias: add ``b`` after propagation.
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray, norm: GCNNorm) -> jnp.ndarray:
        """``x: f32[N, F]`` -> ``f32[N, F']``."""
        dense = nn.Dense(self.features, use_bias=False, kernel_init=nn.initializers.glorot_uniform())
        if x.shape[-1] < self.features:
            h = dense(propagate(norm, x))
        else:
            h = propagate(norm, dense(x))
        if self.use_bias:
            h = h + self.param("bias", nn.initializers.zeros, (self.features,))
        return h
