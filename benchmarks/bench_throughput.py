"""Benchmark: end-to-end throughput of ``ugcn refine-batch --model`` (MC dropout, graph, fit) over a folder.

Makes a folder of CT phantoms (``ugcn phantoms ct``, 128x128x64 voxels), trains a 2D U-Net on it once
(``ugcn train``: the default architecture, a short training with the CT window), then runs
``ugcn refine-batch --images DIR --model MODEL`` over the folder twice, each in a fresh process as a user
would: first with an empty persistent compilation cache (every program compiled), then again with
``--overwrite`` (programs loaded from the cache). Reports volumes per minute of each run (process wall time,
Python start-up and imports included) and the split of a volume's time from its ``report.json``: MC dropout
with reading the image (``inputs_and_mc``), graph construction, GCN fit (the batch's vmapped fit divided
among its volumes), and the rest of the process (start-up, model loading, compilation, writing).

For comparison, the reference pipeline of method R (graph construction and fit, no MC dropout) took 42 s +
97 s = 139 s per volume at 90k nodes, measured earlier on this 2-core machine (a constant here, not rerun).

Usage:  python benchmarks/bench_throughput.py [--size small|large]
  small: 4 phantoms, T = 20, 120 training steps                 (~5 minutes on an idle 2-core CPU)
  large: 16 phantoms, T = 20, 300 training steps
Writes (updates the entry of its size in) benchmarks/results/throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, save_results

SIZES = {"small": dict(n=4, steps=(6, 20), n_samples=20), "large": dict(n=16, steps=(15, 20), n_samples=20)}
SHAPE = (128, 128, 64)
# The reference implementation's per-volume cost without MC dropout, measured earlier on this machine.
REFERENCE = {"graph_s": 42.0, "fit_s": 97.0, "nodes": 90000}
ROOT = Path(__file__).resolve().parent.parent


def ugcn(args: list[str], env: dict) -> float:
    """Run ``ugcn ARGS`` in a fresh process (this checkout's package); its wall time in seconds."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sys; from ugcn.cli import main; sys.exit(main())", *args],
                   check=True, env=env, cwd=str(ROOT))
    return time.perf_counter() - t


def case_split(out: Path) -> list[dict]:
    """Per case: seconds of MC (with reading the image), graph, fit, and the graph's node count."""
    rows = []
    for report in sorted(out.glob("*/report.json")):
        rep = json.loads(report.read_text())
        t = rep.get("timings_s", {})
        rows.append({"case": report.parent.name, "mc_and_read_s": t.get("inputs_and_mc", 0.0),
                     "graph_s": t.get("graph", 0.0), "fit_s": t.get("fit", 0.0), "total_refine_s": t.get("total"),
                     "nodes": (rep.get("graph") or {}).get("nodes"), "status": rep.get("status")})
    return rows


def summarize(wall: float, cases: list[dict]) -> dict:
    n = len(cases)
    parts = {k: sum(c[k] for c in cases) for k in ("mc_and_read_s", "graph_s", "fit_s")}
    parts["rest_of_process_s"] = wall - sum(parts.values())  # start-up, model, compilation, writing
    return {"wall_s": wall, "volumes": n, "volumes_per_minute": 60.0 * n / wall,
            "seconds_per_volume": {k: v / n for k, v in parts.items()},
            "share": {k: v / wall for k, v in parts.items()},
            "nodes": [c["nodes"] for c in cases], "status": [c["status"] for c in cases]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    machine = machine_info()
    print(f"refine-batch --model over {size['n']} CT phantoms {'x'.join(map(str, SHAPE))}, T = {size['n_samples']}, "
          f"load {machine['load_average'][0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ugcn-throughput-") as tmp:
        tmp_path = Path(tmp)
        env = dict(os.environ, UGCN_COMPILATION_CACHE=str(tmp_path / "cache"),
                   PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
        data, model, out = tmp_path / "data", tmp_path / "model", tmp_path / "refined"
        ugcn(["phantoms", "ct", str(data), "--n", str(size["n"]), "--shape", ",".join(map(str, SHAPE)), "--quiet"],
             env)
        epochs, steps = size["steps"]
        train_s = ugcn(["train", "--data", str(data), "--out", str(model), "--unet-dims", "2", "--unet-dropout", "0.1",
                        "--unet-epochs", str(epochs), "--unet-steps-per-epoch", str(steps), "--clip", "-160", "240",
                        "--quiet"], env)
        print(f"trained the default 2D U-Net ({epochs * steps} steps) in {train_s:.0f} s", flush=True)
        runs = {}
        for name, extra in (("cold_cache", []), ("warm_cache", ["--overwrite"])):
            wall = ugcn(["refine-batch", "--images", str(data / "imagesTr"), "--model", str(model), "--out", str(out),
                         "--n-samples", str(size["n_samples"]), "--quiet", *extra], env)
            runs[name] = summarize(wall, case_split(out))
            r = runs[name]
            split = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in r["seconds_per_volume"].items())
            print(f"{name}: {r['volumes']} volumes in {wall:.1f} s = {r['volumes_per_minute']:.2f} volumes/min; "
                  f"per volume: {split}; nodes {r['nodes']}", flush=True)
    reference_s = REFERENCE["graph_s"] + REFERENCE["fit_s"]
    warm = runs["warm_cache"]
    ratios = {"reference s per volume (graph + fit, no MC) / ugcn s per volume (MC + graph + fit, warm cache, "
              "whole process)": reference_s / (warm["wall_s"] / warm["volumes"]),
              "reference graph / ugcn graph (per volume)": REFERENCE["graph_s"] / warm["seconds_per_volume"]["graph_s"],
              "reference fit / ugcn fit (per volume)": REFERENCE["fit_s"] / warm["seconds_per_volume"]["fit_s"]}
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.1f}")
    machine["load_average_end"] = list(os.getloadavg())
    save_results("throughput", args.size, {
        "benchmark": "throughput", "size": args.size, "machine": machine,
        "setup": {"volumes": size["n"], "shape": list(SHAPE), "n_samples": size["n_samples"],
                  "training_steps": epochs * steps, "train_s": train_s,
                  "model": "default 2D U-Net (base 16, depth 3), dropout 0.1, CT window -160 240",
                  "timing": "process wall time of each refine-batch run; split from each case's report.json"},
        "runs": runs, "reference_per_volume_without_mc": REFERENCE, "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
