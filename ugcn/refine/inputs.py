"""Method R's inputs from files: an image, a sample source, an optional prediction and ground truth.

:func:`refine_input` turns one volume's :class:`~ugcn.uncertainty.sources.SampledVolume` (from any sample
source of :mod:`ugcn.uncertainty.sources`) into the :class:`~ugcn.refine.pipeline.RefineInput` that
:func:`~ugcn.refine.pipeline.refine_volume` and :func:`~ugcn.refine.pipeline.refine_batch` take: the
expectation ``E`` (foreground), the uncertainty map ``U`` of the chosen estimator and the prediction ``Ŷ``
(given, else the source's: the model's deterministic pass, or ``E > 0.5`` for sample maps).
:func:`load_refine_inputs` does it from file paths (``ugcn refine``); :func:`sample_refine_inputs` for a
batch of images with one model, the MC dropout of same-shaped volumes sharded over devices
(``ugcn refine-batch``). No command computes ``E`` or ``U`` itself.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ugcn.refine.pipeline import RefineInput

PathLike = Union[str, Path]


def _binary_mask(path: PathLike, image: Any) -> np.ndarray:
    from ugcn.io import check_same_grid, load_mask

    mask = load_mask(path)
    check_same_grid(image, mask)
    return mask.array != 0


def refine_input(
    image: Any,
    sampled: Any,
    uncertainty: str,
    *,
    prediction: Optional[np.ndarray] = None,
    label: Optional[np.ndarray] = None,
    name: Optional[str] = None,
) -> RefineInput:
    """One volume's refinement input.

    Args:
      image: :class:`~ugcn.io.Volume` ``f32[X, Y, Z(, M)]`` (its array and spacing are used).
      sampled: the volume's :class:`~ugcn.uncertainty.sources.SampledVolume`, with the map of ``uncertainty``.
      uncertainty: the estimator name of ``U`` (a key of ``sampled.maps``).
      prediction: ``bool[X, Y, Z]`` ``Ŷ``; default: ``sampled.prediction > 0``.
      label: ``bool[X, Y, Z]`` ground truth (Dice per method), or ``None``.
      name: the volume's name in messages (default: ``sampled.source``'s ``file``, else ``"volume"``).

    Raises:
      ValueError: samples of more than two classes (method R refines a binary segmentation), or ``U``
        missing from ``sampled.maps``.
    """
    if sampled.num_classes != 2:
        raise ValueError(f"method R refines a binary segmentation; the samples have {sampled.num_classes} classes")
    if uncertainty not in sampled.maps:
        raise ValueError(f"no {uncertainty!r} map among the sampled maps {sorted(sampled.maps)}")
    pred = sampled.prediction > 0 if prediction is None else np.asarray(prediction, bool)
    return RefineInput(image.array, pred, sampled.foreground, np.asarray(sampled.maps[uncertainty], np.float32),
                       label, name=name or str(sampled.source.get("file", "volume")), spacing=image.spacing)


def _finish(image_path: PathLike, image: Any, sampled: Any, uncertainty: str, source: dict,
            prediction_path: Optional[PathLike], label_path: Optional[PathLike]) -> tuple[RefineInput, dict]:
    """The input of one volume and the description of where it came from (for its report)."""
    prediction = None
    if prediction_path is not None:
        prediction = _binary_mask(prediction_path, image)
        source["prediction"] = str(prediction_path)
    elif "samples" in source:
        source["prediction"] = "E > 0.5 (no --prediction given)"
    label = None
    if label_path is not None:
        label = _binary_mask(label_path, image)
        source["label"] = str(label_path)
    return refine_input(image, sampled, uncertainty, prediction=prediction, label=label, name=str(image_path)), source


def load_refine_inputs(
    image_path: PathLike,
    *,
    uncertainty: str,
    samples_path: Optional[PathLike] = None,
    model: Any = None,
    model_path: Optional[PathLike] = None,
    volume_fn: Any = None,
    prediction_path: Optional[PathLike] = None,
    label_path: Optional[PathLike] = None,
    n_samples: int = 20,
    chunk_size: int = 4,
    seed: int = 0,
) -> tuple[RefineInput, Any, dict]:
    """One volume's input from files: ``(RefineInput, image Volume, source)``.

    Args:
      image_path: the image (nnU-Net's channel files are stacked).
      uncertainty: the estimator of ``U`` (a registered name or ``module:function``).
      samples_path: a 4D NIfTI ``(X, Y, Z, T)`` of ``T`` foreground maps
        (:func:`~ugcn.uncertainty.sources.from_sample_file`); else ``model``:
      model: a binary ugcn segmentation model: the deterministic pass is ``Ŷ``, ``n_samples`` MC-dropout
        passes of ``jax.random.key(seed)`` give ``E`` and ``U`` (:func:`~ugcn.uncertainty.sources.from_model`).
      model_path: recorded in ``source``; volume_fn: the model's stochastic volume function (the same object
        for every image, so that the sampler compiles once).
      prediction_path, label_path: masks on the image's grid, or ``None``.

    Returns:
      ``source``: ``image``, ``samples`` or ``model``, ``n_samples``, ``prediction`` and ``label`` when given,
      and ``seconds`` spent reading and sampling.

    Raises:
      ValueError: neither or both of ``samples_path`` and ``model``, grids that differ, a model or samples
        that are not binary, an unknown estimator.
    """
    from ugcn.io import load_image
    from ugcn.uncertainty.sources import from_model, from_sample_file

    if (samples_path is None) == (model is None):
        raise ValueError("give either sample maps or a model")
    t0 = time.perf_counter()
    image = load_image(image_path)
    source: dict[str, Any] = {"image": str(image_path)}
    if samples_path is not None:
        sampled = from_sample_file(samples_path, [uncertainty], reference=image, keep_samples=False)
        source.update(samples=str(samples_path), n_samples=sampled.n_samples)
    else:
        sampled = from_model(model, image.array, [uncertainty], seed=seed, n_samples=n_samples,
                             chunk_size=chunk_size, affine=image.affine, volume_fn=volume_fn)
        source.update(model=str(model_path), n_samples=sampled.n_samples)
    x, source = _finish(image_path, image, sampled, uncertainty, source, prediction_path, label_path)
    source["seconds"] = time.perf_counter() - t0
    return x, image, source


def find_case_file(folder: Optional[PathLike], stem: str, what: str,
                   suffixes: Sequence[str] = ("",)) -> Optional[Path]:
    """``folder/<stem><suffix>.nii.gz`` (or ``.nii``) for the first suffix that exists; ``None`` without a folder.

    Raises:
      ValueError: ``folder`` holds no such file.
    """
    if folder is None:
        return None
    for suffix in suffixes:
        for ext in (".nii.gz", ".nii"):
            path = Path(folder) / f"{stem}{suffix}{ext}"
            if path.exists():
                return path
    expected = " or ".join(f"{stem}{suffix}.nii.gz" for suffix in suffixes)
    raise ValueError(f"{folder}: no {what} for case {stem!r} (expected {expected})")


def find_sample_file(samples_dir: PathLike, case: str) -> Path:
    """The 4D sample maps ``(X, Y, Z, T)`` of ``case`` in ``samples_dir``: ``<case>.nii.gz`` or
    ``<case>_samples.nii.gz`` (or ``.nii``), as ``ugcn refine-batch --samples-dir``, the estimator study and the
    lesion protocol read them.

    Raises:
      ValueError: ``samples_dir`` holds neither file.
    """
    path = find_case_file(samples_dir, case, "sample maps", ("", "_samples"))
    assert path is not None  # a folder was given
    return path


def sample_refine_inputs(
    image_paths: Sequence[PathLike],
    *,
    uncertainty: str,
    samples_dir: Optional[PathLike] = None,
    model: Any = None,
    model_path: Optional[PathLike] = None,
    volume_fn: Any = None,
    predictions_dir: Optional[PathLike] = None,
    labels_dir: Optional[PathLike] = None,
    n_samples: int = 20,
    chunk_size: int = 4,
    seed: int = 0,
    devices: Any = None,
) -> list[tuple[RefineInput, Any, dict]]:
    """:func:`load_refine_inputs` for a batch of images, the files found by case name in folders.

    ``samples_dir`` holds ``<case>.nii.gz`` or ``<case>_samples.nii.gz``; ``predictions_dir`` and
    ``labels_dir`` ``<case>.nii.gz``. With ``model``, the MC dropout of every image runs in one call
    (:func:`~ugcn.uncertainty.sources.from_model_batch`, same-shaped volumes stacked and sharded over
    ``devices``), each volume with ``jax.random.key(seed)``: a volume's input equals the one
    :func:`load_refine_inputs` gives it alone. ``source["seconds"]`` shares the batch's sampling time equally.
    """
    from ugcn.io import case_name, load_image
    from ugcn.uncertainty.sources import from_model_batch

    if (samples_dir is None) == (model is None):
        raise ValueError("give either a folder of sample maps or a model")
    if samples_dir is not None:
        return [load_refine_inputs(p, uncertainty=uncertainty,
                                   samples_path=find_sample_file(samples_dir, case_name(p)),
                                   prediction_path=find_case_file(predictions_dir, case_name(p), "prediction"),
                                   label_path=find_case_file(labels_dir, case_name(p), "label"))
                for p in image_paths]
    t0 = time.perf_counter()
    images = [load_image(p) for p in image_paths]
    records = from_model_batch(model, [v.array for v in images], [uncertainty], affines=[v.affine for v in images],
                               seed=seed, n_samples=n_samples, chunk_size=chunk_size, devices=devices,
                               volume_fn=volume_fn)
    seconds = (time.perf_counter() - t0) / max(len(images), 1)
    out = []
    for path, image, sampled in zip(image_paths, images, records):
        t = time.perf_counter()
        source = {"image": str(path), "model": str(model_path), "n_samples": sampled.n_samples}
        x, source = _finish(path, image, sampled, uncertainty, source,
                            find_case_file(predictions_dir, case_name(path), "prediction"),
                            find_case_file(labels_dir, case_name(path), "label"))
        source["seconds"] = seconds + time.perf_counter() - t
        out.append((x, image, source))
    return out
