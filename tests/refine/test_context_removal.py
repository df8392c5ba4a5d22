"""RefineConfig.context_removal: the leak level against plain loops, on a hand-checked case and against a whole-volume
version, and the rule on the refined mask (same fit with and without it)."""
import dataclasses

import numpy as np
import pytest

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, leak_level, masked_smooth, refine_volume, uses_context_removal

FAST = FitConfig(epochs=30)


def loop_level(image, mask, sigma, voxel):
    """Gaussian-weighted mean of ``image`` over ``mask`` around ``voxel`` in plain loops (kernel truncated at
    int(4 sigma + 0.5) per axis as scipy's; its normalisation cancels in the ratio); NaN without a mask voxel."""
    r = [int(4.0 * s + 0.5) for s in sigma]
    num = den = 0.0
    for a in range(-r[0], r[0] + 1):
        for b in range(-r[1], r[1] + 1):
            for c in range(-r[2], r[2] + 1):
                x, y, z = voxel[0] + a, voxel[1] + b, voxel[2] + c
                if mask[x, y, z]:
                    w = np.exp(-0.5 * ((a / sigma[0]) ** 2 + (b / sigma[1]) ** 2 + (c / sigma[2]) ** 2))
                    num += w * float(image[x, y, z])
                    den += w
    return num / den if den > 0 else np.nan


def slab_case(tissue=60.0):
    """An organ (100) at x < 15, adjacent tissue (``tissue``) from x = 15 on; ``Ŷ`` leaks into the tissue up to x = 20.
    Constant along y and z, so only the x profile of the kernel matters away from the y/z faces of ``Ŷ``."""
    shape = (30, 20, 14)
    image = np.full(shape, tissue, np.float32)
    image[:15] = 100.0
    mask = np.zeros(shape, bool)
    mask[3:20, 2:18, 2:12] = True
    coords = np.array([[16, 10, 7], [18, 10, 7], [12, 10, 7], [8, 10, 7], [9, 9, 6]])
    certain_fg = np.array([0, 0, 0, 1, 1], bool)
    return image, mask, coords, certain_fg


def test_leak_level_hand_checked():
    image, mask, coords, fg = slab_case()
    level = leak_level(image, mask, coords, fg, sigma=1.0)
    # x = 16, sigma 1 voxel, reach 4: inside Ŷ the weights at x = 12..19 are exp(-d^2 / 2), d = -4..3; the organ's
    # share (x = 12, 13, 14) is 0.146779 / 2.506294, so inside = 60 + 40 * 0.058564 = 62.343; outside (x >= 20, d = 4)
    # is 60; the organ's level 100: (62.343 - 100) / (60 - 100) = 0.94141
    assert level[0] == pytest.approx(0.94141, abs=1e-4)
    # x = 18: the organ is 4 voxels away at x = 14 (weight exp(-8)): nearly all tissue
    w = np.exp(-0.5 * np.arange(-4, 2) ** 2)  # x = 14..19
    assert level[1] == pytest.approx(1.0 - w[0] / w.sum(), abs=1e-9)
    # x = 12 and the certain nodes: no voxel outside Ŷ within 4 voxels -> undefined
    assert np.isnan(level[2:]).all()
    # a brighter neighbour: the same share of the way, towards 140 now
    bright, _, _, _ = slab_case(tissue=140.0)
    np.testing.assert_allclose(leak_level(bright, mask, coords, fg, sigma=1.0), level, rtol=1e-9)
    # channels: the level is a projection, so a duplicated channel and a channel where the tissue equals the organ
    # (nothing to tell apart there) leave it unchanged
    flat = np.full(image.shape, 100.0, np.float32)
    two = np.stack([image, image, flat], axis=-1)
    np.testing.assert_allclose(leak_level(two, mask, coords, fg, sigma=1.0), level, rtol=1e-9)
    # mm: 2 mm at 2 mm voxels is 1 voxel
    np.testing.assert_allclose(leak_level(image, mask, coords, fg, sigma=2.0, spacing=(2.0, 2.0, 2.0)), level)
    # tissue at the organ's level: nothing to compare with -> undefined; no certain foreground -> undefined
    same, _, _, _ = slab_case(tissue=100.0)
    assert np.isnan(leak_level(same, mask, coords, fg, sigma=1.0)).all()
    assert np.isnan(leak_level(image, mask, coords, np.zeros_like(fg), sigma=1.0)).all()


