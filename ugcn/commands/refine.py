"""``ugcn refine`` / ``ugcn refine-batch``: method R (uncertainty-driven GCN refinement) from NIfTI files.

Inputs: an image and either a trained ``ugcn`` model (``--model``: deterministic prediction, then T MC
dropout passes) or the T MC sample maps of any other framework (``--samples``: a 4D NIfTI ``(X, Y, Z, T)``
of foreground probabilities). The uncertainty map is any registered estimator (``--uncertainty``,
default ``entropy`` in bits, the scale of ``--tau 0.8``). With ``--samples`` and no ``--prediction``, the
prediction ``Ŷ`` is ``E > 0.5`` (there is no deterministic pass to take it from).

Outputs (in ``--out``; ``refine-batch``: one sub-folder per image plus ``summary.json``):
``refined.nii.gz`` (the refinement: ``Ŷ`` with the uncertain nodes replaced by the GCN; with
``--preset reference`` the GCN on all graph nodes, as published; ``Ŷ`` itself when the fit fails the
self-check), ``refined_unlabelled.nii.gz`` (``Ŷ`` with only the uncertain nodes replaced),
``expectation_mask.nii.gz`` (``E > 0.5`` in the ROI), ``cnn.nii.gz`` (``Ŷ``, largest component),
``crf.nii.gz`` (``--crf``) and ``report.json`` (status, the self-check's validation scores, the graph
variant chosen and why, graph counts, timings, Dice per method with ``--label``). The folder is written
whole in a temporary sibling and swapped in; ``--out`` must be new or empty, and ``--overwrite`` replaces
only an earlier output (a folder with ``report.json``), whole.

``refine-batch`` is resumable and scales out: each case folder appears whole once its batch is done, a
re-run skips the finished cases (same settings; ``--overwrite`` recomputes), ``--devices N`` spreads the GCN
fits over N devices, and several processes started with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
and ``JAX_PROCESS_ID`` (or under SLURM) share the folder, each taking its own slice of the sorted images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import operator
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ugcn import __version__
from ugcn.commands.options import Batching, Sampling, add_config_file_option, add_config_options, resolve_options
from ugcn.config import config_to_dict, setting

OUTPUT_FILES = {
    "refined": "refined.nii.gz",
    "refined_unlabelled": "refined_unlabelled.nii.gz",
    "expectation_mask": "expectation_mask.nii.gz",
    "cnn": "cnn.nii.gz",
    "crf": "crf.nii.gz",
}
REPORT = "report.json"


@dataclasses.dataclass(frozen=True)
class RefineRun:
    """What to compute besides the GCN refinement.

    Attributes:
      uncertainty: uncertainty estimator: a registered name or 'package.module:function' (entropy is in bits,
        the scale of --tau 0.8).
      crf: also run the dense-CRF baseline (needs ugcn[crf]).
    """

    uncertainty: str = setting("entropy", metavar="NAME")
    crf: bool = False


def _add_common(p: argparse.ArgumentParser) -> None:
    from ugcn.refine.crf import REFERENCE_CRF, CRFConfig
    from ugcn.refine.pipeline import PRESETS, RefineConfig

    add_config_options(p, RefineConfig, name="refine_config", title="method R settings (see docs/method.md)",
                       record="config", prefixes={"fit": "gcn-"}, exclude=("min_bucket_nodes", "min_bucket_edges"),
                       presets={"": ({"safe": PRESETS["safe"], "reference": PRESETS["reference"]},
                                     "method R setting the other flags start from: safe (adaptive tau, class-balanced "
                                     "loss, the better of two graphs by the self-check's validation score, only "
                                     "uncertain voxels replaced) or reference (the published method). Both fall back "
                                     "to the prediction, with a warning, when the fit fails the self-check "
                                     "(--no-check-fallback: warn only)"),
                                "crf": ({"tuned": CRFConfig(), "reference": REFERENCE_CRF},
                                        "CRF setting the --crf-* flags start from: tuned (CRFConfig(): unary with a "
                                        "0.05 floor, widths in mm and in units of the organ's intensity spread, "
                                        "chosen by a grid search on the demo's phantoms) or reference (the "
                                        "published one, which returns the prediction unchanged)")})
    add_config_options(p, RefineRun, name="run_config", title="uncertainty and baselines")
    add_config_options(p, Sampling, name="sampling", title="MC dropout (with --model)")
    add_config_file_option(p)
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
    add_config_options(b, Batching, name="batching", title="folder processing")
    _add_common(b)
    b.set_defaults(run=run_refine_batch)


def _config(args):
    """The ``RefineConfig`` built from the flags (and ``--config``) by ``resolve_options`` (run here when the
    arguments come from a bare parser rather than ``ugcn.cli.main``)."""
    if not hasattr(args, "refine_config"):
        resolve_options(args)
    return args.refine_config


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
                       volume_fn=None, mc_result=None):
    """Read one volume's inputs and compute ``E`` and ``U``: ``(RefineInput, image Volume, source dict)``.

    With ``samples_path`` the MC samples are read from it; otherwise ``model`` gives the deterministic
    prediction and ``volume_fn`` (its stochastic volume function, made once per model) the MC passes, unless
    ``mc_result`` (this volume's ``MCResult``, e.g. from a sharded cohort run) already holds them.
    """
    import jax
    import jax.numpy as jnp

    from ugcn.io import check_same_grid, load_image, to_canonical
    from ugcn.refine.pipeline import RefineInput
    from ugcn.uncertainty.estimators import estimator_maps, parse_estimator_names
    from ugcn.uncertainty.measures import expectation
    from ugcn.uncertainty.sampling import load_sample_maps, mc_sample, result_from_canonical
    from ugcn.uncertainty.stats import stats_from_samples

    image = load_image(image_path)  # nnU-Net's channel files stacked
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

        probs = predict_probabilities(model, image.array, image.affine)  # run in RAS+, returned in file order
        if probs.shape[-1] != 2:
            raise ValueError(f"{args.model}: method R refines a binary segmentation; this model has "
                             f"{probs.shape[-1]} classes")
        prediction = probs[..., 1] > 0.5
        needs = estimator.needs == "samples"
        if mc_result is None:
            mc_result = result_from_canonical(
                mc_sample(volume_fn, to_canonical(image.array, image.affine), jax.random.PRNGKey(args.seed),
                          n_samples=args.n_samples, chunk_size=args.chunk, keep_samples=needs), image.affine)
        result = mc_result
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
    return (RefineInput(image.array, prediction, e, u, label, name=str(image_path), spacing=image.spacing), image,
            source)


def _load_model(args):
    """``(model, stochastic volume_fn)`` for ``--model`` (one function object: mc_sample caches per function)."""
    if not args.model:
        return None, None
    from ugcn.segment.checkpoint import load_model
    from ugcn.segment.model import make_volume_fn

    model = load_model(args.model)
    return model, make_volume_fn(model, stochastic=True)


def _check_outputs(out_dir: Path, overwrite: bool) -> None:
    """Fail before the work unless ``out_dir`` is new, empty, or (``--overwrite``) an earlier refine output."""
    from ugcn.io import check_replaceable

    check_replaceable(out_dir, overwrite=overwrite, marker=REPORT)


def _write_outputs(folder: Path, result, image, report: dict) -> list[str]:
    """Every mask of ``result`` and ``report.json`` (listing them) into ``folder``; the file names."""
    from ugcn.io import save_volume

    written = []
    for name, mask in result.masks().items():
        save_volume(folder / OUTPUT_FILES[name], mask.astype(np.uint8), image.affine, header=image.header)
        written.append(OUTPUT_FILES[name])
    report["files"] = written + [REPORT]
    (folder / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report["files"]


def _write(out_dir: Path, result, image, report: dict, overwrite: bool) -> None:
    """``ugcn refine``: the whole output folder built in a temporary sibling and swapped in, so it never
    holds half a result nor a file of an earlier run (e.g. its ``crf.nii.gz``)."""
    from ugcn.io import atomic_directory

    with atomic_directory(out_dir, overwrite=overwrite, marker=REPORT) as tmp:
        _write_outputs(tmp, result, image, report)


def _report(result, source: dict, config, args, mc_s: float) -> dict:
    # seed, chunk, crf (and n_samples, in source) at the top level, the RefineConfig under "config": what
    # `ugcn refine --config report.json` reads back
    rep = {"ugcn_version": __version__, **source, "seed": args.seed, "chunk": args.chunk, "crf": bool(args.crf),
           "config": config_to_dict(config)}
    rep.update(result.report())
    rep["timings_s"]["inputs_and_mc"] = round(mc_s, 4)
    return rep


def _print_summary(name: str, result) -> None:
    g = result.graph_stats
    line = f"refine {name}: {result.status}"
    if result.selection.get("variant"):
        line += f" (graph {result.selection['variant']})"
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
    _check_outputs(out_dir, args.overwrite)  # fail before the heavy work
    model, volume_fn = _load_model(args)
    t0 = time.perf_counter()
    x, image, source = load_refine_inputs(args, args.image, args.samples, args.prediction, args.label, model,
                                          volume_fn)
    mc_s = time.perf_counter() - t0
    result = refine_volume(x.image, x.prediction, x.expectation, x.uncertainty, config=config, seed=args.seed,
                           label=x.label, crf=args.crf, uncertainty_name=args.uncertainty, spacing=x.spacing)
    _write(out_dir, result, image, _report(result, source, config, args, mc_s), args.overwrite)
    if not args.quiet:
        _print_summary(Path(args.image).name, result)
    return 0


def _settings(config, args) -> dict:
    """What a finished case must have been made with for a re-run to skip it (``report.json``)."""
    return {"config": dataclasses.asdict(config), "seed": args.seed, "uncertainty": args.uncertainty,
            "crf": bool(args.crf), "n_samples": args.n_samples,
            **{k: str(Path(v).resolve()) if v else None
               for k, v in (("model", args.model), ("samples_dir", args.samples_dir),
                            ("predictions", args.predictions), ("labels", args.labels))}}


def _write_case(case_dir: Path, result, image, report: dict) -> None:
    """One case's masks and report, built in a temporary folder that is renamed into place whole."""
    from ugcn.io import atomic_directory

    with atomic_directory(case_dir, overwrite=True) as tmp:
        _write_outputs(tmp, result, image, report)


def _case_summary(rep: dict) -> dict:
    """A case's entry in ``summary.json``: status, chosen variant, self-check scores, Dice, graph counts."""
    check = rep.get("selfcheck") or {}
    return {
        "status": rep.get("status"), "variant": (rep.get("selection") or {}).get("variant"),
        "validation_balanced_accuracy": check.get("validation_balanced_accuracy"),
        "validation_dice": check.get("validation_dice"),
        "dice": rep.get("dice"), "graph": rep.get("graph"),
    }


def _cohort_figures(volumes: dict) -> dict:
    """Status counts and mean Dice per method over the finished cases."""
    statuses = [v["status"] for v in volumes.values()]
    out: dict[str, Any] = {"status_counts": {k: statuses.count(k) for k in sorted(set(statuses), key=str)}}
    with_dice = [v["dice"] for v in volumes.values() if v["dice"]]
    if with_dice:
        out["mean_dice"] = {k: float(np.mean([d[k] for d in with_dice])) for k in with_dice[0]}
    return out


def _write_summary(out_dir: Path, stems: list) -> dict:
    """``summary.json`` from every case's ``report.json`` (cases without one are listed as pending)."""
    from ugcn.parallel.resume import write_summary

    return write_summary(out_dir, stems, _case_summary, aggregate=_cohort_figures)


def _cohort_mc(args, paths, volume_fn, mesh) -> dict:
    """MC dropout of a batch of images over the mesh's devices (same-shaped images stacked together):
    ``{path: (MCResult of that volume, seconds per volume)}``; each volume's key is ``PRNGKey(--seed)``, as
    ``ugcn refine`` uses, so the results equal the one-volume ones. The passes run in RAS+ order (the
    model's orientation) and come back in each file's voxel order."""
    import jax

    from ugcn.io import load_image, to_canonical
    from ugcn.uncertainty.cohort import mc_sample_batch
    from ugcn.uncertainty.estimators import parse_estimator_names
    from ugcn.uncertainty.sampling import result_from_canonical

    (estimator,) = parse_estimator_names([args.uncertainty])
    volumes = {p: load_image(p) for p in paths}
    images = {p: to_canonical(v.array, v.affine) for p, v in volumes.items()}
    groups: dict = {}
    for p, array in images.items():
        groups.setdefault(array.shape, []).append(p)
    out = {}
    for group in groups.values():
        t0 = time.perf_counter()
        keys = jax.numpy.stack([jax.random.PRNGKey(args.seed)] * len(group))
        result = mc_sample_batch(volume_fn, np.stack([images[p] for p in group]), keys, n_samples=args.n_samples,
                                 chunk_size=args.chunk, keep_samples=estimator.needs == "samples", devices=mesh)
        seconds = (time.perf_counter() - t0) / len(group)
        for i, p in enumerate(group):
            out[p] = (result_from_canonical(jax.tree_util.tree_map(operator.itemgetter(i), result),
                                            volumes[p].affine), seconds)
    return out


def run_refine_batch(args: argparse.Namespace) -> int:
    """Refine every image of a folder, resumably, over this process's devices and its share of the folder.

    Each batch of ``--batch-size`` volumes is loaded (MC dropout or sample maps), refined with the GCN fits
    spread over ``--devices`` and written per case before the next batch starts; cases whose folder is
    finished are skipped, so an interrupted run continues where it stopped. With several processes
    (``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``, or SLURM), each process takes
    ``sorted(images)[process_id::num_processes]`` and process 0 writes ``summary.json`` once all are done.
    """
    from ugcn.parallel import (
        barrier,
        describe,
        device_mesh,
        initialize_distributed,
        mesh_size,
        padded_size,
        process_slice,
    )
    from ugcn.parallel.resume import SETTINGS_KEY, case_state, normalized_settings

    initialize_distributed()
    import jax
    from tqdm.auto import tqdm

    from ugcn.io import case_name, image_folder
    from ugcn.refine.pipeline import refine_batch

    config = _config(args)
    folder = Path(args.images)
    images = image_folder(folder)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    mesh = device_mesh(args.devices)
    settings = normalized_settings(_settings(config, args))
    mine = process_slice(images)
    states = {p: case_state(out_dir / case_name(p), settings, overwrite=args.overwrite) for p in mine}  # fail early
    todo = [p for p in mine if states[p] == "todo"]
    size = padded_size(min(args.batch_size, max(len(todo), 1)), mesh_size(mesh))
    if not args.quiet:
        where = f"process {jax.process_index()} of {jax.process_count()}: " if jax.process_count() > 1 else ""
        print(f"refine-batch: {where}{len(todo)} of {len(mine)} volumes to refine ({len(mine) - len(todo)} "
              f"finished, skipped); {describe(mesh, min(size, len(todo)))} per batch of {size}")
    model, volume_fn = _load_model(args) if todo else (None, None)
    batches = [todo[k : k + size] for k in range(0, len(todo), size)]
    for batch in tqdm(batches, desc="batches", disable=args.quiet or len(batches) < 2):
        mc = _cohort_mc(args, batch, volume_fn, mesh) if model is not None else {}
        loaded = []
        for path in batch:
            stem = case_name(path)
            t0 = time.perf_counter()
            samples = _find(args.samples_dir, stem, "sample maps", ("", "_samples")) if args.samples_dir else None
            mc_result, mc_s = mc.get(path, (None, 0.0))
            x, image, source = load_refine_inputs(
                args, path, samples, _find(args.predictions, stem, "prediction"), _find(args.labels, stem, "label"),
                model, volume_fn, mc_result,
            )
            loaded.append((stem, x, image, source, time.perf_counter() - t0 + mc_s))
        # One seed for every volume: a case's result depends on neither the batch nor the device count, and
        # equals what `ugcn refine --seed` gives for it alone.
        results = refine_batch([x for _, x, *_ in loaded], config=config, seeds=[args.seed] * len(loaded),
                               crf=args.crf, batch_size=size, uncertainty_name=args.uncertainty, progress=False,
                               devices=mesh)
        for (stem, _x, image, source, mc_s), result in zip(loaded, results):
            report = {**_report(result, source, config, args, mc_s), SETTINGS_KEY: settings}
            _write_case(out_dir / stem, result, image, report)
            if not args.quiet:
                _print_summary(stem, result)
    barrier("ugcn refine-batch: every process done")
    if jax.process_index() == 0:
        summary = _write_summary(out_dir, [case_name(p) for p in images])
        if summary["pending"] and not args.quiet:
            print(f"refine-batch: {len(summary['pending'])} volume(s) still pending: {', '.join(summary['pending'])}")
    return 0
