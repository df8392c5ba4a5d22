"""MC sampling (ugcn.uncertainty.sampling): streaming vs all samples, keys, chunking, sample-map loading, one
sampler per architecture."""
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from ugcn.uncertainty import (
    estimator_maps,
    load_sample_maps,
    mc_sample,
    samples_from_probability_maps,
    stats_from_samples,
)

SHAPE = (5, 4, 3)
T = 7


def toy_volume_fn(key, image):
    """A stochastic 3-class 'segmenter': softmax of the image plus key-dependent noise, f32[X, Y, Z, 3]."""
    noise = jax.random.normal(key, image.shape + (3,))
    logits = jnp.stack([image, -image, 0.5 * image], -1) + noise
    return jax.nn.softmax(logits, -1)


def deterministic_fn(key, image):
    """Ignores the key: every pass is the same binary prediction (with exact 0 and 1 voxels)."""
    p = jnp.clip(image, 0.0, 1.0)
    return jnp.stack([1.0 - p, p], -1)


@pytest.fixture(scope="module")
def image():
    return jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), jnp.float32)


@pytest.fixture(scope="module")
def reference_samples(image):
    # Independent reference: one plain call per split key, no scan/vmap/chunks.
    keys = jax.random.split(jax.random.key(42), T)
    single = jax.jit(toy_volume_fn)
    return np.stack([np.asarray(single(k, image)) for k in keys])


def np_stats(samples):
    s = np.asarray(samples, np.float64)
    return {
        "sum_p": s.sum(0),
        "sum_p2": (s * s).sum(0),
        "sum_plogp": np.where(s > 0, s * np.log(np.where(s > 0, s, 1.0)), 0.0).sum(0),
    }


@pytest.mark.parametrize("chunk,streams", [(1, 1), (3, 1), (T, 1), (3, 2), (2, 3)])  # 3: T not a multiple of the chunk
def test_streaming_equals_all_samples(image, reference_samples, chunk, streams):
    result = mc_sample(toy_volume_fn, image, jax.random.key(42), n_samples=T, chunk_size=chunk, streams=streams)
    assert result.samples is None
    assert float(result.stats.count) == T
    ref = np_stats(reference_samples)
    for field in ("sum_p", "sum_p2", "sum_plogp"):
        np.testing.assert_allclose(getattr(result.stats, field), ref[field], atol=2e-5, err_msg=field)


@pytest.mark.parametrize("streams", [1, 2])
def test_keep_samples(image, reference_samples, streams):
    result = mc_sample(toy_volume_fn, image, jax.random.key(42), n_samples=T, chunk_size=3, keep_samples=True,
                       streams=streams)
    assert result.samples.shape == (T,) + SHAPE + (3,)
    np.testing.assert_allclose(result.samples, reference_samples, atol=1e-6)
    kept = stats_from_samples(result.samples)
    np.testing.assert_allclose(kept.sum_p2, result.stats.sum_p2, atol=1e-5)


def test_same_key_same_maps_different_key_different(image):
    run = lambda seed: estimator_maps(  # noqa: E731
        ["entropy", "variance"], mc_sample(toy_volume_fn, image, jax.random.key(seed), n_samples=T, chunk_size=3).stats
    )
    a, b, c = run(1), run(1), run(2)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.allclose(a[name], c[name])


def test_deterministic_fn_has_zero_variance_and_mi(image):
    img = jnp.asarray(np.random.default_rng(1).choice([0.0, 0.3, 1.0], size=SHAPE), jnp.float32)
    result = mc_sample(deterministic_fn, img, jax.random.key(0), n_samples=T, chunk_size=3)
    maps = estimator_maps(["variance", "mutual_information", "entropy", "expected_entropy"], result.stats)
    np.testing.assert_allclose(maps["variance"], 0.0, atol=1e-6)
    np.testing.assert_allclose(maps["mutual_information"], 0.0, atol=1e-5)
    np.testing.assert_allclose(maps["entropy"], maps["expected_entropy"], atol=1e-5)
    # exact 0/1 voxels: exactly zero entropy, no NaN
    hard = np.asarray(img) != 0.3
    assert np.all(np.asarray(maps["entropy"])[hard] == 0.0)


