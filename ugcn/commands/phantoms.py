"""``ugcn phantoms``: write a synthetic data set (CT spleen-like organ or FLAIR brain lesions).

Writes OUTDIR in the Medical Segmentation Decathlon layout (``imagesTr/``, ``labelsTr/``, ``dataset.json``)
with N cases named ``ct_000``, ``ct_001``... (or ``brain_...``). Case i is generated with seed
``S * 1000 + i``, so a data set is reproducible from (S, N), and data sets with different S do not
share cases (for N <= 1000).
"""
from __future__ import annotations

import argparse
import dataclasses

from tqdm import tqdm

from ugcn.commands.options import add_config_options
from ugcn.config import MAX_SEED, setting

KINDS = {
    "ct": ("CT", "CT abdomen phantom with a spleen-like target organ (label 1)", {"0": "background", "1": "spleen"}),
    "brain": ("FLAIR", "FLAIR brain phantom with MS-like lesions (label 1)", {"0": "background", "1": "lesion"}),
}


def case_seed(seed: int, index: int) -> int:
    """Generator seed of case ``index`` of a data set written with ``--seed seed``."""
    return int(seed) * 1000 + int(index)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,Z sizes like 96,96,48, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected three positive sizes like 96,96,48, got {text!r}")
    return shape


@dataclasses.dataclass(frozen=True)
class PhantomSet:
    """Which cases.

    Attributes:
      n: number of cases.
      seed: case i uses seed S*1000+i.
    """

    n: int = setting(8, min=1, max=1000, metavar="N")
    seed: int = setting(0, min=0, max=MAX_SEED, metavar="S")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "phantoms",
        help="write a synthetic data set (CT organ or FLAIR brain lesions) in the Decathlon layout",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("kind", choices=sorted(KINDS), help="ct: abdomen with a spleen-like organ; brain: MS lesions")
    p.add_argument("outdir", metavar="OUTDIR", help="data set folder to create")
    add_config_options(p, PhantomSet, name="phantom_set", title="cases")
    p.add_argument("--shape", type=_shape, default=None, metavar="X,Y,Z",
                   help="volume size in voxels (default 96,96,48 for ct, 64,64,48 for brain)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUTDIR")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary line")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ugcn.data.layout import write_decathlon
    from ugcn.data.phantoms import brain_phantom, ct_phantom

    generate = ct_phantom if args.kind == "ct" else brain_phantom
    kwargs = {} if args.shape is None else {"shape": args.shape}
    modality, description, labels = KINDS[args.kind]

    def cases():
        for i in tqdm(range(args.n), desc=f"{args.kind} phantoms", unit="case", disable=args.quiet, delay=0.5):
            phantom = generate(case_seed(args.seed, i), **kwargs)
            yield f"{args.kind}_{i:03d}", phantom.image, phantom.label, phantom.affine

    paths = write_decathlon(
        args.outdir,
        cases(),
        name=f"ugcn-{args.kind}-phantoms",
        description=f"{description}; seeds {case_seed(args.seed, 0)}..{case_seed(args.seed, args.n - 1)}",
        modality=modality,
        labels=labels,
        overwrite=args.overwrite,
    )
    if not args.quiet:
        print(f"wrote {len(paths)} {args.kind} phantom cases (seed {args.seed}) to {args.outdir} (Decathlon layout)")
    return 0
