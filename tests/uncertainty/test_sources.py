"""Sample sources (ugcn.uncertainty.sources): prediction, expectation, statistics and estimator maps against
plain numpy computations on known samples, from arrays, from a 4D NIfTI and from a model."""
import math

import jax
import nibabel as nib
import numpy as np
import pytest

from ugcn.uncertainty.sources import (
    SampledVolume,
    from_model,
    from_model_batch,
    from_sample_file,
    from_samples,
    summarize,
)
from ugcn.uncertainty.stats import stats_from_samples


def np_maps(samples):
    """Expectation, entropy (bits / log2 C), variance (binary: foreground) and PCS of samples [T, ..., C]."""
    s = np.asarray(samples, np.float64)
    mean = s.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(mean > 0, mean * np.log(mean), 0.0)
    entropy = -xlogx.sum(-1) / math.log(s.shape[-1])
    var = s.var(0)
    variance = var[..., 1] if s.shape[-1] == 2 else var.mean(-1)
    return mean, entropy, variance, mean.max(-1)


@pytest.mark.parametrize("c", [2, 3])
def test_from_samples_matches_numpy(random_samples, c):
    samples = random_samples(np.random.default_rng(c), 5, (6, 5, 4), c)
    v = from_samples(samples, ["entropy", "variance", "pcs"])
    mean, entropy, variance, pcs = np_maps(samples)
    assert isinstance(v, SampledVolume) and v.n_samples == 5 and v.num_classes == c
    np.testing.assert_allclose(v.expectation, mean, atol=1e-6)
    np.testing.assert_array_equal(v.prediction, np.argmax(mean, -1))
    assert list(v.maps) == ["entropy", "variance", "pcs"]
    np.testing.assert_allclose(v.maps["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(v.maps["variance"], variance, atol=1e-6)
    np.testing.assert_allclose(v.maps["pcs"], pcs, atol=1e-6)
    np.testing.assert_allclose(np.asarray(v.samples), samples)  # kept: arrays are small already
    assert v.source["kind"] == "samples" and v.source["n_samples"] == 5


def test_foreground_maps_are_two_classes_and_prediction_can_be_given():
    fg = np.random.default_rng(0).random((4, 3, 3, 2)).astype(np.float32)
    v = from_samples(fg, "entropy,variance", prediction=np.ones((3, 3, 2), np.uint8))
    mean, entropy, variance, _ = np_maps(np.stack([1 - fg, fg], -1))
    np.testing.assert_allclose(v.foreground, fg.mean(0), atol=1e-6)
    np.testing.assert_allclose(v.maps["entropy"], entropy, atol=1e-5)
    np.testing.assert_allclose(v.maps["variance"], variance, atol=1e-6)
    assert v.prediction.dtype == np.uint8 and v.prediction.all()


def test_summarize_keeps_samples_only_when_asked_or_needed(random_samples):
    samples = random_samples(np.random.default_rng(1), 3, (4, 4, 2), 2)
    stats = stats_from_samples(samples)
    assert summarize(stats, ["entropy"], samples=samples).samples is None
    assert summarize(stats, ["entropy"], samples=samples, keep_samples=True).samples is not None
    v = summarize(stats, ["variation_ratio"], samples=samples)  # a samples estimator keeps them
    assert v.samples is not None
    labels = np.argmax(np.asarray(samples), -1)  # 1 - share of the most frequent class, by hand
    share = np.max([(labels == k).mean(0) for k in range(2)], axis=0)
    np.testing.assert_allclose(v.maps["variation_ratio"], 1 - share, atol=1e-6)
    with pytest.raises(ValueError, match="need the samples"):
        summarize(stats, ["variation_ratio"])


def test_bad_samples_raise():
    with pytest.raises(ValueError, match=r"\[T, X, Y, Z, C\]"):
        from_samples(np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        from_samples(np.full((2, 3, 3, 2), 1.5))
    with pytest.raises(ValueError, match="prediction shape"):
        from_samples(np.zeros((2, 3, 3, 2)), prediction=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2 classes"):
        _ = from_samples(np.full((2, 3, 3, 1, 3), 1 / 3)).foreground


def test_from_sample_file_equals_the_arrays(tmp_path):
    from ugcn.io import Volume

    fg = np.random.default_rng(2).random((5, 6, 4, 3)).astype(np.float32)  # T = 5 maps of 6 x 4 x 3
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    path = tmp_path / "maps.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(fg, 0, -1), affine), str(path))
    v = from_sample_file(path, ["entropy", "mutual_information"])
    ref = from_samples(fg, ["entropy", "mutual_information"])
    np.testing.assert_allclose(v.expectation, ref.expectation, atol=1e-6)
    for name in ref.maps:
        np.testing.assert_allclose(v.maps[name], ref.maps[name], atol=1e-6)
    assert v.source["file"] == str(path) and v.n_samples == 5
    other = Volume(np.zeros((6, 4, 3), np.float32), np.eye(4), None)
    with pytest.raises(ValueError, match="affine differs"):  # another grid than the image's
        from_sample_file(path, reference=other)


@pytest.fixture(scope="module")
def tiny_model():
    from ugcn.segment import UNetConfig, init_model

    return init_model(UNetConfig(dims=2, base_features=2, depth=1, dropout_rate=0.5), jax.random.PRNGKey(0))


def test_from_model_mc_agrees_with_its_samples_and_the_deterministic_pass(tiny_model):
    from ugcn.segment import predict_probabilities

    image = np.random.default_rng(3).normal(size=(8, 8, 3)).astype(np.float32)
    v = from_model(tiny_model, image, ["entropy", "variance"], key=jax.random.key(1), n_samples=3, chunk_size=2,
                   keep_samples=True)
    samples = np.asarray(v.samples)
    assert samples.shape == (3, 8, 8, 3, 2) and np.abs(samples[0] - samples[1]).max() > 1e-4  # dropout on
    mean, entropy, variance, _ = np_maps(samples)
    np.testing.assert_allclose(v.expectation, mean, atol=1e-5)
    np.testing.assert_allclose(v.maps["entropy"], entropy, atol=1e-4)
    np.testing.assert_allclose(v.maps["variance"], variance, atol=1e-6)
    np.testing.assert_array_equal(v.prediction, np.argmax(predict_probabilities(tiny_model, image), -1))
    mean_rule = from_model(tiny_model, image, key=jax.random.key(1), n_samples=3, chunk_size=2, prediction="mean")
    np.testing.assert_array_equal(mean_rule.prediction, np.argmax(mean, -1))
    assert mean_rule.samples is None and mean_rule.maps == {}


def test_from_model_tta_records_its_transforms(tiny_model):
    from ugcn.uncertainty.tta import tta_transforms

    image = np.random.default_rng(4).normal(size=(8, 8, 3)).astype(np.float32)
    v = from_model(tiny_model, image, ["variance"], method="tta", seed=2, n_samples=4, tta_max_shift=1,
                   keep_samples=True)
    np.testing.assert_array_equal(v.source["tta"]["transforms"], tta_transforms(4, seed=2, shifts=(-1, 0, 1)))
    samples = np.asarray(v.samples)
    np.testing.assert_allclose(v.maps["variance"], samples[..., 1].var(0), atol=1e-6)
    assert v.source["kind"] == "tta"
    with pytest.raises(ValueError, match="method"):
        from_model(tiny_model, image, method="bootstrap")
    with pytest.raises(ValueError, match="prediction"):
        from_model(tiny_model, image, prediction="mode")


def test_from_model_batch_equals_from_model_per_image(tiny_model):
    rng = np.random.default_rng(3)
    images = [rng.normal(size=shape).astype(np.float32) for shape in [(8, 8, 3), (6, 8, 3), (8, 8, 3)]]
    permuted = np.array([[0, 2.0, 0, 0], [-1.0, 0, 0, 0], [0, 0, 1.5, 0], [0, 0, 0, 1]])  # axes stored out of order
    affines = [np.eye(4), np.eye(4), permuted]
    batch = from_model_batch(tiny_model, images, ["entropy", "variance"], affines=affines, seed=5, n_samples=3,
                             chunk_size=2, prediction="deterministic")
    assert len(batch) == 3
    for image, affine, got in zip(images, affines, batch):
        alone = from_model(tiny_model, image, ["entropy", "variance"], seed=5, n_samples=3, chunk_size=2,
                           affine=affine)
        assert got.expectation.shape == image.shape + (2,) and got.n_samples == 3
        np.testing.assert_array_equal(got.prediction, alone.prediction)
        np.testing.assert_allclose(got.expectation, alone.expectation, atol=1e-5)
        for name in ("entropy", "variance"):
            np.testing.assert_allclose(got.maps[name], alone.maps[name], atol=1e-5, err_msg=name)
    with pytest.raises(ValueError, match="2 affines"):
        from_model_batch(tiny_model, images, affines=affines[:2])
