"""``ugcn lesions fit|score|evaluate``: lesion-wise uncertainty (method L) from the command line.

* ``fit``: MC dropout of a trained segmentation model on a labelled data set, lesions and their
  ``IoU_adj`` targets, then a lesion GCNN (classification or regression), MetaSeg and the shape baseline,
  saved to ``--out``.
* ``score``: one image -> a CSV with one row per predicted lesion (id, size = voxel count, centroid, the GCNN
  score, every aggregation baseline: mean/logsum of each estimator, ``size_score`` = 1/size, and the MetaSeg
  and shape baselines saved with the lesion model) and NIfTI maps where each lesion's voxels
  hold its GCNN uncertainty, plus the lesion labels. ``--images DIR`` scores a whole folder: one resumable
  sub-folder per image, MC dropout and lesion batches spread over ``--devices``, and several processes
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
import csv
import dataclasses
import io
import json
import operator
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ugcn.commands.options import Batching, Sampling, add_config_file_option, add_config_options
from ugcn.config import setting
from ugcn.graph.lesion_graph import DEFAULT_ESTIMATORS
from ugcn.lesion.protocol import MASK_SOURCES

SCORE_BATCH = 64  # lesion graphs per GCNN call when scoring


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
    save_lesion_model(lesion_model, out, overwrite=args.overwrite,
                      extra_files={SIDE_LEARNERS_FILE: side_learners_text(side)})
    print(f"lesion model ({args.task}) and the MetaSeg and shape baselines fitted on {lesions.n} lesions of "
          f"{len(cases)} cases ({int(lesions.is_fp.sum())} FP); written to {out}")
    return 0


def _model_estimators(feature_names: Sequence[str]) -> tuple[tuple[str, ...], int]:
    names = list(feature_names)
    if "label" not in names:
        raise ValueError("the lesion model's feature names lack 'label'; was it made by ugcn lesions fit?")
    at = names.index("label")
    return tuple(names[at + 1 :]), at


def _score_paths(out: Path, stem: str) -> list:
    return [out / f"{stem}_lesions.csv", out / f"{stem}_lesion_uncertainty.nii.gz",
            out / f"{stem}_lesion_labels.nii.gz"]


def _check_channels(path, image, channels: int) -> None:
    got = 1 if image.array.ndim == 3 else image.array.shape[-1]
    if got != channels:
        raise ValueError(f"{path}: {got} channel(s), the lesion model was fitted on {channels}")


def _score_case(stem, image, pred, maps, lesion_model, estimators, mesh, out: Path, overwrite: bool,
                side: Optional[dict] = None) -> int:
    """Lesions of one case, their GCNN and baseline scores, written as ``_score_paths(out, stem)``.

    ``side``: the side learners saved with the lesion model (``{"metaseg": ..., "shape": ...}``; columns
    ``metaseg_classif``, ``metaseg_reg``, ``shape_logreg`` when present). Returns the number of lesions.
    """
    from ugcn.io import save_volume, write_text_atomic
    from ugcn.lesion.baselines import metaseg_features, metaseg_scores, shape_features, shape_scores
    from ugcn.lesion.gcnn import score_lesions
    from ugcn.lesion.protocol import case_lesions

    paths = _score_paths(out, stem)
    case = case_lesions(stem, image.array, pred, maps, affine=image.affine, estimators=estimators)
    gcnn = score_lesions(lesion_model, case.graphs, batch_size=SCORE_BATCH, devices=mesh)
    name = "gcnn_classif" if lesion_model.config.task == "classification" else "gcnn_reg"
    rows = case.table.rows()
    for k, row in enumerate(rows):
        row[name] = float(gcnn[k])
        for e in estimators:
            row[f"{e}_mean"] = float(case.stats[f"{e}_mean"][k])
            row[f"{e}_logsum"] = float(case.stats[f"{e}_logsum"][k])
        row["size_score"] = float(case.stats["size"][k])
    side = side or {}
    extra: dict[str, np.ndarray] = {}
    if "metaseg" in side:
        extra.update(metaseg_scores(side["metaseg"], metaseg_features(case.stats, side["metaseg"].estimators)))
    if "shape" in side:
        extra["shape_logreg"] = shape_scores(side["shape"], shape_features(case.stats))
    for k, row in enumerate(rows):
        row.update({col: float(v[k]) for col, v in extra.items()})
    fields = (["lesion", "size"] + [f"centroid_{a}" for a in "xyz"] + [f"centroid_{a}_mm" for a in "xyz"]
              + [name] + [f"{e}_{agg}" for e in estimators for agg in ("mean", "logsum")] + ["size_score"]
              + list(extra))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    # Lesion k's voxels hold its score; background 0 (a lookup table indexed by the label map).
    uncertainty = np.concatenate([[0.0], gcnn]).astype(np.float32)[case.table.labels]
    save_volume(paths[1], uncertainty, image.affine, header=image.header, overwrite=overwrite)
    save_volume(paths[2], case.table.labels.astype(np.int16), image.affine, header=image.header,
                overwrite=overwrite)
    write_text_atomic(paths[0], buf.getvalue())
    return case.table.n


def run_score(args) -> int:
    import jax

    from ugcn.experiments.lesion_protocol import mc_uncertainty
    from ugcn.io import case_name, check_same_grid, load_image
    from ugcn.lesion.baselines import load_side_learners
    from ugcn.lesion.gcnn import load_lesion_model
    from ugcn.lesion.protocol import uncertainty_from_samples
    from ugcn.parallel import describe, device_mesh
    from ugcn.segment import load_model, make_volume_fn
    from ugcn.uncertainty.sampling import load_sample_maps

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
    mesh = device_mesh(args.devices)  # a bad count fails before the heavy work
    lesion_model = load_lesion_model(args.lesion_model)
    side = load_side_learners(args.lesion_model)
    estimators, channels = _model_estimators(lesion_model.config.feature_names)
    image = load_image(args.image)  # nnU-Net's channel files stacked
    _check_channels(args.image, image, channels)
    out = Path(args.out)
    stem = case_name(args.image)
    paths = _score_paths(out, stem)
    for p in paths:
        if p.exists() and not args.overwrite:
            raise ValueError(f"{p}: exists already (pass --overwrite to replace it)")
    if args.samples:
        samples, maps_volume = load_sample_maps(args.samples)
        check_same_grid(image, maps_volume, what="samples")
        pred, maps = uncertainty_from_samples(samples, estimators=estimators)
    else:
        model = load_model(args.model)
        pred, maps = mc_uncertainty(model, image.array, jax.random.PRNGKey(args.seed), estimators=estimators,
                                    n_samples=args.n_samples, chunk_size=args.chunk, mask_from=args.mask_from,
                                    volume_fn=make_volume_fn(model, stochastic=True), affine=image.affine)
    print(f"lesions score: {describe(mesh, 1).split(',')[0]} for the lesion batches (up to {SCORE_BATCH} lesions each)")
    n = _score_case(stem, image, pred, maps, lesion_model, estimators, mesh, out, args.overwrite, side)
    print(f"{n} lesion(s); written {paths[0]}, {paths[1].name}, {paths[2].name}")
    return 0


def run_score_folder(args) -> int:
    """``lesions score --images DIR``: every image, MC dropout of each batch sharded over the devices (same-shaped
    volumes stacked), one resumable ``OUT/<stem>/`` per case (the files of ``--image`` plus ``report.json``),
    ``OUT/summary.json``; several processes each take their slice of the sorted images."""
    from ugcn.parallel import (
        barrier,
        describe,
        device_mesh,
        initialize_distributed,
        mesh_size,
        padded_size,
        process_slice,
    )

    initialize_distributed()
    import jax
    from tqdm.auto import tqdm

    from ugcn import __version__
    from ugcn.io import atomic_directory, case_name, image_folder, load_image, to_canonical, write_text_atomic
    from ugcn.lesion.baselines import load_side_learners
    from ugcn.lesion.gcnn import load_lesion_model
    from ugcn.parallel.resume import SETTINGS_KEY, case_state, normalized_settings
    from ugcn.segment import load_model, make_volume_fn, predict_probabilities
    from ugcn.uncertainty.cohort import mc_sample_batch
    from ugcn.uncertainty.estimators import estimator_maps
    from ugcn.uncertainty.sampling import result_from_canonical

    folder, out = Path(args.images), Path(args.out)
    images = image_folder(folder)
    mesh = device_mesh(args.devices)
    settings = normalized_settings({
        "model": str(Path(args.model).resolve()), "lesion_model": str(Path(args.lesion_model).resolve()),
        "mc_samples": args.n_samples, "seed": args.seed, "mask_from": args.mask_from})
    mine = process_slice(images)
    todo = [p for p in mine if case_state(out / case_name(p), settings, overwrite=args.overwrite) == "todo"]
    size = padded_size(min(args.batch_size, max(len(todo), 1)), mesh_size(mesh))
    where = f"process {jax.process_index()} of {jax.process_count()}: " if jax.process_count() > 1 else ""
    print(f"lesions score: {where}{len(todo)} of {len(mine)} volumes to score ({len(mine) - len(todo)} finished, "
          f"skipped); {describe(mesh, min(size, len(todo)))} per batch of {size}")
    if todo:
        lesion_model = load_lesion_model(args.lesion_model)
        side = load_side_learners(args.lesion_model)
        estimators, channels = _model_estimators(lesion_model.config.feature_names)
        model = load_model(args.model)
        volume_fn = make_volume_fn(model, stochastic=True)
    batches = [todo[k : k + size] for k in range(0, len(todo), size)]
    for batch in tqdm(batches, desc="batches", disable=args.no_progress or len(batches) < 2):
        volumes = {p: load_image(p) for p in batch}
        canonical = {p: to_canonical(v.array, v.affine) for p, v in volumes.items()}  # the model runs in RAS+
        groups: dict = {}
        for p, v in volumes.items():
            _check_channels(p, v, channels)
            groups.setdefault(canonical[p].shape, []).append(p)
        for group in groups.values():
            keys = jax.numpy.stack([jax.random.PRNGKey(args.seed)] * len(group))  # as `--image` uses
            result = mc_sample_batch(volume_fn, np.stack([canonical[p] for p in group]), keys,
                                     n_samples=args.n_samples, chunk_size=args.chunk, devices=mesh)
            for i, p in enumerate(group):
                mine_i = jax.tree_util.tree_map(operator.itemgetter(i), result)
                stats = result_from_canonical(mine_i, volumes[p].affine).stats  # the file's voxel order
                maps = {k: np.asarray(v, np.float32) for k, v in estimator_maps(list(estimators), stats).items()}
                if args.mask_from == "mean":
                    pred = (np.argmax(np.asarray(stats.sum_p / stats.count), axis=-1) > 0).astype(np.uint8)
                else:
                    probs = predict_probabilities(model, volumes[p].array, volumes[p].affine)
                    pred = (np.argmax(probs, axis=-1) > 0).astype(np.uint8)
                stem = case_name(p)
                with atomic_directory(out / stem, overwrite=True) as tmp:
                    n = _score_case(stem, volumes[p], pred, maps, lesion_model, estimators, mesh, tmp, False, side)
                    report = {"ugcn_version": __version__, "image": str(p), "lesions": n,
                              "files": [q.name for q in _score_paths(tmp, stem)], SETTINGS_KEY: settings}
                    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    barrier("ugcn lesions score --images: every process done")
    if jax.process_index() == 0:
        summary: dict[str, Any] = {"volumes": {}, "pending": []}
        for p in images:
            report_path = out / case_name(p) / "report.json"
            if report_path.is_file():
                summary["volumes"][case_name(p)] = {"lesions": json.loads(report_path.read_text())["lesions"]}
            else:
                summary["pending"].append(case_name(p))
        write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        print(f"lesions score: {len(summary['volumes'])} of {len(images)} volumes done, written to {out}")
    return 0


def run_evaluate(args) -> int:
    from ugcn.experiments.lesion_protocol import run_protocol

    config = args.protocol_config
    result = run_protocol(args.data, config, out_dir=args.out, overwrite=args.overwrite,
                          progress=not args.no_progress)
    print(result.markdown())
    print(f"written to {args.out} ({result.seconds:.0f} s)")
    return 0
