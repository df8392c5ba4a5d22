"""The realistic brain preset: geometry, lesion count and volume law, unlabelled FP sources."""
import numpy as np
import pytest
from scipy import ndimage

from ugcn.data.phantoms import brain_phantom, realistic_brain_phantom


@pytest.fixture(scope="module")
def brains():
    return [realistic_brain_phantom(seed) for seed in (0, 1)]


def test_geometry_count_and_sizes(brains):
    for p in brains:
        assert p.image.shape == (88, 104, 88) and p.spacing == (2.0, 2.0, 2.0)
        _, n = ndimage.label(p.label, np.ones((3, 3, 3)))
        assert 3 <= n <= 40  # 5-40 drawn; touching lesions may merge
        assert p.label.sum() * 8.0 < 40 * 6000


def test_mimics_are_bright_and_unlabelled():
    plain = brain_phantom(5, shape=(48, 56, 48), spacing=(2.0, 2.0, 2.0), lesion_count=(5, 5))
    mimic = brain_phantom(5, shape=(48, 56, 48), spacing=(2.0, 2.0, 2.0), lesion_count=(5, 5), mimics=True)
    np.testing.assert_array_equal(plain.label, mimic.label)  # the same lesions; mimics carry no label
    brighter = (mimic.image - plain.image > 0.1) & (mimic.label == 0)
    assert brighter.sum() > 5


def test_bad_options():
    with pytest.raises(ValueError, match="lesion_count"):
        brain_phantom(0, shape=(24, 24, 24), lesion_count=(3, 2))
    with pytest.raises(ValueError, match="lesion_volume_mm3"):
        brain_phantom(0, shape=(24, 24, 24), lesion_volume_mm3=(10.0, 1.0, 20.0, 30.0))
