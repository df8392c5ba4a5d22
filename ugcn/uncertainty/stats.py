"""Running sums over Monte Carlo samples, from which every voxel-wise uncertainty measure follows.

With ``T`` stochastic passes ``p_t: f32[..., C]`` (class axis last), the expectation, entropy, variance,
PCS, expected entropy and mutual information all depend on the samples only through
``Σ_t p_t``, ``Σ_t p_t²`` and ``Σ_t p_t log p_t`` (``0 log 0 = 0``). Keeping these three sums lets MC
sampling reduce chunk after chunk, so memory does not grow with ``T``.

:class:`SampleStats` is a ``NamedTuple`` and hence a JAX pytree: it passes through ``jit``, ``scan`` and
``vmap`` unchanged.
"""
from __future__ import annotations

import functools
import operator
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy


class SampleStats(NamedTuple):
    """Running sums over samples ``t`` of class probabilities ``p_t: f32[..., C]``.

    Attributes:
      count: ``f32[]`` number of samples summed (``T``).
      sum_p: ``f32[..., C]`` ``Σ_t p_t``.
      sum_p2: ``f32[..., C]`` ``Σ_t p_t²``.
      sum_plogp: ``f32[..., C]`` ``Σ_t p_t ln p_t`` (natural log, ``0 ln 0 = 0``; always ``<= 0``).
    """

    count: jnp.ndarray  # type: ignore[assignment]  # a field named like tuple.count: the number of samples T
    sum_p: jnp.ndarray
    sum_p2: jnp.ndarray
    sum_plogp: jnp.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(..., C)`` of one sample."""
        return tuple(self.sum_p.shape)

    @property
    def num_classes(self) -> int:
        """``C``, the size of the class axis."""
        return int(self.sum_p.shape[-1])


def empty_stats(shape: Sequence[int], dtype=jnp.float32) -> SampleStats:
    """Statistics of zero samples.

    Args:
      shape: ``(..., C)``, the shape of one sample (class axis last, ``C >= 2``).

    Returns:
      :class:`SampleStats` with ``count = 0`` and all sums ``zeros(shape)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or shape[-1] < 2:
        raise ValueError(f"sample shape {shape} must end with a class axis of size C >= 2")
    zeros = jnp.zeros(shape, dtype)
    return SampleStats(jnp.zeros((), dtype), zeros, zeros, zeros)


# Terms added per elementwise fusion by :func:`sum_leading`.
SUM_GROUP = 16


def sum_leading(a: jnp.ndarray) -> jnp.ndarray:
    """``a.sum(0)`` for ``a: f32[t, ...]`` as elementwise adds of the ``t`` slices (groups of :data:`SUM_GROUP`).

    XLA:CPU (jaxlib 0.10.2) runs a reduction over a small leading axis as a YNNPACK reduce that measured 20-45x
    slower than the same sum written as adds: ``[4, 64, 64, 24, 2]`` 36-64 ms against 1.1-1.4 ms, and
    ``[4, 128, 128, 64, 2]`` (a chunk of issue 15's 2D case) 848 ms against 23 ms (2-core CPU, load 3-8), which
    cost ``mc_sample`` about a third of its time on small volumes.
    """
    parts = [a[i] for i in range(a.shape[0])]
    while len(parts) > 1:
        groups = [parts[i : i + SUM_GROUP] for i in range(0, len(parts), SUM_GROUP)]
        parts = [functools.reduce(operator.add, g) for g in groups]
    return parts[0]


@jax.jit
def _chunk_sums(probs: jnp.ndarray, weights: jnp.ndarray | None) -> SampleStats:
    probs = probs.astype(jnp.float32)
    if weights is None:
        count = jnp.asarray(probs.shape[0], jnp.float32)
        return SampleStats(count, sum_leading(probs), sum_leading(probs * probs), sum_leading(xlogy(probs, probs)))
    w = weights.astype(jnp.float32).reshape((-1,) + (1,) * (probs.ndim - 1))
    return SampleStats(
        weights.astype(jnp.float32).sum(),
        sum_leading(w * probs),
        sum_leading(w * probs * probs),
        sum_leading(w * xlogy(probs, probs)),
    )


def accumulate(stats: SampleStats, probs_chunk: jnp.ndarray, weights: jnp.ndarray | None = None) -> SampleStats:
    """Add a chunk of samples to running statistics.

    Args:
      stats: statistics so far, sums of shape ``(..., C)``.
      probs_chunk: ``f32[t, ..., C]`` ``t`` more samples.
      weights: optional ``f32[t]`` of 0/1: samples with weight 0 are left out (padding passes of the last
        chunk when ``T`` is not a multiple of the chunk size).

    Returns:
      The updated :class:`SampleStats`.
    """
    if probs_chunk.shape[1:] != stats.sum_p.shape:
        raise ValueError(
            f"probs_chunk shape {probs_chunk.shape} does not match the statistics' sample shape "
            f"{stats.sum_p.shape}: expected (t,) + {stats.sum_p.shape}"
        )
    return merge(stats, _chunk_sums(probs_chunk, weights))


def stats_from_samples(samples: jnp.ndarray) -> SampleStats:
    """Statistics of all samples at once.

    Args:
      samples: ``f32[T, ..., C]`` class probabilities, ``T >= 1``, class axis last with ``C >= 2``.

    Returns:
      :class:`SampleStats` with ``count = T``.
    """
    samples = jnp.asarray(samples)
    if samples.ndim < 2 or samples.shape[-1] < 2:
        raise ValueError(
            f"samples of shape {samples.shape} must be [T, ..., C] with a class axis C >= 2 last "
            "(a binary foreground map p becomes stack([1 - p, p], -1))"
        )
    if samples.shape[0] < 1:
        raise ValueError("samples hold no sample (T = 0)")
    return _chunk_sums(samples, None)


def merge(a: SampleStats, b: SampleStats) -> SampleStats:
    """Statistics of the union of two disjoint sets of samples (sums add)."""
    if a.sum_p.shape != b.sum_p.shape:
        raise ValueError(f"cannot merge statistics of sample shapes {a.sum_p.shape} and {b.sum_p.shape}")
    return _add(a, b)


@jax.jit
def _add(a: SampleStats, b: SampleStats) -> SampleStats:
    return SampleStats(a.count + b.count, a.sum_p + b.sum_p, a.sum_p2 + b.sum_p2, a.sum_plogp + b.sum_plogp)
