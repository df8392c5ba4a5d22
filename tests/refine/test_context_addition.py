"""RefineConfig.context_addition: the masked smoothing against a plain loop, the context check on a hand-checked case
and against a whole-volume numpy version, and the rule on the refined mask (same fit with and without it)."""
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from ugcn.config import check_config
from ugcn.data import uncertain_band_case
from ugcn.refine.fit import FitConfig
from ugcn.refine.pipeline import RefineConfig, context_support, masked_smooth, refine_volume, uses_context

FAST = FitConfig(epochs=30)


def loop_masked_smooth(image, mask, sigma, voxel):
    """Gaussian-weighted mean of ``image`` over ``mask`` around ``voxel`` (plain loops; kernel truncated at
    int(4 sigma + 0.5) per axis as scipy does; the kernel's normalisation cancels in the ratio)."""
    r = [int(4.0 * s + 0.5) for s in sigma]
    num = den = 0.0
    for a in range(-r[0], r[0] + 1):
        for b in range(-r[1], r[1] + 1):
            for c in range(-r[2], r[2] + 1):
                w = np.exp(-0.5 * ((a / sigma[0]) ** 2 + (b / sigma[1]) ** 2 + (c / sigma[2]) ** 2))
                x, y, z = voxel[0] + a, voxel[1] + b, voxel[2] + c
                if mask[x, y, z]:
                    num += w * float(image[x, y, z])
                    den += w
    return num / den if den > 0 else np.nan


def test_masked_smooth_against_a_loop():
    rng = np.random.default_rng(0)
    shape, sigma = (15, 14, 12), (1.0, 1.3, 0.7)
    image = rng.normal(size=shape).astype(np.float32)
    mask = rng.random(shape) < 0.4
    got = masked_smooth(image, mask, sigma)
    r = [int(4.0 * s + 0.5) for s in sigma]
    # interior voxels: the kernel does not reach the border, where scipy reflects
    for voxel in [(5, 6, 4), (7, 7, 5), (9, 6, 7), (6, 8, 6)]:
        assert all(r[i] <= voxel[i] < shape[i] - r[i] for i in range(3))
        np.testing.assert_allclose(got[voxel], loop_masked_smooth(image, mask, sigma, voxel), rtol=1e-6)
    # channels are smoothed one by one
    two = np.stack([image, 2.0 * image + 1.0], axis=-1)
    got2 = masked_smooth(two, mask, sigma)
    np.testing.assert_allclose(got2[..., 0], got, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got2[..., 1], 2.0 * got + 1.0, rtol=1e-6, atol=1e-6)
    # far from every mask voxel: no level (NaN), never a division by zero
    lone = np.zeros(shape, bool)
    lone[0, 0, 0] = True
    assert np.isnan(masked_smooth(image, lone, (0.5, 0.5, 0.5))[14, 13, 11])


def half_space_case():
    """A block ``Ŷ`` of intensity 100; outside it an organ-like slab (90) on one side and background (0) on the
    other, each constant, so the outside-smoothed level of a node deep in one region is exactly that region's."""
    shape = (40, 30, 12)
    image = np.zeros(shape, np.float32)
    mask = np.zeros(shape, bool)
    mask[14:26, 10:20, 3:9] = True
    image[mask] = 100.0
    image[:14] = 90.0  # x < 14: organ-like tissue touching the block's x = 14 face
    coords = np.array([[13, 15, 6],  # touches the block, in the organ-like slab: level 90
                       [26, 15, 6],  # touches the block, in the background: level 0
                       [20, 15, 6],  # inside the block (a certain foreground node)
                       [18, 12, 5],  # inside
                       [30, 15, 6], [32, 15, 6], [28, 15, 5],  # certain background, near the block (0)
                       [5, 15, 6],  # certain background far away in the slab (90), 9 voxels from the block
                       ])
    certain_fg = np.array([0, 0, 1, 1, 0, 0, 0, 0], bool)
    certain_bg = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    return image, mask, coords, certain_fg, certain_bg


def test_context_support_hand_checked():
    image, mask, coords, fg, bg = half_space_case()
    # sigma 1 voxel: the kernel reaches 4 voxels; the two candidates are 14 voxels from the slab's edge (y, z alike)
    ok = context_support(image, mask, coords, fg, bg, sigma=1.0, reach=100.0)
    # organ level 100 (inside), background the median of 0, 0, 0, 90 = 0: 90 is nearer 100, 0 nearer 0
    assert ok[:2].tolist() == [True, False]
    # reach 8 mm keeps the three near background nodes (all at 0) and drops the far slab node (9 voxels away)
    assert context_support(image, mask, coords, fg, bg, sigma=1.0, reach=8.0)[:2].tolist() == [True, False]
    # only the far slab node as background (90): the slab candidate sits at the background's level -> not added
    far = np.zeros_like(bg)
    far[7] = True
    assert context_support(image, mask, coords, fg, far, sigma=1.0, reach=100.0)[:2].tolist() == [False, False]
    # reach picks the near background when there is any: the same set plus one near node at 0 -> median 45
    near_and_far = far.copy()
    near_and_far[4] = True
    assert context_support(image, mask, coords, fg, near_and_far, sigma=1.0, reach=5.0)[:2].tolist() == [True, False]
    # the organ's own level never pulls a touching node: a slab at 40 is below the midpoint 50 ...
    dim = image.copy()
    dim[:14] = 40.0
    assert context_support(dim, mask, coords, fg, bg, sigma=1.0, reach=100.0)[0] == False  # noqa: E712
    # ... and at 60 above it
    dim[:14] = 60.0
    assert context_support(dim, mask, coords, fg, bg, sigma=1.0, reach=100.0)[0] == True  # noqa: E712
    # without certain nodes of both classes no node passes
    assert not context_support(image, mask, coords, fg, np.zeros_like(bg), sigma=1.0, reach=6.0).any()


