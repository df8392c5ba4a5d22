"""Profile: where the time of 2D MC dropout goes, per U-Net layer, against the FLOP model.

Runs the default sampler (``mc_sample``'s compiled program: ``lax.scan`` over chunks of passes, each chunk's
passes one batch, the stem shared) once under ``jax.profiler``, maps every executed XLA:CPU operation to the
U-Net layer it was traced from (the HLO ``op_name`` metadata of the compiled program) and prints, per layer,
the operation time per slice-pass and the GFLOP/s of the layer's convolution FLOPs (``bench_mcdo``'s model:
2 per multiply-add, the stem once per slice). Operation times are summed over XLA's worker threads; on a
shared machine they include time lost to other processes, so compare layers of one run, not runs.

Measured at issue size (128 x 128 x 64, T = 20, chunk 4; 2-core CPU, load 10.2): 28.4 s, 19.7 ms of operation
time per slice-pass, 58 GFLOP/s over the network's 1.47 TFLOP (10 s needs ~147 GFLOP/s, 62 % of the 236 GFLOP/s
matmul roof). The 128^2 layers took 36 % (dec0.conv0 32->16 on XLA's YNNPACK convolution 4.3 s at 50 GFLOP/s,
enc0.conv1 with the stem's masks in the kernel 2.6 s at 49, dec0.conv1 1.3 s at 89), the 64^2 (Winograd) layers 28 %,
the 32^2 and 16^2 layers 28 % (100-120 GFLOP/s), pooling and concatenation 6 %, the running sums 2 %. Tried on
the 128^2 layers (one process, load 11-14): stacked-taps forms (3 row shifts on the channels, im2col, taps on the
outputs) 2-10x slower than XLA's convolution; the first decoder convolution as one convolution per part of its
[upsampled, skip] input (no concatenation) 0.91-1.06x the whole network's time (not kept); the 4 passes as 4
masked copies of the stem instead of the masks in the next kernel 0.64x.

Usage:  python benchmarks/profile_mcdo.py [--size issue|small] [--slices Z] [--samples T] [--chunk S]
  issue: the default 2D U-Net (base 16, depth 3) over 128 x 128 x Z (Z = 64 by default), T = 20, chunk 4
  small: base 8 over 64 x 64 x 24, T = 20, chunk 4
Writes (updates the entry of its size in) benchmarks/results/mcdo_profile.json.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_mcdo import unet_layer_flops
from common import machine_info, save_results

from ugcn.segment.model import init_model, make_volume_fn
from ugcn.segment.unet import UNetConfig
from ugcn.uncertainty.sampling import _compiled_sampler, _split_weights

SIZES = {
    "issue": dict(base=16, depth=3, shape=(128, 128, 64), samples=20, chunk=4),
    "small": dict(base=8, depth=3, shape=(64, 64, 24), samples=20, chunk=4),
}
# Trace events that are not one operation of the program (executors, loops around operations, host side).
NOT_AN_OP = re.compile(r"^(ThunkExecutor|while|call|conditional|end: )|Await")


def op_names(hlo_text: str) -> dict[str, str]:
    """``{instruction name: op_name metadata}`` of a compiled program's HLO text."""
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def layer_of(op_name: str, depth: int) -> tuple[str, str]:
    """``(layer, part)`` of an ``op_name``: the U-Net layer (``bench_mcdo``'s names: ``enc0.conv1``,
    ``up2``, ``head``, ...) and ``conv``, ``bn+relu+dropout`` or ``other``; ``("outside the U-Net", ...)``."""
    m = re.search(r"UNet/ConvBlock_(\d+)/(Conv|BatchNorm|Dropout)_(\d+)", op_name)
    if m:
        k, kind, i = int(m.group(1)), m.group(2), int(m.group(3))
        block = f"enc{k}" if k < depth else "bottom" if k == depth else f"dec{2 * depth - k}"
        return f"{block}.conv{i}", "conv" if kind == "Conv" else "bn+relu+dropout"
    m = re.search(r"UNet/ConvTranspose_(\d+)", op_name)
    if m:
        return f"up{depth - 1 - int(m.group(1))}", "conv"
    if re.search(r"UNet/Conv_0/", op_name):
        return "head", "conv"
    if "UNet/" in op_name:
        return "U-Net: pooling, concatenation", "other"
    tail = re.sub(r"^jit\([^)]*\)/", "", op_name)
    tail = re.sub(r"(while/body/closed_call/|while/cond/|vmap\(|\))", "", tail)
    return "outside the U-Net: " + (tail.split("/")[0] or "program"), "other"


