"""Protocol edge cases (no lesion, no FP, no validation lesion) and the fold loop with a fake U-Net."""
import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import ndimage

import ugcn.lesion.protocol as protocol
from ugcn.io import save_volume
from ugcn.lesion.protocol import (
    LesionProtocolConfig,
    case_lesions,
    evaluate_lesion_scores,
    fit_lesion_methods,
    merge_cases,
    method_names,
    score_lesion_methods,
)

NAMES = ("entropy", "variance", "one_minus_pcs")
SHAPE = (16, 16, 12)


def _maps(rng, shape=SHAPE):
    return {n: rng.random(shape).astype(np.float32) for n in NAMES}


def test_case_without_predicted_lesion_gives_no_rows():
    rng = np.random.default_rng(0)
    gt = np.zeros(SHAPE, np.uint8)
    gt[3:5, 3:5, 3:5] = 1
    c = case_lesions("empty", rng.random(SHAPE), np.zeros(SHAPE), _maps(rng), gt)
    assert c.table.n == 0 and c.graphs.num_graphs == 0 and c.dice == 0.0
    lesions = merge_cases([c])
    assert lesions.n == 0
    methods = fit_lesion_methods(lesions, gcnn_epochs=1)
    assert methods.gcnn_classif is None
    scores = score_lesion_methods(methods, lesions)
    assert list(scores) == method_names(NAMES) and all(v.shape == (0,) for v in scores.values())
    metrics = evaluate_lesion_scores(scores, lesions.is_fp, lesions.stats["voxels"])
    assert all(math.isnan(m["auc"]) for m in metrics.values())


def test_one_voxel_and_border_lesions_and_all_tp_fold():
    rng = np.random.default_rng(1)
    pred = np.zeros(SHAPE, np.uint8)
    pred[0, 0, 0] = 1  # one voxel at the corner
    pred[15, 5:8, 11] = 1  # on the border
    pred[7:9, 7:9, 5:7] = 1
    c = case_lesions("a", rng.random(SHAPE), pred, _maps(rng), pred.copy())
    assert c.table.n == 3 and not c.table.is_fp.any() and c.dice == 1.0
    lesions = merge_cases([c, c])
    assert list(lesions.lesion) == [1, 2, 3, 1, 2, 3]
    methods = fit_lesion_methods(lesions, gcnn_epochs=2)  # all TP: trains, MetaSeg falls back
    scores = score_lesion_methods(methods, lesions)
    assert all(np.all(np.isfinite(v)) for v in scores.values())
    metrics = evaluate_lesion_scores(scores, lesions.is_fp, lesions.stats["voxels"])
    assert all(math.isnan(m["auc"]) for m in metrics.values())  # no FP: undefined
    assert metrics["size"]["spearman"] == pytest.approx(-1.0)


def _write_cases(folder, n, seed):
    rng = np.random.default_rng(seed)
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        label = np.zeros(SHAPE, np.uint8)
        for _ in range(4):
            x, y, z = rng.integers(1, 10, 3)
            label[x : x + 3, y : y + 3, z : z + 2] = 1
        image = 0.1 * rng.normal(size=SHAPE).astype(np.float32) + 2 * label
        save_volume(folder / "imagesTr" / f"c{i}.nii.gz", image, np.eye(4))
        save_volume(folder / "labelsTr" / f"c{i}.nii.gz", label, np.eye(4))


