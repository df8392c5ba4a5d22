"""Benchmark: training the segmentation U-Nets on the CPU, against PyTorch, and the ``lax.scan`` anomaly.

Measures, on the same machine in the same run:
  - **ugcn vs PyTorch**: training steps per second (``ugcn``: the step with the training rule's convolutions,
    ``UNet(config, purpose="train")``; ``ugcn_inference_rule``: the same step with the inference rule's, as
    before the per-purpose rule) of the default 2D U-Net (base 16, depth 3, batch 8 of
    128x128 axial slices, the CT phantoms' in-plane size) and of the default 3D U-Net (base 16, depth 3,
    32^3 patches) on the same batch, in ugcn (``make_train_step``: Dice + cross-entropy, Adam, jitted with
    the state donated) and in PyTorch (the same network written with ``torch.nn``: same layers, parameter
    count checked equal, same loss, ``torch.optim.Adam``, as many threads as cores), timed interleaved round
    by round (the fastest round kept, so that a shared machine's load hits both alike);
  - **the scan anomaly**: one jitted training step (a smaller 2D U-Net, base 8, batch 8 of 96x96) called from
    a Python loop against the same step inside ``lax.scan``, and the cause read off the compiled programs:
    the number of convolutions XLA:CPU keeps in a layout its Eigen convolution does not take (those are
    emitted as generic loop nests, several times slower). XLA:CPU's ``ConvCanonicalization`` pass rewrites
    such convolutions (the backward ones: the kernel gradient contracts over the batch) into the
    NHWC/HWIO form, but it visits only the program's entry computation: inside the body of a while loop (a
    ``lax.scan``/``fori_loop``, even of length 1, and an unrolled scan, which JAX still wraps in a
    one-trip while loop) nothing is rewritten; the while loop is removed later, too late. Tested: three
    convolutions whose backward convolutions are written in the Eigen form by hand (a ``custom_vjp``) run
    as fast in a scan as in a loop, where autodiff's run ~13x slower in the scan. ``train_model`` keeps its
    Python loop over a jitted step (``ugcn/segment/train.py``): the hand-written form's transposes cost
    time in the loop, and the loop needs no scan;
  - ``--size large`` also: ``train_model`` on CT phantoms end to end (wall time) and the Dice of the
    deterministic prediction and of the MC-dropout expectation (T = 8) on a held-out phantom.

Usage:  python benchmarks/bench_segment.py [--size small|large] [--rounds 3]
  small: 2D batch 8 of 128^2, 3D batch 2 of 32^3, scan probe       (~3 minutes on an idle 2-core CPU)
  large: 3D batch 8 of 32^3 + train_model on 4 CT phantoms 96x96x48, 300 steps, Dice on a 5th
Writes (updates the entry of its size in) benchmarks/results/segment.json.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import machine_info, save_results

from ugcn.segment.model import init_model, make_volume_fn, predict_probabilities
from ugcn.segment.normalize import Normalization
from ugcn.segment.train import Batch, TrainState, make_train_step, train_model
from ugcn.segment.unet import UNetConfig

SIZES = {
    "small": dict(torch2d=dict(batch=8, side=128), torch3d=dict(batch=2), scan=dict(base=8, batch=8, side=96, steps=5),
                  train=None),
    "large": dict(torch2d=dict(batch=8, side=128), torch3d=dict(batch=8), scan=dict(base=8, batch=8, side=96, steps=5),
                  train=dict(n_train=4, shape=(96, 96, 48), epochs=10, steps_per_epoch=30, dropout=0.1,
                             learning_rate=3e-3, clip=(-160.0, 240.0))),
}
LEARNING_RATE = 1e-3
# dim_labels of a convolution XLA:CPU hands to its Eigen kernel: channels last, kernel spatial-in-out
CANONICAL = {2: "b01f_01io->b01f", 3: "b012f_012io->b012f"}


def interleaved_min(fns: dict, rounds: int, steps: int) -> dict:
    """Fastest of ``rounds`` timings (seconds per call, ``steps`` calls a round) of each function, in turn."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(steps)
            best[name] = min(best[name], (time.perf_counter() - t) / steps)
    return best


