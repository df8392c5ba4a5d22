"""The estimator study (ugcn.experiments.estimator_study): ranking on a built phantom, values against scikit-learn,
method R and L columns, model sources."""
import math

import jax
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from ugcn.experiments.estimator_study import CaseSamples, CompareConfig, compare_estimators, resolve_estimators
from ugcn.uncertainty import get_estimator, list_estimators, stats_from_samples

CONFIG = CompareConfig(region="volume", r_epochs=30, r_sweep=(0.95,), gcnn_epochs=3, l_folds=2)


@pytest.fixture(scope="module")
def comparison(comparison_estimators, comparison_phantom):
    cases = (CaseSamples(n, im, lab, stats_from_samples(s), None) for n, im, lab, s, _ in comparison_phantom)
    return compare_estimators(cases, ["cmp_informative", "cmp_noise", "entropy"], CONFIG, progress=False)


def test_comparison_ranks_informative_above_noise(comparison, comparison_phantom):
    assert comparison.ranking("auroc")[0] == "cmp_informative"
    assert comparison.ranking("auprc")[0] == "cmp_informative"
    assert comparison.ranking("auroc").index("cmp_informative") < comparison.ranking("auroc").index("cmp_noise")
    inf, noise = comparison.row("cmp_informative"), comparison.row("cmp_noise")
    assert inf["auroc"] > 0.9 and abs(noise["auroc"] - 0.5) < 0.05
    assert inf["auprc"] > 3 * noise["auprc"]
    assert inf["l_auc_mean"] > 0.9 and inf["l_auc_mean"] > noise["l_auc_mean"]


def test_comparison_values_match_sklearn_on_pooled_voxels(comparison, comparison_phantom, comparison_noise_field):
    errors = np.concatenate([w.ravel() for *_, w in comparison_phantom])
    stats = [stats_from_samples(s) for *_, s, _ in comparison_phantom]
    noise = np.concatenate([np.asarray(comparison_noise_field(st, 1)).ravel() for st in stats])
    spread = [s[..., 1] for *_, s, _ in comparison_phantom]
    std = np.concatenate([np.sqrt(np.maximum((x**2).mean(0) - x.mean(0) ** 2, 0)).ravel() for x in spread])
    field = np.concatenate([np.asarray(comparison_noise_field(st, 0)).ravel() for st in stats])
    informative = (std + 0.2 * field).astype(np.float32)
    for name, values in (("cmp_informative", informative), ("cmp_noise", noise)):
        row = comparison.row(name)
        assert row["auroc"] == pytest.approx(roc_auc_score(errors, values), abs=2e-4)
        assert row["auprc"] == pytest.approx(average_precision_score(errors, values), abs=2e-4)
    assert comparison.summary["error_voxels"] == errors.sum()
    assert comparison.summary["voxels"] == errors.size


def test_comparison_has_r_and_l_columns(comparison):
    assert comparison.row("entropy")["r_default_tau"] == "abs 0.8"
    assert comparison.row("cmp_noise")["r_default_tau"].startswith("q ")
    for row in comparison.rows:
        for key in ("r_dice_default", "r_dice_best", "l_auc_mean", "l_auc_gcnn", "ece_confidence"):
            assert math.isfinite(row[key]), (row["estimator"], key, comparison.notes)
        assert 0.0 <= row["r_dice_best"] <= 1.0 and row["r_best_quantile"] in CONFIG.r_sweep
        assert 0.0 <= row["l_auc_gcnn"] <= 1.0
    assert comparison.summary["l_fp_lesions"] == 8 and comparison.summary["l_tp_lesions"] == 12
    table = comparison.markdown()
    assert "cmp_informative" in table and "| estimator |" in table


def test_resolve_estimators_defaults_to_every_registered(comparison_estimators):
    names = [e.name for e in resolve_estimators(None)]
    assert names == list_estimators()
    noise = get_estimator("cmp_noise").fn
    more = [e.name for e in resolve_estimators(f"all,{noise.__module__}:{noise.__name__}")]
    # an import spec naming a registered function is the registered estimator, not a duplicate
    assert more == list_estimators()
    with pytest.raises(ValueError, match="unknown estimator"):
        resolve_estimators("entropy,nope")


def test_samples_estimator_without_samples_is_refused(comparison_estimators, comparison_phantom):
    n, im, lab, s, _ = comparison_phantom[0]
    with pytest.raises(ValueError, match="need the samples"):
        compare_estimators([CaseSamples(n, im, lab, stats_from_samples(s), None)], ["cmp_spread"], CONFIG,
                           progress=False)


@pytest.mark.parametrize("source", ["tta"])  # the "mc" path is the CLI test of --quick; one U-Net compile here
def test_cases_from_model_feed_the_comparison(source, comparison_phantom, comparison_estimators):
    from ugcn.experiments.estimator_study import cases_from_model
    from ugcn.segment import UNetConfig
    from ugcn.segment.model import init_model

    model = init_model(UNetConfig(dims=2, base_features=2, depth=1, dropout_rate=0.5), jax.random.PRNGKey(0))
    items = [(n, im, lab) for n, im, lab, _, _ in comparison_phantom[:2]]
    cases = list(cases_from_model(items, model, n_samples=3, chunk_size=3, keep_samples=True, source=source))
    assert [c.name for c in cases] == ["case_0", "case_1"]
    assert float(cases[0].stats.count) == 3 and cases[0].samples.shape == (3,) + comparison_phantom[0][1].shape + (2,)
    result = compare_estimators(cases, ["entropy", "cmp_spread"], CompareConfig(method_r=False, method_l=False),
                                progress=False)
    assert [r["estimator"] for r in result.rows] == ["entropy", "cmp_spread"]
    assert result.summary["cases"] == 2