def test_mc_sample_input_errors(image):
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="n_samples"):
        mc_sample(toy_volume_fn, image, key, n_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        mc_sample(toy_volume_fn, image, key, chunk_size=1.5)
    with pytest.raises(ValueError, match="NaN"):
        mc_sample(toy_volume_fn, image.at[0, 0, 0].set(jnp.nan), key, n_samples=2)
    with pytest.raises(ValueError, match="C >= 2"):
        mc_sample(lambda k, x: x[..., None], image, key, n_samples=2)
    with pytest.raises(ValueError, match="streams"):
        mc_sample(toy_volume_fn, image, key, n_samples=2, streams=0)


@pytest.mark.parametrize("n_samples,chunk,streams,expected", [
    (20, 4, 2, [(0, 10, 5), (10, 10, 5)]),  # the default: 2 x 2 chunks of 5, no padding pass
    (7, 4, 2, [(0, 4, 4), (4, 3, 3)]),
    (7, 4, 1, [(0, 7, 4)]),
    (14, 4, 2, [(0, 7, 4), (7, 7, 4)]),  # 7 is prime: its only divisor up to 5 is 1, so the chunk stays 4
    (3, 4, 5, [(0, 1, 1), (1, 1, 1), (2, 1, 1)]),  # never more streams than passes
])
def test_stream_plan(n_samples, chunk, streams, expected):
    from ugcn.uncertainty.sampling import stream_plan

    assert stream_plan(n_samples, chunk, streams) == expected


@pytest.mark.parametrize("n_samples,chunk,streams,expected", [
    (20, 4, 2, [(0, 10, 2), (10, 10, 2)]),  # 2D default: the chunk of 4 shared, 2 x 5 chunks of 2, no padding
    (7, 4, 2, [(0, 4, 2), (4, 3, 3)]),  # aim 2: 4 -> 2, 3 -> 3 (a divisor up to aim + 1)
    (7, 4, 1, [(0, 7, 4)]),
    (14, 4, 2, [(0, 7, 1), (7, 7, 1)]),  # 7 is prime: its divisor 1 is half the aim of 2
    (14, 8, 2, [(0, 7, 4), (7, 7, 4)]),  # aim 4: no divisor of 7 within 2..5 but 1, so the aim, one padding pass
])
def test_stream_plan_shared_chunk(n_samples, chunk, streams, expected):
    from ugcn.uncertainty.sampling import stream_plan

    assert stream_plan(n_samples, chunk, streams, shared_chunk=True) == expected


def test_default_streams():
    from ugcn.segment import UNetConfig, init_model, make_volume_fn
    from ugcn.segment.model import BoundVolumeFn
    from ugcn.uncertainty.sampling import MODEL_STREAMS, _split_weights, default_streams, model_dims

    fn2d = make_volume_fn(init_model(UNetConfig(dims=2, base_features=2, depth=1), jax.random.PRNGKey(0)),
                          stochastic=True)
    fn3d = make_volume_fn(init_model(UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 8)),
                                     jax.random.PRNGKey(0)), stochastic=True)
    cpu = jax.default_backend() == "cpu"
    assert model_dims(_split_weights(fn2d)[0]) == 2 and model_dims(_split_weights(fn3d)[0]) == 3
    assert default_streams(fn2d, 20) == (2 if cpu else 1)
    assert default_streams(fn3d, 20) == (MODEL_STREAMS[3] if cpu else 1)
    assert default_streams(fn3d, 8) == (MODEL_STREAMS[3] if cpu else 1)
    assert default_streams(fn2d, 7) == 1  # an odd T would compile two programs
    assert default_streams(fn3d, 7) == 1
    assert default_streams(toy_volume_fn, 20) == 1

    # A foreign function that looks like a model (weights apart, batched passes in a raw layout, dims) is not one.
    class LookalikeApply:
        dims = 2

        def passes_raw(self, variables, keys, image):  # what default_streams used to take for a 2D model
            raise NotImplementedError

        def __call__(self, variables, key, image):
            return toy_volume_fn(key, image)

    lookalike = BoundVolumeFn(LookalikeApply(), {})
    assert model_dims(_split_weights(lookalike)[0]) is None
    assert default_streams(lookalike, 20) == 1
    # The default path on a 2D model (two streams on the CPU) against single passes of the same function.
    image2d = np.random.default_rng(3).normal(size=(8, 8, 3)).astype(np.float32)
    key = jax.random.PRNGKey(5)
    result = mc_sample(fn2d, image2d, key, n_samples=4, keep_samples=True)
    ref = np.stack([np.asarray(fn2d(k, image2d)) for k in jax.random.split(key, 4)])
    np.testing.assert_allclose(np.asarray(result.samples), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.stats.sum_p), ref.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_samples,streams", [(6, None), (6, 2), (5, 2), (6, 3)])
