"""Test-time augmentation as a sample source (ugcn.uncertainty.tta), against a plain numpy loop over the same
transforms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.uncertainty import estimator_maps, mc_sample
from ugcn.uncertainty.tta import _compiled_tta_sampler, tta_sample, tta_transforms

SHAPE = (9, 8, 3)


def intensity_model(key, image):
    """Equivariant: a per-voxel function of the intensity (commutes with flips and shifts)."""
    p = jax.nn.sigmoid(2.0 * image)
    return jnp.stack([1.0 - p, p], -1)


def np_position_model(image):
    """Not equivariant: the foreground probability depends on the voxel position too (numpy version)."""
    x = np.arange(image.shape[0], dtype=np.float64)[:, None, None]
    y = np.arange(image.shape[1], dtype=np.float64)[None, :, None]
    p = 1.0 / (1.0 + np.exp(-(image + 0.4 * x - 0.3 * y)))
    return np.stack([1.0 - p, p], -1)


def position_model(key, image):
    x = jnp.arange(image.shape[0], dtype=jnp.float32)[:, None, None]
    y = jnp.arange(image.shape[1], dtype=jnp.float32)[None, :, None]
    p = jax.nn.sigmoid(image + 0.4 * x - 0.3 * y)
    return jnp.stack([1.0 - p, p], -1)


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_transforms_deterministic_distinct_identity_first():
    a = tta_transforms(12, seed=3)
    np.testing.assert_array_equal(a, tta_transforms(12, seed=3))
    assert not np.array_equal(a, tta_transforms(12, seed=4))
    assert a.shape == (12, 6) and a.dtype == np.int32
    np.testing.assert_array_equal(a[0], 0)
    assert len({tuple(r) for r in a}) == 12  # drawn without repetition
    assert set(np.unique(a[:, :3])) <= {0, 1} and np.all(a[:, 2] == 0)  # no Z flip by default
    assert np.abs(a[:, 3:5]).max() <= 2 and np.all(a[:, 5] == 0)
    # more passes than candidates: each candidate appears before any repeats
    only_flips = tta_transforms(7, seed=0, shifts=(0,))
    assert len({tuple(r) for r in only_flips[:4]}) == 4
    no_identity = tta_transforms(4, seed=0, shifts=(0,), include_identity=False)
    assert {tuple(r[:2]) for r in no_identity} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    with pytest.raises(ValueError, match="no transform besides the identity"):
        tta_transforms(3, flip_axes=(), shifts=(0,))
    with pytest.raises(ValueError, match="flip_axes"):
        tta_transforms(3, flip_axes=(0, 3))
    with pytest.raises(ValueError, match="integers"):
        tta_transforms(3, shifts=(0.5,))


@pytest.mark.parametrize("chunk", [3])  # T = 7: the last chunk is padded
def test_equivariant_model_inverts_exactly(image, chunk):
    result = tta_sample(intensity_model, image, seed=1, n_samples=7, chunk_size=chunk, keep_samples=True)
    plain = 1.0 / (1.0 + np.exp(-2.0 * image.astype(np.float64)))
    np.testing.assert_allclose(result.samples[..., 1], np.broadcast_to(plain, (7,) + SHAPE), atol=1e-6)
    maps = estimator_maps(["variance", "variation_ratio"], result.stats, result.samples)
    np.testing.assert_allclose(maps["variance"], 0.0, atol=1e-6)
    np.testing.assert_array_equal(maps["variation_ratio"], 0.0)


def test_multimodal_image_and_z_axis(image):
    multi = np.stack([image, -image], -1)
    model = lambda k, x: intensity_model(k, x[..., 0] - 0.5 * x[..., 1])  # noqa: E731
    result = tta_sample(model, multi, seed=2, n_samples=5, flip_axes=(0, 1, 2), shift_axes=(0, 1, 2),
                        shifts=(-1, 0, 1), keep_samples=True)
    plain = 1.0 / (1.0 + np.exp(-3.0 * image.astype(np.float64)))
    np.testing.assert_allclose(result.samples[..., 1], np.broadcast_to(plain, (5,) + SHAPE), atol=1e-6)


@pytest.mark.parametrize("chunk", [4])  # T = 6: the last chunk is padded
def test_position_dependent_model_matches_numpy_loop(image, chunk, np_tta_samples):
    t = 6
    result = tta_sample(position_model, image, seed=5, n_samples=t, chunk_size=chunk, keep_samples=True)
    ref = np_tta_samples(np_position_model, image, tta_transforms(t, seed=5), 2)
    np.testing.assert_allclose(result.samples, ref, atol=1e-5)
    np.testing.assert_allclose(result.stats.sum_p, ref.sum(0), atol=1e-5)
    np.testing.assert_allclose(result.stats.sum_p2, (ref * ref).sum(0), atol=1e-5)
    assert float(result.stats.count) == t
    # the samples really differ, and streaming (no samples kept) gives the same statistics
    assert np.abs(ref[1:] - ref[:1]).max() > 0.1
    streamed = tta_sample(position_model, image, seed=5, n_samples=t, chunk_size=chunk)
    assert streamed.samples is None
    np.testing.assert_allclose(streamed.stats.sum_p, result.stats.sum_p, atol=1e-6)


def test_key_seeds_transforms_and_one_program_per_architecture(image, np_tta_samples):
    key = jax.random.key(7)
    a = tta_sample(position_model, image, key, n_samples=4, keep_samples=True)
    b = tta_sample(position_model, image, key, n_samples=4, keep_samples=True)
    np.testing.assert_array_equal(a.samples, b.samples)
    misses = _compiled_tta_sampler.cache_info().misses
    c = tta_sample(position_model, image, jax.random.key(8), n_samples=4, keep_samples=True)
    d = tta_sample(position_model, image, seed=11, n_samples=4, keep_samples=True)
    assert _compiled_tta_sampler.cache_info().misses == misses  # new seeds, same compiled sampler
    assert not np.allclose(a.samples, c.samples) and not np.allclose(c.samples, d.samples)
    ref = np_tta_samples(np_position_model, image, tta_transforms(4, seed=11), 2)
    np.testing.assert_allclose(d.samples, ref, atol=1e-5)


def test_stochastic_fn_combines_tta_with_mc(image):
    """Pass t gets key split(key, T)[t], as in mc_sample: with shifts and flips off, TTA == MC dropout."""

    def noisy(key, x):  # key-dependent without compiling a random number generator
        p = jax.nn.sigmoid(x + (jax.random.key_data(key)[-1] % 17).astype(jnp.float32) / 17.0)
        return jnp.stack([1.0 - p, p], -1)

    key = jax.random.key(3)
    tta = tta_sample(noisy, image, key, seed=0, n_samples=5, flip_axes=(), shifts=(0,), include_identity=False)
    mc = mc_sample(noisy, image, key, n_samples=5)
    np.testing.assert_allclose(tta.stats.sum_p, mc.stats.sum_p, atol=1e-6)


def test_tta_input_errors(image):
    with pytest.raises(ValueError, match="n_samples"):
        tta_sample(intensity_model, image, n_samples=0)
    with pytest.raises(ValueError, match="NaN"):
        tta_sample(intensity_model, np.full(SHAPE, np.nan, np.float32), n_samples=2)
    with pytest.raises(ValueError, match="shift_axes"):
        tta_sample(intensity_model, image, n_samples=2, shift_axes=(5,))
