"""Benchmark: T Monte Carlo dropout passes of a 2D U-Net over one volume.

Compares, on the same machine in the same run:
  - ``mc_sample``: the T passes as ONE compiled function (lax.scan over chunks, vmap over the chunk's keys,
    streaming statistics), for a few chunk sizes;
  - a Python loop of T calls of the same single-pass function, jitted once, with a jitted running-sum update
    (the streaming baseline without vmap/scan).
Timings are medians of ``--repeats`` runs after one warm-up run (compilation excluded; compile times are
reported separately). Memory is XLA's compiled ``memory_analysis()`` of each executable (bytes of arguments,
outputs and temporaries the compiled program allocates), with and without keeping the T samples.

Usage:  python benchmarks/bench_mcdo.py [--size small|large] [--repeats 3]
  small: base 8 U-Net,  volume 64x64x24, T = 20, chunk 4          (< 1 minute on an idle 2-core CPU)
  large: base 16 U-Net, volume 96x96x48, T = 20, chunks 1, 4, 20  (~10 minutes on a 2-core CPU)
Writes (updates the entry of its size in) benchmarks/results/mcdo.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.segment.model import init_model, make_volume_fn
from ugcn.segment.unet import UNetConfig
from ugcn.uncertainty.sampling import _compiled_sampler, _split_weights
from ugcn.uncertainty.stats import accumulate, empty_stats
from common import median_time


SIZES = {
    "small": dict(base=8, depth=3, shape=(64, 64, 24), samples=20, chunks=(4,)),
    "large": dict(base=16, depth=3, shape=(96, 96, 48), samples=20, chunks=(1, 4, 20)),
}



def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "generated_code")}
    out["total_bytes"] = out["argument"] + out["output"] + out["temp"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mcdo.json"))
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    T = cfg["samples"]
    config = UNetConfig(dims=2, base_features=cfg["base"], depth=cfg["depth"])
    model = init_model(config, jax.random.PRNGKey(0))
    volume_fn = make_volume_fn(model, stochastic=True)
    image = jnp.asarray(np.random.default_rng(0).normal(size=cfg["shape"]), jnp.float32)
    key = jax.random.key(0)
    keys = jax.random.split(key, T)
    rows = []

    # Baseline: Python loop over T single passes (same function, jitted once) + jitted streaming update.
    t = time.perf_counter()
    single = jax.jit(volume_fn).lower(keys[0], image).compile()
    compile_single = time.perf_counter() - t
    shape = jax.eval_shape(volume_fn, keys[0], image).shape
    update = jax.jit(lambda s, p: accumulate(s, p[None]))

    def loop():
        stats = empty_stats(shape)
        for k in keys:
            stats = update(stats, single(k, image))
        return jax.block_until_ready(stats)

    t_loop = median_time(loop, args.repeats, warmup=True)
    rows.append(dict(method="python loop of single passes", chunk=1, keep_samples=False, seconds=t_loop,
                     compile_seconds=compile_single, memory=memory(single)))

    for chunk in cfg["chunks"]:
        for keep in (False, True):
            t = time.perf_counter()
            apply, variables = _split_weights(volume_fn)
            compiled = _compiled_sampler(apply, T, chunk, keep).lower(variables, key, image).compile()
            compile_s = time.perf_counter() - t
            mem = memory(compiled)
            seconds = median_time(lambda: jax.block_until_ready(compiled(variables, key, image)), args.repeats, warmup=True) if not keep else None
            rows.append(dict(method="mc_sample (scan x vmap)", chunk=chunk, keep_samples=keep, seconds=seconds,
                             compile_seconds=compile_s, memory=mem))

    for row in rows:
        row["speedup_vs_loop"] = (t_loop / row["seconds"]) if row["seconds"] else None
    result = {
        "benchmark": "mcdo",
        "size": args.size,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "device": str(jax.devices()[0]),
                    "load_average_1min": os.getloadavg()[0]},
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__, "numpy": np.__version__},
        "setup": {"unet": config.to_dict(), "volume": list(cfg["shape"]), "n_samples": T,
                  "repeats": args.repeats, "timing": "median after one warm-up, compilation excluded",
                  "memory": "XLA compiled memory_analysis(): argument + output + temp bytes"},
        "rows": rows,
    }
    print(f"T={T} passes, 2D U-Net base {cfg['base']} depth {cfg['depth']}, volume {cfg['shape']}, "
          f"{result['machine']['device']}, load {result['machine']['load_average_1min']:.1f}")
    print(f"{'method':32s} {'chunk':>5s} {'keep':>5s} {'median s':>9s} {'x loop':>7s} {'compile s':>9s} "
          f"{'temp MiB':>9s} {'out MiB':>8s}")
    for r in rows:
        m = r["memory"]
        sec = f"{r['seconds']:9.3f}" if r["seconds"] else f"{'-':>9s}"
        spd = f"{r['speedup_vs_loop']:7.2f}" if r["speedup_vs_loop"] else f"{'-':>7s}"
        print(f"{r['method']:32s} {r['chunk']:5d} {str(r['keep_samples']):>5s} {sec} {spd} "
              f"{r['compile_seconds']:9.1f} {m.get('temp', 0) / 2**20:9.1f} {m.get('output', 0) / 2**20:8.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One file for both sizes: the other size's last result is kept.
    merged = json.loads(out.read_text()) if out.exists() else {}
    merged = merged if isinstance(merged, dict) and "benchmark" not in merged else {}
    merged[args.size] = result
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
