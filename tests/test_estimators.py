"""Uncertainty measures and the estimator registry, against plain numpy computations on the samples."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.uncertainty import (
    Estimator,
    accumulate,
    empty_stats,
    estimator_maps,
    get_estimator,
    list_estimators,
    measures,
    merge,
    register_estimator,
    stats_from_samples,
    unregister_estimator,
)
from ugcn.uncertainty import estimators as estimators_module


# --- numpy references, straight from the definitions in docs/method.md ----------------------------------------

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


def random_samples(rng, t, shape, c, *, exact_fraction=0.3):
    """Random class probabilities with a fraction of voxels exactly one-hot (p = 0 and p = 1)."""
    logits = rng.normal(size=(t,) + shape + (c,)) * 3
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    onehot = np.eye(c)[rng.integers(0, c, size=(t,) + shape)]
    exact = rng.random(shape) < exact_fraction  # same voxels exact in every sample
    exact_some = rng.random((t,) + shape) < exact_fraction  # exact in some samples only
    p = np.where((exact[None] | exact_some)[..., None], onehot, p)
    return p.astype(np.float32)


CASES = [(t, c) for t in (1, 2, 7) for c in (2, 4)]


@pytest.mark.parametrize("t,c", CASES)
def test_measures_match_numpy(t, c):
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


def test_entropy_bases_and_normalisation():
    samples = random_samples(np.random.default_rng(3), 3, (4,), 3, exact_fraction=0.0)
    stats = stats_from_samples(samples)
    nats = np.asarray(measures.entropy(stats, base=math.e))
    np.testing.assert_allclose(measures.entropy(stats, base=2.0), nats / math.log(2), rtol=1e-5)
    np.testing.assert_allclose(measures.entropy(stats, base=2.0, normalise=True), nats / math.log(3), rtol=1e-5)
    with pytest.raises(ValueError, match="base"):
        measures.entropy(stats, base=1.0)


def test_streaming_stats_equal_all_at_once():
    samples = random_samples(np.random.default_rng(4), 7, (3, 3), 2)
    whole = stats_from_samples(samples)
    streamed = empty_stats(samples.shape[1:])
    for chunk in (samples[:3], samples[3:4], samples[4:]):
        streamed = accumulate(streamed, chunk)
    merged = merge(stats_from_samples(samples[:2]), stats_from_samples(samples[2:]))
    for other in (streamed, merged):
        assert float(other.count) == 7
        for a, b in zip(whole, other):
            np.testing.assert_allclose(a, b, atol=1e-5)
    # weights 0 leave samples out
    weighted = accumulate(empty_stats(samples.shape[1:]), samples, jnp.array([1, 1, 0, 0, 0, 0, 0.0]))
    np.testing.assert_allclose(weighted.sum_p, samples[:2].sum(0), atol=1e-6)
    assert float(weighted.count) == 2


def test_stats_input_errors():
    with pytest.raises(ValueError, match="class axis"):
        stats_from_samples(np.zeros((3, 4, 4, 4, 1), np.float32))
    with pytest.raises(ValueError, match="class axis"):
        empty_stats((4, 4, 1))
    with pytest.raises(ValueError, match="does not match"):
        accumulate(empty_stats((4, 2)), np.zeros((2, 3, 2), np.float32))


# --- the registry ---------------------------------------------------------------------------------------

def margin_uncertainty(stats):
    """1 - (top1 - top2) of the expectation."""
    top2 = jax.lax.top_k(stats.sum_p / stats.count, 2)[0]
    return 1.0 - (top2[..., 0] - top2[..., 1])


MARGIN_ESTIMATOR = Estimator("margin_obj", margin_uncertainty, value_range=(0.0, 1.0))
NOT_CALLABLE = 3


@pytest.fixture
def scratch_names():
    names = []
    yield names
    for name in names:
        if name in list_estimators():
            unregister_estimator(name)


def test_builtins_registered():
    assert {"entropy", "entropy_nats", "variance", "pcs", "one_minus_pcs", "mutual_information",
            "expected_entropy"} <= set(list_estimators())
    assert get_estimator("pcs").higher_is_uncertain is False
    assert get_estimator("entropy").value_range == (0.0, 1.0)
    pcs_map = jnp.array([1.0, 0.5])
    np.testing.assert_allclose(get_estimator("pcs").as_uncertainty(pcs_map), [0.0, 0.5])


def test_register_as_function_and_decorator(scratch_names):
    scratch_names += ["t_margin", "t_deco"]
    est = register_estimator("t_margin", fn=margin_uncertainty, value_range=(0, 1))
    assert isinstance(est, Estimator) and get_estimator("t_margin") is est
    assert est.description.startswith("1 - (top1")

    @register_estimator("t_deco", higher_is_uncertain=False, description="twice E_1")
    def twice(stats):
        return 2 * stats.sum_p[..., 1] / stats.count

    assert callable(twice) and not isinstance(twice, Estimator)  # decorator returns the function
    assert get_estimator("t_deco").higher_is_uncertain is False
    samples = random_samples(np.random.default_rng(5), 3, (4, 2), 3)
    maps = estimator_maps(["t_margin", "t_deco", "entropy"], stats_from_samples(samples))
    mean = samples.astype(np.float64).mean(0)
    top = np.sort(mean, -1)
    np.testing.assert_allclose(maps["t_margin"], 1 - (top[..., -1] - top[..., -2]), atol=1e-6)
    np.testing.assert_allclose(maps["t_deco"], 2 * mean[..., 1], atol=1e-6)
    assert list(maps) == ["t_margin", "t_deco", "entropy"]


def test_duplicate_and_invalid_names(scratch_names):
    scratch_names.append("t_dup")
    register_estimator("t_dup", fn=margin_uncertainty)
    with pytest.raises(ValueError, match="registered already"):
        register_estimator("t_dup", fn=margin_uncertainty)
    replaced = register_estimator("t_dup", fn=margin_uncertainty, description="new", overwrite=True)
    assert get_estimator("t_dup") is replaced
    with pytest.raises(ValueError, match="registered already"):
        register_estimator("entropy", fn=margin_uncertainty)
    for bad in ("a:b", "a,b", "", "1abc"):
        with pytest.raises(ValueError, match="not valid"):
            register_estimator(bad, fn=margin_uncertainty)
    with pytest.raises(ValueError, match="needs"):
        register_estimator("t_bad_needs", fn=margin_uncertainty, needs="voxels")


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="registered:.*entropy.*variance"):
        get_estimator("entropyy")


def test_import_spec():
    spec = f"{__name__}:margin_uncertainty"
    est = get_estimator(spec)
    assert est.name == spec and est.fn is margin_uncertainty and est.needs == "stats"
    assert get_estimator(f"{__name__}:MARGIN_ESTIMATOR") is MARGIN_ESTIMATOR
    samples = random_samples(np.random.default_rng(6), 2, (3,), 2)
    maps = estimator_maps(f"entropy,{spec}", stats_from_samples(samples))
    assert set(maps) == {"entropy", spec}
    with pytest.raises(ValueError, match="cannot import"):
        get_estimator("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="no attribute"):
        get_estimator(f"{__name__}:no_such_function")
    with pytest.raises(ValueError, match="neither"):
        get_estimator(f"{__name__}:NOT_CALLABLE")


def test_samples_estimators(scratch_names):
    scratch_names.append("t_max_fg")
    register_estimator("t_max_fg", fn=lambda s: s[..., 1].max(0), needs="samples")
    samples = random_samples(np.random.default_rng(7), 4, (3, 2), 2)
    stats = stats_from_samples(samples)
    with pytest.raises(ValueError, match="need the samples"):
        estimator_maps(["entropy", "t_max_fg"], stats)
    maps = estimator_maps(["entropy", "t_max_fg"], stats, samples)
    np.testing.assert_allclose(maps["t_max_fg"], samples[..., 1].max(0))


def test_estimator_maps_is_one_compiled_call(scratch_names):
    traces = []

    def traced_entropy(stats):
        traces.append(1)  # Python side effect: runs only while jax traces the function
        return measures.entropy(stats)

    scratch_names.append("t_traced")
    register_estimator("t_traced", fn=traced_entropy)
    estimators_module._compiled_maps.cache_clear()
    stats = stats_from_samples(random_samples(np.random.default_rng(8), 3, (2, 2), 2))
    names = ["entropy", "variance", "t_traced", "pcs", "mutual_information"]
    first = estimator_maps(names, stats)
    second = estimator_maps(names, stats)
    info = estimators_module._compiled_maps.cache_info()
    assert (info.misses, info.hits) == (1, 1)  # one jitted function for all five maps, reused
    assert len(traces) == 1  # traced (compiled) once, not per call
    for name in names:
        np.testing.assert_array_equal(first[name], second[name])


def test_estimator_maps_errors(scratch_names):
    stats = stats_from_samples(random_samples(np.random.default_rng(9), 2, (2, 3), 2))
    with pytest.raises(ValueError, match="no sample"):
        estimator_maps(["entropy"], empty_stats((2, 3, 2)))
    with pytest.raises(ValueError, match="no estimator"):
        estimator_maps("", stats)
    scratch_names.append("t_wrong_shape")
    register_estimator("t_wrong_shape", fn=lambda s: s.sum_p[..., :1])  # neither [2, 3] nor per class [2, 3, 2]
    with pytest.raises(ValueError, match=r"returned f32\[2, 3, 1\]; expected a voxel map f32\[2, 3\]"):
        estimator_maps(["t_wrong_shape"], stats)
