"""Voxel graph of method R against slow, hand-written references (python loops are fine here)."""
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ugcn.graph.voxel_graph import (
    bernoulli_diversity,
    bounding_box,
    build_voxel_graph,
    largest_component,
)

NEIGHBOURS_26 = [d for d in itertools.product((-1, 0, 1), repeat=3) if d != (0, 0, 0)]


def slow_largest_component(mask):
    """Flood fill with a python stack, 26-connectivity; ties: first component in C scan order."""
    seen = np.zeros(mask.shape, bool)
    best = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        comp, stack = [], [start]
        seen[start] = True
        while stack:
            v = stack.pop()
            comp.append(v)
            for d in NEIGHBOURS_26:
                w = tuple(a + b for a, b in zip(v, d))
                if all(0 <= w[a] < mask.shape[a] for a in range(3)) and mask[w] and not seen[w]:
                    seen[w] = True
                    stack.append(w)
        if len(comp) > len(best):
            best = comp
    out = np.zeros(mask.shape, bool)
    for v in best:
        out[v] = True
    return out


def slow_nodes(lcc, expectation, uncertainty, tau, dilation, margin=0):
    """ROI (as python ranges) and the node set as a python set of full-volume coordinates."""
    pts = list(zip(*np.nonzero(lcc)))
    lo = [max(min(p[a] for p in pts) - margin, 0) for a in range(3)]
    hi = [min(max(p[a] for p in pts) + 1 + margin, lcc.shape[a]) for a in range(3)]
    inside = lambda v: all(lo[a] <= v[a] < hi[a] for a in range(3))  # noqa: E731
    uncertain = [v for v in itertools.product(*[range(lo[a], hi[a]) for a in range(3)]) if uncertainty[v] > tau]
    nodes = set()
    half = [(d - 1) // 2 for d in dilation]
    for v in uncertain:
        for d in itertools.product(*[range(-h, h + 1) for h in half]):
            w = tuple(a + b for a, b in zip(v, d))
            if inside(w):
                nodes.add(w)
    for v in itertools.product(*[range(lo[a], hi[a]) for a in range(3)]):
        if expectation[v] > 0.5:
            nodes.add(v)
    return (lo, hi), nodes


def random_case(seed, shape=(9, 8, 7)):
    rng = np.random.default_rng(seed)
    prediction = rng.random(shape) < 0.35
    expectation = np.clip(prediction * 0.7 + rng.random(shape) * 0.4 - 0.1, 0, 1).astype(np.float32)
    uncertainty = rng.random(shape).astype(np.float32)
    image = rng.normal(size=shape).astype(np.float32)
    return image, prediction, expectation, uncertainty


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.8, 0.95]), st.sampled_from([(1, 1, 1), (3, 3, 3), (3, 5, 1)]))
def test_lcc_roi_nodes_and_face_edges_match_slow_reference(seed, tau, dilation):
    image, prediction, expectation, uncertainty = random_case(seed)
    g = build_voxel_graph(image, prediction, expectation, uncertainty, tau=tau, dilation=dilation, k_random=0)
    lcc = slow_largest_component(prediction)
    np.testing.assert_array_equal(g.prediction_lcc, lcc)
    (lo, hi), nodes = slow_nodes(lcc, expectation, uncertainty, tau, dilation)
    assert [(s.start, s.stop) for s in g.roi] == list(zip(lo, hi))
    coords = [tuple(c) for c in g.node_coords]
    assert set(coords) == nodes and len(coords) == len(nodes)
    assert coords == sorted(coords)  # C order
    # Edges: every face-adjacent node pair, both directions, nothing else.
    expected = set()
    index = {c: n for n, c in enumerate(coords)}
    for c, n in index.items():
        for a in range(3):
            for s in (-1, 1):
                w = list(c)
                w[a] += s
                if tuple(w) in index:
                    expected.add((n, index[tuple(w)]))
    got = list(zip(g.senders.tolist(), g.receivers.tolist()))
    assert len(got) == len(set(got)) and set(got) == expected
    # Labels, features, masks per node.
    for n, c in enumerate(coords):
        assert g.labels[n] == float(lcc[c])
        assert g.label_mask[n] == (uncertainty[c] <= tau)
        assert g.features[n, 1] == expectation[c] and g.features[n, 2] == uncertainty[c]
    assert not np.any(g.train_mask & ~g.label_mask)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 17))
def test_random_edges_symmetric_no_self_loops_no_duplicates_degree_capped(seed, k):
    image, prediction, expectation, uncertainty = random_case(seed, shape=(10, 10, 8))
    g = build_voxel_graph(image, prediction, expectation, uncertainty, dilation=(3, 3, 3), k_random=k, seed=seed)
    pairs = list(zip(g.senders.tolist(), g.receivers.tolist()))
    assert all(i != j for i, j in pairs)
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == {(j, i) for i, j in pairs}
    w = dict(zip(pairs, g.weights.tolist()))
    assert all(w[(i, j)] == w[(j, i)] for i, j in pairs)
    coords = g.node_coords
    random = [(i, j) for i, j in pairs if np.abs(coords[i] - coords[j]).sum() != 1]
    degree = np.bincount([i for i, _ in random], minlength=g.n_nodes)
    assert degree.max(initial=0) <= k
    assert len(random) == 2 * g.n_random_edges
    if g.n_nodes > 4 * k:  # nearly every node gets its k random partners
        assert degree.mean() > 0.8 * k