def random_batch(config: UNetConfig, batch: int, spatial: tuple, seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    image = rng.normal(size=(batch,) + spatial + (1,)).astype(np.float32)
    label = (rng.random((batch,) + spatial) > 0.9).astype(np.int32)
    return Batch(jnp.asarray(image), jnp.asarray(label), jnp.ones((batch,) + spatial, jnp.float32))


def conv_layouts(hlo_text: str, dims: int) -> dict:
    """Counts of the convolutions of an optimised HLO module: total, and those not in XLA:CPU's Eigen form."""
    labels = re.findall(r"\bconvolution\(.*?dim_labels=([^,\s]+)", hlo_text)
    return {"convolutions": len(labels), "not_eigen_form": sum(lab != CANONICAL[dims] for lab in labels),
            "while_loops": len(re.findall(r"\bwhile\(", hlo_text))}


# ----------------------------------------------------------------------------------------------------------
# The same U-Net in PyTorch


def torch_unet(config: UNetConfig):
    """``torch.nn.Module`` with :class:`ugcn.segment.unet.UNet`'s layers (conv without bias -> BN -> ReLU,
    channel dropout after every conv in 2D and after every block in 3D, max-pool, stride-2 transposed
    convolution, skip concatenation, 1x1 head)."""
    import torch
    from torch import nn

    dims = config.dims
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    drop = nn.Dropout2d if dims == 2 else nn.Dropout3d
    up = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
    pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d

    def block(ci, co):
        layers = []
        for i, (a, b) in enumerate(((ci, co), (co, co))):
            layers += [conv(a, b, 3, padding=1, bias=False), bn(b, eps=1e-5, momentum=0.1), nn.ReLU()]
            if dims == 2 or i == 1:
                layers.append(drop(config.rate))
        return nn.Sequential(*layers)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            f = config.base_features
            chans = [config.in_channels] + [f * 2**level for level in range(config.depth + 1)]
            self.down = nn.ModuleList(block(chans[i], chans[i + 1]) for i in range(config.depth + 1))
            self.ups = nn.ModuleList(up(chans[level + 2], chans[level + 1], 2, stride=2)
                                     for level in reversed(range(config.depth)))
            self.dec = nn.ModuleList(block(2 * chans[level + 1], chans[level + 1])
                                     for level in reversed(range(config.depth)))
            self.head = conv(f, config.num_classes, 1)
            self.pool = pool(2)

        def forward(self, x):
            skips = []
            for level in range(config.depth):
                x = self.down[level](x)
                skips.append(x)
                x = self.pool(x)
            x = self.down[config.depth](x)
            for i, level in enumerate(reversed(range(config.depth))):
                x = self.dec[i](torch.cat([self.ups[i](x), skips[level]], dim=1))
            return self.head(x)

    return Net()


def torch_loss(logits, label):
    """:func:`ugcn.segment.train.dice_ce_loss` for a sigmoid network and no padding, in PyTorch."""
    import torch

    z = logits[:, 0]
    y = (label > 0).float()
    ce = torch.nn.functional.binary_cross_entropy_with_logits(z, y)
    p = torch.sigmoid(z)
    dice = (2 * (p * y).sum() + 1.0) / (p.sum() + y.sum() + 1.0)
    return ce + 1.0 - dice


def versus_torch(dims: int, batch: int, side: int, rounds: int, steps: int) -> dict:
    """Training steps per second of the default U-Net of ``dims`` in ugcn and in PyTorch, same batch."""
    config = UNetConfig(dims=dims)
    spatial = (side,) * dims
    data = random_batch(config, batch, spatial)
    model = init_model(config, jax.random.PRNGKey(0))
    optimizer = optax.adam(LEARNING_RATE)
    def ugcn_runner(purpose: str):
        step = jax.jit(make_train_step(config, optimizer, purpose=purpose), donate_argnums=(0,))
        params, stats = jax.tree_util.tree_map(jnp.copy, (model.params, model.batch_stats))  # the steps donate
        holder = {"state": TrainState(params, stats, optimizer.init(params), jnp.zeros((), jnp.int32)),
                  "key": jax.random.PRNGKey(1)}

        def steps_fn(n):
            for _ in range(n):
                holder["key"], k = jax.random.split(holder["key"])
                holder["state"], loss = step(holder["state"], data, k)
            return float(loss)
        return steps_fn

    ugcn_steps = ugcn_runner("train")
    t = time.perf_counter()
    first_loss = ugcn_steps(1)
    compile_s = time.perf_counter() - t
    # the same step with the inference rule's convolutions (the step before the per-purpose rule)
    inference_rule_steps = ugcn_runner("inference")
    inference_rule_steps(1)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(model.params))
    row = {"dims": dims, "config": config.to_dict(), "batch": [batch, *spatial], "params": n_params,
           "ugcn_first_step_s": compile_s, "ugcn_first_loss": first_loss}
    fns = {"ugcn": ugcn_steps, "ugcn_inference_rule": inference_rule_steps}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        net = torch_unet(config).train()
        opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
        x = torch.from_numpy(np.moveaxis(np.asarray(data.image), -1, 1).copy())
        y = torch.from_numpy(np.array(data.label))

        def torch_steps(n):
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                loss = torch_loss(net(x), y)
                loss.backward()
                opt.step()
            return float(loss.detach())

        row["torch_first_loss"] = torch_steps(1)
        row["torch"] = torch.__version__
        row["torch_params"] = sum(p.numel() for p in net.parameters())
        if row["torch_params"] != n_params:
            raise RuntimeError(f"PyTorch U-Net has {row['torch_params']} parameters, ugcn's {n_params}")
        cores = os.cpu_count() or 1

        def threads(n):  # as many threads as cores, and one (on a busy machine one can win)
            return lambda steps: (torch.set_num_threads(n), torch_steps(steps))

        fns["torch"], fns["torch_1thread"] = threads(cores), threads(1)
    seconds = interleaved_min(fns, rounds, steps)
    row["seconds_per_step"] = seconds
    row["steps_per_s"] = {n: 1.0 / s for n, s in seconds.items()}
    if "torch" in seconds:  # against PyTorch's faster thread setting
        row["ugcn_over_torch_steps_per_s"] = min(seconds["torch"], seconds["torch_1thread"]) / seconds["ugcn"]
        row["ugcn_inference_rule_over_torch_steps_per_s"] = (min(seconds["torch"], seconds["torch_1thread"])
                                                             / seconds["ugcn_inference_rule"])
    row["train_rule_speedup"] = seconds["ugcn_inference_rule"] / seconds["ugcn"]
    return row


