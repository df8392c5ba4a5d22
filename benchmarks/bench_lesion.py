"""Benchmark of method L: lesion extraction + graph building, and the GCNN's epoch time.

1. A 160 x 192 x 160 volume (the paper's size) with 50 lesions of log-normal sizes (3-1000 voxels):
   connected components, IoU_adj against a ground truth, lesion graphs (one per lesion) and the baseline
   aggregations. Target: under a second.
2. GCNN training epoch time (2 x GraphConv(64), mean readout, batches of 10 graphs) on the lesion graphs
   of several such volumes; against PyTorch Geometric (GCNConv, global_mean_pool) on the same graphs and
   batches when ``torch`` and ``torch_geometric`` import.

Usage: ``python benchmarks/bench_lesion.py [--size small|large]``; prints a table and writes
``benchmarks/results/lesion.json`` (under the size). ``small`` (default) uses 2 volumes for the GCNN part; ``large`` 8.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from ugcn.graph.lesion_graph import build_lesion_graphs, concat_lesion_graphs  # noqa: E402
from ugcn.lesion.baselines import lesion_statistics  # noqa: E402
from ugcn.lesion.components import lesion_table  # noqa: E402
from ugcn.lesion.gcnn import fit_gcnn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_results  # noqa: E402

SHAPE = (160, 192, 160)
NAMES = ("entropy", "variance", "one_minus_pcs")


def synthetic_volume(seed: int, n_lesions: int = 50, shape=SHAPE):
    """Image, predicted mask (50 separate ellipsoids), a shifted ground truth and 3 uncertainty maps."""
    rng = np.random.default_rng(seed)
    pred = np.zeros(shape, np.uint8)
    sizes = np.clip(np.exp(rng.normal(np.log(60), 1.2, n_lesions)), 3, 1000)
    # Centres on a coarse grid so that lesions stay separate.
    cells = np.stack(np.unravel_index(rng.choice(8 * 9 * 8, n_lesions, replace=False), (8, 9, 8)), 1)
    centres = cells * (np.array(shape) // np.array([8, 9, 8])) + np.array(shape) // np.array([16, 18, 16])
    for c, s in zip(centres, sizes):  # one small box per lesion, never a loop over voxels
        r = (3 * s / (4 * np.pi)) ** (1 / 3) * rng.uniform(0.7, 1.3, 3)
        lo = np.maximum(c - np.ceil(r).astype(int) - 1, 0)
        hi = np.minimum(c + np.ceil(r).astype(int) + 2, shape)
        grid = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
        inside = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grid, c, r)) <= 1.0
        inside[tuple(np.clip(c - lo, 0, np.array(inside.shape) - 1))] = True
        pred[tuple(slice(a, b) for a, b in zip(lo, hi))] |= inside.astype(np.uint8)
    gt = np.roll(pred, 1, axis=0) * (rng.random(shape) < 0.95)
    image = rng.normal(size=shape).astype(np.float32)
    maps = {n: rng.random(shape, dtype=np.float32) for n in NAMES}
    return image, pred, gt, maps


def extraction(image, pred, gt, maps):
    table = lesion_table(pred, gt)
    graphs = build_lesion_graphs(table.labels, table.n, image, pred, maps, NAMES)
    stats = lesion_statistics(table.labels, table.n, maps, NAMES)
    return table, graphs, stats


def timed(fn, repeats: int):
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_extraction(repeats: int):
    image, pred, gt, maps = synthetic_volume(0)
    extraction(image, pred, gt, maps)  # warm-up
    t_all, (table, graphs, _) = timed(lambda: extraction(image, pred, gt, maps), repeats)
    t_cc, _ = timed(lambda: lesion_table(pred, gt), repeats)
    return {
        "volume": list(SHAPE), "lesions": int(table.n), "lesion_voxels": int(table.size.sum()),
        "nodes": int(graphs.nodes.shape[0]), "edges": int(graphs.senders.shape[0]),
        "seconds_components_iou": t_cc, "seconds_total": t_all,
    }


def gcnn_data(n_volumes: int):
    parts, targets = [], []
    for v in range(n_volumes):
        image, pred, gt, maps = synthetic_volume(100 + v)
        table, graphs, _ = extraction(image, pred, gt, maps)
        parts.append(graphs)
        targets.append(table.iou_adj)
    return concat_lesion_graphs(parts), np.concatenate(targets)


def bench_gcnn_jax(graphs, targets, epochs: int, repeats: int):
    fit_gcnn(graphs, targets, epochs=1)  # compiles every rung the batches need
    t, _ = timed(lambda: fit_gcnn(graphs, targets, epochs=epochs), repeats)
    return t / epochs


def bench_gcnn_pyg(graphs, targets, epochs: int, repeats: int):
    try:
        import torch
        from torch_geometric.data import Batch, Data
        from torch_geometric.nn import GCNConv, global_mean_pool
    except Exception as err:  # not installed: report why
        return None, f"{type(err).__name__}: {err}"

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self, f):
            super().__init__()
            self.c1, self.c2 = GCNConv(f, 64), GCNConv(64, 64)
            self.head = torch.nn.Linear(64, 2)

        def forward(self, x, edge_index, batch, num_graphs):
            x = torch.relu(self.c1(x, edge_index))
            x = torch.relu(self.c2(x, edge_index))
            return self.head(global_mean_pool(x, batch, num_graphs))

    node_off, edge_off = graphs.node_offsets(), graphs.edge_offsets()
    mean, std = graphs.nodes.mean(0), graphs.nodes.std(0) + 1e-8
    data = []
    for g in range(graphs.num_graphs):  # one-off conversion, outside the timing
        x = torch.from_numpy((graphs.nodes[node_off[g] : node_off[g + 1]] - mean) / std).float()
        s = graphs.senders[edge_off[g] : edge_off[g + 1]] - node_off[g]
        r = graphs.receivers[edge_off[g] : edge_off[g + 1]] - node_off[g]
        ei = torch.from_numpy(np.stack([s, r]).astype(np.int64))
        data.append(Data(x=x, edge_index=ei, y=torch.tensor([int(targets[g] < 0.1)])))
    net = Net(graphs.num_features)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)

    def run():
        for _ in range(epochs):
            order = rng.permutation(len(data))
            for start in range(0, len(data), 10):
                b = Batch.from_data_list([data[i] for i in order[start : start + 10]])
                opt.zero_grad()
                out = net(b.x, b.edge_index, b.batch, b.num_graphs)
                loss = torch.nn.functional.cross_entropy(out, b.y)
                loss.backward()
                opt.step()

    # Timed with as many threads as cores (as XLA) and with one thread; the faster setting counts.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    times = {}
    for threads in sorted({cores, 1}, reverse=True):
        torch.set_num_threads(threads)
        run()
        times[threads], _ = timed(run, repeats)
    best = min(times, key=times.get)
    return times[best] / epochs, f"torch {torch.__version__}, threads {best} (of {sorted(times)} tried)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "large"), default="small")
    args = parser.parse_args(argv)
    n_volumes, epochs, repeats = (2, 3, 3) if args.size == "small" else (8, 5, 3)

    ext = bench_extraction(repeats=5)
    graphs, targets = gcnn_data(n_volumes)
    t_jax = bench_gcnn_jax(graphs, targets, epochs, repeats)
    t_pyg, pyg_info = bench_gcnn_pyg(graphs, targets, epochs, repeats)

    rows = [
        ("lesion extraction + graphs + baselines (50 lesions, 160x192x160)", ext["seconds_total"]),
        ("  of which components + IoU_adj + table", ext["seconds_components_iou"]),
        (f"GCNN epoch, ugcn/JAX ({graphs.num_graphs} lesions, batches of 10)", t_jax),
    ]
    if t_pyg is not None:
        rows.append(("GCNN epoch, PyTorch Geometric (same graphs and batches)", t_pyg))
    print(f"\nmethod L benchmark ({args.size}); medians after warm-up")
    print(f"{'what':72s} {'seconds':>10s}")
    for name, sec in rows:
        print(f"{name:72s} {sec:10.4f}")
    print(f"graphs: {ext['lesions']} lesions, {ext['nodes']} nodes, {ext['edges']} edges per volume")
    if t_pyg is not None:
        print(f"PyG / JAX epoch time ratio: {t_pyg / t_jax:.2f}")
    else:
        print(f"PyTorch Geometric comparison skipped ({pyg_info})")

    ratios = {"lesion extraction + graphs, seconds per 160x192x160 volume": ext["seconds_total"]}
    if t_pyg is not None:
        ratios["PyG / ugcn GCNN epoch"] = t_pyg / t_jax
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "jax_backend": jax.default_backend(), "load_average": list(os.getloadavg())},
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__,
                     "pyg": pyg_info},
        "size": args.size,
        "extraction": ext,
        "gcnn": {"lesions": graphs.num_graphs, "nodes": int(graphs.nodes.shape[0]),
                 "edges": int(graphs.senders.shape[0]), "epochs_timed": epochs,
                 "seconds_per_epoch_jax": t_jax, "seconds_per_epoch_pyg": t_pyg,
                 "ratio_pyg_over_jax": (t_pyg / t_jax) if t_pyg else None},
        "ratios": ratios,
        "note": "compare ratios from the same run only",
    }
    save_results("lesion", args.size, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
