"""Dense-CRF baseline of method R (docs/method.md R13), with pydensecrf (the ``crf`` extra).

A binary 3D fully connected CRF (Krähenbühl & Koltun 2011) on the ROI: a unary ``-log p`` per voxel, a
Gaussian (smoothness) kernel and a bilateral (appearance) kernel, Potts compatibilities, mean-field inference.

Two settings (:class:`CRFConfig`):

- :data:`REFERENCE_CRF`, the authors' setting: unary from the binary ``Ŷ`` with a ``1e-15`` floor (a cost of
  34.5 nats against the predicted label: no pairwise term can outweigh it, so this CRF returns ``Ŷ``), a
  Gaussian kernel whose widths are the ROI's shape in voxels (an almost position-independent prior that pulls
  every voxel towards the ROI's majority label), a bilateral kernel of 10 voxels and 1 raw intensity unit.
- :class:`CRFConfig` with a floor on the unary (``p`` is clipped to ``[floor, 1 - floor]``, so the strongest
  unary is ``log((1 - floor) / floor)``: 2.9 nats for 0.05), from the MC expectation ``E`` or from ``Ŷ``;
  kernel widths in millimetres (divided by the voxel spacing, so anisotropic CT slices are handled) and the
  bilateral intensity width in units of the image's spread inside the predicted organ (the robust standard
  deviation, 1.4826 × MAD, of the ROI's voxels in ``Ŷ``), so one setting transfers between scanners' scales.

The default values are what :func:`tune_crf` chose over :data:`DEFAULT_GRID` (24 settings, both unaries) on
4 training phantoms of a 4-volume demo U-Net (600 steps; the demo now trains on 8 volumes and runs its own
search, which chose the unary from ``E`` with a 0.2 floor for its network): unary from ``Ŷ`` with a 0.05 floor, a 2 mm
smoothness kernel (compat 1), a 10 mm bilateral kernel of 2 × the organ's spread (compat 3). Measured there:
every setting with the unary from ``E`` lost 1.5-13 Dice points on the training volumes (``E > 0.5`` itself
is below ``Ŷ`` for these networks), and on the held-out volumes no setting of the grid gained more than
0.001 over ``Ŷ`` (the phantom organ differs from its neighbours by less than the noise, so the bilateral
term has little to go on), while strong settings erased whole organs. Tune on your own training volumes
with :func:`tune_crf` (a small grid search, as the literature tuned its CRFs).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ugcn.config import setting
from ugcn.graph.voxel_graph import bounding_box, largest_component

INSTALL_HINT = 'the CRF baseline needs pydensecrf: pip install "ugcn[crf]"'

UNARIES = ("expectation", "prediction")
SPATIAL_UNITS = ("mm", "voxel")
INTENSITY_UNITS = ("organ_std", "raw")


class CRFUnavailableError(ImportError):
    """pydensecrf cannot be imported; the message says how to install it."""


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import create_pairwise_bilateral, create_pairwise_gaussian
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CRFUnavailableError(f"{INSTALL_HINT} ({err})") from None
    return dcrf, create_pairwise_gaussian, create_pairwise_bilateral


def crf_available() -> bool:
    """True when pydensecrf imports."""
    try:
        _densecrf()
    except CRFUnavailableError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class CRFConfig:
    """Settings of the dense-CRF baseline (defaults: chosen by :func:`tune_crf` on the demo's phantoms).

    Attributes:
      unary: ``"expectation"`` (``-log`` of the MC expectation ``E``) or ``"prediction"`` (of the binary ``Ŷ``,
        the reference).
      floor: probabilities are clipped to ``[floor, 1 - floor]`` before ``-log``: caps the unary's confidence.
      spatial_units: ``"mm"`` (widths divided by the voxel spacing) or ``"voxel"`` (the reference).
      gaussian_width: width of the smoothness kernel (``spatial_units``); ``None``: the ROI's shape in voxels
        (the reference).
      gaussian_compat: Potts weight of the smoothness kernel.
      bilateral_width: spatial width of the bilateral kernel (``spatial_units``).
      intensity_units: ``"organ_std"`` (``intensity_width`` times the robust std of the image over ``Ŷ`` in the
        ROI, per channel) or ``"raw"`` (image units, the reference).
      intensity_width: intensity width of the bilateral kernel (``intensity_units``).
      bilateral_compat: Potts weight of the bilateral kernel.
      iterations: mean-field iterations.
    """

    unary: str = setting("prediction", choices=UNARIES)
    floor: float = setting(0.05, gt=0, lt=0.5)
    spatial_units: str = setting("mm", choices=SPATIAL_UNITS)
    gaussian_width: Optional[float] = setting(2.0, gt=0)
    gaussian_compat: float = setting(1.0, min=0)
    bilateral_width: float = setting(10.0, gt=0)
    intensity_units: str = setting("organ_std", choices=INTENSITY_UNITS)
    intensity_width: float = setting(2.0, gt=0)
    bilateral_compat: float = setting(3.0, min=0)
    iterations: int = setting(10, min=1)

    def __post_init__(self):
        checks = [
            (self.unary in UNARIES, f"unary must be one of {UNARIES}, got {self.unary!r}"),
            (self.spatial_units in SPATIAL_UNITS,
             f"spatial_units must be one of {SPATIAL_UNITS}, got {self.spatial_units!r}"),
            (self.intensity_units in INTENSITY_UNITS,
             f"intensity_units must be one of {INTENSITY_UNITS}, got {self.intensity_units!r}"),
            (0.0 < self.floor < 0.5, f"floor must be in (0, 0.5), got {self.floor}"),
            (self.gaussian_width is None or self.gaussian_width > 0,
             f"gaussian_width must be > 0 or None, got {self.gaussian_width}"),
            (self.bilateral_width > 0 and self.intensity_width > 0,
             f"bilateral_width and intensity_width must be > 0, got {self.bilateral_width}, {self.intensity_width}"),
            (self.gaussian_compat >= 0 and self.bilateral_compat >= 0, "compatibilities must be >= 0"),
            (int(self.iterations) >= 1, f"iterations must be >= 1, got {self.iterations}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"CRFConfig: {message}")


#: The authors' setting (docs/method.md R13): it reproduces ``Ŷ`` (see the module docstring).
REFERENCE_CRF = CRFConfig(unary="prediction", floor=1e-15, spatial_units="voxel", gaussian_width=None,
                          gaussian_compat=3.0, bilateral_width=10.0, intensity_units="raw", intensity_width=1.0,
                          bilateral_compat=10.0, iterations=10)

#: The grid :func:`tune_crf` searches by default (24 settings: both unaries, two floors, two bilateral weights,
#: three intensity widths).
DEFAULT_GRID = {"unary": ("expectation", "prediction"), "floor": (0.05, 0.2), "bilateral_compat": (1.0, 3.0),
                "intensity_width": (0.5, 1.0, 2.0)}


def dense_crf(
    image: np.ndarray,
    probability: np.ndarray,
    *,
    gaussian_sdims: Optional[Sequence[float]] = None,
    gaussian_compat: float = 3.0,
    bilateral_sdims: Sequence[float] = (10.0, 10.0, 10.0),
    bilateral_schan: Sequence[float] = (1.0,),
    bilateral_compat: float = 10.0,
    iterations: int = 10,
    floor: float = 1e-15,
) -> np.ndarray:
    """Binary 3D dense-CRF MAP labelling of a (ROI) volume, every width in voxels and image units.

    Defaults are the reference's (docs/method.md R13); :func:`crf_refine` converts a :class:`CRFConfig` to these.

    Args:
      image: ``f32[x, y, z]`` or ``f32[x, y, z, M]`` intensities.
      probability: ``f32[x, y, z]`` foreground probability for the unary term.
      gaussian_sdims: spatial widths (voxels) of the Gaussian kernel (default: the volume's shape, as the reference).
      gaussian_compat, bilateral_compat: Potts compatibilities (0 drops the kernel).
      bilateral_sdims, bilateral_schan: spatial (voxels) and per-channel intensity widths of the bilateral kernel.
      iterations: mean-field iterations.
      floor: the unary is ``-log(max([1 - p, p], floor))``.

    Returns:
      ``u8[x, y, z]`` labels (argmax of the CRF marginals).

    Raises:
      CRFUnavailableError: pydensecrf is not installed.
      ValueError: shapes differ, or NaN values.
    """
    dcrf, create_pairwise_gaussian, create_pairwise_bilateral = _densecrf()
    image = np.asarray(image, np.float32)
    prob = np.asarray(probability, np.float32)
    shape = prob.shape
    if prob.ndim != 3 or image.shape[:3] != shape:
        raise ValueError(f"dense_crf: image {image.shape} and probability {prob.shape} must share [x, y, z]")
    if not (np.all(np.isfinite(image)) and np.all(np.isfinite(prob))):
        raise ValueError("dense_crf: NaN or infinite values")
    n = int(prob.size)
    unary = -np.log(np.maximum(np.stack([1.0 - prob, prob]).reshape(2, n), np.float32(floor)))
    crf = dcrf.DenseCRF(n, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
    if gaussian_compat > 0:
        sdims = tuple(shape) if gaussian_sdims is None else tuple(gaussian_sdims)
        crf.addPairwiseEnergy(
            np.ascontiguousarray(create_pairwise_gaussian(sdims, shape), np.float32),
            compat=float(gaussian_compat), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC,
        )
    if bilateral_compat > 0:
        chdim = -1 if image.ndim == 3 else 3
        schan = tuple(bilateral_schan)
        if image.ndim == 4 and len(schan) == 1:
            schan = schan * image.shape[3]
        bilateral = create_pairwise_bilateral(sdims=tuple(bilateral_sdims), schan=schan, img=image, chdim=chdim)
        crf.addPairwiseEnergy(
            np.ascontiguousarray(bilateral, np.float32),
            compat=float(bilateral_compat), kernel=dcrf.DIAG_KERNEL, normalization=dcrf.NORMALIZE_SYMMETRIC,
        )
    marginals = np.asarray(crf.inference(int(iterations)))
    return np.argmax(marginals, axis=0).reshape(shape).astype(np.uint8)


def organ_intensity_spread(image_roi: np.ndarray, prediction_roi: np.ndarray) -> np.ndarray:
    """Robust std (1.4826 × median absolute deviation) per channel of the image over ``Ŷ`` in the ROI.

    Args:
      image_roi: ``f32[x, y, z]`` or ``f32[x, y, z, M]``.
      prediction_roi: ``[x, y, z]`` (non-zero = predicted organ; the whole ROI when empty).

    Returns:
      ``f64[M]``, each > 0 (a constant image gives 1e-6 times its scale, never 0).
    """
    image_roi = np.asarray(image_roi, np.float64)
    channels = image_roi.reshape(*image_roi.shape[:3], -1)
    inside = np.asarray(prediction_roi, bool)
    values = channels[inside] if inside.any() else channels.reshape(-1, channels.shape[-1])
    mad = np.median(np.abs(values - np.median(values, axis=0)), axis=0)
    scale = np.maximum(np.abs(values).max(axis=0), 1.0)
    return np.maximum(1.4826 * mad, 1e-6 * scale)


def crf_refine(
    image: np.ndarray,
    expectation: Optional[np.ndarray],
    prediction: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    config: CRFConfig = CRFConfig(),
    roi: Optional[tuple] = None,
) -> np.ndarray:
    """Dense-CRF refinement of a whole volume's segmentation on its ROI (docs/method.md R13).

    Args:
      image: ``f32[X, Y, Z]`` or ``f32[X, Y, Z, M]``.
      expectation: ``f32[X, Y, Z]`` MC expectation ``E`` (needed for ``config.unary == "expectation"``).
      prediction: ``[X, Y, Z]`` the prediction ``Ŷ`` (non-zero = foreground); its largest component's bounding
        box is the ROI unless ``roi`` is given; the intensity unit is measured over it.
      spacing: voxel size in mm along ``(X, Y, Z)`` (used with ``spatial_units == "mm"``).
      config: :class:`CRFConfig`.
      roi: ``tuple`` of 3 slices (e.g. the GCN graph's ROI); default the bounding box of ``Ŷ``'s largest component.

    Returns:
      ``u8[X, Y, Z]``: the CRF labelling inside the ROI, 0 outside (all 0 for an empty prediction).

    Raises:
      CRFUnavailableError: pydensecrf is not installed.
      ValueError: shapes differ, a missing expectation, a bad spacing.
    """
    prediction = np.asarray(prediction) != 0
    image = np.asarray(image, np.float32)
    if prediction.ndim != 3 or image.shape[:3] != prediction.shape:
        raise ValueError(f"crf_refine: image {image.shape} and prediction {prediction.shape} must share [X, Y, Z]")
    spacing_mm = np.asarray(spacing, np.float64)
    if spacing_mm.shape != (3,) or not np.all(np.isfinite(spacing_mm)) or spacing_mm.min() <= 0:
        raise ValueError(f"crf_refine: spacing must be three positive numbers (mm), got {spacing_mm.tolist()}")
    out = np.zeros(prediction.shape, np.uint8)
    if not prediction.any():
        return out
    if roi is None:
        roi = bounding_box(largest_component(prediction))
    if config.unary == "expectation":
        if expectation is None:
            raise ValueError(
                "crf_refine: the 'expectation' unary needs the MC expectation E (or use unary='prediction')"
            )
        expectation = np.asarray(expectation, np.float32)
        if expectation.shape != prediction.shape:
            raise ValueError(f"crf_refine: expectation {expectation.shape} and prediction {prediction.shape} differ")
        probability = np.clip(expectation[roi], config.floor, 1.0 - config.floor)
    else:
        probability = prediction[roi].astype(np.float32)
    image_roi = image[roi]
    unit = spacing_mm if config.spatial_units == "mm" else np.ones(3)
    gaussian = None if config.gaussian_width is None else tuple(config.gaussian_width / unit)
    if config.intensity_units == "organ_std":
        schan = tuple(config.intensity_width * organ_intensity_spread(image_roi, prediction[roi]))
    else:
        schan = (float(config.intensity_width),)
    out[roi] = dense_crf(image_roi, probability, gaussian_sdims=gaussian, gaussian_compat=config.gaussian_compat,
                         bilateral_sdims=tuple(config.bilateral_width / unit), bilateral_schan=schan,
                         bilateral_compat=config.bilateral_compat, iterations=config.iterations, floor=config.floor)
    return out


class CRFCase(NamedTuple):
    """One volume for :func:`tune_crf` (arrays as in :func:`crf_refine`; ``label`` the ground truth)."""

    image: np.ndarray
    expectation: np.ndarray
    prediction: np.ndarray
    label: np.ndarray
    spacing: Sequence[float] = (1.0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class CRFTuning:
    """Result of :func:`tune_crf`.

    Attributes:
      best: the :class:`CRFConfig` with the highest mean Dice (ties: the first in grid order).
      rows: one dict per grid point: its varied settings, ``"dice"`` (per case) and ``"mean_dice"``.
      prediction_dice: Dice of ``Ŷ`` (largest component) per case, for comparison.
    """

    best: CRFConfig
    rows: list
    prediction_dice: list

    def best_row(self) -> dict:
        return max(self.rows, key=lambda r: r["mean_dice"])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def tune_crf(
    cases: Sequence[CRFCase],
    *,
    grid: Optional[dict] = None,
    base: CRFConfig = CRFConfig(),
    margin: int = 0,
) -> CRFTuning:
    """Grid search of :class:`CRFConfig` fields for the best mean Dice over ``cases`` (e.g. training volumes).

    Args:
      cases: :class:`CRFCase` per volume (the CNN's ``E`` and ``Ŷ`` with the ground truth).
      grid: ``{field: values}`` of :class:`CRFConfig` fields to search (every combination); default
        :data:`DEFAULT_GRID`.
      base: the values of the fields not in ``grid``.
      margin: voxels added around ``Ŷ``'s bounding box for the ROI (as ``RefineConfig.margin``).

    Returns:
      :class:`CRFTuning`.

    Raises:
      ValueError: no case, an unknown field or an empty list of values.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    if not cases:
        raise ValueError("tune_crf: no case to tune on")
    fields = {f.name for f in dataclasses.fields(CRFConfig)}
    for name, values in grid.items():
        if name not in fields:
            raise ValueError(f"tune_crf: unknown CRFConfig field {name!r} (fields: {sorted(fields)})")
        if len(values) == 0:
            raise ValueError(f"tune_crf: no value to try for {name!r}")
    cases = [CRFCase(*c) for c in cases]
    lcc = [largest_component(np.asarray(c.prediction) != 0) for c in cases]
    rois = [bounding_box(y, margin) if y.any() else None for y in lcc]
    names = list(grid)
    rows, best, best_mean = [], None, -1.0
    for values in itertools.product(*(grid[n] for n in names)):
        config = dataclasses.replace(base, **dict(zip(names, values)))
        dices = [_dice(crf_refine(c.image, c.expectation, y, spacing=c.spacing, config=config, roi=roi), c.label)
                 for c, y, roi in zip(cases, lcc, rois)]
        mean = float(np.mean(dices))
        rows.append({**dict(zip(names, values)), "dice": dices, "mean_dice": mean})
        if mean > best_mean:
            best, best_mean = config, mean
    if best is None:
        raise ValueError("tune_crf: no setting of the grid gave a finite Dice")
    return CRFTuning(best=best, rows=rows, prediction_dice=[_dice(y, c.label) for c, y in zip(cases, lcc)])
