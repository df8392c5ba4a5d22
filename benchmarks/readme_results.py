"""Regenerate the results section of README.md from the benchmark JSON and the demo's summary.

Usage: ``python benchmarks/readme_results.py [--size small|large|auto] [--demo ugcn-demo] [--check]``

Reads ``benchmarks/results/*.json`` (written by ``make bench`` / ``benchmarks/run_all.py``) and the
refinement demo's ``<demo>/refine/summary.json`` (written by ``make demo`` / ``ugcn demo``; the lesion demo's
``<demo>/lesions/results/results.json`` too when present), copies the demo's figures into ``docs/figures/``
and rewrites ONLY the text between ``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md.
Nothing in that region is typed by hand. ``--check`` exits 1 when the README is not up to date (and
writes nothing). Missing inputs are skipped with a note in the generated text.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FIGURES = ROOT / "docs" / "figures"
START, END = "<!-- results:start -->", "<!-- results:end -->"
KNOWN = ("conv3d", "conv2d", "mcdo", "compile", "refine", "propagation", "lesion", "segment", "throughput", "scaling")
MAX_FIGURE_BYTES = 200_000

sys.path.insert(0, str(HERE))
from run_all import headline_ratios, size_entry  # noqa: E402


def fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(head: list[str], rows: list[list], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(head) - 1)
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return ["| " + " | ".join(head) + " |", rule] + ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]


def load(topic: str, size: str):
    """``(result, size used)`` of ``results/<topic>.json``; ``auto`` prefers large, then small."""
    path = RESULTS / f"{topic}.json"
    if not path.exists():
        return None, None
    data = json.loads(path.read_text())
    for s in (("large", "small") if size == "auto" else (size,)):
        entry = size_entry(data, s)
        if entry is not None:
            return entry, s
    return None, None


def machine_line(entries: list[dict]) -> str:
    """One sentence: the machine of the first entry, and the range of 1-minute load averages recorded."""
    loads = []
    for e in entries:
        m = e.get("machine", {})
        load = m.get("load_average_1min", m.get("load_average"))
        load = load[0] if isinstance(load, list) and load else load
        if isinstance(load, (int, float)):
            loads.append(float(load))
    line = ""
    for e in entries:
        m = e.get("machine", {})
        if m:
            cpus = m.get("cpus") or m.get("cpu_count")
            jax_v = m.get("jax") or e.get("versions", {}).get("jax")
            line = (f"Machine: {m.get('platform', '?')}, {cpus} CPU cores, JAX {jax_v} on "
                    f"{m.get('device', m.get('jax_backend', 'cpu'))}.")
            break
    if loads:
        line += (f" 1-minute load average when measured: {min(loads):.1f}-{max(loads):.1f} (a load above the core "
                 "count means other work shared the cores: absolute times are then pessimistic, and on this machine "
                 "PyTorch's times grew more under load than JAX's, so the PyTorch ratios are noisy).")
    return line


def mcdo_section(r: dict, size: str) -> list[str]:
    s = r["setup"]
    u = s["unet"]
    out = [f"**MC dropout** ({size}): T = {s['n_samples']} passes of a 2D U-Net (base {u['base_features']}, depth "
           f"{u['depth']}) over a {'x'.join(map(str, s['volume']))} volume; median seconds after warm-up, "
           "compilation excluded.", ""]
    rows = [[row["method"], row["chunk"], row["seconds"], row["speedup_vs_loop"]]
            for row in r["rows"] if row.get("seconds")]
    out += table(["implementation", "passes per call", "seconds", "speed-up vs JAX loop"], rows)
    t = r.get("torch", {})
    if "skipped" in t:
        out += ["", f"PyTorch rows skipped: {t['skipped']}."]
    elif t:
        threads = (f"timed with {' and '.join(str(n) for n in sorted(t['by_threads'], key=int, reverse=True))} "
                   f"threads, the faster kept: {t['threads']} for the loop, {t.get('chunk_threads', t['threads'])} "
                   "for the batch" if t.get("by_threads") else f"{t['threads']} threads")
        out += ["", f"PyTorch {t['torch']} ({threads}) runs the same network with the JAX weights "
                f"copied in (outputs agree to {t['max_abs_diff_deterministic']:.0e} with dropout off)."]
    out += mcdo_issue_2d_lines(r)
    if r.get("three_d"):
        out += mcdo_3d_lines(r["three_d"])
    return out


def cpu_share_note(measured: dict) -> str:
    """``"; at most x % of the CPU time idle and y % stolen by the hypervisor in any call"`` when the run recorded
    the machine's CPU accounting per call (``benchmarks/common.py``), else ``""``."""
    idle, steal = measured.get("max_idle_fraction"), measured.get("max_steal_fraction")
    if idle is None or steal is None:
        return ""
    return f"; in any call at most {100 * idle:.0f} % of the CPU time idle and {100 * steal:.0f} % stolen by the host"


