"""``ugcn estimators list/compare``: the comparison from a folder of sample maps, the registry listing."""
import csv
import json

import jax
import numpy as np
import pytest

from ugcn.cli import main
from ugcn.uncertainty import list_estimators


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, comparison_phantom):
    from ugcn.data import write_decathlon
    from ugcn.io import save_volume

    root = tmp_path_factory.mktemp("cmp")
    affine = np.eye(4)
    write_decathlon(root / "data", [(n, im, lab, affine) for n, im, lab, _, _ in comparison_phantom], name="cmp")
    for n, _, _, s, _ in comparison_phantom:
        save_volume(root / "samples" / f"{n}_samples.nii.gz", np.moveaxis(s[..., 1], 0, -1), affine)
    return root


def test_cli_compare_with_samples_dir(dataset, comparison_estimators, capsys):
    out = dataset / "out"
    argv = ["estimators", "compare", "--data", str(dataset / "data"), "--samples-dir", str(dataset / "samples"),
            "--out", str(out), "--estimators", "entropy,pcs,one_minus_pcs,cmp_noise,cmp_spread", "--region", "volume",
            "--no-method-r", "--gcnn-epochs", "3", "--folds", "2"]  # method R runs in the library test above
    assert main(argv + ["--quiet"]) == 0
    assert capsys.readouterr().out == ""
    with open(out / "comparison.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["estimator"] for r in rows] == ["entropy", "pcs", "one_minus_pcs", "cmp_noise", "cmp_spread"]
    assert rows[4]["needs"] == "samples" and rows[1]["higher_is_uncertain"] == "False"
    assert rows[0]["r_dice_default"] == "" and rows[0]["l_auc_gcnn"] != ""  # --no-method-r: empty cells, not errors
    payload = json.loads((out / "comparison.json").read_text())
    assert payload["source"]["samples_dir"].endswith("samples") and payload["versions"]["jax"] == jax.__version__
    # pcs is a confidence: oriented as 1 - pcs, it ranks voxels exactly as one_minus_pcs
    pcs, one_minus = payload["rows"][1], payload["rows"][2]
    assert pcs["auroc"] == pytest.approx(one_minus["auroc"], abs=1e-6)
    assert pcs["l_auc_mean"] == pytest.approx(one_minus["l_auc_mean"], abs=1e-6)
    assert (out / "comparison.png").stat().st_size > 10_000
    assert main(argv + ["--quiet"]) == 2  # refuses to overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_cli_list_shows_registered_and_user_estimators(comparison_estimators, capsys):
    assert main(["estimators", "list"]) == 0
    out = capsys.readouterr().out
    for name in list_estimators():
        assert name in out
    assert "confidence" in out and "samples" in out
