"""Benchmark: 3D convolutions on the 3D U-Net's own layer shapes, XLA's conv3d vs the slice-wise forms.

For every 3x3x3 convolution of the default 3D U-Net (base 16, depth 3, 32^3 patches, a batch of patches),
measures in the same run, interleaved round by round (each form timed once per round, the fastest round
kept, so that a shared machine's load hits every form alike):
  - ``xla``: ``lax.conv_general_dilated`` in 3D (channels last);
  - ``taps_in`` / ``taps_out``: :func:`ugcn.segment.conv3d.conv3d_slices` (one 2D convolution over the X
    slices, the X taps stacked on input / output channels), and ``auto``, the form the U-Net uses;
  - ``taps_xy`` (the 9 X-Y taps on the channels, a 1D convolution along Z) and ``im2col`` (all 27 taps on
    the channels, one matmul), the candidates with longer contractions;
  - ``winograd2`` / ``winograd4``: Winograd F(2, 3) / F(4, 3) along each axis (:mod:`ugcn.segment.winograd`),
    the batch in cache-sized chunks;
  - ``direct`` (inputs with at most 4 channels: the 27 * Ci shifted products summed in one elementwise fusion);
  - ``auto``: the form :func:`ugcn.segment.conv3d.auto_form` picks for the layer (the U-Net's default, fastest
    forward: inference), and ``train_rule``: :func:`ugcn.segment.conv3d.train_form`'s (fastest forward +
    backward: what ``make_train_step``'s ``UNet(config, purpose="train")`` uses);
  - PyTorch ``Conv3d`` (NCDHW, as many threads as cores) when torch is installed;
forward alone and forward + backward (gradients of input and kernel, what training runs); and the whole
3D U-Net forward pass and forward + backward (training's gradient) with XLA's conv3d, the former default
(``taps_in`` everywhere), the default (``auto``) and the training rule (``train_rule``).
Values are checked against XLA's conv3d (max abs difference, forward and gradients).

Usage:  python benchmarks/bench_conv3d.py [--size small|large] [--rounds 3]
  small: batch of 2 patches   (~2 minutes on an idle 2-core CPU)
  large: batch of 8 patches
Writes (updates the entry of its size in) benchmarks/results/conv3d.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from common import machine_info, save_results
from jax import lax

from ugcn.segment.conv3d import auto_form, conv3d_slices, train_form

SIZES = {"small": dict(batch=2), "large": dict(batch=8)}
JAX_FORMS = ("xla", "taps_in", "taps_out", "taps_xy", "im2col", "winograd2", "winograd4", "direct")


def unet_layers(base: int = 16, depth: int = 3, side: int = 32) -> list[tuple[int, int, int, int]]:
    """``(side, Ci, Co, count)`` of the 3x3(x3) convolutions of a U-Net (1 input channel) whose input has
    ``side`` voxels per axis; the same list for 2D and 3D (``bench_conv2d`` uses it too)."""
    layers: dict = {}

    def add(s, ci, co):
        layers[(s, ci, co)] = layers.get((s, ci, co), 0) + 1

    ci = 1
    for level in range(depth + 1):
        s, co = side // 2**level, base * 2**level
        add(s, ci, co)
        add(s, co, co)
        ci = co
    for level in reversed(range(depth)):
        s, co = side // 2**level, base * 2**level
        add(s, 2 * co, co)
        add(s, co, co)
    return [(s, i, o, n) for (s, i, o), n in layers.items()]


def interleaved_min(fns: dict, rounds: int) -> dict:
    """Fastest of ``rounds`` timings of each function, timed in turn within each round."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def torch_fns(x: np.ndarray, k: np.ndarray, dy: np.ndarray):
    """PyTorch Conv3d forward and forward+backward on the same data, or ``None`` without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
    kt = torch.from_numpy(np.ascontiguousarray(k.transpose(4, 3, 0, 1, 2)))
    xg = xt.clone().requires_grad_(True)
    kg = kt.clone().requires_grad_(True)
    dyt = torch.from_numpy(np.ascontiguousarray(dy.transpose(0, 4, 1, 2, 3)))

    def fwd():
        with torch.no_grad():
            return torch.nn.functional.conv3d(xt, kt, padding=1)

    def fwd_bwd():
        y = torch.nn.functional.conv3d(xg, kg, padding=1)
        gx, gk = torch.autograd.grad(y, (xg, kg), dyt)
        return gx, gk

    return fwd, fwd_bwd, torch.__version__


def bench_layers(batch: int, rounds: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for side, ci, co, count in unet_layers():
        x = rng.normal(size=(batch, side, side, side, ci)).astype(np.float32)
        k = (rng.normal(size=(3, 3, 3, ci, co)) / np.sqrt(27 * ci)).astype(np.float32)
        xj, kj = jnp.asarray(x), jnp.asarray(k)
        # a random output gradient, passed as an argument: with ``sum(conv)`` (a constant gradient of ones) XLA
        # simplifies or constant-folds parts of the backward pass, which flattered some forms' fwd+bwd rates
        dy = rng.normal(size=(batch, side, side, side, co)).astype(np.float32)
        dyj = jnp.asarray(dy)
        flops = 2.0 * batch * side**3 * 27 * ci * co
        fwd, grad = {}, {}
        forms = [f for f in JAX_FORMS  # Winograd not for the first layer, direct only for it
                 if (ci >= 2 or not f.startswith("winograd")) and (ci <= 4 or f != "direct")]
        for form in forms:
            f = jax.jit(lambda a, b, form=form: conv3d_slices(a, b, "SAME", form=form))
            g = jax.jit(jax.grad(lambda a, b, w, form=form: jnp.sum(conv3d_slices(a, b, "SAME", form=form) * w),
                                 argnums=(0, 1)))
            fwd[form], grad[form] = f, g
        ref = fwd["xla"](xj, kj)
        ref_g = grad["xla"](xj, kj, dyj)
        err = {}
        for form in forms:
            out = fwd[form](xj, kj)
            gx, gk = grad[form](xj, kj, dyj)
            err[form] = {"forward": float(jnp.max(jnp.abs(out - ref))),
                         "grad_input": float(jnp.max(jnp.abs(gx - ref_g[0]))),
                         "grad_kernel_rel": float(jnp.max(jnp.abs(gk - ref_g[1])) / jnp.max(jnp.abs(ref_g[1])))}
        fwd_fns = {f: (lambda f=f: fwd[f](xj, kj).block_until_ready()) for f in forms}
        grad_fns = {f: (lambda f=f: jax.block_until_ready(grad[f](xj, kj, dyj))) for f in forms}
        torch_version = None
        t = torch_fns(x, k, dy)
        if t is not None:  # PyTorch with as many threads as cores and with one (on a busy machine one can win)
            import torch

            def threads(fn, n):
                return lambda: (torch.set_num_threads(n), fn())

            cores = os.cpu_count() or 1
            fwd_fns["torch"], grad_fns["torch"] = threads(t[0], cores), threads(t[1], cores)
            fwd_fns["torch_1thread"], grad_fns["torch_1thread"] = threads(t[0], 1), threads(t[1], 1)
            torch_version = t[2]
        t_fwd = interleaved_min(fwd_fns, rounds)
        t_grad = interleaved_min(grad_fns, rounds)
        rows.append({
            "side": side, "in": ci, "out": co, "count": count, "batch": batch, "gflop": flops / 1e9,
            "auto_form": auto_form((side,) * 3, ci, (3, 3, 3), batch),
            "train_form": train_form((side,) * 3, ci, (3, 3, 3), batch),
            "forward_gflops": {n: flops / s / 1e9 for n, s in t_fwd.items()},
            "train_gflops": {n: 3 * flops / s / 1e9 for n, s in t_grad.items()},  # fwd + 2 backward convs
            "forward_seconds": t_fwd, "train_seconds": t_grad, "max_abs_diff_vs_xla": err,
            "torch": torch_version,
        })
        fw = "  ".join(f"{n} {v:6.1f}" for n, v in rows[-1]["forward_gflops"].items())
        tr = "  ".join(f"{n} {v:6.1f}" for n, v in rows[-1]["train_gflops"].items())
        print(f"{side:3d}^3 {ci:4d}->{co:<4d} x{count}  GFLOP/s fwd: {fw} | fwd+bwd: {tr}", flush=True)
    return rows


def network_totals(rows: list[dict], key: str) -> dict:
    """GFLOP/s over the whole network's 3x3x3 convolutions (each layer weighted by its count)."""
    names = set.intersection(*(set(r[key]) for r in rows))
    seconds = {n: sum(r[key][n] * r["count"] for r in rows) for n in names}
    flops = sum(r["gflop"] * r["count"] * (3 if key == "train_seconds" else 1) for r in rows)
    out = {n: flops / s for n, s in seconds.items()}
    out["auto"] = flops / sum(r[key][r["auto_form"]] * r["count"] for r in rows)
    out["train_rule"] = flops / sum(r[key][r["train_form"]] * r["count"] for r in rows)
    # the Winograd forms do not run the 1-channel first layer, direct runs only that one: elsewhere, count the
    # default's time
    for n in ("winograd2", "winograd4", "direct"):
        out[n] = flops / sum(r[key].get(n, r[key][r["auto_form"]]) * r["count"] for r in rows)
    return out


