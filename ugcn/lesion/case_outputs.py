"""The files that let a user check a lesion evaluation case by case.

Per case, in ``directory``:

* ``prediction.nii.gz`` (``u8``): the predicted mask whose 26-connected components are the lesions;
* ``lesions.nii.gz`` (``i16``/``i32``): the lesion ids, ``k`` = row ``lesion == k`` of the lesion table;
* ``<estimator>.nii.gz`` (``f32``): each voxel uncertainty map the lesions were scored with
  (:func:`safe_name` of the estimator).

Written with the case's affine (and header when given), each file atomically (:func:`ugcn.io.save_volume`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

PREDICTION_FILE = "prediction.nii.gz"
LESIONS_FILE = "lesions.nii.gz"


def safe_name(estimator: str) -> str:
    """A file name for an estimator name (a plug-in ``module:function`` keeps only ``[A-Za-z0-9_.-]``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", estimator)


def write_case_outputs(
    directory: Any,
    pred_mask: np.ndarray,
    labels: np.ndarray,
    maps: Mapping[str, np.ndarray],
    affine: np.ndarray,
    *,
    header: Optional[Any] = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the files listed in the module docstring; returns their paths.

    Args:
      directory: the case's folder (created).
      pred_mask: ``[X, Y, Z]`` predicted mask (non-zero = lesion).
      labels: ``int[X, Y, Z]`` lesion ids ``0..n`` (e.g. ``LesionTable.labels``).
      maps: estimator name -> ``f32[X, Y, Z]``.
      affine: ``f64[4, 4]``; header: optional NIfTI header to copy.
      overwrite: replace existing files.
    """
    from ugcn.io import save_volume

    directory = Path(directory)
    pred_mask = np.asarray(pred_mask)
    labels = np.asarray(labels)
    if labels.shape != pred_mask.shape:
        raise ValueError(f"write_case_outputs: labels {labels.shape} and prediction {pred_mask.shape} differ")
    directory.mkdir(parents=True, exist_ok=True)
    id_type = np.int16 if labels.size == 0 or int(labels.max()) < np.iinfo(np.int16).max else np.int32
    files = [(PREDICTION_FILE, (pred_mask != 0).astype(np.uint8)), (LESIONS_FILE, labels.astype(id_type))]
    for name, m in maps.items():
        m = np.asarray(m, np.float32)
        if m.shape != pred_mask.shape:
            raise ValueError(f"write_case_outputs: map {name!r} has shape {m.shape}, prediction {pred_mask.shape}")
        files.append((f"{safe_name(name)}.nii.gz", m))
    paths = []
    for fname, arr in files:
        path = directory / fname
        save_volume(path, arr, affine, header=header, overwrite=overwrite)
        paths.append(path)
    return paths
