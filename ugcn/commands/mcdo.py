"""``ugcn mcdo``: Monte Carlo dropout of a trained model on one image, with voxel-wise uncertainty maps.

Writes into ``--out``: ``prediction.nii.gz`` (deterministic pass, argmax, uint8), ``expectation.nii.gz``
(foreground E for binary models, 4D ``(X, Y, Z, C)`` otherwise), one ``<estimator>.nii.gz`` per requested
estimator, optionally the samples, and ``report.json`` (settings, timings, map summaries). All maps carry
the image's affine and header. With ``--samples`` the T probability maps of any other framework
(a 4D NIfTI ``(X, Y, Z, T)``) replace the model; the prediction is then the argmax of E. With
``--source tta`` the samples come from test-time augmentation (flips and small shifts, dropout off) instead
of MC dropout, so a model trained without dropout can be studied too.
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





def run(args: argparse.Namespace) -> int:
    import jax

    from ugcn.io import atomic_directory, load_image, save_volume
    from ugcn.uncertainty.estimators import parse_estimator_names
    from ugcn.uncertainty.outputs import map_summary, plan_outputs
    from ugcn.uncertainty.sampling import load_sample_maps
    from ugcn.uncertainty.sources import from_model, from_samples

    if args.images:
        from ugcn.commands.mcdo_cohort import run_folder

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
    names = [e.name for e in estimators]
    keep = args.save_samples or any(e.needs == "samples" for e in estimators)
    out_dir = Path(args.out)
    plan_outputs(out_dir, names, False, 0, args.overwrite)  # fail early, before any heavy work

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
    prediction, mean, maps, samples, n_samples = (sampled.prediction, sampled.expectation, sampled.maps,
                                                  sampled.samples, sampled.n_samples)
    num_classes = sampled.num_classes

    files = plan_outputs(out_dir, names, args.save_samples, num_classes if num_classes > 2 else 0, args.overwrite)
    affine, header = reference.affine, reference.header
    arrays: dict[str, np.ndarray] = {
        "prediction": prediction,
        "expectation": mean[..., 1] if num_classes == 2 else mean,
    }
    for name in names:
        arrays[f"estimator:{name}"] = maps[name]
    if args.save_samples:
        samples_host = np.asarray(samples)
        if num_classes == 2:
            arrays["samples"] = np.moveaxis(samples_host[..., 1], 0, -1)  # (X, Y, Z, T)
        else:
            for c in range(num_classes):
                arrays[f"samples:{c}"] = np.moveaxis(samples_host[..., c], 0, -1)

    by_name = {e.name: e for e in estimators}
    fg = prediction > 0
    report = {
        "ugcn_version": __version__,
        **source,
        "shape": list(mean.shape[:3]),
        "num_classes": int(num_classes),
        "n_samples": n_samples,
        "chunk": args.chunk,
        "seed": args.seed,
        # with n_samples, chunk and seed: what --config reads back
        "settings": {**config_to_dict(args.source_config), **config_to_dict(args.run_config)},
        "device": str(jax.devices()[0]),
        "predicted_voxels": int(fg.sum()),
        "estimators": {
            name: {
                "file": files[f"estimator:{name}"],
                "description": by_name[name].description,
                "value_range": by_name[name].value_range,
                "higher_is_uncertain": by_name[name].higher_is_uncertain,
                **map_summary(maps[name], fg),
            }
            for name in names
        },
        "files": {k: v for k, v in files.items()},
        "timings": timings,
    }

    # The whole folder is built in a temporary sibling and swapped in: no half outputs, no stale files.
    with atomic_directory(out_dir, overwrite=args.overwrite, marker=files["report"]) as tmp:
        t = time.perf_counter()
        for key, array in arrays.items():
            save_volume(tmp / files[key], array, affine, header=header)
        timings["write_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t_start
        (tmp / files["report"]).write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        print(
            f"mcdo: T={n_samples} passes, {num_classes} classes, {int(fg.sum())} predicted voxels; "
            f"wrote {len(files)} files to {out_dir} in {timings['total_s']:.1f} s"
        )
    return 0
