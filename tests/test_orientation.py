"""Scan orientation (issue 17, interop 8): models run in RAS+ whatever order a file stores its axes in, and
every output goes back in the input's orientation and affine; the training spacing is recorded and checked."""
from __future__ import annotations

import json
import warnings

import jax
import nibabel as nib
import numpy as np
import pytest

from ugcn.io import canonical_affine, canonical_shape, canonical_spacing, from_canonical, save_volume, to_canonical

RAS_AFFINE = np.array([[1.5, 0, 0, -20.0], [0, 1.5, 0, 10.0], [0, 0, 3.0, 5.0], [0, 0, 0, 1]])
# Stored as (P, S, R): the file's axis 0 runs posterior (A flipped), axis 1 superior, axis 2 right.
PERMUTATION = np.array([[2, 1], [0, -1], [1, 1]])


def _stored_permuted(canonical: np.ndarray):
    """``canonical`` (RAS+) as a file would store it in ``PERMUTATION``'s order, with the matching affine."""
    array = nib.orientations.apply_orientation(canonical, PERMUTATION)
    affine = RAS_AFFINE @ nib.orientations.inv_ornt_aff(PERMUTATION, canonical.shape[:3])
    return array, affine


def test_to_canonical_matches_nibabel_and_inverts():
    canonical = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    array, affine = _stored_permuted(canonical)
    assert nib.aff2axcodes(affine) == ("P", "S", "R") and array.shape == (5, 4, 6)
    reference = nib.as_closest_canonical(nib.Nifti1Image(array, affine))  # nibabel's own reorientation
    np.testing.assert_array_equal(to_canonical(array, affine), np.asarray(reference.dataobj))
    np.testing.assert_allclose(canonical_affine(affine, array.shape), reference.affine)
    np.testing.assert_array_equal(to_canonical(array, affine), canonical)
    np.testing.assert_array_equal(from_canonical(canonical, affine), array)
    assert canonical_shape(array.shape, affine) == canonical.shape
    assert canonical_spacing(affine) == (1.5, 1.5, 3.0)
    samples = np.random.default_rng(1).normal(size=(3, *array.shape, 2))  # [T, X, Y, Z, C]
    np.testing.assert_array_equal(from_canonical(to_canonical(samples, affine, axis=1), affine, axis=1), samples)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from ugcn.segment import UNetConfig, init_model, save_model

    model = init_model(UNetConfig(base_features=2, depth=1), jax.random.PRNGKey(3))
    model.training.update({"orientation": "RAS", "spacing": [1.5, 1.5, 3.0]})
    folder = tmp_path_factory.mktemp("model") / "m"
    save_model(model, folder)
    return folder


def test_a_permuted_scan_gives_the_same_maps_as_the_canonical_one(tmp_path, tiny_model_dir):
    from ugcn.cli import main

    canonical = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    array, affine = _stored_permuted(canonical)
    save_volume(tmp_path / "ras.nii.gz", canonical, RAS_AFFINE)
    save_volume(tmp_path / "permuted.nii.gz", array, affine)
    for name in ("ras", "permuted"):
        assert main(["mcdo", "--model", str(tiny_model_dir), "--image", str(tmp_path / f"{name}.nii.gz"),
                     "--out", str(tmp_path / name), "--n-samples", "3", "--estimators", "entropy,variance",
                     "--quiet"]) == 0
    for output in ("prediction", "expectation", "entropy", "variance"):
        ras = nib.load(str(tmp_path / "ras" / f"{output}.nii.gz"))
        permuted = nib.load(str(tmp_path / "permuted" / f"{output}.nii.gz"))
        np.testing.assert_allclose(permuted.affine, affine)  # written back in the input's orientation and affine
        assert permuted.shape == array.shape
        np.testing.assert_allclose(to_canonical(permuted.get_fdata(), permuted.affine), ras.get_fdata(), atol=1e-5)
    expectation = nib.load(str(tmp_path / "ras" / "expectation.nii.gz")).get_fdata()
    assert np.ptp(expectation) > 1e-3  # the maps carry information, so the comparison above could fail


@pytest.mark.slow
def test_refine_with_a_model_on_a_permuted_scan(tmp_path, tiny_model_dir):
    from ugcn.cli import main

    canonical = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    array, affine = _stored_permuted(canonical)
    save_volume(tmp_path / "ras.nii.gz", canonical, RAS_AFFINE)
    save_volume(tmp_path / "permuted.nii.gz", array, affine)
    for name in ("ras", "permuted"):
        assert main(["refine", "--image", str(tmp_path / f"{name}.nii.gz"), "--model", str(tiny_model_dir),
                     "--out", str(tmp_path / name), "--n-samples", "2", "--chunk", "2", "--tau", "0.5",
                     "--tau-mode", "quantile", "--quiet"]) == 0
    ras = nib.load(str(tmp_path / "ras" / "prediction.nii.gz"))
    permuted = nib.load(str(tmp_path / "permuted" / "prediction.nii.gz"))
    np.testing.assert_allclose(permuted.affine, affine)
    np.testing.assert_array_equal(to_canonical(np.asarray(permuted.dataobj), affine), np.asarray(ras.dataobj))


def test_a_scan_far_from_the_training_spacing_warns(tiny_model_dir):
    from ugcn.segment import load_model
    from ugcn.segment.model import predict_probabilities

    model = load_model(tiny_model_dir)
    image = np.zeros((8, 8, 4), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predict_probabilities(model, image, RAS_AFFINE)  # at the training spacing: silent
    with pytest.warns(UserWarning, match=r"spacing \(0.5, 0.5, 3.0\) mm is far from the model's training spacing"):
        predict_probabilities(model, image, np.diag([0.5, 0.5, 3.0, 1.0]))
    assert json.loads((tiny_model_dir / "config.json").read_text())["training"]["spacing"] == [1.5, 1.5, 3.0]


def test_lesion_mc_uncertainty_follows_the_scan_orientation(tiny_model_dir):
    from ugcn.experiments.lesion_protocol import mc_uncertainty
    from ugcn.segment import load_model

    model = load_model(tiny_model_dir)
    canonical = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    array, affine = _stored_permuted(canonical)
    kwargs = dict(estimators=("entropy",), n_samples=2, chunk_size=2)
    pred_ras, maps_ras = mc_uncertainty(model, canonical, jax.random.PRNGKey(0), affine=RAS_AFFINE, **kwargs)
    pred, maps = mc_uncertainty(model, array, jax.random.PRNGKey(0), affine=affine, **kwargs)
    assert pred.shape == array.shape and maps["entropy"].shape == array.shape  # the file's voxel order
    np.testing.assert_array_equal(to_canonical(pred, affine), pred_ras)
    np.testing.assert_allclose(to_canonical(maps["entropy"], affine), maps_ras["entropy"], atol=1e-6)
