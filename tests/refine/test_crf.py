"""The dense-CRF baseline: known-answer edge snapping, the reference setting, units, tuning, pipeline and CLI."""
import dataclasses

import numpy as np
import pytest

from ugcn.refine.crf import (
    REFERENCE_CRF,
    CRFCase,
    CRFConfig,
    crf_available,
    crf_refine,
    dense_crf,
    organ_intensity_spread,
    tune_crf,
)

pytestmark = pytest.mark.skipif(not crf_available(), reason="pydensecrf not installed")

SPACING = (0.8, 0.8, 2.5)
EDGE = 12  # the organ is x >= EDGE
ROI = (slice(4, 28), slice(None), slice(None))  # a box around the boundary with room on both sides
# A CRF that trusts the image: unary from E with a 0.01 floor, strong bilateral term.
SNAP = CRFConfig(unary="expectation", floor=0.01, gaussian_compat=3.0, intensity_width=1.0, bilateral_compat=5.0)


def slab_case(centre: float, blur_mm: float = 3.0, noise: float = 6.0, seed: int = 0):
    """A bright slab (x >= EDGE, 60 units over noise) and a CNN expectation blurred around the WRONG plane.

    ``E`` is a logistic of the distance (mm) to ``x = centre``: ``E > 0.5`` misplaces the boundary by
    ``|centre + 0.5 - EDGE|`` voxels, and the voxels in between have ``E`` in about (0.2, 0.8).
    """
    shape = (28, 20, 10)
    x = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape)
    truth = x >= EDGE
    rng = np.random.default_rng(seed)
    image = (np.where(truth, 60.0, 0.0) + rng.normal(0.0, noise, shape)).astype(np.float32)
    expectation = (1.0 / (1.0 + np.exp(-(x - centre) * SPACING[0] / blur_mm))).astype(np.float32)
    return image, expectation, expectation > 0.5, truth


@pytest.mark.parametrize("centre", [9.5, 14.5])  # E > 0.5 two voxels too large, three too small
def test_bilateral_term_snaps_a_blurred_boundary_to_the_intensity_edge(centre):
    image, e, prediction, truth = slab_case(centre)
    assert (prediction != truth).sum() >= 400  # the CNN's boundary is wrong by whole planes
    out = crf_refine(image, e, prediction, spacing=SPACING, roi=ROI, config=SNAP)
    np.testing.assert_array_equal(out[ROI], truth[ROI])  # the ground-truth edge, voxel for voxel
    assert not out[:4].any() and out.dtype == np.uint8
    # the bilateral (intensity) term does it: without it the boundary stays where E put it
    smooth_only = crf_refine(image, e, prediction, spacing=SPACING, roi=ROI,
                             config=dataclasses.replace(SNAP, bilateral_compat=0.0))
    np.testing.assert_array_equal(smooth_only[ROI], prediction[ROI])


def test_reference_setting_returns_the_prediction():
    image, e, prediction, truth = slab_case(14.5)
    out = crf_refine(image, e, prediction, spacing=SPACING, roi=ROI, config=REFERENCE_CRF)
    np.testing.assert_array_equal(out[ROI], prediction[ROI])  # a 34.5-nat unary: nothing flips


def test_default_roi_is_the_predictions_box_and_empty_prediction_gives_empty():
    image, e, prediction, truth = slab_case(9.5)
    out = crf_refine(image, e, prediction, spacing=SPACING, config=SNAP)
    assert not out[:10].any()  # ROI = bounding box of the prediction (x >= 10)
    np.testing.assert_array_equal(out[12:], truth[12:])
    assert not crf_refine(image, e, np.zeros_like(prediction), spacing=SPACING).any()


def test_intensity_width_is_relative_to_the_organs_spread():
    image, e, prediction, truth = slab_case(14.5)
    scaled = image * 0.01 - 3.0  # another scanner's units: contrast 0.6, noise 0.06
    out = crf_refine(scaled, e, prediction, spacing=SPACING, roi=ROI, config=SNAP)
    np.testing.assert_array_equal(out[ROI], truth[ROI])  # same answer in any units
    raw = crf_refine(scaled, e, prediction, spacing=SPACING, roi=ROI,
                     config=dataclasses.replace(SNAP, intensity_units="raw", intensity_width=1.0))
    assert (raw[ROI] != truth[ROI]).any()  # a width of 1 raw unit is blind to a contrast of 0.6


def test_organ_intensity_spread_is_the_robust_std_over_the_prediction():
    rng = np.random.default_rng(1)
    image = rng.normal(0.0, 1.0, (10, 10, 10, 2)) * np.array([5.0, 0.5])
    image[:5] += 1000.0  # outside the mask: ignored
    mask = np.zeros((10, 10, 10), bool)
    mask[5:] = True
    values = image[mask]
    expected = 1.4826 * np.median(np.abs(values - np.median(values, axis=0)), axis=0)
    np.testing.assert_allclose(organ_intensity_spread(image, mask), expected)
    assert organ_intensity_spread(np.zeros((4, 4, 4)), mask[:4, :4, :4])[0] > 0  # never 0


