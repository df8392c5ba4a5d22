"""Benchmark: compilation of the ``ugcn`` commands' programs, first run and second run (persistent cache).

Runs each command twice in fresh processes sharing one empty ``UGCN_COMPILATION_CACHE`` folder, and counts
through ``jax.monitoring`` the XLA programs each run compiled and those it loaded from the persistent cache
instead, with the time of each (see :data:`LISTENERS`; "second-run compiled programs" counts only programs
XLA compiled, not loads):
  - ``mcdo`` with a 2D U-Net (the default architecture, random weights), T = 4;
  - ``mcdo`` with a 3D U-Net (default, 32^3 patches), T = 4;
  - ``refine`` with the 2D model (MC dropout, graph, fit);
  - issue 15's end-to-end case, ``mcdo`` with the default 3D U-Net, T = 20, on a 99 x 117 x 95 brain
    (~1.1 M voxels) with the command's defaults (``--no-brain`` leaves it out: two runs of a few minutes).
Goals: every program compiles in <= 20 s on a 2-core CPU; the second run compiles nothing; the brain's first
run (compilation included) takes <= 3 minutes.

Usage:  python benchmarks/bench_compile.py [--size small|large]
  small: 2D image 64x64x16, 3D image 40x40x40
  large: 2D image 128x128x64, 3D image 96x96x96
Writes (updates the entry of its size in) benchmarks/results/compile.json.
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

SIZES = {"small": dict(shape2d=(64, 64, 16), shape3d=(40, 40, 40)),
         "large": dict(shape2d=(128, 128, 64), shape3d=(96, 96, 96))}
#: issue 15's brain (the shape of bench_mcdo's prediction) and its MC passes
BRAIN, BRAIN_SAMPLES = (99, 117, 95), 20

# Listeners on jax's compilation events (prepended to the child's code). jax records
# ``/jax/core/compile/backend_compile_duration`` around ``compile_or_get_cached``, so it fires for every
# program, compiled or loaded from the persistent cache; a load fires ``/jax/compilation_cache/cache_hits``
# first, in the same thread. A program is "compiled" when its duration event had no hit before it, and
# "loaded" otherwise. (``cache_misses`` counts only the programs written to the cache, so it misses those
# under jax's size/compile-time thresholds; ugcn sets both to 0, see ``ugcn.cli.enable_compilation_cache``.)
LISTENERS = r"""
import json, sys, threading, time
import jax.monitoring as monitoring
stats = {"misses": 0, "hits": 0, "requests": 0, "compiled": [], "loaded": []}
_local = threading.local()
def on_event(event, **kw):
    if event == "/jax/compilation_cache/cache_misses": stats["misses"] += 1
    elif event == "/jax/compilation_cache/cache_hits":
        stats["hits"] += 1
        _local.hit = True
    elif event == "/jax/compilation_cache/compile_requests_use_cache": stats["requests"] += 1
