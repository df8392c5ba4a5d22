"""NIfTI volumes in and out, safely.

Axis order: arrays are returned exactly in the NIfTI voxel index order ``(X, Y, Z[, T])`` that nibabel
gives (no reorientation), so that ``affine @ [i, j, k, 1]`` maps an index to scanner millimetres. Axial
slices are ``array[:, :, k]`` (the last spatial axis). ``spacing`` is the voxel size in mm along
``(X, Y, Z)``, read from the affine.

Every failure raises ``ValueError`` naming the file and the problem; the CLI turns it into one line on
stderr and exit code 2.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import nibabel as nib
import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass(frozen=True)
class Volume:
    """A voxel array with its geometry.

    Attributes:
      array: ``[X, Y, Z]`` or ``[X, Y, Z, T]`` voxel values, in NIfTI index order.
      affine: ``f64[4, 4]`` voxel-to-world (mm) matrix.
      header: the nibabel header, kept so that saving writes the same metadata back.
      path: where it was read from (``None`` for an in-memory volume).
    """

    array: np.ndarray
    affine: np.ndarray
    header: Optional[nib.Nifti1Header] = None
    path: Optional[Path] = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(X, Y, Z)``, from the affine's column norms."""
        return voxel_spacing(self.affine)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def voxel_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm of a ``[4, 4]`` affine: the norms of its first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def is_nifti(path: PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_files(folder: PathLike) -> list[Path]:
    """Visible ``.nii``/``.nii.gz`` files directly in ``folder``, sorted by name (``[]`` if it is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def image_folder(folder: PathLike) -> list[Path]:
    """The images of an input folder (:func:`nifti_files`); a ``ValueError`` if it is no folder or has none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    images = nifti_files(folder)
    if not images:
        raise ValueError(f"{folder}: no .nii/.nii.gz images")
    return images


def nifti_stem(path: PathLike) -> str:
    """File name without its ``.nii``/``.nii.gz`` suffix."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_volume(
    path: PathLike,
    *,
    dtype: Optional[np.dtype] = np.float32,
    ndim: Optional[Union[int, tuple[int, ...]]] = None,
    allow_nonfinite: bool = False,
) -> Volume:
    """Read a 3D or 4D NIfTI file.

    Args:
      path: a ``.nii`` or ``.nii.gz`` file.
      dtype: cast the data to this dtype (``None`` keeps the stored dtype, scaling applied).
      ndim: required number of dimensions (3, 4 or a tuple of allowed ones); default 3 or 4.
      allow_nonfinite: accept NaN/inf voxels (rejected by default).

    Returns:
      A :class:`Volume` whose ``array`` is ``[X, Y, Z]`` or ``[X, Y, Z, T]``.

    Raises:
      ValueError: missing, unreadable or corrupt file, wrong number of dimensions, non-finite values.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not is_nifti(path):
        raise ValueError(f"{path}: not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        if dtype is None:
            data = np.asanyarray(img.dataobj)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float64) if np.dtype(dtype).kind == "f" else img.dataobj)
            data = data.astype(dtype, copy=False)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ValueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from None
    allowed = (3, 4) if ndim is None else ((ndim,) if isinstance(ndim, int) else tuple(ndim))
    # Trailing singleton axes (X, Y, Z, 1) are common in exported 3D masks.
    while data.ndim > max(allowed) and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in allowed:
        raise ValueError(f"{path}: expected a {' or '.join(map(str, allowed))}D volume, got shape {data.shape}")
    if not allow_nonfinite and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise ValueError(f"{path}: {bad} voxels are NaN or infinite")
    return Volume(array=data, affine=np.asarray(img.affine, dtype=np.float64), header=img.header, path=path)


def load_mask(path: PathLike) -> Volume:
    """Read a 3D label/mask volume as ``uint8`` (values must be non-negative integers)."""
    vol = load_volume(path, dtype=np.float32, ndim=3)
    arr = vol.array
    if np.any(arr < 0) or np.any(arr != np.round(arr)):
        raise ValueError(f"{path}: a label volume must hold non-negative integers")
    if arr.max(initial=0) > 255:
        raise ValueError(f"{path}: label values above 255 are not supported")
    return dataclasses.replace(vol, array=arr.astype(np.uint8))


def check_same_grid(a: Volume, b: Volume, *, atol: float = 1e-3, what: str = "mask") -> None:
    """Check that two volumes share their spatial shape and affine (within ``atol`` mm).

    Raises:
      ValueError: naming both files and the difference.
    """
    name_a = str(a.path) if a.path else "image"
    name_b = str(b.path) if b.path else what
    if a.shape[:3] != b.shape[:3]:
        raise ValueError(f"{name_b}: shape {b.shape[:3]} does not match {name_a} shape {a.shape[:3]}")
    diff = float(np.max(np.abs(np.asarray(a.affine) - np.asarray(b.affine))))
    if diff > atol:
        raise ValueError(f"{name_b}: affine differs from {name_a} by up to {diff:.4g} mm (tolerance {atol})")


def check_finite(array: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` when ``array`` holds NaN or infinite values."""
    if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: holds NaN or infinite values")


def _umask_mode(mode: int = 0o666) -> int:
    """``mode`` reduced by the process umask: what ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def save_volume(
    path: PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    header: Optional[nib.Nifti1Header] = None,
    overwrite: bool = False,
) -> Path:
    """Write ``array`` (``[X, Y, Z]`` or ``[X, Y, Z, T]``) as NIfTI, atomically.

    The data go to a temporary file in the same folder that is renamed into place, so a crash never
    leaves half a file. With ``header`` the image's metadata (units, descriptions) are kept; the data
    type follows ``array``. An existing file is an error unless ``overwrite``.

    Returns:
      The path written.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: output must end in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists already (pass overwrite=True / --overwrite to replace it)")
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.ndim not in (3, 4):
        raise ValueError(f"{path}: can only write 3D or 4D volumes, got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ValueError(f"{path}: affine must be a finite 4x4 matrix")
    hdr = header.copy() if header is not None else None
    img = nib.Nifti1Image(array, affine, header=hdr)
    img.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    if hdr is not None:
        # Keep the qform/sform codes of the source image, with the new affine.
        img.set_qform(affine, code=int(hdr["qform_code"]) or 1)
        img.set_sform(affine, code=int(hdr["sform_code"]) or 1)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_file(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))
    return path


def jsonable(value: Any) -> Any:
    """``value`` made strict-JSON safe for result files: numpy arrays and scalars become Python lists and
    numbers, dict keys strings, and NaN/inf ``None`` (JSON has no NaN)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def write_text_atomic(path: PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write a text file (JSON, CSV, Markdown) through a temporary file and a rename."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path}: exists already (pass --overwrite to replace it)")
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return path


@contextlib.contextmanager
def atomic_file(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    ``suffix`` keeps the extension that writers such as nibabel or matplotlib look at. The file gets the
    permissions a plain ``open()`` would give (``mkstemp`` makes private 0600 files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_directory(out_dir: PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Build a whole output folder in a hidden temporary sibling, then move it into place.

    Usage::

        with atomic_directory(out_dir, overwrite=args.overwrite) as tmp:
            save_volume(tmp / "mask.nii.gz", ...)

    On success ``out_dir`` holds exactly what was written to ``tmp``; an existing ``out_dir`` is replaced
    (only with ``overwrite``; a non-empty one is refused otherwise) by first moving it aside, so that a
    failing rename keeps one complete copy. On error the temporary folder is removed and ``out_dir`` is
    untouched.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes a private folder
        yield tmp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
