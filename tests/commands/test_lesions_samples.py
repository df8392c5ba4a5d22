"""``ugcn lesions score --samples``: lesions of another model's 4D sample maps, against scipy and numpy."""
import csv
import io

import numpy as np
import pytest
from scipy import ndimage

import ugcn.lesion.protocol as protocol
from ugcn.io import save_volume

SHAPE = (16, 16, 12)


def _fake_mc(model, image, key, *, estimators, n_samples, chunk_size, mask_from, volume_fn):
    rng = np.random.default_rng(int(abs(image).sum() * 1000) % 2**32)
    gt = image > 1.0
    pred = gt.copy()
    for _ in range(3):
        x, y, z = rng.integers(1, 13, 3)
        pred[x : x + 2, y : y + 2, z : z + 2] = True
    maps = {n: (0.3 * rng.random(image.shape) + 0.5 * (pred & ~gt)).astype(np.float32) for n in estimators}
    return pred.astype(np.uint8), maps


def _cases(folder, n, seed):
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


def test_score_from_sample_maps(tmp_path, monkeypatch):
    import ugcn.segment
    from ugcn.cli import main

    monkeypatch.setattr(ugcn.segment, "load_model", lambda path: {"fake": str(path)})
    monkeypatch.setattr(protocol, "mc_uncertainty", _fake_mc)
    monkeypatch.setattr(protocol, "_stochastic_fn", lambda model: None)
    data = tmp_path / "data"
    _cases(data, 3, 1)
    lm = tmp_path / "lm"
    assert main(["lesions", "fit", "--data", str(data), "--model", "m", "--out", str(lm), "--gcnn-epochs", "2",
                 "--estimators", "entropy", "variance", "--no-progress"]) == 0
    # Another framework's T = 5 foreground maps: two blobs, one certain, one flickering.
    rng = np.random.default_rng(0)
    fg = np.zeros((5,) + SHAPE, np.float32)
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
    rows = list(csv.DictReader(io.StringIO((out / "c0_lesions.csv").read_text())))
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
