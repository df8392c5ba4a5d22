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
import hashlib
import math
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import nibabel as nib
import numpy as np
from numpy.typing import DTypeLike

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
    x, y, z = (float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))
    return x, y, z


def is_nifti(path: PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).endswith(NIFTI_SUFFIXES)


def nifti_files(folder: PathLike) -> list[Path]:
    """Visible ``.nii``/``.nii.gz`` files directly in ``folder``, sorted by name (``[]`` if it is no folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))


# nnU-Net names one file per channel: ``<case>_0000.nii.gz``, ``<case>_0001.nii.gz``, ...
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _nifti_suffix(path: PathLike) -> str:
    return ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"


def channel_files(path: PathLike) -> list[Path]:
    """All channel files of the image whose channel 0 is ``path`` (nnU-Net's ``<case>_0000.nii.gz``,
    ``<case>_0001.nii.gz``, ...): ``[path]`` for any other file or a single-channel image."""
    path = Path(path)
    match = _CHANNEL_RE.match(nifti_stem(path))
    if match is None or match.group("channel") != "0000":
        return [path]
    files = [path]
    while True:
        nxt = path.with_name(f"{match.group('case')}_{len(files):04d}{_nifti_suffix(path)}")
        if not nxt.is_file():
            return files
        files.append(nxt)


def case_name(path: PathLike) -> str:
    """The case an image file belongs to: its stem without nnU-Net's channel suffix ``_0000``."""
    stem = nifti_stem(path)
    match = _CHANNEL_RE.match(stem)
    return match.group("case") if match and match.group("channel") == "0000" else stem


