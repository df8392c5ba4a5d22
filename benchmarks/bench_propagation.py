"""Benchmark: what bounds method R's fit: one graph propagation as gather, scatter-add and ELL, vs bandwidth.

The fit's epoch is dominated by propagations ``out[r] += w * x[s]`` over the voxel graph's edges (forward,
and their transposes in the backward pass). This measures, on the sphere phantoms of
``bench_refine.py`` (~100k and ~300k nodes), in the same run and interleaved (fastest of rounds):
  - ``gather``: ``x[senders] * w`` alone (streams the edge arrays, random reads of ``x``);
  - ``segment_sum``: the propagation as ``jax.ops.segment_sum`` (XLA:CPU scatter-add, one update at a time);
  - ``ell``: the same propagation in ELL form, each node's in-edges padded to the largest in-degree
    (``[N, D]`` indices and weights built once on the host): a gather and a dense row sum, no scatter;
each as edges per second and as GB/s of the byte model (20 bytes per edge: sender index, weight, gathered
value, receiver index, scattered value) against the memory bandwidth measured in the same run. The ELL
result is checked against ``segment_sum``.

Usage:  python benchmarks/bench_propagation.py [--size small|large] [--rounds 5]
Writes (updates the entry of its size in) benchmarks/results/propagation.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from bench_refine import memory_bandwidth, radius_for, sphere_case
from common import machine_info, save_results

SIZES = {"small": (100_000, 300_000), "large": (100_000, 300_000, 1_000_000)}
BYTES_PER_EDGE = 20


def ell_layout(senders: np.ndarray, receivers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index i32[N, D], weight f32[N, D])``: node ``r``'s in-edges in row ``r``, padded with weight 0."""
    order = np.argsort(receivers, kind="stable")
    r, s = receivers[order], senders[order]
    degree = np.bincount(r, minlength=n)
    first = np.concatenate([[0], np.cumsum(degree)[:-1]])
    slot = np.arange(r.size) - first[r]
    index = np.zeros((n, int(degree.max())), np.int32)
    weight = np.zeros((n, int(degree.max())), np.float32)
    index[r, slot], weight[r, slot] = s, 1.0
    return index, weight


def bench_graph(nodes: int, rounds: int, bandwidth: float) -> dict:
    from ugcn.graph.voxel_graph import build_voxel_graph

    graph = build_voxel_graph(*sphere_case(radius_for(nodes))[:4])
    snd, rcv = np.asarray(graph.senders, np.int32), np.asarray(graph.receivers, np.int32)
    n, e = int(max(snd.max(), rcv.max()) + 1), snd.size
    x = jnp.asarray(np.random.default_rng(0).normal(size=n).astype(np.float32))
    w = jnp.ones(e, jnp.float32)
    s, r = jnp.asarray(snd), jnp.asarray(rcv)
    index, weight = ell_layout(snd, rcv, n)
    ei, ew = jnp.asarray(index), jnp.asarray(weight)
    gather = jax.jit(lambda x, s, w: x[s] * w)
    scatter = jax.jit(lambda x, s, r, w: jax.ops.segment_sum(x[s] * w, r, num_segments=n))
    ell = jax.jit(lambda x, i, w: jnp.sum(x[i] * w, axis=1))
    fns = {"gather": lambda: gather(x, s, w).block_until_ready(),
           "segment_sum": lambda: scatter(x, s, r, w).block_until_ready(),
           "ell": lambda: ell(x, ei, ew).block_until_ready()}
    diff = float(jnp.max(jnp.abs(ell(x, ei, ew) - scatter(x, s, r, w))))
    best = {k: float("inf") for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    rows = {k: {"ms": 1e3 * t, "M_edges_per_s": e / t / 1e6, "GBps": BYTES_PER_EDGE * e / t / 1e9,
                "bandwidth_fraction": BYTES_PER_EDGE * e / t / bandwidth} for k, t in best.items()}
    return {"nodes": n, "edges": e, "ell_max_in_degree": index.shape[1], "ell_slots_per_edge": index.size / e,
            "ell_max_abs_diff": diff, "forms": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    bandwidth = memory_bandwidth()
    machine = machine_info()
    print(f"one propagation over the voxel graph; memory bandwidth {bandwidth / 1e9:.1f} GB/s, "
          f"load {machine['load_average'][0]:.1f}")
    graphs = [bench_graph(n, args.rounds, bandwidth) for n in SIZES[args.size]]
    ratios = {}
    for g in graphs:
        print(f"{g['nodes']} nodes, {g['edges']} edges (ELL: max in-degree {g['ell_max_in_degree']}, "
              f"{g['ell_slots_per_edge']:.2f} slots per edge, max |diff| {g['ell_max_abs_diff']:.1e})")
        for k, v in g["forms"].items():
            print(f"  {k:12s} {v['ms']:8.2f} ms {v['M_edges_per_s']:8.1f} M edges/s {v['GBps']:6.2f} GB/s "
                  f"({v['bandwidth_fraction']:.0%} of bandwidth)")
        forms = g["forms"]
        ratios[f"{g['nodes']} nodes: segment_sum fraction of bandwidth"] = forms["segment_sum"]["bandwidth_fraction"]
        ratios[f"{g['nodes']} nodes: ell fraction of bandwidth"] = g["forms"]["ell"]["bandwidth_fraction"]
        ratios[f"{g['nodes']} nodes: segment_sum / ell time (speedup)"] = (
            g["forms"]["segment_sum"]["ms"] / g["forms"]["ell"]["ms"])
    machine["load_average_end"] = list(os.getloadavg())
    save_results("propagation", args.size, {
        "benchmark": "propagation", "size": args.size, "machine": machine,
        "memory_bandwidth_GBps": bandwidth / 1e9, "bytes_per_edge": BYTES_PER_EDGE, "graphs": graphs,
        "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
