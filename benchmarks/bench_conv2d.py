"""Benchmark: 2D convolutions on the 2D U-Net's own layer shapes, XLA's conv2d vs Winograd.

For every 3x3 convolution of the default 2D U-Net (base 16, depth 3) over 128 x 128 slices, measures in the
same run, interleaved round by round (fastest round kept):
  - ``xla``: ``lax.conv_general_dilated`` (channels last), the former default;
  - ``winograd2`` / ``winograd4``: Winograd F(2, 3) / F(4, 3) (:mod:`ugcn.segment.winograd`), the batch in
    cache-sized chunks; ``auto``: the form :func:`ugcn.segment.conv2d.auto_form` picks (the U-Net's default,
    forward: inference); ``train_rule``: :func:`ugcn.segment.conv2d.train_form`'s (training steps);
  - PyTorch ``Conv2d`` (NCHW) with as many threads as cores and with one, when torch is installed;
forward alone and forward + backward (input and kernel gradients), values checked against ``xla``; then
the whole 2D U-Net forward (MC-dropout mode: dropout on, batch-norm on running statistics) and forward +
backward with XLA's convolutions, the default and the training rule, and PyTorch's forward of the same network.

Usage:  python benchmarks/bench_conv2d.py [--size small|large] [--rounds 3]
  small: 2 slices per call  (a pass's slices per call when MC runs 4 passes together, the default)
  large: 8 slices per call  (all slice-passes of such a call)
Writes (updates the entry of its size in) benchmarks/results/conv2d.json.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from bench_conv3d import bench_unet, drop_in, interleaved_min, network_totals, unet_layers
from common import machine_info, save_results

from ugcn.segment.conv2d import auto_form, conv2d, train_form

SIZES = {"small": dict(batch=2), "large": dict(batch=8)}
JAX_FORMS = ("xla", "winograd2", "winograd4")
SIDE = 128


def torch_fns(x: np.ndarray, k: np.ndarray, dy: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    kt = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
    xg, kg = xt.clone().requires_grad_(True), kt.clone().requires_grad_(True)
    dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 3, 1, 2)))

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, kt, padding=1)

    def fwd_bwd():
        y = torch.nn.functional.conv2d(xg, kg, padding=1)
        return torch.autograd.grad(y, (xg, kg), dyt)

    return fwd, fwd_bwd, torch.__version__


def with_threads(fn, n):
    import torch

    return lambda: (torch.set_num_threads(n), fn())


def bench_layers(batch: int, rounds: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for side, ci, co, count in unet_layers(side=SIDE):
        x = rng.normal(size=(batch, side, side, ci)).astype(np.float32)
        k = (rng.normal(size=(3, 3, ci, co)) / np.sqrt(9 * ci)).astype(np.float32)
        xj, kj = jnp.asarray(x), jnp.asarray(k)
        # a random output gradient, passed as an argument: with ``sum(conv)`` (a constant gradient of ones) XLA
        # simplifies or constant-folds parts of the backward pass, which flattered some forms' fwd+bwd rates
        dy = rng.normal(size=(batch, side, side, co)).astype(np.float32)
        dyj = jnp.asarray(dy)
        flops = 2.0 * batch * side**2 * 9 * ci * co
        fwd, grad = {}, {}
        for form in JAX_FORMS:
            fwd[form] = jax.jit(lambda a, b, form=form: conv2d(a, b, "SAME", form=form))
            grad[form] = jax.jit(jax.grad(lambda a, b, w, form=form: jnp.sum(conv2d(a, b, "SAME", form=form) * w),
                                          argnums=(0, 1)))
        ref, ref_g = fwd["xla"](xj, kj), grad["xla"](xj, kj, dyj)
        err = {}
        for form in JAX_FORMS:
            gx, gk = grad[form](xj, kj, dyj)
            err[form] = {"forward_rel": float(jnp.max(jnp.abs(fwd[form](xj, kj) - ref)) / jnp.max(jnp.abs(ref))),
                         "grad_input_rel": float(jnp.max(jnp.abs(gx - ref_g[0])) / jnp.max(jnp.abs(ref_g[0]))),
                         "grad_kernel_rel": float(jnp.max(jnp.abs(gk - ref_g[1])) / jnp.max(jnp.abs(ref_g[1])))}
        fwd_fns = {f: (lambda f=f: fwd[f](xj, kj).block_until_ready()) for f in JAX_FORMS}
        grad_fns = {f: (lambda f=f: jax.block_until_ready(grad[f](xj, kj, dyj))) for f in JAX_FORMS}
        t = torch_fns(x, k, dy)
        if t is not None:
            cores = os.cpu_count() or 1
            fwd_fns["torch"], grad_fns["torch"] = with_threads(t[0], cores), with_threads(t[1], cores)
            fwd_fns["torch_1thread"], grad_fns["torch_1thread"] = with_threads(t[0], 1), with_threads(t[1], 1)
        t_fwd, t_grad = interleaved_min(fwd_fns, rounds), interleaved_min(grad_fns, rounds)
        rows.append({
            "side": side, "in": ci, "out": co, "count": count, "batch": batch, "gflop": flops / 1e9,
            "auto_form": auto_form((side, side), ci, (3, 3)), "train_form": train_form((side, side), ci, (3, 3)),
            "forward_gflops": {n: flops / s / 1e9 for n, s in t_fwd.items()},
            "train_gflops": {n: 3 * flops / s / 1e9 for n, s in t_grad.items()},
            "forward_seconds": t_fwd, "train_seconds": t_grad, "rel_diff_vs_xla": err,
            "torch": None if t is None else t[2],
        })
        fw = "  ".join(f"{n} {v:6.1f}" for n, v in rows[-1]["forward_gflops"].items())
        tr = "  ".join(f"{n} {v:6.1f}" for n, v in rows[-1]["train_gflops"].items())
        print(f"{side:3d}^2 {ci:4d}->{co:<4d} x{count}  GFLOP/s fwd: {fw} | fwd+bwd: {tr}", flush=True)
    return rows


def torch_unet_forward(config, x: np.ndarray, rounds: int) -> dict:
    """PyTorch's forward of the same 2D U-Net (MC-dropout mode), fastest of the two thread settings."""
    try:
        import torch
    except ImportError as err:
        return {"skipped": str(err)}
    from bench_mcdo import torch_unet

    from ugcn.segment.model import init_model

    net = torch_unet(config, init_model(config, jax.random.PRNGKey(0)).variables)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))

    def fwd():
        with torch.no_grad():
            return net(xt)

    cores = os.cpu_count() or 1
    fwd()
    t = interleaved_min({"torch": with_threads(fwd, cores), "torch_1thread": with_threads(fwd, 1)}, rounds)
    return {"forward_seconds": t, "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    batch = SIZES[args.size]["batch"]
    machine = machine_info()
    print(f"3x3 convolutions of the 2D U-Net (base 16, depth 3, {SIDE}^2 slices), batch {batch}, "
          f"{machine['device']}, load {machine['load_average'][0]:.1f}")
    rows = bench_layers(batch, args.rounds)
    fwd = network_totals(rows, "forward_seconds")
    train = network_totals(rows, "train_seconds")

    from ugcn.segment.unet import UNetConfig

    config = UNetConfig(dims=2)
    x = np.random.default_rng(1).normal(size=(batch, SIDE, SIDE, 1)).astype(np.float32)
    unet = bench_unet(config, x, {"xla": drop_in(conv2d, "xla"), "auto": drop_in(conv2d, "auto"),
                                  "train_rule": drop_in(conv2d, "auto", purpose="train")}, args.rounds)
    unet["torch"] = torch_unet_forward(config, x, args.rounds)
    ratios = {"forward: auto / xla conv2d (speedup)": fwd["auto"] / fwd["xla"],
              "fwd+bwd: auto / xla conv2d (speedup)": train["auto"] / train["xla"],
              "unet forward: xla / auto (speedup)": unet["forward_seconds"]["xla"] / unet["forward_seconds"]["auto"],
              "unet fwd+bwd: xla / auto (speedup)": unet["train_seconds"]["xla"] / unet["train_seconds"]["auto"],
              "fwd+bwd: train_rule / auto (speedup)": train["train_rule"] / train["auto"],
              "unet fwd+bwd: auto / train_rule (speedup)": (unet["train_seconds"]["auto"]
                                                            / unet["train_seconds"]["train_rule"])}
    if "torch" in fwd:
        ratios["forward: auto / torch Conv2d (ratio)"] = fwd["auto"] / max(fwd["torch"], fwd["torch_1thread"])
        ratios["fwd+bwd: auto / torch Conv2d (ratio)"] = train["auto"] / max(train["torch"], train["torch_1thread"])
    if "skipped" not in unet["torch"]:
        ratios["unet forward: torch / auto (speedup)"] = (min(unet["torch"]["forward_seconds"].values())
                                                          / unet["forward_seconds"]["auto"])
    print("network GFLOP/s, forward: " + "  ".join(f"{n} {v:.1f}" for n, v in sorted(fwd.items())))
    print("network GFLOP/s, fwd+bwd: " + "  ".join(f"{n} {v:.1f}" for n, v in sorted(train.items())))
    print(f"2D U-Net, batch {batch}, seconds forward: " + "  ".join(
        f"{n} {t:.3f}" for n, t in unet["forward_seconds"].items()) + " | fwd+bwd: " + "  ".join(
        f"{n} {t:.3f}" for n, t in unet["train_seconds"].items()))
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    machine["load_average_end"] = list(os.getloadavg())
    save_results("conv2d", args.size, {
        "benchmark": "conv2d", "size": args.size, "machine": machine,
        "setup": {"batch": batch, "side": SIDE, "rounds": args.rounds,
                  "timing": "fastest of interleaved rounds, compilation excluded",
                  "train_flops": "3x forward (input and kernel gradients)"},
        "layers": rows, "network_forward_gflops": fwd, "network_train_gflops": train, "unet": unet,
        "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
