"""RefineConfig.sparse_addition: the kept additions against a plain-loop region growing, and the rule on the refined
mask (same fit with and without it) against numpy."""
import dataclasses

import numpy as np
import pytest

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, refine_volume, supported_additions

FAST = FitConfig(epochs=30)


def loop_count(mask, x, y, z):
    """Voxels of ``mask`` in the 3x3x3 box around (x, y, z), outside the volume 0 (plain loops)."""
    n = 0
    for a in (x - 1, x, x + 1):
        for b in (y - 1, y, y + 1):
            for c in (z - 1, z, z + 1):
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and 0 <= c < mask.shape[2]:
                    n += int(mask[a, b, c] != 0)
    return n


def loop_kept(mask, coords, need):
    """Region growing one candidate at a time: keep a candidate whose box holds >= ``need`` voxels of the mask once
    it is added; sweep until a sweep keeps nothing. Order-independent because keeping only adds support."""
    grown = mask.astype(bool).copy()
    kept = [False] * len(coords)
    changed = True
    while changed:
        changed = False
        for i, (x, y, z) in enumerate(coords):
            if not kept[i] and loop_count(grown, x, y, z) + 1 >= need:
                kept[i] = True
                grown[x, y, z] = True
                changed = True
    return np.array(kept)


def test_supported_additions_grows_like_a_loop():
    rng = np.random.default_rng(1)
    for _ in range(4):
        mask = np.zeros((10, 9, 7), np.uint8)
        mask[2:7, 2:6, 1:5] = 1  # a block ...
        mask &= (rng.random(mask.shape) < 0.9).astype(np.uint8)  # ... with holes
        outside = np.argwhere(mask == 0)
        coords = outside[rng.choice(len(outside), 60, replace=False)]
        for share in (0.2, 0.3, 0.35, 10 / 27, 0.5):
            need = int(np.ceil(share * 27 - 1e-9))
            np.testing.assert_array_equal(supported_additions(mask, coords, share), loop_kept(mask, coords, need))
    assert supported_additions(mask, coords, 0.0).all()
    assert supported_additions(mask, np.zeros((0, 3), int), 0.35).shape == (0,)


def test_supported_additions_hand_checked():
    mask = np.zeros((6, 6, 6), np.uint8)
    mask[:3] = 1  # a half-space: a voxel of the first layer outside has 9 of 27 in it, of the second 0
    first, second = [3, 2, 2], [4, 2, 2]
    # alone: 9 + itself = 10 >= 0.35 * 27 = 9.45 -> kept; the second layer only once a first-layer voxel supports it
    assert supported_additions(mask, np.array([first]), 0.35).tolist() == [True]
    assert supported_additions(mask, np.array([second]), 0.35).tolist() == [False]
    layer = np.array([[3, y, z] for y in range(1, 5) for z in range(1, 5)])
    both = np.concatenate([layer, [second]])
    # every layer voxel: 9 + itself; then the second-layer voxel: 9 kept layer voxels + itself
    assert supported_additions(mask, both, 0.35).all()
    # at 11 of 27 no layer voxel reaches it (9 + itself), so nothing is kept and nothing grows
    assert not supported_additions(mask, both, 11 / 27).any()
    # a lone candidate far from the mask: 1 of 27
    assert supported_additions(mask, np.array([[5, 5, 5]]), 2 / 27).tolist() == [False]


@pytest.fixture(scope="module")
def fits():
    """One fit of the known-answer case (a false-negative shell 1.5 voxels thick to add), refined without and with
    the rule, and with a share that blocks most of it (same seed: same probabilities)."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST, sparse_addition=0.0)
    runs = {share: refine_volume(image, pred, e, u, config=dataclasses.replace(config, sparse_addition=share),
                                 label=label) for share in (0.0, 0.35, 0.6)}
    return (image, pred, e, u, label), runs


def test_sparse_addition_withholds_exactly_the_unsupported_additions(fits):
    (image, pred, e, u, label), runs = fits
    off = runs[0.0]
    g, p = off.graph, off.node_probs
    idx = tuple(g.node_coords.T)
    added = ~g.label_mask & (pred[idx] == 0) & (off.refined[idx] == 1)
    assert added.sum() > 50  # the shell
    np.testing.assert_array_equal(added, ~g.label_mask & (pred[idx] == 0) & (p > 0.9))
    for share in (0.35, 0.6):
        on = runs[share]
        np.testing.assert_allclose(on.node_probs, p, atol=1e-6)
        need = int(np.ceil(share * 27 - 1e-9))
        kept = np.zeros_like(added)
        kept[added] = loop_kept(off.cnn, g.node_coords[added], need)
        differ = on.refined[idx] != off.refined[idx]
        np.testing.assert_array_equal(differ, added & ~kept)
        np.testing.assert_array_equal(on.refined[idx][added & ~kept], 0)
        outside = np.ones(pred.shape, bool)
        outside[idx] = False
        np.testing.assert_array_equal(on.refined[outside], off.refined[outside])
    # the default share keeps nearly all of the shell (each addition supports the next: 263 of 265 with this short
    # fit); a strict one (17 of 27) withholds it all
    kept = (runs[0.35].refined[idx] == 1) & added
    assert kept.sum() >= 0.98 * added.sum()
    assert not ((runs[0.6].refined[idx] == 1) & added).any()


def test_sparse_addition_is_checked_and_off_in_the_reference():
    assert RefineConfig().sparse_addition == 0.35
    assert RefineConfig.preset("reference").sparse_addition == 0.0
    with pytest.raises(ValueError, match="sparse_addition"):
        check_config(RefineConfig(sparse_addition=1.5))
