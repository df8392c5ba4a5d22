"""Study: what 3D patch overlap and blending cost in accuracy and uncertainty (issue 15, item 2).

A small 3D U-Net (base 8, depth 3 as the default's receptive field, the default 32^3 patches, dropout 0.1)
is trained on realistic brain phantoms (``ugcn.data.realistic_brain_phantom``, 88 x 104 x 88 at 2 mm) and
run on held-out brains with every (overlap, blending) setting, with T MC-dropout passes each. Against the
reference setting (overlap 0.5, Gaussian blending) it reports, per setting:

- Dice of the deterministic prediction and of the MC expectation's argmax vs the ground truth;
- mean |dE| (foreground expectation) and mean |dH| (predictive entropy, bits) over the brain and over the
  lesion region (ground truth or reference prediction), and the MC noise floor: the same numbers between the
  reference and the reference setting with another dropout key (what T passes alone change);
- lesion level, on the reference prediction's lesions: the Spearman correlation of the per-lesion mean
  entropy with the reference's, its mean |d|, and the AUC of that mean entropy for telling false-positive
  lesions (adjusted IoU < 0.1) from true ones; and the setting's own predicted / false-positive lesion counts;
- the patch count per pass (time is proportional to it) and the seconds of this run's first call
  (compilation included: each setting is a program of its own).

Usage: python benchmarks/study_overlap.py [--size small|quick]   (results/overlap.json)
  small: 4 training brains, 300 steps, 2 test brains, T = 10   (about 15 minutes on an idle 2-core CPU)
  quick: 2 training brains, 40 steps, 1 test brain of 48^3, T = 4 (smoke test)
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import jax
import numpy as np
from common import machine_info, save_results

from ugcn.data.phantoms import realistic_brain_phantom
from ugcn.evaluate.metrics import dice
from ugcn.lesion.components import lesion_table
from ugcn.segment.checkpoint import load_model
from ugcn.segment.model import make_volume_fn, patch_starts, predict_probabilities
from ugcn.segment.train import train_model
from ugcn.segment.unet import UNetConfig
from ugcn.uncertainty.measures import entropy, expectation
from ugcn.uncertainty.sampling import mc_sample
from ugcn.uncertainty.stats import stats_from_samples

SIZES = {
    "small": dict(n_train=4, n_test=1, shape=(88, 104, 88), epochs=15, steps=20, samples=10),
    "quick": dict(n_train=2, n_test=1, shape=(48, 48, 48), epochs=2, steps=20, samples=4),
}
# Reference first, then by cost; the MC noise floor comes from the reference run itself (split halves).
SETTINGS = [(0.5, "gaussian"), (0.25, "gaussian"), (0.0, "gaussian"), (0.0, "uniform"), (0.25, "uniform")]
REFERENCE = (0.5, "gaussian")


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for ``positive`` (ties count 1/2); NaN without both classes."""
    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def run_setting(model, image, key, T, keep=False):
    fn = make_volume_fn(model, stochastic=True)
    t = time.perf_counter()
    result = mc_sample(fn, image, key, n_samples=T, chunk_size=T, keep_samples=keep)
    out = {"E": np.asarray(expectation(result.stats))[..., 1], "H": np.asarray(entropy(result.stats)),
           "seconds": time.perf_counter() - t}
    out["det"] = predict_probabilities(model, image)[..., 1]
    if keep:  # the two halves of the passes, for the MC noise floor
        half = T // 2
        for name, part in (("a", result.samples[:half]), ("b", result.samples[half: 2 * half])):
            stats = stats_from_samples(part)
            out[f"E_{name}"] = np.asarray(expectation(stats))[..., 1]
            out[f"H_{name}"] = np.asarray(entropy(stats))
    return out


