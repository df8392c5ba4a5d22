"""The estimator registry (ugcn.uncertainty.estimators): registration, names, import specs, samples estimators, one
compiled call."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.uncertainty import (
    Estimator,
    empty_stats,
    estimator_maps,
    get_estimator,
    list_estimators,
    measures,
    register_estimator,
    stats_from_samples,
    unregister_estimator,
)
from ugcn.uncertainty import estimators as estimators_module


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


def test_register_as_function_and_decorator(scratch_names, random_samples):
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


def test_import_spec(random_samples):
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


def test_samples_estimators(scratch_names, random_samples):
    scratch_names.append("t_max_fg")
    register_estimator("t_max_fg", fn=lambda s: s[..., 1].max(0), needs="samples")
    samples = random_samples(np.random.default_rng(7), 4, (3, 2), 2)
    stats = stats_from_samples(samples)
    with pytest.raises(ValueError, match="need the samples"):
        estimator_maps(["entropy", "t_max_fg"], stats)
    maps = estimator_maps(["entropy", "t_max_fg"], stats, samples)
    np.testing.assert_allclose(maps["t_max_fg"], samples[..., 1].max(0))


def test_estimator_maps_is_one_compiled_call(scratch_names, random_samples):
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


def test_estimator_maps_errors(scratch_names, random_samples):
    stats = stats_from_samples(random_samples(np.random.default_rng(9), 2, (2, 3), 2))
    with pytest.raises(ValueError, match="no sample"):
        estimator_maps(["entropy"], empty_stats((2, 3, 2)))
    with pytest.raises(ValueError, match="no estimator"):
        estimator_maps("", stats)
    scratch_names.append("t_wrong_shape")
    register_estimator("t_wrong_shape", fn=lambda s: s.sum_p[..., :1])  # neither [2, 3] nor per class [2, 3, 2]
    with pytest.raises(ValueError, match=r"returned f32\[2, 3, 1\]; expected a voxel map f32\[2, 3\]"):
        estimator_maps(["t_wrong_shape"], stats)
