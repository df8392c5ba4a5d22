"""MC dropout computes the U-Net's stem (layers before the first dropout) once for several passes.

References: the plain network (``UNet.apply`` with ``stage="all"``) with the same dropout keys, and the
single-pass volume function called key by key.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.segment.model import _volume_fn_of_variables, init_model, make_volume_fn
from ugcn.segment.unet import UNet, UNetConfig
from ugcn.uncertainty.sampling import _compiled_sampler, mc_sample


@pytest.mark.parametrize("dims", [2, 3])
def test_stem_then_rest_equals_the_whole_network_with_the_same_key(dims):
    config = UNetConfig(dims=dims, base_features=4, depth=1, dropout_rate=0.5)
    variables = init_model(config, jax.random.PRNGKey(0)).variables
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2,) + (6,) * dims + (1,)).astype(np.float32))
    key = jax.random.PRNGKey(3)
    apply = jax.jit(UNet(config).apply, static_argnames=("stage", "dropout"))  # eagerly: one compile per op
    whole = apply(variables, x, dropout=True, rngs={"dropout": key})
    stem = apply(variables, x, stage="stem")
    assert stem.shape == x.shape[:-1] + (4,)
    split = apply(variables, stem, stage="after_stem", dropout=True, rngs={"dropout": key})
    np.testing.assert_allclose(split, whole, atol=1e-6)
    other = apply(variables, x, dropout=True, rngs={"dropout": jax.random.PRNGKey(4)})
    assert float(jnp.max(jnp.abs(other - whole))) > 1e-3  # the key matters: the check above can fail
    with pytest.raises(ValueError, match="stage"):
        UNet(config).apply(variables, x, stage="middle")


def test_mc_sample_3d_equals_the_plain_network_per_key_on_a_one_patch_volume():
    config = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 8), dropout_rate=0.5)
    model = init_model(config, jax.random.PRNGKey(0))
    image = np.random.default_rng(1).normal(size=(8, 8, 8)).astype(np.float32)
    key = jax.random.key(2)
    result = mc_sample(make_volume_fn(model, stochastic=True), image, key, n_samples=3, chunk_size=2,
                       keep_samples=True)
    z = (image - image.mean()) / image.std()  # the model's default z-score normalisation
    for t, pass_key in enumerate(jax.random.split(key, 3)):
        chunk_key = jax.random.split(pass_key, 1)[0]  # one patch chunk
        logits = UNet(config).apply(model.variables, jnp.asarray(z)[None, ..., None], dropout=True,
                                    rngs={"dropout": chunk_key})[0, ..., 0]
        p = 1.0 / (1.0 + np.exp(-np.asarray(logits)))
        np.testing.assert_allclose(result.samples[t, ..., 1], p, atol=2e-5)


def test_mc_sample_3d_shared_passes_equal_single_passes_over_many_patch_chunks():
    config = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 8), dropout_rate=0.5)
    model = init_model(config, jax.random.PRNGKey(0))
    image = np.random.default_rng(0).normal(size=(13, 10, 9)).astype(np.float32)
    fn = make_volume_fn(model, stochastic=True, batch_size=3)  # 3 chunks of 3 patches (2 x 2 x 2 grid)
    key = jax.random.key(1)
    result = mc_sample(fn, image, key, n_samples=5, chunk_size=2, keep_samples=True)
    single = jax.jit(fn)
    reference = np.stack([np.asarray(single(k, image)) for k in jax.random.split(key, 5)])
    np.testing.assert_allclose(result.samples, reference, atol=1e-5)
    assert np.abs(reference[0] - reference[1]).max() > 1e-3



@pytest.mark.parametrize("batch_size", [1, 2])
def test_mc_sample_3d_equals_the_plain_network_per_key_blended_by_hand(batch_size):
    # 12 x 8 x 8 with 8^3 patches, overlap 0.5, uniform blending: patches at x = 0 and 4, averaged on x 4..7.
    # batch_size 1: 2 patch chunks (keys split(pass_key, 2)[c]); 2: one chunk of 2 rows per pass.
    config = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 8), patch_overlap=0.5,
                        blend="uniform", dropout_rate=0.5)
    model = init_model(config, jax.random.PRNGKey(0))
    image = np.random.default_rng(3).normal(size=(12, 8, 8)).astype(np.float32)
    key = jax.random.key(4)
    fn = make_volume_fn(model, stochastic=True, batch_size=batch_size)
    result = mc_sample(fn, image, key, n_samples=3, chunk_size=3, keep_samples=True)
    z = jnp.asarray((image - image.mean()) / image.std())[..., None]
    patches = jnp.stack([z[0:8], z[4:12]])
    for t, pass_key in enumerate(jax.random.split(key, 3)):
        if batch_size == 1:
            chunk_keys = jax.random.split(pass_key, 2)
            logits = [UNet(config).apply(model.variables, patches[c : c + 1], dropout=True,
                                         rngs={"dropout": chunk_keys[c]})[0, ..., 0] for c in range(2)]
        else:
            both = UNet(config).apply(model.variables, patches, dropout=True,
                                      rngs={"dropout": jax.random.split(pass_key, 1)[0]})
            logits = [both[0, ..., 0], both[1, ..., 0]]
        p0, p1 = (1.0 / (1.0 + np.exp(-np.asarray(lg))) for lg in logits)
        expected = np.zeros((12, 8, 8))
        expected[:4], expected[4:8], expected[8:] = p0[:4], (p0[4:] + p1[:4]) / 2, p1[4:]
        np.testing.assert_allclose(result.samples[t, ..., 1], expected, atol=2e-5)
        np.testing.assert_allclose(result.samples[t, ..., 0], 1.0 - expected, atol=2e-5)
    assert np.abs(result.samples[0] - result.samples[1]).max() > 1e-3  # the keys matter

@pytest.mark.parametrize("dims", [2, 3])
def test_channel_dropout_equals_flax_dropout_and_chunks_equal_the_whole_batch(dims):
    import flax.linen as nn

    from ugcn.segment.unet import ChannelDropout

    x = jnp.asarray(np.random.default_rng(0).normal(size=(7,) + (3,) * dims + (5,)).astype(np.float32))
    key = jax.random.PRNGKey(5)
    flax_out = nn.Dropout(0.4, broadcast_dims=tuple(range(1, dims + 1))).apply(
        {}, x, deterministic=False, rngs={"dropout": key})
    ours = ChannelDropout(0.4, dims).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(ours, flax_out)
    assert float(jnp.mean(ours == 0)) > 0.1  # something was dropped: the comparison can fail
    # Rows 0-2, 3-5 and 6 (+ 2 padding rows) of the batch of 7, each with the whole batch's masks.
    chunks = [ChannelDropout(0.4, dims).apply({}, jnp.concatenate([x, x[:2]])[s:s + 3], deterministic=False,
                                              rows=(7, s), rngs={"dropout": key}) for s in (0, 3, 6)]
    np.testing.assert_array_equal(jnp.concatenate(chunks)[:7], flax_out)


# The plain network with dropout on, jitted once for the three chunkings below (run eagerly, it compiled each
# operation for each shape: most of those tests' time).
_plain = jax.jit(lambda config, variables, x, key: UNet(config).apply(variables, x, dropout=True,
                                                                      rngs={"dropout": key}), static_argnums=0)


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_mc_sample_2d_equals_the_plain_network_on_all_slices_per_key(batch_size):
    """Every chunking of the slices (and of the passes) gives the samples of the whole stack of slices in one
    call of the plain network with the pass's key."""
    config = UNetConfig(dims=2, base_features=4, depth=2, dropout_rate=0.5)
    model = init_model(config, jax.random.PRNGKey(0))
    image = np.random.default_rng(1).normal(size=(8, 12, 7)).astype(np.float32)
    key = jax.random.key(2)
    fn = make_volume_fn(model, stochastic=True, batch_size=batch_size)
    result = mc_sample(fn, image, key, n_samples=3, chunk_size=2, keep_samples=True)
    z = (image - image.mean()) / image.std()  # the model's default z-score normalisation
    slices = jnp.asarray(np.transpose(z, (2, 0, 1)))[..., None]  # [Z, X, Y, 1], sizes already multiples of 4
    for t, pass_key in enumerate(jax.random.split(key, 3)):
        logits = _plain(config, model.variables, slices, pass_key)[..., 0]
        p = np.transpose(1.0 / (1.0 + np.exp(-np.asarray(logits))), (1, 2, 0))
        np.testing.assert_allclose(result.samples[t, ..., 1], p, atol=2e-5)
    single = np.asarray(jax.jit(fn)(jax.random.split(key, 3)[1], image))
    np.testing.assert_allclose(single, result.samples[1], atol=2e-5)
    assert np.abs(result.samples[0] - result.samples[1]).max() > 1e-3