def mcdo_issue_2d_lines(r: dict) -> list[str]:
    """Issue 15's 2D case (default 2D U-Net, T = 20 over 128x128x64): the measured time against the goal first,
    then the FLOP lower bound; results without the measurement show the old extrapolation, labelled as one."""
    issue, measured = r.get("flops", {}).get("issue_2d"), r.get("issue_2d_measured")
    out = []
    if measured:
        u = measured["unet"]
        load = measured.get("load_average_1min") or []
        out.append(f"Issue 15's 2D case, measured: `mc_sample` (defaults) with the default 2D U-Net (base "
                   f"{u['base_features']}, depth {u['depth']}), T = {measured['n_samples']} over a "
                   f"{'x'.join(map(str, measured['volume']))} volume takes **{measured['seconds']:.1f} s** (goal "
                   f"{measured['goal_seconds']:.0f} s; median of {measured['repeats']} after a first call of "
                   f"{measured['first_call_seconds']:.1f} s with compilation; {measured['gflop_per_s']:.0f} GFLOP/s"
                   + (f"; 1-minute load {min(load):.1f}-{max(load):.1f}" if load else "")
                   + cpu_share_note(measured) + ")"
                   + (f", as {measured['streams']} concurrent programs over the passes; as one program "
                      f"{measured['one_stream_seconds']:.1f} s in the same run"
                      if measured.get("streams", 1) > 1 and "one_stream_seconds" in measured else "") + ".")
    if issue:
        bound = (f"FLOPs: T = 20 over 128x128x64 with the default 2D U-Net is {issue['total_tflop_stem_shared']:.2f} "
                 f"TFLOP; at this run's rate of one jitted matmul ({r['flops']['matmul_gflops']:.0f} GFLOP/s) that is "
                 f"{issue['lower_bound_seconds_at_matmul_roof']:.1f} s (a single program's roof; the Winograd layers "
                 "do fewer multiplications and concurrent programs use the cores a single one leaves idle).")
        if not measured and "predicted_seconds_at_best_rate" in issue:
            bound += (f" Not measured in this run; extrapolated from this run's (smaller) network's FLOP rate: "
                      f"{issue['predicted_seconds_at_best_rate']:.1f} s (an extrapolation, not a measurement).")
        out.append(bound)
    return [line for text in out for line in ("", text)]


def mcdo_3d_lines(d: dict) -> list[str]:
    """The 3D part of the MC-dropout benchmark: stem sharing, patch batch, predicted brain time per overlap."""
    u = d["unet"]
    patch = "x".join(map(str, u["patch_size"] or [32] * 3))
    volume = "x".join(map(str, d["volume"]))
    out = ["", f"3D U-Net (base {u['base_features']}, depth {u['depth']}, {patch} patches, overlap "
           f"{u['patch_overlap']}), T = {d['n_samples']} over a {volume} volume ({d['patches']} patches):", ""]
    rows = [[r["method"], r["patch_batch"] if r["patch_batch"] is not None else "-", r["seconds"]] for r in d["rows"]]
    out += table(["implementation", "patches per call", "seconds"], rows)
    brain = d["brain_prediction"]
    out += ["", f"At this run's {d['seconds_per_patch_pass']:.3f} s per patch and pass, T = 20 on a "
            f"{'x'.join(map(str, d['brain']))} brain would take "
            + ", ".join(f"{b['predicted_T20_seconds']:.0f} s at overlap {o} ({b['patches']} patches)"
                        for o, b in brain.items()) + " (compilation excluded)."]
    cold = {o: b.get("predicted_with_deterministic_pass_and_compilation_seconds") for o, b in brain.items()}
    if all(v is not None for v in cold.values()):
        out[-1] += (" With the deterministic pass and this run's compile times: "
                    + ", ".join(f"{v:.0f} s at overlap {o}" for o, v in cold.items()) + ".")
    return out


def _unet_line(u: dict, dims: int, baseline: str, baseline_label: str) -> list[str]:
    """One sentence on the whole U-Net forward and forward + backward, default against ``baseline``."""
    if not u or "forward_seconds" not in u:
        return []
    f, t = u["forward_seconds"], u["train_seconds"]
    line = (f"Whole {dims}D U-Net (batch {u['batch']}), default convolutions against {baseline_label}: forward "
            f"{f[baseline] / f['auto']:.2f}x, forward + backward {t[baseline] / t['auto']:.2f}x faster")
    torch = (u.get("torch") or {}).get("forward_seconds")
    if torch:
        line += f"; PyTorch's forward takes {min(torch.values()) / f['auto']:.2f}x the default's time"
    return ["", line + "."]


def conv_section(r: dict, size: str, dims: int) -> list[str]:
    fwd, train = r["network_forward_gflops"], r["network_train_gflops"]
    # "direct" is left out: it runs only the 1-channel first layer, where the default runs it too (its network
    # total is the default's)
    order = ("xla", "taps_in", "taps_out", "taps_xy", "im2col", "winograd2", "winograd4", "auto",
             "train_rule", "torch", "torch_1thread")
    names = [n for n in order if n in fwd and n in train]
    label = {"xla": f"XLA conv{dims}d", "taps_in": "slices, taps on inputs", "taps_out": "slices, taps on outputs",
             "taps_xy": "9 X-Y taps on inputs, 1D conv along Z", "im2col": "27 taps on inputs, one matmul (im2col)",
             "winograd2": "Winograd F(2,3)", "winograd4": "Winograd F(4,3)", "auto": "per-layer choice (default)",
             "direct": "direct (shifted products, first layer)", "train_rule": "per-layer choice for training",
             "torch": f"PyTorch Conv{dims}d", "torch_1thread": f"PyTorch Conv{dims}d, 1 thread"}
    taps = "x".join(["3"] * dims)
    shape = "32^3 patches" if dims == 3 else f"{r['setup'].get('side', 128)}^2 slices"
    out = [f"**{dims}D convolutions** ({size}): GFLOP/s over all {taps} convolutions of the default {dims}D U-Net "
           f"({shape}, batch {r['setup']['batch']}), fastest of interleaved rounds.", ""]
    out += table(["implementation", "forward GFLOP/s", "forward + backward GFLOP/s"],
                 [[label[n], fwd[n], train[n]] for n in names])
    if dims == 3:
        out += _unet_line(r.get("unet_forward") or {}, 3, "taps_in", "the former default (taps on inputs)")
    else:
        out += _unet_line(r.get("unet") or {}, 2, "xla", "XLA's convolutions (the former default)")
    return out


