"""Run every benchmark script (``benchmarks/bench_*.py``, found by name) in turn, each in its own process.

Usage: ``python benchmarks/run_all.py [--size small|large] [--only refine,mcdo] [--keep-going]``.
Each script prints its table and writes ``benchmarks/results/<topic>.json`` (keyed by size); at the end this
runner prints the headline ratios of every script that ran, read back from those files: the ``ratios``
entry of the size's result when the script writes one, otherwise every number whose key says ``ratio``,
``speedup`` or ``fraction``. It stops at the first failure unless ``--keep-going``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RATIO_WORDS = ("ratio", "speedup", "fraction")


def discover(only: str = "") -> list[Path]:
    """``bench_*.py`` scripts next to this file, sorted; ``only`` = comma-separated topics to keep."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {t.strip() for t in only.split(",") if t.strip()}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            raise SystemExit(f"unknown benchmark topic(s) {sorted(unknown)}; have "
                             f"{[s.stem.removeprefix('bench_') for s in scripts]}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    return scripts


def size_entry(data, size: str):
    """The result of one size from a results file (``{size: result}``, or a flat result of that size)."""
    if isinstance(data, dict) and isinstance(data.get(size), dict):
        return data[size]
    if isinstance(data, dict) and data.get("size") == size:
        return data
    return None


def _found_ratios(obj, prefix: str = "") -> dict:
    out = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if any(w in str(key).lower() for w in RATIO_WORDS):
                    out[name] = float(value)
            else:
                out.update(_found_ratios(value, name))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.update(_found_ratios(value, f"{prefix}[{i}]"))
    return out


def headline_ratios(topic: str, size: str) -> dict:
    """``{name: value}`` of a topic's results file for ``size`` ({} if there is none)."""
    path = RESULTS / f"{topic}.json"
    try:
        entry = size_entry(json.loads(path.read_text()), size)
    except (OSError, ValueError):
        return {}
    if entry is None:
        return {}
    ratios = entry.get("ratios")
    if isinstance(ratios, dict) and ratios:
        return {k: float(v) for k, v in ratios.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return _found_ratios(entry)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large"), default="small")
    parser.add_argument("--only", default="", help="comma-separated topics, e.g. refine,mcdo (default: all)")
    parser.add_argument("--keep-going", action="store_true", help="run the other scripts after a failure")
    args = parser.parse_args(argv)
    failed, ran = [], []
    for script in discover(args.only):
        topic = script.stem.removeprefix("bench_")
        print(f"\n=== {script.name} --size {args.size}", flush=True)
        t = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), "--size", args.size], cwd=str(HERE))
        ran.append((topic, time.perf_counter() - t, code))
        if code != 0:
            print(f"{script.name} failed with exit code {code}", file=sys.stderr)
            failed.append(script.name)
            if not args.keep_going:
                break
    print(f"\n=== summary ({args.size}): ratios measured within each script's own run")
    for topic, seconds, code in ran:
        status = "" if code == 0 else f" (FAILED, exit {code})"
        print(f"{topic}: {seconds:.0f} s{status}")
        if code == 0:
            for name, value in headline_ratios(topic, args.size).items():
                print(f"  {name}: {value:.3g}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
