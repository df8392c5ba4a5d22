"""``ugcn estimators list|compare``: the uncertainty estimators of the registry, and how well each works.

``list`` prints every registered estimator (name, what it needs, value range, direction, description).

``compare`` evaluates estimators on the same Monte Carlo samples of a labelled data set: voxel-level error
detection (AUROC, AUPRC of the map against the voxels where the prediction is wrong), calibration (ECE and
reliability diagram of the expectation; ECE of each map read as a confidence), method R's Dice at the
default τ and at the best τ of a quantile sweep, and method L's accuracy-confidence AUC for the mean
aggregation and for a lesion GCNN with the estimator as its only uncertainty feature. Writes
OUTDIR/comparison.{csv,json,md,png} and prints the table. See ``ugcn.experiments.estimator_study`` for the
exact definitions.

Samples: ``--model`` (T MC-dropout passes of a model from ``ugcn train``; with ``--source tta``, T
test-time-augmented passes), ``--samples-dir`` (one 4D NIfTI ``(X, Y, Z, T)`` of foreground probabilities
per case, named ``<case>.nii.gz`` or ``<case>_samples.nii.gz``, as for ``ugcn refine-batch``), or
``--quick`` (trains a tiny 2D U-Net on brain phantoms; without ``--data`` it also evaluates on 8 fresh
brain phantoms).

Estimators: ``--estimators all`` (default: every registered one), or a list of names and
``package.module:function`` specs; ``all,my_pkg.mod:margin`` adds yours to the built-ins.

Try it (a few CPU minutes, nothing to prepare):
  ugcn estimators compare --quick --out cmp
With a data set and a model:
  ugcn phantoms brain data --n 8 --shape 32,32,24
  ugcn train --data data --unet-dims 3 --unet-patch-size 32 32 24 --unet-base-features 4 --unet-depth 2 \\
      --unet-dropout 0.1 --unet-batch-size 1 --unet-epochs 20 --unet-steps-per-epoch 10 \\
      --unet-learning-rate 1e-2 --out model
  ugcn estimators compare --data data --model model --out cmp --estimators all,my_pkg.my_mod:margin
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ugcn.commands.options import SampleSource, Sampling, add_config_options


def register(subparsers) -> None:
    from ugcn.experiments.estimator_study import CompareConfig

    doc = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser = subparsers.add_parser("estimators", help="list uncertainty estimators, or compare them on data",
                                   description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="estimators_command", metavar="ACTION", parser_class=type(parser))
    parser.set_defaults(run=lambda args: (parser.print_help(), 2)[1])

    ls = sub.add_parser("list", help="print the registered estimators")
    ls.add_argument("--estimators", default="all", metavar="NAMES",
                    help="which ones (default all); 'package.module:function' specs are imported and shown too")
    ls.set_defaults(run=run_list)

    p = sub.add_parser("compare", help="compare estimators on the same samples (error detection, calibration, R, L)",
                       description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="DIR", help="labelled data set folder (Decathlon layout, ...)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="MODEL_DIR", help="a model directory written by `ugcn train`")
    src.add_argument("--samples-dir", metavar="DIR", help="folder of 4D sample maps, one per case")
    src.add_argument("--quick", action="store_true",
                     help="train a tiny 2D U-Net on brain phantoms (about a CPU minute); without --data, also "
                     "evaluate on 8 fresh brain phantoms")
    p.add_argument("--out", required=True, metavar="OUTDIR", help="output folder (must be new or empty)")
    p.add_argument("--estimators", default="all", metavar="NAMES",
                   help="'all' (default: every registered estimator), names, 'package.module:function' specs, "
                   "comma-separated; e.g. all,my_pkg.mod:margin")
    add_config_options(p, Sampling, name="sampling", title="stochastic passes (with --model or --quick)",
                       exclude=("seed",))  # --seed of the comparison seeds them too
    add_config_options(p, SampleSource, name="source_config", title="sample source")
    add_config_options(p, CompareConfig, name="compare_config", title="comparison", record="config",
                       flags={"r_epochs": "gcn-epochs", "r_k_random": "k-random", "r_margin": "margin",
                              "l_folds": "folds"})
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars, no table")
    p.set_defaults(run=run_compare)


def _range(est) -> str:
    return "unknown" if est.value_range is None else f"[{est.value_range[0]:g}, {est.value_range[1]:g}]"


def run_list(args: argparse.Namespace) -> int:
    from ugcn.experiments.estimator_study import resolve_estimators

    ests = resolve_estimators(args.estimators)
    rows = [(e.name, e.needs, _range(e), "uncertainty" if e.higher_is_uncertain else "confidence", e.description)
            for e in ests]
    head = ("name", "needs", "range", "direction", "description")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    for r in [head] + rows:
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + "  " + r[4])
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ugcn.experiments.estimator_study import (
        cases_from_model,
        cases_from_samples_dir,
        compare_estimators,
        quick_cases,
        quick_model,
        resolve_estimators,
        write_comparison,
    )

    t_start = time.perf_counter()
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise ValueError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    if not args.quick and not args.data:
        raise ValueError("--data is required with --model or --samples-dir")
    if args.data and not Path(args.data).is_dir():
        raise ValueError(f"{args.data}: no such folder")
    n_samples = 10 if args.quick and "n_samples" not in args.explicit_options else args.n_samples
    config = args.compare_config
    estimators = resolve_estimators(args.estimators)
    keep = any(e.needs == "samples" for e in estimators)
    progress = not args.quiet
    source: dict = {"data": args.data, "estimators_requested": args.estimators}
    if args.samples_dir and args.source != "mc":
        raise ValueError("--source applies to --model and --quick; --samples-dir brings its own samples")
    if args.samples_dir:
        cases = cases_from_samples_dir(args.data, args.samples_dir, keep_samples=keep)
        source["samples_dir"] = args.samples_dir
    else:
        if args.quick:
            if progress:
                print("--quick: training a tiny 2D U-Net on 4 brain phantoms (32x32x24)")
            model = quick_model(seed=args.seed, progress=progress)
            source["model"] = "quick (tiny 2D U-Net on 4 brain phantoms)"
        else:
            model = args.model
            source["model"] = args.model
        data = args.data if args.data else quick_cases(8, seed=args.seed)
        if not args.data:
            source["data"] = "quick (8 brain phantoms 32x32x24)"
        cases = cases_from_model(data, model, n_samples=n_samples, chunk_size=args.chunk, seed=args.seed,
                                 keep_samples=keep, source=args.source, tta_max_shift=args.tta_max_shift)
        source.update(n_samples=n_samples, source=args.source)
        if args.source == "tta":
            source["tta_max_shift"] = args.tta_max_shift
    result = compare_estimators(cases, estimators, config, progress=progress)
    source["seconds_total"] = round(time.perf_counter() - t_start, 1)
    write_comparison(result, out, overwrite=args.overwrite, extra={"source": source})
    if not args.quiet:
        print(result.markdown())
        print(f"wrote {out}/comparison.{{csv,json,md,png}} in {source['seconds_total']} s")
    return 0
