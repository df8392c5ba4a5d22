"""Whole-volume inference (ugcn.segment.model) against the U-Net applied directly: 2D slices, 3D patches, dropout
on/off."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.segment import UNet, UNetConfig, init_model, make_volume_fn, predict_mask, predict_probabilities
from ugcn.segment.model import blend_weights, patch_starts


def zscore(image):
    x = image.astype(np.float64)
    return ((x - x.mean()) / x.std()).astype(np.float32)


# jitted: run eagerly, the U-Net compiled each operation for each shape (most of these tests' time)
_apply = jax.jit(lambda config, variables, x: UNet(config).apply(variables, x, train=False, dropout=False),
                 static_argnums=0)


def direct_probs(model, x):
    """Reference: the U-Net applied to one batch, sigmoid -> [1-p, p] written out in numpy."""
    logits = np.asarray(_apply(model.config, model.variables, jnp.asarray(x)))
    p = 1.0 / (1.0 + np.exp(-logits[..., 0].astype(np.float64)))
    return np.stack([1 - p, p], -1)


def test_2d_matches_slice_by_slice_reference(model2, image):
    probs = predict_probabilities(model2, image)
    assert probs.shape == image.shape + (2,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Reference: z-score in numpy, edge-pad each axial slice to a multiple of 4, apply, crop.
    x = np.pad(zscore(image), ((0, 3), (0, 2), (0, 0)), mode="edge")  # 21 -> 24, 18 -> 20
    ref = direct_probs(model2, np.transpose(x, (2, 0, 1))[..., None])[:, :21, :18]
    np.testing.assert_allclose(probs, np.transpose(ref, (1, 2, 0, 3)), atol=2e-5)


def test_3d_single_patch_matches_reference(model3, blob_volume):
    small, _ = blob_volume(3, shape=(10, 7, 5))  # smaller than the patch on every axis
    probs = predict_probabilities(model3, small)
    assert probs.shape == (10, 7, 5, 2)
    x = np.pad(zscore(small), ((0, 2), (0, 5), (0, 3)), mode="edge")
    ref = direct_probs(model3, x[None, ..., None])[0, :10, :7, :5]
    np.testing.assert_allclose(probs, ref, atol=2e-5)


def test_3d_overlapping_patches(model3, blob_volume):
    model = model3
    img, _ = blob_volume(4, shape=(23, 12, 11))  # patch grid: x starts 0, 6, 11; y 0; z 0, 3
    probs = predict_probabilities(model, img)
    assert probs.shape == (23, 12, 11, 2)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # A voxel covered only by the first patch (corner) equals that patch's own prediction.
    x = zscore(img)
    first = direct_probs(model, x[None, :12, :12, :8, None])[0]
    np.testing.assert_allclose(probs[:6, :, :3], first[:6, :, :3], atol=2e-5)
    # Elsewhere the blend differs from the first patch alone (overlaps really are averaged).
    assert np.abs(probs[6:12, :, 3:8] - first[6:12, :, 3:8]).max() > 1e-4


def test_patch_grid_covers_volume():
    starts = patch_starts((23, 13, 11), (12, 12, 8), 0.5)
    cover = np.zeros((23, 13, 11), int)
    for s in starts:
        cover[s[0] : s[0] + 12, s[1] : s[1] + 12, s[2] : s[2] + 8] += 1
    assert cover.min() >= 1
    assert sorted(set(starts[:, 0])) == [0, 6, 11] and sorted(set(starts[:, 2])) == [0, 3]
    w = blend_weights((12, 12, 8), "gaussian")
    assert w.shape == (12, 12, 8) and w.min() > 0 and np.isclose(w.max(), 1.0)
    assert w[5, 5, 3] > w[0, 0, 0]
    np.testing.assert_array_equal(blend_weights((12, 12, 8), "uniform"), 1.0)


def test_multichannel_softmax_shapes():
    cfg = UNetConfig(dims=2, in_channels=2, num_classes=3, base_features=4, depth=1)
    model = init_model(cfg, jax.random.PRNGKey(2))
    img = np.random.default_rng(0).normal(size=(6, 5, 3, 2)).astype(np.float32)
    probs = predict_probabilities(model, img)
    assert probs.shape == (6, 5, 3, 3)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert predict_mask(model, img).max() <= 2


@pytest.fixture(scope="module")
def samples2(trained2, image):
    fn = jax.jit(jax.vmap(make_volume_fn(trained2[0], stochastic=True), in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(5), 3)
    return np.asarray(fn(jnp.stack([keys[0], keys[1], keys[0]]), image))


def test_dropout_on_differs_and_same_key_repeats(samples2, trained2, image):
    model = trained2[0]
    assert samples2.shape == (3,) + image.shape + (2,)
    np.testing.assert_allclose(samples2.sum(-1), 1.0, atol=1e-5)
    assert np.abs(samples2[0] - samples2[1]).max() > 1e-3
    np.testing.assert_array_equal(samples2[0], samples2[2])
    # vmapped sample == unbatched call with the same key
    key_1 = jax.random.split(jax.random.PRNGKey(5), 3)[1]
    single = np.asarray(jax.jit(make_volume_fn(model, stochastic=True))(key_1, image))
    np.testing.assert_allclose(single, samples2[1], atol=1e-5)


def test_dropout_off_ignores_key(model2, image):
    fn = jax.jit(make_volume_fn(model2, stochastic=False))
    a = np.asarray(fn(jax.random.PRNGKey(0), image))
    b = np.asarray(fn(jax.random.PRNGKey(1), image))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, predict_probabilities(model2, image), atol=1e-6)


def test_3d_dropout_on_differs(trained3, blob_volume):
    model = trained3[0]  # patch (8, 8, 4): 4 patches, in chunks of 3 -> the lax.scan path
    img, _ = blob_volume(4, shape=(12, 9, 6))
    fn = jax.jit(jax.vmap(make_volume_fn(model, stochastic=True, batch_size=3), in_axes=(0, None)))
    s = np.asarray(fn(jax.random.split(jax.random.PRNGKey(0), 2), img))
    assert s.shape == (2, 12, 9, 6, 2)
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    assert np.abs(s[0] - s[1]).max() > 1e-3


def test_bad_images(model2):
    with pytest.raises(ValueError, match="3D volume"):
        predict_probabilities(model2, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="channel"):
        predict_probabilities(model2, np.zeros((4, 4, 4, 2), np.float32))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_probabilities(model2, bad)
    with pytest.raises(ValueError, match="NaN"):
        make_volume_fn(model2, stochastic=True)(jax.random.PRNGKey(0), bad)
