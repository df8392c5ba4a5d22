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
    gather-based propagation (``Â`` is symmetric); the cotangent is a random vector times the forward's
    output, so the backward waits for the forward (one dependent chain, as in the fit);
each as edges per second and as GB/s of the byte model (20 bytes per edge and pass: sender index, weight,
gathered value, receiver index, scattered value) against the memory bandwidth measured in the same run.
The ELL result is checked against ``segment_sum``.

Then the fit itself (``ugcn.refine.fit``, 50 epochs per call, the default ELL layout) and what bounds it,
per size, fastest of interleaved rounds:
  - ``fit``: ms per epoch, and GB/s and fraction of bandwidth under ``bench_refine``'s byte model
    (``2·20·E + 5·4·H·N + 4·F·N`` per epoch, padded sizes);
  - ``propagation``: the epoch's graph part alone, one channel forward and backward per epoch in a scan, the
    backward's cotangent depending on the forward's output (``2·20·E`` bytes of the model);
  - ``dense``: the fit with propagation replaced by the identity: its per-node part alone (hidden layer
    forward and backward, dropout, loss, Adam; ``5·4·H·N + 4·F·N`` bytes of the model);
  - ``fit_tiled``: the fit with its hidden layer in the earlier formulation (``[H, tile]`` activations in node
    tiles, ``ugcn.refine.fit._tiled_out``) instead of the default packed one (``_packed_out``: unit masks as one
    uint32 per node, element-wise loops), for the gain of the packed form.

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

    def with_grad(prop):
        """Forward and backward as in a training epoch: one dependent chain. The cotangent (random ``c``, an
        argument, times the forward's output) needs the forward first; with a cotangent independent of it,
        XLA could run both propagations at once, which overstated the cost at 291k nodes (38.7 ms against
        7.9 ms for one forward)."""
        def f(norm, x, c):
            y, vjp = jax.vjp(lambda v: prop(norm, v), x)
            return y, vjp(y * c)[0]
        return jax.jit(f)

    grad = {"segment_sum": with_grad(propagate), "ell": with_grad(ell_propagate)}
    fns = {"gather": lambda: gather(x, s, w).block_until_ready(),
           "segment_sum": lambda: fwd["segment_sum"](coo, x).block_until_ready(),
           "ell": lambda: fwd["ell"](ell, x).block_until_ready(),
           "segment_sum_grad": lambda: jax.block_until_ready(grad["segment_sum"](coo, x, c)),
           "ell_grad": lambda: jax.block_until_ready(grad["ell"](ell, x, c))}
    diff = float(jnp.max(jnp.abs(fwd["ell"](ell, x) - fwd["segment_sum"](coo, x))))
    grad_diff = float(jnp.max(jnp.abs(grad["ell"](ell, x, c)[1] - grad["segment_sum"](coo, x, c)[1])))
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


def _fit_program(padded, config, **patch):
    """The 1-graph fit jitted with module attributes of ``ugcn.refine.fit`` replaced while it is traced
    (a measuring device: the identity for ``_propagate``, a tile length); returns a timed call."""
    import ugcn.refine.fit as fit

    key = jax.random.PRNGKey(0)
    saved = {k: getattr(fit, k) for k in patch}
    try:
        for k, v in patch.items():
            setattr(fit, k, v)
        program = jax.jit(lambda g, k: fit._fit(jax.tree_util.tree_map(lambda x: x[None], g), k[None], config))
        jax.block_until_ready(program(padded, key))  # traced and compiled under the patch
    finally:
        for k, v in saved.items():
            setattr(fit, k, v)
    return lambda: jax.block_until_ready(program(padded, key))