def conv3d_section(r: dict, size: str) -> list[str]:
    return conv_section(r, size, 3)


def conv2d_section(r: dict, size: str) -> list[str]:
    return conv_section(r, size, 2)


def compile_section(r: dict, size: str) -> list[str]:
    rows = []
    for name, c in r["commands"].items():
        first, second = c["first"], c["second"]
        if "compiled_programs" in second:
            compiled = [first["compiled_programs"], first["compile_seconds"], second["compiled_programs"],
                        second["compile_seconds"], second["loaded_programs"]]
        else:  # results written before the counter split compilations from cache loads
            compiled = [first["misses"], first["compile_seconds"], second["misses"], "n/a", second["hits"]]
        rows.append([name] + compiled[:2] + [first["max_program_seconds"]] + compiled[2:]
                    + [first["process_seconds"], second["process_seconds"]])
    out = [f"**Compilation** ({size}): each command run twice in fresh processes sharing one empty persistent "
           "cache; a program counts as compiled when XLA compiled it, not when it was loaded from the cache.", ""]
    out += table(["command", "programs compiled", "compile s", "slowest program s", "2nd run compiled",
                  "2nd run compile s", "2nd run from cache", "1st run s", "2nd run s"], rows)
    brain = (r.get("setup") or {}).get("brain")
    if brain:
        name = next(n for n in r["commands"] if n.startswith("mcdo-3d brain"))
        first, second = r["commands"][name]["first"], r["commands"][name]["second"]
        shape = "x".join(str(n) for n in brain["shape"])
        out += ["", f"End to end, `ugcn mcdo` with the default 3D U-Net and T = {brain['n_samples']} on a {shape} "
                f"brain (random weights and image, the command's defaults): {first['process_seconds']:.0f} s in a "
                f"fresh process with an empty cache (of which {first['compile_seconds']:.0f} s compiling), "
                f"{second['process_seconds']:.0f} s with the programs from the cache (issue 15's goal: 180 s)."]
    return out


def refine_section(r: dict, size: str) -> list[str]:
    out = [f"**Method R graph construction and GCN fit** ({size}); memory bandwidth measured in the same run "
           f"(numpy copy): {r['memory_bandwidth_GBps']:.1f} GB/s.", ""]
    rows = [[f"~{g.get('target_nodes', g['nodes']) // 1000}k", g["nodes"], g["directed_edges"], g["seconds"]]
            for g in r["graph_construction"]]
    out += table(["graph", "nodes", "directed edges", "seconds"], rows)
    out += ["", f"Construction time grows as nodes^{r['graph_growth_exponent']:.2f} (least-squares fit)."]
    fits = r.get("fits") or [r["fit"]]
    rows = [[f["nodes"], f["ms_per_epoch"], f["seconds"], f["bytes_per_epoch"] / 1e6, f["achieved_GBps"],
             f"{100 * f['bandwidth_fraction']:.0f}%"] for f in fits]
    out += ["", "200-epoch fit (one jitted `lax.scan`); the bytes an epoch must move (model in "
            "`benchmarks/bench_refine.py`) against the measured bandwidth:", ""]
    if all("segment_sum" in f for f in fits):  # the ELL layout and, interleaved, the COO one
        rows = [row[:1] + [f"ELL (width {f['ell_width']})" if f["layout"] == "ell" else f["layout"]] + row[1:]
                + [f["segment_sum"]["ms_per_epoch"], f"{100 * f['segment_sum']['bandwidth_fraction']:.0f}%",
                   f["speedup_vs_segment_sum"]] for row, f in zip(rows, fits)]
        out += table(["nodes", "layout", "ms / epoch", "200 epochs s", "MB / epoch", "GB/s", "of bandwidth",
                      "segment_sum ms / epoch", "of bandwidth", "speed-up"], rows, align="rlrrrrrrrr")
        out += ["", "The default layout is ELL (`ugcn.graph.ell`: each node's in-edges in a row, gathers only, "
                "the backward pass the same propagation since Â is symmetric); segment_sum (XLA:CPU scatter-add) "
                "is the COO layout, timed interleaved in the same process. By the ELL's own byte count "
                "(12 bytes per slot): " + ", ".join(
                    f"{f['ell_bytes_per_epoch'] / 1e6:.1f} MB / epoch, {100 * f['ell_bytes_bandwidth_fraction']:.0f}% "
                    f"of bandwidth at {f['nodes']} nodes" for f in fits) + "."]
    else:
        out += table(["nodes", "ms / epoch", "200 epochs s", "MB / epoch", "GB/s", "of bandwidth"], rows)
    if r.get("fit_growth_exponent") is not None:
        out += ["", f"Fit time grows as nodes^{r['fit_growth_exponent']:.2f}."]
    p = r.get("pyg", {})
    if "skipped" in p:
        out += ["", f"PyTorch Geometric comparison skipped: {p['skipped']}."]
    elif p:
        threads = ("the faster of " + " and ".join(str(n) for n in sorted(p["by_threads"], key=int, reverse=True))
                   + " threads" if p.get("by_threads") else f"{p['threads']} threads")
        out += ["", f"Same graph ({p['nodes']} nodes) in PyTorch Geometric (torch {p['torch']}, {threads}, "
                f"{p['epochs']} epochs timed), per epoch:", ""]
        out += table(["implementation", "ms / epoch", "x ugcn"], [
            ["ugcn (JAX)", p["ugcn_ms_per_epoch"], 1.0],
            ["PyG `GCNConv` x 2", p["gcnconv_ms_per_epoch"], p["ratio_gcnconv_over_ugcn"]],
            ["PyG, same algebra (ÂX once, `Linear` + `GCNConv(32, 1)`)", p["same_algebra_ms_per_epoch"],
             p["ratio_same_algebra_over_ugcn"]],
        ])
    b = r.get("batch", [])
    if b:
        out += ["", "Batch of B volumes in one program (`fit_batch`) vs B separate fits:", ""]
        out += table(["B", "nodes each", "B separate fits s", "parallel (vmap) s", "sequential (lax.map) s",
                      "auto picks"],
                     [[x["B"], x["nodes_each"], x["separate_s"], x["parallel_s"], x["sequential_s"], x["auto"]]
                      for x in b], align="lrrrrl")
    sel = r.get("selections") or ([r["selection"]] if r.get("selection") else [])
    if sel:
        out += ["", "Per-volume selection among candidate graphs (`RefineConfig()`, fitted in one batched program) "
                "vs one fit (`RefineConfig(variants=())`), same volume; medians after warm-up:", ""]
        out += table(["nodes", "candidates", "one fit: fit s", "selection: fit s", "fit ratio", "one fit: total s",
                      "selection: total s", "total ratio"],
                     [[x["one fit"]["nodes"], x["selection"]["candidates"], x["one fit"]["fit_s"],
                       x["selection"]["fit_s"], x["fit_ratio"], x["one fit"]["total_s"], x["selection"]["total_s"],
                       x["total_ratio"]] for x in sel])
    return out


