"""Helpers shared by the benchmark scripts: timing, machine description, results files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

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


# /proc/stat's first line: the machine's CPU time since boot per state, in clock ticks (Linux).
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(line: str, ticks_per_second: float) -> dict:
    """CPU seconds per state (:data:`PROC_STAT_FIELDS`) from the ``cpu ...`` line of ``/proc/stat``; states an
    older kernel does not report are 0."""
    name, *values = line.split()
    if name != "cpu":
        raise ValueError(f"not the machine-wide line of /proc/stat: {line!r}")
    ticks = [int(v) for v in values[:len(PROC_STAT_FIELDS)]]
    ticks += [0] * (len(PROC_STAT_FIELDS) - len(ticks))
    return {state: t / ticks_per_second for state, t in zip(PROC_STAT_FIELDS, ticks)}


def cpu_seconds() -> Optional[dict]:
    """The machine's CPU seconds since boot per state (``/proc/stat``), or ``None`` where there is none."""
    try:
        with open("/proc/stat") as f:
            return parse_proc_stat(f.readline(), os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, AttributeError):
        return None


def timed_call(fn: Callable[[], object]) -> dict:
    """One call of ``fn``: ``{"seconds": wall time, "idle_fraction", "steal_fraction"}``, the last two the shares of
    the machine's CPU time (``cpus x seconds``) that were idle and taken by the hypervisor during the call
    (``/proc/stat``; ``None`` where the OS has no such accounting). A program meant to keep every core busy shows
    it in ``idle_fraction``: the 2D MC sampler's two streams ran one after the other in some calls (one core idle
    for most of the call) until each stream's thread waited for its own program."""
    before = cpu_seconds()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    after = cpu_seconds()
    if before is None or after is None:
        return {"seconds": seconds, "idle_fraction": None, "steal_fraction": None}
    capacity = seconds * (os.cpu_count() or 1)
    return {"seconds": seconds, "idle_fraction": (after["idle"] - before["idle"]) / capacity,
            "steal_fraction": (after["steal"] - before["steal"]) / capacity}


def summarize_calls(calls: list[dict]) -> dict:
    """Medians over timed calls (:func:`timed_call`): ``seconds``, and the largest ``idle_fraction`` and
    ``steal_fraction`` of any call (``None`` without CPU accounting)."""
    def largest(name):
        values = [c[name] for c in calls if c[name] is not None]
        return max(values) if values else None

    return {"seconds": statistics.median(c["seconds"] for c in calls),
            "max_idle_fraction": largest("idle_fraction"), "max_steal_fraction": largest("steal_fraction")}


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