def image_folder(folder: PathLike) -> list[Path]:
    """The images of an input folder, one path per case, sorted; a ``ValueError`` if it is no folder or has none.

    Every visible ``.nii``/``.nii.gz`` file is an image, except in nnU-Net's naming (every file
    ``<case>_XXXX``): there a case is its ``_0000`` file, and :func:`load_image` stacks its channels.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a directory")
    images = nifti_files(folder)
    if not images:
        raise ValueError(f"{folder}: no .nii/.nii.gz images")
    return group_channel_files(images)


def group_channel_files(images: list[Path]) -> list[Path]:
    """One path per case: when every file is named ``<case>_XXXX`` (nnU-Net), the ``_0000`` files (whose
    further channels :func:`channel_files` finds); otherwise ``images`` unchanged.

    Raises:
      ValueError: a channel file whose case has no ``_0000`` file or misses a channel before it.
    """
    matches = [_CHANNEL_RE.match(nifti_stem(p)) for p in images]
    if not images or not all(matches):
        return list(images)
    firsts = [p for p, m in zip(images, matches) if m is not None and m.group("channel") == "0000"]
    grouped = {c for p in firsts for c in channel_files(p)}
    orphans = sorted(set(images) - grouped)
    if orphans:
        raise ValueError(f"{orphans[0]}: a channel file without the channels before it (nnU-Net naming "
                         "<case>_0000.nii.gz, <case>_0001.nii.gz, ...)")
    return firsts


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
    dtype: DTypeLike = np.float32,
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
        img: Any = nib.load(str(path))  # reads the header only (a NIfTI image: nibabel types it generically)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ValueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {_first_line(err)})") from None
    check_data_size(path, img, np.float64 if dtype is not None and np.dtype(dtype).kind == "f" else None)
    try:
        if dtype is None:
            data = np.asanyarray(img.dataobj)
        else:
            data = np.asarray(img.get_fdata(dtype=np.float64) if np.dtype(dtype).kind == "f" else img.dataobj)
            data = data.astype(dtype, copy=False)
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to read {_shape_text(img.shape)} voxels") from None
    except EOFError as err:
        raise ValueError(f"{path}: cannot read NIfTI, truncated ({_first_line(err)}); the file was not written "
                         "completely") from None
    except Exception as err:  # nibabel raises many types for corrupt files
        raise ValueError(f"{path}: cannot read NIfTI ({type(err).__name__}: {_first_line(err)})") from None
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


def _first_line(err: BaseException) -> str:
    lines = [line.strip(" -") for line in str(err).splitlines() if line.strip(" -")]
    return "; ".join(lines) if lines else "no details"


def _shape_text(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def available_memory() -> int:
    """Bytes of memory this process can still allocate, from ``/proc/meminfo`` (``MemAvailable``), or
    ``os.sysconf`` where there is none; a cgroup limit, when lower, wins."""
    available = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 1 << 62
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    return int(available)


def _size_text(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n_bytes < 1024 or unit == "PB":
            return f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.3g} PB"  # pragma: no cover


def check_data_size(path: PathLike, img, dtype=None) -> None:
    """Check a NIfTI header against its file and this machine before its voxels are read.

    An uncompressed ``.nii`` shorter than its header promises is truncated; a volume whose voxels (as
    ``dtype``, default the stored type) would not fit in the available memory gets a clear error instead
    of an empty ``MemoryError`` (a corrupt header claiming 30000³ voxels, say).

    Raises:
      ValueError: one line naming the file, what the header claims and what is wrong.
    """
    shape = tuple(int(v) for v in img.shape)
    n_voxels = math.prod(shape)
    stored = np.dtype(img.get_data_dtype())
    n_bytes = n_voxels * max(stored.itemsize, np.dtype(dtype or stored).itemsize)
    available = available_memory()
    if n_bytes > available:
        raise ValueError(f"{path}: its header claims {_shape_text(shape)} voxels ({_size_text(n_bytes)} to read), "
                         f"more than the {_size_text(available)} of memory available; a corrupt header, or a "
                         "volume to crop or resample first")
    if str(path).endswith(".nii") and hasattr(img.header, "get_data_offset"):
        needed = int(img.header.get_data_offset()) + n_voxels * stored.itemsize
        size = os.path.getsize(path)
        if size < needed:
            raise ValueError(f"{path}: cannot read NIfTI, truncated: its header ({_shape_text(shape)} voxels of "
                             f"{stored}) needs {needed} bytes, the file holds {size}; "
                             "the file was not written completely")


def load_image(path: PathLike, *, ndim=(3, 4), **kwargs) -> Volume:
    """Read an image, stacking nnU-Net's one-file-per-channel images (:func:`channel_files`).

    Returns:
      A :class:`Volume` ``f32[X, Y, Z]`` (one channel) or ``f32[X, Y, Z, M]`` (M channels, or a 4D file),
      with the geometry of channel 0.

    Raises:
      ValueError: as :func:`load_volume`, or channels on different grids.
    """
    files = channel_files(path)
    if len(files) == 1:
        return load_volume(path, ndim=ndim, **kwargs)
    channels = [load_volume(f, ndim=3, **kwargs) for f in files]
    for other in channels[1:]:
        check_same_grid(channels[0], other, what="channel")
    return dataclasses.replace(channels[0], array=np.stack([c.array for c in channels], axis=-1))


# ----------------------------------------------------------------------------------------------------------
# Orientation: ugcn's models see every scan in RAS+ (nibabel's closest canonical orientation), so that the
# 2D U-Net's slices are axial whatever order the file stores its axes in; outputs go back to the file's order.
# ----------------------------------------------------------------------------------------------------------

#: The orientation ugcn's models are trained and run in (the third array axis is superior: axial slices).
CANONICAL = "RAS"


def _ornt(affine: np.ndarray) -> np.ndarray:
    return nib.orientations.io_orientation(np.asarray(affine, np.float64))


def _reorder(array, ornt: np.ndarray, axis: int) -> np.ndarray:
    array = np.asarray(array)
    spatial = [axis, axis + 1, axis + 2]
    moved = np.moveaxis(array, spatial, [0, 1, 2])
    return np.moveaxis(nib.orientations.apply_orientation(moved, ornt), [0, 1, 2], spatial)


def to_canonical(array, affine: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """``array`` with its spatial axes ``axis .. axis + 2`` permuted and flipped into RAS+ order.

    Args:
      array: ``[..., X, Y, Z, ...]`` voxels on the grid of ``affine`` (spatial axes from ``axis``).
      affine: ``f64[4, 4]`` voxel-to-world matrix of the file's grid.

    Returns:
      The same voxels, reordered so that the array axes run left-to-right, posterior-to-anterior and
      inferior-to-superior (the closest to the world axes; oblique scans are not resampled).
    """
    return _reorder(array, _ornt(affine), axis)


def from_canonical(array, affine: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """Inverse of :func:`to_canonical`: a RAS+-ordered ``array`` back in the voxel order of ``affine``'s grid."""
    ras = nib.orientations.axcodes2ornt(CANONICAL)
    return _reorder(array, nib.orientations.ornt_transform(ras, _ornt(affine)), axis)