def test_leak_level_against_loops_and_the_whole_volume():
    rng = np.random.default_rng(5)
    shape, spacing, sigma_mm = (34, 32, 16), (1.2, 1.2, 3.75), 2.0
    sig = [sigma_mm / s for s in spacing]
    r = [int(4.0 * s + 0.5) for s in sig]
    for _ in range(2):
        image = rng.normal(0, 18, shape).astype(np.float32) + np.where(rng.random(shape) < 0.5, 40.0, 0.0)
        mask = np.zeros(shape, bool)
        mask[10:24, 9:22, 4:11] = True
        mask &= rng.random(shape) < 0.9
        box = np.zeros(shape, bool)
        box[8:26, 7:24, 3:13] = True
        coords = np.argwhere(box)
        fg = mask[tuple(coords.T)] & (rng.random(len(coords)) < 0.5)
        got = leak_level(image, mask, coords, fg, sigma=sigma_mm, spacing=spacing)
        # the whole volume, spelled out (no crop)
        idx = tuple(coords.T)
        inside = masked_smooth(image, mask, sig)[idx]
        outside = masked_smooth(image, ~mask, sig)[idx]
        organ = np.median(inside[fg])
        with np.errstate(invalid="ignore"):
            want = (inside - organ) / (outside - organ)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
        assert np.isfinite(got).mean() > 0.9 and (got > 0.4).any() and (got < 0.4).any()
        # plain loops on a few interior nodes (the kernel does not reach the volume's border)
        for k in rng.choice(len(coords), 6, replace=False):
            v = coords[k]
            if not all(r[i] <= v[i] < shape[i] - r[i] for i in range(3)):
                continue
            i_loop, o_loop = loop_level(image, mask, sig, v), loop_level(image, ~mask, sig, v)
            assert got[k] == pytest.approx((i_loop - organ) / (o_loop - organ), rel=1e-6)


@pytest.fixture(scope="module")
def fits():
    """One short fit of the known-answer case (a false-positive shell inside Ŷ that the GCN calls background with
    outputs above the removal band), refined without and with the context removals (same seed: same probabilities);
    the other mask rules off to isolate it."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST, sparse_addition=0.0, sparse_removal=0.0, context_addition=1.0,
                          context_removal_sigma=1.0, thin_removal=0.0, fill_addition=1.0)
    runs = {c: refine_volume(image, pred, e, u, config=dataclasses.replace(config, context_removal=c), label=label,
                             spacing=(1.0, 1.0, 1.0)) for c in (0.0, 0.5, 0.3)}
    runs["config"] = config  # the shared settings, for a further run
    return (image, pred, e, u, label), runs


def test_context_removal_removes_exactly_the_doubtful_nodes_that_pass(fits):
    (image, pred, e, u, label), runs = fits
    off = runs[0.0]
    g, p = off.graph, off.node_probs
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask & (pred[idx] == 1)
    fg = g.label_mask & (pred[idx] == 1)
    sig = (1.0, 1.0, 1.0)
    inside, outside = masked_smooth(image, pred, sig)[idx], masked_smooth(image, ~pred, sig)[idx]
    organ = np.median(inside[fg])
    with np.errstate(invalid="ignore"):
        level = np.nan_to_num((inside - organ) / (outside - organ), nan=-1.0)
    # every doubtful node of the shell lies near the background's level (0.4 passes all): a share at the median of
    # their levels splits them
    split = float(np.median(level[free & (p < 0.5) & (p > 0.02)]))
    config = dataclasses.replace(runs["config"], context_removal=0.5, context_removal_share=split)
    runs["split"] = refine_volume(image, pred, e, u, config=config, label=label, spacing=(1.0, 1.0, 1.0))
    for bound, share in ((0.5, 0.4), (0.3, 0.4), ("split", split)):
        on = runs[bound]
        np.testing.assert_allclose(on.node_probs, p, atol=1e-6)
        doubtful = free & (p < (0.5 if bound == "split" else bound)) & (p > 0.02)  # <= 0.02: the margin removes them
        assert (doubtful & (level > share)).sum() >= 5
        assert (label[idx][doubtful & (level > share)] == 0).all()  # here what passes is the false-positive shell
        differ = on.refined[idx] != off.refined[idx]
        np.testing.assert_array_equal(differ, doubtful & (level > share))
        np.testing.assert_array_equal(on.refined[idx][differ], 0)
        outside_nodes = np.ones(pred.shape, bool)
        outside_nodes[idx] = False
        np.testing.assert_array_equal(on.refined[outside_nodes], off.refined[outside_nodes])
    assert (runs[0.3].refined >= runs[0.5].refined).all()  # the stricter bound removes a subset
    assert (runs["split"].refined >= runs[0.5].refined).all() and (runs["split"].refined != runs[0.5].refined).any()
    assert runs[0.5].dice["refined"] > runs[0.0].dice["refined"]


def test_context_removal_settings():
    default = RefineConfig()
    assert (default.context_removal, default.context_removal_sigma, default.context_removal_share) == (0.5, 2.0, 0.4)
    assert uses_context_removal(default)
    assert not uses_context_removal(RefineConfig(context_removal=0.02))  # at the removal band: nothing doubtful left
    assert not uses_context_removal(RefineConfig.preset("reference"))
    assert RefineConfig.preset("reference").context_removal == 0.0
    for bad in (dict(context_removal=1.5), dict(context_removal_sigma=0.0), dict(context_removal_share=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_config(RefineConfig(**bad))
