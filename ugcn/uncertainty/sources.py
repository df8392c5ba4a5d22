"""Sample sources: one way from "a model and an image" or "samples of any framework" to what every consumer
uses — the prediction, the expectation, the streaming statistics and the estimator maps of one volume.

Three sources, one record (:class:`SampledVolume`):

* :func:`from_model` — a ugcn segmentation model on an image: ``T`` MC-dropout passes (``method="mc"``) or
  ``T`` test-time-augmented passes with dropout off (``method="tta"``); the prediction is the deterministic
  pass (``prediction="deterministic"``) or the expectation's most probable class (``"mean"``).
* :func:`from_sample_file` — a 4D NIfTI ``(X, Y, Z, T)`` of ``T`` foreground probability maps written by any
  framework; the prediction is the expectation's most probable class.
* :func:`from_samples` — arrays: ``f32[T, X, Y, Z, C]`` class probabilities or ``f32[T, X, Y, Z]``
  foreground probabilities.
* :func:`from_model_batch` — :func:`from_model`'s MC dropout for many images at once, the volumes sharded over
  devices (:func:`~ugcn.uncertainty.cohort.mc_sample_batch`): what the folder commands use. Each volume's
  record equals the one :func:`from_model` gives it alone with the same seed.

All of them end in :func:`summarize` (statistics -> record), which computes every requested estimator in ONE
compiled call (:func:`~ugcn.uncertainty.estimators.estimator_maps`) and keeps the samples only when asked or
when an estimator needs them. Nothing downstream names an estimator: consumers pass the names they were given.
The sampling itself is :func:`~ugcn.uncertainty.sampling.mc_sample` and :func:`~ugcn.uncertainty.tta.tta_sample`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from ugcn.uncertainty.estimators import Estimator, estimator_maps, parse_estimator_names
from ugcn.uncertainty.measures import expectation as expectation_of
from ugcn.uncertainty.sampling import load_sample_maps, mc_sample, result_from_canonical
from ugcn.uncertainty.stats import SampleStats, stats_from_samples
from ugcn.uncertainty.tta import TRANSFORM_COLUMNS, tta_sample, tta_transforms

EstimatorSpec = Union[str, Sequence[Union[str, Estimator]]]
METHODS = ("mc", "tta")
PREDICTIONS = ("deterministic", "mean")


@dataclasses.dataclass(frozen=True)
class SampledVolume:
    """What a sample source yields for one volume.

    Attributes:
      prediction: ``u8[X, Y, Z]`` predicted class (binary: 1 = foreground).
      expectation: ``f32[X, Y, Z, C]`` mean class probabilities over the ``T`` samples.
      stats: :class:`~ugcn.uncertainty.stats.SampleStats` (sums over the samples; more estimators later).
      maps: ``{estimator name: f32[X, Y, Z]}`` in the order requested.
      samples: ``f32[T, X, Y, Z, C]`` when kept, else ``None``.
      source: how the samples were made (``kind``, ``n_samples``, and the source's settings), for reports.
    """

    prediction: np.ndarray
    expectation: np.ndarray
    stats: SampleStats
    maps: dict[str, np.ndarray]
    samples: Optional[jnp.ndarray]
    source: dict

    @property
    def n_samples(self) -> int:
        """``T``."""
        return int(self.stats.count)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return int(self.expectation.shape[-1])

    @property
    def foreground(self) -> np.ndarray:
        """``f32[X, Y, Z]`` foreground expectation ``E`` of a binary segmentation.

        Raises:
          ValueError: more than two classes (``E`` of one class is then ``expectation[..., c]``).
        """
        if self.num_classes != 2:
            raise ValueError(f"a foreground expectation needs 2 classes; these samples have {self.num_classes}")
        return self.expectation[..., 1]


def _wanted(estimators: EstimatorSpec) -> tuple[Estimator, ...]:
    return tuple(parse_estimator_names(estimators)) if estimators else ()


def summarize(
    stats: SampleStats,
    estimators: EstimatorSpec = (),
    *,
    samples: Optional[jnp.ndarray] = None,
    prediction: Optional[np.ndarray] = None,
    keep_samples: bool = False,
    source: Optional[dict] = None,
) -> SampledVolume:
    """The record of one volume from its sample statistics (the last step of every source).

    Args:
      stats: sums over ``T`` samples, ``f32[X, Y, Z, C]``.
      estimators: registry names, ``module:function`` specs or :class:`Estimator` objects (or one
        comma-separated string); all maps come from one compiled call.
      samples: ``f32[T, X, Y, Z, C]``; needed by ``needs="samples"`` estimators.
      prediction: ``[X, Y, Z]`` class indices; default: the expectation's most probable class.
      keep_samples: keep ``samples`` in the record (they are kept anyway when an estimator needs them).
      source: description merged into :attr:`SampledVolume.source`.

    Raises:
      ValueError: as :func:`~ugcn.uncertainty.estimators.estimator_maps` (unknown estimator, samples missing),
        or a prediction whose shape differs from the samples'.
    """
    wanted = _wanted(estimators)
    needs_samples = any(e.needs == "samples" for e in wanted)
    maps = {k: np.asarray(v, np.float32)
            for k, v in estimator_maps(wanted, stats, samples if needs_samples else None).items()} if wanted else {}
    mean = np.asarray(expectation_of(stats), np.float32)
    if prediction is None:
        prediction = np.argmax(mean, axis=-1)
    prediction = np.asarray(prediction)
    if prediction.shape != mean.shape[:-1]:
        raise ValueError(f"prediction shape {prediction.shape} differs from the samples' {mean.shape[:-1]}")
    kept = samples if (keep_samples or needs_samples) else None
    info = {"n_samples": int(stats.count), **(source or {})}
    return SampledVolume(prediction.astype(np.uint8), mean, stats, maps, kept, info)


def from_samples(
    samples: Any,
    estimators: EstimatorSpec = (),
    *,
    prediction: Optional[np.ndarray] = None,
    keep_samples: bool = True,
    source: Optional[dict] = None,
) -> SampledVolume:
    """A volume's record from sample arrays.

    Args:
      samples: ``f32[T, X, Y, Z, C]`` class probabilities (``C >= 2``), or ``f32[T, X, Y, Z]`` foreground
        probabilities (read as ``[1 - p, p]``), in ``[0, 1]``.
      estimators, prediction, keep_samples, source: as :func:`summarize`.

    Raises:
      ValueError: wrong number of axes, NaN/inf or values outside ``[0, 1]``.
    """
    arr = jnp.asarray(samples, jnp.float32)
    if arr.ndim == 4:
        arr = jnp.stack([1.0 - arr, arr], axis=-1)
    if arr.ndim != 5 or arr.shape[-1] < 2:
        raise ValueError(f"samples must be [T, X, Y, Z, C] (C >= 2) or [T, X, Y, Z] foreground maps, got "
                         f"shape {tuple(np.shape(samples))}")
    lo, hi = float(jnp.min(arr)), float(jnp.max(arr))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"samples must be probabilities in [0, 1], got values in [{lo}, {hi}]")
    return summarize(stats_from_samples(arr), estimators, samples=arr, prediction=prediction,
                     keep_samples=keep_samples, source={"kind": "samples", **(source or {})})


def from_sample_file(
    path: Union[str, Path],
    estimators: EstimatorSpec = (),
    *,
    reference: Any = None,
    keep_samples: bool = True,
) -> SampledVolume:
    """A volume's record from a 4D NIfTI ``(X, Y, Z, T)`` of ``T`` foreground probability maps.

    Args:
      path: the file (:func:`~ugcn.uncertainty.sampling.load_sample_maps`).
      estimators, keep_samples: as :func:`summarize`.
      reference: a :class:`~ugcn.io.Volume` (e.g. the image) the maps must share a grid with.

    Raises:
      ValueError: unreadable file, not 4D, values outside ``[0, 1]``, or a grid other than ``reference``'s.
    """
    samples, volume = load_sample_maps(path)
    if reference is not None:
        from ugcn.io import check_same_grid

        check_same_grid(reference, volume, what="sample maps")
    return from_samples(samples, estimators, keep_samples=keep_samples, source={"file": str(path)})


def from_model(
    model: Any,
    image: Any,
    estimators: EstimatorSpec = (),
    *,
    method: str = "mc",
    key: Optional[jax.Array] = None,
    seed: int = 0,
    n_samples: int = 20,
    chunk_size: int = 4,
    tta_max_shift: int = 2,
    prediction: str = "deterministic",
    affine: Optional[np.ndarray] = None,
    keep_samples: bool = False,
    volume_fn: Any = None,
) -> SampledVolume:
    """A volume's record from ``T`` stochastic passes of a ugcn segmentation model.

    Args:
      model: a ``ugcn.segment.SegmentationModel``.
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      estimators, keep_samples: as :func:`summarize`.
      method: ``"mc"`` (dropout on; pass ``t`` uses ``split(key, T)[t]``) or ``"tta"`` (dropout off; flips
        and in-plane shifts up to ``tta_max_shift`` voxels, the transforms of ``seed``).
      key: PRNG key of the passes (default ``jax.random.key(seed)``).
      seed: seeds the key (when not given) and the TTA transforms.
      n_samples, chunk_size: ``T`` and the passes computed together.
      prediction: ``"deterministic"`` (one pass with dropout off, most probable class) or ``"mean"`` (the
        expectation's most probable class).
      affine: the image's affine: the model then runs on the image in canonical (RAS+) order, as ugcn's
        models are trained, and every output comes back in the image's own voxel order. ``None``: as given.
      volume_fn: the model's volume function for ``method`` (``make_volume_fn(model, stochastic=...)``); pass
        the same object for every image so that the sampler compiles once.

    Raises:
      ValueError: unknown ``method``/``prediction``, bad sampling settings, non-finite image.
    """
    from ugcn.segment.model import make_volume_fn, predict_probabilities

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if int(tta_max_shift) < 0:
        raise ValueError(f"tta_max_shift must be >= 0, got {tta_max_shift}")
    wanted = _wanted(estimators)
    keep = keep_samples or any(e.needs == "samples" for e in wanted)
    if volume_fn is None:
        volume_fn = make_volume_fn(model, stochastic=method == "mc")
    if key is None:
        key = jax.random.key(seed)
    grid = image if affine is None else _canonical(image, affine)
    source: dict = {"kind": method, "prediction": prediction}
    if method == "tta":
        shifts = tuple(range(-int(tta_max_shift), int(tta_max_shift) + 1))
        result = tta_sample(volume_fn, grid, key, seed=seed, n_samples=n_samples, shifts=shifts,
                            chunk_size=chunk_size, keep_samples=keep)
        source["tta"] = {"max_shift": int(tta_max_shift), "columns": list(TRANSFORM_COLUMNS),
                         "transforms": tta_transforms(n_samples, seed=seed, shifts=shifts).tolist()}
    else:
        result = mc_sample(volume_fn, grid, key, n_samples=n_samples, chunk_size=chunk_size, keep_samples=keep)
    if affine is not None:
        result = result_from_canonical(result, affine)
    pred = None
    if prediction == "deterministic":
        pred = np.argmax(predict_probabilities(model, image, affine), axis=-1)
    return summarize(result.stats, wanted, samples=result.samples, prediction=pred, keep_samples=keep_samples,
                     source=source)


def from_model_batch(
    model: Any,
    images: Sequence[Any],
    estimators: EstimatorSpec = (),
    *,
    affines: Optional[Sequence[Optional[np.ndarray]]] = None,
    seed: int = 0,
    n_samples: int = 20,
    chunk_size: int = 4,
    prediction: str = "deterministic",
    keep_samples: bool = False,
    devices: Any = None,
    volume_fn: Any = None,
) -> list[SampledVolume]:
    """:func:`from_model` (``method="mc"``) for several images, MC dropout of same-shaped ones run together.

    Args:
      model: a ``ugcn.segment.SegmentationModel``.
      images: ``f32[X, Y, Z(, M)]`` arrays; shapes may differ (volumes of one shape are stacked).
      affines: each image's affine (as :func:`from_model`'s ``affine``: the passes run in RAS+ order, the
        outputs come back in the image's voxel order), or ``None``.
      seed: every volume's passes use ``jax.random.key(seed)``, as :func:`from_model` does for one volume, so
        a record depends on neither the batch nor the device count.
      estimators, n_samples, chunk_size, prediction, keep_samples, volume_fn: as :func:`from_model`.
      devices: ``None`` (one device), a device count or a :func:`ugcn.parallel.device_mesh`.

    Returns:
      One :class:`SampledVolume` per image, in order.
    """
    import operator

    from ugcn.segment.model import make_volume_fn, predict_probabilities
    from ugcn.uncertainty.cohort import mc_sample_batch

    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    affines = list(affines) if affines is not None else [None] * len(images)
    if len(affines) != len(images):
        raise ValueError(f"{len(images)} images but {len(affines)} affines")
    wanted = _wanted(estimators)
    keep = keep_samples or any(e.needs == "samples" for e in wanted)
    if volume_fn is None:
        volume_fn = make_volume_fn(model, stochastic=True)
    grids = [np.asarray(x) if a is None else _canonical(x, a) for x, a in zip(images, affines)]
    groups: dict[tuple, list[int]] = {}
    for i, grid in enumerate(grids):
        groups.setdefault(grid.shape, []).append(i)
    out: list[Optional[SampledVolume]] = [None] * len(images)
    for members in groups.values():
        keys = jnp.stack([jax.random.key(seed)] * len(members))
        result = mc_sample_batch(volume_fn, np.stack([grids[i] for i in members]), keys, n_samples=n_samples,
                                 chunk_size=chunk_size, keep_samples=keep, devices=devices)
        for b, i in enumerate(members):
            one = jax.tree_util.tree_map(operator.itemgetter(b), result)
            if affines[i] is not None:
                one = result_from_canonical(one, affines[i])
            pred = None
            if prediction == "deterministic":
                pred = np.argmax(predict_probabilities(model, images[i], affines[i]), axis=-1)
            out[i] = summarize(one.stats, wanted, samples=one.samples, prediction=pred, keep_samples=keep_samples,
                               source={"kind": "mc", "prediction": prediction})
    return [record for record in out if record is not None]


def _canonical(image: Any, affine: np.ndarray) -> np.ndarray:
    from ugcn.io import to_canonical

    return to_canonical(np.asarray(image), affine)
