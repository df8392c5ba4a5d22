"""Method R's graph variants against brute-force numpy: k-NN long-range edges, their weight factor, the
diversity weight, and the adaptive uncertainty threshold."""
import numpy as np
import pytest

from ugcn.graph.voxel_graph import bernoulli_diversity, build_voxel_graph, knn_edges, uncertainty_threshold


def small_case(seed=0, shape=(14, 14, 10), radius=4.0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape, np.float32)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = r < radius
    image = (label + rng.normal(0, 0.3, shape)).astype(np.float32)
    expectation = np.clip(np.where(label, 0.8, 0.2) + rng.normal(0, 0.1, shape), 0.01, 0.99).astype(np.float32)
    uncertainty = rng.uniform(0, 1, shape).astype(np.float32)
    return image, label, expectation, uncertainty


def brute_knn(points, k):
    d = ((points[:, None, :] - points[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def undirected_set(pairs):
    return {(min(a, b), max(a, b)) for a, b in np.asarray(pairs).tolist() if a != b}


@pytest.mark.parametrize("k", [1, 5])
def test_knn_edges_match_brute_force(k):
    points = np.random.default_rng(k).normal(size=(60, 3))  # continuous: no ties
    pairs = knn_edges(points, k)
    expected = brute_knn(points, k)
    assert pairs.shape == (60 * k, 2)
    for i in range(60):
        assert set(pairs[pairs[:, 0] == i, 1]) == set(expected[i])


def test_graph_knn_long_range_edges_are_the_feature_space_neighbours():
    image, pred, e, u = small_case()
    k = 4
    g = build_voxel_graph(image, pred, e, u, tau=0.7, dilation=(3, 3, 3), k_random=k, long_range="knn")
    x = g.features.astype(np.float64)
    x = x / np.where(x.std(0) > 0, x.std(0), 1)
    nn = brute_knn(x, k)
    coords = g.node_coords
    expected = {
        (min(i, j), max(i, j)) for i in range(g.n_nodes) for j in nn[i]
        if np.abs(coords[i] - coords[j]).sum() != 1  # face neighbours are already edges
    }
    half = g.n_edges // 2
    face = {(a, b) for a, b in zip(g.senders[:half], g.receivers[:half])
            if np.abs(coords[a] - coords[b]).sum() == 1}
    long_range = undirected_set(np.stack([g.senders[:half], g.receivers[:half]], 1)) - face
    assert long_range == expected
    assert g.n_random_edges == len(expected)


def test_long_range_weight_scales_only_the_long_range_edges():
    image, pred, e, u = small_case(1)
    kw = dict(tau=0.7, dilation=(3, 3, 3), k_random=6, seed=3)
    base = build_voxel_graph(image, pred, e, u, **kw)
    scaled = build_voxel_graph(image, pred, e, u, long_range_weight=0.25, **kw)
    np.testing.assert_array_equal(base.senders, scaled.senders)
    coords = base.node_coords
    far = np.abs(coords[base.senders] - coords[base.receivers]).sum(1) != 1
    assert far.sum() == 2 * base.n_random_edges > 0
    np.testing.assert_allclose(scaled.weights[far], 0.25 * base.weights[far], rtol=1e-6)
    np.testing.assert_array_equal(scaled.weights[~far], base.weights[~far])


def test_diversity_weight_adds_lambda_times_the_bernoulli_divergence():
    image, pred, e, u = small_case(2)
    kw = dict(tau=0.7, dilation=(3, 3, 3), k_random=3, seed=1)
    g0 = build_voxel_graph(image, pred, e, u, lam=0.0, **kw)
    g2 = build_voxel_graph(image, pred, e, u, lam=2.0, **kw)
    e_nodes = e[tuple(g0.node_coords.T)]
    div = bernoulli_diversity(e_nodes[g0.senders], e_nodes[g0.receivers])
    assert div.max() > 0.1
    np.testing.assert_allclose(g2.weights - g0.weights, 2.0 * div, rtol=1e-4, atol=1e-5)


def test_adaptive_tau_caps_the_uncertain_share_of_the_prediction():
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, (10, 10, 10))
    pred = np.zeros(u.shape, bool)
    pred[2:8, 2:8, 2:8] = True
    # 90 % of the prediction above 0.1: capped to the 50 % quantile over the prediction.
    tau = uncertainty_threshold(u, 0.1, "adaptive", pred, 0.5)
    assert tau == pytest.approx(np.quantile(u[pred], 0.5))
    assert np.mean(u[pred] > tau) == pytest.approx(0.5, abs=0.01)
    # Few uncertain voxels: tau itself.
    assert uncertainty_threshold(u, 0.9, "adaptive", pred, 0.5) == 0.9
    assert uncertainty_threshold(u, 0.1, "absolute", pred, 0.5) == 0.1
    # It reaches the graph: the labelled set follows the capped threshold.
    image = rng.normal(size=u.shape).astype(np.float32)
    e = np.where(pred, 0.9, 0.1).astype(np.float32)
    g = build_voxel_graph(image, pred, e, u.astype(np.float32), tau=0.1, tau_mode="adaptive", dilation=(1, 1, 1))
    assert g.tau_value == pytest.approx(tau)
    np.testing.assert_array_equal(g.label_mask, u[tuple(g.node_coords.T)] <= tau)
    with pytest.raises(ValueError, match="long_range"):
        build_voxel_graph(image, pred, e, u.astype(np.float32), long_range="nearest")
