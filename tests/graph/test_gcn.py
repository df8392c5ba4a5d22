"""The shared weighted GCN layer against a dense numpy D^-1/2 (W + I) D^-1/2 X Θ."""
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from ugcn.graph.gcn import GraphConv, gcn_normalize, graph_normalize, propagate


def random_graph(seed, n=12, n_pairs=25):
    """Random undirected weighted graph: both directions listed, no self loops, dense W for reference."""
    rng = np.random.default_rng(seed)
    w_dense = np.zeros((n, n))
    pairs = rng.integers(0, n, (n_pairs, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    w = rng.random(len(pairs)) * 2
    senders = np.concatenate([pairs[:, 0], pairs[:, 1]]).astype(np.int32)
    receivers = np.concatenate([pairs[:, 1], pairs[:, 0]]).astype(np.int32)
    weights = np.concatenate([w, w]).astype(np.float32)
    w_dense[senders, receivers] = weights
    return senders, receivers, weights, w_dense


def dense_a_hat(w_dense):
    a = w_dense + np.eye(len(w_dense))
    d = a.sum(axis=1)
    return a / np.sqrt(d[:, None] * d[None, :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_propagate_equals_dense(seed):
    senders, receivers, weights, w_dense = random_graph(seed)
    x = np.random.default_rng(seed + 10).normal(size=(12, 5)).astype(np.float32)
    norm = gcn_normalize(jnp.asarray(senders), jnp.asarray(receivers), jnp.asarray(weights), 12)
    np.testing.assert_allclose(propagate(norm, x), dense_a_hat(w_dense) @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(propagate(norm, x[:, 0]), dense_a_hat(w_dense) @ x[:, 0], rtol=1e-5, atol=1e-5)


def test_unweighted_default_and_graphs_tuple():
    senders, receivers, _, w_dense = random_graph(3)
    ones = (w_dense > 0).astype(float)
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    norm = gcn_normalize(senders, receivers, None, 12)
    np.testing.assert_allclose(propagate(norm, x), dense_a_hat(ones) @ x, rtol=1e-5)
    graph = jraph.GraphsTuple(nodes=x, edges=np.ones((len(senders), 1), np.float32), senders=senders,
                              receivers=receivers, globals=None, n_node=np.array([12]), n_edge=np.array([len(senders)]))
    np.testing.assert_allclose(propagate(graph_normalize(graph), x), dense_a_hat(ones) @ x, rtol=1e-5)


def test_padding_nodes_and_zero_weight_edges_change_nothing():
    senders, receivers, weights, w_dense = random_graph(4)
    x = np.random.default_rng(0).normal(size=(12, 3)).astype(np.float32)
    pad_s = np.concatenate([senders, np.zeros(9, np.int32)])
    pad_r = np.concatenate([receivers, np.zeros(9, np.int32)])
    pad_w = np.concatenate([weights, np.zeros(9, np.float32)])
    pad_x = np.concatenate([x, np.ones((4, 3), np.float32)])
    out = propagate(gcn_normalize(pad_s, pad_r, pad_w, 16), pad_x)
    np.testing.assert_allclose(out[:12], dense_a_hat(w_dense) @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[12:], pad_x[12:], rtol=1e-6)  # padding nodes: only their self loop


@pytest.mark.parametrize("features", [2, 8])  # narrower and wider than the input (both product orders)
def test_graphconv_equals_dense(features):
    senders, receivers, weights, w_dense = random_graph(5)
    x = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    norm = gcn_normalize(senders, receivers, weights, 12)
    layer = GraphConv(features)
    params = layer.init(jax.random.PRNGKey(0), x, norm)
    params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # non-zero bias
    theta = np.asarray(params["params"]["Dense_0"]["kernel"])
    bias = np.asarray(params["params"]["bias"])
    expected = dense_a_hat(w_dense) @ x @ theta + bias
    np.testing.assert_allclose(layer.apply(params, x, norm), expected, rtol=1e-4, atol=1e-5)
