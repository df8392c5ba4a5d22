"""One on-disk format for every trained model: a directory with ``config.json`` and ``params.msgpack``.

``config.json`` starts with ``{"format": <kind>, "format_version": <int>, "ugcn_version": ...}`` followed
by the model's own settings; ``params.msgpack`` holds the parameter tree
(``flax.serialization.to_bytes``). A model may add files of its own (``extra_files``).

:func:`save_model_dir` builds the directory in a hidden temporary sibling that is renamed into place
(:func:`ugcn.io.atomic_directory`), so an interrupted save never leaves a partial model, an existing model
is replaced only with ``overwrite=True`` (and only when it holds a ``config.json``), and files get the
permissions a plain ``open()`` gives.
:func:`read_model_dir` checks the directory and its header and returns the settings and the raw parameter
state; :func:`restore_params` matches that state to the architecture's parameter shapes. Every failure is
a ``ValueError`` of one line that names the file and what is wrong.

The segmentation U-Net (:mod:`ugcn.segment.checkpoint`) and the lesion GCNN (:mod:`ugcn.lesion.gcnn`) use
this format.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from ugcn.io import atomic_directory, check_replaceable, jsonable

CONFIG_FILE = "config.json"
PARAMS_FILE = "params.msgpack"

PathLike = Union[str, "os.PathLike[str]"]


def save_model_dir(
    directory: PathLike,
    *,
    format: str,
    format_version: int,
    settings: Mapping[str, Any],
    params: Any,
    extra_files: Optional[Mapping[str, Union[str, bytes]]] = None,
    overwrite: bool = False,
) -> Path:
    """Write a model directory atomically.

    Args:
      directory: the model directory to create (or replace, with ``overwrite``).
      format, format_version: the kind of model and the version of its layout (checked on reading).
      settings: JSON-able settings stored in ``config.json`` after the header (numpy values are converted;
        NaN becomes ``null``).
      params: a pytree of arrays (flax variables), written to ``params.msgpack``.
      extra_files: more files of the model, ``{name: text or bytes}``.
      overwrite: replace an existing directory.

    Returns:
      The directory written.

    Raises:
      ValueError: ``directory`` is a file, or a non-empty folder and ``overwrite`` is False, or a non-empty
        folder without ``config.json`` (not an earlier model: never replaced).
    """
    from ugcn import __version__

    directory = check_replaceable(directory, overwrite=overwrite, marker=CONFIG_FILE)

    reserved = {"format", "format_version", "ugcn_version"} & set(settings)
    if reserved:
        raise ValueError(f"save_model_dir: settings may not use the header keys {sorted(reserved)}")
    extra = dict(extra_files or {})
    clash = {CONFIG_FILE, PARAMS_FILE} & set(extra)
    if clash or any(Path(name).name != name or name.startswith(".") for name in extra):
        raise ValueError(f"save_model_dir: extra file names must be plain, new file names, got {sorted(extra)}")
    header = {"format": format, "format_version": int(format_version), "ugcn_version": __version__}
    config_text = json.dumps({**header, **jsonable(dict(settings))}, indent=2, allow_nan=False) + "\n"
    payload = flax.serialization.to_bytes(jax.device_get(params))
    with atomic_directory(directory, overwrite=overwrite, marker=CONFIG_FILE) as tmp:
        (tmp / CONFIG_FILE).write_text(config_text)
        (tmp / PARAMS_FILE).write_bytes(payload)
        for name, content in extra.items():
            if isinstance(content, bytes):
                (tmp / name).write_bytes(content)
            else:
                (tmp / name).write_text(content)
    return directory


def read_config(directory: PathLike, *, format: str, format_version: int, what: str,
                legacy_kind: Optional[str] = None) -> dict:
    """Check a model directory and return its ``config.json`` (header included).

    Args:
      directory: the model directory.
      format, format_version: the expected kind and the newest layout version this code reads.
      what: the model's name in messages (e.g. ``"segmentation model"``).
      legacy_kind: a directory written before the common format carried ``{"kind": legacy_kind}``
        instead of a header; it is read as ``format_version`` 0.

    Raises:
      ValueError: missing, not a directory, no or corrupt ``config.json``, another kind of model, or a
        newer layout than this ugcn reads.
    """
    directory = Path(directory)
    if not directory.exists():
        raise ValueError(f"{directory}: no such model directory")
    if not directory.is_dir():
        raise ValueError(f"{directory}: not a directory (a {what} is a directory with {CONFIG_FILE})")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{directory}: not a {what} directory (no {CONFIG_FILE})")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{config_path}: corrupt model config ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: corrupt model config (not a JSON object)")
    if legacy_kind is not None and "format" not in config and config.get("kind") == legacy_kind:
        config = {**config, "format": format, "format_version": 0}
    if config.get("format") != format:
        found = config.get("format", config.get("kind"))
        raise ValueError(f"{config_path}: not a ugcn {what} (format {found!r}, expected {format!r})")
    try:
        version = int(config.get("format_version", -1))
    except (TypeError, ValueError):
        version = -1
    if version < 0:
        raise ValueError(f"{config_path}: invalid format_version {config.get('format_version')!r}")
    if version > format_version:
        raise ValueError(
            f"{config_path}: {what} format version {version} is newer than this ugcn reads ({format_version}); "
            "upgrade ugcn"
        )
    return config


def read_params(directory: PathLike) -> Any:
    """The raw parameter state (nested dicts of numpy arrays) of ``directory/params.msgpack``.

    Raises:
      ValueError: the file is missing or corrupt.
    """
    params_path = Path(directory) / PARAMS_FILE
    if not params_path.is_file():
        raise ValueError(f"{Path(directory)}: missing {PARAMS_FILE}; the model directory is incomplete")
    try:
        return flax.serialization.msgpack_restore(params_path.read_bytes())
    except Exception as err:  # msgpack raises several types on corrupt bytes
        raise ValueError(f"{params_path}: corrupt parameter file ({type(err).__name__}: {err})") from None


def restore_params(template: Any, state: Any, *, where: PathLike) -> Any:
    """``state`` (from :func:`read_params`) as a pytree shaped like ``template``, with its dtypes.

    Args:
      template: a pytree of arrays or ``jax.ShapeDtypeStruct`` (the architecture's parameters).
      state: the raw state read from disk.
      where: the file named in errors.

    Raises:
      ValueError: the stored tree or shapes do not match ``template``.
    """
    leaves, treedef = jax.tree_util.tree_flatten(template)
    try:
        stored = jax.tree_util.tree_leaves(flax.serialization.from_state_dict(template, state))
        if len(stored) != len(leaves) or any(np.shape(s) != tuple(t.shape) for s, t in zip(stored, leaves)):
            raise ValueError("parameter shapes do not match the architecture in config.json")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{where}: does not match the recorded architecture ({err})") from None
    return jax.tree_util.tree_unflatten(treedef, [jnp.asarray(s, dtype=t.dtype) for s, t in zip(stored, leaves)])