def lesion_section(r: dict, size: str) -> list[str]:
    e, g = r["extraction"], r["gcnn"]
    rows = [[f"lesion extraction + graphs + baselines ({e['lesions']} lesions, {'x'.join(map(str, e['volume']))})",
             e["seconds_total"]],
            ["of which components + IoU_adj + table", e["seconds_components_iou"]],
            [f"GCNN epoch, ugcn ({g['lesions']} lesion graphs, batches of 10)", g["seconds_per_epoch_jax"]]]
    if g.get("seconds_per_epoch_pyg"):
        rows.append(["GCNN epoch, PyTorch Geometric (same graphs and batches)", g["seconds_per_epoch_pyg"]])
    out = [f"**Method L** ({size}):", ""] + table(["step", "seconds"], rows)
    if g.get("ratio_pyg_over_jax"):
        out += ["", f"PyG / ugcn epoch time: {g['ratio_pyg_over_jax']:.2f}x."]
    return out


def segment_section(r: dict, size: str) -> list[str]:
    out = []
    rows = r.get("torch_comparison") or []
    if rows:
        out += [f"**U-Net training vs PyTorch** ({size}): training steps per second of the default U-Nets "
                "(Dice + cross-entropy, Adam) on the same batch, fastest of interleaved rounds; PyTorch with as "
                "many threads as cores and with one.", ""]
        names = [n for n in ("ugcn", "ugcn_inference_rule", "torch", "torch_1thread")
                 if any(n in row["steps_per_s"] for row in rows)]
        head = {"ugcn": "ugcn steps/s", "ugcn_inference_rule": "ugcn, inference-rule convolutions, steps/s",
                "torch": "PyTorch steps/s", "torch_1thread": "PyTorch 1 thread steps/s"}
        out += table(["U-Net", "batch", "parameters"] + [head[n] for n in names] + ["ugcn / PyTorch"],
                     [[f"{row['dims']}D", "x".join(map(str, row["batch"])), row["params"]]
                      + [row["steps_per_s"].get(n) for n in names] + [row.get("ugcn_over_torch_steps_per_s")]
                      for row in rows])
        out.append("")
    st = r["step"]
    line = (f"**U-Net training step** ({size}, batch {'x'.join(map(str, st['batch']))}): "
            f"{st['loop_step_s']:.3f} s per step from a Python loop, {st['scan_step_s']:.3f} s inside `lax.scan` "
            f"({st['scan_over_loop']:.2f}x)")
    if "unrolled_over_loop" in st:
        line += f", {st['step_s']['scan_unrolled']:.3f} s in an unrolled scan ({st['unrolled_over_loop']:.2f}x)"
    lay = st.get("layout_scan")
    if lay:
        line += (f". Cause, read off the compiled programs: inside the scan's while loop {lay['not_eigen_form']} "
                 f"of the {lay['convolutions']} convolutions (the backward ones) stay in a layout XLA:CPU's Eigen "
                 f"convolution does not take and run as generic loops "
                 f"({st['layout_loop']['not_eigen_form']} in the Python loop's program): XLA:CPU rewrites "
                 "convolutions into that layout only in a program's entry computation, so `train_model` "
                 "loops in Python")
    check = st.get("eigen_form_check")
    if check:
        t = check["step_s"]
        line += (f". Tested on {check['layers']} convolutions: with autodiff's backward convolutions a scan step "
                 f"takes {t['autodiff_scan'] / t['autodiff_loop']:.1f}x the loop's; with the same convolutions "
                 f"written in the Eigen form by hand, {t['eigen_form_scan'] / t['eigen_form_loop']:.2f}x")
    out.append(line + ".")
    tr = r.get("train_model")
    if tr:
        out[-1] += (f" `train_model` on {tr['n_train']} CT phantoms, {tr['steps']} steps: {tr['train_s']:.0f} s, "
                    f"held-out Dice {tr['dice_heldout_deterministic']:.3f}.")
    return out


