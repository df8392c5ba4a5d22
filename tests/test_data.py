"""Phantoms, dataset layouts and k-fold splits (ugcn.data)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from ugcn.data import (
    BRAIN_TISSUES,
    CT_HU,
    Case,
    brain_phantom,
    ct_phantom,
    find_cases,
    kfold_splits,
    load_case,
    write_decathlon,
)
from ugcn.io import load_mask, load_volume, save_volume

SMALL_CT = (40, 40, 20)
SMALL_BRAIN = (40, 40, 32)


@pytest.fixture(scope="module")
def ct_default():
    return [ct_phantom(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def brains_default():
    return [brain_phantom(seed) for seed in (0, 1, 2)]


# ----------------------------------------------------------------------------------------------------------
# Phantoms
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [ct_phantom, brain_phantom])
def test_phantom_is_deterministic_per_seed(make):
    shape = SMALL_CT if make is ct_phantom else SMALL_BRAIN
    a, b, c = make(3, shape=shape), make(3, shape=shape), make(4, shape=shape)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


def test_ct_shapes_dtypes_affine(ct_default):
    p = ct_default[0]
    assert p.image.shape == (96, 96, 48) and p.image.dtype == np.float32
    assert p.label.shape == (96, 96, 48) and p.label.dtype == np.uint8
    assert set(np.unique(p.label)) == {0, 1}
    np.testing.assert_allclose(np.diag(p.affine), [0.8, 0.8, 2.5, 1.0])
    # Centre of the volume at world (0, 0, 0).
    centre = p.affine @ np.array([47.5, 47.5, 23.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert p.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert np.all(np.isfinite(p.image))
    # HU-like range: air outside, bone inside.
    assert p.image.min() < -900 and p.image.max() > 250


def test_ct_custom_geometry():
    p = ct_phantom(5, shape=(48, 40, 24), spacing=(1.0, 1.2, 3.0))
    assert p.image.shape == p.label.shape == (48, 40, 24)
    np.testing.assert_allclose(np.diag(p.affine)[:3], [1.0, 1.2, 3.0])
    assert p.label.sum() > 0


def test_ct_organ_intensity_close_to_neighbours(ct_default):
    for p in ct_default:
        core = ndimage.binary_erosion(p.label > 0, iterations=2)  # away from partial-volume borders
        assert abs(p.image[core].mean() - CT_HU["spleen"]) < 10
        assert abs(CT_HU["spleen"] - CT_HU["liver"]) < 10 and abs(CT_HU["spleen"] - CT_HU["muscle"]) < 10


def _best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Best Dice of ``image > t`` or ``image < t`` over every threshold t (brute force by sorting)."""
    order = np.argsort(image, kind="stable")
    y = label[order].astype(np.int64)
    n_pos = y.sum()
    # "above": predicted = the top j voxels, j = 0..n.
    tp_above = np.concatenate([[0], np.cumsum(y[::-1])])
    j = np.arange(y.size + 1)
    dice_above = 2 * tp_above / (j + n_pos)
    tp_below = np.concatenate([[0], np.cumsum(y)])
    dice_below = 2 * tp_below / (j + n_pos)
    return float(max(dice_above.max(), dice_below.max()))