def test_same_seed_same_graph_other_seed_other_edges():
    case = random_case(3, shape=(12, 12, 10))
    a = build_voxel_graph(*case, dilation=(3, 3, 3), seed=1)
    b = build_voxel_graph(*case, dilation=(3, 3, 3), seed=1)
    c = build_voxel_graph(*case, dilation=(3, 3, 3), seed=2)
    np.testing.assert_array_equal(a.senders, b.senders)
    np.testing.assert_array_equal(a.train_mask, b.train_mask)
    assert not np.array_equal(a.senders, c.senders) or not np.array_equal(a.receivers, c.receivers)


def test_weights_match_formula_computed_densely():
    image, prediction, expectation, uncertainty = random_case(7, shape=(10, 9, 8))
    g = build_voxel_graph(image, prediction, expectation, uncertainty, dilation=(3, 3, 3), k_random=5, lam=0.7)
    roi = g.roi
    crop = image[roi].astype(np.float64)
    z = (crop - crop.mean()) / crop.std()
    shape = np.array(g.roi_shape, float)
    d_int, d_pos, div = [], [], []
    for i, j in zip(g.senders, g.receivers):
        ci, cj = g.node_coords[i], g.node_coords[j]
        li, lj = ci - [s.start for s in roi], cj - [s.start for s in roi]
        d_int.append((z[tuple(li)] - z[tuple(lj)]) ** 2)
        d_pos.append(float(np.sum(((li - lj) / shape) ** 2)))
        p = min(max(float(expectation[tuple(ci)]), 1e-15), 1 - 1e-15)
        q = min(max(float(expectation[tuple(cj)]), 1e-15), 1 - 1e-15)
        div.append((p - q) * (math.log2(p / q) - math.log2((1 - p) / (1 - q))))
    d_int, d_pos, div = map(np.array, (d_int, d_pos, div))
    expected = 0.7 * div + np.exp(-d_int / (2 * d_int.var())) + np.exp(-d_pos / (2 * d_pos.var()))
    np.testing.assert_allclose(g.weights, expected, rtol=2e-4, atol=1e-5)
    assert np.all(div >= -1e-12)
    # the features hold the z-scored intensity
    for n, c in enumerate(g.node_coords[:50]):
        assert g.features[n, 0] == pytest.approx(z[tuple(c - [s.start for s in roi])], abs=1e-5)


def test_bernoulli_diversity_symmetric_nonnegative_zero_on_diagonal():
    p = np.array([0.0, 0.1, 0.5, 0.9, 1.0])
    d = bernoulli_diversity(p[:, None], p[None, :])
    np.testing.assert_allclose(d, d.T)
    assert np.all(d >= 0) and np.all(np.diag(d) == 0)
    assert d[1, 3] == pytest.approx(0.8 * 2 * math.log2(9))


def test_margin_quantile_reference_norm_and_row_normalisation():
    image, prediction, expectation, uncertainty = random_case(11, shape=(12, 12, 10))
    lcc = largest_component(prediction)
    box = bounding_box(lcc, 2)
    g = build_voxel_graph(image, prediction, expectation, uncertainty, margin=2, tau=0.9, tau_mode="quantile")
    assert g.roi == box
    assert g.tau_value == pytest.approx(np.quantile(uncertainty[box], 0.9))
    g = build_voxel_graph(image, prediction, expectation, uncertainty, feature_norm="reference", row_normalize=True)
    crop = image[g.roi].astype(np.float64)
    c = tuple(g.node_coords[0] - [s.start for s in g.roi])
    raw = np.array([(crop[c] - crop.mean()) / crop.var(), expectation[tuple(g.node_coords[0])],
                    uncertainty[tuple(g.node_coords[0])]])
    np.testing.assert_allclose(g.features[0], raw / raw.sum(), rtol=1e-4)


def test_bad_inputs_raise_clear_errors():
    image, prediction, expectation, uncertainty = random_case(0)
    with pytest.raises(ValueError, match="empty"):
        build_voxel_graph(image, np.zeros_like(prediction), expectation, uncertainty)
    with pytest.raises(ValueError, match="shape"):
        build_voxel_graph(image, prediction[:-1], expectation, uncertainty)
    bad = expectation.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_voxel_graph(image, prediction, bad, uncertainty)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        build_voxel_graph(image, prediction, expectation * 2 + 0.1, uncertainty)
    with pytest.raises(ValueError, match="max_nodes"):
        build_voxel_graph(image, prediction, expectation, uncertainty, max_nodes=3)
    with pytest.raises(ValueError, match="tau_mode"):
        build_voxel_graph(image, prediction, expectation, uncertainty, tau_mode="relative")
