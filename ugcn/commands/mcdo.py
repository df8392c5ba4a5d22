"""``ugcn mcdo``: Monte Carlo dropout of a trained model on one image, with voxel-wise uncertainty maps.

Writes into ``--out``: ``prediction.nii.gz`` (deterministic pass, argmax, uint8), ``expectation.nii.gz``
(foreground E for binary models, 4D ``(X, Y, Z, C)`` otherwise), one ``<estimator>.nii.gz`` per requested
estimator, optionally the samples, and ``report.json`` (settings, timings, map summaries). All maps carry
the image's affine and header. With ``--samples`` the T probability maps of any other framework
(a 4D NIfTI ``(X, Y, Z, T)``) replace the model; the prediction is then the argmax of E. With
``--source tta`` the samples come from test-time augmentation (flips and small shifts, dropout off) instead
of MC dropout, so a model trained without dropout can be studied too. ``--images DIR`` samples a whole
folder: one resumable ``OUT/<case>/`` per image with the files of ``--image`` (same seed: same maps), the
MC dropout of same-shaped volumes sharded over ``--devices``, and ``OUT/summary.json``. A 3D model tiles
the image with its patches (the model's patch overlap, 0.25 by default, Gaussian blending; docs/method.md
gives the measured cost of each overlap).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ugcn import __version__
from ugcn.commands.options import Batching, SampleSource, Sampling, add_config_file_option, add_config_options
from ugcn.config import config_to_dict, setting
from ugcn.uncertainty.estimators import DEFAULT_ESTIMATORS


@dataclasses.dataclass(frozen=True)
class McdoRun:
    """Which maps.

    Attributes:
      estimators: estimator names or 'package.module:function' specs (see ugcn estimators list).
      save_samples: also write the samples (4D NIfTI).
    """

    estimators: tuple[str, ...] = setting(DEFAULT_ESTIMATORS, metavar="NAME")
    save_samples: bool = False


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "mcdo",
        help="Monte Carlo dropout: expectation and uncertainty maps of one image",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    src = p.add_argument_group("input (--model with --image or --images, or --samples)")
    src.add_argument("--model", metavar="MODEL_DIR", help="a model directory written by `ugcn train`")
    src.add_argument("--image", metavar="IMG", help="image NIfTI, 3D (X, Y, Z) or 4D (X, Y, Z, modalities)")
    src.add_argument("--images", metavar="DIR", help="instead of --image: every image of a folder, one sub-folder "
                     "of --out each (resumable, volumes sharded over --devices)")
    src.add_argument(
        "--samples",
        metavar="SAMPLES_4D",
        help="instead of a model: 4D NIfTI (X, Y, Z, T) of T foreground probability maps from any framework",
    )
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    add_config_options(p, Sampling, name="sampling", title="stochastic passes (with --model)")
    add_config_options(p, SampleSource, name="source_config", title="sample source", record="settings")
    add_config_options(p, McdoRun, name="run_config", title="maps", record="settings")
    add_config_options(p, Batching, name="batching", title="folder processing (with --images)")
    add_config_file_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")
    p.set_defaults(run=run)


def _case(sampled, estimators, save_samples: bool, out_dir: Path, overwrite: bool) -> tuple[dict, dict, dict]:
    """One volume's outputs: ``(arrays {output: array}, files {output: file name}, report fields)``."""
    from ugcn.uncertainty.outputs import map_summary, plan_outputs

    names = [e.name for e in estimators]
    num_classes, mean = sampled.num_classes, sampled.expectation
    files = plan_outputs(out_dir, names, save_samples, num_classes if num_classes > 2 else 0, overwrite)
    arrays: dict[str, np.ndarray] = {"prediction": sampled.prediction,
                                     "expectation": mean[..., 1] if num_classes == 2 else mean}
    arrays.update({f"estimator:{n}": sampled.maps[n] for n in names})
    if save_samples:
        host = np.asarray(sampled.samples)
        if num_classes == 2:
            arrays["samples"] = np.moveaxis(host[..., 1], 0, -1)  # (X, Y, Z, T)
        else:
            arrays.update({f"samples:{c}": np.moveaxis(host[..., c], 0, -1) for c in range(num_classes)})
    fg = sampled.prediction > 0
    fields = {
        "shape": list(mean.shape[:3]), "num_classes": int(num_classes), "n_samples": sampled.n_samples,
        "predicted_voxels": int(fg.sum()),
        "estimators": {e.name: {"file": files[f"estimator:{e.name}"], "description": e.description,
                                "value_range": e.value_range, "higher_is_uncertain": e.higher_is_uncertain,
                                **map_summary(sampled.maps[e.name], fg)} for e in estimators},
        "files": dict(files),
    }
    return arrays, files, fields


def _save(folder: Path, arrays: dict, files: dict, reference) -> None:
    from ugcn.io import save_volume

    for key, array in arrays.items():
        save_volume(folder / files[key], array, reference.affine, header=reference.header)


def _settings(args) -> dict:
    # with n_samples, chunk and seed: what --config reads back
    return {**config_to_dict(args.source_config), **config_to_dict(args.run_config)}