def whole_volume_context(image, mask, coords, fg, bg, sigma, reach, spacing):
    """The context check on the whole volume, spelled out (no crop)."""
    sig = [sigma / s for s in spacing]
    idx = tuple(np.asarray(coords).T)
    outside = masked_smooth(image, ~mask, sig)[idx]
    organ = np.median(masked_smooth(image, mask, sig)[idx][fg])
    distance = ndimage.distance_transform_edt(~mask, sampling=spacing)[idx]
    near = bg & (distance < reach)
    background = np.median(outside[near if near.any() else bg])
    return np.abs(outside - background) > np.abs(outside - organ)


def test_context_support_equals_the_whole_volume():
    rng = np.random.default_rng(3)
    shape, spacing = (40, 36, 14), (1.2, 1.2, 3.75)
    for _ in range(3):
        image = (rng.normal(0, 18, shape) + np.where(rng.random(shape) < 0.5, 50.0, -100.0)).astype(np.float32)
        image = ndimage.gaussian_filter(image, 1.0)
        mask = np.zeros(shape, bool)
        mask[12:27, 10:24, 4:10] = True
        mask &= rng.random(shape) < 0.95
        box = np.zeros(shape, bool)
        box[9:30, 7:27, 2:12] = True  # the nodes: around the mask, a few voxels from the volume's border
        coords = np.argwhere(box)
        fg = mask[tuple(coords.T)] & (rng.random(len(coords)) < 0.6)
        bg = ~mask[tuple(coords.T)] & (rng.random(len(coords)) < 0.5)
        for sigma, reach in ((3.0, 6.0), (2.0, 3.0), (5.0, 100.0)):
            got = context_support(image, mask, coords, fg, bg, sigma=sigma, reach=reach, spacing=spacing)
            want = whole_volume_context(image, mask, coords, fg, bg, sigma, reach, spacing)
            np.testing.assert_array_equal(got, want)
            assert 0 < got.sum() < len(got)


@pytest.fixture(scope="module")
def fits():
    """One short fit of the known-answer case (outputs between 0.5 and 0.9 on some uncertain nodes outside Ŷ), refined
    without and with the context additions (same seed: same probabilities); the sparse rules off to isolate it."""
    image, pred, e, u, label = uncertain_band_case()
    config = RefineConfig(fit=FAST, sparse_addition=0.0, sparse_removal=0.0, context_sigma=1.0)
    runs = {c: refine_volume(image, pred, e, u, config=dataclasses.replace(config, context_addition=c), label=label,
                             spacing=(1.0, 1.0, 1.0)) for c in (1.0, 0.5, 0.7)}
    # the default width: the shell (1.5 voxels) is too thin for its surroundings to look like the organ at 3 mm
    runs["wide"] = refine_volume(image, pred, e, u, config=dataclasses.replace(config, context_addition=0.5,
                                                                               context_sigma=3.0), label=label)
    return (image, pred, e, u, label), runs


def test_context_addition_adds_exactly_the_loose_nodes_that_pass(fits):
    (image, pred, e, u, label), runs = fits
    off = runs[1.0]
    g, p = off.graph, off.node_probs
    idx = tuple(g.node_coords.T)
    free = ~g.label_mask & (pred[idx] == 0)
    fg = g.label_mask & (pred[idx] == 1)
    context = whole_volume_context(image, pred, g.node_coords, fg, g.label_mask & ~fg, 1.0, 6.0, (1.0, 1.0, 1.0))
    for level in (0.5, 0.7):
        on = runs[level]
        np.testing.assert_allclose(on.node_probs, p, atol=1e-6)
        loose = free & (p > level) & (p <= 0.9)
        assert (loose & context).sum() >= 5 and (loose & ~context).sum() >= 5
        assert (label[idx][loose & context] == 1).all()  # here what passes is the missed shell
        differ = on.refined[idx] != off.refined[idx]
        np.testing.assert_array_equal(differ, loose & context)
        np.testing.assert_array_equal(on.refined[idx][loose & context], 1)
        outside = np.ones(pred.shape, bool)
        outside[idx] = False
        np.testing.assert_array_equal(on.refined[outside], off.refined[outside])
    # the stricter level adds a subset
    assert (runs[0.7].refined <= runs[0.5].refined).all()
    assert (runs[0.5].refined != runs[1.0].refined).any()
    assert runs[0.5].dice["refined"] > runs[1.0].dice["refined"]
    # no voxel spacing given: 1 mm, said so; at 3 mm nothing of the thin shell passes
    assert any("context check" in m for m in runs["wide"].messages)
    np.testing.assert_array_equal(runs["wide"].refined, runs[1.0].refined)


def test_context_addition_settings():
    default = RefineConfig()
    assert (default.context_addition, default.context_sigma, default.context_reach) == (0.5, 3.0, 6.0)
    assert uses_context(RefineConfig())
    assert uses_context(RefineConfig(context_addition=0.5))
    assert not uses_context(RefineConfig(context_addition=0.9))  # at threshold + margin: nothing loose to add
    assert not uses_context(RefineConfig.preset("reference"))  # margin 0: additions at 0.5 already
    assert RefineConfig.preset("reference").context_addition == 1.0
    for bad in (dict(context_addition=1.5), dict(context_sigma=0.0), dict(context_reach=-1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check_config(RefineConfig(**bad))
