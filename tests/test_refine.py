"""Method R: the jitted GCN fit, its vmapped batch form, the refinement pipeline and the CRF baseline.

Few epochs and one padding bucket throughout, so each jitted function compiles once per module.
"""
import jax
import numpy as np
import pytest

from ugcn.graph.voxel_graph import build_voxel_graph
from ugcn.refine.fit import FitConfig, bucket_size, fit_batch, fit_gcn, pad_graph, stack_graphs

FAST = FitConfig(epochs=30)


def sphere_case(shape=(24, 24, 16), radius=6.5, seed=0, band=True):
    """A sphere organ; the 'CNN' is right everywhere except a band where it is wrong AND uncertain.

    Returns image, prediction, expectation, uncertainty (bits), label. The intensity is informative
    (organ ~1, background ~0) so a GCN trained on the certain voxels can fix the band.
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = r < radius
    image = (label + rng.normal(0, 0.15, shape)).astype(np.float32)
    prediction = label.copy()
    wrong = np.zeros(shape, bool)
    if band:
        fp = (r >= radius) & (r < radius + 1.5) & (grid[0] < centre[0])  # false-positive shell, one half
        fn = (r < radius) & (r >= radius - 1.5) & (grid[0] >= centre[0])  # false-negative shell, other half
        prediction = (label | fp) & ~fn
        wrong = fp | fn
    expectation = np.where(prediction, 0.97, 0.03).astype(np.float32)
    expectation[wrong] = np.where(prediction[wrong], 0.6, 0.4)
    uncertainty = np.where(wrong, 0.95, 0.15).astype(np.float32)
    return image, prediction, expectation, uncertainty, label


def dense_forward(params, graph):
    """sigmoid(Â ReLU(Â X W1 + b1) W2 + b2) with a dense numpy Â = D^-1/2 (W + I) D^-1/2."""
    n = graph.features.shape[0]
    w = np.zeros((n, n))
    np.add.at(w, (graph.receivers, graph.senders), graph.weights)
    a = w + np.eye(n)
    d = a.sum(axis=1)
    a = a / np.sqrt(d[:, None] * d[None, :])
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.maximum(a @ graph.features @ p["w1"] + p["b1"], 0)
    return 1 / (1 + np.exp(-(a @ h @ p["w2"] + p["b2"])[:, 0]))


@pytest.fixture(scope="module")
def small_graphs():
    """Two graphs of different sizes from the synthetic case."""
    a = build_voxel_graph(*sphere_case(shape=(16, 16, 12), radius=4.5)[:4], dilation=(1, 3, 3), k_random=4)
    b = build_voxel_graph(*sphere_case(shape=(18, 16, 12), radius=5.0, seed=1)[:4], dilation=(1, 3, 3), k_random=4)
    assert a.n_nodes != b.n_nodes
    return a, b


@pytest.fixture(scope="module")
def fitted(small_graphs):
    padded = pad_graph(small_graphs[0])
    return padded, fit_gcn(padded, jax.random.PRNGKey(0), FAST)


def test_bucket_size_bounds():
    for n in [1, 255, 256, 257, 1000, 4097, 100_000, 123_457]:
        b = bucket_size(n)
        assert b >= n and b >= 256 and (n < 256 or b <= 1.25 * n + 1)
    assert {bucket_size(n) for n in range(16_385, 32_769)} == {20480, 24576, 28672, 32768}


def test_fit_is_deterministic_per_seed_and_loss_decreases(fitted):
    padded, result = fitted
    again = fit_gcn(padded, jax.random.PRNGKey(0), FAST)
    np.testing.assert_array_equal(result.node_probs, again.node_probs)
    other = fit_gcn(padded, jax.random.PRNGKey(1), FAST)
    assert not np.allclose(result.node_probs, other.node_probs)
    losses = np.asarray(result.losses)
    assert losses.shape == (FAST.epochs,) and np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.7 * losses[:3].mean()


def test_fit_output_equals_dense_forward_of_its_params(fitted, small_graphs):
    padded, result = fitted
    n = small_graphs[0].n_nodes
    expected = dense_forward(result.params, small_graphs[0])
    np.testing.assert_allclose(np.asarray(result.node_probs)[:n], expected, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(result.node_probs)[n:] == 0)  # padding


def test_batch_equals_per_volume_fits_at_other_paddings(small_graphs, fitted):
    a, b = small_graphs
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    single_a = fitted[1] if np.array_equal(keys[0], jax.random.PRNGKey(0)) else fit_gcn(pad_graph(a), keys[0], FAST)
    single_b = fit_gcn(pad_graph(b), keys[1], FAST)
    # A bigger common bucket than either graph's own: the padding differs from the single fits.
    stacked = stack_graphs([a, b], n_nodes=2 * bucket_size(b.n_nodes), n_edges=2 * bucket_size(b.n_edges))
    batch = fit_batch(stacked, keys, FAST)
    for i, (g, single) in enumerate([(a, single_a), (b, single_b)]):
        np.testing.assert_allclose(batch.node_probs[i, : g.n_nodes], single.node_probs[: g.n_nodes], atol=2e-4)
        np.testing.assert_allclose(batch.losses[i], single.losses, rtol=1e-4, atol=1e-5)


def test_pad_graph_rejects_too_small_bucket(small_graphs):
    with pytest.raises(ValueError, match="bucket"):
        pad_graph(small_graphs[0], n_nodes=8)
