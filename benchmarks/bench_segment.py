"""Benchmark: training the 2D MC-dropout U-Net on the CPU.

Measures, on the same machine in the same run:
  - one jitted training step (sample, update) of a 2D U-Net on a batch of axial slices, called from a Python
    loop, against the same step inside ``lax.scan`` (how ``train_model`` ran before: XLA:CPU executes the
    step much more slowly inside a while loop) — medians after a warm-up, compile times separately;
  - ``--size large`` also: ``train_model`` on CT phantoms end to end (wall time) and the Dice of the
    deterministic prediction and of the MC-dropout expectation (T = 8) on a held-out phantom.

Usage:  python benchmarks/bench_segment.py [--size small|large] [--repeats 3]
  small: base 8, depth 3, batch 8 of 96x96 slices; step timings only           (< 1 minute, idle 2-core CPU)
  large: + train_model on 4 CT phantoms 96x96x48, 300 steps, Dice on a 5th    (~3-5 minutes)
Writes (updates the entry of its size in) benchmarks/results/segment.json.
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
import optax
from common import median_time

from ugcn.segment.model import init_model, make_volume_fn, predict_probabilities
from ugcn.segment.normalize import Normalization
from ugcn.segment.train import Batch, TrainState, make_train_step, train_model
from ugcn.segment.unet import UNetConfig

SIZES = {
    "small": dict(base=8, depth=3, batch=8, side=96, scan_steps=5, train=None),
    "large": dict(base=8, depth=3, batch=8, side=96, scan_steps=5,
                  train=dict(n_train=4, shape=(96, 96, 48), epochs=10, steps_per_epoch=30, dropout=0.1,
                             learning_rate=3e-3, clip=(-160.0, 240.0))),
}



def step_timings(size: dict, repeats: int) -> dict:
    cfg = UNetConfig(dims=2, base_features=size["base"], depth=size["depth"])
    model = init_model(cfg, jax.random.PRNGKey(0))
    optimizer = optax.adam(1e-3)
    step = make_train_step(cfg, optimizer)
    b, s = size["batch"], size["side"]
    rng = np.random.default_rng(0)
    batch = Batch(jnp.asarray(rng.normal(size=(b, s, s, 1)).astype(np.float32)),
                  jnp.asarray((rng.random((b, s, s)) > 0.9).astype(np.int32)), jnp.ones((b, s, s)))
    state = TrainState(model.params, model.batch_stats, optimizer.init(model.params), jnp.zeros((), jnp.int32))
    n = size["scan_steps"]
    keys = jax.random.split(jax.random.PRNGKey(1), n)

    loop_step = jax.jit(step)
    t = time.perf_counter()
    jax.block_until_ready(loop_step(state, batch, keys[0]))
    compile_loop = time.perf_counter() - t

    def run_loop():
        st = state
        for k in keys:
            st, loss = loop_step(st, batch, k)
        jax.block_until_ready(loss)

    scan_steps = jax.jit(lambda st, ks: jax.lax.scan(lambda c, k: step(c, batch, k), st, ks))
    t = time.perf_counter()
    jax.block_until_ready(scan_steps(state, keys))
    compile_scan = time.perf_counter() - t

    loop_s = median_time(run_loop, repeats) / n
    scan_s = median_time(lambda: jax.block_until_ready(scan_steps(state, keys)), repeats) / n
    return {"batch": [b, s, s], "steps_timed": n, "loop_step_s": loop_s, "scan_step_s": scan_s,
            "scan_over_loop": scan_s / loop_s, "compile_loop_s": compile_loop, "compile_scan_s": compile_scan}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float(2 * np.sum(a & b) / max(a.sum() + b.sum(), 1))


def demo_training(spec: dict) -> dict:
    from ugcn.data.phantoms import ct_phantom

    phantoms = [ct_phantom(i, shape=spec["shape"]) for i in range(spec["n_train"] + 1)]
    train, test = phantoms[:-1], phantoms[-1]
    cfg = UNetConfig(dims=2, base_features=8, depth=3, dropout_rate=spec["dropout"])
    t = time.perf_counter()
    model, history = train_model([p.image for p in train], [p.label for p in train], cfg, epochs=spec["epochs"],
                                 steps_per_epoch=spec["steps_per_epoch"], batch_size=8,
                                 learning_rate=spec["learning_rate"], seed=0,
                                 normalization=Normalization(clip=spec["clip"]), progress=False)
    train_s = time.perf_counter() - t
    p = predict_probabilities(model, test.image)[..., 1]
    mc = jax.jit(jax.vmap(make_volume_fn(model, stochastic=True), in_axes=(0, None)))
    e = np.asarray(mc(jax.random.split(jax.random.PRNGKey(0), 8), test.image)).mean(0)[..., 1]
    train_dice = dice(predict_probabilities(model, train[0].image)[..., 1] > 0.5, train[0].label)
    return {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()}, "train_s": train_s,
            "steps": spec["epochs"] * spec["steps_per_epoch"], "final_loss": history["loss"][-1],
            "dice_train_case": train_dice, "dice_heldout_deterministic": dice(p > 0.5, test.label),
            "dice_heldout_mc_expectation_T8": dice(e > 0.5, test.label)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    size = SIZES[args.size]
    result = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "jax": jax.__version__, "device": str(jax.devices()[0])},
              "config": {"base_features": size["base"], "depth": size["depth"]},
              "step": step_timings(size, args.repeats)}
    st = result["step"]
    print(f"{'2D U-Net train step (batch ' + 'x'.join(map(str, st['batch'])) + ')':<44}{'s/step':>10}{'compile s':>12}")
    print(f"{'  Python loop over a jitted step':<44}{st['loop_step_s']:>10.3f}{st['compile_loop_s']:>12.1f}")
    print(f"{'  lax.scan over steps':<44}{st['scan_step_s']:>10.3f}{st['compile_scan_s']:>12.1f}")
    print(f"  scan / loop: {st['scan_over_loop']:.2f}x")
    if size["train"] is not None:
        tr = demo_training(size["train"])
        result["train_model"] = tr
        print(f"train_model: {tr['n_train']} CT phantoms {tuple(tr['shape'])}, {tr['steps']} steps: "
              f"{tr['train_s']:.0f} s; Dice held-out {tr['dice_heldout_deterministic']:.3f} (deterministic), "
              f"{tr['dice_heldout_mc_expectation_T8']:.3f} (MC expectation, T=8); "
              f"train case {tr['dice_train_case']:.3f}")
    result["ratios"] = {"U-Net train step: lax.scan / Python loop (time per step)": st["scan_over_loop"]}
    out = Path(__file__).parent / "results" / "segment.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data[args.size] = result
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
