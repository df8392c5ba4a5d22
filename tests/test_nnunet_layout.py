"""nnU-Net raw data sets (issue 17, interop 7): ``imagesTr/<case>_0000.nii.gz`` (+ ``_0001``... channels),
``labelsTr/<case>.nii.gz`` and a ``dataset.json`` with ``channel_names``, ``labels``, ``file_ending``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ugcn.data import ct_phantom, find_cases, load_case
from ugcn.io import case_name, image_folder, load_image, save_volume

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
                 "1", "--unet-steps-per-epoch", "2", "--unet-batch-size", "2", "--unet-base-features", "4",
                 "--unet-depth", "2", "--quiet"]) == 0
    model = load_model(model_dir)
    assert model.config.in_channels == 2  # both channel files of every case
    assert model.training["cases"] == ["case_000", "case_001"] and model.training["spacing"] == [1.5, 1.5, 3.0]
    images = tmp_path / "Dataset001_Phantom" / "imagesTr"
    out = tmp_path / "refined"
    code = main(["refine-batch", "--images", str(images), "--model", str(model_dir), "--out", str(out),
                 "--labels", str(tmp_path / "Dataset001_Phantom" / "labelsTr"), "--n-samples", "2", "--chunk", "2",
                 "--epochs", "3", "--tau", "0.5", "--tau-mode", "quantile", "--quiet"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["volumes"]) == ["case_000", "case_001"]  # one case per channel group, nnU-Net's names
    report = json.loads((out / "case_000" / "report.json").read_text())
    assert report["image"].endswith("case_000_0000.nii.gz") and "dice" in report