def drop_in(conv_fn, form: str, **options):
    """A ``lax.conv_general_dilated``-signature function running stride-1 SAME/VALID convolutions as
    ``conv_fn(x, kernel, padding, form=form, **options)`` (the U-Net's convolutions are all of that kind)."""
    def conv(lhs, rhs, window_strides, padding, **kwargs):
        return conv_fn(lhs, rhs, padding, form=form, precision=kwargs.get("precision"), **options)
    return conv


def bench_unet(config, x: np.ndarray, convs: dict, rounds: int) -> dict:
    """Whole U-Net forward (inference mode) and forward + backward (gradient of a loss wrt the parameters, batch
    statistics on: a training step without the optimizer) with each convolution of ``convs`` (functions with
    ``lax.conv_general_dilated``'s signature) as the U-Net's default (``ugcn.segment.unet.DEFAULT_CONV``; the rest
    of the network, up-convolutions included, is the default's); max |logit difference| against the first."""
    from ugcn.segment import unet as unet_module
    from ugcn.segment.model import init_model

    variables = init_model(config, jax.random.PRNGKey(0)).variables
    params = variables["params"]
    x = jnp.asarray(x)
    net = unet_module.UNet(config)

    def loss(p, a):
        out, _ = net.apply({"params": p, "batch_stats": variables["batch_stats"]}, a, train=True,
                           mutable=["batch_stats"])
        return jnp.mean(out**2)

    fwd, train = {}, {}
    default = unet_module.DEFAULT_CONV[config.dims]
    try:
        for name, conv in convs.items():  # traced and compiled while `conv` is the default
            unet_module.DEFAULT_CONV[config.dims] = conv
            fwd[name] = jax.jit(lambda v, a: net.apply(v, a)).lower(variables, x).compile()
            train[name] = jax.jit(jax.grad(loss)).lower(params, x).compile()
    finally:
        unet_module.DEFAULT_CONV[config.dims] = default
    first = next(iter(convs))
    ref = fwd[first](variables, x)
    diff = {n: float(jnp.max(jnp.abs(f(variables, x) - ref))) for n, f in fwd.items()}
    t_fwd = interleaved_min({n: (lambda f=f: f(variables, x).block_until_ready()) for n, f in fwd.items()}, rounds)
    t_train = interleaved_min({n: (lambda f=f: jax.block_until_ready(f(params, x))) for n, f in train.items()},
                              rounds)
    return {"batch": int(x.shape[0]), "forward_seconds": t_fwd, "train_seconds": t_train,
            "max_abs_diff_vs_" + first: diff}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    batch = SIZES[args.size]["batch"]
    machine = machine_info()
    print(f"3x3x3 convolutions of the 3D U-Net (base 16, depth 3, 32^3 patches), batch {batch}, "
          f"{machine['device']}, load {machine['load_average'][0]:.1f}")
    rows = bench_layers(batch, args.rounds)
    fwd = network_totals(rows, "forward_seconds")
    train = network_totals(rows, "train_seconds")
    from ugcn.segment.unet import UNetConfig

    x = np.random.default_rng(1).normal(size=(batch, 32, 32, 32, 1)).astype(np.float32)
    unet = bench_unet(UNetConfig(dims=3), x, {"xla_conv3d": lax.conv_general_dilated,
                                             "taps_in": drop_in(conv3d_slices, "taps_in"),
                                             "auto": drop_in(conv3d_slices, "auto"),
                                             "train_rule": drop_in(conv3d_slices, "auto", purpose="train")},
                      args.rounds)
    unet["forward_speedup_auto_vs_xla"] = unet["forward_seconds"]["xla_conv3d"] / unet["forward_seconds"]["auto"]
    unet["forward_speedup_auto_vs_taps_in"] = unet["forward_seconds"]["taps_in"] / unet["forward_seconds"]["auto"]
    unet["train_speedup_auto_vs_taps_in"] = unet["train_seconds"]["taps_in"] / unet["train_seconds"]["auto"]
    unet["train_speedup_train_rule_vs_auto"] = unet["train_seconds"]["auto"] / unet["train_seconds"]["train_rule"]
    ratios = {"forward: auto / xla conv3d (speedup)": fwd["auto"] / fwd["xla"],
              "fwd+bwd: auto / xla conv3d (speedup)": train["auto"] / train["xla"],
              "unet forward: xla conv3d / auto (speedup)": unet["forward_speedup_auto_vs_xla"],
              "unet forward: taps_in / auto (speedup)": unet["forward_speedup_auto_vs_taps_in"],
              "unet fwd+bwd: taps_in / auto (speedup)": unet["train_speedup_auto_vs_taps_in"],
              "fwd+bwd: train_rule / auto (speedup)": train["train_rule"] / train["auto"],
              "unet fwd+bwd: auto / train_rule (speedup)": unet["train_speedup_train_rule_vs_auto"]}
    if "torch" in fwd:  # against PyTorch's faster thread setting
        ratios["forward: auto / torch Conv3d (ratio)"] = fwd["auto"] / max(fwd["torch"], fwd["torch_1thread"])
        ratios["fwd+bwd: auto / torch Conv3d (ratio)"] = train["auto"] / max(train["torch"], train["torch_1thread"])
        ratios["fwd+bwd: train_rule / torch Conv3d (ratio)"] = (
            train["train_rule"] / max(train["torch"], train["torch_1thread"]))
    print("network GFLOP/s, forward: " + "  ".join(f"{n} {v:.1f}" for n, v in sorted(fwd.items())))
    print("network GFLOP/s, fwd+bwd: " + "  ".join(f"{n} {v:.1f}" for n, v in sorted(train.items())))
    print(f"3D U-Net, batch {batch}, seconds forward: " + "  ".join(
        f"{n} {t:.2f}" for n, t in unet["forward_seconds"].items()) + " | fwd+bwd: " + "  ".join(
        f"{n} {t:.2f}" for n, t in unet["train_seconds"].items()))
    print(f"max |logit diff| vs xla conv3d: {unet['max_abs_diff_vs_xla_conv3d']}")
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    machine["load_average_end"] = list(os.getloadavg())
    save_results("conv3d", args.size, {
        "benchmark": "conv3d", "size": args.size, "machine": machine,
        "setup": {"batch": batch, "rounds": args.rounds,
                  "timing": "fastest of interleaved rounds, compilation excluded",
                  "train_flops": "3x forward (input and kernel gradients)"},
        "layers": rows, "network_forward_gflops": fwd, "network_train_gflops": train, "unet_forward": unet,
        "ratios": ratios,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
