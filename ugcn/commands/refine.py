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
``expectation_mask.nii.gz`` (``E > 0.5`` in the ROI), ``prediction.nii.gz`` (``Ŷ``, largest component),
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
from pathlib import Path
from typing import Any

import numpy as np

from ugcn import __version__
from ugcn.commands.options import Batching, Sampling, add_config_file_option, add_config_options, resolve_options
from ugcn.config import config_to_dict, setting

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


def _load_model(args):
    """``(model, stochastic volume_fn)`` for ``--model`` (one function object: the sampler caches per function)."""
    if not args.model:
        return None, None
    from ugcn.segment.checkpoint import load_model
    from ugcn.segment.model import make_volume_fn

    model = load_model(args.model)
    return model, make_volume_fn(model, stochastic=True)


def _write_outputs(folder: Path, result, image, report: dict) -> dict:
    """Every mask of ``result`` into ``folder``; ``report`` with the file names (``report.json`` is written by
    the caller)."""
    from ugcn.refine.outputs import write_masks

    return {**report, "files": write_masks(folder, result, image.affine, header=image.header) + [REPORT]}


def _report(result, source: dict, config, args) -> dict:
    # seed, chunk, crf (and n_samples, in source) at the top level, the RefineConfig under "config": what
    # `ugcn refine --config report.json` reads back
    source = dict(source)
    seconds = source.pop("seconds", 0.0)
    rep = {"ugcn_version": __version__, **source, "seed": args.seed, "chunk": args.chunk, "crf": bool(args.crf),
           "config": config_to_dict(config)}
    rep.update(result.report())
    rep["timings_s"]["inputs_and_mc"] = round(seconds, 4)
    return rep


def _print_summary(name: str, result) -> None:
    g = result.graph_stats
    line = f"refine {name}: {result.status}"
    if result.selection.get("variant"):
        line += f" (graph {result.selection['variant']})"
    if g:
        line += f", {g['nodes']} nodes ({g['unlabelled']} uncertain), {g['edges']} edges"
    if result.changes:
        line += f", +{result.changes['added']} / -{result.changes['removed']} voxels"
    if result.dice:
        line += ", Dice " + " ".join(f"{k}={v:.4f}" for k, v in result.dice.items())
    print(line)
    for m in result.messages:
        print(f"  note: {m}")


def run_refine(args: argparse.Namespace) -> int:
    from ugcn.io import atomic_directory, check_replaceable
    from ugcn.refine.inputs import load_refine_inputs
    from ugcn.refine.pipeline import refine_volume

    config = _config(args)
    out_dir = Path(args.out)
    check_replaceable(out_dir, overwrite=args.overwrite, marker=REPORT)  # fail before the heavy work
    model, volume_fn = _load_model(args)
    x, image, source = load_refine_inputs(
        args.image, uncertainty=args.uncertainty, samples_path=args.samples, model=model, model_path=args.model,
        volume_fn=volume_fn, prediction_path=args.prediction, label_path=args.label, n_samples=args.n_samples,
        chunk_size=args.chunk, seed=args.seed)
    result = refine_volume(x.image, x.prediction, x.expectation, x.uncertainty, config=config, seed=args.seed,
                           label=x.label, crf=args.crf, uncertainty_name=args.uncertainty, spacing=x.spacing)
    # The whole folder is built in a temporary sibling and swapped in: never half a result nor a file of an
    # earlier run (e.g. its crf.nii.gz).
    with atomic_directory(out_dir, overwrite=args.overwrite, marker=REPORT) as tmp:
        report = _write_outputs(tmp, result, image, _report(result, source, config, args))
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
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


def _case_summary(rep: dict) -> dict:
    """A case's entry in ``summary.json``: status, chosen variant, self-check scores, Dice, graph counts."""
    check, changes = rep.get("selfcheck") or {}, rep.get("changes") or {}
    return {
        "status": rep.get("status"), "variant": (rep.get("selection") or {}).get("variant"),
        "validation_balanced_accuracy": check.get("validation_balanced_accuracy"),
        "validation_dice": check.get("validation_dice"),
        "added": changes.get("added"), "removed": changes.get("removed"),
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


def run_refine_batch(args: argparse.Namespace) -> int:
    """Refine every image of a folder, resumably, over this process's devices and its share of the folder
    (:func:`ugcn.commands.folder.run_image_folder`).

    Each batch of ``--batch-size`` volumes is loaded (MC dropout of the batch sharded over ``--devices``, or
    the sample maps), refined with the GCN fits spread over the devices and written per case before the next
    batch starts. One seed for every volume: a case's result depends on neither the batch nor the device
    count, and equals what ``ugcn refine --seed`` gives for it alone.
    """
    from ugcn.commands.folder import run_image_folder
    from ugcn.io import case_name

    config = _config(args)

    def prepare(mesh, size):
        from ugcn.refine.inputs import sample_refine_inputs
        from ugcn.refine.pipeline import refine_batch

        model, volume_fn = _load_model(args)

        def process(batch):
            loaded = sample_refine_inputs(
                batch, uncertainty=args.uncertainty, samples_dir=args.samples_dir, model=model,
                model_path=args.model, volume_fn=volume_fn, predictions_dir=args.predictions,
                labels_dir=args.labels, n_samples=args.n_samples, chunk_size=args.chunk, seed=args.seed,
                devices=mesh if model is not None else None)
            results = refine_batch([x for x, _, _ in loaded], config=config, seeds=[args.seed] * len(loaded),
                                   crf=args.crf, batch_size=size, uncertainty_name=args.uncertainty,
                                   progress=False, devices=mesh)
            out = []
            for path, (_x, image, source), result in zip(batch, loaded, results):
                if not args.quiet:
                    _print_summary(case_name(path), result)
                report = _report(result, source, config, args)
                out.append((case_name(path), lambda folder, r=result, i=image, rep=report:
                            _write_outputs(folder, r, i, rep)))
            return out

        return process

    return run_image_folder(args, command="refine-batch", settings=_settings(config, args), prepare=prepare,
                            case_summary=_case_summary, aggregate=_cohort_figures, verb="refine", quiet=args.quiet)
