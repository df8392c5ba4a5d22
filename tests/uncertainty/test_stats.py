"""Streaming sample statistics (ugcn.uncertainty.stats): chunked accumulation equals all samples at once; input
errors."""
import jax.numpy as jnp
import numpy as np
import pytest

from ugcn.uncertainty import accumulate, empty_stats, merge, stats_from_samples


def test_streaming_stats_equal_all_at_once(random_samples):
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


@pytest.mark.parametrize("t", [1, 3, 16, 17, 40])
def test_sums_over_samples_match_numpy(random_samples, t):
    # sum_leading adds the samples in groups (no XLA reduce); the sums must be numpy's to float rounding.
    from ugcn.uncertainty.stats import sum_leading

    samples = random_samples(np.random.default_rng(t), t, (4, 5), 3)
    np.testing.assert_allclose(sum_leading(jnp.asarray(samples)), samples.sum(0), rtol=1e-6, atol=1e-6)
    stats = stats_from_samples(samples)
    p = samples.astype(np.float64)
    np.testing.assert_allclose(stats.sum_p, p.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.sum_p2, (p * p).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.sum_plogp, np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(0),
                               rtol=1e-5, atol=1e-5)
