"""``ugcn phantoms``: the cases it writes equal the library's phantoms of the documented seeds."""
from __future__ import annotations

import json

import numpy as np

from ugcn.commands.phantoms import case_seed
from ugcn.data import ct_phantom, find_cases, load_case


def test_phantoms_ct_writes_three_readable_cases(tmp_path, capsys, run_cli):
    out_dir = tmp_path / "ct"
    code, out, err = run_cli(capsys, ["phantoms", "ct", str(out_dir), "--n", "3", "--seed", "7", "--shape", "24,24,16"])
    assert code == 0, err
    assert out.strip().count("\n") == 0 and "3 ct phantom cases" in out
    cases = find_cases(out_dir)
    assert [c.name for c in cases] == ["ct_000", "ct_001", "ct_002"]
    for i, case in enumerate(cases):
        image, label = load_case(case)
        expected = ct_phantom(case_seed(7, i), shape=(24, 24, 16))  # the documented seed rule: 7 * 1000 + i
        np.testing.assert_allclose(image.array, expected.image, rtol=1e-6)
        np.testing.assert_array_equal(label.array, expected.label)
    meta = json.loads((out_dir / "dataset.json").read_text())
    assert meta["numTraining"] == 3 and meta["labels"]["1"] == "spleen"


def test_phantoms_brain(tmp_path, capsys, run_cli):
    code, _, err = run_cli(capsys, ["phantoms", "brain", str(tmp_path / "b"), "--n", "1", "--shape", "32,32,24",
                                    "--quiet"])
    assert code == 0, err
    (case,) = find_cases(tmp_path / "b")
    assert case.name == "brain_000"
    assert load_case(case)[1].array.sum() > 0
