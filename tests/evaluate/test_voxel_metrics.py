"""Voxel error detection and calibration (ugcn.evaluate.voxel_metrics): exact AUROC/AP against scikit-learn, ECE
against a loop over bins."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ugcn.evaluate.voxel_metrics import voxel_measures


def _ece_numpy(conf, correct, bins=15):
    """Expected calibration error, bins (b/B, (b+1)/B], written out with a Python loop over bins."""
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / conf.size * abs(correct[m].mean() - conf[m].mean())
    return total


def test_voxel_measures_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    v = 3000
    errors = rng.random(v) < 0.15
    maps = np.stack([
        np.round(rng.random(v) * 8) / 8 + 0.25 * errors,  # informative, many ties
        rng.random(v),                                     # noise, no ties
        np.round(rng.random(v) * 2),                       # three values only
    ]).astype(np.float32)
    conf = rng.uniform(0.5, 1.0, v).astype(np.float32)
    weights = rng.random(v) < 0.7
    out = voxel_measures(maps, errors, conf, weights=weights, value_ranges=[None, (0.0, 1.0), (0.0, 4.0)])
    e, w = errors[weights], weights
    for k in range(3):
        assert out.auroc[k] == pytest.approx(roc_auc_score(e, maps[k][w]), abs=1e-5)
        assert out.auprc[k] == pytest.approx(average_precision_score(e, maps[k][w]), abs=1e-5)
    assert out.ece_expectation == pytest.approx(_ece_numpy(conf[w], ~e), abs=1e-5)
    seen = maps[0][w]
    scaled = (seen - seen.min()) / (seen.max() - seen.min())  # no declared range: the observed one
    assert out.ece_confidence[0] == pytest.approx(_ece_numpy(1 - scaled, ~e), abs=1e-5)
    assert out.ece_confidence[1] == pytest.approx(_ece_numpy(1 - maps[1][w], ~e), abs=1e-5)
    assert out.ece_confidence[2] == pytest.approx(_ece_numpy(1 - maps[2][w] / 4.0, ~e), abs=1e-5)
    assert out.n_voxels == w.sum() and out.n_errors == e.sum()
    counts = np.histogram(conf[w], bins=np.linspace(0, 1, 16))[0]
    np.testing.assert_allclose(out.bins_count[0], counts)  # no value lies on a bin edge here


def test_undefined_measures_are_nan_and_bin_edges():
    v = 3000  # the shapes of the test above: no recompilation
    maps = np.random.default_rng(1).random((3, v)).astype(np.float32)
    conf = np.where(np.arange(v) < v // 2, 0.0, 1.0).astype(np.float32)
    out = voxel_measures(maps, np.zeros(v, bool), conf)  # nothing is wrong
    assert np.all(np.isnan(out.auroc)) and np.all(np.isnan(out.auprc))
    # confidence 0 falls in the first bin, 1 in the last; all correct: ECE = 0.5 * |1 - 0| + 0.5 * |1 - 1|
    assert out.bins_count[0, 0] == v // 2 and out.bins_count[0, -1] == v - v // 2
    assert out.ece_expectation == pytest.approx(0.5)
