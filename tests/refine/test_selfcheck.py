"""Method R's self-check: validation scores against hand counts, the check's rules, and the fallback on a
graph built to collapse."""

import numpy as np
import pytest

from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, refine_volume
from ugcn.refine.selfcheck import SelfCheckConfig, check_fit, validation_scores

FAST = FitConfig(epochs=30)


def test_validation_scores_match_hand_counts():
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 1, 0], np.float32)
    val = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0], bool)  # 3 foreground, 4 background held out
    probs = np.array([
        [0.9, 0.8, 0.2, 0.1, 0.6, 0.0, 0.3, 0.9, 0.9],  # tp 2, fn 1, tn 3, fp 1
        [0.0] * 9,                                        # constant background
    ])
    s = validation_scores(probs, labels, val, threshold=0.5)
    # recalls 2/3 and 3/4; Dice 2·2/(2·2 + 1 + 1); accuracy 5/7
    np.testing.assert_allclose(s.balanced_accuracy, [(2 / 3 + 3 / 4) / 2, 0.5])
    np.testing.assert_allclose(s.dice, [4 / 6, 0.0])
    np.testing.assert_allclose(s.accuracy, [5 / 7, 4 / 7])
    np.testing.assert_allclose(s.foreground_fraction, [5 / 9, 0.0])  # indices 0, 1, 4, 7, 8
    assert (s.n_validation, s.validation_foreground) == (7, 3)
    assert s.labelled_foreground_fraction == pytest.approx(4 / 9)


def test_check_flags_collapse_and_a_trivial_score_and_passes_a_good_fit():
    labels = np.repeat([1.0, 0.0], 50)
    val = np.zeros(100, bool)
    val[::3] = True
    good = np.where(labels > 0, 0.9, 0.1)
    good[1] = 0.1  # one training-node error: still good
    empty = np.zeros(100)
    full = np.ones(100)
    coin = np.tile([0.9, 0.1], 50)  # half right on each class: balanced accuracy 0.5
    passed, reasons = check_fit(validation_scores(np.stack([good, empty, full, coin]), labels, val))
    assert passed.tolist() == [True, False, False, False]
    assert reasons[0] == ""
    assert "collapsed: background" in reasons[1]
    assert "collapsed: foreground" in reasons[2]
    assert "balanced accuracy" in reasons[3]


def collapsing_case(shape=(20, 20, 14), radius=6.0, seed=0):
    """A sphere whose CNN is uncertain on all of the organ but a thin shell, with features that carry no class
    information: the labelled nodes are mostly foreground shell, and the plain BCE fit predicts one class
    on every node."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = r < radius
    image = rng.normal(0, 1, shape).astype(np.float32)  # uninformative
    expectation = np.full(shape, 0.45, np.float32)
    expectation[label] = 0.55
    uncertainty = np.where(label & (r < radius - 1.0), 0.99, 0.5).astype(np.float32)
    return image, label, expectation, uncertainty, label


def test_a_collapsed_fit_falls_back_to_the_prediction_with_a_warning():
    image, prediction, expectation, uncertainty, label = collapsing_case()
    config = RefineConfig.preset("reference", fit=FitConfig(epochs=30, loss="bce"), dilation=(3, 3, 3))
    with pytest.warns(RuntimeWarning, match="self-check"):
        r = refine_volume(image, prediction, expectation, uncertainty, config=config, label=label)
    assert r.status == "fallback"
    assert r.selfcheck["passed"] is False and r.selfcheck["reason"]
    assert r.selection["variant"] is None
    np.testing.assert_array_equal(r.refined, prediction)
    np.testing.assert_array_equal(r.refined_unlabelled, prediction)
    assert any("self-check" in m for m in r.messages)
    rep = r.report()
    assert rep["status"] == "fallback" and rep["selfcheck"]["passed"] is False
    assert r.changes == {} and rep["changes"] == {}  # nothing of the fit reached the masks
    # The fit itself did collapse (what the check caught): one class on every node.
    assert np.mean(r.node_probs > 0.5) in (0.0, 1.0)

    # Without the fallback the failed fit is returned, still with a warning and its own status.
    config = RefineConfig.preset("reference", fit=FitConfig(epochs=30, loss="bce"), dilation=(3, 3, 3),
                                 check=SelfCheckConfig(fallback=False))
    with pytest.warns(RuntimeWarning, match="self-check"):
        raw = refine_volume(image, prediction, expectation, uncertainty, config=config, label=label)
    assert raw.status == "check_failed"
    nodes = tuple(raw.graph.node_coords.T)
    np.testing.assert_array_equal(raw.refined[nodes], raw.node_probs > 0.5)
    assert not np.array_equal(raw.refined, prediction)
    # the reference preset replaces every node: its changes count them all
    assert raw.changes["added"] == np.sum((raw.refined[nodes] == 1) & (prediction[nodes] == 0))
    assert raw.changes["removed"] == np.sum((raw.refined[nodes] == 0) & (prediction[nodes] == 1))
