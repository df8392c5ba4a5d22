"""The demos (``ugcn demo``): method R on CT phantoms and method L on brain phantoms, in a few CPU minutes.

Steps: make CT phantoms; train a small 2D U-Net on a few of them (8 volumes, the low-data regime of the
papers, trained for 600 steps); T MC-dropout passes on each test volume and on 4 training volumes; tune the
dense CRF's kernels by a grid search on the training volumes (:func:`~ugcn.refine.crf.tune_crf`); refine every
test volume with the vmapped GCN fit (the default configuration, and the published one when the installed ugcn
has presets); compare Dice of the CNN,
``E > 0.5``, the tuned CRF and the GCN; sweep τ; write NIfTI outputs, a CSV/JSON report and PNGs.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np

from ugcn.data.layout import write_decathlon
from ugcn.data.phantoms import brain_phantom, ct_phantom, realistic_brain_phantom
from ugcn.evaluate.plots import figures_or_warn
from ugcn.experiments.lesion_protocol import LesionProtocolConfig, run_protocol
from ugcn.io import save_volume, write_text_atomic
from ugcn.refine import RefineConfig, RefineInput, crf_available, refine_batch
from ugcn.refine.crf import CRFCase, CRFConfig, tune_crf
from ugcn.refine.outputs import write_masks
from ugcn.segment import UNetConfig, make_volume_fn, save_model
from ugcn.segment.normalize import Normalization
from ugcn.segment.train import train_model
from ugcn.uncertainty.sources import from_model


def _crf_case(x: RefineInput) -> CRFCase:
    """A demo volume (labelled, with its voxel spacing) as a case of :func:`tune_crf`."""
    if x.label is None:
        raise ValueError(f"{x.name}: tuning the CRF needs a label")
    spacing = (1.0, 1.0, 1.0) if x.spacing is None else tuple(x.spacing)
    return CRFCase(x.image, x.expectation, x.prediction, x.label, spacing)


# Columns of the Dice table: report name -> RefineResult mask name.
METHODS = {"CNN": "cnn", "E>0.5": "expectation_mask", "CRF": "crf", "GCN": "refined",
           "GCN-unlabelled": "refined_unlabelled"}
# The published GCN (``RefineConfig.preset("reference")``), when the installed ugcn has presets.
REFERENCE_METHODS = {"GCN-reference": "refined"}


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the refinement demo (defaults: about 4 minutes on a quiet 2-core CPU).

    8 training volumes and ``epochs * steps_per_epoch`` = 600 steps: with 4 volumes and 300 steps the U-Net
    reached a held-out Dice of about 0.75, below the regime the papers report; with 4 volumes and 600 steps it
    fitted its training volumes (0.95) but reached 0.55-0.78 on the demo's test phantoms (0.86-0.90 on three
    others): more training volumes, not more steps, is what it lacked (a step costs the same for any number).
    ``crf_tune``: grid-search the CRF on the first ``crf_tune_volumes`` training volumes (otherwise
    ``CRFConfig()``).
    """

    n_train: int = 8
    n_test: int = 3
    shape: tuple = (96, 96, 48)
    base_features: int = 8
    depth: int = 3
    dropout_rate: float = 0.1  # docs/method.md's 0.3 is for full-width U-Nets; a base-8 net fails to train at 0.3
    ct_window: tuple = (-160.0, 240.0)
    learning_rate: float = 3e-3
    epochs: int = 24
    steps_per_epoch: int = 25
    batch_size: int = 8
    n_samples: int = 20
    uncertainty: str = "entropy"
    tau: float = 0.8
    tau_sweep: tuple = (0.5, 0.6, 0.7, 0.8, 0.9)
    crf_tune: bool = True
    crf_tune_volumes: int = 4
    seed: int = 0


QUICK = DemoConfig(n_train=2, n_test=2, shape=(64, 64, 32), epochs=4, steps_per_epoch=10, n_samples=8,
                   tau_sweep=(0.6, 0.8), crf_tune=False)


def _say(log: Optional[Callable[[str], None]], text: str) -> None:
    if log is not None:
        log(text)