def throughput_section(r: dict, size: str) -> list[str]:
    st, ref = r["setup"], r["reference_per_volume_without_mc"]
    label = {"cold_cache": "first run (empty compilation cache)", "warm_cache": "second run (programs from the cache)"}
    rows = []
    for name, run in r["runs"].items():
        per = run["seconds_per_volume"]
        rows.append([label.get(name, name), run["volumes_per_minute"], per["mc_and_read_s"], per["graph_s"],
                     per["fit_s"], per["rest_of_process_s"], run["wall_s"]])
    nodes = [n for run in r["runs"].values() for n in run["nodes"] if n]
    out = [f"**End-to-end throughput** ({size}): `ugcn refine-batch --model` (MC dropout T = {st['n_samples']}, "
           f"graph, fit) over {st['volumes']} CT phantoms {'x'.join(map(str, st['shape']))} in a fresh process, "
           f"{st['model']}; seconds per volume from each case's report.json"
           + (f" (graphs of {min(nodes)}-{max(nodes)} nodes)" if nodes else "") + ".", ""]
    out += table(["run", "volumes / min", "MC + read s", "graph s", "fit s", "rest of process s", "wall s"], rows)
    out += ["", f"The reference pipeline of method R took {ref['graph_s']:.0f} s (graph) + {ref['fit_s']:.0f} s (fit) "
            f"per volume at {ref['nodes'] // 1000}k nodes on this machine, without MC dropout: "
            f"{60.0 / (ref['graph_s'] + ref['fit_s']):.2f} volumes / min."]
    return out


def scaling_section(r: dict, size: str) -> list[str]:
    st = r["settings"]
    rows = [[row["devices"], row["median_s"], row["volumes_per_s"], row["speedup"], row["efficiency"],
             row["max_diff_vs_1_device"]] for row in r["rows"]]
    out = [f"**Scaling over devices** ({size}): the sharded cohort fit of {st['volumes']} volumes "
           f"(~{st['nodes']} nodes, {st['epochs']} epochs) on {r['platform']} devices.", ""]
    out += table(["devices", "seconds", "volumes / s", "speed-up", "efficiency", "max diff vs 1 device"], rows)
    if r.get("note"):
        out += ["", r["note"][0].upper() + r["note"][1:] + "."]
    return out


def propagation_section(r: dict, size: str) -> list[str]:
    bw = r["memory_bandwidth_GBps"]
    out = [f"**What bounds method R's fit** ({size}): one propagation over the voxel graph and the fit's parts, "
           f"fastest of interleaved rounds, against the memory bandwidth measured in the same run "
           f"({bw:.1f} GB/s, numpy copy). Propagation, {r['bytes_per_edge']} bytes per edge and pass:", ""]
    forms = ("gather", "segment_sum", "ell", "segment_sum_grad", "ell_grad")
    labels = {"gather": "gather only", "segment_sum": "segment_sum (scatter-add)", "ell": "ELL (default)",
              "segment_sum_grad": "segment_sum, forward + backward", "ell_grad": "ELL, forward + backward"}
    rows = [[g["nodes"], g["edges"], labels[f], g["forms"][f]["ms"], g["forms"][f]["GBps"],
             f"{100 * g['forms'][f]['bandwidth_fraction']:.0f}%"]
            for g in r["graphs"] for f in forms if f in g["forms"]]
    out += table(["nodes", "edges", "form", "ms", "GB/s", "of bandwidth"], rows, "rrlrrr")
    # Results before the packed hidden layer carry no "fit_form": their default fit was the tiled one.
    packed = any(f.get("fit_form") == "packed" for f in r["fits"])
    default = "packed hidden layer" if packed else "hidden layer in node tiles"
    part_labels = {"fit": f"fit (default, {default})",
                   "fit_tiled": "fit, hidden layer in node tiles (before)", "fit_untiled": "fit, hidden layer untiled",
                   "propagation": "its propagation alone", "dense": "its per-node part alone"}
    rows = [[f["nodes"], part_labels[name], part["ms_per_epoch"], part["model_bytes_per_epoch"] / 1e6,
             part["GBps"], f"{100 * part['bandwidth_fraction']:.0f}%"]
            for f in r["fits"] for name, part in f["parts"].items() if name in part_labels]
    out += ["", "The fit per epoch under `bench_refine`'s byte model (padded sizes):", ""]
    out += table(["nodes", "part", "ms / epoch", "MB / epoch (model)", "GB/s", "of bandwidth"], rows, "rlrrrr")
    sums = ", ".join(f"{f['parts_sum_over_fit']:.2f} at {f['nodes']} nodes" for f in r["fits"])
    out += ["", f"The two parts' times sum to {sums} of the fit's."]
    return out


SECTIONS = {"conv3d": conv3d_section, "conv2d": conv2d_section, "compile": compile_section, "mcdo": mcdo_section,
            "refine": refine_section,
            "lesion": lesion_section, "segment": segment_section, "throughput": throughput_section,
            "scaling": scaling_section, "propagation": propagation_section}


