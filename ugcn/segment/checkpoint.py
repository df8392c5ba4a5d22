"""Saving and loading a :class:`~ugcn.segment.model.SegmentationModel` as a model directory.

The directory has the common layout of :mod:`ugcn.model_dir` (written atomically, with normal
permissions):

- ``config.json``: ``{"format": "ugcn-segmentation-model", "format_version": 1, "ugcn_version": ...,
  "unet": <UNetConfig>, "normalization": <Normalization>, "training": <summary>}``;
- ``params.msgpack``: ``flax.serialization.to_bytes({"params": ..., "batch_stats": ...})``.

An existing directory is replaced only with ``overwrite=True``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ugcn.model_dir import (
    CONFIG_FILE,
    PARAMS_FILE,
    PathLike,
    read_config,
    read_params,
    restore_params,
    save_model_dir,
)
from ugcn.segment.model import SegmentationModel, variable_shapes
from ugcn.segment.normalize import Normalization
from ugcn.segment.unet import UNetConfig

FORMAT = "ugcn-segmentation-model"
FORMAT_VERSION = 1

__all__ = ["CONFIG_FILE", "FORMAT", "FORMAT_VERSION", "PARAMS_FILE", "is_model_dir", "load_model", "save_model"]


def save_model(model: SegmentationModel, directory: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` (``config.json`` + ``params.msgpack``), atomically.

    Raises:
      ValueError: ``directory`` is not empty and ``overwrite`` is False, or it is an existing file.
    Returns:
      The directory written.
    """
    settings = {
        "unet": model.config.to_dict(),
        "normalization": model.normalization.to_dict(),
        "training": model.training,
    }
    return save_model_dir(
        directory, format=FORMAT, format_version=FORMAT_VERSION, settings=settings,
        params={"params": model.params, "batch_stats": model.batch_stats}, overwrite=overwrite,
    )


def is_model_dir(directory: PathLike) -> bool:
    """True when ``directory`` holds a ``config.json`` of this format (files not validated)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def load_model(directory: PathLike) -> SegmentationModel:
    """Read a model written by :func:`save_model`.

    Raises:
      ValueError: the directory is missing, is not a model directory (no ``config.json`` of this format),
        or its files are corrupt / do not match the recorded architecture.
    """
    directory = Path(directory)
    meta = read_config(directory, format=FORMAT, format_version=FORMAT_VERSION, what="segmentation model")
    config_path = directory / CONFIG_FILE
    try:
        config = UNetConfig.from_dict(meta["unet"])
        normalization = Normalization.from_dict(meta.get("normalization") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: invalid model config ({err})") from None
    variables = restore_params(variable_shapes(config), read_params(directory), where=directory / PARAMS_FILE)
    return SegmentationModel(
        config=config,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        normalization=normalization,
        training=meta.get("training") or {},
    )
