"""Seeded synthetic volumes with ground truth: CT abdomen with a spleen-like organ, FLAIR brain with MS lesions.

Both generators are vectorised numpy/scipy (a Python loop runs over organs or lesions, never over voxels)
and deterministic: the same seed gives the same arrays. They stand in for the real data sets (MSD spleen,
NIH pancreas; MS FLAIR) in tests, examples and benchmarks.

Geometry: arrays are in NIfTI index order ``(X, Y, Z)`` with a diagonal RAS+ affine whose diagonal is the
voxel spacing in mm and whose origin puts the volume's centre at world ``(0, 0, 0)``. Index ``x`` grows
towards the patient's right, ``y`` towards anterior, ``z`` towards superior; axial slices are
``image[:, :, z]``.

The CT target organ is made hard on purpose: its intensity (~55 HU) sits between muscle (~50) and liver
(~60), it shares boundaries with the abdominal wall, the left kidney and (in places) the liver, and the
noise (~18 HU) is larger than those contrasts, so no single intensity threshold segments it; its position,
smooth texture and shape still make it obvious to a person (and learnable by a small U-Net).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import ndimage

__all__ = ["Phantom", "ct_phantom", "brain_phantom", "realistic_brain_phantom", "phantom_affine", "uncertain_band_case",
           "CT_HU",
           "CT_TISSUES", "FLAIR_LEVELS", "BRAIN_TISSUES"]


@dataclasses.dataclass(frozen=True, eq=False)  # arrays: compare fields with numpy, not ==
class Phantom:
    """A synthetic volume with its ground truth.

    Attributes:
      image: ``f32[X, Y, Z]`` intensities (HU for CT, arbitrary FLAIR units in about [0, 1.3] for brain).
      label: ``u8[X, Y, Z]`` ground truth, 1 = target (spleen-like organ or lesion), 0 = background.
      affine: ``f64[4, 4]`` voxel-to-world (mm) matrix, diagonal with the spacing.
      tissue: ``u8[X, Y, Z]`` tissue class of every voxel before blur and noise (codes: index in
        :data:`CT_TISSUES` or :data:`BRAIN_TISSUES`; for the brain, the tissue under a lesion), or ``None``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    tissue: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(X, Y, Z)``."""
        x, y, z = (float(v) for v in np.abs(np.diag(self.affine)[:3]))
        return x, y, z


# Mean intensities of the CT tissues, in Hounsfield units (unenhanced abdomen).
CT_HU = {
    "air": -1000.0,
    "fat": -100.0,
    "skin": 40.0,
    "muscle": 50.0,
    "liver": 60.0,
    "spleen": 55.0,
    "kidney": 32.0,
    "renal_sinus": -40.0,
    "bone": 420.0,
    "marrow": 180.0,
    "vessel": 42.0,
    "bowel_wall": 45.0,
    "bowel_fluid": 18.0,
    "bowel_gas": -800.0,
}

# Codes of the ``Phantom.tissue`` map of :func:`ct_phantom` (index in this tuple).
CT_TISSUES = tuple(CT_HU)

# FLAIR-like relative intensities: lesions brightest, grey matter slightly above white matter, CSF dark.
FLAIR_LEVELS = {"csf": 0.12, "white": 0.55, "grey": 0.66, "lesion_max": 1.1}
#: Lesion volume (voxels) from which a lesion's contrast is drawn from the bright end, U(0.65, 1).
LARGE_LESION_VOXELS = 150.0

# Codes of the ``Phantom.tissue`` map of :func:`brain_phantom`.
BRAIN_TISSUES = ("background", "csf", "grey", "white")


def phantom_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Diagonal RAS+ affine ``f64[4, 4]`` with ``spacing`` (mm) whose volume centre is world ``(0, 0, 0)``."""
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    affine = np.diag(np.append(spacing_arr, 1.0))
    affine[:3, 3] = -(np.asarray(shape, dtype=np.float64) - 1.0) / 2.0 * spacing_arr
    return affine