def format_table(rows: Sequence[dict], columns: Sequence[str], first: str = "case") -> str:
    """A Markdown table of ``rows`` (dicts) with ``first`` then ``columns``; floats as 0.000."""
    def cell(v):
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    head = "| " + " | ".join([first, *columns]) + " |"
    rule = "|" + "|".join("---" for _ in range(len(columns) + 1)) + "|"
    body = ["| " + " | ".join([cell(r.get(first))] + [cell(r.get(c)) for c in columns]) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def _slice_figure(path: Path, image, label, cnn, uncertainty, refined, title: str, uncertainty_name: str,
                  window: tuple) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = int(np.argmax(np.count_nonzero(label, axis=(0, 1))))
    panels = [("image", image, "gray", window), ("ground truth", label, "gray", (0, 1)), ("CNN", cnn, "gray", (0, 1)),
              (uncertainty_name, uncertainty, "magma", (None, None)), ("GCN refined", refined, "gray", (0, 1))]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.3))
    for ax, (name, vol, cmap, (lo, hi)) in zip(axes, panels):
        ax.imshow(np.asarray(vol)[:, :, z].T, cmap=cmap, origin="lower", vmin=lo, vmax=hi)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}, axial slice {z}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_refinement_demo(
    out_dir: Path,
    config: DemoConfig = DemoConfig(),
    *,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
) -> dict:
    """Run method R end to end on CT phantoms and write everything under ``out_dir``.

    Returns:
      The summary written to ``out_dir/summary.json``: per-case and mean Dice of every method, the τ sweep,
      graph sizes and timings.
    """
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    n_cases = config.n_train + config.n_test
    _say(log, f"[1/5] making {n_cases} CT phantoms {config.shape} ({config.n_train} train, {config.n_test} test)")
    phantoms = [ct_phantom(config.seed * 1000 + i, shape=tuple(config.shape)) for i in range(n_cases)]
    names = [f"ct_{i:03d}" for i in range(n_cases)]
    write_decathlon(out_dir / "phantoms", [(n, p.image, p.label, p.affine) for n, p in zip(names, phantoms)],
                    name="ugcn-demo-ct", description="CT phantoms of the ugcn demo", overwrite=True)
    train = phantoms[: config.n_train]

    _say(log, f"[2/5] training a 2D U-Net (base {config.base_features}, depth {config.depth}) on "
              f"{config.n_train} volumes: {config.epochs} x {config.steps_per_epoch} steps")
    unet = UNetConfig(dims=2, base_features=config.base_features, depth=config.depth,
                      dropout_rate=config.dropout_rate)
    model, history = train_model([p.image for p in train], [p.label for p in train], unet, epochs=config.epochs,
                                 steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size,
                                 learning_rate=config.learning_rate, seed=config.seed,
                                 normalization=Normalization(clip=tuple(config.ct_window)), progress=progress)
    save_model(model, out_dir / "model", overwrite=True)

    use_crf = crf_available()
    tune = use_crf and config.crf_tune
    n_tune = min(config.crf_tune_volumes, config.n_train) if tune else 0
    mc_cases = list(range(n_tune)) + list(range(config.n_train, n_cases))  # phantom indices
    on_training = f" and on {n_tune} training volumes" if tune else ""
    _say(log, f"[3/5] MC dropout: T = {config.n_samples} passes per test volume{on_training}, "
              f"uncertainty = {config.uncertainty}")
    stochastic = make_volume_fn(model, stochastic=True)
    inputs, maps = [], []
    for k in _progress(mc_cases, progress, "MC dropout"):
        p = phantoms[k]
        sampled = from_model(model, p.image, [config.uncertainty], key=jax.random.PRNGKey(config.seed + 100 + k),
                             n_samples=config.n_samples, volume_fn=stochastic)
        e, u = sampled.foreground, sampled.maps[config.uncertainty]
        inputs.append(RefineInput(p.image, sampled.prediction > 0, e, u, p.label, names[k], p.spacing))
        maps.append((e, u))
    train_inputs, inputs, maps = inputs[:n_tune], inputs[n_tune:], maps[n_tune:]

    crf_config = CRFConfig()
    crf_summary: dict[str, Any] = {"available": use_crf, "tuned": False}
    if tune:
        _say(log, f"[4/5] tuning the dense CRF on the {len(train_inputs)} training volumes (grid search), then GCN "
                  f"refinement of {len(inputs)} volumes in one vmapped fit (tau = {config.tau})")
        tuning = tune_crf([_crf_case(x) for x in train_inputs])
        crf_config = tuning.best
        best = tuning.best_row()
        crf_summary.update(tuned=True, volumes=len(train_inputs), grid_points=len(tuning.rows),
                           train_dice_crf=best["mean_dice"], train_dice_cnn=float(np.mean(tuning.prediction_dice)),
                           grid=tuning.rows)
        chosen = ", ".join(f"{k} = {v}" for k, v in best.items() if k not in ("dice", "mean_dice"))
        _say(log, f"      tuned CRF: {chosen}"
                  + f" (training Dice {best['mean_dice']:.3f}, CNN {np.mean(tuning.prediction_dice):.3f})")
    else:
        _say(log, f"[4/5] GCN refinement of {len(inputs)} volumes in one vmapped fit (tau = {config.tau})"
                  + ("" if use_crf else "; dense CRF skipped: pip install 'ugcn[crf]'"))
    crf_summary["config"] = dataclasses.asdict(crf_config)
    refine_config = RefineConfig(tau=config.tau, crf=crf_config)
    results = refine_batch(inputs, config=refine_config, seeds=config.seed, crf=use_crf,
                           uncertainty_name=config.uncertainty, progress=progress)
    reference = None
    if hasattr(RefineConfig, "preset"):  # the published GCN beside the default
        reference = refine_batch(inputs, config=RefineConfig.preset("reference", tau=config.tau), seeds=config.seed,
                                 uncertainty_name=config.uncertainty, progress=False)

    rows: list[dict[str, Any]] = []
    for x, (e, u), r in zip(inputs, maps, results):
        case = str(x.name)
        case_dir = out_dir / "cases" / case
        affine = phantoms[names.index(case)].affine
        for fname, arr in (("image", x.image), ("label", x.label), ("expectation", e), (config.uncertainty, u)):
            if arr is not None:
                save_volume(case_dir / f"{fname}.nii.gz", arr, affine, overwrite=True)
        write_masks(case_dir, r, affine, overwrite=True)  # prediction.nii.gz (the CNN), refined.nii.gz, ...
        write_text_atomic(case_dir / "report.json", json.dumps(r.report(), indent=2))
        row = {"case": x.name, "nodes": r.graph_stats.get("nodes", 0), "status": r.status}
        row.update({m: (r.dice or {}).get(key) for m, key in METHODS.items()})
        if reference is not None:
            ref = reference[len(rows)]
            row.update({m: (ref.dice or {}).get(key) for m, key in REFERENCE_METHODS.items()})
        rows.append(row)
    methods = list(METHODS) + (list(REFERENCE_METHODS) if reference is not None else [])
    means: dict[str, Any] = {"case": "mean"}
    for m in methods:
        vals = [r[m] for r in rows if r[m] is not None]
        means[m] = float(np.mean(vals)) if vals else None
    table = format_table(rows + [means], methods)

    _say(log, f"[5/5] tau sweep {list(config.tau_sweep)}")
    sweep = []
    for tau in _progress(config.tau_sweep, progress, "tau sweep"):
        swept = refine_batch(inputs, config=dataclasses.replace(refine_config, tau=float(tau)), seeds=config.seed,
                             uncertainty_name=config.uncertainty, progress=False)
        sweep.append({"tau": float(tau), "GCN": float(np.mean([s.dice["refined"] for s in swept])),
                      "GCN-unlabelled": float(np.mean([s.dice["refined_unlabelled"] for s in swept])),
                      "unlabelled nodes": int(np.mean([s.graph_stats.get("unlabelled", 0) for s in swept]))})
    sweep_table = format_table(sweep, ["GCN", "GCN-unlabelled", "unlabelled nodes"], first="tau")

    if figures_or_warn("slice.png and tau_sweep.png"):
        shown = int(np.argmax([r["GCN"] - r["CNN"] for r in rows]))
        x, (e, u), r = inputs[shown], maps[shown], results[shown]
        _slice_figure(out_dir / "slice.png", x.image, x.label, r.cnn, u, r.refined, str(x.name), config.uncertainty,
                      config.ct_window)
        _tau_figure(out_dir / "tau_sweep.png", sweep, means)

    summary = {
        "config": dataclasses.asdict(config),
        "unet_final_loss": history["loss"][-1],
        "dice": rows,
        "mean_dice": means,
        "tau_sweep": sweep,
        "crf": crf_summary,
        "methods": methods,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    write_text_atomic(out_dir / "dice.md", table + "\n\n" + sweep_table + "\n")
    _say(log, "\nDice per test volume (CNN = largest component of the U-Net's mask, ROI-restricted methods):")
    _say(log, table)
    _say(log, "\nMean Dice over the test volumes for each tau:")
    _say(log, sweep_table)
    _say(log, f"\nWrote {out_dir}/ (phantoms/, model/, cases/*/*.nii.gz, summary.json, dice.md, slice.png, "
              f"tau_sweep.png) in {summary['seconds']} s")
    return summary


def _tau_figure(path: Path, sweep: list, means: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    taus = [s["tau"] for s in sweep]
    ax.plot(taus, [s["GCN"] for s in sweep], "o-", label="GCN (all nodes)")
    ax.plot(taus, [s["GCN-unlabelled"] for s in sweep], "s-", label="GCN (unlabelled only)")
    for name, style in (("CNN", "--"), ("E>0.5", ":"), ("CRF", "-.")):
        if means.get(name) is not None:
            ax.axhline(means[name], linestyle=style, color="gray", label=name)
    ax.set_xlabel("tau (uncertainty threshold)")
    ax.set_ylabel("mean Dice")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _progress(items, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not progress)


#: The lesion demo's protocol, sized for a 2-core CPU on the realistic phantoms (88 x 104 x 88 voxels at 2 mm):
#: a narrow 3D U-Net (base 4, depth 2) trained for 450 steps on batches of four 24^3 patches with Adam at 3e-3
#: (at 1e-2 the final weights landed at a random point of the loss's oscillation, and two of four folds
#: over-segmented white matter); MC dropout on 44 x 52 x 44 tiles that cover the volume exactly (2 x 2 x 2,
#: overlap 0), so one pass costs one network evaluation per voxel; T = 5 passes (docs/method.md's 20 costs 4x
#: as much).
LESION_DEMO_SETTINGS = dict(
    mc_samples=5, mc_chunk=5, unet_base_features=4, unet_dropout=0.1, unet_depth=2, unet_epochs=30,
    unet_steps_per_epoch=15, unet_batch_size=4, unet_learning_rate=3e-3, unet_patch=(24, 24, 24),
    unet_inference_patch=(44, 52, 44), unet_patch_overlap=0.0, gcnn_epochs=60,
)

#: ``--quick``: the former toy demo (32 x 32 x 24 brains, a few lesions per fold), for smoke tests only.
LESION_QUICK_SETTINGS = dict(
    mc_samples=10, unet_base_features=4, unet_dropout=0.1, unet_depth=2, unet_epochs=20, unet_steps_per_epoch=10,
    unet_batch_size=1, unet_learning_rate=1e-2, gcnn_epochs=30, min_val_fp=1, n_bootstrap=500,
)


def run_lesion_demo(out_dir, *, n_cases: int = 24, seed: int = 0, progress: bool = True,
                    overwrite: bool = False, quick: bool = False, shape=None, **settings):
    """Method L on synthetic FLAIR brain phantoms: write a data set, run the 4-fold protocol, print the table.

    Default: ``n_cases`` realistic brains (:func:`ugcn.data.phantoms.realistic_brain_phantom`: 2 mm, 5-40
    lesions, unlabelled FP sources), with :data:`LESION_DEMO_SETTINGS`. ``quick``: small toy brains of
    ``shape`` (default 32 x 32 x 24) with :data:`LESION_QUICK_SETTINGS`.

    Args:
      out_dir: folder for ``data/`` (the phantoms, Decathlon layout) and ``results/``.
      n_cases: number of phantoms (>= 8 so that every fold has train, validation and test cases).
      seed: seeds the phantoms and the protocol.
      progress: progress bars.
      overwrite: replace an existing ``out_dir/data`` and ``out_dir/results``.
      quick: the toy demo.
      shape: phantom size of the toy demo (each a multiple of 4, >= 24).
      settings: overrides of the settings (any :class:`LesionProtocolConfig` field).

    Returns:
      :class:`ugcn.experiments.lesion_protocol.ProtocolResult`.
    """
    if n_cases < 8:
        raise ValueError(f"run_lesion_demo: n_cases must be at least 8 for 4 folds, got {n_cases}")
    out_dir = Path(out_dir)
    data = out_dir / "data"
    shape = tuple(shape) if shape is not None else (32, 32, 24)

    def cases():  # one phantom at a time: the data set is never held in memory
        for i in range(n_cases):
            ph = brain_phantom(seed * 1000 + i, shape=shape) if quick else realistic_brain_phantom(seed * 1000 + i)
            yield f"brain_{i:03d}", ph.image, ph.label, ph.affine

    write_decathlon(data, cases(), name="ugcn brain phantoms", modality="FLAIR",
                    labels={"0": "background", "1": "lesion"}, overwrite=overwrite)
    base = dict(LESION_QUICK_SETTINGS, unet_patch=shape) if quick else LESION_DEMO_SETTINGS
    config = LesionProtocolConfig(folds=4, seed=seed, **{**base, **settings})
    result = run_protocol(data, config, out_dir=out_dir / "results", overwrite=overwrite, progress=progress)
    print(result.markdown())
    return result
