"""Every built-in estimator: plain numpy references, exact p = 0 / 1, streaming == all samples, value ranges."""
import numpy as np
import pytest

from ugcn.uncertainty import (
    BUILTIN_ESTIMATORS,
    accumulate,
    empty_stats,
    estimator_maps,
    get_estimator,
    merge,
    stats_from_samples,
)


def hand_samples(rng, t, shape, c):
    """Class probabilities [T, ..., C]: soft voxels, voxels one-hot in every sample (p exactly 0 and 1, agreeing
    or not), and voxels with two exactly tied top classes."""
    logits = rng.normal(size=(t,) + shape + (c,)) * 2
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(c)[rng.integers(0, c, size=(t,) + shape)]
    kind = rng.integers(0, 4, size=shape)  # 0 soft, 1 one-hot (random per sample), 2 one-hot agreeing, 3 tie
    p = np.where((kind == 1)[None, ..., None], onehot, p)
    p = np.where((kind == 2)[None, ..., None], np.eye(c)[c - 1], p)
    tie = np.zeros(c)
    tie[[0, c - 1]] = 0.5
    p = np.where((kind == 3)[None, ..., None], tie, p)
    return p.astype(np.float32)


def np_builtins(samples):
    """The three newer built-ins, straight from their definitions, in float64."""
    s = np.asarray(samples, np.float64)
    t, c = s.shape[0], s.shape[-1]
    mean = s.mean(0)
    var_c = s.var(0)
    var = var_c[..., 1] if c == 2 else var_c.mean(-1)
    top = np.sort(mean, -1)
    labels = np.argmax(s, -1)  # ties -> lowest class index
    counts = np.stack([(labels == k).sum(0) for k in range(c)], -1)
    return {
        "predictive_std": np.sqrt(var),
        "margin": 1.0 - (top[..., -1] - top[..., -2]),
        "variation_ratio": 1.0 - counts.max(-1) / t,
    }


CASES = [(t, c) for t in (1, 2, 7) for c in (2, 4)]


@pytest.mark.parametrize("t,c", CASES)
def test_new_builtins_match_numpy_and_every_builtin_is_finite(t, c):
    samples = hand_samples(np.random.default_rng(10 * t + c), t, (5, 4, 3), c)
    maps = estimator_maps(BUILTIN_ESTIMATORS, stats_from_samples(samples), samples)
    ref = np_builtins(samples)
    for name, expected in ref.items():
        np.testing.assert_allclose(maps[name], expected, atol=2e-6, err_msg=name)
    for name in BUILTIN_ESTIMATORS:
        values = np.asarray(maps[name])
        assert np.all(np.isfinite(values)), name
        lo, hi = get_estimator(name).value_range or (-np.inf, np.inf)
        assert values.min() >= lo - 1e-6 and values.max() <= hi + 1e-6, (name, values.min(), values.max())


def test_exact_agreement_is_exactly_certain():
    # One-hot samples that agree (p exactly 0 and 1): every new uncertainty is exactly 0.
    samples = np.zeros((5, 3, 2, 1, 3), np.float32)
    samples[..., 2] = 1.0
    samples[:, 0, ..., 2], samples[:, 0, ..., 0] = 0.0, 1.0
    maps = estimator_maps(["predictive_std", "margin", "variation_ratio"], stats_from_samples(samples), samples)
    for name, values in maps.items():
        np.testing.assert_array_equal(values, 0.0, err_msg=name)


def test_variation_ratio_hand_cases():
    # voxel 0: labels 0,0,1,1 -> 1 - 2/4; voxel 1: labels 0,1,2,2 with C = 3 -> 1 - 2/4;
    # voxel 2: every sample ties classes 1 and 2 -> label 1 every time -> 0.
    samples = np.zeros((4, 3, 1, 1, 3), np.float32)
    for t, label in enumerate([0, 0, 1, 1]):
        samples[t, 0, 0, 0, label] = 1.0
    for t, label in enumerate([0, 1, 2, 2]):
        samples[t, 1, 0, 0, label] = 1.0
    samples[:, 2, 0, 0] = [0.0, 0.5, 0.5]
    vr = np.asarray(estimator_maps(["variation_ratio"], stats_from_samples(samples), samples)["variation_ratio"])
    np.testing.assert_allclose(vr[:, 0, 0], [0.5, 0.5, 0.0], atol=1e-7)
    # the maximum 1 - 1/C: three samples, three classes, all different
    three = np.eye(3, dtype=np.float32)[:, None, None, None, :]
    vr3 = estimator_maps(["variation_ratio"], stats_from_samples(three), three)["variation_ratio"]
    np.testing.assert_allclose(vr3, 2.0 / 3.0, atol=1e-7)


def test_predictive_std_and_margin_binary_closed_forms():
    samples = np.zeros((2, 1, 1, 1, 2), np.float32)
    samples[0, ..., 1], samples[1, ..., 1] = 0.0, 1.0  # E = 1/2, var = 1/4
    samples[..., 0] = 1.0 - samples[..., 1]
    maps = estimator_maps(["predictive_std", "margin"], stats_from_samples(samples))
    np.testing.assert_allclose(maps["predictive_std"], 0.5, atol=1e-7)  # the top of its value range
    np.testing.assert_allclose(maps["margin"], 1.0, atol=1e-7)


def test_streaming_equals_all_samples_for_every_stats_builtin():
    samples = hand_samples(np.random.default_rng(3), 7, (4, 3, 2), 3)
    stats_names = [n for n in BUILTIN_ESTIMATORS if get_estimator(n).needs == "stats"]
    assert {"predictive_std", "margin", "entropy", "variance"} <= set(stats_names)
    whole = estimator_maps(stats_names, stats_from_samples(samples))
    streamed = empty_stats(samples.shape[1:])
    for chunk in (samples[:3], samples[3:4], samples[4:]):
        streamed = accumulate(streamed, chunk)
    merged = merge(stats_from_samples(samples[:5]), stats_from_samples(samples[5:]))
    for stats in (streamed, merged):
        maps = estimator_maps(stats_names, stats)
        for name in stats_names:
            np.testing.assert_allclose(maps[name], whole[name], atol=2e-6, err_msg=name)


def test_samples_estimator_without_samples_says_how_to_keep_them():
    samples = hand_samples(np.random.default_rng(4), 3, (2, 2, 1), 2)
    with pytest.raises(ValueError, match=r"variation_ratio.*keep_samples=True.*--save-samples"):
        estimator_maps(["entropy", "variation_ratio"], stats_from_samples(samples))
    with pytest.raises(ValueError, match="keep_samples=True"):
        get_estimator("variation_ratio")(stats_from_samples(samples))
    assert get_estimator("variation_ratio").needs == "samples"
    for name in ("predictive_std", "margin", "variation_ratio"):
        est = get_estimator(name)
        assert est.higher_is_uncertain and est.description and est.value_range is not None
