"""The jitted GCN fit of method R and its vmapped batch form (ugcn.refine.fit), against a dense numpy forward.

Few epochs (FAST) and few padding buckets, so few programs compile: fit_gcn at SMALL_BUCKET and fit_batch
with B = 2 at the synthetic spheres' natural bucket (3072 nodes, 65536 edges), where the pipeline and CLI
tests land too."""
import jax
import numpy as np
import pytest

from ugcn.graph.voxel_graph import build_voxel_graph
from ugcn.refine.fit import FitConfig, fit_batch, fit_gcn, pad_graph, stack_graphs

FAST = FitConfig(epochs=30)
SMALL_BUCKET = (1280, 12288)
SPHERE_BUCKET = (3072, 65536)


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
def small_graphs(sphere_case):
    """Two graphs of different sizes from the synthetic case."""
    a = build_voxel_graph(*sphere_case(shape=(16, 16, 12), radius=4.5)[:4], dilation=(1, 3, 3), k_random=4)
    b = build_voxel_graph(*sphere_case(shape=(18, 16, 12), radius=5.0, seed=1)[:4], dilation=(1, 3, 3), k_random=4)
    assert a.n_nodes != b.n_nodes
    return a, b


@pytest.fixture(scope="module")
def fitted(small_graphs):
    padded = pad_graph(small_graphs[0], *SMALL_BUCKET)
    return padded, fit_gcn(padded, jax.random.PRNGKey(0), FAST)


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


def test_batch_equals_per_volume_fits_at_other_paddings(small_graphs):
    a, b = small_graphs
    keys = jax.random.split(jax.random.PRNGKey(5), 2)
    single_a = fit_gcn(pad_graph(a, *SMALL_BUCKET), keys[0], FAST)
    single_b = fit_gcn(pad_graph(b, *SMALL_BUCKET), keys[1], FAST)
    # A bigger common bucket than the single fits': the padding differs.
    stacked = stack_graphs([a, b], *SPHERE_BUCKET)
    for strategy in ("parallel", "sequential"):
        batch = fit_batch(stacked, keys, FAST, strategy=strategy)
        for i, (g, single) in enumerate([(a, single_a), (b, single_b)]):
            np.testing.assert_allclose(batch.node_probs[i, : g.n_nodes], single.node_probs[: g.n_nodes], atol=2e-4)
            np.testing.assert_allclose(batch.losses[i], single.losses, rtol=1e-4, atol=1e-5)


def test_pad_graph_rejects_too_small_bucket(small_graphs):
    with pytest.raises(ValueError, match="bucket"):
        pad_graph(small_graphs[0], n_nodes=8)


def test_ell_fit_equals_segment_sum_fit(small_graphs, fitted):
    """The default (ELL, gather-based, custom gradient) fit and the COO (segment_sum) fit: same training,
    same refined mask; also with a width small enough that most edges go through the overflow list."""
    graph = small_graphs[0]
    padded, ell = fitted
    assert padded.ell_index.shape[1] > 0  # the default layout is ELL
    coo = fit_gcn(pad_graph(graph, *SMALL_BUCKET, ell_width=0), jax.random.PRNGKey(0), FAST)
    narrow = fit_gcn(pad_graph(graph, *SMALL_BUCKET, ell_width=2), jax.random.PRNGKey(0), FAST)
    n = graph.n_nodes
    reference = np.asarray(coo.node_probs)[:n]
    for result in (ell, narrow):
        probs = np.asarray(result.node_probs)[:n]
        np.testing.assert_allclose(probs, reference, atol=1e-4)
        np.testing.assert_allclose(result.losses, coo.losses, rtol=1e-4, atol=1e-6)
        clear = np.abs(reference - 0.5) > 1e-3
        np.testing.assert_array_equal((probs > 0.5)[clear], (reference > 0.5)[clear])


