"""``ugcn lesions fit/score/evaluate``: outputs against scipy's components with a fake U-Net or another model's
sample maps, flags reaching the protocol, one-line errors."""
import csv
import io
import json

import numpy as np
import pytest
from scipy import ndimage

import ugcn.experiments.lesion_protocol as protocol
from ugcn.io import save_volume


def _fake_mc(model, image, key, *, estimators, n_samples, chunk_size, mask_from, volume_fn, affine=None):
    rng = np.random.default_rng(int(abs(image).sum() * 1000) % 2**32)
    gt = image > 1.0
    pred = gt.copy()
    for _ in range(3):
        x, y, z = rng.integers(1, 13, 3)
        pred[x : x + 2, y : y + 2, z : z + 2] = True
    maps = {n: (0.3 * rng.random(image.shape) + 0.5 * (pred & ~gt)).astype(np.float32) for n in estimators}
    return pred.astype(np.uint8), maps


@pytest.fixture
def fake_unet(monkeypatch):
    """A fake segmentation model whose MC dropout is :func:`_fake_mc`."""
    import ugcn.segment

    monkeypatch.setattr(ugcn.segment, "load_model", lambda path: {"fake": str(path)})
    monkeypatch.setattr(protocol, "mc_uncertainty", _fake_mc)
    monkeypatch.setattr(ugcn.segment, "make_volume_fn", lambda model, stochastic: None)


