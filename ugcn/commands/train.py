"""``ugcn train``: train a Monte Carlo dropout U-Net on a labelled data set folder.

The folder is read with :func:`ugcn.data.layout.find_cases` (Medical Segmentation Decathlon layout
``imagesTr/``+``labelsTr/`` or ``dataset.json``, ``images/``+``labels/``, or flat image/label pairs).
Labels > 0 are foreground (a binary, sigmoid U-Net). The model directory written to ``--out``
(``config.json`` + ``params.msgpack``) is what ``ugcn mcdo``, ``ugcn refine`` and ``ugcn lesions`` read.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a 2D (axial slices) or 3D (patches) U-Net with channel-wise dropout",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="labelled data set folder")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2: axial-slice U-Net (method R); 3: patch U-Net (method L)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default 10)")
    p.add_argument("--steps-per-epoch", type=int, default=30, help="Adam steps per epoch (default 30)")
    p.add_argument("--batch-size", type=int, default=8, help="slices (2D) or patches (3D) per step (default 8)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--max-volumes", type=int, default=None, metavar="N", help="use only the first N cases")
    p.add_argument("--base-features", type=int, default=16, help="feature maps of the first block (default 16)")
    p.add_argument("--depth", type=int, default=3, help="number of down-samplings (default 3)")
    p.add_argument("--dropout", type=float, default=None, help="channel-wise dropout rate (default 0.3 2D, 0.2 3D)")
    p.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("PX", "PY", "PZ"),
                   help="3D patch size, multiples of 2**depth (default 32 32 32)")
    p.add_argument("--clip", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="clip intensities to this window before the z-score (e.g. -160 240 for abdominal CT)")
    p.add_argument("--augment", choices=("none", "intensity", "full"), default="intensity",
                   help="intensity: scale/shift/noise (default); full: also flips and 90-degree rotations")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, sampling and dropout (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ugcn.data.layout import find_cases, load_case
    from ugcn.segment.checkpoint import save_model
    from ugcn.segment.normalize import Normalization
    from ugcn.segment.train import NO_AUGMENTATION, Augmentation, train_model
    from ugcn.segment.unet import UNetConfig

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out}: exists already (pass --overwrite to replace it)")
    if args.max_volumes is not None and args.max_volumes < 1:
        raise ValueError(f"--max-volumes must be at least 1, got {args.max_volumes}")
    cases = find_cases(args.data, require_labels=True)
    if args.max_volumes is not None:
        cases = cases[: args.max_volumes]
    images, labels = [], []
    in_channels = None
    for case in cases:
        image, label = load_case(case)
        channels = 1 if image.array.ndim == 3 else image.array.shape[3]
        if in_channels is not None and channels != in_channels:
            raise ValueError(f"{case.image_path}: {channels} modalities, but earlier cases have {in_channels}")
        in_channels = channels
        images.append(image.array)
        labels.append((label.array > 0).astype("uint8"))
    config = UNetConfig(
        dims=args.dims,
        in_channels=in_channels,
        num_classes=1,
        base_features=args.base_features,
        depth=args.depth,
        dropout_rate=args.dropout,
        patch_size=tuple(args.patch_size) if args.patch_size else None,
    )
    augmentation = {
        "none": NO_AUGMENTATION,
        "intensity": Augmentation(),
        "full": Augmentation(flips=True, rotate90=True),
    }[args.augment]
    start = time.perf_counter()
    model, history = train_model(
        images,
        labels,
        config,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        normalization=Normalization(clip=tuple(args.clip) if args.clip else None),
        augmentation=augmentation,
        progress=not args.quiet,
    )
    model.training["data"] = str(Path(args.data).resolve())
    model.training["cases"] = [case.name for case in cases]
    save_model(model, out, overwrite=args.overwrite)
    if not args.quiet:
        print(
            f"trained a {args.dims}D U-Net on {len(cases)} volume(s) in {time.perf_counter() - start:.1f} s; "
            f"final loss {history['loss'][-1]:.4f}; model written to {out}"
        )
    return 0
