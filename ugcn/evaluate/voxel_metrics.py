"""Voxel-level error detection and calibration of uncertainty maps: exact AUROC and average precision,
reliability bins and the expected calibration error (ECE), for ``K`` maps at once in one compiled call.

AUROC = ``P(u_err > u_ok) + ½ P(u_err = u_ok)`` (ties averaged, as ``sklearn.metrics.roc_auc_score``); AP
steps once per distinct value (``sklearn.metrics.average_precision_score``); ECE over equal-width bins
``(b/B, (b+1)/B]`` of the confidence, weighted by bin counts.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.buckets import bucket_size

ECE_BINS = 15


def _tie_groups(scores: jnp.ndarray, positive: jnp.ndarray, negative: jnp.ndarray):
    """Positive and negative counts ``i32[V]`` per group of equal scores, groups in descending score order."""
    order = jnp.argsort(-scores, stable=True)
    s = scores[order]
    new = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    group = jnp.cumsum(new.astype(jnp.int32)) - 1
    n = scores.shape[0]
    pos = jax.ops.segment_sum(positive[order], group, num_segments=n)
    neg = jax.ops.segment_sum(negative[order], group, num_segments=n)
    return pos, neg


def auroc_auprc(scores: jnp.ndarray, positive: jnp.ndarray, weights: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Exact AUROC and average precision of ``scores`` for the ``positive`` voxels (jit/vmap-able).

    Args:
      scores: ``f32[V]`` (higher = more likely positive), finite.
      positive: ``bool[V]`` the positives (here: voxels where the prediction is wrong).
      weights: ``bool[V]`` voxels that count (False: padding or outside the region).

    Returns:
      ``(auroc f32[], ap f32[])``. AUROC = ``P(s_pos > s_neg) + ½ P(s_pos = s_neg)`` (ties averaged, as
      ``sklearn.metrics.roc_auc_score``); AP = ``Σ_k (R_k - R_{k-1}) P_k`` over the distinct score values in
      descending order (``sklearn.metrics.average_precision_score``). NaN without positives (both) or
      without negatives (AUROC).
    """
    weights = weights.astype(bool)
    pos_w = (positive.astype(bool) & weights).astype(jnp.int32)
    neg_w = (~positive.astype(bool) & weights).astype(jnp.int32)
    pos, neg = _tie_groups(scores, pos_w, neg_w)
    n_pos, n_neg = pos.sum(), neg.sum()
    cum_pos, cum_neg = jnp.cumsum(pos), jnp.cumsum(neg)
    above = (cum_pos - pos).astype(jnp.float32)  # positives with a strictly higher score
    fp, fn = n_pos.astype(jnp.float32), n_neg.astype(jnp.float32)
    auroc = jnp.sum(neg.astype(jnp.float32) * (above + 0.5 * pos.astype(jnp.float32))) / (fp * fn)
    seen = (cum_pos + cum_neg).astype(jnp.float32)
    precision = jnp.where(seen > 0, cum_pos.astype(jnp.float32) / jnp.maximum(seen, 1.0), 0.0)
    ap = jnp.sum(pos.astype(jnp.float32) * precision) / fp
    auroc = jnp.where((n_pos > 0) & (n_neg > 0), auroc, jnp.nan)
    ap = jnp.where(n_pos > 0, ap, jnp.nan)
    return auroc, ap


def reliability(confidence: jnp.ndarray, correct: jnp.ndarray, weights: jnp.ndarray, n_bins: int = ECE_BINS):
    """Reliability bins and expected calibration error (jit/vmap-able; ``n_bins`` static).

    Bin ``b`` holds confidences in ``(b/B, (b+1)/B]`` (0 goes to bin 0).

    Args:
      confidence: ``f32[V]`` in ``[0, 1]``.
      correct: ``bool[V]``.
      weights: ``bool[V]`` voxels that count.

    Returns:
      ``(ece f32[], count f32[B], mean_confidence f32[B], accuracy f32[B])``; empty bins hold NaN means.
      ECE = ``Σ_b n_b/n |acc_b - conf_b|`` (NaN when no voxel counts).
    """
    w = weights.astype(jnp.float32)
    conf = jnp.clip(confidence.astype(jnp.float32), 0.0, 1.0)
    index = jnp.clip(jnp.ceil(conf * n_bins).astype(jnp.int32) - 1, 0, n_bins - 1)
    count = jax.ops.segment_sum(w, index, num_segments=n_bins)
    conf_sum = jax.ops.segment_sum(w * conf, index, num_segments=n_bins)
    acc_sum = jax.ops.segment_sum(w * correct.astype(jnp.float32), index, num_segments=n_bins)
    total = count.sum()
    ece = jnp.where(total > 0, jnp.sum(jnp.abs(acc_sum - conf_sum)) / jnp.maximum(total, 1.0), jnp.nan)
    safe = jnp.maximum(count, 1.0)
    mean_conf = jnp.where(count > 0, conf_sum / safe, jnp.nan)
    accuracy = jnp.where(count > 0, acc_sum / safe, jnp.nan)
    return ece, count, mean_conf, accuracy