WRITE_FIGURES = True  # False under --check: nothing is written


def copy_figure(src: Path, name: str, notes: list[str]):
    """Copy a demo PNG into docs/figures (when small enough); return its README-relative path or None."""
    if not src.exists():
        return None
    if src.stat().st_size > MAX_FIGURE_BYTES:
        notes.append(f"{src} is larger than {MAX_FIGURE_BYTES // 1000} kB: not copied")
        return None
    dest = FIGURES / name
    if WRITE_FIGURES and (not dest.exists() or dest.read_bytes() != src.read_bytes()):
        FIGURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return dest.relative_to(ROOT).as_posix()


def _demo_crf_sentence(crf) -> str:
    """What the demo's CRF column is (older summaries recorded only a bool)."""
    if not isinstance(crf, dict) or not crf.get("config"):
        return ""
    k = crf["config"]
    setting = (f"unary from {'E' if k['unary'] == 'expectation' else 'Ŷ'} (floor {k['floor']:g}), smoothness kernel "
               f"{k['gaussian_width']} {k['spatial_units']} (compat {k['gaussian_compat']:g}), bilateral kernel "
               f"{k['bilateral_width']:g} {k['spatial_units']} and {k['intensity_width']:g} x the organ's intensity "
               f"spread (compat {k['bilateral_compat']:g})")
    if crf.get("tuned"):
        return (f" The CRF was tuned by a grid search over {crf['grid_points']} settings on "
                f"{crf.get('volumes', 'the')} training volumes "
                f"(their Dice: CNN {crf['train_dice_cnn']:.3f}, tuned CRF {crf['train_dice_crf']:.3f}): {setting}.")
    return f" CRF: {setting}."


def _demo_columns_sentence(methods) -> str:
    words = {"GCN": "GCN = the default `RefineConfig()`", "GCN-unlabelled": "GCN-unlabelled = its uncertain nodes only",
             "GCN-reference": "GCN-reference = the published configuration (`RefineConfig.preset(\"reference\")`)"}
    said = [words[m] for m in methods if m in words]
    return (" Columns: " + "; ".join(said) + ".") if said else ""


def demo_section(demo: Path, notes: list[str]) -> list[str]:
    path = demo / "refine" / "summary.json"
    if not path.exists():
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        notes.append(f"no demo summary at {shown} (run `make demo`)")
        return []
    s = json.loads(path.read_text())
    c = s["config"]
    names = s.get("methods") or ("CNN", "E>0.5", "CRF", "GCN", "GCN-unlabelled")
    methods = [m for m in names if any(r.get(m) is not None for r in s["dice"])]
    out = [f"**Refinement demo** (`make demo`, {s['seconds']:.0f} s): {c['n_train']} training and {c['n_test']} test "
           f"CT phantoms {'x'.join(map(str, c['shape']))}, a 2D U-Net (base {c['base_features']}, dropout "
           f"{c['dropout_rate']}) trained for {c['epochs'] * c['steps_per_epoch']} steps, T = {c['n_samples']} MC "
           f"passes, {c['uncertainty']} with τ = {c['tau']}." + _demo_crf_sentence(s.get("crf"))
           + _demo_columns_sentence(methods) + " Dice per test volume:", ""]
    rows = [[r["case"], r.get("nodes", "")] + [r.get(m) for m in methods] for r in s["dice"]]
    rows.append(["mean", ""] + [s["mean_dice"].get(m) for m in methods])
    out += table(["case", "graph nodes"] + methods, rows)
    sweep = s.get("tau_sweep", [])
    if sweep:
        out += ["", "Mean Dice over the test volumes for each τ:", ""]
        out += table(["τ", "GCN", "GCN-unlabelled", "unlabelled nodes"],
                     [[x["tau"], x["GCN"], x["GCN-unlabelled"], x["unlabelled nodes"]] for x in sweep])
    figs = [(copy_figure(demo / "refine" / "slice.png", "demo_refine_slice.png", notes), "demo slice"),
            (copy_figure(demo / "refine" / "tau_sweep.png", "demo_tau_sweep.png", notes), "tau sweep")]
    figs = [f"![{alt}]({p})" for p, alt in figs if p]
    if figs:
        out += [""] + figs
    return out


def lesion_demo_section(demo: Path, notes: list[str]) -> list[str]:
    path = demo / "lesions" / "results" / "results.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data.get("table") or data.get("methods") or []
    if not rows:
        return []
    out = ["**Lesion demo** (`ugcn demo --task lesions`, 4-fold protocol on brain phantoms):", ""]
    summary = data.get("summary") or {}
    if summary:
        out += [f"Pooled test lesions of folds {summary.get('evaluated_folds')}: {summary.get('tp')} TP, "
                f"{summary.get('fp')} FP, {summary.get('subjects')} subjects; 95 % intervals resample subjects; "
                f"Δ is the difference to the best baseline ({summary.get('best_baseline')}).", ""]

    def interval(r, key):
        lo, hi = r.get(f"{key}_low_pct"), r.get(f"{key}_high_pct")
        return None if lo is None or hi is None else f"[{fmt(lo, 1)}, {fmt(hi, 1)}]"

    out += table(["method", "pooled AUC (%)", "95 % CI", "mean over folds (%)", "Δ (%)", "Δ 95 % CI", "Spearman ρ",
                  "retention AUC"],
                 [[r["method"] + ("" if r.get("reliable", True) else " (unreliable)"),
                   r.get("auc_pct_pooled", r.get("auc_pct")), interval(r, "auc"), r.get("auc_mean_pct"),
                   r.get("delta_pct"), interval(r, "delta"), r.get("spearman"), r.get("retention_auc")]
                  for r in rows])
    folds = data.get("folds") or []
    if folds:
        dices = ", ".join(fmt(f.get("dice"), 3) for f in folds)
        counts = ", ".join(f"{f.get('tp')} / {f.get('fp')}" for f in folds)
        val = ", ".join(f"{f.get('val_tp')} / {f.get('val_fp')}" for f in folds)
        out += ["", f"U-Net Dice per fold: {dices}; TP / FP test lesions per fold: {counts}; "
                    f"validation: {val}."]
    curves = copy_figure(demo / "lesions" / "results" / "curves.png", "demo_lesion_curves.png", notes)
    if curves:
        out += ["", f"![accuracy-confidence curves]({curves})"]
    return out