def canonical_affine(affine: np.ndarray, shape) -> np.ndarray:
    """The voxel-to-world matrix ``f64[4, 4]`` of the grid ``to_canonical`` gives (same world positions)."""
    return np.asarray(affine, np.float64) @ nib.orientations.inv_ornt_aff(_ornt(affine), tuple(shape)[:3])


def canonical_shape(shape, affine: np.ndarray) -> tuple[int, ...]:
    """The shape :func:`to_canonical` gives an array of ``shape`` (spatial axes first) on ``affine``'s grid."""
    shape = tuple(int(v) for v in shape)
    spatial = [0, 0, 0]
    for size, (axis, _) in zip(shape[:3], _ornt(affine)):
        spatial[int(axis)] = size
    return tuple(spatial) + shape[3:]


def canonical_spacing(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along the RAS+-ordered axes (left-right, posterior-anterior, inferior-superior)."""
    x, y, z = np.argsort(_ornt(affine)[:, 0])
    spacing = voxel_spacing(affine)
    return float(spacing[x]), float(spacing[y]), float(spacing[z])


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


# ----------------------------------------------------------------------------------------------------------
# Temporaries: every one carries the writing process (pid and host), so a later run can tell a dead
# process's leftovers (SIGKILL, power loss) from a live concurrent writer's, and remove only the former.
# ----------------------------------------------------------------------------------------------------------

TEMP_PREFIX = ".ugcn-tmp-"
_TEMP_RE = re.compile(r"^\.ugcn-tmp-(\d+)-([0-9a-f]{8})-(new|old|probe)\.")
#: A temporary of another host is taken as stale after this many seconds (its pid cannot be checked).
FOREIGN_TEMP_AGE_S = 24 * 3600


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(kind: str, name: str = "") -> str:
    """``.ugcn-tmp-<pid>-<host>-<kind>.<name>.``: hidden, and naming the process that owns it."""
    return f"{TEMP_PREFIX}{os.getpid()}-{_host_tag()}-{kind}.{name + '.' if name else ''}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _is_stale(entry: Path, match: re.Match[str]) -> bool:
    pid, host = int(match.group(1)), match.group(2)
    if host == _host_tag():
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        return time.time() - entry.lstat().st_mtime > FOREIGN_TEMP_AGE_S
    except OSError:
        return False


def clean_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the hidden temporaries that killed ``ugcn`` processes left in ``folder``.

    A temporary (``.ugcn-tmp-<pid>-<host>-...``) is stale when its process is gone (same host) or it is
    older than :data:`FOREIGN_TEMP_AGE_S` (another host). A live writer's temporaries are left alone, so
    concurrent processes sharing a folder are safe. A previous output that was moved aside for a swap
    (``...-old.``) is moved back first when the swap did not finish (its place is empty).

    Returns:
      The paths removed (``[]`` when ``folder`` is no folder or holds no stale temporary).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_RE.match(entry.name)
        if match is None or not _is_stale(entry, match):
            continue
        if match.group(3) == "old" and entry.is_dir():
            for previous in entry.iterdir():
                target = folder / previous.name
                if not target.exists():
                    with contextlib.suppress(OSError):
                        os.replace(previous, target)
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass
    return removed


def check_output_folder(path: PathLike) -> Path:
    """Fail before the work when ``path`` cannot become (or be replaced as) an output folder.

    Checks that ``path`` is a folder or can be created (no file in the way, at ``path`` or above it), and
    that this process can create entries in it (or in its nearest existing ancestor) and beside it (whole
    folders are built in a sibling and swapped in). Probes by creating and removing a hidden file, which
    catches permissions, read-only file systems and immutable folders alike, also for root. Removes stale
    temporaries of killed runs on the way.

    Raises:
      ValueError: one line naming the path and the reason, and what to do.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; choose another output folder")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{path}: cannot create it, {ancestor} is a file, not a folder")
    probes = [ancestor] if ancestor != path else [path, path.resolve().parent]
    for folder in probes:
        try:
            fd, name = tempfile.mkstemp(prefix=_temp_prefix("probe"), dir=folder)
            os.close(fd)
            os.unlink(name)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            raise ValueError(f"{path}: cannot write {'in' if folder == path else 'to'} {folder} ({reason}); "
                             "choose a writable output folder") from None
        clean_stale_temporaries(folder)
    return path


