"""Helpers shared by the benchmark scripts: timing, machine description, results files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], object], repeats: int, *, warmup: bool = False) -> float:
    """Median wall time in seconds of ``repeats`` calls of ``fn`` (after one untimed call if ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine_info() -> dict:
    """Platform, CPU count, JAX device, jax/jaxlib versions, XLA_FLAGS and load average, for the results JSON."""
    import jax
    import jaxlib
    import numpy as np

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": getattr(jaxlib, "__version__", None) or jaxlib.version.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def save_results(topic: str, size: str, result: dict) -> Path:
    """Store ``result`` under key ``size`` in ``results/<topic>.json``, keeping the other size's entry."""
    out = RESULTS_DIR / f"{topic}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged = merged if isinstance(merged, dict) else {}
    merged[size] = result
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")
    return out
