"""``ugcn mcdo --images DIR``: MC dropout of a whole folder, volumes sharded over devices, resumable.

Each image gets ``OUT/<stem>/`` with the files of a single-image ``ugcn mcdo`` run (same seed: same maps),
written whole once its batch is done; ``OUT/summary.json`` lists every case. Images of one shape are
stacked in batches of ``--batch-size`` (rounded up to a multiple of ``--devices``) and sampled with
:func:`ugcn.uncertainty.cohort.mc_sample_batch`: each device runs the T passes of its share of the volumes.
A re-run skips the finished cases; several processes (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
``JAX_PROCESS_ID``, or SLURM) each take their slice of the sorted images.
"""
from __future__ import annotations

import argparse
import json
import operator
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ugcn import __version__
from ugcn.config import config_to_dict


def _case_summary(rep: dict) -> dict:
    """A case's entry in ``summary.json``: predicted voxels and each map's mean inside the prediction."""
    return {"predicted_voxels": rep.get("predicted_voxels"),
            "estimators": {k: v.get("mean_in_prediction") for k, v in rep.get("estimators", {}).items()}}


def _write_summary(out_dir: Path, stems: list) -> dict:
    from ugcn.parallel.resume import write_summary

    return write_summary(out_dir, stems, _case_summary)


def run_folder(args: argparse.Namespace) -> int:
    """The folder mode of ``ugcn mcdo`` (``--images``); see the module docstring."""
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
    import jax.numpy as jnp
    import nibabel as nib
    from tqdm.auto import tqdm

    from ugcn.io import (
        atomic_directory,
        canonical_shape,
        case_name,
        image_folder,
        load_image,
        save_volume,
        to_canonical,
    )
    from ugcn.parallel.resume import SETTINGS_KEY, case_state, normalized_settings
    from ugcn.uncertainty.cohort import mc_sample_batch
    from ugcn.uncertainty.estimators import parse_estimator_names
    from ugcn.uncertainty.outputs import map_summary, plan_outputs
    from ugcn.uncertainty.sampling import result_from_canonical
    from ugcn.uncertainty.sources import summarize

    if args.image or args.samples or not args.model:
        raise ValueError("--images takes --model (not --image or --samples)")
    if getattr(args, "source", "mc") != "mc":
        raise ValueError("--images supports MC dropout (--source mc) only")
    estimators = parse_estimator_names(args.estimators)
    names = [e.name for e in estimators]
    keep = args.save_samples or any(e.needs == "samples" for e in estimators)
    folder, out_dir = Path(args.images), Path(args.out)
    images = image_folder(folder)
    mesh = device_mesh(args.devices)
    settings = normalized_settings({"model": str(Path(args.model).resolve()), "n_samples": args.n_samples,
                                    "seed": args.seed, "estimators": names, "save_samples": args.save_samples})
    mine = process_slice(images)
    todo = [p for p in mine if case_state(out_dir / case_name(p), settings, overwrite=args.overwrite) == "todo"]
    size = padded_size(min(args.batch_size, max(len(todo), 1)), mesh_size(mesh))
    if not args.quiet:
        where = f"process {jax.process_index()} of {jax.process_count()}: " if jax.process_count() > 1 else ""
        print(f"mcdo: {where}{len(todo)} of {len(mine)} volumes to sample ({len(mine) - len(todo)} finished, "
              f"skipped); {describe(mesh, min(size, len(todo)))} per batch of {size}")
    by_shape = defaultdict(list)  # stacking needs one shape (in the model's RAS+ order); the header tells it
    for path in todo:
        header: Any = nib.load(str(path))  # a NIfTI image (nibabel types it generically)
        by_shape[canonical_shape(header.shape, header.affine)].append(path)
    batches = [group[k : k + size] for group in by_shape.values() for k in range(0, len(group), size)]
    if batches:
        from ugcn.segment.checkpoint import load_model
        from ugcn.segment.model import make_volume_fn, predict_probabilities

        model = load_model(args.model)
        volume_fn = make_volume_fn(model, stochastic=True)
    key = jax.random.key(args.seed)  # every volume's key, as `ugcn mcdo --image` would use it
    for batch in tqdm(batches, desc="batches", disable=args.quiet or len(batches) < 2):
        t = time.perf_counter()
        volumes = [load_image(p) for p in batch]  # nnU-Net's channel files stacked
        load_s = (time.perf_counter() - t) / len(batch)
        t = time.perf_counter()
        canonical = np.stack([to_canonical(v.array, v.affine) for v in volumes])
        result = mc_sample_batch(volume_fn, canonical, jnp.stack([key] * len(batch)),
                                 n_samples=args.n_samples, chunk_size=args.chunk, keep_samples=keep, devices=mesh)
        jax.block_until_ready(result)
        mc_s = (time.perf_counter() - t) / len(batch)
        for i, (path, volume) in enumerate(zip(batch, volumes)):
            t_case = time.perf_counter()
            mine_i = result_from_canonical(jax.tree_util.tree_map(operator.itemgetter(i), result), volume.affine)
            stats, samples = mine_i.stats, (mine_i.samples if keep else None)
            probs = predict_probabilities(model, volume.array, volume.affine)
            sampled = summarize(stats, estimators, samples=samples, prediction=np.argmax(probs, axis=-1))
            prediction, mean, maps, num_classes = (sampled.prediction, sampled.expectation, sampled.maps,
                                                   sampled.num_classes)
            files = plan_outputs(out_dir / case_name(path) / ".plan", names, args.save_samples,
                                  num_classes if num_classes > 2 else 0, True)
            arrays = {"prediction": prediction, "expectation": mean[..., 1] if num_classes == 2 else mean}
            arrays.update({f"estimator:{n}": maps[n] for n in names})
            if args.save_samples:
                host = np.asarray(samples)
                if num_classes == 2:
                    arrays["samples"] = np.moveaxis(host[..., 1], 0, -1)
                else:
                    arrays.update({f"samples:{c}": np.moveaxis(host[..., c], 0, -1) for c in range(num_classes)})
            fg = prediction > 0
            by_name = {e.name: e for e in estimators}
            report = {
                "ugcn_version": __version__, "model": str(args.model), "image": str(path),
                "shape": list(mean.shape[:3]), "num_classes": int(num_classes), "n_samples": args.n_samples,
                "chunk": args.chunk, "seed": args.seed,
                "settings": {**config_to_dict(args.source_config), **config_to_dict(args.run_config)},
                "devices": describe(mesh, len(batch)),
                "predicted_voxels": int(fg.sum()),
                "estimators": {n: {"file": files[f"estimator:{n}"], "description": by_name[n].description,
                                   "value_range": by_name[n].value_range,
                                   "higher_is_uncertain": by_name[n].higher_is_uncertain, **map_summary(maps[n], fg)}
                               for n in names},
                "files": dict(files),
                "timings": {"load_s": load_s, "mc_sampling_s": mc_s},  # per volume, batch shared
                SETTINGS_KEY: settings,
            }
            with atomic_directory(out_dir / case_name(path), overwrite=True) as tmp:
                for name, array in arrays.items():
                    save_volume(tmp / files[name], array, volume.affine, header=volume.header)
                report["timings"]["write_and_maps_s"] = time.perf_counter() - t_case
                (tmp / files["report"]).write_text(json.dumps(report, indent=2) + "\n")
    barrier("ugcn mcdo --images: every process done")
    if jax.process_index() == 0:
        summary = _write_summary(out_dir, [case_name(p) for p in images])
        if not args.quiet:
            print(f"mcdo: {len(summary['volumes'])} of {len(images)} volumes done, written to {out_dir}")
    return 0
