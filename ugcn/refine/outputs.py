"""The files of a refinement: one NIfTI mask per method of a :class:`~ugcn.refine.pipeline.RefineResult`.

The names are shared by ``ugcn refine``, ``ugcn refine-batch`` and the demo's case folders, and follow the
other commands: the CNN's own mask ``Ŷ`` is ``prediction.nii.gz``, as ``ugcn mcdo`` and ``ugcn lesions`` name
the predicted mask.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

#: ``RefineResult.masks()`` name -> file name.
MASK_FILES = {
    "refined": "refined.nii.gz",
    "refined_unlabelled": "refined_unlabelled.nii.gz",
    "expectation_mask": "expectation_mask.nii.gz",
    "cnn": "prediction.nii.gz",
    "crf": "crf.nii.gz",
}


def write_masks(folder: Path, result: Any, affine: np.ndarray, *, header: Optional[Any] = None,
                overwrite: bool = False) -> list[str]:
    """Every mask of ``result`` (``u8[X, Y, Z]``) into ``folder`` as :data:`MASK_FILES` names it; the file names.

    Args:
      folder: an existing folder.
      result: a :class:`~ugcn.refine.pipeline.RefineResult`.
      affine: ``f64[4, 4]`` of the image; header: its NIfTI header, copied (optional).
      overwrite: replace existing files.
    """
    from ugcn.io import save_volume

    written = []
    for name, mask in result.masks().items():
        save_volume(Path(folder) / MASK_FILES[name], np.asarray(mask).astype(np.uint8), affine, header=header,
                    overwrite=overwrite)
        written.append(MASK_FILES[name])
    return written
