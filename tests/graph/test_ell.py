"""The ELL+COO propagation (ugcn.graph.ell) and its custom gradient against a dense numpy Â and Âᵀ."""
import jax
import numpy as np
import pytest

from ugcn.graph.ell import NotSymmetricError, choose_width, ell_layout, ell_normalize, ell_propagate, is_symmetric


def symmetric_graph(seed, n=12, n_pairs=40):
    """Random weighted undirected graph (both directions listed) plus zero-weight padding edges, and the
    dense ``Â = D^-1/2 (W + I) D^-1/2`` over ``n + 4`` nodes (4 isolated padding nodes)."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers(0, n, (n_pairs, 2))
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], axis=1), axis=0)
    w = (rng.random(len(pairs)) * 2 + 0.1).astype(np.float32)
    senders = np.concatenate([pairs[:, 0], pairs[:, 1], np.zeros(5, int)]).astype(np.int32)
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0], np.zeros(5, int)]).astype(np.int32)
    weights = np.concatenate([w, w, np.zeros(5, np.float32)])
    a = np.eye(n + 4)
    a[receivers, senders] += weights
    d = a.sum(axis=1)
    return senders, receivers, weights, a / np.sqrt(d[:, None] * d[None, :])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("width", [None, 2, 0])  # chosen width, most edges in the overflow, all of them
def test_propagation_and_gradient_equal_dense(seed, width):
    senders, receivers, weights, a_hat = symmetric_graph(seed)
    n = a_hat.shape[0]
    layout = ell_layout(senders, receivers, weights, n, width=width)
    if width == 2:
        assert layout.overflow_weights.astype(bool).sum() > 0
    norm = jax.jit(ell_normalize)(*layout)
    rng = np.random.default_rng(seed + 1)
    for shape in ((n, 3), (n,)):
        x = rng.normal(size=shape).astype(np.float32)
        g = rng.normal(size=shape).astype(np.float32)
        out, vjp = jax.vjp(lambda v: ell_propagate(norm, v), x)
        np.testing.assert_allclose(out, a_hat @ x, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vjp(g)[0], a_hat.T @ g, rtol=1e-5, atol=1e-6)
    padding = slice(n - 4, n)
    np.testing.assert_allclose(np.asarray(out)[padding], x[padding], rtol=1e-6)  # only their self loop


def test_layout_rows_hold_each_nodes_in_edges():
    senders, receivers, weights, _ = symmetric_graph(2)
    layout = ell_layout(senders, receivers, weights, 16, width=3)
    rebuilt = np.zeros((16, 16), np.float32)
    np.add.at(rebuilt, (np.repeat(np.arange(16), 3), layout.ell_index.ravel()), layout.ell_weight.ravel())
    np.add.at(rebuilt, (layout.overflow_receivers, layout.overflow_senders), layout.overflow_weights)
    expected = np.zeros((16, 16), np.float32)
    expected[receivers, senders] += weights
    np.testing.assert_array_equal(rebuilt, expected)
    empty = layout.ell_weight == 0
    np.testing.assert_array_equal(layout.ell_index[empty], np.nonzero(empty)[0])  # empty slots read their own row
    assert layout.overflow_senders.size == 256  # overflow padded to a bucket
    wide = ell_layout(senders, receivers, weights, 16, width=16)
    assert wide.overflow_senders.size == 0  # nothing left over: no overflow list at all


def test_choose_width_by_hand():
    # slots N·D + 3 × overflow: D=4: 5·4 + 3·6 = 38; D=8: 40 + 3·2 = 46; D=12: 60.
    assert choose_width(np.array([3, 3, 3, 3, 10])) == 4
    # all degree 22: D=20 costs 20N + 3·2N = 26N, D=24 24N.
    assert choose_width(np.full(7, 22)) == 24
    # degrees 0 and 8: D=4 costs 2·4 + 3·4 = 20, D=8 2·8 = 16.
    assert choose_width(np.array([0, 8])) == 8
    # degrees 0, 0 and 7: D=4 costs 12 + 3·3 = 21, D=8 24.
    assert choose_width(np.array([0, 0, 7])) == 4
    assert choose_width(np.zeros(5, int)) == 0


def test_asymmetric_graphs_are_refused():
    senders, receivers, weights, _ = symmetric_graph(3)
    assert is_symmetric(senders, receivers, weights, 16)
    one_way = slice(1, None)  # the first edge's reverse is missing
    assert not is_symmetric(senders[one_way], receivers[one_way], weights[one_way], 16)
    with pytest.raises(NotSymmetricError):
        ell_layout(senders[one_way], receivers[one_way], weights[one_way], 16)
    unequal = weights.copy()
    unequal[0] *= 2
    assert not is_symmetric(senders, receivers, unequal, 16)
    with pytest.raises(ValueError, match="n_overflow"):
        ell_layout(senders, receivers, weights, 16, width=1, n_overflow=1)