def test_stacked_ell_layout_shared_by_graphs(small_graphs):
    a, b = small_graphs
    stacked = stack_graphs([a, b], *SMALL_BUCKET)
    assert stacked.ell_index.shape[:2] == (2, SMALL_BUCKET[0]) and stacked.ell_index.shape[2] > 0
    assert stacked.overflow_senders.shape[0] == 2
    coo = stack_graphs([a, b], *SMALL_BUCKET, ell_width=0)
    assert coo.ell_index.shape[2] == 0
    for g, row in ((a, 0), (b, 1)):  # each row rebuilds its graph's adjacency
        n = SMALL_BUCKET[0]
        w = np.zeros((n, n), np.float32)
        np.add.at(w, (np.repeat(np.arange(n), stacked.ell_index.shape[2]), stacked.ell_index[row].ravel()),
                  stacked.ell_weight[row].ravel())
        np.add.at(w, (stacked.overflow_receivers[row], stacked.overflow_senders[row]), stacked.overflow_weights[row])
        expected = np.zeros((n, n), np.float32)
        expected[g.receivers, g.senders] += g.weights
        np.testing.assert_array_equal(w, expected)


@pytest.mark.parametrize("rate", [0.5, 0.3, 0.0])
def test_tiled_hidden_layer_value_and_gradient_match_numpy(rate):
    """The hidden layer computed in node tiles (1280 nodes: 5 tiles of 256), its custom gradient against the
    closed form in numpy: z = w2ᵀ(ReLU(W1ᵀA + b1) ⊙ keep), d(c·z)/dW1 = A dpreᵀ, /db1 = Σ dpre, /dw2 = h c."""
    import jax.numpy as jnp

    from ugcn.refine.fit import _dropout_draw, _hidden_out, _node_tile

    n, f, h = 1280, 3, 32
    assert _node_tile(n) == 256
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(f, h)), rng.normal(size=h) * 0.5, rng.normal(size=h)
    ax, c = rng.normal(size=(f, n)), rng.normal(size=n)
    draw = None if rate == 0 else _dropout_draw(jax.random.PRNGKey(3), n, h, rate)
    if draw is None:
        keep = np.ones((h, n))
    elif rate == 0.5:  # bit j of node i's uint32 keeps unit j
        keep = 2.0 * ((np.asarray(draw)[None, :] >> np.arange(h)[:, None]) & 1)
    else:
        keep = (np.asarray(draw) >= rate) / (1 - rate)
    pre = w1.T @ ax + b1[:, None]
    hk = np.maximum(pre, 0) * keep
    dpre = (pre > 0) * keep * w2[:, None] * c[None, :]
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    z, grads = jax.value_and_grad(
        lambda p: jnp.sum(_hidden_out(p[0], p[1], p[2], f32(ax), draw, rate) * f32(c)))((f32(w1), f32(b1), f32(w2)))
    np.testing.assert_allclose(z, np.sum(w2 @ hk * c), rtol=1e-4)
    for got, want in zip(grads, (ax @ dpre.T, dpre.sum(1), hk @ c)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("partitionable", [True, False])
def test_dropout_draw_equals_jax_random_bits(partitionable):
    """The element-wise Threefry of the rate-0.5 draw gives jax's own ``random.bits``, bit for bit: raw and
    typed keys, a folded-in key (as each epoch uses), vmapped over keys (as the batch fit), and the
    non-partitionable layout (where it falls back to ``random.bits``)."""
    import jax.numpy as jnp

    from ugcn.refine.fit import _dropout_draw

    with jax.threefry_partitionable(partitionable):
        for key in (jax.random.PRNGKey(3), jax.random.key(11), jax.random.fold_in(jax.random.PRNGKey(0), 199)):
            for n in (1, 1000, 4096):
                np.testing.assert_array_equal(_dropout_draw(key, n, 32, 0.5), jax.random.bits(key, (n,), jnp.uint32))
        keys = jax.random.split(jax.random.PRNGKey(1), 3)
        draws = jax.jit(jax.vmap(lambda k: _dropout_draw(k, 777, 16, 0.5)))(keys)
        np.testing.assert_array_equal(draws, jax.vmap(lambda k: jax.random.bits(k, (777,), jnp.uint32))(keys))


@pytest.mark.parametrize("hidden", [32, 7])
@pytest.mark.parametrize("rate", [0.5, 0.0])
def test_packed_hidden_layer_value_and_gradient_match_numpy(hidden, rate):
    """The packed hidden layer (unit masks as one uint32 per node, gradients from ``Q = M (A' ⊙ g)ᵀ``) against
    the dense closed form in float64 numpy: z = w2ᵀ(ReLU(W1ᵀA + b1) ⊙ keep), d(c·z)/dW1 = A dpreᵀ,
    /db1 = Σ dpre, /dw2 = h c; with exact zeros among the pre-activations (the padding nodes: A = 0, b1 = 0
    on half the units), whose ReLU gradient is 0."""
    import jax.numpy as jnp

    from ugcn.refine.fit import _dropout_draw, _hidden_out, _packed

    n, f = 1280, 3
    rng = np.random.default_rng(1)
    w1, b1, w2 = rng.normal(size=(f, hidden)), rng.normal(size=hidden) * 0.5, rng.normal(size=hidden)
    b1[::2] = 0.0
    ax, c = rng.normal(size=(f, n)), rng.normal(size=n)
    ax[:, -100:] = 0.0
    draw = None if rate == 0 else _dropout_draw(jax.random.PRNGKey(3), n, hidden, rate)
    assert _packed(hidden, draw)
    bits = np.ones((hidden, n)) if draw is None else (np.asarray(draw)[None, :] >> np.arange(hidden)[:, None]) & 1
    keep = bits / (1 - rate)
    pre = w1.T @ ax + b1[:, None]
    hk = np.maximum(pre, 0) * keep
    dpre = (pre > 0) * keep * w2[:, None] * c[None, :]
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    fn = jax.jit(lambda p: jnp.sum(_hidden_out(p[0], p[1], p[2], f32(ax), draw, rate) * f32(c)))
    value, grads = jax.value_and_grad(fn)((f32(w1), f32(b1), f32(w2)))
    np.testing.assert_allclose(value, np.sum(w2 @ hk * c), rtol=1e-4)
    z = _hidden_out(f32(w1), f32(b1), f32(w2), f32(ax), draw, rate)
    np.testing.assert_allclose(z, w2 @ hk, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, (ax @ dpre.T, dpre.sum(1), hk @ c)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_weighted_bce_value_and_gradient_match_numpy():
    """The fit's loss with its one-exponential gradient against float64 numpy: ``Σ w·bce`` and ``w·(σ(z) - y)``,
    logits from -40 to 40 (where log σ must not round to -inf) and weights from ``loss_weights``."""
    import jax.numpy as jnp

    from ugcn.refine.fit import loss_weights, weighted_bce

    rng = np.random.default_rng(2)
    z = np.concatenate([rng.normal(size=(2, 500)) * 4, np.array([[-40.0, 40.0, 0.0] * 2]).reshape(2, 3)], axis=1)
    y = (rng.uniform(size=z.shape) < 0.3).astype(np.float64)
    m = rng.uniform(size=z.shape) < 0.7
    for loss in ("bce", "balanced_bce"):
        w = np.asarray(loss_weights(jnp.asarray(y, jnp.float32), jnp.asarray(m), loss), np.float64)
        if loss == "bce":
            np.testing.assert_allclose(w, m / m.sum(1, keepdims=True), rtol=1e-6)
        log_p, log_q = -np.logaddexp(0, -z), -np.logaddexp(0, z)  # log σ(z), log(1 - σ(z))
        want = np.sum(w * -(y * log_p + (1 - y) * log_q), axis=1)
        c = np.array([0.7, -1.3])
        w32 = jnp.asarray(w, jnp.float32)

        def objective(v, w32=w32, c=c):
            return jnp.sum(weighted_bce(v, jnp.asarray(y, jnp.float32), w32) * c)

        value, grad = jax.value_and_grad(objective)(jnp.asarray(z, jnp.float32))
        np.testing.assert_allclose(value, np.sum(want * c), rtol=1e-5)
        np.testing.assert_allclose(grad, c[:, None] * w * (1 / (1 + np.exp(-z)) - y), rtol=1e-4, atol=1e-9)
