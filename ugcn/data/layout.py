"""Dataset folders: write the Medical Segmentation Decathlon layout, find image/label pairs, k-fold splits.

Readable layouts (:func:`find_cases`):

- Decathlon (MSD): ``imagesTr/<name>.nii.gz`` with ``labelsTr/<name>.nii.gz`` (``dataset.json`` used when
  present; images may be named ``<name>_0000.nii.gz`` for modality 0, as nnU-Net writes them).
- nnU-Net raw (v2): ``imagesTr/<name>_0000.nii.gz`` (further channels ``_0001``, ...) with
  ``labelsTr/<name>.nii.gz`` and a ``dataset.json`` holding ``channel_names``, ``labels``, ``numTraining``
  and ``file_ending`` (no list of cases); a case's channels are stacked into one ``[X, Y, Z, M]`` image.
- Subfolders: ``images/<name>.nii.gz`` with ``labels/<name>.nii.gz``.
- Flat folder: ``<name>.nii.gz`` with ``<name>_label``, ``_seg``, ``_mask`` (or ``_labels``) ``.nii.gz``.

Every listing is sorted by case name, so case indices (and :func:`kfold_splits` over them) are deterministic.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ugcn.io import (
    NIFTI_SUFFIXES,
    PathLike,
    Volume,
    atomic_directory,
    channel_files,
    check_same_grid,
    group_channel_files,
    image_folder,
    load_image,
    load_mask,
    nifti_files,
    nifti_stem,
    save_volume,
    write_text_atomic,
)

__all__ = ["Case", "Split", "find_cases", "load_case", "kfold_splits", "write_decathlon", "LABEL_SUFFIXES"]

# Suffixes that mark a label file next to its image in a flat folder (``ct_001.nii.gz`` + ``ct_001_seg.nii.gz``).
LABEL_SUFFIXES = ("_label", "_labels", "_seg", "_mask")
_MODALITY_SUFFIX = "_0000"


@dataclasses.dataclass(frozen=True)
class Case:
    """One case of a data set: an image and (optionally) its label file."""

    name: str
    image_path: Path
    label_path: Optional[Path] = None


@dataclasses.dataclass(frozen=True)
class Split:
    """Case indices of one cross-validation fold: ``int64[n_train]``, ``int64[n_val]``, ``int64[n_test]``."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


# ----------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------


