"""Benchmark: T Monte Carlo dropout passes of a 2D U-Net over one volume.

Compares, on the same machine in the same run:
  - ``mc_sample``: the T passes as ONE compiled function (lax.scan over chunks of passes; the chunk's passes
    run as one batch with each pass's dropout masks given, the stem computed once per slice; streaming
    statistics), for a few chunk sizes;
  - a Python loop of T calls of the same single-pass function, jitted once, with a jitted running-sum update
    (the streaming baseline without vmap/scan);
  - the same U-Net in PyTorch (CPU, eval-mode batch-norm, ``Dropout2d`` switched on: MC dropout), with the
    JAX model's weights copied in (deterministic outputs are checked to agree), as a Python loop of T passes
    and as chunks of passes stacked into one batch; same running sums; timed with as many threads as cores
    and with one thread, the faster setting reported.
    Skipped with a note when ``torch`` is not installed (``pip install "ugcn[bench]"``).
Timings are medians of ``--repeats`` runs after one warm-up run (compilation excluded; compile times are
reported separately). Memory is XLA's compiled ``memory_analysis()`` of each executable (bytes of arguments,
outputs and temporaries the compiled program allocates), with and without keeping the T samples.

Issue 15's 2D case (the default 2D U-Net, base 16 depth 3, T = 20 over 128 x 128 x 64, ``mc_sample`` with its
defaults) is also measured directly at every size (``issue_2d_measured``: first call with compilation, then the
median of 3 runs; ~1.5 minutes on a 2-core CPU), against the issue's goal of 10 s.

Per-layer times of the default sampler's program against the FLOP model: ``benchmarks/profile_mcdo.py``.

Usage:  python benchmarks/bench_mcdo.py [--size small|issue|large] [--repeats 3]
  small: base 8 U-Net,  volume 64x64x24, T = 20, chunk 4          (< 1 min idle 2-core CPU, + ~1.5 min: issue case)
  large: base 16 U-Net, volume 96x96x48, T = 20, chunks 1, 4, 20  (~10 minutes on a 2-core CPU)
Writes (updates the entry of its size in) benchmarks/results/mcdo.json; ``ratios`` holds the headline
figures (the default sampler vs the JAX loop and vs the PyTorch loop).
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import machine_info, median_time, save_results, summarize_calls, timed_call

from ugcn.segment.model import init_model, make_volume_fn
from ugcn.segment.unet import UNetConfig
from ugcn.uncertainty.sampling import (
    _compiled_sampler,
    _split_weights,
    default_streams,
    mc_sample,
    model_dims,
    stream_plan,
)
from ugcn.uncertainty.stats import accumulate, empty_stats

SIZES = {
    # issue 15's 2D case: the default 2D U-Net over a 128 x 128 x 64 CT volume, T = 20.
    "issue": dict(base=16, depth=3, shape=(128, 128, 64), samples=20, chunks=(1, 4),
                  three_d=dict(shape=(64, 64, 64), samples=4, batches=(1, 2, 4))),
    "small": dict(base=8, depth=3, shape=(64, 64, 24), samples=20, chunks=(4,),
                  three_d=dict(shape=(48, 48, 48), samples=4, batches=(4, 8))),
    "large": dict(base=16, depth=3, shape=(96, 96, 48), samples=20, chunks=(1, 4, 20),
                  three_d=dict(shape=(64, 64, 64), samples=4, batches=(4, 8, 27))),
}
# Issue 15's 2D case and its goal: T = 20 passes of the default 2D U-Net over a 128 x 128 x 64 CT volume in 10 s.
ISSUE_2D = dict(shape=(128, 128, 64), samples=20, goal_seconds=10.0)
# The brain of issue 15 (99 x 117 x 95, ~1.1 M voxels): its patch counts per overlap give the predicted T = 20
# time from the measured seconds per patch-pass.
BRAIN = (99, 117, 95)



def unet_layer_flops(config: UNetConfig, spatial: tuple[int, ...]) -> list[dict]:
    """Multiply-add FLOPs (2 per MAC) of every layer of one U-Net sample over ``spatial``, and whether the layer
    runs after the first dropout (``stochastic``: once per pass) or before it (the stem: once per input)."""
    dims, base, depth = config.dims, config.base_features, config.depth
    taps = 3**dims

    def voxels(level):
        return int(np.prod([s // 2**level for s in spatial]))

    rows = []

    def conv(name, level, c_in, c_out, stochastic, k=taps):
        rows.append({"layer": f"{name} {c_in}->{c_out}", "flops": 2 * k * c_in * c_out * voxels(level),
                     "stochastic": stochastic})

    def block(name, level, c_in, c_out, after_dropout):
        conv(f"{name}.conv0", level, c_in, c_out, after_dropout)
        conv(f"{name}.conv1", level, c_out, c_out, after_dropout or dims == 2)  # 2D: dropout after every conv

    for level in range(depth):
        block(f"enc{level}", level, config.in_channels if level == 0 else base * 2 ** (level - 1), base * 2**level,
              level > 0)
    block("bottom", depth, base * 2 ** (depth - 1), base * 2**depth, True)
    for level in reversed(range(depth)):
        conv(f"up{level}", level, base * 2 ** (level + 1), base * 2**level, True, k=1)  # stride-2 transposed 2^d
        block(f"dec{level}", level, base * 2 ** (level + 1), base * 2**level, True)
    conv("head", 0, base, config.num_classes, True, k=1)
    return rows


def mc_flops(config: UNetConfig, spatial: tuple[int, ...], n_inputs: int, n_samples: int) -> dict:
    """FLOPs of ``n_samples`` MC passes over ``n_inputs`` slices or patches: the stem once per input."""
    rows = unet_layer_flops(config, spatial)
    stem = sum(r["flops"] for r in rows if not r["stochastic"])
    rest = sum(r["flops"] for r in rows if r["stochastic"])
    return {"per_input_gflop": (stem + rest) / 1e9, "stem_share": stem / (stem + rest),
            "total_tflop_stem_shared": (stem + rest * n_samples) * n_inputs / 1e12,
            "total_tflop_unshared": (stem + rest) * n_samples * n_inputs / 1e12}


def matmul_gflops(repeats: int) -> float:
    """f32 GFLOP/s of a jitted 2048 x 2048 matmul (this process, this load): the machine's compute roof."""
    a = jnp.asarray(np.random.default_rng(0).normal(size=(2048, 2048)).astype(np.float32))
    f = jax.jit(lambda x: x @ x)
    return 2 * 2048**3 / median_time(lambda: f(a).block_until_ready(), max(repeats, 3), warmup=True) / 1e9


