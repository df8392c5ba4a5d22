"""Accuracy-confidence curves of a lesion ranking, and rank correlation (method L, step 6).

Remove the tau % most uncertain lesions (tau from 0 to 100) and count the remaining true- and
false-positive lesions, each divided by its count at tau = 0. The curve is the set of points
(FP remaining, TP remaining); its area (AUC, y = TP integrated over x = FP) scores the ranking:
1 when every FP is more uncertain than every TP, 0 for the inverted ranking, ~0.5 for a random one.

Ties: lesions with equal scores are removed together, as one group, and the curve is a straight line
across the group. The curve, and so the AUC, therefore do not depend on the order of tied lesions, and
the AUC equals the Mann-Whitney probability P(score_FP > score_TP) + 1/2 P(score_FP = score_TP).

Without any FP or without any TP lesion the normalisation is undefined: the AUC is NaN (and so are the
counts that cannot be normalised); callers report it as "undefined" rather than guessing.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats


@dataclasses.dataclass(frozen=True)
class AccuracyConfidence:
    """An accuracy-confidence curve.

    Attributes:
      tau: ``f64[K]`` percentage of lesions removed at each point (0 ... 100).
      fp: ``f64[K]`` remaining FP lesions / FP lesions at tau = 0 (NaN when there is no FP).
      tp: ``f64[K]`` remaining TP lesions / TP lesions at tau = 0 (NaN when there is no TP).
      auc: area under ``tp(fp)``, in [0, 1]; NaN when there is no FP or no TP lesion.
      n_fp, n_tp: lesion counts at tau = 0.
    """

    tau: np.ndarray
    fp: np.ndarray
    tp: np.ndarray
    auc: float
    n_fp: int
    n_tp: int


def check_ranking(scores, is_fp, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scores f64[n], is_fp bool[n])`` flattened; ``ValueError`` (naming ``where``) for lengths that differ or
    scores that are not finite."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_fp = np.asarray(is_fp).astype(bool).reshape(-1)
    if scores.shape != is_fp.shape:
        raise ValueError(f"{where}: {scores.size} scores but {is_fp.size} FP flags")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{where}: scores hold NaN or infinite values")
    return scores, is_fp


def removed_by_group(scores: np.ndarray, is_fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FP lesions and all lesions removed, cumulated over the groups of equal scores taken most uncertain first:
    ``(f64[K + 1], f64[K + 1])`` for ``K`` distinct scores, from 0 (nothing removed) to the totals."""
    unique, inverse = np.unique(-scores, return_inverse=True)
    fp = np.bincount(inverse, weights=is_fp, minlength=unique.size)
    every = np.bincount(inverse, minlength=unique.size)
    return np.concatenate([[0.0], np.cumsum(fp)]), np.concatenate([[0.0], np.cumsum(every)])


def accuracy_confidence_curve(scores: np.ndarray, is_fp: np.ndarray) -> AccuracyConfidence:
    """The curve of one ranking.

    Args:
      scores: ``f[n]`` lesion uncertainties (higher = more uncertain, removed first).
      is_fp: ``bool[n]`` true for false-positive lesions.

    Returns:
      :class:`AccuracyConfidence` with one point at tau = 0 and one after each group of tied scores.
    """
    scores, is_fp = check_ranking(scores, is_fp, "accuracy_confidence_curve")
    n = scores.size
    n_fp = int(is_fp.sum())
    n_tp = n - n_fp
    fp_removed, removed = removed_by_group(scores, is_fp)
    tp_removed = removed - fp_removed
    tau = 100.0 * (fp_removed + tp_removed) / max(n, 1)
    fp = (n_fp - fp_removed) / n_fp if n_fp else np.full(tau.shape, np.nan)
    tp = (n_tp - tp_removed) / n_tp if n_tp else np.full(tau.shape, np.nan)
    auc = float("nan")
    if n_fp and n_tp:
        auc = float(np.sum((fp[:-1] - fp[1:]) * (tp[:-1] + tp[1:]) / 2.0))
    return AccuracyConfidence(tau, fp, tp, auc, n_fp, n_tp)


def accuracy_confidence_auc(scores: np.ndarray, is_fp: np.ndarray) -> float:
    """AUC of :func:`accuracy_confidence_curve` (NaN without FP or without TP lesions)."""
    return accuracy_confidence_curve(scores, is_fp).auc


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``); NaN with < 2 values or a constant input."""
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"spearman: lengths differ ({a.size} vs {b.size})")
    if a.size < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)
