"""Subject-bootstrap intervals of lesion AUCs against brute-force references."""
import numpy as np
import pytest

from ugcn.evaluate.bootstrap import bootstrap_auc, bootstrap_aucs, subject_resamples, weighted_aucs


def _mann_whitney(scores, is_fp, weights):
    """Weighted P(score_FP > score_TP) + 1/2 P(tie) over all pairs (dense reference)."""
    f, t = is_fp, ~is_fp
    diff = scores[f][:, None] - scores[t][None, :]
    w = weights[f][:, None] * weights[t][None, :]
    return float(((diff > 0) * w + 0.5 * (diff == 0) * w).sum() / w.sum())


def test_weighted_aucs_match_pairwise_reference_with_ties():
    rng = np.random.default_rng(0)
    n = 60
    scores = np.round(rng.random(n), 1)  # many ties
    is_fp = rng.random(n) < 0.4
    subject = rng.integers(0, 7, n)
    counts, _ = subject_resamples(np.arange(7), n_boot=5, seed=1)
    got = weighted_aucs(scores, is_fp, subject, counts)
    for b in range(5):
        w = counts[b][subject].astype(float)
        if w[is_fp].sum() and w[~is_fp].sum():
            assert got[b] == pytest.approx(_mann_whitney(scores, is_fp, w))


def test_resamples_draw_whole_subjects():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    counts, subject = subject_resamples(groups, n_boot=50, seed=0)
    assert counts.shape == (50, 3) and np.all(counts.sum(axis=1) == 3)
    assert list(subject) == [0, 0, 1, 2, 2, 2]


def test_perfect_ranking_interval_is_one_one():
    rng = np.random.default_rng(2)
    is_fp = rng.random(80) < 0.3
    scores = is_fp + rng.random(80) * 0.5
    ci = bootstrap_auc(scores, is_fp, rng.integers(0, 10, 80), n_boot=300)
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_random_ranking_interval_covers_half_and_is_wider_by_subject():
    rng = np.random.default_rng(3)
    n = 400
    groups = rng.integers(0, 20, n)
    is_fp = rng.random(n) < 0.3
    ci = bootstrap_auc(rng.random(n), is_fp, groups, n_boot=500)
    assert ci.low < 0.5 < ci.high and ci.high - ci.low < 0.3
    assert ci.n_undefined == 0


def test_subject_clustering_widens_the_interval():
    """Lesions of one subject share one score offset: resampling subjects must see that spread."""
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(10), 30)
    is_fp = rng.random(300) < 0.5
    offset = rng.normal(size=10)[groups] * np.where(is_fp, 1.0, -1.0)  # subject-level signal
    scores = offset + 0.1 * rng.random(300)
    by_subject = bootstrap_auc(scores, is_fp, groups, n_boot=400)
    by_lesion = bootstrap_auc(scores, is_fp, np.arange(300), n_boot=400)
    assert by_subject.estimate == pytest.approx(by_lesion.estimate)
    assert by_subject.high - by_subject.low > 1.5 * (by_lesion.high - by_lesion.low)


def test_paired_difference_and_undefined_methods():
    rng = np.random.default_rng(5)
    is_fp = rng.random(100) < 0.4
    groups = rng.integers(0, 12, 100)
    good = is_fp + 0.8 * rng.random(100)
    out = bootstrap_aucs({"good": good, "same": good.copy(), "nan": np.full(100, np.nan)}, is_fp, groups,
                         reference="good", n_boot=200)
    assert out["same-good"].estimate == 0.0 and out["same-good"].low == 0.0 and out["same-good"].high == 0.0
    assert np.isnan(out["nan"].estimate) and np.isnan(out["nan-good"].low)
    assert out["good"].low <= out["good"].estimate <= out["good"].high


def test_replicates_without_fp_are_dropped_and_counted():
    is_fp = np.array([True, False, False, False])
    groups = np.array([0, 1, 1, 2])  # subject 0 holds the only FP
    ci = bootstrap_auc(np.array([0.9, 0.1, 0.2, 0.3]), is_fp, groups, n_boot=200)
    assert 0 < ci.n_undefined < 200 and ci.low == ci.high == 1.0