def on_duration(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        kind = "loaded" if getattr(_local, "hit", False) else "compiled"
        _local.hit = False
        stats[kind].append([str(kw.get("fun_name", "?")), float(duration)])
monitoring.register_event_listener(on_event)
monitoring.register_event_duration_secs_listener(on_duration)
"""

# Runs one command in this process (``ugcn.cli.main``, which enables the persistent cache); one JSON line.
CHILD = LISTENERS + r"""
from ugcn.cli import main
t = time.perf_counter()
code = main(sys.argv[1:])
stats["wall_seconds"] = time.perf_counter() - t
stats["exit_code"] = code
print("COMPILE_STATS " + json.dumps(stats))
"""


def run_child(code: str, argv: list[str], env: dict) -> dict:
    """Runs ``code`` (:data:`LISTENERS` + a body that prints ``COMPILE_STATS <json>``) in a fresh Python.

    Returns the stats: ``compiled``/``loaded``: ``[name, seconds]`` per program, slowest first, and
    ``compiled_programs``, ``compile_seconds``, ``loaded_programs``, ``load_seconds``, ``process_seconds``.
    """
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code] + argv, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("COMPILE_STATS ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    stats = json.loads(line[-1].split(" ", 1)[1])
    for kind in ("compiled", "loaded"):
        stats[kind].sort(key=lambda p: -p[1])
    stats.update(process_seconds=wall,
                 compiled_programs=len(stats["compiled"]), compile_seconds=sum(p[1] for p in stats["compiled"]),
                 loaded_programs=len(stats["loaded"]), load_seconds=sum(p[1] for p in stats["loaded"]))
    return stats


def make_inputs(folder: Path, size: dict, brain: bool = False) -> dict:
    """Random-weight default U-Nets and random images: ``{dims: (model dir, image path)}``, and ``"brain"``:
    (the 3D model, a :data:`BRAIN`-shaped image) when ``brain``."""
    import jax
    import numpy as np

    from ugcn.io import save_volume
    from ugcn.segment.checkpoint import save_model
    from ugcn.segment.model import init_model
    from ugcn.segment.unet import UNetConfig

    rng = np.random.default_rng(0)
    paths = {}
    for dims, shape in ((2, size["shape2d"]), (3, size["shape3d"])):
        save_model(init_model(UNetConfig(dims=dims), jax.random.PRNGKey(0)), folder / f"model{dims}d")
        image = rng.normal(size=shape).astype(np.float32)
        save_volume(folder / f"image{dims}d.nii.gz", image, np.eye(4))
        paths[dims] = (folder / f"model{dims}d", folder / f"image{dims}d.nii.gz")
    if brain:
        save_volume(folder / "brain.nii.gz", rng.normal(size=BRAIN).astype(np.float32), np.eye(4))
        paths["brain"] = (folder / "model3d", folder / "brain.nii.gz")
    return paths


def run_twice(name: str, argv: list[str], cache: Path) -> dict:
    env = dict(os.environ, UGCN_COMPILATION_CACHE=str(cache))
    out = {}
    for attempt in ("first", "second"):
        try:
            stats = run_child(CHILD, argv + ["--overwrite", "--quiet"], env)
        except RuntimeError as err:
            raise SystemExit(f"{name} ({attempt} run) failed: {err}") from None
        compiled = stats["compiled"]
        stats.update(slowest_compiled=compiled[:5], max_program_seconds=compiled[0][1] if compiled else 0.0)
        out[attempt] = stats
        print(f"{name:10s} {attempt:6s} run: {stats['compiled_programs']:3d} programs compiled "
              f"({stats['compile_seconds']:6.1f} s, slowest {stats['max_program_seconds']:5.1f} s "
              f"{compiled[0][0] if compiled else ''}), {stats['loaded_programs']:3d} loaded from the cache "
              f"({stats['load_seconds']:5.2f} s), process {stats['process_seconds']:6.1f} s", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--no-brain", action="store_true", help="leave out the end-to-end brain case (T = 20)")
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    machine = machine_info()
    print(f"compilation of the commands' programs, {machine['device']}, load {machine['load_average'][0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_inputs(tmp, size, brain=not args.no_brain)
        cache = tmp / "cache"
        commands = {
            "mcdo-2d": ["mcdo", "--model", str(paths[2][0]), "--image", str(paths[2][1]), "--out", str(tmp / "o2"),
                        "--n-samples", "4"],
            "mcdo-3d": ["mcdo", "--model", str(paths[3][0]), "--image", str(paths[3][1]), "--out", str(tmp / "o3"),
                        "--n-samples", "4"],
            "refine-2d": ["refine", "--model", str(paths[2][0]), "--image", str(paths[2][1]),
                          "--out", str(tmp / "r2"), "--n-samples", "4"],
        }
        if "brain" in paths:
            commands[f"mcdo-3d brain T={BRAIN_SAMPLES}"] = [
                "mcdo", "--model", str(paths["brain"][0]), "--image", str(paths["brain"][1]),
                "--out", str(tmp / "ob"), "--n-samples", str(BRAIN_SAMPLES)]
        results = {name: run_twice(name, argv_, cache) for name, argv_ in commands.items()}
    ratios = {}
    for name, r in results.items():
        ratios[f"{name}: second-run compiled programs (count)"] = float(r["second"]["compiled_programs"])
        ratios[f"{name}: second-run compile seconds"] = r["second"]["compile_seconds"]
        ratios[f"{name}: second-run programs loaded from the cache (count)"] = float(r["second"]["loaded_programs"])
        ratios[f"{name}: slowest program compile seconds"] = r["first"]["max_program_seconds"]
        ratios[f"{name}: second / first run process time (ratio)"] = (
            r["second"]["process_seconds"] / r["first"]["process_seconds"])
    brain = results.get(f"mcdo-3d brain T={BRAIN_SAMPLES}")
    if brain:
        ratios["brain T=20: first-run seconds, compilation included (goal <= 180)"] = brain["first"]["process_seconds"]
    machine["load_average_end"] = list(os.getloadavg())
    save_results("compile", args.size, {
        "benchmark": "compile", "size": args.size, "machine": machine,
        "setup": {"shapes": {k: list(v) for k, v in size.items()}, "n_samples": 4,
                  "brain": None if args.no_brain else {"shape": list(BRAIN), "n_samples": BRAIN_SAMPLES},
                  "cache": "fresh UGCN_COMPILATION_CACHE folder shared by the two runs"},
        "commands": results, "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