def run(args: argparse.Namespace) -> int:
    import jax

    from ugcn.io import atomic_directory, load_image
    from ugcn.uncertainty.estimators import parse_estimator_names
    from ugcn.uncertainty.outputs import plan_outputs
    from ugcn.uncertainty.sampling import load_sample_maps
    from ugcn.uncertainty.sources import from_model, from_samples

    if args.images:
        return run_folder(args)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    if args.samples and (args.model or args.image):
        raise ValueError("give either --samples or --model with --image, not both")
    if not args.samples and not (args.model and args.image):
        raise ValueError("--model and --image are required (or give --samples)")
    if args.samples and args.source != "mc":
        raise ValueError("--source applies to --model with --image; --samples brings its own samples")
    estimators = parse_estimator_names(args.estimators)
    keep = args.save_samples or any(e.needs == "samples" for e in estimators)
    out_dir = Path(args.out)
    plan_outputs(out_dir, [e.name for e in estimators], False, 0, args.overwrite)  # fail early, before the work

    t = time.perf_counter()
    if args.samples:
        samples_np, reference = load_sample_maps(args.samples)  # the outputs take the maps' grid and header
        sampled = from_samples(samples_np, estimators, keep_samples=keep, source={"file": str(args.samples)})
        source = {"samples": str(args.samples), "source": "samples"}
    else:
        from ugcn.segment.checkpoint import load_model

        model = load_model(args.model)
        reference = load_image(args.image)  # nnU-Net's channel files stacked
        timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # The model runs on the image in RAS+ order; every map comes back in the file's voxel order.
        sampled = from_model(model, reference.array, estimators, method=args.source, key=jax.random.key(args.seed),
                             seed=args.seed, n_samples=args.n_samples, chunk_size=args.chunk,
                             tta_max_shift=args.tta_max_shift, affine=reference.affine, keep_samples=keep)
        source = {"model": str(args.model), "image": str(args.image), "source": args.source}
        if "tta" in sampled.source:
            source["tta"] = sampled.source["tta"]
    timings["load_s" if args.samples else f"{args.source}_sampling_s"] = time.perf_counter() - t
    arrays, files, fields = _case(sampled, estimators, args.save_samples, out_dir, args.overwrite)
    report = {"ugcn_version": __version__, **source, **fields, "chunk": args.chunk, "seed": args.seed,
              "settings": _settings(args), "device": str(jax.devices()[0]), "timings": timings}

    # The whole folder is built in a temporary sibling and swapped in: no half outputs, no stale files.
    with atomic_directory(out_dir, overwrite=args.overwrite, marker=files["report"]) as tmp:
        t = time.perf_counter()
        _save(tmp, arrays, files, reference)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        (tmp / files["report"]).write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        print(
            f"mcdo: T={sampled.n_samples} passes, {sampled.num_classes} classes, {fields['predicted_voxels']} "
            f"predicted voxels; wrote {len(files)} files to {out_dir} in {timings['total_s']:.1f} s"
        )
    return 0


def _case_summary(rep: dict) -> dict:
    """A case's entry in ``summary.json``: predicted voxels and each map's mean inside the prediction."""
    return {"predicted_voxels": rep.get("predicted_voxels"),
            "estimators": {k: v.get("mean_in_prediction") for k, v in rep.get("estimators", {}).items()}}


def run_folder(args: argparse.Namespace) -> int:
    """``ugcn mcdo --images DIR``: MC dropout of every image of a folder, resumably
    (:func:`ugcn.commands.folder.run_image_folder`); each case folder holds the files of a single-image run
    (same seed: same maps), the MC dropout of a batch's same-shaped volumes sharded over ``--devices``."""
    from ugcn.commands.folder import run_image_folder
    from ugcn.io import case_name
    from ugcn.parallel import describe
    from ugcn.uncertainty.estimators import parse_estimator_names

    if args.image or args.samples or not args.model:
        raise ValueError("--images takes --model (not --image or --samples)")
    if args.source != "mc":
        raise ValueError("--images supports MC dropout (--source mc) only")
    estimators = parse_estimator_names(args.estimators)
    keep = args.save_samples or any(e.needs == "samples" for e in estimators)
    settings = {"model": str(Path(args.model).resolve()), "n_samples": args.n_samples, "seed": args.seed,
                "estimators": [e.name for e in estimators], "save_samples": args.save_samples}

    def prepare(mesh, size):
        from ugcn.io import load_image
        from ugcn.segment.checkpoint import load_model
        from ugcn.segment.model import make_volume_fn
        from ugcn.uncertainty.sources import from_model_batch

        model = load_model(args.model)
        volume_fn = make_volume_fn(model, stochastic=True)

        def process(batch):
            t = time.perf_counter()
            volumes = [load_image(p) for p in batch]  # nnU-Net's channel files stacked
            load_s = (time.perf_counter() - t) / len(batch)
            t = time.perf_counter()
            records = from_model_batch(model, [v.array for v in volumes], estimators,
                                       affines=[v.affine for v in volumes], seed=args.seed,
                                       n_samples=args.n_samples, chunk_size=args.chunk, keep_samples=keep,
                                       devices=mesh, volume_fn=volume_fn)
            mc_s = (time.perf_counter() - t) / len(batch)  # per volume, the batch shared
            out = []
            for path, volume, sampled in zip(batch, volumes, records):
                def write(folder, path=path, volume=volume, sampled=sampled):
                    t_case = time.perf_counter()
                    arrays, files, fields = _case(sampled, estimators, args.save_samples, folder, True)
                    _save(folder, arrays, files, volume)
                    return {"ugcn_version": __version__, "model": str(args.model), "image": str(path), **fields,
                            "chunk": args.chunk, "seed": args.seed, "settings": _settings(args),
                            "devices": describe(mesh, len(batch)),
                            "timings": {"load_s": load_s, "mc_sampling_s": mc_s,
                                        "write_and_maps_s": time.perf_counter() - t_case}}

                out.append((case_name(path), write))
            return out

        return process

    return run_image_folder(args, command="mcdo", settings=settings, prepare=prepare, case_summary=_case_summary,
                            verb="sample", quiet=args.quiet)
