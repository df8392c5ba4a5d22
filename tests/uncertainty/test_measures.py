"""The uncertainty measures and every built-in estimator (ugcn.uncertainty.measures) against plain numpy
computations on the
samples: exact p = 0 / 1, streaming == all samples, value ranges."""
import math

import numpy as np
import pytest

from ugcn.uncertainty import (
    BUILTIN_ESTIMATORS,
    accumulate,
    empty_stats,
    estimator_maps,
    get_estimator,
    list_estimators,
    measures,
    merge,
    stats_from_samples,
)


def np_xlogx(p):
    p = np.asarray(p, np.float64)
    out = np.zeros_like(p)
    nz = p > 0
    out[nz] = p[nz] * np.log(p[nz])
    return out


def np_reference(samples):
    """All measures of samples [T, ..., C] in float64, bits normalised by log2 C unless named nats."""
    s = np.asarray(samples, np.float64)
    c = s.shape[-1]
    mean = s.mean(0)
    h_nats = -np_xlogx(mean).sum(-1)
    eh_nats = np.mean(-np_xlogx(s).sum(-1), axis=0)
    var_c = s.var(0)  # population variance, 1/T
    return {
        "expectation": mean,
        "entropy": h_nats / math.log(c),  # bits / log2(C) == nats / ln(C)
        "entropy_nats": h_nats,
        "expected_entropy": eh_nats / math.log(c),
        "mutual_information": np.maximum(h_nats - eh_nats, 0) / math.log(c),
        "variance": var_c[..., 1] if c == 2 else var_c.mean(-1),
        "pcs": mean.max(-1),
        "one_minus_pcs": 1 - mean.max(-1),
    }


CASES = [(t, c) for t in (1, 2, 7) for c in (2, 4)]


@pytest.mark.parametrize("t,c", CASES)
def test_measures_match_numpy(t, c, random_samples):
    rng = np.random.default_rng(100 * t + c)
    samples = random_samples(rng, t, (6, 5, 3), c)
    ref = np_reference(samples)
    maps = estimator_maps(list_estimators(), stats_from_samples(samples), samples)  # all: some need samples
    for name in ("entropy", "entropy_nats", "expected_entropy", "mutual_information", "variance", "pcs",
                 "one_minus_pcs"):
        assert np.all(np.isfinite(maps[name])), name
        np.testing.assert_allclose(maps[name], ref[name], atol=2e-5, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(measures.expectation(stats_from_samples(samples)), ref["expectation"], atol=1e-6)


def test_exact_zero_and_one_give_zero_uncertainty():
    # Samples that are all exactly one-hot and agree: every uncertainty is exactly 0, PCS exactly 1.
    samples = np.zeros((5, 3, 2, 1, 2), np.float32)
    samples[..., 1] = 1.0
    samples[:, 0, ..., 0], samples[:, 0, ..., 1] = 1.0, 0.0
    maps = estimator_maps(list_estimators(), stats_from_samples(samples), samples)  # all: some need samples
    for name in ("entropy", "entropy_nats", "expected_entropy", "mutual_information", "variance", "one_minus_pcs"):
        np.testing.assert_array_equal(maps[name], 0.0, err_msg=name)
    np.testing.assert_array_equal(maps["pcs"], 1.0)


def test_disagreeing_hard_samples_are_maximally_uncertain():
    # Half the samples say 0, half say 1: entropy 1 bit, MI 1 bit, expected entropy 0, variance 1/4.
    samples = np.zeros((4, 2, 2, 2, 2), np.float32)
    samples[:2, ..., 1] = 1.0
    samples[2:, ..., 0] = 1.0
    maps = estimator_maps(list_estimators(), stats_from_samples(samples), samples)  # all: some need samples
    np.testing.assert_allclose(maps["entropy"], 1.0, atol=1e-6)
    np.testing.assert_allclose(maps["mutual_information"], 1.0, atol=1e-6)
    np.testing.assert_allclose(maps["expected_entropy"], 0.0, atol=1e-7)
    np.testing.assert_allclose(maps["variance"], 0.25, atol=1e-7)
    np.testing.assert_allclose(maps["entropy_nats"], math.log(2), atol=1e-6)
    np.testing.assert_allclose(maps["pcs"], 0.5, atol=1e-7)


def test_entropy_bases_and_normalisation(random_samples):
    samples = random_samples(np.random.default_rng(3), 3, (4,), 3, exact_fraction=0.0)
    stats = stats_from_samples(samples)
    nats = np.asarray(measures.entropy(stats, base=math.e))
    np.testing.assert_allclose(measures.entropy(stats, base=2.0), nats / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(measures.entropy(stats, base=2.0, normalise=True), nats / math.log(3), rtol=1e-5)
    with pytest.raises(ValueError, match="base"):
        measures.entropy(stats, base=1.0)


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
