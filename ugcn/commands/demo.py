"""``ugcn demo``: the main job on built-in synthetic data."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a method end to end on synthetic phantoms (default: GCN refinement, method R)",
        description="Make phantoms, train a small U-Net, run MC dropout and the chosen method; print Dice "
        "tables and write NIfTI, JSON and PNG outputs. Re-running replaces the demo's own outputs.",
    )
    p.add_argument("--task", choices=("refine", "lesions"), default="refine",
                   help="refine: method R on CT phantoms; lesions: method L on 20 realistic brain phantoms (2 mm)")
    p.add_argument("--out", type=Path, default=Path("ugcn-demo"), help="output folder (default: ./ugcn-demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smaller, faster run (for smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    progress = not args.no_progress
    if args.task == "refine":
        import dataclasses

        from ugcn.experiments.demo import QUICK, DemoConfig, run_refinement_demo

        config = dataclasses.replace(QUICK if args.quick else DemoConfig(), seed=args.seed)
        run_refinement_demo(args.out / "refine", config, progress=progress)
    else:
        from ugcn.experiments.demo import run_lesion_demo

        run_lesion_demo(args.out / "lesions", n_cases=8 if args.quick else 20, seed=args.seed, quick=args.quick,
                        progress=progress, overwrite=True)
    return 0