# ----------------------------------------------------------------------------------------------------------
# The scan anomaly


def scan_anomaly(spec: dict, rounds: int) -> dict:
    """The same training step from a Python loop, inside ``lax.scan`` and inside an unrolled ``lax.scan``;
    seconds per step and the convolution layouts of each compiled program."""
    config = UNetConfig(dims=2, base_features=spec["base"], depth=3)
    model = init_model(config, jax.random.PRNGKey(0))
    optimizer = optax.adam(LEARNING_RATE)
    step = make_train_step(config, optimizer)
    data = random_batch(config, spec["batch"], (spec["side"],) * 2)
    state = TrainState(model.params, model.batch_stats, optimizer.init(model.params), jnp.zeros((), jnp.int32))
    n = spec["steps"]
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    programs = {
        "loop": jax.jit(lambda st, k: step(st, data, k)),
        "scan": jax.jit(lambda st, ks: jax.lax.scan(lambda c, k: step(c, data, k), st, ks)),
        "scan_unrolled": jax.jit(lambda st, ks: jax.lax.scan(lambda c, k: step(c, data, k), st, ks, unroll=True)),
    }
    out: dict = {"batch": [spec["batch"], spec["side"], spec["side"]], "base_features": spec["base"], "steps": n}
    calls = {}
    for name, fn in programs.items():
        arg = keys[0] if name == "loop" else keys
        t = time.perf_counter()
        compiled = fn.lower(state, arg).compile()
        out[f"compile_{name}_s"] = time.perf_counter() - t
        out[f"layout_{name}"] = conv_layouts(compiled.as_text(), 2)
        calls[name] = (compiled, arg)
        jax.block_until_ready(compiled(state, arg))

    def run(name):
        compiled, arg = calls[name]
        if name == "loop":
            def go(_):
                st = state
                for k in keys:
                    st, loss = compiled(st, k)
                jax.block_until_ready(loss)
        else:
            def go(_):
                jax.block_until_ready(compiled(state, arg))
        return go

    seconds = interleaved_min({name: run(name) for name in programs}, rounds, 1)
    out["step_s"] = {name: s / n for name, s in seconds.items()}
    out["scan_over_loop"] = out["step_s"]["scan"] / out["step_s"]["loop"]
    out["unrolled_over_loop"] = out["step_s"]["scan_unrolled"] / out["step_s"]["loop"]
    # the keys the README renderer reads (kept from the earlier format)
    out["loop_step_s"], out["scan_step_s"] = out["step_s"]["loop"], out["step_s"]["scan"]
    return out