@contextlib.contextmanager
def atomic_file(path: PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, on error removed.

    ``suffix`` keeps the extension that writers such as nibabel or matplotlib look at. The file gets the
    permissions a plain ``open()`` would give (``mkstemp`` makes private 0600 files). Stale temporaries of
    killed runs in the same folder are removed first (:func:`clean_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path.parent)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix("new", path.name), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_replaceable(out_dir: PathLike, *, overwrite: bool = False, marker: Optional[str] = None) -> Path:
    """Raise ``ValueError`` unless :func:`atomic_directory` may write ``out_dir``: it is missing or empty, or
    ``overwrite`` is set and (with ``marker``) it holds ``marker``, i.e. it is an earlier output of the same
    writer. Call it before the work to fail early; hidden temporaries do not count as content."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(not _TEMP_RE.match(p.name) for p in out_dir.iterdir()):
        if not overwrite:
            raise ValueError(f"{out_dir}: exists and is not empty (pass overwrite=True / --overwrite to replace it)")
        if marker is not None and not (out_dir / marker).exists():
            raise ValueError(f"{out_dir}: holds files but no {marker}, so it is not an earlier output of this "
                             "command (--overwrite replaces only those); choose a new or empty folder")
    return out_dir


@contextlib.contextmanager
def atomic_directory(out_dir: PathLike, *, overwrite: bool = False,
                     marker: Optional[str] = None) -> Iterator[Path]:
    """Build a whole output folder in a hidden temporary sibling, then swap it into place.

    Usage::

        with atomic_directory(out_dir, overwrite=args.overwrite, marker="report.json") as tmp:
            save_volume(tmp / "mask.nii.gz", ...)

    On success ``out_dir`` holds exactly what was written to ``tmp`` (nothing of an earlier output
    survives, e.g. a ``crf.nii.gz`` a new run did not make). An existing non-empty ``out_dir`` is replaced
    only with ``overwrite``, and, when ``marker`` is given, only when it holds that file (a previous output
    of the same writer): a folder of the user's other files is never swallowed. The old folder is moved
    aside before the new one is moved in, so a crash between the two renames keeps both copies, and the
    next run's :func:`clean_stale_temporaries` moves the old one back. On error (or Ctrl-C / SIGTERM in the
    ``ugcn`` command) the temporary folder is removed and ``out_dir`` is untouched.

    Raises:
      ValueError: ``out_dir`` is a file, or a non-empty folder that may not be replaced.
    """
    out_dir = check_replaceable(out_dir, overwrite=overwrite, marker=marker)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(out_dir.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix("new", out_dir.name), dir=out_dir.parent))
    try:
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes a private folder
        yield tmp
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix("old", out_dir.name), dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

