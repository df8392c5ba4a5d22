"""Method L's k-fold protocol (ugcn.experiments.lesion_protocol): fold loop, aggregation and outputs, fake U-Net."""
import csv
import io
import json

import numpy as np
import pytest
from scipy import ndimage

import ugcn.experiments.lesion_protocol as protocol
from ugcn.experiments.lesion_protocol import LesionProtocolConfig
from ugcn.io import save_volume
from ugcn.lesion.protocol import method_names

NAMES = ("entropy", "variance", "one_minus_pcs")


def test_run_protocol_with_fake_unet(tmp_path, monkeypatch, write_lesion_cases):
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
    monkeypatch.setattr(protocol, "make_volume_fn", lambda model, stochastic: None)
    data = tmp_path / "data"
    write_lesion_cases(data, 8, 0)
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


def test_run_protocol_from_sample_maps(tmp_path, write_lesion_cases):
    """--samples-dir: no U-Net; lesions are those of the maps' mean > 0.5; folds with few val FP flagged."""
    data = tmp_path / "data"
    write_lesion_cases(data, 8, 3)
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


def test_inference_tiles_replace_the_training_patch(monkeypatch):
    """unet_inference_patch / unet_patch_overlap reach the model MC dropout runs (its patch grid)."""
    import jax

    from ugcn.segment import UNetConfig
    from ugcn.segment.model import init_model, patch_starts

    seen = {}

    def fake_train(images, labels, unet, **kwargs):
        seen["train_patch"] = unet.patch
        return init_model(unet, jax.random.PRNGKey(0)), {}

    monkeypatch.setattr(protocol, "train_model", fake_train)
    cfg = LesionProtocolConfig(unet_base_features=2, unet_depth=1, unet_patch=(8, 8, 8),
                               unet_inference_patch=(16, 12, 8), unet_patch_overlap=0.0)
    model = protocol._fit_unet([np.zeros((16, 24, 16), np.float32)], [np.zeros((16, 24, 16), np.uint8)], cfg, 0, False)
    assert seen["train_patch"] == (8, 8, 8)
    assert isinstance(model.config, UNetConfig) and model.config.patch == (16, 12, 8)
    assert len(patch_starts((16, 24, 16), model.config.patch, model.config.patch_overlap)) == 4  # 1 x 2 x 2 tiles


def test_run_protocol_follows_the_scan_orientation(tmp_path, monkeypatch, write_lesion_cases):
    """Cases stored in a permuted, flipped axis order give the lesion table of the same cases stored in RAS+:
    the U-Net is trained on (here: handed) RAS+ arrays, MC dropout and the lesions run in RAS+, and the case
    files come back in each file's own voxel order and affine."""
    import jax
    import nibabel as nib

    from ugcn.io import to_canonical
    from ugcn.segment.model import init_model

    seen = []

    def fake_train(images, labels, unet, **kwargs):  # an untrained U-Net, the same for both storage orders
        seen.append((np.stack(images), np.stack(labels)))
        return init_model(unet, jax.random.PRNGKey(1)), {}

    monkeypatch.setattr(protocol, "train_model", fake_train)
    ras_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    permutation = np.array([[2, 1], [0, -1], [1, 1]])  # stored as (P, S, R)
    psr_affine = ras_affine @ nib.orientations.inv_ornt_aff(permutation, (16, 16, 12))
    assert nib.aff2axcodes(psr_affine) == ("P", "S", "R")
    write_lesion_cases(tmp_path / "ras", 8, 5)
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / "psr" / sub).mkdir(parents=True)
        for f in sorted((tmp_path / "ras" / sub).iterdir()):
            array = nib.orientations.apply_orientation(np.asarray(nib.load(f).dataobj), permutation)
            save_volume(tmp_path / "psr" / sub / f.name, array, psr_affine)
    cfg = LesionProtocolConfig(folds=2, unet_base_features=2, unet_depth=1, unet_dropout=0.1, mc_samples=2,
                               mc_chunk=2, gcnn_epochs=1, min_val_fp=0, n_bootstrap=10)
    ras, psr = (protocol.run_protocol(tmp_path / name, cfg, out_dir=tmp_path / f"out_{name}", progress=False)
                for name in ("ras", "psr"))
    for (im_ras, lb_ras), (im_psr, lb_psr) in zip(seen[:2], seen[2:]):  # both folds trained on RAS+ arrays
        np.testing.assert_array_equal(im_psr, im_ras)
        np.testing.assert_array_equal(lb_psr, lb_ras)
    assert len(ras.lesions) >= 8 and len(psr.lesions) == len(ras.lesions)
    for a, b in zip(ras.lesions, psr.lesions):  # the same lesions, ids and scores
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
            else:
                assert b[key] == a[key], key
    for case in sorted({r["case"] for r in ras.lesions}):
        for fname in ("prediction.nii.gz", "lesions.nii.gz", "entropy.nii.gz"):
            mine = nib.load(tmp_path / "out_psr" / "cases" / case / fname)
            ref = nib.load(tmp_path / "out_ras" / "cases" / case / fname)
            np.testing.assert_allclose(mine.affine, psr_affine)  # the input's own grid
            assert mine.shape == (16, 12, 16)
            np.testing.assert_allclose(to_canonical(np.asarray(mine.dataobj), psr_affine), np.asarray(ref.dataobj),
                                       atol=1e-6)
