"""``ugcn demo``: the main job on built-in synthetic data."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ugcn.commands.options import add_config_options
from ugcn.config import MAX_SEED, setting


@dataclasses.dataclass(frozen=True)
class DemoRun:
    """Which demo.

    Attributes:
      task: refine: method R on CT phantoms; lesions: method L on 24 realistic brain phantoms (2 mm).
      seed: seed of the phantoms, the U-Net, MC dropout and the fits.
      quick: a smaller, faster run (for smoke tests).
    """

    task: str = setting("refine", choices=("refine", "lesions"))
    seed: int = setting(0, min=0, max=MAX_SEED)
    quick: bool = False


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run a method end to end on synthetic phantoms (default: GCN refinement, method R)",
        description="Make phantoms, train a small U-Net, run MC dropout and the chosen method; print Dice "
        "tables and write NIfTI, JSON and PNG outputs. Re-running replaces the demo's own outputs.",
    )
    p.add_argument("--out", type=Path, default=Path("ugcn-demo"), help="output folder (default: ./ugcn-demo)")
    add_config_options(p, DemoRun, name="demo_run", title="demo")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    progress = not args.no_progress
    if args.task == "refine":
        from ugcn.experiments.demo import QUICK, DemoConfig, run_refinement_demo

        config = dataclasses.replace(QUICK if args.quick else DemoConfig(), seed=args.seed)
        run_refinement_demo(args.out / "refine", config, progress=progress)
    else:
        from ugcn.experiments.demo import run_lesion_demo

        run_lesion_demo(args.out / "lesions", n_cases=8 if args.quick else 24, seed=args.seed, quick=args.quick,
                        progress=progress, overwrite=True)
    return 0