STUDY = "study_refine"  # benchmarks/study_refine.py's results: a section of its own, not a benchmark
SECTION = "<!-- section:{} -->"  # opens a section of the region; it runs to the next one or to the region's end


def _pct(x) -> str:
    return f"{100 * x:.0f}%"


def study_section(notes: list[str], size: str) -> list[str] | None:
    """The regime study's section from ``results/study_refine.json`` (``None`` when there is none)."""
    path = RESULTS / f"{STUDY}.json"
    if not path.exists():
        notes.append("no regime study results (run `make study`)")
        return None
    data = json.loads(path.read_text())
    sizes = ("small",) if size == "small" else ("full", "small")
    used = next((x for x in sizes if size_entry(data, x) is not None), None)
    if used is None:
        notes.append(f"no {size} regime study results (run `make study`)")
        return None
    r = size_entry(data, used)
    st, summary = r["setup"], r["summary"]
    methods = summary["methods"]
    regimes = r["regimes"]
    steps = sorted({x["regime"]["steps"] for x in regimes})
    n_train = sorted({x["regime"]["n_train"] for x in regimes})
    dropout = sorted({x["regime"]["dropout"] for x in regimes})
    out = ["### Where refinement helps: the regime study", "",
           f"`make study` ({used} size, `python benchmarks/study_refine.py --size {used}`, "
           f"{r['seconds'] / 60:.0f} min; training the U-Nets took "
           f"{sum(x.get('train_seconds', 0) for x in regimes) / 60:.0f} min, and a rerun reuses their cached "
           "outputs): "
           + (f"**only {len(regimes)} of the {r['regimes_planned']} planned regimes finished** (the run was "
              "stopped; the others are missing, not averaged in): "
              if r.get("regimes_planned", len(regimes)) > len(regimes) else "")
           + f"{len(regimes)} 2D U-Nets of graded quality (training steps {steps} x training volumes {n_train} x "
           f"dropout {dropout}) segment the same {st['n_test']} held-out CT phantoms "
           f"{'x'.join(map(str, st['shape']))}; T = {st['n_samples']} MC passes, {st['uncertainty']} uncertainty. "
           "ΔDice is each method's Dice minus the CNN's (`Ŷ`, its largest component), per volume; p is a paired "
           "Wilcoxon signed-rank test against `Ŷ` (pooled rows pair each regime's volumes: the same phantoms "
           "recur across regimes); *worse* is the share of volumes the method made worse.", ""]
    out += _study_verdict(summary, methods)
    for group, g in summary["pooled"].items():
        out += ["", f"**{group}** ({g['volumes']} volumes, mean CNN Dice {g['cnn_mean_dice']:.3f}):", ""]
        out += table(["method", "mean ΔDice", "worst ΔDice", "p", "worse", "worse by > 1 pt", "better"],
                     [[m, f"{g['stats'][m]['mean_delta']:+.3f}", f"{g['stats'][m]['min_delta']:+.3f}",
                       f"{g['stats'][m]['p_wilcoxon']:.2g}", _pct(g["stats"][m]["share_worse"]),
                       _pct(g["stats"][m]["share_worse_1pt"]), _pct(g["stats"][m]["share_better"])] for m in methods])
    out += ["", "Mean ΔDice per regime (its volumes' Wilcoxon p in brackets):", ""]
    out += table(["regime", "CNN Dice"] + methods,
                 [[f"{x['regime']['steps']} steps, {x['regime']['n_train']} vol, p={x['regime']['dropout']}",
                   x["cnn_mean_dice"]] + [f"{x['stats'][m]['mean_delta']:+.3f} ({x['stats'][m]['p_wilcoxon']:.2g})"
                                          for m in methods] for x in regimes])
    fig = copy_figure(RESULTS / f"{STUDY}_{used}.png", "study_refine.png", notes)
    if fig:
        out += ["", f"![Dice gain against CNN Dice]({fig})"]
    return out