def write_decathlon(
    out_dir: PathLike,
    cases: Iterable[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    *,
    name: str,
    description: str = "",
    modality: str = "CT",
    labels: Optional[dict[str, str]] = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write cases in the Decathlon layout: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``.

    The data set is assembled in a temporary sibling folder and moved into place at the end, so an error
    (or an interrupt) part-way leaves no half-written data set behind.

    Args:
      out_dir: the data set folder; must not exist or be empty, unless ``overwrite`` and it is a data set
        (holds ``dataset.json``): then it is replaced whole.
      cases: ``(case_name, image f32[X, Y, Z], label u8[X, Y, Z], affine f64[4, 4])`` tuples; may be a
        generator (consumed once).
      name: the data set name stored in ``dataset.json``.
      description: free text for ``dataset.json``.
      modality: the name of modality 0 (``"CT"``, ``"FLAIR"``...).
      labels: label value -> name; default ``{"0": "background", "1": "target"}``.
      overwrite: replace an existing non-empty ``out_dir``.

    Returns:
      The written image paths, in the order of ``cases``.

    Raises:
      ValueError: existing output without ``overwrite``, duplicate or bad case names, shape mismatches,
        non-finite images, no cases.
    """
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, overwrite=overwrite, marker="dataset.json") as tmp_dir:
        entries: list[dict] = []
        for case_name, image, label, affine in cases:
            case_name = str(case_name)
            if not case_name or "/" in case_name or os.sep in case_name or case_name.startswith("."):
                raise ValueError(f"write_decathlon: bad case name {case_name!r} (use letters, digits, _ and -)")
            if any(e["name"] == case_name for e in entries):
                raise ValueError(f"write_decathlon: case name {case_name!r} appears twice")
            image = np.asarray(image)
            label = np.asarray(label)
            if image.ndim != 3 or label.shape != image.shape:
                raise ValueError(
                    f"write_decathlon: case {case_name}: image {image.shape} and label {label.shape} must be the "
                    "same 3D shape"
                )
            if not np.all(np.isfinite(image)):
                raise ValueError(f"write_decathlon: case {case_name}: image holds NaN or infinite values")
            file_name = f"{case_name}.nii.gz"
            save_volume(tmp_dir / "imagesTr" / file_name, image.astype(np.float32), affine)
            save_volume(tmp_dir / "labelsTr" / file_name, label.astype(np.uint8), affine)
            entries.append({"name": case_name, "file": file_name})
        if not entries:
            raise ValueError("write_decathlon: no cases to write")
        meta = {
            "name": name,
            "description": description,
            "tensorImageSize": "3D",
            "modality": {"0": modality},
            "labels": labels if labels is not None else {"0": "background", "1": "target"},
            "numTraining": len(entries),
            "numTest": 0,
            "training": [
                {"image": f"./imagesTr/{e['file']}", "label": f"./labelsTr/{e['file']}"} for e in entries
            ],
            "test": [],
        }
        write_text_atomic(tmp_dir / "dataset.json", json.dumps(meta, indent=2) + "\n")
    return [out_dir / "imagesTr" / e["file"] for e in entries]


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------


def _case_name(image_path: Path) -> str:
    """Case name of an image file: its stem without a trailing ``_0000`` modality suffix."""
    stem = nifti_stem(image_path)
    return stem[: -len(_MODALITY_SUFFIX)] if stem.endswith(_MODALITY_SUFFIX) else stem


def _check_unique(cases: list[Case], folder: Path) -> list[Case]:
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{folder}: several images for case(s) {', '.join(dupes)} (e.g. .nii and .nii.gz)")
    return sorted(cases, key=lambda c: c.name)


def _pair_folders(folder: Path, images_dir: Path, labels_dir: Path, require_labels: bool) -> list[Case]:
    """Pair images and labels of two folders by case name (label files named like the case)."""
    if not nifti_files(images_dir):
        raise ValueError(f"{images_dir}: no NIfTI images (.nii or .nii.gz) found")
    images = image_folder(images_dir)  # nnU-Net channel files grouped: one path (channel 0) per case
    labels = {}
    for path in nifti_files(labels_dir):
        key = _case_name(path)
        if key in labels:
            raise ValueError(f"{labels_dir}: several label files for case {key}")
        labels[key] = path
    cases = [Case(_case_name(p), p, labels.get(_case_name(p))) for p in images]
    names = {c.name for c in cases}
    orphans = sorted(set(labels) - names)
    if orphans:
        raise ValueError(f"{labels[orphans[0]]}: label without an image in {images_dir}")
    return _require(_check_unique(cases, folder), require_labels)


def _require(cases: list[Case], require_labels: bool) -> list[Case]:
    if require_labels:
        missing = [c for c in cases if c.label_path is None]
        if missing:
            raise ValueError(
                f"{missing[0].image_path}: image has no label file ({len(missing)} case(s) without labels)"
            )
    return cases


def _from_nnunet_json(folder: Path, meta: dict, require_labels: bool) -> list[Case]:
    """nnU-Net v2 raw data set: ``dataset.json`` describes the channels; the cases are the files."""
    path = folder / "dataset.json"
    ending = meta.get("file_ending", ".nii.gz")
    if ending not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: file_ending {ending!r} is not supported (NIfTI only: .nii.gz or .nii)")
    channels = meta.get("channel_names") or meta.get("modality") or {"0": "image"}
    if not isinstance(channels, dict):
        raise ValueError(f"{path}: channel_names must map channel numbers to names, got {channels!r}")
    if not (folder / "imagesTr").is_dir():
        raise ValueError(f"{folder}: an nnU-Net data set needs imagesTr/ (with <case>_0000{ending} files)")
    cases = _pair_folders(folder, folder / "imagesTr", folder / "labelsTr", require_labels)
    for case in cases:
        n = len(channel_files(case.image_path))
        if n != len(channels):
            raise ValueError(f"{case.image_path}: {n} channel file(s), but {path.name} lists {len(channels)} "
                             f"channel_names ({', '.join(map(str, channels.values()))})")
    listed = meta.get("numTraining")
    if listed is not None and int(listed) != len(cases):
        raise ValueError(f"{path}: numTraining is {listed}, but imagesTr holds {len(cases)} case(s)")
    return cases


def _from_dataset_json(folder: Path, require_labels: bool) -> list[Case]:
    path = folder / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable dataset.json ({type(err).__name__}: {err})") from None
    if isinstance(meta, dict) and "training" not in meta and ("channel_names" in meta or "file_ending" in meta):
        return _from_nnunet_json(folder, meta, require_labels)
    try:
        entries = meta["training"]
        if not isinstance(entries, list):
            raise TypeError("'training' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a valid Decathlon (training list) or nnU-Net (channel_names, file_ending) "
                         f"dataset.json ({type(err).__name__}: {err})") from None
    cases = []
    for entry in entries:
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{path}: every 'training' entry needs an 'image' (got {entry!r})")
        image = folder / entry["image"]
        if not image.exists():
            # MSD lists 'imagesTr/x.nii.gz' while nnU-Net-style folders hold 'imagesTr/x_0000.nii.gz'.
            alt = image.with_name(nifti_stem(image) + _MODALITY_SUFFIX + image.name[len(nifti_stem(image)):])
            if not alt.exists():
                raise ValueError(f"{path}: lists {entry['image']}, which does not exist")
            image = alt
        label = folder / entry["label"] if entry.get("label") else None
        if label is not None and not label.exists():
            raise ValueError(f"{path}: lists label {entry['label']}, which does not exist")
        cases.append(Case(_case_name(image), image, label))
    if not cases:
        raise ValueError(f"{path}: lists no training cases")
    return _require(_check_unique(cases, folder), require_labels)


def _flat_folder(folder: Path, require_labels: bool) -> list[Case]:
    files = nifti_files(folder)
    labels: dict[str, Path] = {}
    images: list[Path] = []
    for path in files:
        stem = nifti_stem(path)
        suffix = next((s for s in LABEL_SUFFIXES if stem.endswith(s)), None)
        if suffix is None:
            images.append(path)
        else:
            key = stem[: -len(suffix)]
            if key in labels:
                raise ValueError(f"{folder}: several label files for case {key}")
            labels[key] = path
    if not images:
        raise ValueError(f"{folder}: no NIfTI images (.nii or .nii.gz) found")
    images = group_channel_files(images)  # nnU-Net channel files: one case each
    cases = [Case(_case_name(p), p, labels.get(nifti_stem(p), labels.get(_case_name(p)))) for p in images]
    used = {c.label_path for c in cases}
    orphans = sorted(p for p in labels.values() if p not in used)
    if orphans:
        raise ValueError(f"{orphans[0]}: label without an image (expected {orphans[0].parent}/<name>.nii.gz)")
    return _require(_check_unique(cases, folder), require_labels)


def find_cases(folder: PathLike, *, require_labels: bool = True) -> list[Case]:
    """List the cases of a data set folder (Decathlon, nnU-Net raw, ``images/``+``labels/``, or flat pairs).

    Args:
      folder: the data set folder.
      require_labels: every image must have a label (default); ``False`` allows unlabelled images
        (``label_path=None``), e.g. for inference.

    Returns:
      Cases sorted by name.

    Raises:
      ValueError: missing folder, no images, an image without its label (when required), a label without
        an image, duplicate case names, a broken ``dataset.json``.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a folder")
    if (folder / "dataset.json").is_file():
        return _from_dataset_json(folder, require_labels)
    if (folder / "imagesTr").is_dir():
        return _pair_folders(folder, folder / "imagesTr", folder / "labelsTr", require_labels)
    if (folder / "images").is_dir():
        return _pair_folders(folder, folder / "images", folder / "labels", require_labels)
    return _flat_folder(folder, require_labels)


def load_case(case: Case) -> tuple[Volume, Optional[Volume]]:
    """Read a case: its image (``f32[X, Y, Z]`` or ``[X, Y, Z, M]``) and label (``u8[X, Y, Z]`` or ``None``).

    Raises:
      ValueError: unreadable files, non-finite image, a label that is not integer, or a label whose
        shape/affine differs from the image's.
    """
    image = load_image(case.image_path)  # nnU-Net's channel files stacked
    if case.label_path is None:
        return image, None
    label = load_mask(case.label_path)
    check_same_grid(image, label, what="label")
    return image, label


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------


def kfold_splits(n_cases: int, k: int = 4, *, seed: int = 0, val_fraction: float = 0.2) -> list[Split]:
    """K-fold cross-validation with a validation set carved from each fold's training cases.

    The cases are shuffled once (``seed``) and cut into ``k`` near-equal test folds, so each case is a
    test case in exactly one fold (25 % test per fold for ``k = 4``). In each fold the remaining cases
    are shuffled again and split ``1 - val_fraction`` / ``val_fraction`` into train / validation (L's
    protocol: 80 / 20). Indices within each set are sorted.

    Args:
      n_cases: number of cases (indices ``0 .. n_cases - 1``).
      k: number of folds, >= 2.
      seed: integer seed; the same seed gives the same splits.
      val_fraction: fraction of the non-test cases used for validation, in (0, 1).

    Returns:
      ``k`` :class:`Split` records of ``int64`` index arrays.

    Raises:
      ValueError: ``k < 2``, ``n_cases < k``, ``val_fraction`` outside (0, 1), or a fold whose validation
        (or training) set would be empty.
    """
    n_cases, k = int(n_cases), int(k)
    if k < 2:
        raise ValueError(f"kfold_splits: k must be at least 2, got {k}")
    if n_cases < k:
        raise ValueError(f"kfold_splits: {n_cases} cases cannot make {k} folds (need at least {k} cases)")
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"kfold_splits: val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), n_cases, k]))
    order = rng.permutation(n_cases)
    folds = np.array_split(order, k)
    splits = []
    for i, test in enumerate(folds):
        rest = rng.permutation(np.concatenate([f for j, f in enumerate(folds) if j != i]))
        n_val = int(round(val_fraction * rest.size))
        if n_val < 1 or n_val >= rest.size:
            raise ValueError(
                f"kfold_splits: fold {i} has {rest.size} non-test cases; a validation fraction of {val_fraction} "
                f"leaves {'no validation' if n_val < 1 else 'no training'} case (use more cases or fewer folds)"
            )
        splits.append(Split(train=np.sort(rest[n_val:]).astype(np.int64), val=np.sort(rest[:n_val]).astype(np.int64),
                            test=np.sort(test).astype(np.int64)))
    return splits
