"""Tests of ugcn.segment: U-Nets, whole-volume inference, training, checkpoints."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ugcn.segment import (
    Normalization,
    UNet,
    UNetConfig,
    init_model,
    load_model,
    make_volume_fn,
    predict_mask,
    predict_probabilities,
    save_model,
)
from ugcn.segment.model import blend_weights, patch_starts
from ugcn.segment.train import NO_AUGMENTATION, Augmentation, augment_sample, dice_ce_loss, train_model
from ugcn.segment.unet import channel_dropout

CFG2 = UNetConfig(dims=2, base_features=4, depth=2)
CFG3 = UNetConfig(dims=3, base_features=4, depth=2, patch_size=(12, 12, 8))
CFG_TRAIN = UNetConfig(dims=2, base_features=4, depth=1)


def blob_volume(seed: int, shape=(21, 18, 9)):
    """A blurred ellipsoid plus noise, and its mask (independent of ugcn.data)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(np.float32)
    centre = np.asarray(shape) / 2 + rng.uniform(-1.5, 1.5, 3)
    radii = np.asarray(shape) * rng.uniform(0.22, 0.3, 3)
    label = (np.sum(((grid - centre) / radii) ** 2, -1) <= 1).astype(np.uint8)
    image = ndimage.gaussian_filter(label.astype(np.float32) * 100.0, 1.0) + rng.normal(0, 15, shape)
    return (image + 20.0).astype(np.float32), label


@pytest.fixture(scope="module")
def model2():
    return init_model(CFG2, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def model3():
    return init_model(CFG3, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def image():
    return blob_volume(0)[0]


def zscore(image):
    x = image.astype(np.float64)
    return ((x - x.mean()) / x.std()).astype(np.float32)


def direct_probs(model, x):
    """Reference: the U-Net applied to one batch, sigmoid -> [1-p, p] written out in numpy."""
    logits = np.asarray(UNet(model.config).apply(model.variables, jnp.asarray(x), train=False, dropout=False))
    p = 1.0 / (1.0 + np.exp(-logits[..., 0].astype(np.float64)))
    return np.stack([1 - p, p], -1)


# ---------------------------------------------------------------------------------------------------------- shapes


def test_2d_matches_slice_by_slice_reference(model2, image):
    probs = predict_probabilities(model2, image)
    assert probs.shape == image.shape + (2,) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Reference: z-score in numpy, edge-pad each axial slice to a multiple of 4, apply, crop.
    x = np.pad(zscore(image), ((0, 3), (0, 2), (0, 0)), mode="edge")  # 21 -> 24, 18 -> 20
    ref = direct_probs(model2, np.transpose(x, (2, 0, 1))[..., None])[:, :21, :18]
    np.testing.assert_allclose(probs, np.transpose(ref, (1, 2, 0, 3)), atol=2e-5)


def test_3d_single_patch_matches_reference(model3):
    small, _ = blob_volume(3, shape=(10, 7, 5))  # smaller than the patch on every axis
    probs = predict_probabilities(model3, small)
    assert probs.shape == (10, 7, 5, 2)
    x = np.pad(zscore(small), ((0, 2), (0, 5), (0, 3)), mode="edge")
    ref = direct_probs(model3, x[None, ..., None])[0, :10, :7, :5]
    np.testing.assert_allclose(probs, ref, atol=2e-5)


def test_3d_overlapping_patches(model3):
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


# ---------------------------------------------------------------------------------------------------------- dropout


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
    single = np.asarray(jax.jit(make_volume_fn(model, stochastic=True))(jax.random.split(jax.random.PRNGKey(5), 3)[1], image))
    np.testing.assert_allclose(single, samples2[1], atol=1e-5)


def test_dropout_off_ignores_key(model2, image):
    fn = jax.jit(make_volume_fn(model2, stochastic=False))
    a = np.asarray(fn(jax.random.PRNGKey(0), image))
    b = np.asarray(fn(jax.random.PRNGKey(1), image))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, predict_probabilities(model2, image), atol=1e-6)


def test_3d_dropout_on_differs(trained3):
    model = trained3[0]  # patch (8, 8, 4): 4 patches, in chunks of 3 -> the lax.scan path
    img, _ = blob_volume(4, shape=(12, 9, 6))
    fn = jax.jit(jax.vmap(make_volume_fn(model, stochastic=True, batch_size=3), in_axes=(0, None)))
    s = np.asarray(fn(jax.random.split(jax.random.PRNGKey(0), 2), img))
    assert s.shape == (2, 12, 9, 6, 2)
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-5)
    assert np.abs(s[0] - s[1]).max() > 1e-3


@pytest.mark.parametrize("dims", [2, 3])
def test_channel_dropout_drops_whole_channels(dims):
    shape = (6,) + (5,) * dims + (16,)
    x = jnp.ones(shape)
    y = np.asarray(channel_dropout(0.5, dims).apply({}, x, deterministic=False, rngs={"dropout": jax.random.PRNGKey(3)}))
    per_map = y.reshape(6, -1, 16)
    # every (sample, channel) map is constant: all 0 (dropped) or all 1/(1-0.5) = 2 (kept)
    assert np.all(per_map.min(1) == per_map.max(1))
    assert set(np.unique(per_map)) == {0.0, 2.0}
    dropped = (per_map[:, 0, :] == 0).mean()
    assert 0.25 < dropped < 0.75
    y_off = channel_dropout(0.5, dims).apply({}, x, deterministic=True)
    np.testing.assert_array_equal(np.asarray(y_off), 1.0)


