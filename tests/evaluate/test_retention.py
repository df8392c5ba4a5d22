"""Lesion-scale retention curve against hand-computed cases."""
import numpy as np
import pytest

from ugcn.evaluate.retention import lesion_retention_curve


def test_hand_computed_curve():
    # Lesion 0 (most uncertain) is the only FP; 2 TP; 1 missed GT lesion.
    c = lesion_retention_curve(np.array([0.9, 0.5, 0.1]), np.array([True, False, False]), n_fn=1)
    np.testing.assert_allclose(c.retained, [0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(c.f1, [0.8, 0.8, 0.8, 4 / 6])
    # 0.8 * 2/3 + (0.8 + 4/6) / 2 * 1/3
    assert c.auc == pytest.approx(0.8 * 2 / 3 + (0.8 + 4 / 6) / 6)
    assert c.auc == pytest.approx(c.auc_best)
    # Worst: the FP referred last -> F1 = 4/6 from r = 1/3 on: 0.8/2*1/3... by hand:
    # r: 0 -> 0.8, 1/3 -> 4/6, 2/3 -> 4/6, 1 -> 4/6
    assert c.auc_worst == pytest.approx((0.8 + 4 / 6) / 6 + 4 / 6 * 2 / 3)


def test_tied_scores_form_one_segment():
    c = lesion_retention_curve(np.array([0.5, 0.5, 0.1, 0.1]), np.array([True, False, False, True]))
    # groups: {0,1} referred first (1 FP), then {2,3}. TP = 2, FN = 0.
    np.testing.assert_allclose(c.retained, [0, 0.5, 1])
    np.testing.assert_allclose(c.f1, [1.0, 4 / 5, 4 / 6])
    assert c.auc == pytest.approx(0.5 * (1 + 0.8) / 2 + 0.5 * (0.8 + 4 / 6) / 2)


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        lesion_retention_curve(np.array([np.nan]), np.array([True]))
    with pytest.raises(ValueError, match="n_fn"):
        lesion_retention_curve(np.array([1.0]), np.array([True]), n_fn=-1)
