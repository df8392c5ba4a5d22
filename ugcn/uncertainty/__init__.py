"""Monte Carlo sampling, streaming sample statistics and the registry of voxel-wise uncertainty estimators.

Typical use::

    result = mc_sample(volume_fn, image, jax.random.key(0), n_samples=20)   # or tta_sample(...) without dropout
    maps = estimator_maps(["entropy", "variance", "pcs"], result.stats)

or, from a model, a 4D NIfTI of any framework's samples, or arrays, everything a consumer needs at once::

    sampled = from_model(model, image, ["entropy", "variance"], n_samples=20)   # from_sample_file / from_samples
    sampled.prediction, sampled.expectation, sampled.maps["entropy"]
"""
from ugcn.uncertainty.estimators import (
    BUILTIN_ESTIMATORS,
    DEFAULT_ESTIMATORS,
    Estimator,
    estimator_maps,
    get_estimator,
    list_estimators,
    parse_estimator_names,
    register_estimator,
    registered_estimators,
    unregister_estimator,
)
from ugcn.uncertainty.measures import (
    class_variance,
    entropy,
    expectation,
    expected_entropy,
    margin,
    mutual_information,
    one_minus_pcs,
    pcs,
    predictive_std,
    variance,
    variation_ratio,
)
from ugcn.uncertainty.sampling import MCResult, load_sample_maps, mc_sample, samples_from_probability_maps
from ugcn.uncertainty.sources import SampledVolume, from_model, from_sample_file, from_samples
from ugcn.uncertainty.stats import SampleStats, accumulate, empty_stats, merge, stats_from_samples
from ugcn.uncertainty.tta import tta_sample, tta_transforms

__all__ = [
    "BUILTIN_ESTIMATORS",
    "DEFAULT_ESTIMATORS",
    "Estimator",
    "MCResult",
    "SampleStats",
    "SampledVolume",
    "accumulate",
    "class_variance",
    "empty_stats",
    "entropy",
    "estimator_maps",
    "expectation",
    "from_model",
    "from_sample_file",
    "from_samples",
    "expected_entropy",
    "get_estimator",
    "list_estimators",
    "load_sample_maps",
    "margin",
    "mc_sample",
    "merge",
    "mutual_information",
    "one_minus_pcs",
    "parse_estimator_names",
    "pcs",
    "predictive_std",
    "register_estimator",
    "registered_estimators",
    "samples_from_probability_maps",
    "stats_from_samples",
    "tta_sample",
    "tta_transforms",
    "unregister_estimator",
    "variance",
    "variation_ratio",
]