def test_dropout_rate_defaults():
    assert UNetConfig(dims=2).rate == 0.3 and UNetConfig(dims=3).rate == 0.2
    assert UNetConfig(dims=2, dropout_rate=0.1).rate == 0.1
    cfg = UNetConfig(dims=3, patch_size=(16, 16, 8), depth=3)
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# ---------------------------------------------------------------------------------------------------------- training


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


@pytest.fixture(scope="module")
def trained2():
    vols = [blob_volume(s) for s in range(3)]
    model, history = train_model(
        [v[0] for v in vols], [v[1] for v in vols], CFG_TRAIN, epochs=3, steps_per_epoch=8, batch_size=4,
        learning_rate=1e-2, seed=0, augmentation=NO_AUGMENTATION, progress=False,
    )
    return model, history


def test_training_lowers_loss(trained2):
    model, history = trained2
    loss = history["loss"]
    assert len(loss) == 3 and np.all(np.isfinite(loss))
    assert loss[-1] < loss[0]
    assert model.training["final_loss"] == loss[-1]


@pytest.fixture(scope="module")
def trained3():
    cfg = UNetConfig(dims=3, base_features=2, depth=1, patch_size=(8, 8, 4))
    vols = [blob_volume(s, shape=(10, 9, 6)) for s in range(2)]
    return train_model(
        [v[0] for v in vols], [v[1] for v in vols], cfg, epochs=2, steps_per_epoch=1, batch_size=2,
        augmentation=NO_AUGMENTATION, progress=False,
    )


def test_3d_training_runs(trained3):
    model, history = trained3
    cfg = model.config
    assert len(history["loss"]) == 2 and np.all(np.isfinite(history["loss"]))
    start = init_model(cfg, jax.random.PRNGKey(0))  # train_model's initial weights come from split(key(seed))
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(start.params), jax.tree_util.tree_leaves(model.params)))


def test_checkpoint_round_trip(trained2, tmp_path, image):
    model, _ = trained2
    out = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "params.msgpack"]
    loaded = load_model(out)
    assert loaded.config == model.config and loaded.normalization == model.normalization
    assert loaded.training["final_loss"] == model.training["final_loss"]
    a_leaves, a_def = jax.tree_util.tree_flatten(model.variables)
    b_leaves, b_def = jax.tree_util.tree_flatten(loaded.variables)
    assert a_def == b_def
    for a, b in zip(a_leaves, b_leaves):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(predict_probabilities(loaded, image), predict_probabilities(model, image))
    clipped = type(model)(model.config, model.params, model.batch_stats, Normalization(clip=(-50.0, 150.0)))
    assert load_model(save_model(clipped, tmp_path / "c")).normalization.clip == (-50.0, 150.0)
    with pytest.raises(ValueError, match="not empty"):
        save_model(model, out)
    save_model(model, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "m"]  # no temporary leftovers


# ---------------------------------------------------------------------------------------------------------- errors


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


def test_bad_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no such model"):
        load_model(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a segmentation model directory"):
        load_model(tmp_path / "plain")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "broken")


def test_bad_training_input():
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


# ---------------------------------------------------------------------------------------------------------- CLI


def test_cli_train(tmp_path, trained2):
    from ugcn.cli import main
    from ugcn.data.layout import write_decathlon

    vols = [blob_volume(s) for s in range(3)]  # as in trained2: same data shapes, cached compiled step
    write_decathlon(tmp_path / "data", [(f"case_{i}", v[0], v[1] * 3, np.eye(4)) for i, v in enumerate(vols)],
                    name="blobs")
    out = tmp_path / "model"
    # Same settings as the trained2 fixture, so the cached training step is reused.
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(out), "--unet-dims", "2", "--unet-epochs", "1",
            "--unet-steps-per-epoch", "2", "--unet-batch-size", "4", "--unet-learning-rate", "1e-2",
            "--unet-base-features", "4", "--unet-depth", "1", "--augment", "none", "--seed", "3", "--quiet"]
    assert main(args) == 0
    model = load_model(out)
    assert model.config == CFG_TRAIN and model.training["cases"] == ["case_0", "case_1", "case_2"]
    # every training flag reached train_model: the loss history has 1 epoch and the record its settings
    assert len(model.training["loss_history"]) == 1
    assert {k: model.training[k] for k in ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed")} == {
        "epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "learning_rate": 1e-2, "seed": 3}
    assert model.training["augmentation"] == {"flips": False, "rotate90": False, "scale": 0.0, "shift": 0.0,
                                              "noise": 0.0}
    assert main(args) == 2  # exists already, no --overwrite
    # --config reruns the recorded configuration: the same parameters, bit for bit
    again = tmp_path / "again"
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(again), "--config",
                 str(out / "config.json"), "--quiet"]) == 0
    rerun = load_model(again)
    assert rerun.config == model.config
    for a, b in zip(jax.tree_util.tree_leaves(model.params), jax.tree_util.tree_leaves(rerun.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # an explicit flag overrides the recorded value
    assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "seed4"), "--config",
                 str(out / "config.json"), "--seed", "4", "--quiet"]) == 0
    assert load_model(tmp_path / "seed4").training["seed"] == 4
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "m2")]) == 2
    assert not (tmp_path / "m2").exists()
