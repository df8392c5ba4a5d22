"""benchmarks/readme_results.py rewrites only the marked README region, from results files and a demo summary."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "benchmarks" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rewrite_touches_only_the_marked_region(gen):
    readme = "# Title\n\nintro\n\n<!-- results:start -->\nold text\n<!-- results:end -->\n\n## Next\ntail\n"
    new = gen.rewrite(readme, "| a |\n|---|")
    assert new == "# Title\n\nintro\n\n<!-- results:start -->\n| a |\n|---|\n<!-- results:end -->\n\n## Next\ntail\n"
    assert gen.rewrite(new, "| a |\n|---|") == new


@pytest.mark.parametrize("bad", ["no markers", "<!-- results:end --> <!-- results:start -->",
                                 "<!-- results:start --><!-- results:end --><!-- results:start -->"])
def test_rewrite_refuses_bad_markers(gen, bad):
    with pytest.raises(SystemExit):
        gen.rewrite(bad, "x")


def test_generate_from_results_and_demo(gen, tmp_path, monkeypatch):
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    monkeypatch.setattr(gen, "RESULTS", results)
    monkeypatch.setattr(gen, "FIGURES", figures)
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    run_all = sys.modules["run_all"]
    monkeypatch.setattr(run_all, "RESULTS", results)
    (results / "segment.json").write_text(json.dumps({"small": {
        "machine": {"platform": "TestOS", "cpus": 2, "jax": "0.0", "device": "cpu:0"},
        "step": {"batch": [8, 96, 96], "loop_step_s": 0.1, "scan_step_s": 0.2, "scan_over_loop": 2.0}}}))
    (results / "future_benchmark.json").write_text(json.dumps({"small": {"ratios": {"4 devices / 1 device": 3.5}}}))
    demo = tmp_path / "demo" / "refine"
    demo.mkdir(parents=True)
    (demo / "summary.json").write_text(json.dumps({
        "config": {"n_train": 2, "n_test": 1, "shape": [8, 8, 8], "base_features": 4, "dropout_rate": 0.1,
                   "epochs": 2, "steps_per_epoch": 5, "n_samples": 4, "uncertainty": "entropy", "tau": 0.8},
        "dice": [{"case": "ct_002", "nodes": 10, "CNN": 0.5, "E>0.5": 0.6, "CRF": None, "GCN": 0.7,
                  "GCN-unlabelled": 0.65}],
        "mean_dice": {"CNN": 0.5, "E>0.5": 0.6, "CRF": None, "GCN": 0.7, "GCN-unlabelled": 0.65},
        "tau_sweep": [{"tau": 0.8, "GCN": 0.7, "GCN-unlabelled": 0.65, "unlabelled nodes": 3}], "seconds": 12.0}))
    (demo / "slice.png").write_bytes(b"\x89PNG fake")
    text = gen.generate("auto", tmp_path / "demo")
    assert "do not edit by hand" in text
    assert "| mean |  | 0.50 | 0.60 | 0.70 | 0.65 |" in text  # CRF column absent: never computed
    assert "0.100 s per step from a Python loop" in text and "(2.00x)" in text
    assert "| 4 devices / 1 device | 3.50 |" in text  # an unknown benchmark shows its ratios
    assert "no small results for mcdo" not in text and "no  results" not in text
    assert (figures / "demo_refine_slice.png").read_bytes() == b"\x89PNG fake"
    assert "![demo slice](figures/demo_refine_slice.png)" in text
