"""benchmarks/readme_results.py rewrites only the marked README region, from results files and a demo summary."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gen(load_benchmark):
    return load_benchmark("readme_results")


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


def _stats(mean, p, worse=0.0, worse_1pt=0.0):
    return {"n": 4, "mean_delta": mean, "median_delta": mean, "min_delta": mean - 0.02, "p_wilcoxon": p,
            "share_worse": worse, "share_worse_1pt": worse_1pt, "share_better": 1.0 - worse}


def test_sections_without_data_are_kept_and_the_study_is_rendered(gen, tmp_path, monkeypatch):
    results, figures = tmp_path / "results", tmp_path / "figures"
    results.mkdir()
    for name, value in (("RESULTS", results), ("FIGURES", figures), ("ROOT", tmp_path)):
        monkeypatch.setattr(gen, name, value)
    monkeypatch.setattr(sys.modules["run_all"], "RESULTS", results)
    old = gen.generate("small", tmp_path / "no-demo", "")
    assert "section:refine-demo" not in old  # nothing to show, nothing to keep
    previous = ("\n<!-- section:header -->\nold header\n\n<!-- section:refine-demo -->\n"
                "**Refinement demo** old table\n\n<!-- section:benchmarks -->\n### Benchmarks\nold bench\n")
    regime = {"regime": {"steps": 60, "n_train": 2, "dropout": 0.1}, "cnn_mean_dice": 0.62,
              "stats": {"E>0.5": _stats(0.01, 0.12), "GCN (default)": _stats(-0.03, 0.01, 0.75, 0.5)}}
    good = {"regime": {"steps": 300, "n_train": 5, "dropout": 0.3}, "cnn_mean_dice": 0.86,
            "stats": {"E>0.5": _stats(0.02, 0.03), "GCN (default)": _stats(0.0, 1.0)}}
    pooled = {"regimes with CNN Dice >= 0.8": {"volumes": 4, "cnn_mean_dice": 0.86, "stats": good["stats"]},
              "regimes with CNN Dice < 0.8": {"volumes": 4, "cnn_mean_dice": 0.62, "stats": regime["stats"]}}
    (results / "study_refine.json").write_text(json.dumps({"small": {
        "setup": {"n_test": 4, "shape": [64, 64, 32], "n_samples": 10, "uncertainty": "entropy"},
        "regimes": [regime, good], "seconds": 600.0,
        "summary": {"methods": ["E>0.5", "GCN (default)"], "pooled": pooled}}}))
    (results / "study_refine_small.png").write_bytes(b"\x89PNG study")
    notes = []
    text = gen.generate("small", tmp_path / "no-demo", previous, notes)
    assert "<!-- section:refine-demo -->\n**Refinement demo** old table" in text  # kept: no demo here
    assert "old bench" in text and "old header" not in text  # the header is always regenerated
    assert "kept from the previous README: refine-demo, benchmarks" in notes
    assert text.endswith("Not shown (no results yet: `make demo`, `make study`, `make bench`): lesion-demo.")
    assert "significant gains from E>0.5 (+0.020)" in text  # the CNN >= 0.8 group
    assert "significant losses from GCN (default) (-0.030)" in text
    assert "more than 1 Dice point lost on some volumes by GCN (default) (50%)" in text
    assert "| 60 steps, 2 vol, p=0.1 | 0.62 | +0.010 (0.12) | -0.030 (0.01) |" in text
    assert "| GCN (default) | -0.030 | -0.050 | 0.01 | 75% | 50% | 25% |" in text
    assert (figures / "study_refine.png").read_bytes() == b"\x89PNG study"
    assert gen.generate("small", tmp_path / "no-demo", text) == text  # stable: regenerating changes nothing
    assert "study_refine" not in text.split("section:benchmarks")[-1]  # not listed as a benchmark


def test_training_and_throughput_sections(gen):
    segment = {"torch_comparison": [
        {"dims": 2, "batch": [8, 128, 128], "params": 482449, "steps_per_s": {"ugcn": 2.0, "torch": 1.0,
                                                                               "torch_1thread": 0.5},
         "ugcn_over_torch_steps_per_s": 2.0}],
        "step": {"batch": [8, 96, 96], "loop_step_s": 0.1, "scan_step_s": 0.8, "scan_over_loop": 8.0,
                 "unrolled_over_loop": 1.1, "step_s": {"loop": 0.1, "scan": 0.8, "scan_unrolled": 0.11},
                 "layout_loop": {"convolutions": 42, "not_eigen_form": 0},
                 "layout_scan": {"convolutions": 43, "not_eigen_form": 29},
                 "eigen_form_check": {"layers": 3, "step_s": {"autodiff_loop": 0.1, "autodiff_scan": 2.0,
                                                              "eigen_form_loop": 0.1, "eigen_form_scan": 0.1}}}}
    text = "\n".join(gen.segment_section(segment, "small"))
    assert "| 2D | 8x128x128 | 482449 | 2.00 | 1.00 | 0.50 | 2.00 |" in text
    assert "(8.00x), 0.110 s in an unrolled scan (1.10x)" in text and "29 of the 43 convolutions" in text
    assert "a scan step takes 20.0x the loop's; with the same convolutions written in the Eigen form by hand, 1.00x" \
        in text
    run = {"volumes_per_minute": 3.0, "wall_s": 80.0, "nodes": [90000, 95000], "status": ["refined"] * 2,
           "seconds_per_volume": {"mc_and_read_s": 10.0, "graph_s": 1.0, "fit_s": 2.0, "rest_of_process_s": 27.0}}
    throughput = {"setup": {"n_samples": 20, "volumes": 2, "shape": [128, 128, 64], "model": "a model"},
                  "reference_per_volume_without_mc": {"graph_s": 42.0, "fit_s": 97.0, "nodes": 90000},
                  "runs": {"warm_cache": run}}
    text = "\n".join(gen.throughput_section(throughput, "small"))
    assert "| second run (programs from the cache) | 3.00 | 10.00 | 1.00 | 2.00 | 27.00 | 80.00 |" in text
    assert "(graphs of 90000-95000 nodes)" in text and "0.43 volumes / min" in text  # 60 / 139 s


def test_refine_section_shows_the_selection_cost(gen):
    def side(nodes, fit_s, total_s, candidates):
        return {"nodes": nodes, "fit_s": fit_s, "total_s": total_s, "candidates": candidates}

    selection = {"one fit": side(11232, 0.5, 0.7, 1), "selection": side(11232, 0.9, 1.2, 2),
                 "fit_ratio": 1.8, "total_ratio": 1.2 / 0.7}
    result = {"memory_bandwidth_GBps": 20.0, "graph_construction": [
        {"nodes": 20002, "directed_edges": 500000, "seconds": 0.4, "target_nodes": 20000}],
        "graph_growth_exponent": 1.0, "fit": {"nodes": 20002, "ms_per_epoch": 2.0, "seconds": 0.4,
                                              "bytes_per_epoch": 3e7, "achieved_GBps": 15.0,
                                              "bandwidth_fraction": 0.5},
        "selection": selection, "selections": [selection]}
    lines = gen.refine_section(result, "small")
    assert "| 11232 | 2 | 0.50 | 0.90 | 1.80 | 0.70 | 1.20 | 1.71 |" in lines
    del result["selections"]  # an older results file: its one selection case
    assert "| 11232 | 2 | 0.50 | 0.90 | 1.80 | 0.70 | 1.20 | 1.71 |" in gen.refine_section(result, "small")


def test_propagation_section_shows_the_fit_against_bandwidth(gen):
    def form(ms, gbps, frac):
        return {"ms": ms, "GBps": gbps, "bandwidth_fraction": frac}

    def part(ms, model, gbps, frac):
        return {"ms_per_epoch": ms, "model_bytes_per_epoch": model, "GBps": gbps, "bandwidth_fraction": frac}

    result = {"memory_bandwidth_GBps": 25.0, "bytes_per_edge": 20,
              "graphs": [{"nodes": 1000, "edges": 20000, "forms": {"ell": form(0.5, 12.5, 0.5)}}],
              "fits": [{"nodes": 1000, "parts_sum_over_fit": 0.9,
                        "parts": {"fit": part(2.0, 3e7, 15.0, 0.6), "propagation": part(1.0, 1.6e7, 16.0, 0.64)}}]}
    text = "\n".join(gen.propagation_section(result, "small"))
    assert "(25.0 GB/s, numpy copy)" in text
    assert "| 1000 | 20000 | ELL (default) | 0.50 | 12.50 | 50% |" in text
    assert "| 1000 | fit (default, hidden layer in node tiles) | 2.00 | 30.00 | 15.00 | 60% |" in text
    assert "| 1000 | its propagation alone | 1.00 | 16.00 | 16.00 | 64% |" in text
    assert "sum to 0.90 at 1000 nodes" in text


def test_propagation_section_names_the_packed_fit_and_the_tiled_one_it_replaced(gen):
    part = {"ms_per_epoch": 1.0, "model_bytes_per_epoch": 1e7, "GBps": 10.0, "bandwidth_fraction": 0.4}
    result = {"memory_bandwidth_GBps": 25.0, "bytes_per_edge": 20, "graphs": [],
              "fits": [{"nodes": 1000, "parts_sum_over_fit": 0.9, "fit_form": "packed",
                        "parts": {"fit": part, "fit_tiled": part}}]}
    text = "\n".join(gen.propagation_section(result, "small"))
    assert "| 1000 | fit (default, packed hidden layer) | 1.00 | 10.00 | 10.00 | 40% |" in text
    assert "| 1000 | fit, hidden layer in node tiles (before) | 1.00 | 10.00 | 10.00 | 40% |" in text


def _mcdo_result(measured):
    result = {"setup": {"n_samples": 20, "volume": [64, 64, 24], "unet": {"base_features": 8, "depth": 3}},
              "rows": [{"method": "jax: mc_sample", "chunk": 4, "seconds": 2.0, "speedup_vs_loop": 1.5}],
              "flops": {"matmul_gflops": 140.0, "issue_2d": {"total_tflop_stem_shared": 1.47,
                                                             "lower_bound_seconds_at_matmul_roof": 10.5}}}
    if measured:
        result["issue_2d_measured"] = {
            "unet": {"base_features": 16, "depth": 3}, "volume": [128, 128, 64], "n_samples": 20, "repeats": 3,
            "seconds": 14.7, "first_call_seconds": 31.3, "goal_seconds": 10.0, "tflop": 1.47, "gflop_per_s": 100.0,
            "load_average_1min": [1.3, 2.5]}
    else:  # an older results file: the extrapolation from the small network's rate
        result["flops"]["issue_2d"]["predicted_seconds_at_best_rate"] = 31.7
    return result


def test_mcdo_section_shows_the_measured_issue_case_against_the_goal(gen):
    text = "\n".join(gen.mcdo_section(_mcdo_result(measured=True), "small"))
    assert ("Issue 15's 2D case, measured: `mc_sample` (defaults) with the default 2D U-Net (base 16, depth 3), "
            "T = 20 over a 128x128x64 volume takes **14.7 s** (goal 10 s; median of 3 after a first call of 31.3 s "
            "with compilation; 100 GFLOP/s; 1-minute load 1.3-2.5).") in text
    assert "1.47 TFLOP; at this run's rate of one jitted matmul (140 GFLOP/s) that is 10.5 s (a single" in text
    assert "extrapolat" not in text and "concurrent programs over the passes" not in text


def test_mcdo_section_shows_the_streams_against_one_program(gen):
    result = _mcdo_result(measured=True)
    result["issue_2d_measured"].update(seconds=9.8, streams=2, one_stream_seconds=16.1)
    text = "\n".join(gen.mcdo_section(result, "small"))
    assert ("takes **9.8 s** (goal 10 s; median of 3 after a first call of 31.3 s with compilation; 100 GFLOP/s; "
            "1-minute load 1.3-2.5), as 2 concurrent programs over the passes; as one program 16.1 s in the same "
            "run.") in text


def test_mcdo_section_without_the_measurement_labels_the_extrapolation(gen):
    text = "\n".join(gen.mcdo_section(_mcdo_result(measured=False), "small"))
    assert "measured:" not in text and "goal" not in text
    assert "Not measured in this run; extrapolated from this run's (smaller) network's FLOP rate: 31.7 s" in text


def test_mcdo_section_reports_idle_and_stolen_cpu_time(gen):
    result = _mcdo_result(measured=True)
    result["issue_2d_measured"].update(repeats=5, seconds=10.6, max_idle_fraction=0.031, max_steal_fraction=0.012)
    text = "\n".join(gen.mcdo_section(result, "small"))
    assert ("takes **10.6 s** (goal 10 s; median of 5 after a first call of 31.3 s with compilation; 100 GFLOP/s; "
            "1-minute load 1.3-2.5; in any call at most 3 % of the CPU time idle and 1 % stolen by the host).") in text
