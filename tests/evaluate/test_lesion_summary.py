"""Statistics of a cross-validated lesion comparison: unreliable folds, headline, differences."""
import numpy as np
import pytest

from ugcn.evaluate.accuracy_confidence import accuracy_confidence_auc
from ugcn.evaluate.lesion_summary import summarize_lesion_rankings, unreliable_folds


def _lesions(seed=0, n=240, folds=3):
    rng = np.random.default_rng(seed)
    fold = np.repeat(np.arange(folds), n // folds)
    case = fold * 100 + rng.integers(0, 8, n)
    is_fp = rng.random(n) < 0.35
    voxels = rng.integers(1, 500, n).astype(float)
    return rng, fold, case, is_fp, voxels


def test_fold_without_validation_fp_is_flagged_and_left_out():
    assert unreliable_folds({0: 0, 1: 7, 2: 4}, 5) == [0, 2]
    assert unreliable_folds({0: 0, 1: 7}, 0) == []
    rng, fold, case, is_fp, voxels = _lesions()
    gcnn = np.where(is_fp, 1.0, 0.0) + 0.1 * rng.random(fold.size)
    gcnn[fold == 0] = 0.0  # collapsed classifier in the fold without validation FP: P(FP) = 0 everywhere
    base = is_fp * 0.5 + rng.random(fold.size)
    rows, summary = summarize_lesion_rankings({"gcnn": gcnn, "base": base}, is_fp, case, fold, voxels,
                                              learned=["gcnn"], unreliable=[0], reference_excludes=["gcnn"],
                                              n_boot=200)
    by = {r["method"]: r for r in rows}
    assert summary["evaluated_folds"] == [1, 2] and summary["unreliable_folds"] == [0]
    keep = fold > 0
    assert by["gcnn"]["auc_pct"] == pytest.approx(100 * accuracy_confidence_auc(gcnn[keep], is_fp[keep]))
    assert by["gcnn"]["auc_pct"] == pytest.approx(100.0)
    assert by["gcnn"]["auc_all_folds_pct"] < 95  # what silent averaging would have reported
    assert by["gcnn"]["auc_pct_per_fold"][0] == pytest.approx(50.0)  # still shown per fold
    assert summary["best_baseline"] == "base" and by["base"]["delta_pct"] == 0.0
    assert by["gcnn"]["delta_low_pct"] > 0 and by["gcnn"]["reliable"]
    assert by["gcnn"]["folds_defined"] == 2


def test_all_folds_unreliable_flags_learned_methods():
    rng, fold, case, is_fp, voxels = _lesions(1)
    rows, summary = summarize_lesion_rankings({"gcnn": rng.random(fold.size), "base": rng.random(fold.size)},
                                              is_fp, case, fold, voxels, learned=["gcnn"], unreliable=[0, 1, 2],
                                              n_boot=100)
    by = {r["method"]: r for r in rows}
    assert summary["evaluated_folds"] == [0, 1, 2]
    assert not by["gcnn"]["reliable"] and by["base"]["reliable"]
    assert by["gcnn"]["auc_low_pct"] < 50 < by["gcnn"]["auc_high_pct"]


def test_size_score_is_perfectly_tied_to_size_and_nan_methods_stay_nan():
    rng, fold, case, is_fp, voxels = _lesions(2)
    rows, _ = summarize_lesion_rankings({"size": 1 / voxels, "unfitted": np.full(fold.size, np.nan)}, is_fp, case,
                                        fold, voxels, n_boot=50)
    by = {r["method"]: r for r in rows}
    assert by["size"]["spearman"] == pytest.approx(-1.0)
    assert np.isnan(by["unfitted"]["auc_pct"]) and np.isnan(by["unfitted"]["delta_pct"])
