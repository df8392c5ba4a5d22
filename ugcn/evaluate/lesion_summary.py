"""The statistics of a cross-validated lesion-uncertainty comparison, method-agnostic.

Input: every test lesion of every fold with each method's score (higher = more likely FP), its FP flag,
its subject (case), fold and size, which methods are *learned* (fitted on validation lesions) and which
folds held too few validation FP lesions to fit them. Output: one row per method with

* ``auc_pct``: the pooled AUC (every evaluated test lesion ranked together; the headline) and its
  95 % subject-bootstrap interval ``auc_low_pct``/``auc_high_pct`` (:mod:`ugcn.evaluate.bootstrap`);
* ``auc_mean_pct``: the mean of the per-fold AUCs beside it (``folds_defined`` folds), and the per-fold AUCs;
* ``delta_pct`` with ``delta_low_pct``/``delta_high_pct``: the paired difference to the best baseline (the
  method with the highest pooled AUC among those not in ``reference_excludes``, i.e. not under test) on the
  same subject replicates;
* ``spearman``: rank correlation of the score with the lesion size (pooled);
* ``retention_auc``: area of the lesion-scale retention curve (:mod:`ugcn.evaluate.retention`), pooled;
* ``auc_all_folds_pct``: the pooled AUC over the lesions of every fold, unreliable ones included.

Unreliable folds: a fold whose validation set held fewer than the minimum of FP lesions cannot teach a learned
method what an FP looks like (it then scores every lesion as TP, and its AUC is noise). The evaluated
lesions are those of the reliable folds, for *every* method, so all rows compare the same lesions; when no
fold is reliable every fold is evaluated and the learned methods are flagged ``reliable = False``.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from ugcn.evaluate.accuracy_confidence import accuracy_confidence_curve, spearman
from ugcn.evaluate.bootstrap import N_BOOTSTRAP, best_method, bootstrap_aucs
from ugcn.evaluate.retention import lesion_retention_curve


def _finite(s: np.ndarray) -> bool:
    return bool(s.size) and bool(np.all(np.isfinite(s)))


def _auc(s: np.ndarray, is_fp: np.ndarray) -> float:
    return accuracy_confidence_curve(s, is_fp).auc if _finite(s) else float("nan")


def unreliable_folds(val_fp: Mapping[int, int], min_val_fp: int) -> list[int]:
    """Folds whose validation set holds fewer than ``min_val_fp`` FP lesions (``val_fp``: fold -> count)."""
    if min_val_fp < 0:
        raise ValueError(f"min_val_fp must be >= 0, got {min_val_fp}")
    return sorted(int(f) for f, n in val_fp.items() if int(n) < int(min_val_fp))


def summarize_lesion_rankings(
    scores: Mapping[str, np.ndarray],
    is_fp: np.ndarray,
    case: np.ndarray,
    fold: np.ndarray,
    voxels: np.ndarray,
    *,
    learned: Sequence[str] = (),
    unreliable: Sequence[int] = (),
    missed: Optional[Mapping[int, int]] = None,
    reference_excludes: Sequence[str] = (),
    n_boot: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[list[dict], dict]:
    """One row per method (see the module docstring) and a summary dict.

    Args:
      scores: method -> ``f64[n]`` (NaN where a method was not fitted).
      is_fp: ``bool[n]``; case: ``[n]`` subject of each lesion; fold: ``i64[n]``; voxels: ``[n]`` sizes.
      learned: methods fitted on validation lesions (flagged in unreliable folds).
      unreliable: folds with too few validation FP lesions (:func:`unreliable_folds`).
      missed: fold -> ground-truth lesions no prediction touched (for the retention curve's FN; 0 if None).
      reference_excludes: methods that may not serve as "best baseline" (the methods under test).
      n_boot, level, seed: bootstrap settings.

    Returns:
      ``(rows, summary)``; ``summary`` holds ``best_baseline``, ``evaluated_folds``, ``unreliable_folds``,
      ``lesions``, ``fp``, ``tp``, ``subjects`` of the evaluated lesions.
    """
    is_fp = np.asarray(is_fp, bool).reshape(-1)
    case = np.asarray(case).reshape(-1)
    fold = np.asarray(fold).reshape(-1).astype(np.int64)
    voxels = np.asarray(voxels, np.float64).reshape(-1)
    scores = {m: np.asarray(s, np.float64).reshape(-1) for m, s in scores.items()}
    for m, s in scores.items():
        if s.shape != is_fp.shape:
            raise ValueError(f"summarize_lesion_rankings: {m}: {s.size} scores for {is_fp.size} lesions")
    if not (case.shape == fold.shape == voxels.shape == is_fp.shape):
        raise ValueError("summarize_lesion_rankings: is_fp, case, fold and voxels must have one entry per lesion")
    folds = sorted(set(fold.tolist()))
    bad = sorted(set(int(f) for f in unreliable))
    good = [f for f in folds if f not in bad]
    evaluated = good if good else folds
    keep = np.isin(fold, evaluated)
    missed = missed or {}
    n_fn = int(sum(int(missed.get(f, 0)) for f in evaluated))

    sub_scores = {m: s[keep] for m, s in scores.items()}
    pooled = {m: _auc(s, is_fp[keep]) for m, s in sub_scores.items()}
    candidates = [m for m in scores if m not in set(reference_excludes)]
    best = best_method(pooled, candidates)
    intervals = bootstrap_aucs(sub_scores, is_fp[keep], case[keep], reference=best, n_boot=n_boot, level=level,
                               seed=seed)
    rows = []
    for m, s in scores.items():
        per_fold = {}
        for f in folds:
            at = fold == f
            per_fold[f] = _auc(s[at], is_fp[at])
        mean_folds = [per_fold[f] for f in evaluated if np.isfinite(per_fold[f])]
        ci = intervals[m]
        diff = intervals.get(f"{m}-{best}") if best is not None and m != best else None
        retention = (lesion_retention_curve(s[keep], is_fp[keep], n_fn).auc if _finite(s[keep]) else float("nan"))
        reliable = not (m in learned and not good and bad)
        rows.append({
            "method": m,
            "auc_pct": 100 * pooled[m],
            "auc_low_pct": 100 * ci.low,
            "auc_high_pct": 100 * ci.high,
            "auc_mean_pct": 100 * float(np.mean(mean_folds)) if mean_folds else float("nan"),
            "folds_defined": len(mean_folds),
            "delta_pct": (0.0 if m == best else 100 * diff.estimate if diff else float("nan")),
            "delta_low_pct": (0.0 if m == best else 100 * diff.low if diff else float("nan")),
            "delta_high_pct": (0.0 if m == best else 100 * diff.high if diff else float("nan")),
            "spearman": spearman(s[keep], voxels[keep]) if _finite(s[keep]) else float("nan"),
            "retention_auc": retention,
            "auc_all_folds_pct": 100 * _auc(s, is_fp),
            "learned": m in learned,
            "reliable": reliable,
            "auc_pct_per_fold": [100 * per_fold[f] for f in folds],
        })
    summary = {
        "best_baseline": best,
        "evaluated_folds": evaluated,
        "unreliable_folds": bad,
        "lesions": int(keep.sum()),
        "fp": int(is_fp[keep].sum()),
        "tp": int((~is_fp[keep]).sum()),
        "subjects": int(np.unique(case[keep]).size),
        "missed": n_fn,
        "bootstrap": {"replicates": int(n_boot), "level": float(level), "resampled": "subjects"},
    }
    return rows, summary
