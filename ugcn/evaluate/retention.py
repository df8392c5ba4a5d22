"""Lesion-scale retention curve and its area (structural-uncertainty literature, e.g. Molchanova et al. 2023).

The most uncertain lesions are referred (to a human reader, who corrects them) and the rest retained. A
referred false-positive lesion is removed; a referred true-positive lesion stays (the reader confirms it).
At each retention fraction ``r`` (share of the predicted lesions kept as predicted) the lesion-scale F1 is::

    F1(r) = 2 TP / (2 TP + FP_retained(r) + FN)

with TP the true-positive predicted lesions, FP_retained the false positives still retained and FN the
ground-truth lesions that no prediction touches (optional; 0 by default). The curve runs from ``r = 0``
(everything referred: every FP removed) to ``r = 1`` (nothing referred); its area over ``r`` in [0, 1]
(trapezoid) is higher when FP lesions are referred first. A ranking's area lies between the one of the
worst ordering (FP referred last) and the one of the best (FP referred first), both returned for context.

Ties: lesions with equal scores are referred together, as one group (one straight segment), as in
:mod:`ugcn.evaluate.accuracy_confidence`. When ``2 TP + FP + FN = 0`` (no lesion at all) F1 is 1.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ugcn.evaluate.accuracy_confidence import check_ranking, removed_by_group


@dataclasses.dataclass(frozen=True)
class RetentionCurve:
    """A lesion-scale retention curve.

    Attributes:
      retained: ``f64[K]`` retention fractions in increasing order, from 0 to 1.
      f1: ``f64[K]`` lesion-scale F1 at each retention fraction.
      auc: area under ``f1(retained)``.
      auc_best, auc_worst: the areas of the ideal (every FP referred first) and the worst ordering.
      n_fp, n_tp, n_fn: counts.
    """

    retained: np.ndarray
    f1: np.ndarray
    auc: float
    auc_best: float
    auc_worst: float
    n_fp: int
    n_tp: int
    n_fn: int


def _curve(scores: np.ndarray, is_fp: np.ndarray, n_fn: int) -> tuple[np.ndarray, np.ndarray, float]:
    n = scores.size
    n_tp = int((~is_fp).sum())
    fp_referred, referred = removed_by_group(scores, is_fp)  # one group of equal scores at a time
    fp_retained = is_fp.sum() - fp_referred
    denom = 2.0 * n_tp + fp_retained + n_fn
    f1 = np.where(denom > 0, 2.0 * n_tp / np.where(denom > 0, denom, 1.0), 1.0)
    retained = (n - referred) / max(n, 1)
    retained, f1 = retained[::-1], f1[::-1]  # increasing retention
    auc = float(np.sum((retained[1:] - retained[:-1]) * (f1[1:] + f1[:-1]) / 2.0)) if n else 1.0
    return retained, f1, auc


def lesion_retention_curve(scores: np.ndarray, is_fp: np.ndarray, n_fn: int = 0) -> RetentionCurve:
    """The retention curve of one ranking.

    Args:
      scores: ``f[n]`` lesion uncertainties (higher = referred first), finite.
      is_fp: ``bool[n]`` false-positive flags of the predicted lesions.
      n_fn: ground-truth lesions missed by the prediction (false negatives), >= 0.

    Returns:
      :class:`RetentionCurve` (one point at ``r = 0`` and one per group of tied scores).
    """
    scores, is_fp = check_ranking(scores, is_fp, "lesion_retention_curve")
    if int(n_fn) < 0:
        raise ValueError(f"lesion_retention_curve: n_fn must be >= 0, got {n_fn}")
    retained, f1, auc = _curve(scores, is_fp, int(n_fn))
    order = np.arange(scores.size, dtype=np.float64)  # distinct ranks: no ties in the reference orderings
    _, _, best = _curve(np.where(is_fp, scores.size + order, order), is_fp, int(n_fn))
    _, _, worst = _curve(np.where(is_fp, order, scores.size + order), is_fp, int(n_fn))
    return RetentionCurve(retained, f1, auc, best, worst, int(is_fp.sum()), int((~is_fp).sum()), int(n_fn))