def test_best_threshold_dice_reference():
    # Hand-checked: image [1, 2, 3, 4], label [0, 1, 1, 0]: best is {2, 3} impossible by one threshold;
    # "above 1.5" gives {2,3,4}: Dice 2*2/(3+2) = 0.8; "below 3.5" gives {1,2,3}: also 0.8.
    assert _best_threshold_dice(np.array([1.0, 2, 3, 4]), np.array([0, 1, 1, 0])) == pytest.approx(0.8)
    assert _best_threshold_dice(np.array([1.0, 2, 3, 4]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


@pytest.mark.parametrize("connectivity", [1, 3])
def test_ct_organ_is_not_threshold_separable(ct_default, connectivity):
    struct = ndimage.generate_binary_structure(3, connectivity)
    for p in ct_default:
        hood = ndimage.binary_dilation(p.label > 0, struct, iterations=5)
        score = _best_threshold_dice(p.image[hood], p.label[hood])
        assert score < 0.8, score


def test_ct_organ_is_one_sizeable_blob(ct_default):
    for p in ct_default:
        lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.max() > 1000
        assert sizes.max() / sizes.sum() > 0.9


def test_brain_shapes_and_zero_background(brains_default):
    p = brains_default[0]
    assert p.image.shape == p.label.shape == (64, 64, 48)
    assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
    np.testing.assert_allclose(np.diag(p.affine), [1.0, 1.0, 1.0, 1.0])
    background = p.tissue == BRAIN_TISSUES.index("background")
    assert np.all(p.image[background] == 0)
    assert np.all(p.label[background] == 0)
    assert np.all(p.image >= 0)


def test_brain_flair_contrast(brains_default):
    for p in brains_default:
        t = p.tissue
        lesion = p.label > 0
        mean = {name: p.image[(t == BRAIN_TISSUES.index(name)) & ~lesion].mean() for name in ("csf", "grey", "white")}
        assert mean["csf"] < mean["white"] < mean["grey"]
        assert p.image[lesion].mean() > mean["grey"]


def test_brain_lesions_many_long_tailed_in_white_matter(brains_default):
    largest, smallest = [], []
    for p in brains_default:
        lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        assert 10 <= n <= 45
        largest.append(sizes.max())
        smallest.append(sizes.min())
        assert np.median(sizes) < sizes.mean()  # right-skewed
        in_white = np.mean(p.tissue[p.label > 0] == BRAIN_TISSUES.index("white"))
        assert in_white > 0.8
    assert max(largest) >= 300 and max(largest) <= 1500
    assert min(smallest) <= 10
    assert all(big / small >= 20 for big, small in zip(largest, smallest))


def test_brain_lesion_contrast_varies(brains_default):
    # Some lesions are faint: their mean FLAIR value is close to grey matter.
    p = brains_default[0]
    lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
    means = ndimage.mean(p.image, lab, index=np.arange(1, n + 1))
    assert means.max() - means.min() > 0.2


def test_phantom_rejects_tiny_shapes():
    with pytest.raises(ValueError, match="shape"):
        ct_phantom(0, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        brain_phantom(0, shape=(32, 32, 32), spacing=(1.0, 0.0, 1.0))


# ----------------------------------------------------------------------------------------------------------
# Layouts
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_cases():
    out = []
    for i in range(3):
        p = ct_phantom(i, shape=(24, 24, 16))
        out.append((f"ct_{i:03d}", p.image, p.label, p.affine))
    return out


def test_decathlon_round_trip(tmp_path, small_cases):
    paths = write_decathlon(tmp_path / "ds", iter(small_cases), name="demo", description="d")
    assert [p.name for p in paths] == ["ct_000.nii.gz", "ct_001.nii.gz", "ct_002.nii.gz"]
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["name"] == "demo" and meta["numTraining"] == 3
    assert meta["training"][1] == {"image": "./imagesTr/ct_001.nii.gz", "label": "./labelsTr/ct_001.nii.gz"}
    assert set(meta) >= {"name", "description", "modality", "labels", "numTraining", "training"}
    cases = find_cases(tmp_path / "ds")
    assert [c.name for c in cases] == ["ct_000", "ct_001", "ct_002"]
    for case, (_, image, label, affine) in zip(cases, small_cases):
        img, lab = load_case(case)
        np.testing.assert_allclose(img.array, image, rtol=1e-6)
        np.testing.assert_array_equal(lab.array, label)
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    # Without dataset.json, the imagesTr/labelsTr pairing gives the same cases.
    (tmp_path / "ds" / "dataset.json").unlink()
    assert find_cases(tmp_path / "ds") == cases


def test_decathlon_refuses_existing_and_overwrites(tmp_path, small_cases):
    out = tmp_path / "ds"
    write_decathlon(out, small_cases[:1], name="a")
    with pytest.raises(ValueError, match="not empty"):
        write_decathlon(out, small_cases, name="b")
    assert len(find_cases(out)) == 1
    write_decathlon(out, small_cases, name="b", overwrite=True)
    assert len(find_cases(out)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary folders left


def test_decathlon_failure_leaves_nothing(tmp_path, small_cases):
    name, image, label, affine = small_cases[0]

    def cases():
        yield small_cases[0]
        yield "bad", image, label[:-1], affine

    with pytest.raises(ValueError, match="same 3D shape"):
        write_decathlon(tmp_path / "ds", cases(), name="x")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="twice"):
        write_decathlon(tmp_path / "ds", [small_cases[0], small_cases[0]], name="x")
    with pytest.raises(ValueError, match="no cases"):
        write_decathlon(tmp_path / "ds", [], name="x")
    nan_image = image.copy()
    nan_image[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        write_decathlon(tmp_path / "ds", [(name, nan_image, label, affine)], name="x")
    assert list(tmp_path.iterdir()) == []


def _write_pair(folder, stem, array, label=None, affine=np.eye(4)):
    save_volume(folder / f"{stem}.nii.gz", array, affine)
    return folder / f"{stem}.nii.gz"


def test_msd_modality_suffix(tmp_path):
    ds = tmp_path / "ds"
    img = np.zeros((4, 4, 4), np.float32)
    _write_pair(ds / "imagesTr", "case_0000", img)
    _write_pair(ds / "imagesTr", "other_0000", img)
    _write_pair(ds / "labelsTr", "case", img.astype(np.uint8))
    _write_pair(ds / "labelsTr", "other", img.astype(np.uint8))
    cases = find_cases(ds)
    assert [(c.name, c.image_path.name, c.label_path.name) for c in cases] == [
        ("case", "case_0000.nii.gz", "case.nii.gz"),
        ("other", "other_0000.nii.gz", "other.nii.gz"),
    ]
    # dataset.json naming "./imagesTr/case.nii.gz" while the file is case_0000.nii.gz.
    meta = {"training": [{"image": "./imagesTr/case.nii.gz", "label": "./labelsTr/case.nii.gz"}]}
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert [c.image_path.name for c in find_cases(ds)] == ["case_0000.nii.gz"]


def test_plain_folder_pairs(tmp_path):
    img = np.zeros((4, 4, 4), np.float32)
    lab = np.zeros((4, 4, 4), np.uint8)
    for stem in ("b", "a", "c"):
        _write_pair(tmp_path, stem, img)
    _write_pair(tmp_path, "a_label", lab)
    _write_pair(tmp_path, "b_seg", lab)
    _write_pair(tmp_path, "c_mask", lab)
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["a", "b", "c"]
    assert [c.label_path.name for c in cases] == ["a_label.nii.gz", "b_seg.nii.gz", "c_mask.nii.gz"]
    assert all(isinstance(c, Case) for c in cases)


def test_images_labels_subfolders(tmp_path):
    img = np.zeros((4, 4, 4), np.float32)
    _write_pair(tmp_path / "images", "x1", img)
    _write_pair(tmp_path / "images", "x2", img)
    _write_pair(tmp_path / "labels", "x1", img.astype(np.uint8))
    with pytest.raises(ValueError, match="x2.nii.gz: image has no label"):
        find_cases(tmp_path)
    cases = find_cases(tmp_path, require_labels=False)
    assert [(c.name, c.label_path is not None) for c in cases] == [("x1", True), ("x2", False)]
    image, label = load_case(cases[1])
    assert label is None and image.shape == (4, 4, 4)


def test_find_cases_errors(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        find_cases(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        find_cases(tmp_path / "file.txt")
    with pytest.raises(ValueError, match="no NIfTI images"):
        find_cases(tmp_path)
    img = np.zeros((4, 4, 4), np.float32)
    _write_pair(tmp_path, "a", img)
    _write_pair(tmp_path, "z_label", img.astype(np.uint8))
    with pytest.raises(ValueError, match="z_label.nii.gz: label without an image"):
        find_cases(tmp_path)
    sub = tmp_path / "sub"
    _write_pair(sub / "imagesTr", "a", img)
    _write_pair(sub / "labelsTr", "a", img.astype(np.uint8))
    _write_pair(sub / "labelsTr", "b", img.astype(np.uint8))
    with pytest.raises(ValueError, match="b.nii.gz: label without an image"):
        find_cases(sub)
    (sub / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="dataset.json"):
        find_cases(sub)
    (sub / "dataset.json").write_text(json.dumps({"training": [{"image": "./imagesTr/nope.nii.gz"}]}))
    with pytest.raises(ValueError, match="does not exist"):
        find_cases(sub)


def test_load_case_checks_grid(tmp_path):
    img = np.zeros((4, 4, 4), np.float32)
    _write_pair(tmp_path, "a", img)
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    save_volume(tmp_path / "a_label.nii.gz", img.astype(np.uint8), shifted)
    _write_pair(tmp_path, "b", img)
    save_volume(tmp_path / "b_label.nii.gz", np.zeros((4, 4, 5), np.uint8), np.eye(4))
    a, b = find_cases(tmp_path)
    with pytest.raises(ValueError, match="affine differs"):
        load_case(a)
    with pytest.raises(ValueError, match="shape"):
        load_case(b)


def test_written_phantom_files_read_back_with_io(tmp_path, small_cases):
    write_decathlon(tmp_path / "ds", small_cases[:1], name="x")
    vol = load_volume(tmp_path / "ds" / "imagesTr" / "ct_000.nii.gz")
    assert vol.spacing == pytest.approx((0.8, 0.8, 2.5), rel=1e-6)
    assert load_mask(tmp_path / "ds" / "labelsTr" / "ct_000.nii.gz").array.dtype == np.uint8


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=st.integers(8, 120), k=st.integers(2, 6), seed=st.integers(0, 2**31), frac=st.floats(0.1, 0.4))
def test_kfold_partition_properties(n, k, seed, frac):
    if n - int(np.ceil(n / k)) < 2:
        return
    try:
        splits = kfold_splits(n, k, seed=seed, val_fraction=frac)
    except ValueError as err:
        # Only legitimate when some fold leaves no validation case.
        assert "validation" in str(err) or "training" in str(err)
        return
    assert len(splits) == k
    tests = np.concatenate([s.test for s in splits])
    np.testing.assert_array_equal(np.sort(tests), np.arange(n))  # disjoint and covering
    sizes = [s.test.size for s in splits]
    assert max(sizes) - min(sizes) <= 1
    for s in splits:
        union = np.concatenate([s.train, s.val, s.test])
        np.testing.assert_array_equal(np.sort(union), np.arange(n))  # disjoint, covering, per fold
        assert s.val.size >= 1 and s.train.size >= 1
        assert abs(s.val.size - frac * (n - s.test.size)) <= 0.5 + 1e-9
        assert s.train.dtype == np.int64


def test_kfold_default_protocol():
    splits = kfold_splits(20)
    assert len(splits) == 4
    for s in splits:
        assert (s.train.size, s.val.size, s.test.size) == (12, 3, 5)  # 25 % test, 80/20 of the rest
    again = kfold_splits(20)
    other = kfold_splits(20, seed=1)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(splits, again))
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(splits, other))


def test_kfold_errors():
    with pytest.raises(ValueError, match="cannot make 4 folds"):
        kfold_splits(3, 4)
    with pytest.raises(ValueError, match="validation"):
        kfold_splits(4, 2, val_fraction=0.1)  # 2 non-test cases: 10 % rounds to no validation case
    with pytest.raises(ValueError, match="at least 2"):
        kfold_splits(10, 1)
    with pytest.raises(ValueError, match="val_fraction"):
        kfold_splits(10, 4, val_fraction=1.0)