def test_cli_fit_and_score_with_fake_unet(tmp_path, monkeypatch, write_lesion_cases, fake_unet):
    import nibabel as nib

    from ugcn.cli import main

    data = tmp_path / "data"
    write_lesion_cases(data, 3, 1)
    lm = tmp_path / "lm"
    args = ["lesions", "fit", "--data", str(data), "--model", "m", "--out", str(lm), "--gcnn-epochs", "2",
            "--gcnn-hidden", "8", "--seed", "3", "--n-samples", "5", "--no-progress"]
    assert main(args) == 0
    assert (lm / "config.json").exists()
    from ugcn.lesion.gcnn import load_lesion_model

    fitted = load_lesion_model(lm)  # --gcnn-hidden reached the network: every hidden layer is 8 wide
    import jax

    widths = {leaf.shape[-1] for leaf in jax.tree_util.tree_leaves(fitted.params) if leaf.ndim == 2}
    assert fitted.config.epochs == 2 and 8 in widths and 64 not in widths
    assert main(args) == 2  # refuses to overwrite
    # --config reruns the recorded fit (seed, T, GCNN settings): the same network; another seed does not
    rerun = ["lesions", "fit", "--data", str(data), "--model", "m", "--no-progress"]
    assert main(rerun + ["--out", str(tmp_path / "lm2"), "--config", str(lm / "report.json")]) == 0
    recorded = json.loads((lm / "report.json").read_text())
    assert (recorded["seed"], recorded["n_samples"], recorded["gcnn"]["hidden"]) == (3, 5, 8)
    assert json.loads((tmp_path / "lm2" / "report.json").read_text()) == recorded
    assert (tmp_path / "lm2" / "params.msgpack").read_bytes() == (lm / "params.msgpack").read_bytes()
    assert main(rerun + ["--out", str(tmp_path / "lm3"), "--config", str(lm / "report.json"), "--seed", "4"]) == 0
    assert (tmp_path / "lm3" / "params.msgpack").read_bytes() != (lm / "params.msgpack").read_bytes()
    out = tmp_path / "scores"
    image = data / "imagesTr" / "c0.nii.gz"
    score = ["lesions", "score", "--image", str(image), "--model", "m", "--lesion-model", str(lm), "--out", str(out)]
    assert main(score + ["--seed", "2", "--n-samples", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["files"]) == sorted(p.name for p in out.iterdir())
    assert sorted(report["files"]) == ["lesion_uncertainty.nii.gz", "lesions.csv", "lesions.nii.gz",
                                       "prediction.nii.gz", "report.json"]
    rows = (out / "lesions.csv").read_text().splitlines()
    assert rows[0].startswith("lesion,size,centroid_x") and "gcnn_classif" in rows[0] and len(rows) > 1
    assert report["lesions"] == len(rows) - 1
    table = list(csv.DictReader(io.StringIO((out / "lesions.csv").read_text())))
    for col in ("metaseg_classif", "metaseg_reg", "shape_logreg"):  # saved with the lesion model
        assert all(0.0 <= float(r[col]) <= 1.0 for r in table) or col == "metaseg_reg"
    # size = voxel count of the 26-connected component (scipy), size_score = 1 / size
    pred, _ = _fake_mc(None, np.asarray(nib.load(image).dataobj), None, estimators=(), n_samples=0,
                       chunk_size=0, mask_from="mean", volume_fn=None)
    ref_labels, n_ref = ndimage.label(pred, structure=np.ones((3, 3, 3)))
    assert [int(r["size"]) for r in table] == list(np.bincount(ref_labels.ravel())[1:])
    assert [float(r["size_score"]) for r in table] == pytest.approx([1 / int(r["size"]) for r in table])
    labels = np.asarray(nib.load(out / "lesions.nii.gz").dataobj)
    unc = np.asarray(nib.load(out / "lesion_uncertainty.nii.gz").dataobj)
    np.testing.assert_array_equal(np.asarray(nib.load(out / "prediction.nii.gz").dataobj), pred)
    # The lesion labels are scipy's 26-connected components of the (fake) prediction, in the table's order.
    np.testing.assert_array_equal(labels, ref_labels)
    assert labels.max() == len(table) == n_ref
    # Background is 0; every voxel of lesion k holds lesion k's GCNN score from the table.
    assert np.all(unc[labels == 0] == 0)
    for row in table:
        k = int(row["lesion"])
        np.testing.assert_allclose(unc[labels == k], np.float32(float(row["gcnn_classif"])), rtol=1e-6)
    assert main(score) == 2  # refuses to overwrite
    # --config reruns the recorded settings: same T, seed and mask, the same table
    seen = []
    monkeypatch.setattr(protocol, "mc_uncertainty", lambda *a, **k: seen.append(k) or _fake_mc(*a, **k))
    again = tmp_path / "again"
    assert main(score[:-1] + [str(again), "--config", str(out / "report.json")]) == 0
    assert (seen[0]["n_samples"], seen[0]["mask_from"]) == (4, "mean")
    assert (again / "lesions.csv").read_text() == (out / "lesions.csv").read_text()
    rerun = json.loads((again / "report.json").read_text())
    assert {k: rerun[k] for k in ("n_samples", "chunk", "seed", "settings")} == {
        k: report[k] for k in ("n_samples", "chunk", "seed", "settings")}


def test_score_from_sample_maps(tmp_path, write_lesion_cases, fake_unet):
    from ugcn.cli import main

    data = tmp_path / "data"
    write_lesion_cases(data, 3, 1)
    lm = tmp_path / "lm"
    assert main(["lesions", "fit", "--data", str(data), "--model", "m", "--out", str(lm), "--gcnn-epochs", "2",
                 "--estimators", "entropy", "variance", "--no-progress"]) == 0
    # Another framework's T = 5 foreground maps: two blobs, one certain, one flickering.
    rng = np.random.default_rng(0)
    fg = np.zeros((5, 16, 16, 12), np.float32)  # the shape of write_lesion_cases
    fg[:, 2:6, 2:6, 2:5] = 0.9
    fg[:, 10:12, 10:13, 6:8] = rng.uniform(0.3, 1.0, size=(5, 1, 1, 1))
    fg[:, 0, 0, 0] = 0.7  # a one-voxel lesion in the corner
    samples = tmp_path / "c0_samples.nii.gz"
    save_volume(samples, np.moveaxis(fg, 0, -1), np.eye(4))
    out = tmp_path / "out"
    image = data / "imagesTr" / "c0.nii.gz"
    args = ["lesions", "score", "--image", str(image), "--samples", str(samples), "--lesion-model", str(lm),
            "--out", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(io.StringIO((out / "lesions.csv").read_text())))
    labels, n = ndimage.label(fg.mean(0) > 0.5, structure=np.ones((3, 3, 3)))
    assert len(rows) == n == 3
    assert [int(r["size"]) for r in rows] == list(np.bincount(labels.ravel())[1:])
    # Entropy (bits) of the mean foreground probability, averaged over each lesion, by hand.
    p = np.clip(fg.mean(0), 1e-7, 1 - 1e-7)  # the background (p = 0) is not inside any lesion
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    for k, r in enumerate(rows, start=1):
        assert float(r["entropy_mean"]) == pytest.approx(h[labels == k].mean(), rel=1e-4)
        assert float(r["variance_mean"]) == pytest.approx(fg.var(0)[labels == k].mean(), rel=1e-3, abs=1e-7)
    assert "metaseg_classif" in rows[0] and "shape_logreg" in rows[0]
    # --samples replaces --model; deterministic masks need a model.
    assert main(args + ["--model", "m", "--overwrite"]) == 2
    assert main(args + ["--mask-from", "deterministic", "--overwrite"]) == 2


def test_cli_evaluate_unet_settings_reach_the_protocol(tmp_path, monkeypatch, write_lesion_cases):
    from ugcn.cli import main

    seen = {}

    def fake_fit(images, labels, cfg, seed, progress):
        seen.update(lr=cfg.unet_learning_rate, dropout=cfg.unet_dropout, patch=cfg.unet_patch, t=cfg.mc_samples,
                    epochs=cfg.unet_epochs, steps=cfg.unet_steps_per_epoch, batch=cfg.unet_batch_size,
                    width=cfg.unet_base_features, depth=cfg.unet_depth, chunk=cfg.mc_chunk, min_val_fp=cfg.min_val_fp,
                    boot=cfg.n_bootstrap, tiles=cfg.unet_inference_patch, overlap=cfg.unet_patch_overlap)
        return {}

    monkeypatch.setattr(protocol, "_fit_unet", fake_fit)
    monkeypatch.setattr(protocol, "mc_uncertainty", _fake_mc)
    monkeypatch.setattr(protocol, "make_volume_fn", lambda model, stochastic: None)
    data = tmp_path / "data"
    write_lesion_cases(data, 8, 2)
    args = ["lesions", "evaluate", "--data", str(data), "--out", str(tmp_path / "o"), "--unet-learning-rate", "0.02",
            "--unet-dropout", "0.15", "--unet-patch-size", "8", "8", "8", "--n-samples", "3", "--gcnn-epochs", "1",
            "--unet-epochs", "3", "--unet-steps-per-epoch", "2", "--unet-batch-size", "2", "--unet-base-features", "4",
            "--unet-depth", "1", "--chunk", "2", "--min-val-fp", "1", "--bootstrap", "30", "--no-cases",
            "--unet-inference-patch", "16", "16", "12", "--unet-patch-overlap", "0", "--no-progress"]
    assert main(args) == 0
    assert seen == {"lr": 0.02, "dropout": 0.15, "patch": (8, 8, 8), "t": 3, "epochs": 3, "steps": 2, "batch": 2,
                    "width": 4, "depth": 1, "chunk": 2, "min_val_fp": 1, "boot": 30, "tiles": (16, 16, 12),
                    "overlap": 0.0}
    payload = json.loads((tmp_path / "o" / "results.json").read_text())
    assert payload["summary"]["bootstrap"]["replicates"] == 30 and not (tmp_path / "o" / "cases").exists()
    assert all(f["reliable"] == (f["val_fp"] >= 1) for f in payload["folds"])


def test_cli_bad_input_exits_2(tmp_path, capsys):
    from ugcn.cli import main

    assert main(["lesions", "evaluate", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    rc = main(["lesions", "score", "--image", "x.nii.gz", "--model", "m", "--lesion-model", str(tmp_path),
               "--out", "o"])
    assert rc == 2
    assert "not a lesion model" in capsys.readouterr().err


def test_score_images_resumes_to_the_clean_run(tmp_path, write_lesion_cases, folder_resumes):
    import jax

    from ugcn.cli import main
    from ugcn.lesion.gcnn import GCNNConfig, LesionModel, _compiled, _init_graph, save_lesion_model
    from ugcn.segment import UNetConfig, init_model, save_model

    save_model(init_model(UNetConfig(dims=2, base_features=2, depth=1), jax.random.PRNGKey(0)), tmp_path / "model")
    names = ("intensity_0", "label", "entropy", "variance")
    config = GCNNConfig(feature_names=names, hidden=8)
    init, _, _ = _compiled(config.hidden, config.outputs, config.task)
    params, _ = init(jax.random.PRNGKey(1), _init_graph(len(names)))
    save_lesion_model(LesionModel(config, params, np.zeros(4, np.float32), np.ones(4, np.float32)), tmp_path / "lm")
    write_lesion_cases(tmp_path / "data", 3, 2)
    images = tmp_path / "data" / "imagesTr"
    common = ["lesions", "score", "--model", str(tmp_path / "model"), "--lesion-model", str(tmp_path / "lm"),
              "--n-samples", "2", "--chunk", "2", "--no-progress"]
    argv = common + ["--images", str(images), "--batch-size", "1"]
    assert main(argv + ["--out", str(tmp_path / "clean")]) == 0
    clean = json.loads((tmp_path / "clean" / "summary.json").read_text())
    assert folder_resumes(argv, tmp_path / "out") == clean
    # a case folder holds what `--image` writes, and the summary counts its table's rows
    assert main(common + ["--image", str(images / "c1.nii.gz"), "--out", str(tmp_path / "one")]) == 0
    case = tmp_path / "out" / "c1"
    assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    rows = (case / "lesions.csv").read_text().splitlines()
    assert rows[0] == (tmp_path / "one" / "lesions.csv").read_text().splitlines()[0]
    assert clean["volumes"]["c1"]["lesions"] == len(rows) - 1
    for name in ("prediction", "lesions"):
        np.testing.assert_array_equal(np.asarray(nib_load(case / f"{name}.nii.gz")),
                                      np.asarray(nib_load(tmp_path / "one" / f"{name}.nii.gz")), err_msg=name)


def nib_load(path):
    import nibabel as nib

    return nib.load(str(path)).dataobj
