"""Saving and loading a :class:`~ugcn.segment.model.SegmentationModel` as a directory.

A model directory holds two files:

- ``config.json``: ``{"format": "ugcn-segmentation-model", "format_version": 1, "ugcn_version": ...,
  "unet": <UNetConfig>, "normalization": <Normalization>, "training": <summary>}``;
- ``params.msgpack``: ``flax.serialization.to_bytes({"params": ..., "batch_stats": ...})``.

Both are written into a temporary sibling directory that is renamed into place, so a crash never leaves a
half-written model; an existing directory is replaced only with ``overwrite=True``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ugcn import __version__
from ugcn.io import atomic_directory
from ugcn.segment.model import SegmentationModel, variable_shapes
from ugcn.segment.normalize import Normalization
from ugcn.segment.unet import UNetConfig

FORMAT = "ugcn-segmentation-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"

PathLike = Union[str, "os.PathLike[str]"]


def _to_jsonable(value):
    """Training summaries may hold numpy scalars/arrays; make them plain JSON."""
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, jax.Array)):
        return _to_jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_model(model: SegmentationModel, directory: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``model`` to ``directory`` (``config.json`` + ``params.msgpack``), atomically.

    Raises:
      ValueError: ``directory`` exists and ``overwrite`` is False, or it is an existing file.
    Returns:
      The directory written.
    """
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise ValueError(f"{directory}: exists and is not a directory")
        if not overwrite:
            raise ValueError(f"{directory}: exists already (pass overwrite=True / --overwrite to replace it)")
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "ugcn_version": __version__,
        "unet": model.config.to_dict(),
        "normalization": model.normalization.to_dict(),
        "training": _to_jsonable(model.training),
    }
    state = jax.device_get({"params": model.params, "batch_stats": model.batch_stats})
    with atomic_directory(directory, overwrite=True, marker=CONFIG_FILE) as tmp:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / PARAMS_FILE).write_bytes(flax.serialization.to_bytes(state))
    return directory


def is_model_dir(directory: PathLike) -> bool:
    """True when ``directory`` holds a ``config.json`` of this format (files not validated)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def load_model(directory: PathLike) -> SegmentationModel:
    """Read a model written by :func:`save_model`.

    Raises:
      ValueError: the directory is missing, is not a model directory (no ``config.json`` of this format),
        or its files are corrupt / do not match the recorded architecture.
    """
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"{directory}: no such model directory")
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory (a model is a directory with {CONFIG_FILE})")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory}: not a ugcn model directory (no {CONFIG_FILE}); train one with `ugcn train`")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{config_path}: corrupt model config ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not a ugcn segmentation model config (format != {FORMAT!r})")
    if int(meta.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: model format version {meta.get('format_version')} is newer than this ugcn "
            f"supports ({FORMAT_VERSION}); upgrade ugcn"
        )
    try:
        config = UNetConfig.from_dict(meta["unet"])
        normalization = Normalization.from_dict(meta.get("normalization") or {})
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{config_path}: invalid model config ({err})") from None
    params_path = directory / PARAMS_FILE
    if not params_path.is_file():
        raise ValueError(f"{directory}: missing {PARAMS_FILE}; the model directory is incomplete")
    template = variable_shapes(config)
    try:
        state = flax.serialization.msgpack_restore(params_path.read_bytes())
    except Exception as err:  # msgpack raises several types on corrupt bytes
        raise ValueError(f"{params_path}: corrupt parameter file ({type(err).__name__}: {err})") from None
    try:
        leaves, treedef = jax.tree_util.tree_flatten(template)
        stored = jax.tree_util.tree_leaves(
            flax.serialization.from_state_dict(template, state)
        )
        if len(stored) != len(leaves) or any(
            np.shape(s) != t.shape for s, t in zip(stored, leaves)
        ):
            raise ValueError("parameter shapes do not match the architecture in config.json")
        variables = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(s, dtype=t.dtype) for s, t in zip(stored, leaves)]
        )
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{params_path}: does not match the recorded architecture ({err})") from None
    return SegmentationModel(
        config=config,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        normalization=normalization,
        training=meta.get("training") or {},
    )
