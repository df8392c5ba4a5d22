"""Training (ugcn.segment.train): the Dice + CE loss by hand, aligned augmentation, training lowers the loss, bad
input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.segment import UNetConfig, init_model
from ugcn.segment.train import Augmentation, augment_sample, dice_ce_loss, train_model

CFG2 = UNetConfig(dims=2, base_features=4, depth=2)


def test_dice_ce_loss_hand_case():
    logits = np.array([[2.0, -1.0, 0.0, 3.0]], np.float32)[..., None]
    label = np.array([[1, 0, 1, 0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    p = 1 / (1 + np.exp(-logits[0, :3, 0].astype(np.float64)))
    y = label[0, :3]
    ce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    dice = (2 * np.sum(p * y) + 1) / (p.sum() + y.sum() + 1)
    loss = jax.jit(dice_ce_loss)
    got = float(loss(jnp.asarray(logits), jnp.asarray(label), jnp.asarray(mask)))
    assert got == pytest.approx(ce + 1 - dice, rel=1e-5)
    # two-class softmax with logits [0, z] equals the sigmoid case
    logits2 = np.concatenate([np.zeros_like(logits), logits], -1)
    got2 = float(loss(jnp.asarray(logits2), jnp.asarray(label), jnp.asarray(mask)))
    assert got2 == pytest.approx(got, rel=1e-5)


def test_augmentation_keeps_image_and_label_aligned():
    label = (np.random.default_rng(0).random((8, 8, 4)) > 0.5).astype(np.int32)
    image = label[..., None].astype(np.float32)
    aug = Augmentation(flips=True, rotate90=True, scale=0.0, shift=0.0, noise=0.0)
    fn = jax.jit(jax.vmap(lambda k: augment_sample(k, image, label, np.ones(label.shape, np.float32), aug)))
    xs, ys, ms = fn(jax.random.split(jax.random.PRNGKey(0), 12))
    np.testing.assert_array_equal(np.asarray(xs)[..., 0], np.asarray(ys))
    assert len({np.asarray(y).tobytes() for y in ys}) > 4  # several different transforms
    assert np.all(np.asarray(ms) == 1)


def test_training_lowers_loss(trained2):
    model, history = trained2
    loss = history["loss"]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    assert loss[-1] < loss[0]
    assert model.training["final_loss"] == loss[-1]


def test_3d_training_runs(trained3):
    model, history = trained3
    cfg = model.config
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    start = init_model(cfg, jax.random.PRNGKey(0))  # train_model's initial weights come from split(key(seed))
    leaves = zip(jax.tree_util.tree_leaves(start.params), jax.tree_util.tree_leaves(model.params))
    assert any(not np.allclose(a, b) for a, b in leaves)


def test_bad_training_input(blob_volume):
    img, lab = blob_volume(0, shape=(8, 8, 4))
    with pytest.raises(ValueError, match="no training volumes"):
        train_model([], [], CFG2, progress=False)
    with pytest.raises(ValueError, match="does not match"):
        train_model([img], [lab[:-1]], CFG2, progress=False)
    with pytest.raises(ValueError, match="label > 0"):
        train_model([img], [lab * 2], CFG2, progress=False)
    with pytest.raises(ValueError, match="labels"):
        train_model([img, img], [lab], CFG2, progress=False)
    with pytest.raises(ValueError, match="patch_size"):
        UNetConfig(dims=3, depth=3, patch_size=(12, 12, 12))
