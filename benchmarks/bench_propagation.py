"""Benchmark: what bounds method R's fit: one graph propagation as gather, scatter-add and ELL, vs bandwidth.

The fit's epoch is dominated by propagations ``out[r] += w * x[s]`` over the voxel graph's edges (forward,
and their transposes in the backward pass). This measures, on the sphere phantoms of
``bench_refine.py`` (~100k and ~300k nodes), in the same run and interleaved (fastest of rounds):
  - ``gather``: ``x[senders] * w`` alone (streams the edge arrays, random reads of ``x``);
  - ``segment_sum``: ``ugcn.graph.gcn.propagate``, XLA:CPU's scatter-add (one update at a time);
  - ``ell``: ``ugcn.graph.ell.ell_propagate``, the layout the fit uses (in-edges in rows of a width chosen by
    ``choose_width``, the rest in a short overflow list): a gather and a dense row sum;
  - ``segment_sum_grad`` / ``ell_grad``: forward and backward (``jax.vjp``) of each, as in a training epoch:
    the scatter-add's transpose is a gather and a scatter-add again, the ELL's custom VJP is the same
    gather-based propagation (``Â`` is symmetric);
each as edges per second and as GB/s of the byte model (20 bytes per edge and pass: sender index, weight,
gathered value, receiver index, scattered value) against the memory bandwidth measured in the same run.
The ELL result is checked against ``segment_sum``.

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


def bench_graph(nodes: int, rounds: int, bandwidth: float) -> dict:
    from ugcn.graph.ell import ell_layout, ell_normalize, ell_propagate
    from ugcn.graph.gcn import gcn_normalize, propagate
    from ugcn.graph.voxel_graph import build_voxel_graph

    graph = build_voxel_graph(*sphere_case(radius_for(nodes))[:4])
    snd, rcv = np.asarray(graph.senders, np.int32), np.asarray(graph.receivers, np.int32)
    n, e = graph.n_nodes, snd.size
    x = jnp.asarray(np.random.default_rng(0).normal(size=n).astype(np.float32))
    c = jnp.asarray(np.random.default_rng(1).normal(size=n).astype(np.float32))
    w = jnp.ones(e, jnp.float32)
    s, r = jnp.asarray(snd), jnp.asarray(rcv)
    t = time.perf_counter()
    layout = ell_layout(snd, rcv, graph.weights, n)
    layout_s = time.perf_counter() - t
    coo = jax.jit(gcn_normalize, static_argnums=3)(s, r, jnp.asarray(graph.weights), n)
    ell = jax.jit(ell_normalize)(*layout)
    gather = jax.jit(lambda x, s, w: x[s] * w)
    fwd = {"segment_sum": jax.jit(propagate), "ell": jax.jit(ell_propagate)}

    def with_grad(prop):  # forward and backward, as in a training epoch
        return jax.jit(lambda norm, x: jax.value_and_grad(lambda v: jnp.sum(prop(norm, v) * c))(x))

    grad = {"segment_sum": with_grad(propagate), "ell": with_grad(ell_propagate)}
    fns = {"gather": lambda: gather(x, s, w).block_until_ready(),
           "segment_sum": lambda: fwd["segment_sum"](coo, x).block_until_ready(),
           "ell": lambda: fwd["ell"](ell, x).block_until_ready(),
           "segment_sum_grad": lambda: jax.block_until_ready(grad["segment_sum"](coo, x)),
           "ell_grad": lambda: jax.block_until_ready(grad["ell"](ell, x))}
    diff = float(jnp.max(jnp.abs(fwd["ell"](ell, x) - fwd["segment_sum"](coo, x))))
    grad_diff = float(jnp.max(jnp.abs(grad["ell"](ell, x)[1] - grad["segment_sum"](coo, x)[1])))
    best = {k: float("inf") for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    passes = {k: 2 if k.endswith("_grad") else 1 for k in fns}
    rows = {k: {"ms": 1e3 * t, "M_edges_per_s": passes[k] * e / t / 1e6,
                "GBps": passes[k] * BYTES_PER_EDGE * e / t / 1e9,
                "bandwidth_fraction": passes[k] * BYTES_PER_EDGE * e / t / bandwidth} for k, t in best.items()}
    width, overflow = layout.ell_index.shape[1], int(np.count_nonzero(layout.overflow_weights))
    return {"nodes": n, "edges": e, "ell_width": width, "ell_overflow_edges": overflow,
            "ell_slots_per_edge": (n * width + layout.overflow_weights.size) / e, "ell_layout_s": layout_s,
            "ell_max_abs_diff": diff, "ell_grad_max_abs_diff": grad_diff, "forms": rows}


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
        print(f"{g['nodes']} nodes, {g['edges']} edges (ELL: width {g['ell_width']}, {g['ell_overflow_edges']} "
              f"overflow edges, {g['ell_slots_per_edge']:.2f} slots per edge, layout {g['ell_layout_s']:.2f} s, "
              f"max |diff| {g['ell_max_abs_diff']:.1e}, gradient {g['ell_grad_max_abs_diff']:.1e})")
        for k, v in g["forms"].items():
            print(f"  {k:12s} {v['ms']:8.2f} ms {v['M_edges_per_s']:8.1f} M edges/s {v['GBps']:6.2f} GB/s "
                  f"({v['bandwidth_fraction']:.0%} of bandwidth)")
        forms = g["forms"]
        ratios[f"{g['nodes']} nodes: segment_sum fraction of bandwidth"] = forms["segment_sum"]["bandwidth_fraction"]
        ratios[f"{g['nodes']} nodes: ell fraction of bandwidth"] = g["forms"]["ell"]["bandwidth_fraction"]
        ratios[f"{g['nodes']} nodes: segment_sum / ell time (speedup)"] = (
            g["forms"]["segment_sum"]["ms"] / g["forms"]["ell"]["ms"])
        ratios[f"{g['nodes']} nodes: forward+backward, segment_sum / ell time (speedup)"] = (
            forms["segment_sum_grad"]["ms"] / forms["ell_grad"]["ms"])
    machine["load_average_end"] = list(os.getloadavg())
    save_results("propagation", args.size, {
        "benchmark": "propagation", "size": args.size, "machine": machine,
        "memory_bandwidth_GBps": bandwidth / 1e9, "bytes_per_edge": BYTES_PER_EDGE, "graphs": graphs,
        "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
