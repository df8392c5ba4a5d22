"""RefineConfig.fill_addition: the additions on a hand-checked case and against plain loops, the volume gates, and
the rule on the refined mask (same fit with and without it)."""
import dataclasses

import numpy as np
import pytest

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, fill_additions, refine_volume, uses_fill_addition

FAST = FitConfig(epochs=30)
OPEN = RefineConfig(fill_addition=0.3, fill_addition_share=0.35, fill_addition_removed=0.03, fill_addition_fpr=0.25)


def notched_cube():
    """A 5-voxel cube (125 voxels) with the centre of one face cut out: (2, 4, 4) lies outside the mask."""
    mask = np.zeros((9, 9, 9), bool)
    mask[2:7, 2:7, 2:7] = True
    mask[2, 4, 4] = False
    return mask


def test_fill_additions_hand_checked():
    mask = notched_cube()
    # the notch: planes x = 1 (0), x = 2 (9 - itself = 8), x = 3 (9) -> 17 of 27; in front of it (1, 4, 4): x = 0, 1
    # (0) and x = 2 (8) -> 8; off an edge (1, 1, 4): only (2, 2, 3..5) -> 3
    coords = np.array([[2, 4, 4], [1, 4, 4], [1, 1, 4]])
    every = np.ones(3, bool)
    np.testing.assert_array_equal(fill_additions(mask, coords, every, 0, 0.1, OPEN), [True, False, False])
    # share 0.29 (at least 7.83: 8 of 27) adds the voxel in front of the notch too; 0.1 (2.7) all three
    np.testing.assert_array_equal(
        fill_additions(mask, coords, every, 0, 0.1, dataclasses.replace(OPEN, fill_addition_share=0.29)),
        [True, True, False])
    np.testing.assert_array_equal(
        fill_additions(mask, coords, every, 0, 0.1, dataclasses.replace(OPEN, fill_addition_share=0.1)), [True] * 3)
    # only candidates
    np.testing.assert_array_equal(fill_additions(mask, coords, np.array([0, 1, 1], bool), 0, 0.1, OPEN), [False] * 3)


def test_fill_additions_volume_gates():
    mask = notched_cube()  # 124 voxels: 0.03 of them is 3.72
    coords = np.array([[2, 4, 4]])
    one = np.ones(1, bool)
    assert fill_additions(mask, coords, one, 3, 0.25, OPEN).all()  # 3 removals < 3.72, fpr 0.25 <= 0.25
    assert not fill_additions(mask, coords, one, 4, 0.25, OPEN).any()  # 4 removals: a leaky volume
    assert not fill_additions(mask, coords, one, 0, 0.26, OPEN).any()  # the GCN calls too much background fg
    assert not fill_additions(mask, coords, one, 0, float("nan"), OPEN).any()  # no labelled background: no evidence
    assert not fill_additions(mask, coords, one, 0, 0.0, dataclasses.replace(OPEN, fill_addition_removed=0.0)).any()
    assert not fill_additions(mask, coords, one, 0, 0.0, dataclasses.replace(OPEN, fill_addition=0.9)).any()  # off


def test_fill_additions_against_loops():
    rng = np.random.default_rng(5)
    shape = (10, 12, 9)
    for share in (0.35, 0.5):
        mask = rng.random(shape) < 0.5
        coords = np.argwhere(np.ones(shape, bool))  # every voxel, the volume's faces included
        n = len(coords)
        cand = ~mask[tuple(coords.T)] & (rng.random(n) < 0.7)
        got = fill_additions(mask, coords, cand, 0, 0.0, dataclasses.replace(OPEN, fill_addition_share=share))
        want = np.zeros(n, bool)
        for k in np.flatnonzero(cand):
            x, y, z = coords[k]
            count = sum(1 for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1)
                        if 0 <= x + a < shape[0] and 0 <= y + b < shape[1] and 0 <= z + c < shape[2]
                        and mask[x + a, y + b, z + c])
            want[k] = count >= share * 27
        assert 0 < want.sum() < cand.sum()
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def fits():
    """One short fit of the known-answer case refined without and with the fill addition (same seed: same
    probabilities); the other mask rules off, and a loose setting so that it adds something."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST, sparse_addition=0.0, sparse_removal=0.0, context_addition=1.0, context_removal=0.0,
                          thin_removal=0.0, fill_addition_share=0.2, fill_addition_removed=1.0, fill_addition_fpr=1.0)
    runs = {f: refine_volume(image, pred, e, u, config=dataclasses.replace(config, fill_addition=f), label=label,
                             spacing=(1.0, 1.0, 1.0)) for f in (1.0, 0.1)}
    return (image, pred, e, u, label), config, runs


def test_fill_addition_adds_exactly_what_the_rule_says(fits, neighbour_counts):
    (image, pred, e, u, label), config, runs = fits
    off, on = runs[1.0], runs[0.1]
    g, p = off.graph, off.node_probs
    np.testing.assert_allclose(on.node_probs, p, atol=1e-6)
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask
    # numpy: the margins' classes, then the uncertain voxels outside Ŷ in (0.1, 0.9] with >= 0.2 * 27 (6) of their
    # 3x3x3 neighbourhood in Ŷ
    cls = np.where(p > 0.9, 1, np.where(p <= 0.02, 0, pred[idx]))
    counts = neighbour_counts(pred)
    fill = free & (pred[idx] == 0) & (cls == 0) & (p > 0.1) & (p <= 0.9) & (counts[idx] >= 6)
    assert fill.sum() >= 3
    differ = on.refined[idx] != off.refined[idx]
    np.testing.assert_array_equal(differ, fill)
    np.testing.assert_array_equal(on.refined[idx][fill], 1)
    outside_nodes = np.ones(pred.shape, bool)
    outside_nodes[idx] = False
    np.testing.assert_array_equal(on.refined[outside_nodes], off.refined[outside_nodes])
    # the removed-share gate on the same fit: the margins removed k voxels of Ŷ; a limit of exactly k / |Ŷ| adds
    # nothing (fewer than the limit is asked), a limit just above it adds the same
    k = int(np.sum(free & (pred[idx] == 1) & (cls == 0)))
    for limit, same_as in ((k / pred.sum(), off), ((k + 0.5) / pred.sum(), on)):
        r = refine_volume(image, pred, e, u, config=dataclasses.replace(config, fill_addition=0.1,
                                                                         fill_addition_removed=limit),
                          label=label, spacing=(1.0, 1.0, 1.0))
        np.testing.assert_array_equal(r.refined, same_as.refined)


def test_fill_addition_settings():
    default = RefineConfig()
    assert (default.fill_addition, default.fill_addition_share, default.fill_addition_removed,
            default.fill_addition_fpr) == (0.3, 0.35, 0.03, 0.25)
    assert uses_fill_addition(default) and not uses_fill_addition(RefineConfig(fill_addition=0.9))
    assert RefineConfig.preset("reference").fill_addition == 1.0
    assert not uses_fill_addition(RefineConfig.preset("reference"))
    for bad in (dict(fill_addition=1.5), dict(fill_addition_share=0.0), dict(fill_addition_removed=-0.1),
                dict(fill_addition_fpr=1.2)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_config(RefineConfig(**bad))
