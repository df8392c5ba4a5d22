"""``ugcn lesions fit|score|evaluate``: lesion-wise uncertainty (method L) from the command line.

* ``fit``: MC dropout of a trained segmentation model on a labelled data set, lesions and their
  ``IoU_adj`` targets, then a lesion GCNN (classification or regression), MetaSeg and the shape baseline,
  saved to ``--out`` with a ``report.json`` of the settings (``--config`` reruns them).
* ``score``: one image -> a case folder (``--out``, written whole): ``lesions.csv`` with one row per
  predicted lesion (id, size = voxel count, centroid, the GCNN score, every aggregation baseline: mean/logsum
  of each estimator, ``size_score`` = 1/size, and the MetaSeg and shape baselines saved with the lesion
  model), ``lesion_uncertainty.nii.gz`` (each lesion's voxels hold its GCNN uncertainty), ``lesions.nii.gz``
  (the lesion ids, the table's rows), ``prediction.nii.gz`` (the predicted mask) and ``report.json`` (the
  settings: ``--config`` reruns them). ``--images DIR`` scores a whole folder: one resumable sub-folder per
  image with the same files, MC dropout and lesion batches spread over ``--devices``, and several processes
  (``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``) each taking a slice of the images.
* ``evaluate``: the k-fold protocol (train a 3D U-Net per fold, MC dropout, or read ``--samples-dir``; fit on
  validation lesions, score test lesions with every method): pooled AUCs with subject-bootstrap intervals,
  differences to the best baseline, retention AUCs, per-fold Dice and validation/test TP/FP counts (folds with
  fewer than ``--min-val-fp`` validation FP lesions flagged and left out), curves, and per test case the
  predicted mask, lesion ids and uncertainty maps.

The lesion demo (``ugcn demo --task lesions``) is :func:`ugcn.demo.run_lesion_demo`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from ugcn import __version__
from ugcn.commands.options import Batching, Sampling, add_config_file_option, add_config_options
from ugcn.config import config_to_dict, setting
from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS
from ugcn.io import case_name
from ugcn.lesion.protocol import MASK_SOURCES
from ugcn.lesion.scoring import SCORE_BATCH, LesionScorer

REPORT = "report.json"


@dataclasses.dataclass(frozen=True)
class LesionMask:
    """The predicted lesions.

    Attributes:
      mask_from: predicted mask: mean = the MC expectation > 0.5; deterministic = the dropout-off prediction.
      estimators: uncertainty maps used as node features and baseline aggregations (names or
        'package.module:function' specs).
    """

    mask_from: str = setting("mean", choices=MASK_SOURCES)
    estimators: tuple[str, ...] = setting(DEFAULT_ESTIMATORS, metavar="NAME")


def _add_common(p: argparse.ArgumentParser, *, mask: bool = True, estimators: bool = True) -> None:
    if mask:  # evaluate: the protocol's config holds these
        add_config_options(p, Sampling, name="sampling", title="MC dropout")
        add_config_options(p, LesionMask, name="mask_config", title="lesions", record="settings",
                           exclude=() if estimators else ("estimators",))
        add_config_file_option(p, "the report.json of an earlier run (in the lesion model folder for fit, in the "
                               "output folder for score)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def register(subparsers) -> None:
    from ugcn.experiments.lesion_protocol import LesionProtocolConfig
    from ugcn.lesion.gcnn import GCNNConfig

    parser = subparsers.add_parser(
        "lesions", help="lesion-wise uncertainty with a graph network (method L)",
        description="Lesion-wise uncertainty: connected components of the predicted mask, one graph per "
        "lesion, a GCNN trained on validation lesions, and the mean/logsum/size/MetaSeg baselines.",
    )
    sub = parser.add_subparsers(dest="lesions_command", metavar="ACTION", parser_class=type(parser))
    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])

    fit = sub.add_parser("fit", help="fit a lesion GCNN on a labelled data set with a trained U-Net")
    fit.add_argument("--data", required=True, help="labelled data set folder (Decathlon layout, ...)")
    fit.add_argument("--model", required=True, help="trained segmentation model folder (ugcn train)")
    fit.add_argument("--out", required=True, help="output folder of the lesion model")
    add_config_options(fit, GCNNConfig, name="gcnn_config", title="lesion GCNN", record="gcnn", prefix="gcnn-",
                       flags={"task": "task"}, exclude=("seed", "feature_names"))
    _add_common(fit)
    fit.set_defaults(run=run_fit)

    score = sub.add_parser("score", help="score every predicted lesion of one image")
    score.add_argument("--image", help="input image (.nii/.nii.gz)")
    score.add_argument("--images", metavar="DIR", help="instead of --image: every image of a folder, one "
                       "sub-folder of --out each (resumable, MC dropout and scoring spread over --devices)")
    score.add_argument("--model", help="trained segmentation model folder (MC dropout; or give --samples)")
    score.add_argument("--samples", metavar="SAMPLES_4D",
                       help="with --image, instead of --model: a 4D NIfTI (X, Y, Z, T) of T foreground probability "
                       "maps of any model (MC samples); the lesions are those of their mean > 0.5")
    score.add_argument("--lesion-model", required=True, help="lesion model folder (ugcn lesions fit)")
    score.add_argument("--out", required=True, help="output folder")
    add_config_options(score, Batching, name="batching", title="folder processing (--images) and devices")
    _add_common(score, estimators=False)  # the lesion model's own estimators
    score.set_defaults(run=run_score)

    ev = sub.add_parser("evaluate", help="k-fold evaluation of every lesion-uncertainty method")
    ev.add_argument("--data", required=True, help="labelled data set folder")
    ev.add_argument("--out", required=True, help="output folder of the results")
    add_config_options(ev, LesionProtocolConfig, name="protocol_config", title="protocol (defaults: docs/method.md)",
                       record="config", flags={"mc_samples": "n-samples", "mc_chunk": "chunk", "seed": "seed",
                                               "unet_patch": "unet-patch-size", "n_bootstrap": "bootstrap",
                                               "write_cases": "cases"})
    add_config_file_option(ev, "the results.json of an earlier run")
    _add_common(ev, mask=False)
    ev.set_defaults(run=run_evaluate)


def _lesions_of_cases(cases, model, *, estimators, args, progress: bool):
    import jax
    from tqdm.auto import tqdm

    from ugcn.data import load_case
    from ugcn.experiments.lesion_protocol import mc_uncertainty
    from ugcn.lesion.protocol import case_lesions
    from ugcn.segment import make_volume_fn

    volume_fn = make_volume_fn(model, stochastic=True)
    key = jax.random.PRNGKey(args.seed)
    out = []
    for i, case in enumerate(tqdm(cases, desc="MC dropout", disable=not progress)):
        image, label = load_case(case)
        pred, maps = mc_uncertainty(model, image.array, jax.random.fold_in(key, i), estimators=estimators,
                                    n_samples=args.n_samples, chunk_size=args.chunk, mask_from=args.mask_from,
                                    volume_fn=volume_fn, affine=image.affine)
        out.append(case_lesions(case.name, image.array, pred, maps, None if label is None else label.array,
                                affine=image.affine, estimators=estimators))
    return out


def run_fit(args) -> int:
    from ugcn.data import find_cases
    from ugcn.io import check_replaceable
    from ugcn.lesion.baselines import (
        SIDE_LEARNERS_FILE,
        fit_metaseg,
        fit_shape_baseline,
        metaseg_features,
        shape_features,
        side_learners_text,
    )
    from ugcn.lesion.gcnn import CONFIG_FILE, fit_gcnn, save_lesion_model
    from ugcn.lesion.protocol import merge_cases
    from ugcn.segment import load_model

    out = check_replaceable(args.out, overwrite=args.overwrite, marker=CONFIG_FILE)  # fail before the work
    estimators = tuple(args.estimators)
    model = load_model(args.model)
    cases = find_cases(args.data)
    lesions = merge_cases(_lesions_of_cases(cases, model, estimators=estimators, args=args,
                                            progress=not args.no_progress))
    if lesions.n == 0:
        raise ValueError(f"{args.data}: the model predicts no lesion in any case; nothing to fit on")
    gcnn = {k: v for k, v in dataclasses.asdict(args.gcnn_config).items() if k not in ("seed", "feature_names")}
    lesion_model = fit_gcnn(lesions.graphs, lesions.iou_adj, **gcnn, seed=args.seed,
                            progress=not args.no_progress)
    side = {"metaseg": fit_metaseg(metaseg_features(lesions.stats, estimators), lesions.iou_adj,
                                   estimators=estimators),
            "shape": fit_shape_baseline(shape_features(lesions.stats), lesions.iou_adj)}
    # n_samples, chunk, seed, settings and gcnn: what `ugcn lesions fit --config report.json` reads back
    report = {"ugcn_version": __version__, "data": str(args.data), "model": str(args.model),
              "n_samples": args.n_samples, "chunk": args.chunk, "seed": args.seed,
              "settings": {"mask_from": args.mask_from, "estimators": list(estimators)},
              "gcnn": config_to_dict(args.gcnn_config), "cases": len(cases), "lesions": int(lesions.n),
              "fp_lesions": int(lesions.is_fp.sum())}
    save_lesion_model(lesion_model, out, overwrite=args.overwrite,
                      extra_files={SIDE_LEARNERS_FILE: side_learners_text(side),
                                   REPORT: json.dumps(report, indent=2) + "\n"})
    print(f"lesion model ({args.task}) and the MetaSeg and shape baselines fitted on {lesions.n} lesions of "
          f"{len(cases)} cases ({int(lesions.is_fp.sum())} FP); written to {out}")
    return 0


def _score_report(args, image_path, source: dict, fields: dict) -> dict:
    # n_samples, chunk, seed (top level) and settings: what `ugcn lesions score --config report.json` reads back
    return {"ugcn_version": __version__, "image": str(image_path), **source,
            "lesion_model": str(args.lesion_model), "n_samples": args.n_samples, "chunk": args.chunk,
            "seed": args.seed, "settings": {"mask_from": args.mask_from}, **fields,
            "files": fields["files"] + [REPORT]}


def run_score(args) -> int:
    import jax

    from ugcn.experiments.lesion_protocol import mc_uncertainty
    from ugcn.io import atomic_directory, check_replaceable, load_image
    from ugcn.parallel import describe, device_mesh
    from ugcn.segment import load_model, make_volume_fn
    from ugcn.uncertainty.sources import from_sample_file

    if bool(args.image) == bool(args.images):
        raise ValueError("give either --image or --images")
    if args.samples and (args.images or args.model):
        raise ValueError("--samples goes with --image and replaces --model")
    if not args.samples and not args.model:
        raise ValueError("give --model (MC dropout) or --samples (the sample maps of any model)")
    if args.samples and args.mask_from != "mean":
        raise ValueError("--mask-from deterministic needs --model; with --samples the mask is their mean > 0.5")
    if args.images:
        return run_score_folder(args)
    out = Path(args.out)
    check_replaceable(out, overwrite=args.overwrite, marker=REPORT)  # fail before the heavy work
    mesh = device_mesh(args.devices)  # a bad count fails early too
    scorer = LesionScorer.load(args.lesion_model)
    image = load_image(args.image)  # nnU-Net's channel files stacked
    scorer.check_channels(args.image, image.array)
    if args.samples:
        sampled = from_sample_file(args.samples, list(scorer.estimators), reference=image, keep_samples=False)
        pred, maps = (sampled.prediction > 0).astype(np.uint8), sampled.maps
        source = {"samples": str(args.samples)}
    else:
        model = load_model(args.model)
        pred, maps = mc_uncertainty(model, image.array, jax.random.PRNGKey(args.seed), estimators=scorer.estimators,
                                    n_samples=args.n_samples, chunk_size=args.chunk, mask_from=args.mask_from,
                                    volume_fn=make_volume_fn(model, stochastic=True), affine=image.affine)
        source = {"model": str(args.model)}
    print(f"lesions score: {describe(mesh, 1).split(',')[0]} for the lesion batches (up to {SCORE_BATCH} "
          "lesions each)")
    with atomic_directory(out, overwrite=args.overwrite, marker=REPORT) as tmp:
        fields = scorer.write(tmp, image, pred, maps, case_name(args.image), devices=mesh)
        report = _score_report(args, args.image, source, fields)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['lesions']} lesion(s); written to {out}: {', '.join(report['files'])}")
    return 0


def run_score_folder(args) -> int:
    """``lesions score --images DIR``: every image, resumably (:func:`ugcn.commands.folder.run_image_folder`):
    the MC dropout of a batch's same-shaped volumes sharded over the devices, one ``OUT/<case>/`` per image
    with the files of ``--image``, ``OUT/summary.json``."""
    from ugcn.commands.folder import run_image_folder

    settings = {"model": str(Path(args.model).resolve()), "lesion_model": str(Path(args.lesion_model).resolve()),
                "mc_samples": args.n_samples, "seed": args.seed, "mask_from": args.mask_from}

    def prepare(mesh, size):
        from ugcn.io import load_image
        from ugcn.segment import load_model, make_volume_fn
        from ugcn.uncertainty.sources import from_model_batch

        scorer = LesionScorer.load(args.lesion_model)
        model = load_model(args.model)
        volume_fn = make_volume_fn(model, stochastic=True)

        def process(batch):
            volumes = [load_image(p) for p in batch]
            for p, v in zip(batch, volumes):
                scorer.check_channels(p, v.array)
            records = from_model_batch(model, [v.array for v in volumes], list(scorer.estimators),
                                       affines=[v.affine for v in volumes], seed=args.seed, n_samples=args.n_samples,
                                       chunk_size=args.chunk, devices=mesh, volume_fn=volume_fn,
                                       prediction="mean" if args.mask_from == "mean" else "deterministic")
            out = []
            for path, volume, sampled in zip(batch, volumes, records):
                def write(folder, path=path, volume=volume, sampled=sampled):
                    pred = (sampled.prediction > 0).astype(np.uint8)
                    fields = scorer.write(folder, volume, pred, sampled.maps, case_name(path), devices=mesh)
                    return _score_report(args, path, {"model": str(args.model)}, fields)

                out.append((case_name(path), write))
            return out

        return process

    return run_image_folder(args, command="lesions score", settings=settings, prepare=prepare,
                            case_summary=lambda rep: {"lesions": rep.get("lesions")}, verb="score",
                            quiet=args.no_progress)


def run_evaluate(args) -> int:
    from ugcn.experiments.lesion_protocol import run_protocol

    config = args.protocol_config
    result = run_protocol(args.data, config, out_dir=args.out, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(result.markdown())
    print(f"written to {args.out} ({result.seconds:.0f} s)")
    return 0