def bench_fit_epoch(graph, rounds: int, bandwidth: float, epochs: int = 50) -> dict:
    """The fit's ms/epoch and its parts (module docstring) against the byte model of ``bench_refine``."""
    from bench_refine import bytes_per_epoch

    from ugcn.graph.ell import ell_propagate
    from ugcn.refine.fit import FitConfig, _flat_norm, pad_graph

    config = FitConfig(epochs=epochs)
    padded = jax.device_put(pad_graph(graph))
    n, e = padded.features.shape[0], padded.senders.shape[0]
    norm = jax.jit(lambda g: _flat_norm(jax.tree_util.tree_map(lambda x: x[None], g)))(padded)
    c = jnp.asarray(np.random.default_rng(2).uniform(0.5, 1.5, n).astype(np.float32))

    def propagation_epochs(norm, x):
        # The cotangent is the forward's output times a random c, so the backward waits for the forward (one
        # dependent chain, as in the fit): a cotangent of the carry alone let both run at once, a constant one
        # would let XLA hoist the backward out of the loop.
        def epoch(x, _):
            y, vjp = jax.vjp(lambda v: ell_propagate(norm, v), x)
            return x + 1e-6 * vjp(y * c)[0], jnp.sum(y)
        return jax.lax.scan(epoch, x, None, length=epochs)

    prop = jax.jit(propagation_epochs)
    x0 = jnp.ones(n, jnp.float32)
    fns = {"fit": _fit_program(padded, config),
           "fit_tiled": _fit_program(padded, config, _packed=lambda hidden, draw: False),
           "propagation": lambda: jax.block_until_ready(prop(norm, x0)),
           "dense": _fit_program(padded, config, _propagate=lambda norm, x: x)}
    best = {k: float("inf") for k in fns}
    fns["propagation"]()
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    model = {"fit": bytes_per_epoch(n, e), "fit_tiled": bytes_per_epoch(n, e), "propagation": 2 * 20 * e}
    model["dense"] = model["fit"] - model["propagation"]
    rows = {k: {"ms_per_epoch": 1e3 * t / epochs, "model_bytes_per_epoch": model[k],
                "GBps": model[k] * epochs / t / 1e9, "bandwidth_fraction": model[k] * epochs / t / bandwidth}
            for k, t in best.items()}
    return {"nodes": graph.n_nodes, "padded_nodes": n, "padded_edges": e, "epochs": epochs, "parts": rows,
            "parts_sum_over_fit": (best["propagation"] + best["dense"]) / best["fit"],
            "tiled_over_packed": best["fit_tiled"] / best["fit"], "fit_form": "packed"}


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
    from ugcn.graph.voxel_graph import build_voxel_graph

    fits = [bench_fit_epoch(build_voxel_graph(*sphere_case(radius_for(n))[:4]), args.rounds, bandwidth)
            for n in SIZES[args.size]]
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
    for f in fits:
        print(f"fit at {f['nodes']} nodes ({f['padded_nodes']} padded, {f['padded_edges']} edges): "
              f"parts sum to {f['parts_sum_over_fit']:.2f}x the fit; "
              f"hidden layer in node tiles (before) {f['tiled_over_packed']:.2f}x")
        for k, v in f["parts"].items():
            print(f"  {k:12s} {v['ms_per_epoch']:8.2f} ms/epoch  {v['model_bytes_per_epoch'] / 1e6:7.1f} MB (model) "
                  f"{v['GBps']:6.2f} GB/s ({v['bandwidth_fraction']:.0%} of bandwidth)")
        for k in ("fit", "fit_tiled", "propagation", "dense"):
            ratios[f"{f['nodes']} nodes: {k} fraction of bandwidth (byte model)"] = f["parts"][k]["bandwidth_fraction"]
        ratios[f"{f['nodes']} nodes: fit ms per epoch"] = f["parts"]["fit"]["ms_per_epoch"]
        ratios[f"{f['nodes']} nodes: tiled / packed hidden layer fit time"] = f["tiled_over_packed"]
    machine["load_average_end"] = list(os.getloadavg())
    save_results("propagation", args.size, {
        "benchmark": "propagation", "size": args.size, "machine": machine,
        "memory_bandwidth_GBps": bandwidth / 1e9, "bytes_per_edge": BYTES_PER_EDGE, "graphs": graphs, "fits": fits,
        "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
