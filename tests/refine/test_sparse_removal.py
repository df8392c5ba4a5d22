"""RefineConfig.sparse_removal: the 3x3x3 neighbourhood counts against a loop, and the rule on the refined mask
(same fit with and without it) against numpy."""
import dataclasses

import numpy as np
import pytest

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, refine_volume, sparse_nodes

FAST = FitConfig(epochs=30)


def loop_counts(mask, coords):
    """Voxels of ``mask`` in the 3x3x3 box around each coordinate, outside the volume 0 (plain loops)."""
    out = []
    for x, y, z in coords:
        n = 0
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    a, b, c = x + dx, y + dy, z + dz
                    if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and 0 <= c < mask.shape[2]:
                        n += int(mask[a, b, c] != 0)
        out.append(n)
    return np.array(out)


def test_sparse_nodes_counts_the_neighbourhood_like_a_loop():
    rng = np.random.default_rng(0)
    mask = (rng.random((9, 7, 6)) < 0.45).astype(np.uint8)
    every = np.argwhere(np.ones(mask.shape, bool))
    some = every[rng.choice(len(every), 40, replace=False)]  # a crop that does not reach every border
    inner = np.argwhere(np.ones((3, 3, 2), bool)) + [3, 2, 2]
    for coords in (every, some, inner):
        counts = loop_counts(mask, coords)
        for share in (0.1, 10 / 27, 0.4, 0.7, 1.0):
            np.testing.assert_array_equal(sparse_nodes(mask, coords, share), counts < share * 27 - 1e-9)
    assert sparse_nodes(mask, every, 0.0).sum() == 0
    assert sparse_nodes(mask, np.zeros((0, 3), int), 0.5).shape == (0,)
    # A lone voxel has 1 of 27; a voxel inside a full block 27 of 27.
    lone = np.zeros((5, 5, 5), np.uint8)
    lone[2, 2, 2] = 1
    assert sparse_nodes(lone, np.array([[2, 2, 2]]), 2 / 27).tolist() == [True]
    assert sparse_nodes(lone, np.array([[2, 2, 2]]), 1 / 27).tolist() == [False]


@pytest.fixture(scope="module")
def fits():
    """One fit of the known-answer case, refined without and with the rule (same seed: same probabilities)."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST)
    off = refine_volume(image, pred, e, u, config=config, label=label)
    on = refine_volume(image, pred, e, u, config=dataclasses.replace(config, sparse_removal=0.6), label=label)
    return (image, pred, e, u, label), off, on


def test_sparse_removal_removes_exactly_the_unsupported_sparse_uncertain_foreground(fits):
    (image, pred, e, u, label), off, on = fits
    np.testing.assert_allclose(on.node_probs, off.node_probs, atol=1e-6)
    g = off.graph
    coords = g.node_coords
    counts = loop_counts(off.cnn, coords)
    p = off.node_probs
    expected = ~g.label_mask & (pred[tuple(coords.T)] == 1) & (p < 0.5) & (counts < 0.6 * 27)
    assert expected.any()  # the case has such nodes
    idx = tuple(coords.T)
    differ = on.refined[idx] != off.refined[idx]
    # where the rule applies, the mask without it kept Ŷ (foreground) unless the GCN removed it anyway
    np.testing.assert_array_equal(on.refined[idx][expected], 0)
    np.testing.assert_array_equal(differ, expected & (off.refined[idx] == 1))
    np.testing.assert_array_equal(on.refined_unlabelled, on.refined)
    outside = np.ones(pred.shape, bool)
    outside[idx] = False
    np.testing.assert_array_equal(on.refined[outside], off.refined[outside])


def test_sparse_removal_is_checked_and_off_by_default_in_the_reference():
    assert RefineConfig.preset("reference").sparse_removal == 0.0
    with pytest.raises(ValueError, match="sparse_removal"):
        check_config(RefineConfig(sparse_removal=1.5))