class VoxelMeasures(NamedTuple):
    """Result of :func:`voxel_measures` (numpy).

    Attributes:
      auroc, auprc: ``f32[K]`` error detection of each map.
      ece_confidence: ``f32[K]`` ECE of each map's implied confidence ``1 - ũ``.
      ece_expectation: ``f32[]`` ECE of ``max_c E_c``.
      bins_count, bins_confidence, bins_accuracy: ``f32[K + 1, B]`` reliability bins; row 0 is the
        expectation, row ``k + 1`` map ``k``.
      n_voxels, n_errors: voxels counted and wrong ones among them.
    """

    auroc: np.ndarray
    auprc: np.ndarray
    ece_confidence: np.ndarray
    ece_expectation: float
    bins_count: np.ndarray
    bins_confidence: np.ndarray
    bins_accuracy: np.ndarray
    n_voxels: int
    n_errors: int


@functools.partial(jax.jit, static_argnames=("n_bins",))
def _voxel_measures(maps, errors, weights, confidence, lo, hi, n_bins: int):
    auroc, ap = jax.vmap(auroc_auprc, in_axes=(0, None, None))(maps, errors, weights)
    # Implied confidence 1 - ũ: rescale by the declared range, or the observed one (NaN bounds).
    big = jnp.finfo(jnp.float32).max
    seen_lo = jnp.min(jnp.where(weights[None], maps, big), axis=1)
    seen_hi = jnp.max(jnp.where(weights[None], maps, -big), axis=1)
    lo = jnp.where(jnp.isnan(lo), seen_lo, lo)
    hi = jnp.where(jnp.isnan(hi), seen_hi, hi)
    scaled = (maps - lo[:, None]) / jnp.maximum(hi - lo, 1e-12)[:, None]
    implied = jnp.concatenate([confidence[None], 1.0 - jnp.clip(scaled, 0.0, 1.0)], axis=0)
    rel = jax.vmap(functools.partial(reliability, n_bins=n_bins), in_axes=(0, None, None))
    ece, count, mean_conf, acc = rel(implied, ~errors, weights)
    return auroc, ap, ece, count, mean_conf, acc


def voxel_measures(
    maps: np.ndarray,
    errors: np.ndarray,
    confidence: np.ndarray,
    *,
    weights: Optional[np.ndarray] = None,
    value_ranges: Optional[Sequence[Optional[tuple[float, float]]]] = None,
    n_bins: int = ECE_BINS,
) -> VoxelMeasures:
    """Error detection and calibration of ``K`` uncertainty maps at once (one compiled call).

    The voxel axis is padded to a size bucket (weights 0 on the padding), so data sets of similar size
    share one compiled program.

    Args:
      maps: ``f32[K, V]`` uncertainties (higher = more uncertain), finite.
      errors: ``bool[V]`` voxels where the prediction is wrong.
      confidence: ``f32[V]`` the expectation's ``max_c E_c``.
      weights: ``bool[V]`` voxels that count (default all).
      value_ranges: per map ``(lo, hi)`` of the oriented uncertainty, or ``None`` to use its observed range.
      n_bins: ECE bins.

    Returns:
      :class:`VoxelMeasures`.
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 2:
        raise ValueError(f"maps must be [K, V], got shape {maps.shape}")
    k, v = maps.shape
    errors = np.asarray(errors, bool).reshape(-1)
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    weights = np.ones(v, bool) if weights is None else np.asarray(weights, bool).reshape(-1)
    if errors.shape != (v,) or confidence.shape != (v,) or weights.shape != (v,):
        raise ValueError(f"errors, confidence and weights must have {v} voxels like the maps")
    if not np.all(np.isfinite(maps)):
        raise ValueError("uncertainty maps hold NaN or infinite values")
    ranges = list(value_ranges) if value_ranges is not None else [None] * k
    if len(ranges) != k:
        raise ValueError(f"value_ranges: {len(ranges)} entries for {k} maps")
    lo = np.array([np.nan if r is None else r[0] for r in ranges], np.float32)
    hi = np.array([np.nan if r is None else r[1] for r in ranges], np.float32)
    size = bucket_size(max(v, 1), 1024)
    pad = size - v

    def padded(a, value):
        return np.concatenate([a, np.full((pad,) + a.shape[1:], value, a.dtype)]) if pad else a

    out = _voxel_measures(
        jnp.asarray(np.pad(maps, ((0, 0), (0, pad)))), jnp.asarray(padded(errors, False)),
        jnp.asarray(padded(weights, False)), jnp.asarray(padded(confidence, 0.0)), jnp.asarray(lo),
        jnp.asarray(hi), n_bins=int(n_bins),
    )
    auroc, ap, ece, count, mean_conf, acc = (np.asarray(x) for x in out)
    return VoxelMeasures(auroc, ap, ece[1:], float(ece[0]), count, mean_conf, acc, int(weights.sum()),
                         int((errors & weights).sum()))
