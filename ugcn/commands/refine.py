"""``ugcn refine`` / ``ugcn refine-batch``: method R (uncertainty-driven GCN refinement) from NIfTI files.

Inputs: an image and either a trained ``ugcn`` model (``--model``: deterministic prediction, then T MC
dropout passes) or the T MC sample maps of any other framework (``--samples``: a 4D NIfTI ``(X, Y, Z, T)``
of foreground probabilities). The uncertainty map is any registered estimator (``--uncertainty``,
default ``entropy`` in bits, the scale of ``--tau 0.8``). With ``--samples`` and no ``--prediction``, the
prediction ``Ŷ`` is ``E > 0.5`` (there is no deterministic pass to take it from).

Outputs (in ``--out``; ``refine-batch``: one sub-folder per image plus ``summary.json``):
``refined.nii.gz`` (GCN on all nodes), ``refined_unlabelled.nii.gz`` (``Ŷ`` with only the uncertain nodes
replaced), ``expectation_mask.nii.gz`` (``E > 0.5`` in the ROI), ``cnn.nii.gz`` (``Ŷ``, largest
component), ``crf.nii.gz`` (``--crf``) and ``report.json`` (graph counts, timings, Dice per method with
``--label``). Files are written to a temporary folder and moved into place; nothing is overwritten
without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ugcn import __version__

OUTPUT_FILES = {
    "refined": "refined.nii.gz",
    "refined_unlabelled": "refined_unlabelled.nii.gz",
    "expectation_mask": "expectation_mask.nii.gz",
    "cnn": "cnn.nii.gz",
    "crf": "crf.nii.gz",
}
REPORT = "report.json"


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method R settings (METHOD.md defaults)")
    g.add_argument("--uncertainty", default="entropy", metavar="NAME",
                   help="uncertainty estimator: a registered name or 'package.module:function' (default entropy, bits)")
    g.add_argument("--tau", type=float, default=0.8, help="uncertainty threshold (default 0.8)")
    g.add_argument("--tau-mode", choices=("absolute", "quantile"), default="absolute",
                   help="absolute: U > tau; quantile: U above its tau-quantile over the ROI (default absolute)")
    g.add_argument("--margin", type=int, default=0, help="voxels added around the ROI box (default 0)")
    g.add_argument("--k-random", type=int, default=16, help="random long-range edges per node (default 16)")
    g.add_argument("--epochs", type=int, default=200, help="GCN training epochs (default 200)")
    g.add_argument("--max-nodes", type=int, default=2_000_000, help="node budget per volume (default 2e6)")
    g.add_argument("--crf", action="store_true", help="also run the dense-CRF baseline (needs ugcn[crf])")
    g.add_argument("--crf-unary", choices=("prediction", "expectation"), default="prediction",
                   help="CRF unary from the binary prediction (reference) or from E (default prediction)")
    g.add_argument("--n-samples", type=int, default=20, help="MC dropout passes with --model (default 20)")
    g.add_argument("--chunk", type=int, default=4, help="MC passes computed together (default 4)")
    g.add_argument("--seed", type=int, default=0, help="seed of MC dropout, graph and GCN (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def register(subparsers) -> None:
    doc = __doc__.split("\n\n", 1)[1] if __doc__ else None
    p = subparsers.add_parser("refine", help="method R: refine one segmentation with a per-volume GCN",
                              description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", required=True, metavar="IMG", help="image NIfTI (X, Y, Z) or (X, Y, Z, M)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL_DIR", help="a binary model directory written by `ugcn train`")
    src.add_argument("--samples", metavar="SAMPLES_4D", help="4D NIfTI (X, Y, Z, T) of T foreground sample maps")
    p.add_argument("--prediction", metavar="MASK", help="the prediction to refine (default: model / E > 0.5)")
    p.add_argument("--label", metavar="GT", help="ground truth: Dice per method in report.json")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    _add_common(p)
    p.set_defaults(run=run_refine)

    b = subparsers.add_parser("refine-batch", help="method R over a folder, GCN fits vmapped in batches",
                              description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--images", required=True, metavar="DIR", help="folder of image NIfTI files")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL_DIR", help="a binary model directory written by `ugcn train`")
    src.add_argument("--samples-dir", metavar="DIR",
                     help="folder of 4D sample maps named like the images (<stem>.nii.gz or <stem>_samples.nii.gz)")
    b.add_argument("--predictions", metavar="DIR", help="folder of predictions named like the images")
    b.add_argument("--labels", metavar="DIR", help="folder of ground truths named like the images")
    b.add_argument("--out", required=True, metavar="OUTDIR", help="output folder: one sub-folder per image")
    b.add_argument("--batch-size", type=int, default=8, help="volumes per vmapped GCN fit (default 8)")
    _add_common(b)
    b.set_defaults(run=run_refine_batch)


def _config(args):
    from ugcn.refine.fit import FitConfig
    from ugcn.refine.pipeline import RefineConfig

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    if args.n_samples < 1:
        raise ValueError(f"--n-samples must be >= 1, got {args.n_samples}")
    return RefineConfig(tau=args.tau, tau_mode=args.tau_mode, margin=args.margin, k_random=args.k_random,
                        max_nodes=args.max_nodes, crf_unary=args.crf_unary, fit=FitConfig(epochs=args.epochs))


def _find(folder: Optional[str], stem: str, what: str, suffixes=("",)) -> Optional[Path]:
    if folder is None:
        return None
    for suffix in suffixes:
        for ext in (".nii.gz", ".nii"):
            path = Path(folder) / f"{stem}{suffix}{ext}"
            if path.exists():
                return path
    raise ValueError(f"{folder}: no {what} for image {stem!r} (expected {stem}{suffixes[-1]}.nii.gz)")


def _binary_mask(path: Path, image) -> np.ndarray:
    from ugcn.io import check_same_grid, load_mask

    mask = load_mask(path)
    check_same_grid(image, mask)
    return mask.array != 0


def load_refine_inputs(args, image_path, samples_path=None, prediction_path=None, label_path=None, model=None,
                       volume_fn=None):
    """Read one volume's inputs and compute ``E`` and ``U``: ``(RefineInput, image Volume, source dict)``.

    With ``samples_path`` the MC samples are read from it; otherwise ``model`` gives the deterministic
    prediction and ``volume_fn`` (its stochastic volume function, made once per model) the MC passes.
    """
    import jax
    import jax.numpy as jnp

    from ugcn.io import check_same_grid, load_volume
    from ugcn.refine.pipeline import RefineInput
    from ugcn.uncertainty.estimators import estimator_maps, parse_estimator_names
    from ugcn.uncertainty.measures import expectation
    from ugcn.uncertainty.sampling import load_sample_maps, mc_sample
    from ugcn.uncertainty.stats import stats_from_samples

    image = load_volume(image_path, ndim=(3, 4))
    (estimator,) = parse_estimator_names([args.uncertainty])
    source = {"image": str(image_path)}
    prediction = None
    if samples_path is not None:
        samples_np, maps_volume = load_sample_maps(samples_path)
        check_same_grid(image, maps_volume, what="samples")
        samples = jnp.asarray(samples_np)
        stats = stats_from_samples(samples)
        source["samples"] = str(samples_path)
        source["n_samples"] = int(samples.shape[0])
    else:
        from ugcn.segment.model import predict_probabilities

        probs = predict_probabilities(model, image.array)
        if probs.shape[-1] != 2:
            raise ValueError(f"{args.model}: method R refines a binary segmentation; this model has "
                             f"{probs.shape[-1]} classes")
        prediction = probs[..., 1] > 0.5
        needs = estimator.needs == "samples"
        result = mc_sample(volume_fn, image.array, jax.random.PRNGKey(args.seed),
                           n_samples=args.n_samples, chunk_size=args.chunk, keep_samples=needs)
        stats, samples = result.stats, result.samples
        source["model"] = str(args.model)
        source["n_samples"] = args.n_samples
    e = np.asarray(expectation(stats))
    if e.shape[-1] != 2:
        raise ValueError(f"method R refines a binary segmentation; the samples have {e.shape[-1]} classes")
    e = e[..., 1]
    u = np.asarray(estimator_maps([estimator], stats, samples)[estimator.name], np.float32)
    if prediction_path is not None:
        prediction = _binary_mask(prediction_path, image)
        source["prediction"] = str(prediction_path)
    elif prediction is None:
        prediction = e > 0.5
        source["prediction"] = "E > 0.5 (no --prediction given)"
    label = _binary_mask(label_path, image) if label_path is not None else None
    if label_path is not None:
        source["label"] = str(label_path)
    return RefineInput(image.array, prediction, e, u, label, name=str(image_path)), image, source


def _load_model(args):
    """``(model, stochastic volume_fn)`` for ``--model`` (one function object: mc_sample caches per function)."""
    if not args.model:
        return None, None
    from ugcn.segment.checkpoint import load_model
    from ugcn.segment.model import make_volume_fn

    model = load_model(args.model)
    return model, make_volume_fn(model, stochastic=True)


def _check_outputs(out_dir: Path, crf: bool, overwrite: bool) -> list:
    names = [f for k, f in OUTPUT_FILES.items() if crf or k != "crf"] + [REPORT]
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    existing = [f for f in names if (out_dir / f).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out_dir}: {', '.join(existing)} exist(s) already (pass --overwrite to replace)")
    return names


def _write(out_dir: Path, result, image, report: dict) -> None:
    from ugcn.io import save_volume

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".refine.", dir=out_dir))
    try:
        written = []
        for name, mask in result.masks().items():
            save_volume(tmp / OUTPUT_FILES[name], mask.astype(np.uint8), image.affine, header=image.header)
            written.append(OUTPUT_FILES[name])
        report["files"] = written + [REPORT]
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        for name in report["files"]:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _report(result, source: dict, config, args, mc_s: float) -> dict:
    rep = {"ugcn_version": __version__, **source, "seed": args.seed,
           "config": json.loads(json.dumps(dataclasses.asdict(config), default=list))}
    rep.update(result.report())
    rep["timings_s"]["inputs_and_mc"] = round(mc_s, 4)
    return rep


def _print_summary(name: str, result) -> None:
    g = result.graph_stats
    line = f"refine {name}: {result.status}"
    if g:
        line += f", {g['nodes']} nodes ({g['unlabelled']} uncertain), {g['edges']} edges"
    if result.dice:
        line += ", Dice " + " ".join(f"{k}={v:.4f}" for k, v in result.dice.items())
    print(line)
    for m in result.messages:
        print(f"  note: {m}")


def run_refine(args: argparse.Namespace) -> int:
    from ugcn.refine.pipeline import refine_volume

    config = _config(args)
    out_dir = Path(args.out)
    _check_outputs(out_dir, args.crf, args.overwrite)  # fail before the heavy work
    model, volume_fn = _load_model(args)
    t0 = time.perf_counter()
    x, image, source = load_refine_inputs(args, args.image, args.samples, args.prediction, args.label, model,
                                          volume_fn)
    mc_s = time.perf_counter() - t0
    result = refine_volume(x.image, x.prediction, x.expectation, x.uncertainty, config=config, seed=args.seed,
                           label=x.label, crf=args.crf, uncertainty_name=args.uncertainty)
    _write(out_dir, result, image, _report(result, source, config, args, mc_s))
    if not args.quiet:
        _print_summary(Path(args.image).name, result)
    return 0


def run_refine_batch(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ugcn.io import is_nifti, nifti_stem, write_text_atomic
    from ugcn.refine.pipeline import refine_batch

    config = _config(args)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = Path(args.images)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    images = sorted(p for p in folder.iterdir() if is_nifti(p) and not p.name.startswith("."))
    if not images:
        raise ValueError(f"{folder}: no .nii/.nii.gz images")
    out_dir = Path(args.out)
    stems = [nifti_stem(p) for p in images]
    for stem in stems:
        _check_outputs(out_dir / stem, args.crf, args.overwrite)
    summary_path = out_dir / "summary.json"
    if summary_path.exists() and not args.overwrite:
        raise ValueError(f"{summary_path}: exists already (pass --overwrite to replace)")
    model, volume_fn = _load_model(args)
    loaded = []
    for path, stem in zip(tqdm(images, desc="inputs", disable=args.quiet), stems):
        t0 = time.perf_counter()
        samples = _find(args.samples_dir, stem, "sample maps", ("", "_samples")) if args.samples_dir else None
        x, image, source = load_refine_inputs(
            args, path, samples, _find(args.predictions, stem, "prediction"), _find(args.labels, stem, "label"),
            model, volume_fn,
        )
        loaded.append((x, image, source, time.perf_counter() - t0))
    seeds = [args.seed] * len(loaded)
    results = refine_batch([x for x, *_ in loaded], config=config, seeds=seeds, crf=args.crf,
                           batch_size=args.batch_size, uncertainty_name=args.uncertainty, progress=not args.quiet)
    summary = {"ugcn_version": __version__, "volumes": {}}
    for stem, (x, image, source, mc_s), result in zip(stems, loaded, results):
        _write(out_dir / stem, result, image, _report(result, source, config, args, mc_s))
        summary["volumes"][stem] = {"status": result.status, "dice": result.dice, "graph": result.graph_stats}
        if not args.quiet:
            _print_summary(stem, result)
    with_dice = [r.dice for r in results if r.dice]
    if with_dice:
        summary["mean_dice"] = {k: float(np.mean([d[k] for d in with_dice])) for k in with_dice[0]}
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    return 0
