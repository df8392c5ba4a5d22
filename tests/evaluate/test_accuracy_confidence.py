"""Accuracy-confidence curves, their AUC and Spearman's rho (ugcn.evaluate.accuracy_confidence) against independent
references."""
import math

import numpy as np
import pytest
from scipy import stats

from ugcn.evaluate.accuracy_confidence import accuracy_confidence_auc, accuracy_confidence_curve, spearman


def _mann_whitney(scores, is_fp):
    """P(score_FP > score_TP) + 1/2 P(tie), by brute force over all pairs."""
    f, t = scores[is_fp], scores[~is_fp]
    diff = f[:, None] - t[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_perfect_inverted_and_random_rankings():
    is_fp = np.array([1, 1, 0, 0, 0, 1, 0], bool)
    perfect = is_fp.astype(float) + np.linspace(0, 0.5, 7)
    assert accuracy_confidence_auc(perfect, is_fp) == pytest.approx(1.0)
    assert accuracy_confidence_auc(-perfect, is_fp) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    many = rng.random(20000) < 0.4
    assert accuracy_confidence_auc(rng.random(20000), many) == pytest.approx(0.5, abs=0.02)


def test_perfect_curve_shape():
    c = accuracy_confidence_curve(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0], bool))
    np.testing.assert_allclose(c.fp, [1, 0.5, 0, 0, 0])
    np.testing.assert_allclose(c.tp, [1, 1, 1, 0.5, 0])
    np.testing.assert_allclose(c.tau, [0, 25, 50, 75, 100])
    assert (c.n_fp, c.n_tp) == (2, 2)


def test_auc_equals_mann_whitney_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    is_fp = rng.random(300) < 0.3 + 0.1 * scores
    assert accuracy_confidence_auc(scores, is_fp) == pytest.approx(_mann_whitney(scores, is_fp))
    # Independent of the order of tied lesions.
    perm = rng.permutation(300)
    assert accuracy_confidence_auc(scores[perm], is_fp[perm]) == pytest.approx(_mann_whitney(scores, is_fp))


def test_undefined_auc_without_fp_or_tp():
    c = accuracy_confidence_curve(np.array([0.3, 0.1]), np.array([False, False]))
    assert math.isnan(c.auc) and np.all(np.isnan(c.fp)) and c.tp[0] == 1
    assert math.isnan(accuracy_confidence_auc(np.zeros(0), np.zeros(0, bool)))
    with pytest.raises(ValueError, match="NaN"):
        accuracy_confidence_auc(np.array([np.nan, 1.0]), np.array([True, False]))


def test_spearman_matches_scipy_and_handles_degenerate_input():
    rng = np.random.default_rng(2)
    a, b = rng.random(50), rng.random(50)
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert spearman(1 / np.arange(1, 10), np.arange(1, 10)) == pytest.approx(-1.0)
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman(np.ones(5), np.arange(5)))
