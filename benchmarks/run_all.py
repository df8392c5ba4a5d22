"""Run every benchmark script (``bench_*.py``) in turn, each in its own process, at one size.

Usage: ``python benchmarks/run_all.py [--size small|large] [--only refine,mcdo]``. Each script prints its
table and writes ``benchmarks/results/<topic>.json``; this runner stops at the first failure.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large"), default="small")
    parser.add_argument("--only", default="", help="comma-separated topics (default: all)")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        wanted = {t.strip() for t in args.only.split(",") if t.strip()}
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    for script in scripts:
        print(f"\n=== {script.name} --size {args.size}", flush=True)
        code = subprocess.call([sys.executable, str(script), "--size", args.size])
        if code != 0:
            print(f"{script.name} failed with exit code {code}", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