def lesion_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    flat = labels.ravel()
    sums = np.bincount(flat, weights=values.ravel(), minlength=n + 1)[1:]
    return sums / np.maximum(np.bincount(flat, minlength=n + 1)[1:], 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--model", help="a model directory (ugcn.segment.checkpoint) to use instead of training")
    parser.add_argument("--settings", type=int, default=len(SETTINGS), help="the first N settings only")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    shape = cfg["shape"]
    first_test = cfg["n_train"]
    test = [realistic_brain_phantom(seed, shape=shape) for seed in range(first_test, first_test + cfg["n_test"])]
    t = time.perf_counter()
    if args.model:
        model = load_model(args.model)
        final_loss = None
    else:
        train = [realistic_brain_phantom(seed, shape=shape) for seed in range(cfg["n_train"])]
        model, history = train_model([p.image for p in train], [p.label for p in train],
                                     UNetConfig(dims=3, base_features=8, depth=3, dropout_rate=0.1),
                                     epochs=cfg["epochs"], steps_per_epoch=cfg["steps"], batch_size=4,
                                     learning_rate=3e-3, seed=0, progress=False)
        final_loss = history["loss"][-1]
        print(f"trained in {time.perf_counter() - t:.0f} s, final loss {final_loss:.3f}", flush=True)
    train_seconds = time.perf_counter() - t
    unet = model.config
    T = cfg["samples"]
    settings = SETTINGS[: args.settings]
    per_setting: dict[str, list[dict]] = {f"{o}/{b}": [] for o, b in settings}
    floor: list[dict] = []
    machine = machine_info()

    def mean_of(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    def save():
        summary = {name: {k: mean_of(rows, k) for k in rows[0] if k != "case"}
                   for name, rows in per_setting.items() if rows}
        if floor:
            summary["mc_noise_floor"] = {k: mean_of(floor, k) for k in floor[0] if k != "case"}
        result = {"benchmark": "overlap", "size": args.size, "machine": machine,
                  "setup": {"unet": unet.to_dict(), "training": model.training, "model": args.model,
                            "brain_shape": list(shape), "n_train": cfg["n_train"], "n_test": cfg["n_test"],
                            "train_seconds": None if args.model else train_seconds, "final_loss": final_loss,
                            "n_samples": T, "reference": f"{REFERENCE[0]}/{REFERENCE[1]}",
                            "noise_floor": "the reference's passes split in two halves of T/2: |half_a - half_b| "
                                           "/ sqrt(2) estimates the difference of two T-pass runs"},
                  "summary": summary, "per_case": {"settings": per_setting, "noise_floor": floor}}
        save_results("overlap", args.size, result)
        return summary

    for case, ph in enumerate(test):
        image = ph.image
        gt = ph.label > 0
        key = jax.random.key(100 + case)
        ref = table = ref_lesion_h = region = None
        for overlap, blend in settings:
            m = dataclasses.replace(model, config=dataclasses.replace(unet, patch_overlap=overlap, blend=blend))
            run = run_setting(m, image, key, T, keep=(overlap, blend) == REFERENCE)
            print(f"case {case} overlap {overlap} {blend}: {run['seconds']:.0f} s", flush=True)
            if ref is None:
                ref = run
                ref_pred = ref["det"] > 0.5
                region = gt | ref_pred
                table = lesion_table(ref_pred, gt)
                ref_lesion_h = lesion_means(ref["H"], table.labels, table.n)
                fe, fh = np.abs(ref["E_a"] - ref["E_b"]) / np.sqrt(2), np.abs(ref["H_a"] - ref["H_b"]) / np.sqrt(2)
                la = lesion_means(ref["H_a"], table.labels, table.n)
                lb = lesion_means(ref["H_b"], table.labels, table.n)
                floor.append({"case": case, "mean_abs_dE": float(fe.mean()), "mean_abs_dH": float(fh.mean()),
                              "lesion_region_mean_abs_dE": float(fe[region].mean()),
                              "lesion_region_mean_abs_dH": float(fh[region].mean()),
                              "lesion_mean_H_mean_abs_d": (float(np.abs(la - lb).mean() / np.sqrt(2))
                                                           if table.n else None),
                              "lesion_mean_H_spearman_halves": spearman(la, lb)})
            own = lesion_table(run["det"] > 0.5, gt)
            lesion_h = lesion_means(run["H"], table.labels, table.n)
            row = {"case": case, "patches": len(patch_starts(shape, unet.patch, overlap)),
                   "first_call_seconds": run["seconds"],
                   "dice_deterministic": dice(run["det"] > 0.5, gt), "dice_mc_mean": dice(run["E"] > 0.5, gt),
                   "mean_abs_d_deterministic_p": float(np.abs(run["det"] - ref["det"]).mean()),
                   "predicted_lesions": int(own.n), "fp_lesions": int(own.is_fp.sum()) if own.n else 0,
                   "reference_lesions": int(table.n),
                   "reference_fp_lesions": int(table.is_fp.sum()) if table.n else 0,
                   "mean_abs_dE": float(np.abs(run["E"] - ref["E"]).mean()),
                   "mean_abs_dH": float(np.abs(run["H"] - ref["H"]).mean()),
                   "lesion_region_mean_abs_dE": float(np.abs(run["E"] - ref["E"])[region].mean()),
                   "lesion_region_mean_abs_dH": float(np.abs(run["H"] - ref["H"])[region].mean()),
                   "lesion_mean_H_spearman": spearman(lesion_h, ref_lesion_h),
                   "lesion_mean_H_mean_abs_d": float(np.abs(lesion_h - ref_lesion_h).mean()) if table.n else None,
                   "lesion_mean_H_fp_auc": auc(lesion_h, table.is_fp) if table.n else None}
            per_setting[f"{overlap}/{blend}"].append(row)
            save()
    for name, row in save().items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