@pytest.fixture
def traced_with(monkeypatch):
    """``set(name, value)``: a module constant that the 2D model reads while it is traced, on fresh programs (the
    volume functions and samplers are cached per model and shape), which are dropped again afterwards."""
    def clear():
        _volume_fn_of_variables.cache_clear()
        _compiled_sampler.cache_clear()

    def set_constant(name, value):
        monkeypatch.setattr(name, value)
        clear()

    yield set_constant
    clear()


@pytest.mark.parametrize("batch_size, pixels_per_call, shared_stem_bytes",
                         [(None, None, None), (3, None, None), (None, 864, None), (None, None, 0), (3, None, 0)])
def test_mc_sample_2d_statistics_equal_sums_of_the_plain_network_per_key(batch_size, pixels_per_call,
                                                                          shared_stem_bytes, traced_with):
    """The 2D sampler sums the passes in the network's slice-major layout (in-plane and chunk padding
    included) and crops and transposes the sums once: they must be the sums of the plain network's samples.
    With 864 pixels per call, one pass runs 6 of the 7 slices per call (padded to 12 rows) and a chunk of two
    passes 3 (padded to 9): the raw layout's padding depends on the passes per call. The stem over all slices
    is computed once per run (the default at this size), or per chunk of slices and passes (a budget of 0)."""
    if pixels_per_call is not None:
        traced_with("ugcn.segment.model.SLICE_PIXELS_PER_CALL", pixels_per_call)
    if shared_stem_bytes is not None:
        traced_with("ugcn.segment.model.SHARED_STEM_BYTES", shared_stem_bytes)
    config = UNetConfig(dims=2, base_features=4, depth=2, dropout_rate=0.5)
    model = init_model(config, jax.random.PRNGKey(0))
    image = np.random.default_rng(3).normal(size=(9, 10, 7)).astype(np.float32)  # padded to 12 x 12 in-plane
    key = jax.random.key(4)
    T = 5  # not a multiple of the chunk: a padding pass of weight 0
    result = mc_sample(make_volume_fn(model, stochastic=True, batch_size=batch_size), image, key, n_samples=T,
                       chunk_size=2)
    z = (image - image.mean()) / image.std()
    slices = jnp.asarray(np.transpose(np.pad(z, ((0, 3), (0, 2), (0, 0)), mode="edge"), (2, 0, 1)))[..., None]
    samples = []
    for pass_key in jax.random.split(key, T):
        logits = _plain(config, model.variables, slices, pass_key)[..., 0]
        p = np.transpose(1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64))), (1, 2, 0))[:9, :10]
        samples.append(np.stack([1.0 - p, p], axis=-1))
    samples = np.stack(samples)
    assert float(result.stats.count) == T
    np.testing.assert_allclose(result.stats.sum_p, samples.sum(0), atol=1e-4)
    np.testing.assert_allclose(result.stats.sum_p2, (samples**2).sum(0), atol=1e-4)
    np.testing.assert_allclose(result.stats.sum_plogp, (samples * np.log(samples)).sum(0), atol=1e-4)
    assert np.abs(samples[0] - samples[1]).max() > 1e-3


