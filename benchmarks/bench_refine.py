"""Benchmark of method R: voxel-graph construction, the 200-epoch GCN fit, vmapped batches, PyG.

Run: ``python benchmarks/bench_refine.py [--size small|large]`` (small, the default, takes about a minute
on a 2-core CPU; large a few minutes). Prints tables and merges its results into
``benchmarks/results/refine.json`` under the size; ``ratios`` holds the headline figures.

Measured (medians after a warm-up call that includes compilation):
  - graph construction (numpy/scipy) at ~20k, ~100k and ~300k nodes, and the exponent b of time ~ nodes^b;
  - the 200-epoch fit (one jitted ``lax.scan``) at ~20k nodes (large: also ~100k and ~300k, and its growth
    exponent), its time per epoch, the bytes an epoch must move at least (model below) and the bandwidth
    that implies, against the memory bandwidth measured in the same run (``numpy.copyto`` of a 256 MiB
    array: read + write); with the graph in ELL form (the default, ``ugcn.graph.ell``: gathers only) and,
    interleaved in the same process, in COO form (``pad_graph(..., ell_width=0)``: segment sums);
  - the batch fit with B = 1, 4 (large: 16) graphs, both strategies (parallel = block-diagonal vmap,
    sequential = lax.map), against B separate fits;
  - the per-volume selection among candidate graphs (``RefineConfig()``: the configured k-NN graph and the
    ``local`` one, fitted in one batched program) against one fit per volume (``RefineConfig(variants=())``),
    same volume and settings otherwise: the fit and the whole ``refine_volume`` (graphs included), at ~10k
    nodes (large: also ~30k and ~100k; below ~10k fixed per-call cost dominates and inflates the ratio);
  - PyTorch Geometric on the same graph in the same process (``GCNConv`` x 2, and the same algebra as ugcn:
    ``ÂX`` once, then ``Linear`` + ``GCNConv(32, 1)``), a few epochs, per epoch, with as many threads as
    cores and with one thread (the faster counts), when ``torch`` and ``torch_geometric`` import
    (``pip install "ugcn[bench]"``).

Bytes per epoch (float32/int32, N nodes, E directed edges, H hidden, F features): the forward and the
backward pass each propagate one channel over the edges (sender and receiver index, coefficient, gathered
value, scattered value: 20 bytes per edge), and the hidden layer is written and read about five times
(``ÂX W1``, ReLU/dropout, ``· W2``, its gradient, ``(ÂX)^T dH``): ``2·20·E + 5·4·H·N + 4·F·N`` bytes.
This model is the one the "of bandwidth" figures use for both layouts. The default (packed) hidden layer
never stores its ``[H, N]`` activations and moves about 40 bytes per node instead (``ugcn.refine.fit``), so
the model overstates that part's bytes; it is kept as the issue's yardstick. The ELL layout moves fewer bytes
per edge (index, coefficient, gathered value: 12 bytes per slot of its ``N × D`` rows, 20 per overflow
edge): ``2·(12·N·D + 20·M) + 5·4·H·N + 4·F·N``, reported beside it as ``ell_bytes_per_epoch``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
from common import median_time, save_results


def sphere_case(radius: float, seed: int = 0):
    """Synthetic organ sized by ``radius``: :func:`ugcn.data.uncertain_band_case` (a wrong, uncertain band)."""
    from ugcn.data import uncertain_band_case

    size = int(4 * radius)
    return uncertain_band_case((size, size, max(int(3 * radius), 8)), radius, seed)


def radius_for(nodes: int) -> float:
    """Sphere radius giving about ``nodes`` graph nodes with the default settings (fitted empirically)."""
    return 13.5 * (nodes / 20_000) ** (1 / 2.7)



def memory_bandwidth() -> float:
    """Bytes per second of ``np.copyto`` on 256 MiB (read + write counted)."""
    a = np.ones(64 * 2**20, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t = median_time(lambda: np.copyto(b, a), 5)
    return 2 * a.nbytes / t


def bytes_per_epoch(n: int, e: int, hidden: int = 32, features: int = 3) -> int:
    return 2 * 20 * e + 5 * 4 * hidden * n + 4 * features * n


def ell_bytes_per_epoch(n: int, width: int, overflow: int, hidden: int = 32, features: int = 3) -> int:
    return 2 * (12 * n * width + 20 * overflow) + 5 * 4 * hidden * n + 4 * features * n


def bench_graph(radius: float, repeats: int) -> dict:
    from ugcn.graph.voxel_graph import build_voxel_graph

    case = sphere_case(radius)[:4]
    graph = build_voxel_graph(*case)
    t = median_time(lambda: build_voxel_graph(*case), repeats)
    return {"nodes": graph.n_nodes, "directed_edges": graph.n_edges, "seconds": t, "graph": graph}


def bench_fit(graph, repeats: int, epochs: int = 200) -> dict:
    """The fit with the default (ELL) layout and with the COO (segment_sum) one, interleaved: medians."""
    import statistics

    import jax

    from ugcn.refine.fit import FitConfig, fit_gcn, pad_graph

    config = FitConfig(epochs=epochs)
    t0 = time.perf_counter()
    layouts = {"ell": pad_graph(graph), "segment_sum": pad_graph(graph, ell_width=0)}
    layout_s = time.perf_counter() - t0
    padded = {k: jax.device_put(v) for k, v in layouts.items()}
    key = jax.random.PRNGKey(0)
    first, probs = {}, {}
    for name, p in padded.items():
        t0 = time.perf_counter()
        probs[name] = np.asarray(jax.block_until_ready(fit_gcn(p, key, config)).node_probs)
        first[name] = time.perf_counter() - t0
    times: dict = {k: [] for k in padded}
    for _ in range(repeats):
        for name, p in padded.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fit_gcn(p, key, config))
            times[name].append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    ell = layouts["ell"]
    n, e = ell.features.shape[0], ell.senders.shape[0]
    width, overflow = ell.ell_index.shape[1], ell.overflow_senders.shape[0]
    moved = bytes_per_epoch(n, e)
    ell_moved = ell_bytes_per_epoch(n, width, overflow)
    return {"nodes": graph.n_nodes, "padded_nodes": n, "padded_edges": e, "epochs": epochs,
            "layout": "ell" if width > 0 else "segment_sum", "ell_width": width, "ell_overflow": overflow,
            "layout_s": layout_s, "first_call_s": first["ell"], "seconds": t["ell"],
            "ms_per_epoch": 1e3 * t["ell"] / epochs, "bytes_per_epoch": moved,
            "achieved_GBps": moved * epochs / t["ell"] / 1e9, "ell_bytes_per_epoch": ell_moved,
            "ell_bytes_GBps": ell_moved * epochs / t["ell"] / 1e9,
            "segment_sum": {"first_call_s": first["segment_sum"], "seconds": t["segment_sum"],
                            "ms_per_epoch": 1e3 * t["segment_sum"] / epochs,
                            "achieved_GBps": moved * epochs / t["segment_sum"] / 1e9},
            "speedup_vs_segment_sum": t["segment_sum"] / t["ell"],
            "max_abs_prob_diff_vs_segment_sum": float(np.max(np.abs(probs["ell"] - probs["segment_sum"])))}


def bench_batch(graphs, sizes, repeats: int, epochs: int = 200) -> list:
    import jax

    from ugcn.refine.fit import FitConfig, fit_batch, fit_gcn, pad_graph, resolve_strategy, stack_graphs

    config = FitConfig(epochs=epochs)
    rows = []
    n_nodes = max(g.features.shape[0] for g in graphs)
    n_edges = max(g.senders.shape[0] for g in graphs)
    from ugcn.refine.fit import bucket_size

    n_nodes, n_edges = bucket_size(n_nodes), bucket_size(n_edges)
    for b in sizes:
        chosen = [graphs[i % len(graphs)] for i in range(b)]
        stacked = jax.device_put(stack_graphs(chosen, n_nodes, n_edges))
        singles = [jax.device_put(pad_graph(g, n_nodes, n_edges)) for g in chosen]
        keys = jax.random.split(jax.random.PRNGKey(0), b)
        jax.block_until_ready(fit_gcn(singles[0], keys[0], config))
        t_sep = median_time(
            lambda: [jax.block_until_ready(fit_gcn(s, k, config)) for s, k in zip(singles, keys)], repeats
        )
        row = {"B": b, "nodes_each": int(chosen[0].features.shape[0]), "padded_nodes": n_nodes,
               "separate_s": t_sep, "auto": resolve_strategy("auto")}
        for strategy in ("parallel", "sequential"):
            jax.block_until_ready(fit_batch(stacked, keys, config, strategy=strategy))
            t = median_time(lambda: jax.block_until_ready(fit_batch(stacked, keys, config, strategy=strategy)), repeats)
            row[f"{strategy}_s"] = t
            row[f"{strategy}_speedup"] = t_sep / t
        rows.append(row)
    return rows


def bench_pyg(graph, repeats: int, epochs: int = 200) -> dict:
    """The same fit in PyTorch Geometric on the same graph, in this process; ``{"skipped": why}`` if absent.

    Two models, both 200-epoch-style full-batch fits with Adam (lr 1e-2, weight decay 1e-5), BCE on the
    training nodes, hidden 32 with dropout 0.5, edge weights, cached normalisation:
      - ``GCNConv x 2``: the textbook PyG model (layer 1 propagates its 32 hidden channels every epoch);
      - ``same algebra``: ``ÂX`` precomputed once (as ugcn does), ``Linear`` then ``GCNConv(32, 1)``, so the
        ratio to ugcn separates the framework from the algebra.
    """
    try:
        import torch
        import torch.nn.functional as F
        from torch_geometric.nn import GCNConv
        from torch_geometric.nn.conv.gcn_conv import gcn_norm
    except ImportError as err:
        return {"skipped": f"torch/torch_geometric not importable ({err}); pip install 'ugcn[bench]'"}

    torch.manual_seed(0)
    x = torch.from_numpy(graph.features)
    n = x.shape[0]
    edge_index = torch.from_numpy(np.stack([graph.senders, graph.receivers]).astype(np.int64))
    weight = torch.from_numpy(graph.weights)
    y = torch.from_numpy(graph.labels)
    train = torch.from_numpy(graph.train_mask)
    ei, w = gcn_norm(edge_index, weight, n, add_self_loops=True)
    ax = torch.zeros_like(x).index_add_(0, ei[1], w[:, None] * x[ei[0]])  # ÂX once

    class Textbook(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = GCNConv(x.shape[1], 32, cached=True)
            self.conv2 = GCNConv(32, 1, cached=True)

        def forward(self):
            h = F.relu(self.conv1(x, edge_index, weight))
            h = F.dropout(h, 0.5, self.training)
            return self.conv2(h, edge_index, weight)[:, 0]

    class SameAlgebra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1 = torch.nn.Linear(x.shape[1], 32)
            self.conv2 = GCNConv(32, 1, cached=True)

        def forward(self):
            h = F.dropout(F.relu(self.lin1(ax)), 0.5, self.training)
            return self.conv2(h, edge_index, weight)[:, 0]

    def run(model_cls, n_epochs):
        model = model_cls()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-5)
        model.train()
        for _ in range(n_epochs):
            opt.zero_grad()
            z = model()
            loss = F.binary_cross_entropy_with_logits(z[train], y[train])
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            return torch.sigmoid(model())

    out = {"torch": torch.__version__, "epochs": epochs, "by_threads": {}}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # Timed with as many threads as cores (as XLA) and with one thread; the faster setting counts.
    for threads in sorted({cores, 1}, reverse=True):
        torch.set_num_threads(threads)
        for name, cls in (("gcnconv", Textbook), ("same_algebra", SameAlgebra)):
            run(cls, 2)  # warm-up
            out["by_threads"].setdefault(threads, {})[name] = median_time(lambda: run(cls, epochs), repeats)
    for name in ("gcnconv", "same_algebra"):
        threads = min(out["by_threads"], key=lambda n: out["by_threads"][n][name])
        t = out["by_threads"][threads][name]
        out[f"{name}_threads"] = threads
        out[f"{name}_seconds"] = t
        out[f"{name}_ms_per_epoch"] = 1e3 * t / epochs
    out["threads"] = out["gcnconv_threads"]
    return out


def growth_exponent(sizes, seconds) -> float:
    """``b`` of the least-squares fit ``seconds ~ a * sizes**b`` (log-log)."""
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


SIZES = {
    # graph construction always at 20k, 100k and 300k nodes (it takes seconds); the fits grow with the size
    "small": dict(graph_nodes=[20_000, 100_000, 300_000], fit_nodes=[20_000], pyg_nodes=20_000, pyg_epochs=10,
                  batch_sizes=[1, 4], batch_nodes=3_000, selection_nodes=[10_000], repeats=3),
    "large": dict(graph_nodes=[20_000, 100_000, 300_000], fit_nodes=[20_000, 100_000, 300_000],
                  pyg_nodes=100_000, pyg_epochs=20, batch_sizes=[1, 4, 16], batch_nodes=20_000,
                  selection_nodes=[10_000, 30_000, 100_000], repeats=3),
}


def bench_selection(radius: float, repeats: int) -> dict:
    """``refine_volume`` with the default selection among candidate graphs vs the same settings with one
    candidate: medians after a warm-up (compilation) call, fit and total seconds, the variant chosen."""
    import statistics

    from ugcn.refine import RefineConfig, refine_volume

    image, prediction, expectation, uncertainty, label = sphere_case(radius)
    out = {}
    for name, config in (("one fit", RefineConfig(variants=())), ("selection", RefineConfig())):
        runs = [refine_volume(image, prediction, expectation, uncertainty, config=config, label=label)
                for _ in range(repeats + 1)][1:]
        r = runs[-1]
        out[name] = {"candidates": len(config.candidates()), "nodes": r.graph_stats["nodes"],
                     "fit_s": statistics.median(x.timings["fit"] for x in runs),
                     "graph_s": statistics.median(x.timings["graph"] for x in runs),
                     "total_s": statistics.median(x.timings["total"] for x in runs),
                     "variant": r.selection.get("variant"), "status": r.status,
                     "dice_refined": r.dice["refined"], "dice_cnn": r.dice["cnn"]}
    out["fit_ratio"] = out["selection"]["fit_s"] / out["one fit"]["fit_s"]
    out["total_ratio"] = out["selection"]["total_s"] / out["one fit"]["total_s"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="small")
    parser.add_argument("--pyg-epochs", type=int, default=None,
                        help="epochs timed for PyG, compared per epoch (default: 10 small, 20 large; 0 = skip)")
    args = parser.parse_args(argv)
    import jax

    spec = SIZES[args.size]
    repeats = spec["repeats"]
    print(f"method R benchmark ({args.size}), jax {jax.__version__} on {jax.devices()[0].device_kind}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    bandwidth = memory_bandwidth()
    print(f"memory bandwidth (numpy copy of 256 MiB, read+write): {bandwidth / 1e9:.2f} GB/s")

    graphs = {}
    print("\n| graph construction | nodes | directed edges | seconds | µs per node |\n|---|---:|---:|---:|---:|")
    graph_rows = []
    for target in spec["graph_nodes"]:
        row = bench_graph(radius_for(target), repeats)
        graph = row.pop("graph")
        if target in spec["fit_nodes"] or target == spec["pyg_nodes"] or target == spec["batch_nodes"]:
            graphs[target] = graph
        del graph
        row["target_nodes"] = target
        graph_rows.append(row)
        print(f"| ~{target // 1000}k nodes | {row['nodes']} | {row['directed_edges']} | {row['seconds']:.3f} | "
              f"{1e6 * row['seconds'] / row['nodes']:.2f} |")
    graph_exp = growth_exponent([r["nodes"] for r in graph_rows], [r["seconds"] for r in graph_rows])
    print(f"graph construction time grows as nodes^{graph_exp:.2f}")

    fits = []
    print("\n| 200-epoch fit | nodes | first call s | s | ms/epoch | MB/epoch (model) | GB/s | of bandwidth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for target in spec["fit_nodes"]:
        fit = bench_fit(graphs[target], repeats)
        fit["bandwidth_fraction"] = fit["achieved_GBps"] * 1e9 / bandwidth
        fit["ell_bytes_bandwidth_fraction"] = fit["ell_bytes_GBps"] * 1e9 / bandwidth
        coo = fit["segment_sum"]
        coo["bandwidth_fraction"] = coo["achieved_GBps"] * 1e9 / bandwidth
        fits.append(fit)
        for name, row in ((f"ugcn, {fit['layout']} (D={fit['ell_width']}, M={fit['ell_overflow']})", fit),
                          ("ugcn, segment_sum", coo)):
            print(f"| {name} | {fit['nodes']} | {row['first_call_s']:.2f} | {row['seconds']:.2f} | "
                  f"{row['ms_per_epoch']:.2f} | {fit['bytes_per_epoch'] / 1e6:.1f} | {row['achieved_GBps']:.2f} | "
                  f"{100 * row['bandwidth_fraction']:.0f}% |")
        print(f"ELL {fit['speedup_vs_segment_sum']:.2f}x faster than segment_sum (max |prob diff| "
              f"{fit['max_abs_prob_diff_vs_segment_sum']:.1e}); by the ELL's own bytes "
              f"({fit['ell_bytes_per_epoch'] / 1e6:.1f} MB/epoch): {fit['ell_bytes_GBps']:.2f} GB/s, "
              f"{100 * fit['ell_bytes_bandwidth_fraction']:.0f}% of bandwidth; layout built in {fit['layout_s']:.2f} s")
    fit_exp = growth_exponent([f["nodes"] for f in fits], [f["seconds"] for f in fits]) if len(fits) > 1 else None
    if fit_exp is not None:
        print(f"fit time grows as nodes^{fit_exp:.2f}")

    # PyG is slow on small CPUs (and torch takes seconds to import): time a few epochs, compare per epoch.
    pyg_epochs = args.pyg_epochs if args.pyg_epochs is not None else spec["pyg_epochs"]
    pyg_graph = graphs[spec["pyg_nodes"]]
    pyg = bench_pyg(pyg_graph, 1, epochs=pyg_epochs) if pyg_epochs > 0 else {"skipped": "--pyg-epochs 0"}
    ref = next((f for f in fits if f["nodes"] == pyg_graph.n_nodes), None)
    if ref is None:
        ref = bench_fit(pyg_graph, repeats)
    if "skipped" not in pyg:
        pyg["nodes"] = pyg_graph.n_nodes
        pyg["ugcn_ms_per_epoch"] = ref["ms_per_epoch"]
        pyg["ratio_gcnconv_over_ugcn"] = pyg["gcnconv_ms_per_epoch"] / ref["ms_per_epoch"]
        pyg["ratio_same_algebra_over_ugcn"] = pyg["same_algebra_ms_per_epoch"] / ref["ms_per_epoch"]
        print(f"\n| same graph ({pyg_graph.n_nodes} nodes), per epoch | ms/epoch | / ugcn |\n|---|---:|---:|")
        print(f"| ugcn (jax, 200 epochs in one scan) | {ref['ms_per_epoch']:.2f} | 1.0 |")
        print(f"| PyG GCNConv x 2 (torch {pyg['torch']}, {pyg['gcnconv_threads']} threads, {pyg['epochs']} epochs) | "
              f"{pyg['gcnconv_ms_per_epoch']:.2f} | {pyg['ratio_gcnconv_over_ugcn']:.1f}x |")
        print(f"| PyG, same algebra (ÂX once, Linear + GCNConv(32, 1), {pyg['same_algebra_threads']} threads) | "
              f"{pyg['same_algebra_ms_per_epoch']:.2f} | "
              f"{pyg['ratio_same_algebra_over_ugcn']:.1f}x |")
    else:
        print(f"\nPyG comparison skipped: {pyg['skipped']}")

    batch_graph = graphs.get(spec["batch_nodes"]) or bench_graph(radius_for(spec["batch_nodes"]), 1)["graph"]
    batch = bench_batch([batch_graph], spec["batch_sizes"], 2)
    print("\n| batch fit | B | nodes each | B separate fits s | parallel s (speed-up) | sequential s (speed-up) "
          "| s per volume (auto) | auto picks |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for row in batch:
        row["seconds_per_volume_auto"] = row[f"{row['auto']}_s"] / row["B"]
        print(f"| fit_batch | {row['B']} | {row['nodes_each']} | {row['separate_s']:.2f} | "
              f"{row['parallel_s']:.2f} ({row['parallel_speedup']:.2f}x) | "
              f"{row['sequential_s']:.2f} ({row['sequential_speedup']:.2f}x) | "
              f"{row['seconds_per_volume_auto']:.3f} | {row['auto']} |")

    # at >= 10k nodes (a realistic organ ROI): below that, fixed per-call cost dominates both sides
    selections = [bench_selection(radius_for(n), 2) for n in spec["selection_nodes"]]
    print("\n| per volume | candidates | nodes | fit s | graphs s | total s | variant | Dice (CNN) |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for selection in selections:
        for name in ("one fit", "selection"):
            row = selection[name]
            print(f"| {name} | {row['candidates']} | {row['nodes']} | {row['fit_s']:.2f} | {row['graph_s']:.2f} | "
                  f"{row['total_s']:.2f} | {row['variant']} | {row['dice_refined']:.3f} ({row['dice_cnn']:.3f}) |")

    largest = fits[-1]
    ratios = {
        "graph construction growth exponent (time ~ nodes^b)": graph_exp,
        f"fit: fraction of memory bandwidth ({largest['nodes']} nodes)": largest["bandwidth_fraction"],
    }
    for f in fits:
        ratios[f"fit: segment_sum / ELL epoch time ({f['nodes']} nodes)"] = f["speedup_vs_segment_sum"]
    if fit_exp is not None:
        ratios["fit growth exponent (time ~ nodes^b)"] = fit_exp
    if "skipped" not in pyg:
        ratios[f"PyG GCNConv / ugcn per epoch ({pyg['nodes']} nodes)"] = pyg["ratio_gcnconv_over_ugcn"]
        ratios[f"PyG same algebra / ugcn per epoch ({pyg['nodes']} nodes)"] = pyg["ratio_same_algebra_over_ugcn"]
    biggest_b = batch[-1]
    ratios[f"B={biggest_b['B']} separate fits / fit_batch (auto)"] = biggest_b[f"{biggest_b['auto']}_speedup"]
    for selection in selections:
        nodes = selection["one fit"]["nodes"]
        ratios[f"selection / one fit per volume: fit ({nodes} nodes)"] = selection["fit_ratio"]
        ratios[f"selection / one fit per volume: total ({nodes} nodes)"] = selection["total_ratio"]
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")

    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "python": sys.version.split()[0], "jax": jax.__version__, "numpy": np.__version__,
                    "device": str(jax.devices()[0]), "load_average": list(os.getloadavg())},
        "memory_bandwidth_GBps": bandwidth / 1e9,
        "graph_construction": graph_rows,
        "graph_growth_exponent": graph_exp,
        "fit": largest,
        "fits": fits,
        "fit_growth_exponent": fit_exp,
        "pyg": pyg,
        "batch": batch,
        "selection": selections[0],
        "selections": selections,
        "bytes_model": "2*20*E + 5*4*H*N + 4*F*N per epoch (float32/int32)",
        "ratios": ratios,
    }
    save_results("refine", args.size, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
