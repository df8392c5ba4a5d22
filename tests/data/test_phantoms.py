"""Synthetic phantoms (ugcn.data.phantoms): determinism, geometry, contrast, lesion statistics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ugcn.data import BRAIN_TISSUES, CT_HU, brain_phantom, ct_phantom

SMALL_CT = (40, 40, 20)
SMALL_BRAIN = (40, 40, 32)


@pytest.fixture(scope="module")
def ct_default():
    return [ct_phantom(seed) for seed in (0, 1, 2)]


@pytest.fixture(scope="module")
def brains_default():
    return [brain_phantom(seed) for seed in (0, 1, 2)]


@pytest.mark.parametrize("make", [ct_phantom, brain_phantom])
def test_phantom_is_deterministic_per_seed(make):
    shape = SMALL_CT if make is ct_phantom else SMALL_BRAIN
    a, b, c = make(3, shape=shape), make(3, shape=shape), make(4, shape=shape)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)


def test_ct_shapes_dtypes_affine(ct_default):
    p = ct_default[0]
    assert p.image.shape == (96, 96, 48) and p.image.dtype == np.float32
    assert p.label.shape == (96, 96, 48) and p.label.dtype == np.uint8
    assert set(np.unique(p.label)) == {0, 1}
    np.testing.assert_allclose(np.diag(p.affine), [0.8, 0.8, 2.5, 1.0])
    # Centre of the volume at world (0, 0, 0).
    centre = p.affine @ np.array([47.5, 47.5, 23.5, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert p.spacing == pytest.approx((0.8, 0.8, 2.5))
    assert np.all(np.isfinite(p.image))
    # HU-like range: air outside, bone inside.
    assert p.image.min() < -900 and p.image.max() > 250


def test_ct_custom_geometry():
    p = ct_phantom(5, shape=(48, 40, 24), spacing=(1.0, 1.2, 3.0))
    assert p.image.shape == p.label.shape == (48, 40, 24)
    np.testing.assert_allclose(np.diag(p.affine)[:3], [1.0, 1.2, 3.0])
    assert p.label.sum() > 0


def test_ct_organ_intensity_close_to_neighbours(ct_default):
    for p in ct_default:
        core = ndimage.binary_erosion(p.label > 0, iterations=2)  # away from partial-volume borders
        assert abs(p.image[core].mean() - CT_HU["spleen"]) < 10
        assert abs(CT_HU["spleen"] - CT_HU["liver"]) < 10 and abs(CT_HU["spleen"] - CT_HU["muscle"]) < 10


def _best_threshold_dice(image: np.ndarray, label: np.ndarray) -> float:
    """Best Dice of ``image > t`` or ``image < t`` over every threshold t (brute force by sorting)."""
    order = np.argsort(image, kind="stable")
    y = label[order].astype(np.int64)
    n_pos = y.sum()
    # "above": predicted = the top j voxels, j = 0..n.
    tp_above = np.concatenate([[0], np.cumsum(y[::-1])])
    j = np.arange(y.size + 1)
    dice_above = 2 * tp_above / (j + n_pos)
    tp_below = np.concatenate([[0], np.cumsum(y)])
    dice_below = 2 * tp_below / (j + n_pos)
    return float(max(dice_above.max(), dice_below.max()))


def test_best_threshold_dice_reference():
    # Hand-checked: image [1, 2, 3, 4], label [0, 1, 1, 0]: best is {2, 3} impossible by one threshold;
    # "above 1.5" gives {2,3,4}: Dice 2*2/(3+2) = 0.8; "below 3.5" gives {1,2,3}: also 0.8.
    assert _best_threshold_dice(np.array([1.0, 2, 3, 4]), np.array([0, 1, 1, 0])) == pytest.approx(0.8)
    assert _best_threshold_dice(np.array([1.0, 2, 3, 4]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)


@pytest.mark.parametrize("connectivity", [1, 3])
def test_ct_organ_is_not_threshold_separable(ct_default, connectivity):
    struct = ndimage.generate_binary_structure(3, connectivity)
    for p in ct_default:
        hood = ndimage.binary_dilation(p.label > 0, struct, iterations=5)
        score = _best_threshold_dice(p.image[hood], p.label[hood])
        assert score < 0.8, score


def test_ct_organ_is_one_sizeable_blob(ct_default):
    for p in ct_default:
        lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.max() > 1000
        assert sizes.max() / sizes.sum() > 0.9


def test_brain_shapes_and_zero_background(brains_default):
    p = brains_default[0]
    assert p.image.shape == p.label.shape == (64, 64, 48)
    assert p.image.dtype == np.float32 and p.label.dtype == np.uint8
    np.testing.assert_allclose(np.diag(p.affine), [1.0, 1.0, 1.0, 1.0])
    background = p.tissue == BRAIN_TISSUES.index("background")
    assert np.all(p.image[background] == 0)
    assert np.all(p.label[background] == 0)
    assert np.all(p.image >= 0)


def test_brain_flair_contrast(brains_default):
    for p in brains_default:
        t = p.tissue
        lesion = p.label > 0
        mean = {name: p.image[(t == BRAIN_TISSUES.index(name)) & ~lesion].mean() for name in ("csf", "grey", "white")}
        assert mean["csf"] < mean["white"] < mean["grey"]
        assert p.image[lesion].mean() > mean["grey"]


def test_brain_lesions_many_long_tailed_in_white_matter(brains_default):
    largest, smallest = [], []
    for p in brains_default:
        lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        assert 10 <= n <= 45
        largest.append(sizes.max())
        smallest.append(sizes.min())
        assert np.median(sizes) < sizes.mean()  # right-skewed
        in_white = np.mean(p.tissue[p.label > 0] == BRAIN_TISSUES.index("white"))
        assert in_white > 0.8
    assert max(largest) >= 300 and max(largest) <= 1500
    assert min(smallest) <= 10
    assert all(big / small >= 20 for big, small in zip(largest, smallest))


def test_brain_lesion_contrast_varies(brains_default):
    # Some lesions are faint: their mean FLAIR value is close to grey matter.
    p = brains_default[0]
    lab, n = ndimage.label(p.label, np.ones((3, 3, 3)))
    means = ndimage.mean(p.image, lab, index=np.arange(1, n + 1))
    assert means.max() - means.min() > 0.2


def test_phantom_rejects_tiny_shapes():
    with pytest.raises(ValueError, match="shape"):
        ct_phantom(0, shape=(8, 8, 8))
    with pytest.raises(ValueError, match="spacing"):
        brain_phantom(0, shape=(32, 32, 32), spacing=(1.0, 0.0, 1.0))