def test_run_protocol_with_fake_unet(tmp_path, monkeypatch):
    """The fold loop, aggregation and outputs, with the U-Net and MC dropout replaced by a fake."""

    def fake_fit(images, labels, cfg, seed, progress):
        return {"seed": seed}

    def fake_mc(model, image, key, *, estimators, n_samples, chunk_size, mask_from, volume_fn):
        rng = np.random.default_rng(int(abs(image).sum() * 1000) % 2**32)
        gt = (image > 1.0).astype(np.uint8)  # the label
        pred = gt.copy()
        for _ in range(3):  # false positives with high entropy
            x, y, z = rng.integers(1, 13, 3)
            pred[x : x + 2, y : y + 2, z : z + 2] = 1
        maps = {n: (0.3 * rng.random(image.shape) + 0.5 * (pred & ~gt.astype(bool))).astype(np.float32)
                for n in estimators}
        return pred, maps

    monkeypatch.setattr(protocol, "_fit_unet", fake_fit)
    monkeypatch.setattr(protocol, "mc_uncertainty", fake_mc)
    monkeypatch.setattr(protocol, "_stochastic_fn", lambda model: None)
    data = tmp_path / "data"
    _write_cases(data, 8, 0)
    cfg = LesionProtocolConfig(folds=4, gcnn_epochs=3, mc_samples=2)
    out = tmp_path / "out"
    result = protocol.run_protocol(data, cfg, out_dir=out, progress=False)
    assert [r["method"] for r in result.table] == method_names(NAMES)
    assert len(result.folds) == 4 and all(f["test_cases"] == 2 for f in result.folds)
    assert sum(f["tp"] + f["fp"] for f in result.folds) == len(result.lesions)
    for name in ("results.csv", "results.json", "results.md", "folds.csv", "lesions.csv", "curves.png"):
        assert (out / name).exists()
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["gcnn_epochs"] == 3
    rows = list(csv.DictReader(io.StringIO((out / "lesions.csv").read_text())))
    assert all(float(r["size_score"]) == pytest.approx(1 / int(r["size"])) for r in rows)
    # Per test case: the written mask, lesion ids and lesion table agree with scipy.
    import nibabel as nib

    for case in sorted({r["case"] for r in rows}):
        folder = out / "cases" / case
        pred = np.asarray(nib.load(folder / "prediction.nii.gz").dataobj)
        ids = np.asarray(nib.load(folder / "lesions.nii.gz").dataobj)
        ref, n = ndimage.label(pred, structure=np.ones((3, 3, 3)))
        np.testing.assert_array_equal(ids, ref)
        mine = sorted((int(r["lesion"]), int(r["size"])) for r in rows if r["case"] == case)
        assert mine == [(k, int(v)) for k, v in enumerate(np.bincount(ref.ravel())[1:], start=1)]
        assert {p.name for p in folder.iterdir()} >= {f"{e}.nii.gz" for e in NAMES}
    assert all("val_fp" in f and "reliable" in f for f in payload["folds"])
    assert payload["summary"]["best_baseline"] in {r["method"] for r in result.table}
    for row in result.table:
        if np.isfinite(row["auc_pct"]):
            assert row["auc_low_pct"] <= row["auc_pct"] + 1e-9 and row["auc_pct"] <= row["auc_high_pct"] + 1e-9
    means = {r["method"]: r["auc_pct"] for r in result.table}
    assert means["entropy_mean"] > 80  # the fake FPs carry high entropy
    assert (out / "results.md").read_text().count("|") > 20
    assert all(f["reliable"] == (f["val_fp"] >= 5) for f in result.folds)
    assert sum("too few" in n for n in result.notes) == sum(not f["reliable"] for f in result.folds)
    with pytest.raises(ValueError, match="not empty"):
        protocol.run_protocol(data, cfg, out_dir=out, progress=False)


def test_run_protocol_from_sample_maps(tmp_path):
    """--samples-dir: no U-Net; lesions are those of the maps' mean > 0.5; folds with few val FP flagged."""
    data = tmp_path / "data"
    _write_cases(data, 8, 3)
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    rng = np.random.default_rng(0)
    import nibabel as nib

    for i in range(8):
        gt = np.asarray(nib.load(data / "labelsTr" / f"c{i}.nii.gz").dataobj) > 0
        fg = np.where(gt, 0.9, 0.02) * np.ones((4, 1, 1, 1))
        for _ in range(1 + i % 3):  # FP blobs with flickering samples (high uncertainty)
            x, y, z = rng.integers(1, 13, 3)
            fg[:, x : x + 2, y : y + 2, z : z + 2] = rng.uniform(0.3, 1.0, size=(4, 1, 1, 1))
        save_volume(maps_dir / f"c{i}_samples.nii.gz", np.moveaxis(fg, 0, -1).astype(np.float32), np.eye(4))
    cfg = LesionProtocolConfig(folds=4, gcnn_epochs=2, samples_dir=str(maps_dir), min_val_fp=2, n_bootstrap=100)
    result = protocol.run_protocol(data, cfg, out_dir=tmp_path / "out", progress=False)
    for row in result.lesions[:5]:
        fg = np.asarray(nib.load(maps_dir / f"{row['case']}_samples.nii.gz").dataobj).mean(-1)
        ref, _ = ndimage.label(fg > 0.5, structure=np.ones((3, 3, 3)))
        assert row["size"] == int((ref == row["lesion"]).sum())
    assert all(f["reliable"] == (f["val_fp"] >= 2) for f in result.folds)
    with pytest.raises(ValueError, match="no sample maps"):
        (maps_dir / "c3_samples.nii.gz").unlink()
        protocol.run_protocol(data, cfg, progress=False)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="mask_from"):
        LesionProtocolConfig(mask_from="mode")
    with pytest.raises(ValueError, match="estimators"):
        LesionProtocolConfig(estimators=())


# ---------------------------------------------------------------- command line


def _fake_mc(model, image, key, *, estimators, n_samples, chunk_size, mask_from, volume_fn):
    rng = np.random.default_rng(int(abs(image).sum() * 1000) % 2**32)
    gt = image > 1.0
    pred = gt.copy()
    for _ in range(3):
        x, y, z = rng.integers(1, 13, 3)
        pred[x : x + 2, y : y + 2, z : z + 2] = True
    maps = {n: (0.3 * rng.random(image.shape) + 0.5 * (pred & ~gt)).astype(np.float32) for n in estimators}
    return pred.astype(np.uint8), maps


