"""Voxel-wise uncertainty measures of Monte Carlo samples, computed from :class:`SampleStats`.

Notation: ``T`` samples ``p_t: f32[..., C]`` of class probabilities, ``E = (1/T) Σ_t p_t`` the expectation,
``H(q) = -Σ_c q_c log q_c`` the entropy. Every function is pure ``jnp`` (jit-able, vmap-able), returns a
map over the leading ``...`` axes, and is exact at ``p = 0`` and ``p = 1`` (``0 log 0 = 0``, no NaN).
Binary and multi-class alike: for ``C = 2`` the class axis holds ``[1 - p, p]``.

Logarithm bases: ``base=2`` gives bits, ``base=math.e`` nats. ``normalise=True`` divides by ``log C`` (in
the same base), so the maximum is 1 for every ``C``; for ``C = 2`` in bits this changes nothing, which is
the scale of method R's threshold ``τ = 0.8``.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from ugcn.uncertainty.stats import SampleStats


def _log_scale(num_classes: int, base: float, normalise: bool) -> float:
    """Factor turning a natural-log quantity into the requested base (and normalisation)."""
    if base <= 0 or base == 1:
        raise ValueError(f"logarithm base must be positive and not 1, got {base}")
    scale = 1.0 / math.log(base)
    if normalise:
        scale /= math.log(num_classes) / math.log(base)
    return scale


def expectation(stats: SampleStats) -> jnp.ndarray:
    """Mean class probabilities ``E = Σ_t p_t / T``: ``f32[..., C]``."""
    return stats.sum_p / stats.count


def entropy(stats: SampleStats, *, base: float = 2.0, normalise: bool = False) -> jnp.ndarray:
    """Predictive entropy ``H(E) = -Σ_c E_c log E_c``: ``f32[...]``, in ``[0, log C]`` (``[0, 1]`` normalised)."""
    mean = expectation(stats)
    h = -xlogy(mean, mean).sum(-1)
    return jnp.maximum(h * _log_scale(stats.num_classes, base, normalise), 0.0)


def expected_entropy(stats: SampleStats, *, base: float = 2.0, normalise: bool = False) -> jnp.ndarray:
    """Mean entropy of the samples ``(1/T) Σ_t H(p_t) = -Σ_c (Σ_t p_t,c log p_t,c) / T``: ``f32[...]``.

    The aleatoric part of the predictive entropy.
    """
    h = -stats.sum_plogp.sum(-1) / stats.count
    return jnp.maximum(h * _log_scale(stats.num_classes, base, normalise), 0.0)


def mutual_information(stats: SampleStats, *, base: float = 2.0, normalise: bool = False) -> jnp.ndarray:
    """Mutual information (BALD) ``H(E) - (1/T) Σ_t H(p_t)``, clipped at 0: ``f32[...]``.

    The epistemic part of the predictive entropy: 0 when all samples agree.
    """
    mi = entropy(stats, base=base, normalise=normalise) - expected_entropy(stats, base=base, normalise=normalise)
    return jnp.maximum(mi, 0.0)


def class_variance(stats: SampleStats) -> jnp.ndarray:
    """Per-class variance over samples ``E_t[p²] - E_t[p]²`` (population, 1/T), clipped at 0: ``f32[..., C]``."""
    mean = expectation(stats)
    return jnp.maximum(stats.sum_p2 / stats.count - mean * mean, 0.0)


def variance(stats: SampleStats) -> jnp.ndarray:
    """Variance over samples of the foreground probability (``C = 2``) or its mean over classes (``C > 2``).

    Returns ``f32[...]`` in ``[0, 0.25]``. For ``C = 2`` both classes have the same variance.
    """
    var = class_variance(stats)
    if stats.num_classes == 2:
        return var[..., 1]
    return var.mean(-1)


def predictive_std(stats: SampleStats) -> jnp.ndarray:
    """Standard deviation over samples, ``sqrt(variance(stats))``: ``f32[...]`` in ``[0, 0.5]``.

    The square root of :func:`variance`, so the same convention: the foreground probability for ``C = 2``,
    the mean over classes of the per-class variances for ``C > 2`` (the root of the class-averaged variance,
    not the average of per-class standard deviations). Same ranking as ``variance``, on a probability scale.

    The streaming variance ``E[p²] - E[p]²`` carries a float32 rounding error of a few ``eps · E[p²]``, which
    the square root would blow up to ~1e-4 where the samples agree; variances below ``4 eps · E[p²]`` are
    therefore taken as 0 (a deterministic model gives exactly 0, not rounding noise).
    """
    var = variance(stats)
    second = stats.sum_p2 / stats.count
    second = second[..., 1] if stats.num_classes == 2 else second.mean(-1)
    noise = 4.0 * jnp.finfo(jnp.float32).eps * second
    return jnp.sqrt(jnp.where(var > noise, var, 0.0))


def margin(stats: SampleStats) -> jnp.ndarray:
    """Margin uncertainty ``1 - (E_(1) - E_(2))`` of the two largest expected class probabilities.

    Returns ``f32[...]`` in ``[0, 1]``: 0 when one class has ``E = 1``, 1 when the top two tie. For
    ``C = 2`` it is ``1 - |E_1 - E_0|``.
    """
    top2 = jax.lax.top_k(expectation(stats), 2)[0]
    return jnp.clip(1.0 - (top2[..., 0] - top2[..., 1]), 0.0, 1.0)


def variation_ratio(samples: jnp.ndarray) -> jnp.ndarray:
    """Variation ratio ``1 - f_mode / T`` of the samples' hard labels (needs all samples).

    Args:
      samples: ``f32[T, ..., C]`` class probabilities.

    Returns:
      ``f32[...]`` in ``[0, 1 - 1/C]``: ``f_mode`` is how many of the ``T`` hard labels ``argmax_c p_t``
      equal the most frequent one. Ties within a sample (``p_t`` with two equal largest classes) go to the
      lowest class index (``argmax``); ties between modal labels do not matter, only their count does.
    """
    samples = jnp.asarray(samples)
    labels = jnp.argmax(samples, axis=-1)  # [T, ...]
    counts = jax.nn.one_hot(labels, samples.shape[-1], dtype=jnp.float32).sum(0)  # [..., C]
    n = samples.shape[0]
    return (n - counts.max(-1)) / n  # not 1 - max/n: XLA's x * (1/n) would leave -4e-8 for unanimous voxels


def pcs(stats: SampleStats) -> jnp.ndarray:
    """Predicted confidence score ``max_c E_c``: ``f32[...]`` in ``[1/C, 1]``. A CONFIDENCE (high = certain)."""
    return expectation(stats).max(-1)


def one_minus_pcs(stats: SampleStats) -> jnp.ndarray:
    """``1 - max_c E_c``: PCS as an uncertainty, ``f32[...]`` in ``[0, 1 - 1/C]``."""
    return 1.0 - pcs(stats)
