"""RefineConfig.thin_removal: the removals on a hand-checked case and against plain loops, and the rule on the refined
mask (same fit with and without it)."""
import dataclasses

import numpy as np
import pytest

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, leak_level, refine_volume, thin_removals, uses_thin_removal

FAST = FitConfig(epochs=30)


def test_thin_removals_hand_checked():
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True  # a 5-voxel cube
    # a corner (2x2x2 = 8 of 27 in the cube), an edge (2x2x3 = 12), a face (2x3x3 = 18), the centre (27)
    coords = np.array([[2, 2, 2], [2, 2, 4], [2, 4, 4], [4, 4, 4]])
    leaky = np.full(4, 0.9)
    every = np.ones(4, bool)
    config = RefineConfig(thin_removal=0.4, thin_removal_share=0.3)  # fewer than 10.8: at most 10
    np.testing.assert_array_equal(thin_removals(mask, coords, np.zeros(4, bool), every, leaky, config),
                                  [True, False, False, False])
    # share 0.45 (fewer than 12.15): the edge (12) goes too
    np.testing.assert_array_equal(
        thin_removals(mask, coords, np.zeros(4, bool), every, leaky, dataclasses.replace(config, thin_removal=0.45)),
        [True, True, False, False])
    # counts are taken on the mask minus the removed nodes: removing the face voxel (2, 3, 4) and the edge's
    # neighbour (3, 2, 4) leaves the edge voxel (2, 2, 4) 12 - 2 = 10 -> removed; the face keeps 18 - 2 = 16
    coords2 = np.concatenate([coords, [[2, 3, 4], [3, 2, 4]]])
    removed = np.array([0, 0, 0, 0, 1, 1], bool)
    cand = np.array([1, 1, 1, 1, 0, 0], bool)
    got = thin_removals(mask, coords2, removed, cand, np.full(6, 0.9), config)
    np.testing.assert_array_equal(got, [True, True, False, False, False, False])
    # only candidates, only above the leak share (NaN never passes), and share 0 removes nothing
    np.testing.assert_array_equal(
        thin_removals(mask, coords, np.zeros(4, bool), np.array([0, 1, 1, 1], bool), leaky, config), [False] * 4)
    for level in (0.3, 0.1, np.nan):
        assert not thin_removals(mask, coords, np.zeros(4, bool), every, np.full(4, level), config).any()
    assert not thin_removals(mask, coords, np.zeros(4, bool), every, leaky,
                             dataclasses.replace(config, thin_removal=0.0)).any()


def test_thin_removals_against_loops():
    rng = np.random.default_rng(3)
    shape = (12, 11, 9)
    for _ in range(3):
        mask = rng.random(shape) < 0.55
        coords = np.argwhere(np.ones(shape, bool))  # every voxel, the volume's faces included
        n = len(coords)
        inside = mask[tuple(coords.T)]
        removed = inside & (rng.random(n) < 0.2)
        cand = inside & ~removed & (rng.random(n) < 0.6)
        leak = np.where(rng.random(n) < 0.1, np.nan, rng.random(n))
        config = RefineConfig(thin_removal=0.5, thin_removal_share=0.4)
        got = thin_removals(mask, coords, removed, cand, leak, config)
        left = mask.copy()
        for k in np.flatnonzero(removed):
            left[tuple(coords[k])] = False
        want = np.zeros(n, bool)
        for k in range(n):
            if not cand[k] or not leak[k] > 0.4:  # NaN fails the comparison
                continue
            x, y, z = coords[k]
            count = 0
            for a in (-1, 0, 1):
                for b in (-1, 0, 1):
                    for c in (-1, 0, 1):
                        u, v, w = x + a, y + b, z + c
                        if 0 <= u < shape[0] and 0 <= v < shape[1] and 0 <= w < shape[2] and left[u, v, w]:
                            count += 1
            want[k] = count < 0.5 * 27
        assert 0 < want.sum() < cand.sum()
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def fits():
    """One short fit of the known-answer case refined without and with the thin removal (same seed: same
    probabilities); the sparse rules and the context rules off, a loose setting so that it removes something."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST, sparse_addition=0.0, sparse_removal=0.0, context_addition=1.0, context_removal=0.0,
                          context_removal_sigma=1.0, thin_removal_share=0.2, fill_addition=1.0)
    runs = {t: refine_volume(image, pred, e, u, config=dataclasses.replace(config, thin_removal=t), label=label,
                             spacing=(1.0, 1.0, 1.0)) for t in (0.0, 0.6)}
    return (image, pred, e, u, label), runs


def test_thin_removal_removes_exactly_what_the_rule_says(fits, neighbour_counts):
    (image, pred, e, u, label), runs = fits
    off, on = runs[0.0], runs[0.6]
    g, p = off.graph, off.node_probs
    np.testing.assert_allclose(on.node_probs, p, atol=1e-6)
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask
    fg = g.label_mask & (pred[idx] == 1)
    level = np.nan_to_num(leak_level(image, pred, g.node_coords, fg, sigma=1.0), nan=-1.0)
    # numpy: the margins' classes, then the voxels of Ŷ they remove, then the neighbour counts on what is left
    cls = np.where(p > 0.9, 1, np.where(p <= 0.02, 0, pred[idx]))
    left = pred.astype(bool).copy()
    left[tuple(g.node_coords[free & (pred[idx] == 1) & (cls == 0)].T)] = False
    counts = neighbour_counts(left)
    thin = free & (pred[idx] == 1) & (cls == 1) & (p <= 0.9) & (level > 0.2) & (counts[idx] < 0.6 * 27)
    assert thin.sum() >= 3
    differ = on.refined[idx] != off.refined[idx]
    np.testing.assert_array_equal(differ, thin)
    np.testing.assert_array_equal(on.refined[idx][thin], 0)
    outside_nodes = np.ones(pred.shape, bool)
    outside_nodes[idx] = False
    np.testing.assert_array_equal(on.refined[outside_nodes], off.refined[outside_nodes])


def test_thin_removal_settings():
    default = RefineConfig()
    assert (default.thin_removal, default.thin_removal_share) == (0.4, 0.3)
    assert uses_thin_removal(default) and not uses_thin_removal(RefineConfig(thin_removal=0.0))
    assert RefineConfig.preset("reference").thin_removal == 0.0
    for bad in (dict(thin_removal=1.5), dict(thin_removal=-0.1), dict(thin_removal_share=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_config(RefineConfig(**bad))