def _check_geometry(shape, spacing, min_size: int) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    shape = tuple(int(s) for s in shape)
    spacing = tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(shape) < min_size:
        raise ValueError(f"phantom shape must be three sizes >= {min_size}, got {shape}")
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ValueError(f"phantom spacing must be three positive numbers (mm), got {spacing}")
    return shape, spacing


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised coordinates in [-1, 1] along each axis, as broadcastable ``f32[X,1,1]``, ``[1,Y,1]``, ``[1,1,Z]``."""
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    return axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: tuple[float, ...]) -> np.ndarray:
    """Smooth random field ``f32[shape]`` of zero mean and unit std, with about ``cells`` blobs per axis.

    White noise on a coarse grid of knots, spread by separable Gaussian bumps (one small matrix per axis,
    contracted axis by axis): smooth everywhere, and far cheaper than blurring full-size noise.
    """
    coarse = tuple(max(2, int(round(c))) + 3 for c in cells)
    knots = rng.standard_normal(coarse).astype(np.float32)
    mats = []
    for n, c in zip(shape, coarse):
        pos = np.linspace(1.0, c - 2.0, n, dtype=np.float32)[:, None]
        mats.append(np.exp(-0.5 * ((pos - np.arange(c, dtype=np.float32)[None, :]) / 0.9) ** 2))
    field = knots
    for mat in mats:  # contract one axis at a time (BLAS matmuls); the contracted axis moves to the end
        field = np.tensordot(field, mat, axes=(0, 1))
    field -= field.mean()
    return field / max(float(field.std()), 1e-6)


def _ellipsoid_radius(grid, centre, radii, angle: float = 0.0) -> np.ndarray:
    """Normalised ellipsoid radius ``f32[X, Y, Z]`` (< 1 inside), rotated by ``angle`` in the axial plane."""
    u, v, w = (g - c for g, c in zip(grid, centre))
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    ru = (u * cos + v * sin) / radii[0]
    rv = (-u * sin + v * cos) / radii[1]
    return np.sqrt(ru * ru + rv * rv + (w / radii[2]) ** 2)


def _blob(grid, rng, centre, radii, angle, wobble, field) -> np.ndarray:
    """``bool[X, Y, Z]`` deformed ellipsoid: its radius is modulated by a smooth field by about ``wobble``."""
    return _ellipsoid_radius(grid, centre, radii, angle) < 1.0 + wobble * field


# ----------------------------------------------------------------------------------------------------------
# CT abdomen
# ----------------------------------------------------------------------------------------------------------


def ct_phantom(seed: int, shape=(96, 96, 48), spacing=(0.8, 0.8, 2.5)) -> Phantom:
    """CT-like abdomen in HU with a spleen-like target organ (label 1).

    Tissues (painted in this order, later ones on top): body ellipse of fat with skin, a muscle ring of the
    abdominal wall, paraspinal and psoas muscles, spine (cortical bone and marrow), aorta and vena cava,
    bowel loops (walls, fluid, gas pockets), liver (mottled texture), the target organ (a smooth union of
    deformed ellipsoids against the left posterolateral wall), and two kidneys with sinus fat, the left
    one pressing into the organ. Then partial-volume blur (Gaussian of ~1 mm in-plane and ~half a slice
    through-plane, in voxels from ``spacing``), a mild smooth inhomogeneity (±6 HU) and Gaussian noise
    (~18 HU). Positions, sizes and shapes are drawn from ``seed``.

    Args:
      seed: integer seed; the same seed gives identical arrays.
      shape: ``(X, Y, Z)`` voxels, each >= 16.
      spacing: voxel size in mm along ``(X, Y, Z)``.

    Returns:
      :class:`Phantom` with ``image: f32[X, Y, Z]`` (HU), ``label: u8[X, Y, Z]``, ``affine: f64[4, 4]``.
    """
    shape, spacing = _check_geometry(shape, spacing, 16)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xC7]))
    grid = _grid(shape)
    u, v, w = grid
    full = np.broadcast_shapes(*(g.shape for g in grid))
    tissue = np.zeros(full, dtype=np.uint8)  # CT_TISSUES codes, 0 = air

    def noise(cells):
        return _smooth_noise(rng, full, cells)

    # Body: an elliptic cylinder, slightly wider at one end, of fat with skin; abdominal wall muscle inside.
    a_body = rng.uniform(0.86, 0.95) * (1.0 + 0.04 * w)
    b_body = rng.uniform(0.66, 0.74) * (1.0 + 0.04 * w)
    v_body = rng.uniform(-0.04, 0.04)
    r_body = np.sqrt((u / a_body) ** 2 + ((v - v_body) / b_body) ** 2)
    body = r_body < 1.0
    tissue[body] = CT_TISSUES.index("fat")
    tissue[body & (r_body > 0.975)] = CT_TISSUES.index("skin")
    # Wall thickness varies with the angle: thicker posterolaterally.
    angle = np.arctan2(v - v_body, u)
    wall_in = 0.80 - 0.05 * np.clip(-np.sin(angle), 0.0, 1.0) + 0.015 * noise((4, 4, 3))
    wall = body & (r_body < 0.89) & (r_body > wall_in)
    tissue[wall] = CT_TISSUES.index("muscle")
    interior = body & (r_body <= wall_in)

    # Posterior midline structures: paraspinal muscles, psoas, spine, aorta and vena cava.
    v_spine = v_body - 0.48 * b_body.mean() + rng.uniform(-0.03, 0.03)
    muscle = CT_TISSUES.index("muscle")
    for side in (-1.0, 1.0):
        tissue[body & (((u - side * 0.16) / 0.12) ** 2 + ((v - (v_spine - 0.16)) / 0.09) ** 2 < 1.0)] = muscle
        psoas_r = 0.05 + 0.03 * (1.0 - w) / 2.0  # psoas grows caudally
        tissue[body & (((u - side * 0.14) / psoas_r) ** 2 + ((v - (v_spine + 0.02)) / psoas_r) ** 2 < 1.0)] = muscle
    r_vert = np.sqrt((u / 0.10) ** 2 + ((v - v_spine) / 0.10) ** 2)
    tissue[body & (r_vert < 1.0)] = CT_TISSUES.index("bone")
    tissue[body & (r_vert < 0.72)] = CT_TISSUES.index("marrow")
    tissue[body & (np.abs(u) < 0.025) & (v < v_spine - 0.08) & (v > v_spine - 0.24)] = CT_TISSUES.index("bone")
    for du, radius in ((-0.06, 0.045), (0.08, 0.05)):
        tissue[body & (((u - du) ** 2 + (v - (v_spine + 0.15)) ** 2) < radius**2)] = CT_TISSUES.index("vessel")

    # Bowel: worm-like tubes where two smooth fields are both near zero, in the visceral fat.
    f1, f2 = noise((11, 11, 6)), noise((11, 11, 6))
    tube = np.maximum(np.abs(f1), np.abs(f2))
    bowel_zone = interior & (tissue == CT_TISSUES.index("fat")) & (v > v_spine + 0.05)
    lumen = bowel_zone & (tube < 0.38)
    tissue[bowel_zone & (tube < 0.62)] = CT_TISSUES.index("bowel_wall")
    tissue[lumen] = CT_TISSUES.index("bowel_fluid")
    tissue[lumen & (noise((8, 8, 4)) > 0.6)] = CT_TISSUES.index("bowel_gas")

    theta0 = rng.uniform(np.pi * 1.05, np.pi * 1.25)  # angle of the organ's centre around the body axis
    z0 = rng.uniform(-0.05, 0.35)
    # Stomach: anteromedial to the organ, a muscular wall around fluid with a gas cap (anterior, supine).
    centre = (rng.uniform(-0.45, -0.3), v_body + rng.uniform(0.05, 0.2), z0 + rng.uniform(0.1, 0.3))
    r_stomach = _ellipsoid_radius(grid, centre, (rng.uniform(0.17, 0.23), rng.uniform(0.15, 0.2),
                                                 rng.uniform(0.3, 0.4)), rng.uniform(-0.5, 0.5))
    tissue[interior & (r_stomach < 1.0)] = CT_TISSUES.index("bowel_wall")
    lumen = interior & (r_stomach < 0.82)
    tissue[lumen] = CT_TISSUES.index("bowel_fluid")
    tissue[lumen & (v > centre[1] + rng.uniform(0.05, 0.12))] = CT_TISSUES.index("bowel_gas")

    # Liver: patient's right (+u), upper abdomen, with a left lobe reaching across the midline.
    liver_field = noise((4, 4, 3))
    liver = _blob(grid, rng, (rng.uniform(0.32, 0.42), rng.uniform(0.0, 0.10), rng.uniform(0.35, 0.55)),
                  (rng.uniform(0.32, 0.38), rng.uniform(0.38, 0.46), rng.uniform(0.55, 0.7)),
                  rng.uniform(-0.3, 0.3), 0.08, liver_field)
    liver |= _blob(grid, rng, (rng.uniform(-0.25, -0.10), rng.uniform(0.20, 0.30), rng.uniform(0.45, 0.65)),
                   (rng.uniform(0.25, 0.32), rng.uniform(0.15, 0.22), rng.uniform(0.3, 0.4)),
                   rng.uniform(-0.4, 0.1), 0.1, liver_field)
    liver &= interior
    tissue[liver] = CT_TISSUES.index("liver")
    liver_texture = 5.0 * noise((12, 12, 6))

    # Target organ: two or three deformed ellipsoids strung along the left posterolateral wall.
    n_parts = int(rng.integers(2, 4))
    size = rng.uniform(0.85, 1.15)
    organ_field = noise((4, 4, 3))
    organ = np.zeros(full, dtype=bool)
    for part in range(n_parts):
        theta = theta0 + (part - (n_parts - 1) / 2) * rng.uniform(0.25, 0.4)
        dist = rng.uniform(0.58, 0.68)
        centre = (dist * a_body.mean() * np.cos(theta), v_body + dist * b_body.mean() * np.sin(theta),
                  z0 + rng.uniform(-0.15, 0.15))
        radii = (size * rng.uniform(0.12, 0.17), size * rng.uniform(0.16, 0.24), size * rng.uniform(0.30, 0.45))
        organ |= _blob(grid, rng, centre, radii, theta + np.pi / 2 + rng.uniform(-0.3, 0.3), 0.12, organ_field)
    organ &= interior
    # A thin fat plane around part of the organ's surface: visible to the eye, no help to a threshold.
    plane = ndimage.binary_dilation(organ, iterations=2) & interior & (noise((3, 3, 2)) > 0.3)
    tissue[plane & ~organ] = CT_TISSUES.index("fat")
    tissue[organ] = CT_TISSUES.index("spleen")

    # Kidneys: posterior, either side of the spine; the left one (spleen side) sits higher and abuts the organ.
    for side, z_shift in ((-1.0, 0.15), (1.0, -0.05)):
        centre = (side * rng.uniform(0.30, 0.36), v_spine + rng.uniform(0.06, 0.14), z_shift + rng.uniform(-0.1, 0.1))
        radii = (rng.uniform(0.09, 0.12), rng.uniform(0.13, 0.17), rng.uniform(0.38, 0.5))
        r_kid = _ellipsoid_radius(grid, centre, radii, side * rng.uniform(0.3, 0.6))
        kidney = interior & (r_kid < 1.0)
        tissue[kidney] = CT_TISSUES.index("kidney")
        tissue[interior & (r_kid < 0.45)] = CT_TISSUES.index("renal_sinus")
    label = tissue == CT_TISSUES.index("spleen")
    if not label.any():  # cannot happen for sane shapes; guard the contract rather than return an empty label
        raise ValueError(f"ct_phantom: seed {seed} with shape {shape} produced an empty organ; use a larger shape")

    hu = np.asarray([CT_HU[name] for name in CT_TISSUES], dtype=np.float32)[tissue]
    hu += liver_texture * (tissue == CT_TISSUES.index("liver"))
    # Partial volume: ~1 mm in-plane blur and half a slice through-plane.
    sigma = (1.0 / spacing[0], 1.0 / spacing[1], 0.5)
    hu = ndimage.gaussian_filter(hu, sigma, mode="nearest")
    hu += 6.0 * noise((2, 2, 2)) * body
    hu += rng.normal(0.0, rng.uniform(16.0, 20.0), size=full).astype(np.float32)
    return Phantom(image=hu.astype(np.float32), label=label.astype(np.uint8), affine=phantom_affine(shape, spacing),
                   tissue=tissue)


# ----------------------------------------------------------------------------------------------------------
# FLAIR brain with lesions
# ----------------------------------------------------------------------------------------------------------


#: Lesion volumes of the realistic preset, in mm³: log-normal median and log-std, clipped to [low, high].
REALISTIC_LESION_MM3 = (60.0, 1.2, 12.0, 6000.0)


def brain_phantom(
    seed: int,
    shape=(64, 64, 48),
    spacing=(1.0, 1.0, 1.0),
    *,
    lesion_count: Optional[tuple[int, int]] = None,
    lesion_volume_mm3: Optional[tuple[float, float, float, float]] = None,
    mimics: bool = False,
) -> Phantom:
    """FLAIR-like skull-stripped brain with many MS-like lesions (label 1).

    A deformed head ellipsoid holds an outer CSF rim, a folded cortical grey-matter ribbon, white matter,
    deep grey nuclei and two lateral ventricles (CSF, dark). Lesions: their number grows with the brain
    volume (~20 at the default size, 10-40), their volumes follow a log-normal law clipped to 3-1000
    voxels at the default size (long tail: many small, a few large), their centres lie in white matter
    (> 90 % of lesion voxels) with a preference for the ventricles' surroundings (periventricular) and a
    minimum gap so that most are separate 26-connected components. Their contrast varies: small ones may be
    faint, close to grey matter; large ones are bright. Then a slight blur, a smooth multiplicative bias
    field (±~10 %) and Rician noise; zero outside the brain.

    With ``mimics=True`` the brain also holds the hyperintensities of a real FLAIR that are *not* lesions
    (label 0), the usual sources of false-positive lesions: periventricular caps (thin bright rims at the
    ventricles' horns), juxtacortical bright spots in the grey-matter ribbon, CSF flow artefacts inside the
    ventricles, faint diffuse patches of "dirty-appearing" white matter, and punctate deep white-matter foci
    of small-vessel disease (lesion-sized, unlabelled as in MS ground truth).

    Args:
      seed: integer seed; the same seed gives identical arrays.
      shape: ``(X, Y, Z)`` voxels, each >= 24.
      spacing: voxel size in mm along ``(X, Y, Z)``.
      lesion_count: ``(low, high)``: the number of lesions is drawn log-uniformly in this range instead of
        growing with the brain volume.
      lesion_volume_mm3: ``(median, log_std, low, high)``: log-normal lesion volumes in mm³ (converted
        with the voxel volume) instead of the default voxel-count law.
      mimics: paint the non-lesion hyperintensities described above.

    Returns:
      :class:`Phantom` with ``image: f32[X, Y, Z]`` (FLAIR units, about [0, 1.3]), ``label: u8[X, Y, Z]``,
      ``affine: f64[4, 4]``.

    :func:`realistic_brain_phantom` is the preset of the lesion demo (2 mm, about 0.8 M voxels).
    """
    shape, spacing = _check_geometry(shape, spacing, 24)
    if lesion_count is not None and not (1 <= int(lesion_count[0]) <= int(lesion_count[1])):
        raise ValueError(f"lesion_count must be (low, high) with 1 <= low <= high, got {lesion_count}")
    if lesion_volume_mm3 is not None and not (
            len(lesion_volume_mm3) == 4 and 0 < lesion_volume_mm3[2] <= lesion_volume_mm3[0] <= lesion_volume_mm3[3]):
        raise ValueError(f"lesion_volume_mm3 must be (median, log_std, low, high) with 0 < low <= median <= high, "
                         f"got {lesion_volume_mm3}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB7]))
    grid = _grid(shape)
    u, v, w = grid
    full = np.broadcast_shapes(*(g.shape for g in grid))
    lv = FLAIR_LEVELS

    # Head and tissues, from a normalised radius of the brain ellipsoid deformed by a smooth field.
    radii = (rng.uniform(0.80, 0.88), rng.uniform(0.86, 0.93), rng.uniform(0.80, 0.88))
    r_brain = _ellipsoid_radius(grid, (0.0, rng.uniform(-0.03, 0.03), rng.uniform(-0.05, 0.0)), radii)
    r_brain = r_brain * (1.0 + 0.03 * _smooth_noise(rng, full, (3, 3, 3)))
    brain = r_brain < 1.0
    gyri = _smooth_noise(rng, full, (9, 9, 7))  # folds of the cortical ribbon
    cortex_in = 0.80 + 0.05 * gyri
    tissue = np.full(full, lv["white"], dtype=np.float32)
    grey = brain & (r_brain >= cortex_in)
    csf = brain & ((r_brain > 0.95) | ((r_brain > 0.86) & (gyri > 1.3)))  # outer rim and deep sulci
    # Deep grey nuclei (thalamus/basal ganglia) beside the ventricles.
    for side in (-1.0, 1.0):
        grey |= _ellipsoid_radius(grid, (side * 0.19, -0.05, -0.05), (0.09, 0.16, 0.12)) < 1.0
    # Lateral ventricles: two curved, elongated ellipsoids either side of the midline.
    vent_scale = rng.uniform(0.8, 1.3)
    ventricle = np.zeros(full, dtype=bool)
    for side in (-1.0, 1.0):
        bend = 0.25 * v * v  # banana shape: the ends curve downwards
        ventricle |= _ellipsoid_radius((u, v, w + bend), (side * 0.11, 0.0, 0.1),
                                       (0.08 * vent_scale, 0.40, 0.15 * vent_scale)) < 1.0
    csf |= ventricle
    grey &= ~csf
    white = brain & ~grey & ~csf
    tissue[grey] = lv["grey"]
    tissue[csf] = lv["csf"]
    tissue[~brain] = 0.0

    voxel_mm3 = float(np.prod(spacing))
    volume_law = None
    if lesion_volume_mm3 is not None:
        median, log_std, low, high = (float(v) for v in lesion_volume_mm3)
        volume_law = (median / voxel_mm3, log_std, max(low / voxel_mm3, 1.0), max(high / voxel_mm3, 1.0))
    lesions = _paint_lesions(rng, full, white, ventricle, brain & ~csf, count=lesion_count, volume_law=volume_law)
    lesion_mask = lesions > 0
    contrast = lesions  # per-voxel lesion contrast in (0, 1]
    if mimics:
        contrast = contrast + _paint_mimics(rng, grid, full, white, grey, ventricle, lesion_mask)
    image = tissue + contrast * (lv["lesion_max"] - tissue) * (contrast > 0)

    image = ndimage.gaussian_filter(image, (0.6 / spacing[0], 0.6 / spacing[1], 0.6 / spacing[2]))
    image *= np.exp(0.1 * _smooth_noise(rng, full, (2, 2, 2)))
    sigma = 0.035
    real = image + rng.normal(0.0, sigma, size=full).astype(np.float32)
    imag = rng.normal(0.0, sigma, size=full).astype(np.float32)
    image = np.sqrt(real * real + imag * imag) * brain
    tissue_map = (brain * 0 + csf * 1 + grey * 2 + white * 3).astype(np.uint8)
    return Phantom(image=image.astype(np.float32), label=lesion_mask.astype(np.uint8),
                   affine=phantom_affine(shape, spacing), tissue=tissue_map)


def _paint_lesions(rng, full, white, ventricle, allowed, count=None, volume_law=None) -> np.ndarray:
    """Lesion contrast map ``f32[X, Y, Z]``: 0 outside lesions, the lesion's contrast in (0, 1] inside.

    Centres are drawn from white-matter voxels weighted towards the ventricles; each lesion is a deformed
    ellipsoid of a log-normal volume (in voxels), kept at least 2 voxels from earlier lesions (by bounding spheres).
    ``count``: ``(low, high)`` lesion-count range (log-uniform); ``volume_law``: ``(median, log_std, low, high)``
    in voxels. ``None``: the defaults, which grow with the white-matter volume.
    """
    n_white = int(white.sum())
    if n_white == 0:
        raise ValueError("brain_phantom: no white matter; use a larger shape")
    if count is None:
        n_lesions = int(np.clip(rng.poisson(28.0 * n_white / 30000.0), 10, 40))
    else:
        n_lesions = int(np.clip(round(np.exp(rng.uniform(np.log(count[0]), np.log(count[1] + 1)) - 0.5)),
                                count[0], count[1]))
    if volume_law is None:
        # The largest lesions shrink with the brain, so that small test volumes are not one big lesion.
        max_volume = 1000.0 * min(1.0, n_white / 30000.0)
        volumes = np.clip(np.exp(rng.normal(np.log(25.0), 1.3, size=n_lesions)), 3.0, max_volume)
    else:
        median, log_std, low, max_volume = volume_law
        volumes = np.clip(np.exp(rng.normal(np.log(median), log_std, size=n_lesions)), low, max_volume)
    volumes[rng.integers(n_lesions)] = rng.uniform(0.4, 1.0) * max_volume  # at least one large, confluent lesion
    volumes = np.sort(volumes)[::-1]  # place the large ones first, while there is room
    # Distance (voxels) from white-matter voxels to the nearest non-white voxel and to the ventricles.
    depth = ndimage.distance_transform_edt(white)
    to_ventricle = ndimage.distance_transform_edt(~ventricle)
    candidates = np.flatnonzero(white & (depth >= 1.0))
    cand_depth = depth.ravel()[candidates]
    cand_weight = 0.35 + np.exp(-to_ventricle.ravel()[candidates] / 4.0)

    shape = np.asarray(full)
    contrast = np.zeros(full, dtype=np.float32)
    centres: list[np.ndarray] = []
    reach: list[float] = []
    for volume in volumes:
        elong = rng.uniform(1.0, 2.0)
        r_equiv = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
        axes = r_equiv * np.array([1.0, 1.0, elong]) / elong ** (1.0 / 3.0)
        axes = rng.permutation(axes)
        bound = float(axes.max()) * 1.25 + 0.5
        # Most lesions sit deep enough to stay in white matter; one in eight may be juxtacortical.
        deep = cand_depth >= (0.3 if rng.uniform() < 0.125 else 0.8) * r_equiv
        pool = candidates[deep] if deep.any() else candidates
        weight = cand_weight[deep] if deep.any() else cand_weight
        weight = weight / weight.sum()
        # Rejection sampling, vectorised: 30 candidate centres at once, keep the first that leaves the gap.
        tries = np.stack(np.unravel_index(rng.choice(pool, size=30, p=weight), full), axis=1).astype(np.float64)
        tries += rng.uniform(-0.5, 0.5, size=tries.shape)
        if centres:
            gaps = np.linalg.norm(tries[:, None, :] - np.asarray(centres)[None], axis=-1) - np.asarray(reach)[None]
            ok = np.flatnonzero(np.all(gaps > bound + 2.0, axis=1))
            if ok.size == 0:
                continue
            centre = tries[ok[0]]
        else:
            centre = tries[0]
        centres.append(centre)
        reach.append(bound)
        lo = np.maximum(np.floor(centre - bound).astype(int), 0)
        hi = np.minimum(np.ceil(centre + bound).astype(int) + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        idx = np.ogrid[box]
        rel = [(i - c) / a for i, c, a in zip(idx, centre, axes)]
        radius = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2)
        lumps = _smooth_noise(rng, radius.shape, (2, 2, 2)) if min(radius.shape) >= 2 else 0.0
        inside = (radius < 1.0 + 0.2 * lumps) & allowed[box]
        if not inside.any():  # a tiny lesion between grid points: keep the voxel nearest its centre
            nearest = tuple(np.clip(np.round(centre).astype(int) - lo, 0, np.asarray(radius.shape) - 1))
            inside[nearest] = allowed[box][nearest]
        # Contrast: faint lesions are small ones; a large, confluent lesion is clearly bright (a faint one the
        # size of a lobe, close to grey matter, would decide a case's Dice alone).
        level = rng.uniform(0.25 + 0.4 * min(1.0, volume / LARGE_LESION_VOXELS), 1.0)
        contrast[box] = np.where(inside, np.float32(level), contrast[box])
    return contrast


def _paint_mimics(rng, grid, full, white, grey, ventricle, lesion_mask) -> np.ndarray:
    """Contrast ``f32[X, Y, Z]`` of non-lesion FLAIR hyperintensities (label 0), away from the lesions.

    Periventricular caps at the ventricles' horn tips (thin rims, 2-4 per brain), juxtacortical spots in
    the grey-matter ribbon (2-5), CSF flow artefacts inside the ventricles (0-2), faint diffuse
    white-matter patches (1-3) and punctate deep white-matter foci of small-vessel disease (4-10). Each
    kind uses the normalised grid of :func:`brain_phantom`.
    """
    u, v, w = grid
    contrast = np.zeros(full, np.float32)
    keep_out = ndimage.binary_dilation(lesion_mask, iterations=2)
    to_ventricle = ndimage.distance_transform_edt(~ventricle)
    # Caps: a shell of about 1-2 voxels around the ventricle, near the anterior/posterior horn tips.
    shell = (to_ventricle > 0) & (to_ventricle <= rng.uniform(1.2, 2.2)) & (white | grey)
    tips = [(side, end) for side in (-1.0, 1.0) for end in (-1.0, 1.0)]
    for k in rng.permutation(len(tips))[: int(rng.integers(2, 5))]:
        side, end = tips[k]
        near = _ellipsoid_radius(grid, (side * 0.11, end * 0.36, 0.1 - 0.25 * 0.36 ** 2), (0.12, 0.10, 0.14)) < 1.0
        contrast[shell & near & ~keep_out] = rng.uniform(0.35, 0.7)

    def blobs(pool, number, radius_range, level_range, soft):
        cand = np.flatnonzero(pool & ~keep_out)
        if cand.size == 0:
            return
        for centre in np.stack(np.unravel_index(rng.choice(cand, size=number), full), axis=1):
            r = rng.uniform(*radius_range)
            lo = np.maximum(centre - int(np.ceil(r)) - 1, 0)
            hi = np.minimum(centre + int(np.ceil(r)) + 2, full)
            box = tuple(slice(a, b) for a, b in zip(lo, hi))
            idx = np.ogrid[box]
            dist = np.sqrt(sum((i - c) ** 2 for i, c in zip(idx, centre))) / r
            level = rng.uniform(*level_range)
            value = level * np.exp(-dist**2) if soft else np.where(dist < 1.0, level, 0.0)
            value = np.where(pool[box] & ~keep_out[box] & (dist < 1.3), value, 0.0).astype(np.float32)
            contrast[box] = np.maximum(contrast[box], value)

    blobs(grey, int(rng.integers(2, 6)), (0.8, 1.8), (0.4, 0.8), soft=False)  # juxtacortical spots
    blobs(ventricle, int(rng.integers(0, 3)), (0.8, 1.5), (0.5, 0.9), soft=False)  # CSF flow artefacts
    blobs(white, int(rng.integers(1, 4)), (2.5, 4.5), (0.2, 0.35), soft=True)  # dirty-appearing white matter
    # Punctate hyperintensities of small-vessel disease: lesion-sized foci in the deep white matter, away
    # from the ventricles (where the lesions cluster), a little fainter than the lesions on average.
    deep = white & (ndimage.distance_transform_edt(white) >= 1.5) & (to_ventricle > 4.0)
    blobs(deep, int(rng.integers(4, 11)), (0.8, 1.6), (0.3, 0.7), soft=False)
    contrast[lesion_mask] = 0.0
    return contrast


def realistic_brain_phantom(seed: int, *, shape=(88, 104, 88), spacing=(2.0, 2.0, 2.0)) -> Phantom:
    """The lesion demo's brain: about 0.8 M voxels at 2 mm (a 176 x 208 x 176 mm field of view), 5-40
    lesions with log-normal volumes (median 60 mm³, 12 mm³ to 6 cm³), and the FP sources of ``mimics``.

    Same arguments and return value as :func:`brain_phantom`.
    """
    return brain_phantom(seed, shape=shape, spacing=spacing, lesion_count=(5, 40),
                         lesion_volume_mm3=REALISTIC_LESION_MM3, mimics=True)


def uncertain_band_case(
    shape: tuple[int, int, int] = (24, 24, 16), radius: float = 6.5, seed: int = 0, band: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Method R's known-answer case: a sphere organ whose 'CNN' is right except in a band where it is wrong
    AND uncertain (a false-positive shell on one half, a false-negative shell on the other).

    The intensity is informative (organ ~1, background ~0, noise 0.15), so a GCN fitted on the certain voxels
    can fix the band; ``band=False`` gives a CNN that is right everywhere.

    Returns ``(image f32[X, Y, Z], prediction bool[X, Y, Z], expectation f32[X, Y, Z] (foreground),
    uncertainty f32[X, Y, Z] (bits), label bool[X, Y, Z])``.
    """
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, dtype=np.float64)
    centre = np.array(shape, np.float64)[:, None, None, None] / 2
    r = np.sqrt(((grid - centre) ** 2).sum(0))
    label = r < radius
    image = (label + rng.normal(0, 0.15, shape)).astype(np.float32)
    prediction = label.copy()
    wrong = np.zeros(shape, bool)
    if band:
        fp = (r >= radius) & (r < radius + 1.5) & (grid[0] < centre[0])
        fn = (r < radius) & (r >= radius - 1.5) & (grid[0] >= centre[0])
        prediction = (label | fp) & ~fn
        wrong = fp | fn
    expectation = np.where(prediction, 0.97, 0.03).astype(np.float32)
    expectation[wrong] = np.where(prediction[wrong], 0.6, 0.4)
    uncertainty = np.where(wrong, 0.95, 0.15).astype(np.float32)
    return image, prediction, expectation, uncertainty, label