def test_3d_streams_equal_single_passes(n_samples, streams):
    """A 3D model's passes as one program (``None``: the default) or over streams equal a loop of single passes with
    the same keys, samples and sums (independent reference: the single-pass function, one key at a time)."""
    from ugcn.segment import UNetConfig, init_model, make_volume_fn

    fn3d = make_volume_fn(init_model(UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 8)),
                                     jax.random.PRNGKey(1)), stochastic=True)
    image = np.random.default_rng(4).normal(size=(12, 10, 9)).astype(np.float32)  # 8 overlapping patches
    key = jax.random.PRNGKey(6)
    result = mc_sample(fn3d, image, key, n_samples=n_samples, chunk_size=4, keep_samples=True, streams=streams)
    single = jax.jit(fn3d)
    ref = np.stack([np.asarray(single(k, image)) for k in jax.random.split(key, n_samples)])
    np.testing.assert_allclose(np.asarray(result.samples), ref, rtol=1e-5, atol=1e-6)
    stats = np_stats(ref)
    for field in ("sum_p", "sum_p2", "sum_plogp"):
        np.testing.assert_allclose(getattr(result.stats, field), stats[field], rtol=1e-5, atol=2e-5, err_msg=field)
    assert float(result.stats.count) == n_samples


def write_nifti(path, array):
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [10, -20, 5]
    nib.save(nib.Nifti1Image(np.asarray(array, np.float32), affine), str(path))
    return affine


def test_samples_from_probability_maps():
    fg = np.random.default_rng(2).random((3,) + SHAPE).astype(np.float32)
    samples = samples_from_probability_maps(fg)
    assert samples.shape == (3,) + SHAPE + (2,)
    np.testing.assert_array_equal(samples[..., 1], fg)
    np.testing.assert_allclose(samples[..., 0], 1 - fg)
    multi = np.stack([fg, 1 - fg], -1)
    np.testing.assert_array_equal(samples_from_probability_maps(multi), multi)
    with pytest.raises(ValueError, match="sum to 1"):
        samples_from_probability_maps(np.stack([fg, fg], -1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        samples_from_probability_maps(fg * 2)
    with pytest.raises(ValueError, match="NaN"):
        samples_from_probability_maps(np.where(fg > 0.5, np.nan, fg))
    with pytest.raises(ValueError, match="T, X, Y, Z"):
        samples_from_probability_maps(fg[0])


def test_load_sample_maps(tmp_path):
    maps = np.random.default_rng(3).random(SHAPE + (4,)).astype(np.float32)  # (X, Y, Z, T) on disk
    affine = write_nifti(tmp_path / "samples.nii.gz", maps)
    samples, volume = load_sample_maps(tmp_path / "samples.nii.gz")
    assert samples.shape == (4,) + SHAPE + (2,)
    np.testing.assert_allclose(samples[..., 1], np.moveaxis(maps, -1, 0), atol=1e-6)
    np.testing.assert_allclose(volume.affine, affine)


@pytest.mark.parametrize(
    "array,match",
    [
        (np.full(SHAPE + (3,), 1.5), r"\[0, 1\]"),
        (np.full(SHAPE + (3,), -0.1), r"\[0, 1\]"),
        (np.where(np.arange(60).reshape(SHAPE + (1,)) % 2, np.nan, 0.5) * np.ones(3), "NaN"),
        (np.full(SHAPE, 0.5), "4D"),
    ],
)
def test_load_sample_maps_errors(tmp_path, array, match):
    path = tmp_path / "bad.nii.gz"
    write_nifti(path, array)
    with pytest.raises(ValueError, match=match) as err:
        load_sample_maps(path)
    assert "bad.nii.gz" in str(err.value)


def test_models_of_one_architecture_share_a_sampler_but_keep_their_weights():
    """Two models with the same config reuse one compiled sampler, and each still gets its own weights."""
    import jax
    import numpy as np

    from ugcn.segment import UNetConfig, init_model, make_volume_fn
    from ugcn.uncertainty import mc_sample
    from ugcn.uncertainty.sampling import _compiled_sampler

    # A narrow, shallow net (no layer reaches the Winograd forms' 8 channels): the sharing is the point, and it
    # compiles ~5x faster than base 4 / depth 2.
    config = UNetConfig(dims=2, base_features=2, depth=1)
    image = np.random.default_rng(0).normal(size=(16, 16, 4)).astype(np.float32)
    model_a = init_model(config, jax.random.PRNGKey(1))
    model_b = init_model(config, jax.random.PRNGKey(2))
    key = jax.random.PRNGKey(0)
    a = mc_sample(make_volume_fn(model_a, stochastic=True), image, key, n_samples=3, chunk_size=3)
    misses = _compiled_sampler.cache_info().misses
    b = mc_sample(make_volume_fn(model_b, stochastic=True), image, key, n_samples=3, chunk_size=3)
    assert _compiled_sampler.cache_info().misses == misses
    # Independent reference: three single passes of model B's own function.
    fn_b = make_volume_fn(model_b, stochastic=True)
    ref = sum(np.asarray(fn_b(k, image)) for k in jax.random.split(key, 3))
    np.testing.assert_allclose(np.asarray(b.stats.sum_p), ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(a.stats.sum_p), np.asarray(b.stats.sum_p))