def trace_ops(trace_dir: str) -> tuple[collections.Counter, float]:
    """``(microseconds per operation name, wall seconds)`` of the one traced program run in ``trace_dir``."""
    path = glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True)[-1]
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X"]
    ops: collections.Counter = collections.Counter()
    first, last = float("inf"), 0.0
    for e in spans:
        if "XLAEigen" not in threads.get((e["pid"], e["tid"]), "") or NOT_AN_OP.search(e["name"]):
            continue
        ops[e["name"]] += e["dur"]
        first, last = min(first, e["ts"]), max(last, e["ts"] + e["dur"])
    return ops, (last - first) / 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="issue")
    parser.add_argument("--slices", type=int, default=None, help="Z (axial slices); default: the size's")
    parser.add_argument("--samples", type=int, default=None, help="T; default: the size's")
    parser.add_argument("--chunk", type=int, default=None, help="passes per scan step; default: the size's")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    shape = cfg["shape"][:2] + (args.slices or cfg["shape"][2],)
    T, chunk = args.samples or cfg["samples"], args.chunk or cfg["chunk"]
    config = UNetConfig(dims=2, base_features=cfg["base"], depth=cfg["depth"])
    model = init_model(config, jax.random.PRNGKey(0))
    apply, variables = _split_weights(make_volume_fn(model, stochastic=True))
    image = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    keys = jax.random.split(jax.random.key(0), T)  # mc_sample's keys for one stream
    compiled = _compiled_sampler(apply, T, min(chunk, T), False).lower(variables, keys, image).compile()
    names = op_names(compiled.as_text())
    jax.block_until_ready(compiled(variables, keys, image))  # warm-up
    t = time.perf_counter()
    jax.block_until_ready(compiled(variables, keys, image))
    untraced = time.perf_counter() - t
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        jax.block_until_ready(compiled(variables, keys, image))
        jax.profiler.stop_trace()
        ops, wall = trace_ops(trace_dir)

    slice_passes = shape[2] * T
    by_layer: dict = collections.defaultdict(lambda: collections.Counter())
    for op, us in ops.items():
        layer, part = layer_of(names.get(op, ""), config.depth)
        by_layer[layer][part] += us / 1e3
    flops = {r["layer"].split()[0]: r for r in unet_layer_flops(config, shape[:2])}
    rows = []
    for layer, parts in by_layer.items():
        total_ms = sum(parts.values())
        row = {"layer": layer, "ms": total_ms, "ms_per_slice_pass": total_ms / slice_passes,
               **{f"{part}_ms": ms for part, ms in parts.items()}}
        if layer in flops:
            f = flops[layer]
            row["shape"] = f["layer"].split(maxsplit=1)[1]
            row["gflop"] = f["flops"] * shape[2] * (T if f["stochastic"] else 1) / 1e9
            row["conv_gflop_per_s"] = row["gflop"] / max(parts.get("conv", 0.0), 1e-9) * 1e3
        rows.append(row)
    rows.sort(key=lambda r: -r["ms"])
    total_ms = sum(r["ms"] for r in rows)
    total_gflop = sum(r.get("gflop", 0.0) for r in rows)
    machine = machine_info()
    machine["load_average_1min"] = load
    result = {"benchmark": "mcdo_profile", "size": args.size, "machine": machine,
              "setup": {"unet": config.to_dict(), "volume": list(shape), "n_samples": T, "chunk": chunk},
              "seconds_untraced": untraced, "seconds_traced_wall": wall, "op_ms_total": total_ms,
              "gflop_total": total_gflop, "rows": rows}
    print(f"2D U-Net base {cfg['base']}, volume {shape}, T = {T}, chunk {chunk}: {untraced:.2f} s untraced, "
          f"{wall:.2f} s traced; load {load:.1f}")
    print(f"{'layer':34s} {'shape':>10s} {'ms':>8s} {'ms/slice-pass':>13s} {'conv ms':>8s} {'bn/relu/drop':>12s} "
          f"{'GFLOP':>7s} {'conv GF/s':>9s}")
    for r in rows:
        gf = f"{r['gflop']:7.2f} {r['conv_gflop_per_s']:9.1f}" if "gflop" in r else f"{'':7s} {'':9s}"
        print(f"{r['layer'][:34]:34s} {r.get('shape', ''):>10s} {r['ms']:8.1f} {r['ms_per_slice_pass']:13.3f} "
              f"{r.get('conv_ms', 0.0):8.1f} {r.get('bn+relu+dropout_ms', 0.0):12.1f} {gf}")
    print(f"{'total':34s} {'':>10s} {total_ms:8.1f} {total_ms / slice_passes:13.3f} {'':8s} {'':12s} "
          f"{total_gflop:7.2f} {total_gflop / total_ms * 1e3:9.1f} (all operation time)")
    save_results("mcdo_profile", args.size, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
