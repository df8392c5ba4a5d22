"""The files of a Monte Carlo run (``ugcn mcdo``): output names, and the summary of each uncertainty map."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from ugcn.io import check_replaceable

RESERVED = ("prediction", "expectation", "samples", "report")


def estimator_filename(name: str) -> str:
    """File stem of an estimator's map: the name with characters outside ``[A-Za-z0-9_.-]`` as ``_``."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def map_summary(values: np.ndarray, mask: np.ndarray) -> dict:
    """``min``, ``max``, ``mean`` of a map ``f32[X, Y, Z]`` and its mean inside ``mask: bool[X, Y, Z]``
    (``None`` when the mask is empty)."""
    inside = values[mask]
    out: dict[str, Optional[float]] = {"min": float(values.min()), "max": float(values.max()),
                                       "mean": float(values.mean())}
    out["mean_in_prediction"] = float(inside.mean()) if inside.size else None
    return out


def plan_outputs(out_dir: Path, names: list[str], save_samples: bool, multiclass_samples: int, overwrite: bool) -> dict:
    """The file of every output of an MC run in ``out_dir``: ``{"prediction", "expectation",
    "estimator:<name>", "samples" or "samples:<c>", "report": file name}``.

    Args:
      names: estimator names (one ``<name>.nii.gz`` each, see :func:`estimator_filename`).
      save_samples: also the samples; ``multiclass_samples`` = C > 2 writes one file per class.

    Raises:
      ValueError: an estimator name that would overwrite another output, or an ``out_dir`` that
        :func:`ugcn.io.check_replaceable` refuses (an existing output without ``overwrite``).
    """
    files = {"prediction": "prediction.nii.gz", "expectation": "expectation.nii.gz"}
    for name in names:
        stem = estimator_filename(name)
        if stem in RESERVED or any(v == f"{stem}.nii.gz" for v in files.values()):
            raise ValueError(f"estimator {name!r} would overwrite another output ({stem}.nii.gz); rename it")
        files[f"estimator:{name}"] = f"{stem}.nii.gz"
    if save_samples:
        if multiclass_samples:
            for c in range(multiclass_samples):
                files[f"samples:{c}"] = f"samples_class{c}.nii.gz"
        else:
            files["samples"] = "samples.nii.gz"
    files["report"] = "report.json"
    check_replaceable(out_dir, overwrite=overwrite, marker=files["report"])
    return files
