"""Data set layouts and k-fold splits (ugcn.data.layout): Decathlon and nnU-Net raw round trips, folder readers,
errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ugcn.data import Case, ct_phantom, find_cases, kfold_splits, load_case, write_decathlon
from ugcn.io import case_name, image_folder, load_image, load_mask, load_volume, save_volume


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


def _write_pair(folder, stem, array, label=None, affine=None):
    affine = np.eye(4) if affine is None else affine
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


AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def write_nnunet_raw(root: Path, n_cases=3, channels=("CT", "CT_inverted"), shape=(24, 24, 16), ending=".nii.gz"):
    """An nnU-Net v2 raw data set of CT phantoms; channel 1 (if any) is the negated image. Returns
    ``{case: (image f32[X, Y, Z, M], label u8[X, Y, Z])}``."""
    truth = {}
    for i in range(n_cases):
        phantom = ct_phantom(100 + i, shape=shape)
        name = f"case_{i:03d}"
        stack = [phantom.image, -phantom.image][: len(channels)]
        for c, array in enumerate(stack):
            save_volume(root / "imagesTr" / f"{name}_{c:04d}{ending}", array.astype(np.float32), AFFINE)
        save_volume(root / "labelsTr" / f"{name}{ending}", phantom.label.astype(np.uint8), AFFINE)
        truth[name] = (np.stack(stack, axis=-1).astype(np.float32), phantom.label)
    meta = {"channel_names": {str(c): n for c, n in enumerate(channels)}, "labels": {"background": 0, "spleen": 1},
            "numTraining": n_cases, "file_ending": ending}
    (root / "dataset.json").write_text(json.dumps(meta))
    return truth


@pytest.mark.parametrize("channels", [("CT",), ("CT", "CT_inverted")])
def test_find_and_load_an_nnunet_raw_dataset(tmp_path, channels):
    truth = write_nnunet_raw(tmp_path, channels=channels)
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == sorted(truth)
    for case in cases:
        image, label = load_case(case)
        expected_image, expected_label = truth[case.name]
        np.testing.assert_array_equal(image.array.reshape(expected_image.shape), expected_image)
        assert image.array.ndim == (3 if len(channels) == 1 else 4)
        np.testing.assert_array_equal(label.array, expected_label)
    (tmp_path / "dataset.json").unlink()  # the imagesTr/labelsTr pairing groups the channels too
    assert [c.name for c in find_cases(tmp_path)] == sorted(truth)


def test_nnunet_dataset_errors(tmp_path):
    write_nnunet_raw(tmp_path, n_cases=2)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    with pytest.raises(ValueError, match="numTraining is 5, but imagesTr holds 2"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".png"}))
    with pytest.raises(ValueError, match="'.png' is not supported"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "CT"}}))
    with pytest.raises(ValueError, match="2 channel file\\(s\\), but dataset.json lists 1"):
        find_cases(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "imagesTr" / "case_001_0000.nii.gz").unlink()
    with pytest.raises(ValueError, match="case_001_0001.nii.gz: a channel file without"):
        find_cases(tmp_path)


def test_image_folder_groups_channels_for_the_folder_commands(tmp_path):
    truth = write_nnunet_raw(tmp_path, n_cases=2)
    images = image_folder(tmp_path / "imagesTr")
    assert [p.name for p in images] == ["case_000_0000.nii.gz", "case_001_0000.nii.gz"]
    assert [case_name(p) for p in images] == ["case_000", "case_001"]
    np.testing.assert_array_equal(load_image(images[1]).array, truth["case_001"][0])
    plain = tmp_path / "plain"
    save_volume(plain / "a.nii.gz", np.zeros((4, 4, 4), np.float32), AFFINE)
    save_volume(plain / "b_seg.nii.gz", np.zeros((4, 4, 4), np.float32), AFFINE)
    assert [p.name for p in image_folder(plain)] == ["a.nii.gz", "b_seg.nii.gz"]  # no channel naming


@pytest.mark.slow
def test_an_nnunet_raw_dataset_trains_and_refines(tmp_path, capsys):
    from ugcn.cli import main
    from ugcn.segment import load_model

    write_nnunet_raw(tmp_path / "Dataset001_Phantom", n_cases=2)
    model_dir = tmp_path / "model"
    assert main(["train", "--data", str(tmp_path / "Dataset001_Phantom"), "--out", str(model_dir), "--unet-epochs",
                 "1", "--unet-steps-per-epoch", "2", "--unet-batch-size", "2", "--unet-base-features", "2",
                 "--unet-depth", "1", "--quiet"]) == 0
    model = load_model(model_dir)
    assert model.config.in_channels == 2  # both channel files of every case
    assert model.training["cases"] == ["case_000", "case_001"] and model.training["spacing"] == [1.5, 1.5, 3.0]
    images = tmp_path / "Dataset001_Phantom" / "imagesTr"
    out = tmp_path / "refined"
    code = main(["refine-batch", "--images", str(images), "--model", str(model_dir), "--out", str(out),
                 "--labels", str(tmp_path / "Dataset001_Phantom" / "labelsTr"), "--n-samples", "2", "--chunk", "2",
                 "--gcn-epochs", "3", "--tau", "0.5", "--tau-mode", "quantile", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["volumes"]) == ["case_000", "case_001"]  # one case per channel group, nnU-Net's names
    report = json.loads((out / "case_000" / "report.json").read_text())
    assert report["image"].endswith("case_000_0000.nii.gz") and "dice" in report


def test_a_flat_folder_groups_nnunet_channel_files(tmp_path):
    rng = np.random.default_rng(0)
    channels = [rng.normal(size=(6, 5, 4)).astype(np.float32) for _ in range(2)]
    for c, array in enumerate(channels):
        save_volume(tmp_path / f"x_{c:04d}.nii.gz", array, AFFINE)
    save_volume(tmp_path / "x_seg.nii.gz", np.ones((6, 5, 4), np.uint8), AFFINE)
    (case,) = find_cases(tmp_path)
    assert case.name == "x" and case.label_path.name == "x_seg.nii.gz"
    np.testing.assert_array_equal(load_case(case)[0].array, np.stack(channels, axis=-1))