def test_cli_fit_and_score_with_fake_unet(tmp_path, monkeypatch):
    import nibabel as nib

    import ugcn.segment
    from ugcn.cli import main

    monkeypatch.setattr(ugcn.segment, "load_model", lambda path: {"fake": str(path)})
    monkeypatch.setattr(protocol, "mc_uncertainty", _fake_mc)
    monkeypatch.setattr(protocol, "_stochastic_fn", lambda model: None)
    data = tmp_path / "data"
    _write_cases(data, 3, 1)
    lm = tmp_path / "lm"
    args = ["lesions", "fit", "--data", str(data), "--model", "m", "--out", str(lm), "--gcnn-epochs", "2",
            "--gcnn-hidden", "8", "--no-progress"]
    assert main(args) == 0
    assert (lm / "config.json").exists()
    from ugcn.lesion.gcnn import load_lesion_model

    fitted = load_lesion_model(lm)  # --gcnn-hidden reached the network: every hidden layer is 8 wide
    import jax

    widths = {leaf.shape[-1] for leaf in jax.tree_util.tree_leaves(fitted.params) if leaf.ndim == 2}
    assert fitted.config.epochs == 2 and 8 in widths and 64 not in widths
    assert main(args) == 2  # refuses to overwrite
    out = tmp_path / "scores"
    image = data / "imagesTr" / "c0.nii.gz"
    score = ["lesions", "score", "--image", str(image), "--model", "m", "--lesion-model", str(lm), "--out", str(out)]
    assert main(score) == 0
    rows = (out / "c0_lesions.csv").read_text().splitlines()
    assert rows[0].startswith("lesion,size,centroid_x") and "gcnn_classif" in rows[0] and len(rows) > 1
    table = list(csv.DictReader(io.StringIO((out / "c0_lesions.csv").read_text())))
    for col in ("metaseg_classif", "metaseg_reg", "shape_logreg"):  # saved with the lesion model
        assert all(0.0 <= float(r[col]) <= 1.0 for r in table) or col == "metaseg_reg"
    # size = voxel count of the 26-connected component (scipy), size_score = 1 / size
    pred, _ = _fake_mc(None, np.asarray(nib.load(image).dataobj), None, estimators=(), n_samples=0,
                       chunk_size=0, mask_from="mean", volume_fn=None)
    ref_labels, n_ref = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    assert [int(r["size"]) for r in table] == list(np.bincount(ref_labels.ravel())[1:])
    assert [float(r["size_score"]) for r in table] == pytest.approx([1 / int(r["size"]) for r in table])
    labels = np.asarray(nib.load(out / "c0_lesion_labels.nii.gz").dataobj)
    unc = np.asarray(nib.load(out / "c0_lesion_uncertainty.nii.gz").dataobj)
    assert labels.max() == len(rows) - 1
    assert np.all((unc > 0) == (labels > 0)) or np.all(unc[labels == 0] == 0)
    assert main(score) == 2  # refuses to overwrite


def test_cli_evaluate_unet_settings_reach_the_protocol(tmp_path, monkeypatch):
    from ugcn.cli import main

    seen = {}

    def fake_fit(images, labels, cfg, seed, progress):
        seen.update(lr=cfg.unet_learning_rate, dropout=cfg.unet_dropout, patch=cfg.unet_patch, t=cfg.mc_samples,
                    epochs=cfg.unet_epochs, steps=cfg.unet_steps_per_epoch, batch=cfg.unet_batch_size,
                    width=cfg.unet_base_features, depth=cfg.unet_depth, chunk=cfg.mc_chunk)
        return {}

    monkeypatch.setattr(protocol, "_fit_unet", fake_fit)
    monkeypatch.setattr(protocol, "mc_uncertainty", _fake_mc)
    monkeypatch.setattr(protocol, "_stochastic_fn", lambda model: None)
    data = tmp_path / "data"
    _write_cases(data, 8, 2)
    args = ["lesions", "evaluate", "--data", str(data), "--out", str(tmp_path / "o"), "--unet-learning-rate", "0.02",
            "--unet-dropout", "0.15", "--unet-patch-size", "8", "8", "8", "--n-samples", "3", "--gcnn-epochs", "1",
            "--unet-epochs", "3", "--unet-steps-per-epoch", "2", "--unet-batch-size", "2", "--unet-base-features", "4",
            "--unet-depth", "1", "--chunk", "2", "--no-progress"]
    assert main(args) == 0
    assert seen == {"lr": 0.02, "dropout": 0.15, "patch": (8, 8, 8), "t": 3, "epochs": 3, "steps": 2, "batch": 2,
                    "width": 4, "depth": 1, "chunk": 2}


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from ugcn.cli import main

    assert main(["lesions", "evaluate", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    rc = main(["lesions", "score", "--image", "x.nii.gz", "--model", "m", "--lesion-model", str(tmp_path), "--out", "o"])
    assert rc == 2
    assert "not a lesion model" in capsys.readouterr().err