def test_widths_reach_dense_crf_in_voxels_and_image_units():
    image, e, prediction, truth = slab_case(14.5, noise=12.0, seed=3)
    config = CRFConfig(unary="expectation", floor=0.01, gaussian_width=3.0, gaussian_compat=3.0, bilateral_width=7.0,
                       intensity_width=0.7, bilateral_compat=4.0)
    out = crf_refine(image, e, prediction, spacing=SPACING, roi=ROI, config=config)
    values = image[ROI][prediction[ROI]]
    spread = 1.4826 * np.median(np.abs(values - np.median(values)))
    by_hand = dense_crf(image[ROI], np.clip(e[ROI], 0.01, 0.99), gaussian_sdims=(3 / 0.8, 3 / 0.8, 3 / 2.5),
                        bilateral_sdims=(7 / 0.8, 7 / 0.8, 7 / 2.5), bilateral_schan=(0.7 * spread,),
                        bilateral_compat=4.0, floor=0.01)
    np.testing.assert_array_equal(out[ROI], by_hand)
    iso = crf_refine(image, e, prediction, spacing=(1.0, 1.0, 1.0), roi=ROI, config=config)
    assert (iso != out).any()  # the spacing changes the kernels


def test_floor_caps_the_unary():
    image, e, prediction, truth = slab_case(14.5)
    hard = np.where(e > 0.5, 1.0, 0.0).astype(np.float32)  # a binary "expectation": only the floor lets it move
    soft = crf_refine(image, hard, prediction, spacing=SPACING, roi=ROI, config=dataclasses.replace(SNAP, floor=0.2))
    stiff = crf_refine(image, hard, prediction, spacing=SPACING, roi=ROI, config=dataclasses.replace(SNAP, floor=1e-6))
    np.testing.assert_array_equal(stiff[ROI], prediction[ROI])
    assert (soft[ROI] != prediction[ROI]).any()


def test_tune_crf_picks_the_setting_that_finds_the_edge():
    cases = [CRFCase(*slab_case(c, seed=s), spacing=SPACING) for c, s in ((9.5, 0), (14.5, 1))]
    tuning = tune_crf(cases, grid={"bilateral_compat": (0.0, 5.0)}, base=SNAP, margin=6)
    assert [r["bilateral_compat"] for r in tuning.rows] == [0.0, 5.0]
    assert tuning.best.bilateral_compat == 5.0 and tuning.best_row()["bilateral_compat"] == 5.0
    assert tuning.rows[1]["mean_dice"] > tuning.rows[0]["mean_dice"]
    assert all(d < 1.0 for d in tuning.prediction_dice)
    with pytest.raises(ValueError, match="unknown CRFConfig field"):
        tune_crf(cases, grid={"sigma": (1.0,)})


def test_bad_settings_and_inputs_raise():
    with pytest.raises(ValueError, match="unary"):
        CRFConfig(unary="probability")
    with pytest.raises(ValueError, match="floor"):
        CRFConfig(floor=0.0)
    image, e, prediction, truth = slab_case(14.5)
    with pytest.raises(ValueError, match="spacing"):
        crf_refine(image, e, prediction, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="expectation"):
        crf_refine(image, None, prediction, config=SNAP)


def test_pipeline_runs_the_configured_crf_with_the_volumes_spacing():
    from ugcn.refine.fit import FitConfig
    from ugcn.refine.pipeline import RefineConfig, RefineInput, refine_batch, refine_volume

    image, e, prediction, truth = slab_case(14.5)
    u = (-(e * np.log2(e) + (1 - e) * np.log2(1 - e))).astype(np.float32)
    fast = RefineConfig(margin=8, fit=FitConfig(epochs=2))
    fast = dataclasses.replace(fast, crf=SNAP)
    tuned = refine_volume(image, prediction, e, u, config=fast, label=truth, crf=True, spacing=SPACING)
    roi = tuned.graph.roi
    np.testing.assert_array_equal(tuned.crf, crf_refine(image, e, prediction, spacing=SPACING, roi=roi, config=SNAP))
    assert tuned.dice["crf"] > tuned.dice["cnn"]
    reference = refine_volume(image, prediction, e, u, config=dataclasses.replace(fast, crf=REFERENCE_CRF),
                              label=truth, crf=True, spacing=SPACING)
    np.testing.assert_array_equal(reference.crf, reference.cnn)
    (batch,) = refine_batch([RefineInput(image, prediction, e, u, truth, spacing=SPACING)], config=fast, crf=True,
                            progress=False)
    np.testing.assert_array_equal(batch.crf, tuned.crf)
    no_spacing = refine_volume(image, prediction, e, u, config=fast, crf=True)
    assert any("1 mm voxels" in m for m in no_spacing.messages)


def test_dense_crf_follows_a_sharp_image_edge():
    image = np.zeros((16, 12, 8), np.float32)
    image[8:] = 100.0
    rng = np.random.default_rng(0)
    prob = np.where(image > 0, 0.6, 0.4) + rng.uniform(-0.15, 0.15, image.shape)  # noisy, weak unary
    out = dense_crf(image, prob.astype(np.float32))
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, image > 0)
    assert ((prob > 0.5) != (image > 0)).any()  # the unary alone was wrong somewhere
