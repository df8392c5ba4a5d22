"""Bootstrap confidence intervals of lesion-ranking AUCs, resampling subjects (not lesions).

Lesions cluster within subjects (one badly segmented brain contributes many FP lesions), so lesions are
not independent draws: resampling them one by one gives intervals that are too narrow. Each bootstrap
replicate instead draws the *subjects* (cases) with replacement; a subject drawn ``k`` times contributes all
of its lesions with weight ``k``.

The AUC is the one of :mod:`ugcn.evaluate.accuracy_confidence`, i.e. the Mann-Whitney probability
``P(score_FP > score_TP) + 1/2 P(tie)``, here with lesion weights::

    AUC_b = sum_{i FP, j TP} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j]) / (sum_{FP} w)(sum_{TP} w)

computed for all replicates at once from per-(subject, score-group) counts: ``O(B * subjects * groups)``
multiply-adds, no Python loop over replicates. A replicate without any FP or any TP lesion has no AUC; it
is dropped and counted (``n_undefined``). Intervals are percentile intervals over the defined replicates.
The paired difference of two methods uses the same replicates for both.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional, Sequence

import numpy as np

#: Replicates per interval (default).
N_BOOTSTRAP = 2000


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval.

    Attributes:
      estimate: the statistic on the original data (NaN when undefined).
      low, high: percentile bounds of the ``level`` interval (NaN when no replicate is defined).
      level: coverage, e.g. 0.95.
      n_boot: replicates drawn; ``n_undefined``: those without FP or without TP lesions (dropped).
    """

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int
    n_undefined: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def subject_resamples(groups: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw subjects with replacement.

    Args:
      groups: ``[n]`` subject (case) of each lesion, any hashable dtype.
      n_boot: number of replicates B.
      seed: seed of the draws.

    Returns:
      ``(counts i64[B, S], subject_of_lesion i64[n])``: how often each of the S subjects is drawn in each
      replicate (every row sums to S), and each lesion's subject index.
    """
    groups = np.asarray(groups).reshape(-1)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    subjects, subject_of_lesion = np.unique(groups, return_inverse=True)
    n_subjects = len(subjects)
    rng = np.random.default_rng(seed)
    if n_subjects == 0:
        return np.zeros((n_boot, 0), np.int64), subject_of_lesion.astype(np.int64)
    counts = rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=n_boot)
    return counts.astype(np.int64), subject_of_lesion.astype(np.int64)


def weighted_aucs(scores: np.ndarray, is_fp: np.ndarray, subject: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of one ranking under each replicate's subject weights.

    Args:
      scores: ``f64[n]`` lesion uncertainties (higher = more likely FP), finite.
      is_fp: ``bool[n]``.
      subject: ``i64[n]`` subject index of each lesion (``0..S-1``).
      counts: ``f[B, S]`` subject weights of each replicate (a row of ones = the original data).

    Returns:
      ``f64[B]`` AUCs, NaN for replicates without FP or without TP weight.
    """
    scores = np.asarray(scores, np.float64).reshape(-1)
    is_fp = np.asarray(is_fp, bool).reshape(-1)
    subject = np.asarray(subject, np.int64).reshape(-1)
    counts = np.asarray(counts, np.float64)
    if not (scores.shape == is_fp.shape == subject.shape):
        raise ValueError(f"weighted_aucs: {scores.size} scores, {is_fp.size} FP flags, {subject.size} subjects")
    if not np.all(np.isfinite(scores)):
        raise ValueError("weighted_aucs: scores hold NaN or infinite values")
    n_boot, n_subjects = counts.shape
    if scores.size == 0:
        return np.full(n_boot, np.nan)
    # Score groups in ascending order; per (subject, group) FP and TP counts.
    _, group = np.unique(scores, return_inverse=True)
    n_groups = int(group.max()) + 1
    cell = subject * n_groups + group
    fp_cells = np.bincount(cell, weights=is_fp, minlength=n_subjects * n_groups).reshape(n_subjects, n_groups)
    tp_cells = np.bincount(cell, weights=~is_fp, minlength=n_subjects * n_groups).reshape(n_subjects, n_groups)
    out = np.empty(n_boot)
    chunk = max(1, int(2e7 // max(n_groups * 8, 1)))  # bound the [chunk, groups] temporaries
    for start in range(0, n_boot, chunk):
        w = counts[start : start + chunk]
        fp = w @ fp_cells  # [b, G]
        tp = w @ tp_cells
        tp_below = np.cumsum(tp, axis=1) - tp  # TP weight with strictly lower scores
        wins = np.sum(fp * (tp_below + 0.5 * tp), axis=1)
        total = fp.sum(axis=1) * tp.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + chunk] = np.where(total > 0, wins / np.where(total > 0, total, 1.0), np.nan)
    return out


def _interval(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    defined = replicates[np.isfinite(replicates)]
    alpha = (1.0 - level) / 2.0
    if defined.size:
        low, high = np.quantile(defined, [alpha, 1.0 - alpha])
    else:
        low = high = float("nan")
    return Interval(float(estimate), float(low), float(high), float(level), int(replicates.size),
                    int(replicates.size - defined.size))


def bootstrap_auc(
    scores: np.ndarray,
    is_fp: np.ndarray,
    groups: np.ndarray,
    *,
    n_boot: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """AUC of one ranking with its subject-bootstrap interval.

    Args:
      scores: ``f[n]`` lesion uncertainties; is_fp: ``bool[n]``; groups: ``[n]`` subject of each lesion.
      n_boot, level, seed: replicates, coverage, seed.
    """
    return bootstrap_aucs({"m": scores}, is_fp, groups, n_boot=n_boot, level=level, seed=seed)["m"]


def bootstrap_aucs(
    scores: Mapping[str, np.ndarray],
    is_fp: np.ndarray,
    groups: np.ndarray,
    *,
    reference: Optional[str] = None,
    n_boot: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """AUCs of several rankings of the same lesions, on the same subject replicates.

    Args:
      scores: method -> ``f[n]`` lesion uncertainties. A method whose scores are not all finite (e.g. not
        fitted) gets an all-NaN :class:`Interval`.
      is_fp: ``bool[n]``; groups: ``[n]`` subject of each lesion.
      reference: a method name; when given, ``"<method>-<reference>"`` entries hold each other method's
        paired AUC difference to it (estimate and interval).
      n_boot, level, seed: replicates, coverage, seed of the draws (one set of draws for every method).

    Returns:
      ``{method: Interval}`` (plus the differences when ``reference`` is given).
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    is_fp = np.asarray(is_fp, bool).reshape(-1)
    counts, subject = subject_resamples(groups, n_boot, seed)
    if subject.shape != is_fp.shape:
        raise ValueError(f"bootstrap_aucs: {subject.size} subject labels for {is_fp.size} lesions")
    ones = np.ones((1, counts.shape[1]))
    nan = Interval(float("nan"), float("nan"), float("nan"), float(level), int(n_boot), int(n_boot))
    out: dict[str, Interval] = {}
    replicates: dict[str, np.ndarray] = {}
    estimates: dict[str, float] = {}
    for name, s in scores.items():
        s = np.asarray(s, np.float64).reshape(-1)
        if s.shape != is_fp.shape:
            raise ValueError(f"bootstrap_aucs: {name}: {s.size} scores for {is_fp.size} lesions")
        if not (s.size and np.all(np.isfinite(s))):
            out[name] = nan
            continue
        estimates[name] = float(weighted_aucs(s, is_fp, subject, ones)[0])
        replicates[name] = weighted_aucs(s, is_fp, subject, counts)
        out[name] = _interval(estimates[name], replicates[name], level)
    if reference is not None:
        if reference not in scores:
            raise ValueError(f"bootstrap_aucs: reference {reference!r} is not among the methods {list(scores)}")
        for name in scores:
            if name == reference:
                continue
            key = f"{name}-{reference}"
            if name in replicates and reference in replicates:
                out[key] = _interval(estimates[name] - estimates[reference],
                                     replicates[name] - replicates[reference], level)
            else:
                out[key] = nan
    return out


def best_method(values: Mapping[str, float], among: Sequence[str]) -> Optional[str]:
    """The name in ``among`` with the highest finite value (``None`` if none is finite)."""
    finite = [(values[m], m) for m in among if m in values and np.isfinite(values[m])]
    return max(finite)[1] if finite else None