def memory(compiled) -> dict:
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in ("argument", "output", "temp", "generated_code")}
    out["total_bytes"] = out["argument"] + out["output"] + out["temp"]
    return out


def cpu_threads() -> int:
    """Cores this process may use (XLA:CPU uses all of them; PyTorch is set to the same number)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def torch_unet(config: UNetConfig, variables):
    """The same 2D U-Net in PyTorch, holding the JAX model's weights.

    ``conv3x3 (no bias) -> BatchNorm -> ReLU -> Dropout2d`` twice per block, 2x max-pool, 2x2 transposed
    conv (flax's kernel is applied flipped), skip concatenation, 1x1 head. ``eval()`` then dropout modules
    back to ``train()`` gives MC dropout with batch-norm running statistics, as ``make_volume_fn``.
    """
    import torch
    from torch import nn as tnn

    params, stats = variables["params"], variables["batch_stats"]
    rate = config.rate

    def tensor(a, transpose=None):
        a = np.array(a, np.float32)  # a writable copy
        return torch.from_numpy(np.ascontiguousarray(a.transpose(transpose) if transpose else a))

    def block(name, c_in, c_out):
        layers = []
        for i in range(2):
            conv = tnn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False)
            bn = tnn.BatchNorm2d(c_out, eps=1e-5)
            with torch.no_grad():
                conv.weight.copy_(tensor(params[name][f"Conv_{i}"]["kernel"], (3, 2, 0, 1)))
                bn.weight.copy_(tensor(params[name][f"BatchNorm_{i}"]["scale"]))
                bn.bias.copy_(tensor(params[name][f"BatchNorm_{i}"]["bias"]))
                bn.running_mean.copy_(tensor(stats[name][f"BatchNorm_{i}"]["mean"]))
                bn.running_var.copy_(tensor(stats[name][f"BatchNorm_{i}"]["var"]))
            layers += [conv, bn, tnn.ReLU(), tnn.Dropout2d(rate)]
        return tnn.Sequential(*layers)

    class UNet(tnn.Module):
        def __init__(self):
            super().__init__()
            f, d = config.base_features, config.depth
            self.down = tnn.ModuleList(
                [block(f"ConvBlock_{lv}", config.in_channels if lv == 0 else f * 2 ** (lv - 1), f * 2**lv)
                 for lv in range(d)])
            self.bottom = block(f"ConvBlock_{d}", f * 2 ** (d - 1), f * 2**d)
            self.ups, self.up_blocks = tnn.ModuleList(), tnn.ModuleList()
            for i, lv in enumerate(reversed(range(d))):
                up = tnn.ConvTranspose2d(f * 2 ** (lv + 1), f * 2**lv, 2, stride=2)
                with torch.no_grad():
                    k = np.asarray(params[f"ConvTranspose_{i}"]["kernel"])[::-1, ::-1]
                    up.weight.copy_(tensor(k, (2, 3, 0, 1)))
                    up.bias.copy_(tensor(params[f"ConvTranspose_{i}"]["bias"]))
                self.ups.append(up)
                self.up_blocks.append(block(f"ConvBlock_{d + 1 + i}", f * 2 ** (lv + 1), f * 2**lv))
            self.head = tnn.Conv2d(f, config.num_classes, 1)
            with torch.no_grad():
                self.head.weight.copy_(tensor(params["Conv_0"]["kernel"], (3, 2, 0, 1)))
                self.head.bias.copy_(tensor(params["Conv_0"]["bias"]))

        def forward(self, x):
            skips = []
            for blk in self.down:
                x = blk(x)
                skips.append(x)
                x = torch.nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for up, blk, skip in zip(self.ups, self.up_blocks, reversed(skips)):
                x = blk(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    net = UNet().eval()
    for m in net.modules():
        if isinstance(m, tnn.Dropout2d):
            m.train()  # MC dropout: dropout on, batch-norm on running statistics
    return net


def bench_torch(config: UNetConfig, variables, image: np.ndarray, T: int, chunk: int, repeats: int,
                reference: np.ndarray) -> dict:
    """PyTorch MC dropout of the same U-Net: Python loop of T passes, and chunks of passes as one batch."""
    try:
        import torch
    except ImportError as err:
        return {"skipped": f"torch not importable ({err}); pip install 'ugcn[bench]'"}
    torch.set_num_threads(cpu_threads())
    net = torch_unet(config, variables)
    step = 2**config.depth
    x = (image - image.mean()) / max(float(image.std()), 1e-6)  # the model's z-score normalisation
    nx, ny, _ = x.shape
    x = np.pad(x, ((0, -nx % step), (0, -ny % step), (0, 0)), mode="edge")
    slices = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[:, None]))  # [Z, 1, X, Y]

    def probs(batch):
        p = torch.sigmoid(net(batch)[:, 0, :nx, :ny])
        return torch.stack([1 - p, p], dim=-1)  # [B, X, Y, C]

    with torch.no_grad():  # the weights copy is checked once, with dropout off
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout2d):
                m.eval()
        check = probs(slices).numpy().transpose(1, 2, 0, 3)
        for m in net.modules():
            if isinstance(m, torch.nn.Dropout2d):
                m.train()
    max_diff = float(np.abs(check - reference).max())

    def accumulate_torch(sums, p):
        sums[0] += p.sum(0)
        sums[1] += (p * p).sum(0)
        sums[2] += torch.special.xlogy(p, p).sum(0)

    def loop():
        torch.manual_seed(0)
        with torch.no_grad():
            sums = [torch.zeros(slices.shape[0], nx, ny, 2) for _ in range(3)]
            for _ in range(T):
                accumulate_torch(sums, probs(slices)[None])
        return sums

    def chunked():
        torch.manual_seed(0)
        z = slices.shape[0]
        with torch.no_grad():
            sums = [torch.zeros(z, nx, ny, 2) for _ in range(3)]
            for start in range(0, T, chunk):
                n = min(chunk, T - start)  # n passes stacked on the batch axis: one Dropout2d draw each
                p = probs(slices.repeat(n, 1, 1, 1)).reshape(n, z, nx, ny, 2)
                accumulate_torch(sums, p)
        return sums

    # PyTorch's thread pool is timed with as many threads as cores (as XLA) and with one thread; the faster
    # setting counts (on a machine shared with other work, one thread can win by far).
    by_threads = {}
    for threads in sorted({cpu_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        by_threads[threads] = {"loop_seconds": median_time(loop, repeats, warmup=True),
                               "chunked_seconds": median_time(chunked, repeats, warmup=True)}
    best_loop = min(by_threads, key=lambda n: by_threads[n]["loop_seconds"])
    best_chunk = min(by_threads, key=lambda n: by_threads[n]["chunked_seconds"])
    return {"torch": torch.__version__, "threads": best_loop, "chunk_threads": best_chunk,
            "loop_seconds": by_threads[best_loop]["loop_seconds"], "chunk": chunk,
            "chunked_seconds": by_threads[best_chunk]["chunked_seconds"], "by_threads": by_threads,
            "max_abs_diff_deterministic": max_diff}


def bench_3d(settings: dict, repeats: int) -> dict:
    """3D U-Net (default: base 16, depth 3, 32^3 patches, overlap 0.5) MC dropout on one volume.

    Times a Python loop of T single passes (the stem recomputed every pass) against ``mc_sample`` with all
    T passes in one chunk (patch extraction and stem once per patch chunk) as one program for several patch
    batches, and with its defaults (2 concurrent streams on the CPU for an even T, :func:`default_streams`), and
    turns the best seconds per patch-pass into a predicted T = 20 time on the issue's brain for each
    patch overlap (from the patch counts of :func:`patch_starts`).
    """
    from ugcn.segment.model import patch_starts

    config = UNetConfig(dims=3)
    model = init_model(config, jax.random.PRNGKey(0))
    T = settings["samples"]
    image = jnp.asarray(np.random.default_rng(0).normal(size=settings["shape"]).astype(np.float32))
    key = jax.random.key(0)
    n_patches = len(patch_starts(settings["shape"], config.patch, config.patch_overlap))
    rows = []
    single = jax.jit(make_volume_fn(model, stochastic=True))
    keys = jax.random.split(key, T)
    single(keys[0], image).block_until_ready()
    t_loop = median_time(lambda: [single(k, image).block_until_ready() for k in keys], repeats)
    rows.append({"method": "loop of single passes", "patch_batch": None, "seconds": t_loop})
    for batch in settings["batches"]:
        fn = make_volume_fn(model, stochastic=True, batch_size=batch)
        # one program (streams=1): the patch batches compared on their own; the default streams: the next row
        run = lambda: jax.block_until_ready(  # noqa: E731
            mc_sample(fn, image, key, n_samples=T, chunk_size=T, streams=1).stats)
        t = time.perf_counter()
        run()
        compile_s = time.perf_counter() - t
        rows.append({"method": "mc_sample, stem shared", "patch_batch": batch, "seconds": median_time(run, repeats),
                     "first_call_seconds": compile_s})
    fn = make_volume_fn(model, stochastic=True)
    streams = default_streams(fn, T)
    run = lambda: jax.block_until_ready(mc_sample(fn, image, key, n_samples=T, chunk_size=T).stats)  # noqa: E731
    t = time.perf_counter()
    run()
    compile_s = time.perf_counter() - t
    rows.append({"method": f"mc_sample default ({streams} streams)", "patch_batch": None,
                 "seconds": median_time(run, repeats), "first_call_seconds": compile_s, "streams": streams})
    # The deterministic pass (the prediction of `ugcn mcdo`): a program of its own, one pass.
    det = jax.jit(make_volume_fn(model, stochastic=False))
    t = time.perf_counter()
    det(key, image).block_until_ready()
    det_first = time.perf_counter() - t
    det_s = median_time(lambda: det(key, image).block_until_ready(), repeats)
    rows.append({"method": "one deterministic pass (dropout off)", "patch_batch": None, "seconds": det_s,
                 "first_call_seconds": det_first})
    best_row = min(rows[1:-1], key=lambda r: r["seconds"])
    best = min(t_loop, best_row["seconds"])
    per_patch_pass = best / (T * n_patches)
    compile_s = max(0.0, best_row["first_call_seconds"] - best_row["seconds"]) + max(0.0, det_first - det_s)
    brain = {}
    for overlap in (0.5, 0.25, 0.0):
        n = len(patch_starts(BRAIN, config.patch, overlap))
        brain[str(overlap)] = {"patches": n, "predicted_T20_seconds": per_patch_pass * n * 20,
                               "predicted_with_deterministic_pass_and_compilation_seconds":
                                   per_patch_pass * n * 20 + det_s / n_patches * n + compile_s}
    flops = mc_flops(config, config.patch, n_patches, T)
    return {"unet": config.to_dict(), "volume": list(settings["shape"]), "patches": n_patches, "n_samples": T,
            "rows": rows, "seconds_per_patch_pass": per_patch_pass, "brain": list(BRAIN),
            "brain_prediction": brain, "shared_speedup_vs_loop": t_loop / best_row["seconds"],
            "compile_seconds_estimate": compile_s, "flops": flops,
            "gflop_per_s": flops["total_tflop_stem_shared"] * 1e3 / best_row["seconds"]}


def measure_issue_2d(repeats: int = 5) -> dict:
    """Issue 15's 2D case measured directly: ``mc_sample`` with its defaults, the default 2D U-Net (random
    weights), T = 20 over a 128 x 128 x 64 volume. First call (compilation + one run) timed on its own, then the
    median of ``repeats`` runs, interleaved with the same sampler as one program (``streams=1``); GFLOP/s from
    :func:`mc_flops` (the FLOPs the sampler executes: stem once per slice); the 1-minute load average before
    and after. Each timed call also records the shares of the machine's CPU time that were idle and stolen by the
    hypervisor (``common.timed_call``); the largest of each over the calls is kept."""

    load_before = os.getloadavg()[0]
    config = UNetConfig(dims=2)
    fn = make_volume_fn(init_model(config, jax.random.PRNGKey(0)), stochastic=True)
    shape, T = ISSUE_2D["shape"], ISSUE_2D["samples"]
    image = jnp.asarray(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    key = jax.random.key(0)
    streams = default_streams(fn, T)
    run = lambda: jax.block_until_ready(mc_sample(fn, image, key, n_samples=T).stats)  # noqa: E731
    one = lambda: jax.block_until_ready(mc_sample(fn, image, key, n_samples=T, streams=1).stats)  # noqa: E731
    t = time.perf_counter()
    run()
    first = time.perf_counter() - t
    one()
    rounds: dict = {"default": [], "one": []}
    for _ in range(repeats):  # interleaved: both see the same load
        for name, f in (("default", run), ("one", one)):
            rounds[name].append(timed_call(f))
    default, single = summarize_calls(rounds["default"]), summarize_calls(rounds["one"])
    seconds, one_seconds = default["seconds"], single["seconds"]
    flops = mc_flops(config, shape[:2], shape[2], T)
    return {"unet": config.to_dict(), "volume": list(shape), "n_samples": T, "repeats": repeats,
            "streams": streams, "one_stream_seconds": one_seconds,
            "seconds": seconds, "max_idle_fraction": default["max_idle_fraction"],
            "max_steal_fraction": default["max_steal_fraction"], "calls": rounds["default"],
            "first_call_seconds": first, "goal_seconds": ISSUE_2D["goal_seconds"],
            "tflop": flops["total_tflop_stem_shared"],
            "gflop_per_s": flops["total_tflop_stem_shared"] * 1e3 / seconds,
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def main(argv=None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress shows when the output is piped (run_all, make bench)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    T = cfg["samples"]
    config = UNetConfig(dims=2, base_features=cfg["base"], depth=cfg["depth"])
    model = init_model(config, jax.random.PRNGKey(0))
    # Random weights with unit batch-norm statistics saturate nothing: dropout changes the outputs.
    volume_fn = make_volume_fn(model, stochastic=True)
    host_image = np.random.default_rng(0).normal(size=cfg["shape"]).astype(np.float32)
    image = jnp.asarray(host_image)
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
    rows.append(dict(method="jax: python loop of single passes", chunk=1, keep_samples=False, seconds=t_loop,
                     compile_seconds=compile_single, memory=memory(single)))

    # The default (slices in chunks of SLICE_PIXELS_PER_CALL pixels per call, passes included), and all slices of
    # a pass in one call (the earlier default; same samples).
    whole = make_volume_fn(model, stochastic=True, batch_size=cfg["shape"][2])
    one_program = "jax: mc_sample as one program (passes batched)"
    for chunk, fn, label in [(c, volume_fn, one_program) for c in cfg["chunks"]] + [
            (max(cfg["chunks"]), whole, "jax: mc_sample, all slices per call")]:
        for keep in (False, True) if fn is volume_fn else (False,):
            t = time.perf_counter()
            apply, variables = _split_weights(fn)
            compiled = _compiled_sampler(apply, T, chunk, keep).lower(variables, keys, image).compile()
            compile_s = time.perf_counter() - t
            mem = memory(compiled)
            seconds = None if keep else median_time(
                lambda: jax.block_until_ready(compiled(variables, keys, image)), args.repeats, warmup=True)
            rows.append(dict(method=label, chunk=chunk, keep_samples=keep,
                             seconds=seconds, compile_seconds=compile_s, memory=mem))

    # What a user gets: mc_sample with its defaults (on the CPU: concurrent streams over the passes, each its own
    # program), against which issue 15 asks the loop of single passes to lose.
    streams = default_streams(volume_fn, T)
    # passes per call of each stream: mc_sample's plan with its own default chunk_size
    default_chunk = inspect.signature(mc_sample).parameters["chunk_size"].default
    two_d = model_dims(_split_weights(volume_fn)[0]) == 2
    per_stream_chunk = stream_plan(T, default_chunk, streams, shared_chunk=two_d)[0][2]
    t = time.perf_counter()
    jax.block_until_ready(mc_sample(volume_fn, image, key, n_samples=T).stats)
    compile_s = time.perf_counter() - t
    rows.append(dict(method=f"jax: mc_sample default ({streams} streams)" if streams > 1 else "jax: mc_sample default",
                     chunk=per_stream_chunk, keep_samples=False, compile_seconds=compile_s, memory={},
                     seconds=median_time(lambda: jax.block_until_ready(
                         mc_sample(volume_fn, image, key, n_samples=T).stats), args.repeats)))

    reference = np.asarray(jax.jit(make_volume_fn(model, stochastic=False))(keys[0], image))
    torch_result = bench_torch(config, model.variables, host_image, T, 4, args.repeats, reference)
    if "skipped" not in torch_result:
        rows.append(dict(method="torch: python loop of single passes", chunk=1, keep_samples=False,
                         seconds=torch_result["loop_seconds"], compile_seconds=None, memory={}))
        rows.append(dict(method="torch: passes stacked in one batch", chunk=torch_result["chunk"],
                         keep_samples=False, seconds=torch_result["chunked_seconds"], compile_seconds=None,
                         memory={}))

    spatial = tuple(-(-n // 2**config.depth) * 2**config.depth for n in cfg["shape"][:2])
    flops = mc_flops(config, spatial, cfg["shape"][2], T)
    for row in rows:
        row["speedup_vs_loop"] = (t_loop / row["seconds"]) if row["seconds"] else None
        row["gflop_per_s"] = flops["total_tflop_unshared"] * 1e3 / row["seconds"] if row["seconds"] else None
    roof = matmul_gflops(args.repeats)
    print("3D U-Net rows ...")
    three_d = bench_3d(cfg["three_d"], args.repeats)
    print(f"issue 15's 2D case (default 2D U-Net, T = {ISSUE_2D['samples']} over {ISSUE_2D['shape']}), measured ...")
    issue_measured = measure_issue_2d()
    best = min((r for r in rows if r["method"].startswith("jax: mc_sample") and r["seconds"]),
               key=lambda r: r["seconds"])
    ratios = {"jax loop / jax vmapped (same T passes)": t_loop / best["seconds"]}
    if "skipped" not in torch_result:
        ratios["torch loop / jax vmapped"] = torch_result["loop_seconds"] / best["seconds"]
        ratios["torch batched / jax vmapped"] = torch_result["chunked_seconds"] / best["seconds"]
        ratios["torch loop / jax loop"] = torch_result["loop_seconds"] / t_loop
    ratios["3d: loop of single passes / stem-shared mc_sample (speedup)"] = three_d["shared_speedup_vs_loop"]
    ratios["jax vmapped GFLOP/s / matmul GFLOP/s"] = best["gflop_per_s"] / roof
    # Issue 15's 2D case: the FLOP lower bound at this run's matmul roof (the time itself: issue_2d_measured).
    issue = mc_flops(UNetConfig(dims=2), ISSUE_2D["shape"][:2], ISSUE_2D["shape"][2], ISSUE_2D["samples"])
    flops.update(matmul_gflops=roof, issue_2d=dict(issue, lower_bound_seconds_at_matmul_roof=(
        issue["total_tflop_stem_shared"] * 1e3 / roof)))
    machine = machine_info()
    machine["threads"] = cpu_threads()
    machine["load_average_1min"] = os.getloadavg()[0]
    machine["load_average_end"] = list(os.getloadavg())
    result = {
        "benchmark": "mcdo",
        "size": args.size,
        "machine": machine,
        "setup": {"unet": config.to_dict(), "volume": list(cfg["shape"]), "n_samples": T,
                  "repeats": args.repeats, "timing": "median after one warm-up, compilation excluded",
                  "memory": "XLA compiled memory_analysis(): argument + output + temp bytes"},
        "rows": rows,
        "torch": torch_result,
        "three_d": three_d,
        "flops": flops,
        "issue_2d_measured": issue_measured,
        "ratios": ratios,
    }
    print(f"T={T} passes, 2D U-Net base {cfg['base']} depth {cfg['depth']}, volume {cfg['shape']}, "
          f"{machine['device']}, {machine['threads']} threads, load {machine['load_average_1min']:.1f}")
    print(f"{'method':38s} {'chunk':>5s} {'keep':>5s} {'median s':>9s} {'x loop':>7s} {'compile s':>9s} "
          f"{'temp MiB':>9s} {'out MiB':>8s}")
    for r in rows:
        m = r["memory"]
        sec = f"{r['seconds']:9.3f}" if r["seconds"] else f"{'-':>9s}"
        spd = f"{r['speedup_vs_loop']:7.2f}" if r["speedup_vs_loop"] else f"{'-':>7s}"
        comp = f"{r['compile_seconds']:9.1f}" if r["compile_seconds"] is not None else f"{'-':>9s}"
        mem = f"{m.get('temp', 0) / 2**20:9.1f} {m.get('output', 0) / 2**20:8.1f}" if m else f"{'-':>9s} {'-':>8s}"
        print(f"{r['method']:38s} {r['chunk']:5d} {str(r['keep_samples']):>5s} {sec} {spd} {comp} {mem}")
    if "skipped" in torch_result:
        print(f"PyTorch rows skipped: {torch_result['skipped']}")
    else:
        print(f"PyTorch {torch_result['torch']} with the same weights: max |p_torch - p_jax| (dropout off) = "
              f"{torch_result['max_abs_diff_deterministic']:.1e}")
    print(f"3D U-Net (default), volume {three_d['volume']} ({three_d['patches']} patches), T = {three_d['n_samples']}:")
    for r in three_d["rows"]:
        print(f"  {r['method']:28s} patch batch {str(r['patch_batch']):>4s}: {r['seconds']:7.2f} s")
    for overlap, b in three_d["brain_prediction"].items():
        print(f"  brain {BRAIN}, overlap {overlap}: {b['patches']} patches, predicted T = 20: "
              f"{b['predicted_T20_seconds']:.0f} s "
              f"(at this run's {three_d['seconds_per_patch_pass']:.3f} s/patch-pass)")
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    i2, m2 = flops["issue_2d"], issue_measured
    print(f"FLOPs: {flops['total_tflop_unshared']:.3f} TFLOP here, matmul roof {roof:.0f} GFLOP/s; issue 2D case "
          f"(128x128x64, T=20): {i2['total_tflop_stem_shared']:.2f} TFLOP, lower bound "
          f"{i2['lower_bound_seconds_at_matmul_roof']:.1f} s, measured {m2['seconds']:.1f} s "
          f"(goal {m2['goal_seconds']:.0f} s; {m2['gflop_per_s']:.0f} GFLOP/s; first call "
          f"{m2['first_call_seconds']:.1f} s; load {m2['load_average_1min'][0]:.1f}-{m2['load_average_1min'][1]:.1f})")
    save_results("mcdo", args.size, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