@jax.custom_vjp
def canonical_conv(x: jnp.ndarray, k: jnp.ndarray) -> jnp.ndarray:
    """3x3 SAME 2D convolution (NHWC, HWIO) whose backward convolutions are written in the Eigen form."""
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _canonical_fwd(x, k):
    return canonical_conv(x, k), (x, k)


def _canonical_bwd(res, dy):
    x, k = res
    dn = ("NHWC", "HWIO", "NHWC")
    dx = jax.lax.conv_general_dilated(dy, jnp.transpose(jnp.flip(k, (0, 1)), (0, 1, 3, 2)), (1, 1), "SAME",
                                      dimension_numbers=dn)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # kernel gradient: the batch is the contraction
    dk = jax.lax.conv_general_dilated(jnp.transpose(xp, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (1, 1),
                                      "VALID", dimension_numbers=dn)  # [Ci, 3, 3, Co]
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


canonical_conv.defvjp(_canonical_fwd, _canonical_bwd)


def canonical_check(rounds: int) -> dict:
    """The cause tested: gradient steps of three 3x3 convolutions (batch 8 of 48x48x16) from a loop and in a
    one-step ``lax.scan``, with autodiff's backward convolutions and with the same convolutions written in the
    Eigen form (:func:`canonical_conv`). If the layout is the cause, the second kind runs as fast in the scan."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(8, 48, 48, 16)).astype(np.float32))
    kernels = [jnp.asarray(0.1 * rng.normal(size=(3, 3, 16, 16)).astype(np.float32)) for _ in range(3)]
    plain = lambda a, k: jax.lax.conv_general_dilated(a, k, (1, 1), "SAME",  # noqa: E731
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def loss(ks, conv):
        h = x
        for k in ks:
            h = jnp.tanh(conv(h, k))
        return jnp.sum(h**2)

    out: dict = {"batch": [8, 48, 48, 16], "layers": 3}
    fns = {}
    want = jax.grad(loss)(kernels, plain)
    for conv_name, conv in (("autodiff", plain), ("eigen_form", canonical_conv)):
        grad = jax.grad(lambda ks, conv=conv: loss(ks, conv))
        got = grad(kernels)
        out[f"max_grad_diff_{conv_name}"] = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(got, want))

        def step(ks, _, grad=grad):
            return [k - 1e-3 * d for k, d in zip(ks, grad(ks))], None

        for prog in ("loop", "scan"):
            fn = jax.jit(lambda ks, step=step: step(ks, None)[0]) if prog == "loop" else \
                jax.jit(lambda ks, step=step: jax.lax.scan(step, ks, None, length=1)[0])
            compiled = fn.lower(kernels).compile()
            name = f"{conv_name}_{prog}"
            out[f"layout_{name}"] = conv_layouts(compiled.as_text(), 2)
            jax.block_until_ready(compiled(kernels))
            fns[name] = lambda _, compiled=compiled: jax.block_until_ready(compiled(kernels))
    out["step_s"] = interleaved_min(fns, rounds, 1)
    return out


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)  # old name of --rounds
    args = parser.parse_args(argv)
    rounds = args.repeats or args.rounds
    size = SIZES[args.size]
    machine = machine_info()
    print(f"U-Net training, {machine['device']}, load {machine['load_average'][0]:.1f}", flush=True)
    rows = [versus_torch(2, size["torch2d"]["batch"], size["torch2d"]["side"], rounds, steps=3),
            versus_torch(3, size["torch3d"]["batch"], 32, rounds, steps=2)]
    for r in rows:
        line = f"{r['dims']}D U-Net (batch {'x'.join(map(str, r['batch']))}, {r['params']} params) steps/s: " + \
            "  ".join(f"{n} {v:.2f}" for n, v in r["steps_per_s"].items())
        if "ugcn_over_torch_steps_per_s" in r:
            line += f"  (ugcn / torch {r['ugcn_over_torch_steps_per_s']:.2f}x)"
        print(line, flush=True)
    st = scan_anomaly(size["scan"], rounds)
    print(f"{'2D U-Net train step (batch ' + 'x'.join(map(str, st['batch'])) + ')':<40}{'s/step':>9}"
          f"{'compile s':>11}{'convs':>7}{'not Eigen':>11}{'whiles':>8}")
    for name in ("loop", "scan", "scan_unrolled"):
        lay = st[f"layout_{name}"]
        print(f"  {name:<38}{st['step_s'][name]:>9.3f}{st[f'compile_{name}_s']:>11.1f}{lay['convolutions']:>7}"
              f"{lay['not_eigen_form']:>11}{lay['while_loops']:>8}")
    print(f"  scan / loop: {st['scan_over_loop']:.2f}x, unrolled scan / loop: {st['unrolled_over_loop']:.2f}x")
    check = canonical_check(rounds)
    st["eigen_form_check"] = check
    for name, sec in check["step_s"].items():
        print(f"  3 convs, {name:<20} {sec * 1000:8.1f} ms/step, not Eigen form: "
              f"{check[f'layout_{name}']['not_eigen_form']} of {check[f'layout_{name}']['convolutions']}")
    result = {"benchmark": "segment", "size": args.size, "machine": machine, "torch_comparison": rows, "step": st,
              "setup": {"rounds": rounds, "timing": "fastest of interleaved rounds, compilation excluded",
                        "learning_rate": LEARNING_RATE}}
    if size["train"] is not None:
        tr = demo_training(size["train"])
        result["train_model"] = tr
        print(f"train_model: {tr['n_train']} CT phantoms {tuple(tr['shape'])}, {tr['steps']} steps: "
              f"{tr['train_s']:.0f} s; Dice held-out {tr['dice_heldout_deterministic']:.3f} (deterministic), "
              f"{tr['dice_heldout_mc_expectation_T8']:.3f} (MC expectation, T=8); "
              f"train case {tr['dice_train_case']:.3f}")
    ratios = {"U-Net train step: lax.scan / Python loop (time per step)": st["scan_over_loop"],
              "U-Net train step: unrolled lax.scan / Python loop (time per step)": st["unrolled_over_loop"],
              "3 convs, autodiff backward: scan / loop (time per step)":
                  check["step_s"]["autodiff_scan"] / check["step_s"]["autodiff_loop"],
              "3 convs, backward written in Eigen form: scan / loop (time per step)":
                  check["step_s"]["eigen_form_scan"] / check["step_s"]["eigen_form_loop"]}
    for r in rows:
        if "ugcn_over_torch_steps_per_s" in r:
            ratios[f"{r['dims']}D U-Net training steps/s: ugcn / PyTorch"] = r["ugcn_over_torch_steps_per_s"]
        ratios[f"{r['dims']}D U-Net training steps/s: training rule / inference rule"] = r["train_rule_speedup"]
    result["ratios"] = ratios
    machine["load_average_end"] = list(os.getloadavg())
    save_results("segment", args.size, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