def test_given_masks_run_several_keys_as_one_batch_like_the_network_per_key():
    """``dropout_masks`` records each key's masks as ``apply(..., rngs={"dropout": key})`` draws them; given
    back (rows per pass, pass-major), one call on the passes stacked in the batch equals one call per key."""
    from ugcn.segment.unet import MASKS, dropout_masks, rows_of_masks

    config = UNetConfig(dims=2, base_features=4, depth=2, dropout_rate=0.5)
    variables = init_model(config, jax.random.PRNGKey(0)).variables
    unet = UNet(config)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 8, 8, 1)).astype(np.float32))
    keys = jax.random.split(jax.random.key(1), 3)
    # jitted (one program per call shape instead of one per operation per shape, run eagerly: most of the time)
    apply = jax.jit(unet.apply, static_argnames=("stage", "dropout"))
    stem = apply(variables, x, stage="stem")
    masks = dropout_masks(unet, variables, stem[:1], keys, stage="after_stem", total=5)
    assert all(m.shape[:2] == (3, 5) and m.dtype == jnp.bool_ for m in jax.tree_util.tree_leaves(masks))
    per_key = [apply(variables, x, dropout=True, rngs={"dropout": key}) for key in keys]
    for offset, n in ((0, 5), (3, 2)):  # the whole batch, and rows 3-4 as a chunk of a larger call
        given = jax.tree_util.tree_map(
            lambda m, o=offset, n=n: jax.vmap(lambda mp: rows_of_masks(mp, o, n))(m).reshape((3 * n,) + m.shape[2:]),
            masks)
        tiled = apply({**variables, MASKS: given}, jnp.tile(stem[offset:offset + n], (3, 1, 1, 1)),
                      stage="after_stem", dropout=True)
        # The stem given once for the 3 passes (its masks go into the next convolution's kernel).
        shared = apply({**variables, MASKS: given}, stem[offset:offset + n], stage="after_stem", dropout=True)
        for s in range(len(keys)):
            ref = per_key[s][offset:offset + n]
            np.testing.assert_allclose(tiled[s * n:(s + 1) * n], ref, atol=1e-5)
            np.testing.assert_allclose(shared[s * n:(s + 1) * n], ref, atol=1e-5)
    bad = jax.tree_util.tree_map(lambda m: m[0], masks)  # all 5 rows for an input of 3 x 5 rows
    with pytest.raises(ValueError, match="mask"):
        unet.apply({**variables, MASKS: bad}, jnp.tile(stem, (3, 1, 1, 1)), stage="after_stem", dropout=True)


def test_masked_input_conv_equals_the_convolutions_of_the_masked_copies():
    from jax import lax

    from ugcn.segment.unet import masked_input_conv

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 5)).astype(np.float32))
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 4)).astype(np.float32))
    scales = jnp.asarray((rng.random((3, 2, 5)) < 0.6) / 0.6, jnp.float32)  # [S, B, Ci]
    dims = ("NHWC", "HWIO", "NHWC")
    out = masked_input_conv(lax.conv_general_dilated, scales)(x, w, (1, 1), ((1, 1), (1, 1)),
                                                              dimension_numbers=dims)
    assert out.shape == (6, 9, 7, 4)
    for s in range(3):
        want = lax.conv_general_dilated(x * scales[s][:, None, None, :], w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=dims)
        np.testing.assert_allclose(out[2 * s:2 * s + 2], want, rtol=1e-5, atol=1e-5)