def _study_verdict(summary: dict, methods: list[str]) -> list[str]:
    """Plain sentences per group of regimes: which methods helped, hurt, or changed nothing significant."""
    out = []
    for group, g in summary["pooled"].items():
        if group == "all regimes" and len(summary["pooled"]) > 1:
            continue
        stats = g["stats"]
        helped = [m for m in methods if stats[m]["mean_delta"] > 0 and stats[m]["p_wilcoxon"] < 0.05]
        hurt = [m for m in methods if stats[m]["mean_delta"] < 0 and stats[m]["p_wilcoxon"] < 0.05]
        harmful = [m for m in methods if stats[m]["share_worse_1pt"] > 0]
        line = f"- In the {group} (mean CNN Dice {g['cnn_mean_dice']:.2f}): "
        line += ("significant gains from " + ", ".join(f"{m} ({stats[m]['mean_delta']:+.3f})" for m in helped)
                 if helped else "no method gained significantly")
        line += ("; significant losses from " + ", ".join(f"{m} ({stats[m]['mean_delta']:+.3f})" for m in hurt)
                 if hurt else "; no significant loss")
        if harmful:
            line += ("; more than 1 Dice point lost on some volumes by " + ", ".join(
                f"{m} ({_pct(stats[m]['share_worse_1pt'])})" for m in harmful))
        out.append(line + ".")
    return out


def generate_sections(size: str, demo: Path, notes: list[str]) -> list[tuple[str, list[str] | None]]:
    """``[(name, lines or None)]`` of the region's sections in order; ``None``: no data here for it."""
    sections = [("header", ["_Generated by `python benchmarks/readme_results.py` from `benchmarks/results/*.json` "
                            "and the demo's `summary.json`; do not edit by hand (sections without data in the "
                            "generating checkout are kept as they were)._"])]
    sections.append(("refine-demo", demo_section(demo, notes) or None))
    sections.append(("lesion-demo", lesion_demo_section(demo, notes) or None))
    sections.append(("study", study_section(notes, size)))
    entries, bench = [], []
    for topic in KNOWN:
        entry, used = load(topic, size)
        if entry is None:
            which = size if size != "auto" else ""
            notes.append(f"no {which} results for {topic} (run `make bench`)".replace("  ", " "))
            continue
        entries.append(entry)
        try:
            bench += SECTIONS[topic](entry, used) + [""]
        except (KeyError, TypeError) as err:  # an older results file: show its ratios only
            ratios_text = ", ".join(f"{k} {v:.3g}" for k, v in headline_ratios(topic, used).items())
            bench += [f"**{topic}** ({used}): {ratios_text} (older results format: {err!r})", ""]
    for path in sorted(RESULTS.glob("*.json")):  # any other benchmark (e.g. added later): its ratios
        topic = path.stem
        if topic in KNOWN or topic == STUDY:
            continue
        entry, used = load(topic, size)
        ratios = headline_ratios(topic, used) if entry is not None else {}
        if ratios:
            entries.append(entry)
            rows = [[k, float(v)] for k, v in ratios.items()]
            bench += [f"**{topic}** ({used}):", ""] + table(["ratio", "value"], rows) + [""]
    if bench:
        bench = ["### Benchmarks", "", "Medians of repeated runs after warm-up; every ratio compares runs made in "
                 "the same process. " + machine_line(entries), ""] + bench
    sections.append(("benchmarks", bench or None))
    return sections


def old_sections(region: str) -> dict[str, str]:
    """``{name: text}`` of the sections of an earlier generated region (see :data:`SECTION`)."""
    parts = re.split(r"^<!-- section:([\w-]+) -->\n", region, flags=re.M)
    return {name: text.strip("\n") for name, text in zip(parts[1::2], parts[2::2])}


def generate(size: str, demo: Path, old_region: str = "", notes: list[str] | None = None) -> str:
    """The region's new text; a section with no data here keeps its text from ``old_region``.

    ``notes`` (when given) receives what had no data and which sections were kept; sections with neither
    data nor earlier text are named in the region's last line.
    """
    notes = [] if notes is None else notes
    old = old_sections(old_region)
    chunks, kept, missing = [], [], []
    for name, lines in generate_sections(size, demo, notes):
        if lines is None:
            if name in old and old[name]:
                kept.append(name)
                chunks.append(f"{SECTION.format(name)}\n{old[name]}")
            else:
                missing.append(name)
            continue
        while lines and lines[-1] == "":
            lines.pop()
        chunks.append(SECTION.format(name) + "\n" + "\n".join(lines))
    if kept:
        notes.append(f"kept from the previous README: {', '.join(kept)}")
    if missing:
        chunks.append(SECTION.format("notes") + "\nNot shown (no results yet: `make demo`, `make study`, "
                      "`make bench`): " + ", ".join(missing) + ".")
    return "\n\n".join(chunks)


def region(readme: str) -> str:
    """The text between the results markers ('' when there are none)."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        return ""
    return readme.split(START, 1)[1].split(END, 1)[0]


def rewrite(readme: str, body: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1 or readme.index(START) > readme.index(END):
        raise SystemExit(f"README.md must hold exactly one {START} ... {END} region")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body}\n{END}{tail}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large", "auto"), default="small",
                        help="which benchmark size to show (default small, as `make bench`; auto: large when "
                        "present, else small)")
    parser.add_argument("--demo", type=Path, default=ROOT / "ugcn-demo", help="the demo's output folder")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is out of date; write nothing")
    args = parser.parse_args(argv)
    global WRITE_FIGURES
    WRITE_FIGURES = not args.check
    readme = args.readme.read_text()
    notes: list[str] = []
    new = rewrite(readme, generate(args.size, args.demo, region(readme), notes))
    for note in notes:
        print(f"note: {note}")
    if args.check:
        print("README results are up to date" if new == readme else "README results are out of date")
        return 0 if new == readme else 1
    if new != readme:
        tmp = args.readme.with_name(args.readme.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(args.readme)
        print(f"rewrote the results section of {args.readme}")
    else:
        print(f"{args.readme}: results section already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
