"""Method R's pipeline (ugcn.refine.pipeline) on synthetic spheres: Dice, masks, batch vs single, edge cases.

Every sphere lands in one padding bucket (SPHERE_BUCKET), so the fits share one compiled program."""
import numpy as np
import pytest

from ugcn.graph.voxel_graph import build_voxel_graph
from ugcn.refine.fit import FitConfig, bucket_size
from ugcn.refine.pipeline import RefineConfig, RefineInput, context_support, leak_level, refine_batch, refine_volume

FAST = FitConfig(epochs=30)
SPHERE_BUCKET = (3072, 65536)
PIPE = RefineConfig(fit=FAST)


def reference_dice(a, b):
    a, b = a.astype(bool), b.astype(bool)
    return 2 * np.sum(a & b) / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def sphere_result(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case()
    graph = build_voxel_graph(image, prediction, expectation, uncertainty)
    assert (bucket_size(graph.n_nodes), bucket_size(graph.n_edges)) == SPHERE_BUCKET  # compile sharing
    return sphere_case(), refine_volume(image, prediction, expectation, uncertainty, config=PIPE, label=label, crf=True)


def test_refinement_raises_dice_where_the_cnn_is_wrong_only_where_uncertain(sphere_result):
    (image, prediction, expectation, uncertainty, label), r = sphere_result
    assert r.status == "refined"
    cnn = reference_dice(prediction, label)
    assert r.dice["cnn"] == pytest.approx(cnn)
    assert r.dice["refined"] == pytest.approx(reference_dice(r.refined, label))
    assert r.dice["refined"] > cnn + 0.05
    assert r.dice["refined_unlabelled"] > cnn + 0.1


def test_result_masks_are_consistent(sphere_result, neighbour_counts):
    (image, prediction, expectation, uncertainty, label), r = sphere_result
    g = r.graph
    outside = np.ones(label.shape, bool)
    outside[g.roi] = False
    for name, mask in r.masks().items():
        assert mask.dtype == np.uint8 and mask.shape == label.shape and not mask[outside].any(), name
    node = np.zeros(label.shape, bool)
    node[tuple(g.node_coords.T)] = True
    assert not r.refined[~node].any()  # ROI voxels that are not nodes are 0
    lab = tuple(g.node_coords[g.label_mask].T)
    np.testing.assert_array_equal(r.refined_unlabelled[lab], prediction[lab])
    # Uncertain nodes take the GCN's class where it is confident (beyond 0.5 +- the margin), else keep Ŷ.
    nodes, free, m, mr = tuple(g.node_coords.T), ~g.label_mask, PIPE.confidence_margin, PIPE.removal_margin
    expected = np.where(r.node_probs > 0.5 + m, 1, np.where(r.node_probs <= 0.5 - mr, 0, prediction[nodes]))
    steps = {"gcn_added": np.sum(free & (prediction[nodes] == 0) & (expected == 1)),
             "gcn_removed": np.sum(free & (prediction[nodes] == 1) & (expected == 0))}

    def count(rule, where, value):  # the uncertain nodes whose class a rule changes
        steps[rule] = np.sum(free & where & (expected != value))
    # ... and the sparse removal: predicted, GCN output < 0.5, < 0.35 of the 3x3x3 neighbourhood predicted
    counts = neighbour_counts(r.cnn)
    # ... and the context additions (outputs 0.5-0.9 outside Ŷ where context_support passes; tested on its own in
    # test_context_addition.py): none pass on this thin shell at 3 mm
    fg = g.label_mask & (prediction[nodes] == 1)
    context = context_support(image, r.cnn, g.node_coords, fg, g.label_mask & ~fg, sigma=PIPE.context_sigma,
                              reach=PIPE.context_reach)
    assert PIPE.context_addition == 0.5
    loose = free & (prediction[nodes] == 0) & (r.node_probs > 0.5) & (r.node_probs <= 0.9)
    assert loose.any() and not (loose & context).any()
    count("context_addition", loose & context, 1)
    expected = np.where(loose & context, 1, expected)
    # ... and the context removals (outputs below 0.5 inside Ŷ whose leak level passes 0.4; tested on its own in
    # test_context_removal.py)
    assert (PIPE.context_removal, PIPE.context_removal_share) == (0.5, 0.4)
    level = leak_level(image, r.cnn, g.node_coords, fg, sigma=PIPE.context_removal_sigma)
    leaky = free & (prediction[nodes] == 1) & (r.node_probs < 0.5) & (np.nan_to_num(level, nan=-1.0) > 0.4)
    count("context_removal", leaky, 0)
    expected = np.where(leaky, 0, expected)
    sparse = (prediction[nodes] == 1) & (r.node_probs < 0.5) & (counts[nodes] < PIPE.sparse_removal * 27)
    assert PIPE.sparse_removal == 0.35
    count("sparse_removal", sparse, 0)
    expected = np.where(sparse, 0, expected)
    # ... and the thin removals (tested on their own in test_thin_removal.py): a node still kept with output <= 0.9
    # and leak level > 0.3 goes where fewer than 0.4 * 27 of its 3x3x3 neighbourhood are left in Ŷ minus the removals
    assert (PIPE.thin_removal, PIPE.thin_removal_share) == (0.4, 0.3)
    left = r.cnn.astype(bool).copy()
    left[tuple(c[free & (prediction[nodes] == 1) & (expected == 0)] for c in nodes)] = False
    counts_left = neighbour_counts(left)
    thin = (free & (prediction[nodes] == 1) & (expected == 1) & (r.node_probs <= 0.9)
            & (np.nan_to_num(level, nan=-1.0) > PIPE.thin_removal_share)
            & (counts_left[nodes] < PIPE.thin_removal * 27))
    count("thin_removal", thin, 0)
    expected = np.where(thin, 0, expected)
    # ... and the fill additions (tested on their own in test_fill_addition.py): an uncertain node outside Ŷ not added
    # so far, output in (0.3, 0.9], >= 10 of its 3x3x3 neighbourhood in Ŷ, in a volume where the removals took < 0.03
    # of Ŷ and the GCN puts <= 0.25 of the labelled background above 0.5
    assert (PIPE.fill_addition, PIPE.fill_addition_share, PIPE.fill_addition_removed,
            PIPE.fill_addition_fpr) == (0.3, 0.35, 0.03, 0.25)
    removed = np.sum(free & (prediction[nodes] == 1) & (expected == 0))
    background = g.label_mask & (prediction[nodes] == 0)
    open_volume = removed < 0.03 * r.cnn.sum() and np.mean(r.node_probs[background] > 0.5) <= 0.25
    counts_y = neighbour_counts(r.cnn)
    fill = (free & (prediction[nodes] == 0) & (expected == 0) & (r.node_probs > 0.3) & (r.node_probs <= 0.9)
            & (counts_y[nodes] >= 10) & open_volume)
    count("fill_addition", fill, 1)
    expected = np.where(fill, 1, expected)
    # ... and the sparse addition: an uncertain addition is kept where, with it, >= 0.35 of its 3x3x3 neighbourhood
    # is Ŷ or a kept addition (grown until nothing changes)
    assert PIPE.sparse_addition == 0.35
    added = free & (prediction[nodes] == 0) & (expected == 1)
    grown, kept = r.cnn.astype(bool).copy(), np.zeros_like(added)
    while True:
        counts = neighbour_counts(grown)
        new = added & ~kept & (counts[nodes] + 1 >= 10)  # 10 = ceil(0.35 * 27)
        if not new.any():
            break
        kept |= new
        grown[tuple(c[new] for c in nodes)] = True
    count("sparse_addition_refused", added & ~kept, 0)
    expected = np.where(added & ~kept, 0, expected)
    np.testing.assert_array_equal(r.refined_unlabelled[nodes][free], expected[free])
    np.testing.assert_array_equal(r.refined, r.refined_unlabelled)  # the default replaces uncertain nodes only
    np.testing.assert_array_equal(r.expectation_mask[g.roi], expectation[g.roi] > 0.5)
    # what each step did, in the pipeline's order, and the net result against Ŷ
    steps.update(added=np.sum(free & (prediction[nodes] == 0) & (expected == 1)),
                 removed=np.sum(free & (prediction[nodes] == 1) & (expected == 0)))
    assert r.changes == {k: int(v) for k, v in steps.items()}
    assert r.changes["added"] + r.changes["removed"] > 0  # the comparison above can fail on counts
    rep = r.report()
    assert rep["graph"]["nodes"] == g.n_nodes and set(rep["dice"]) == set(r.masks())
    assert rep["changes"] == r.changes
    assert r.crf is not None and r.crf.shape == label.shape


def test_batch_equals_single_volume_refinements(sphere_result, sphere_case):
    cases = [sphere_case(), sphere_case(radius=6.0, seed=3)]
    inputs = [RefineInput(*c) for c in cases]
    batch = refine_batch(inputs, config=PIPE, seeds=[0, 7], progress=False)
    singles = [sphere_result[1], refine_volume(*cases[1][:4], config=PIPE, seed=7, label=cases[1][4])]
    for b, s in zip(batch, singles):
        assert b.status == s.status == "refined"
        np.testing.assert_allclose(b.node_probs, s.node_probs, atol=2e-4)
        assert b.dice["refined"] == pytest.approx(s.dice["refined"], abs=2e-3)


def test_empty_prediction_gives_empty_result(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case(band=False)
    r = refine_volume(image, np.zeros_like(prediction), expectation, uncertainty, config=PIPE, label=label, crf=True)
    assert r.status == "empty_prediction" and "empty" in r.messages[0]
    assert all(not m.any() for m in r.masks().values())
    assert r.dice["refined"] == 0.0


def test_no_uncertain_voxels_returns_prediction(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case()
    r = refine_volume(image, prediction, expectation, np.zeros_like(uncertainty), config=PIPE)
    assert r.status == "no_uncertain_voxels" and r.node_probs is None
    np.testing.assert_array_equal(r.refined, prediction)


def test_all_uncertain_returns_prediction_with_warning(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case()
    # Absolute tau: the adaptive default would raise tau above a constant U (nothing uncertain then).
    absolute = RefineConfig(fit=FAST, tau_mode="absolute")
    with pytest.warns(RuntimeWarning, match="no labelled node"):
        r = refine_volume(image, prediction, expectation, np.ones_like(uncertainty), config=absolute)
    assert r.status == "no_labelled_nodes"
    np.testing.assert_array_equal(r.refined_unlabelled, prediction)


def test_labelled_nodes_of_one_class_only_fall_back_to_the_prediction(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case()
    uncertainty = np.where(prediction & ~(np.asarray(uncertainty) > 0.8), 0.1, 0.95).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="self-check"):
        r = refine_volume(image, prediction, expectation, uncertainty, config=PIPE)
    # The fit can only learn "foreground": it collapses, and the self-check returns the prediction.
    assert any("only learn to predict foreground" in m for m in r.messages)
    assert r.status == "fallback" and "collapsed" in r.selfcheck["reason"]
    assert np.all(np.isfinite(r.node_probs))
    np.testing.assert_array_equal(r.refined, prediction)


def test_node_budget_and_bad_inputs(sphere_case):
    image, prediction, expectation, uncertainty, label = sphere_case()
    with pytest.raises(ValueError, match="max_nodes"):
        refine_volume(image, prediction, expectation, uncertainty, config=RefineConfig(max_nodes=100))
    with pytest.raises(ValueError, match="shape"):
        refine_volume(image, prediction, expectation[:-1], uncertainty, config=PIPE)
    with pytest.raises(ValueError, match="label"):
        refine_volume(image, prediction, expectation, np.zeros_like(uncertainty), config=PIPE, label=label[:-1])
