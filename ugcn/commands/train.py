"""``ugcn train``: train a Monte Carlo dropout U-Net on a labelled data set folder.

The folder is read with ``ugcn.data.layout.find_cases`` (Medical Segmentation Decathlon layout
``imagesTr/``+``labelsTr/`` or ``dataset.json``, ``images/``+``labels/``, or flat image/label pairs).
Labels > 0 are foreground (a binary, sigmoid U-Net). The model directory written to ``--out``
(``config.json`` + ``params.msgpack``) is what ``ugcn mcdo``, ``ugcn refine`` and ``ugcn lesions`` read.
Its ``config.json`` records the architecture and the training settings: ``ugcn train --config
MODEL/config.json`` trains again with them.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ugcn.commands.options import add_config_file_option, add_config_options
from ugcn.config import config_to_dict, setting
from ugcn.segment.train import TrainConfig
from ugcn.segment.unet import UNetConfig


@dataclasses.dataclass(frozen=True)
class TrainData:
    """Which cases.

    Attributes:
      max_volumes: use only the first N cases (none: all).
    """

    max_volumes: Optional[int] = setting(None, min=1)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a 2D (axial slices) or 3D (patches) U-Net with channel-wise dropout",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="labelled data set folder")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    add_config_options(p, TrainData, name="data_config", title="data")
    add_config_options(p, UNetConfig, name="unet_config", title="U-Net architecture", record="unet",
                       exclude=("in_channels", "num_classes"), prefix="unet-")
    add_config_options(p, TrainConfig, name="train_config", title="U-Net training", record="training",
                       prefix="unet-", flags={"augment": "augment", "clip": "clip", "seed": "seed"})
    add_config_file_option(p, "the config.json of a model directory")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ugcn.data.layout import find_cases, load_case
    from ugcn.io import CANONICAL, canonical_spacing, to_canonical
    from ugcn.segment.checkpoint import save_model
    from ugcn.segment.train import train_model

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out}: exists already (pass --overwrite to replace it)")
    cases = find_cases(args.data, require_labels=True)
    if args.data_config.max_volumes is not None:
        cases = cases[: args.data_config.max_volumes]
    images, labels, spacings = [], [], []
    in_channels = None
    for case in cases:
        image, label = load_case(case)
        if label is None:
            raise ValueError(f"{case.image_path}: no label; training needs a label for every case")
        channels = 1 if image.array.ndim == 3 else image.array.shape[3]
        if in_channels is not None and channels != in_channels:
            raise ValueError(f"{case.image_path}: {channels} modalities, but earlier cases have {in_channels}")
        in_channels = channels
        # The network learns in RAS+ order (axial slices), whatever order each file stores its axes in.
        images.append(to_canonical(image.array, image.affine))
        labels.append(to_canonical((label.array > 0).astype("uint8"), image.affine))
        spacings.append(canonical_spacing(image.affine))
    config = dataclasses.replace(args.unet_config, in_channels=in_channels, num_classes=1)
    training: TrainConfig = args.train_config
    start = time.perf_counter()
    model, history = train_model(images, labels, config, progress=not args.quiet, **training.train_kwargs())
    model.training.update(config_to_dict(training))  # what --config reads back (augment, clip beside the rest)
    model.training["data"] = str(Path(args.data).resolve())
    model.training["cases"] = [case.name for case in cases]
    model.training["orientation"] = CANONICAL  # inference reorients every scan to it
    model.training["spacing"] = [float(v) for v in np.median(spacings, axis=0)]  # mm, RAS+ axes; far-off scans warn
    save_model(model, out, overwrite=args.overwrite)
    if not args.quiet:
        print(
            f"trained a {config.dims}D U-Net on {len(cases)} volume(s) in {time.perf_counter() - start:.1f} s; "
            f"final loss {history['loss'][-1]:.4f}; model written to {out}"
        )
    return 0
