"""The refinement demo end to end at a toy size: every output is written and every Dice is a number."""
import json
import math

import nibabel as nib
import numpy as np

from ugcn.experiments.demo import DemoConfig, run_refinement_demo

TINY = DemoConfig(n_train=1, n_test=2, shape=(32, 32, 16), base_features=4, depth=1, epochs=1, steps_per_epoch=3,
                  batch_size=4, n_samples=3, tau=0.95, tau_sweep=(0.8,))


def test_refinement_demo_writes_every_output(tmp_path):
    lines = []
    summary = run_refinement_demo(tmp_path, TINY, progress=False, log=lines.append)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["mean_dice"] == summary["mean_dice"]
    assert len(summary["dice"]) == 2
    for row in summary["dice"]:
        for method in ("CNN", "E>0.5", "GCN", "GCN-unlabelled"):
            assert row[method] is None or 0.0 <= row[method] <= 1.0
    for name in ("slice.png", "tau_sweep.png", "dice.md", "model/config.json"):
        assert (tmp_path / name).is_file(), name
    case = tmp_path / "cases" / summary["dice"][0]["case"]
    image = nib.load(case / "image.nii.gz")
    refined = nib.load(case / "refined.nii.gz")
    assert refined.shape == TINY.shape
    assert (case / "prediction.nii.gz").is_file() and not (case / "cnn.nii.gz").exists()  # the commands' names
    np.testing.assert_allclose(refined.affine, image.affine)
    assert any("Dice per test volume" in line for line in lines)
    from ugcn.refine import crf_available
    from ugcn.refine.crf import DEFAULT_GRID

    if crf_available():  # the CRF was grid-searched on the training volumes and its setting recorded
        n_grid = math.prod(len(values) for values in DEFAULT_GRID.values())
        assert summary["crf"]["tuned"] and summary["crf"]["grid_points"] == len(summary["crf"]["grid"]) == n_grid
        assert set(summary["crf"]["config"]) >= {"unary", "bilateral_width", "intensity_width", "bilateral_compat"}
        assert (case / "crf.nii.gz").is_file()
