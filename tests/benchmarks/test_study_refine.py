"""benchmarks/study_refine.py: the paired statistics and the grouping by CNN quality, on hand-checked numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(load_benchmark):
    return load_benchmark("study_refine")


def test_paired_stats_by_hand(study):
    cnn = [0.5, 0.6, 0.7, 0.4]
    method = [0.6, 0.8, 0.65, 0.7]  # differences +0.1, +0.2, -0.05, +0.3
    s = study.paired_stats(method, cnn)
    assert s["mean_delta"] == pytest.approx(0.1375) and s["min_delta"] == pytest.approx(-0.05)
    assert s["share_worse"] == 0.25 and s["share_better"] == 0.75 and s["share_worse_1pt"] == 0.25
    # exact two-sided signed-rank test, n = 4: ranks 2, 3, 1, 4, W- = 1; P(W <= 1) = 2/16, doubled
    assert s["p_wilcoxon"] == pytest.approx(0.25)
    assert study.paired_stats(cnn, cnn)["p_wilcoxon"] == 1.0  # nothing changed: no evidence of a change


def test_summary_groups_regimes_by_cnn_quality(study):
    good = {"dice": {"CNN": [0.85, 0.9], "X": [0.86, 0.92]}}
    poor = {"dice": {"CNN": [0.3, 0.5], "X": [0.2, 0.5]}}
    summary = study.summarize([good, poor])
    assert summary["methods"] == ["X"]
    pooled = summary["pooled"]
    assert pooled["all regimes"]["volumes"] == 4
    assert pooled["regimes with CNN Dice >= 0.8"]["stats"]["X"]["mean_delta"] == pytest.approx(0.015)
    assert pooled["regimes with CNN Dice < 0.8"]["stats"]["X"]["share_worse_1pt"] == 0.5
    assert good["cnn_mean_dice"] == pytest.approx(0.875) and poor["stats"]["X"]["min_delta"] == pytest.approx(-0.1)


def test_seed_option_separates_studies(study, monkeypatch):
    calls = []
    monkeypatch.setattr(study, "run", lambda *args: calls.append(args))
    assert study.main(["--size", "small"]) == 0 and study.main(["--seed", "2"]) == 0
    assert calls[0][-1] == 0 and calls[1][-1] == 2  # default: the published study, seed 0
    with pytest.raises(SystemExit):
        study.main(["--seed", "-1"])
    # seed 0 keeps the published test phantoms (5000..5003 at size small); seed 1 draws others, 5100..5103
    assert study.test_seeds("small") == [5000, 5001, 5002, 5003]
    assert study.test_seeds("small", 1) == [5100, 5101, 5102, 5103]
    # the training phantoms of seed s are 1000 s + i (i < 10): never a test phantom of the same study
    for seed in range(20):
        assert not set(study.test_seeds("full", seed)) & {1000 * seed + i for i in range(10)}
    # caches and result entries: unchanged names for seed 0, a suffix otherwise, so studies never mix
    assert study._suffix(0) == "" and study._suffix(1) == "_seed1"


def test_cache_name_carries_the_seed(study, tmp_path):
    regime = {"steps": 400, "n_train": 2, "dropout": 0.1}
    n = study.SIZES["small"]["n_test"]
    arrays = {f"{k}_{i}": np.full((2, 2, 1), i) for k in ("prediction", "expectation", "uncertainty") for i in range(n)}
    (tmp_path / "small").mkdir()
    np.savez(tmp_path / "small" / "cnn_s400_n2_d0.1_seed3.npz", train_seconds=1.5, **arrays)
    cases = study.cnn_outputs(regime, "small", tmp_path, retrain=False, seed=3)  # read back, nothing trained
    assert len(cases) == n and cases[2]["uncertainty"][0, 0, 0] == 2 and cases[0]["train_seconds"] == 1.5


def test_default_is_compared_without_each_of_its_rules(study):
    from ugcn.refine import RefineConfig

    methods = study.gcn_methods(variants_alone=False)
    config, mask = methods["GCN (default without context removal)"]
    assert mask == "refined" and config.context_removal == 0.0
    assert config == RefineConfig(context_removal=0.0)  # everything else as the default
    config, mask = methods["GCN (default without fill addition)"]
    assert mask == "refined" and config == RefineConfig(fill_addition=1.0)
    assert methods["GCN (default)"][0] == RefineConfig()
    assert list(methods)[-1] == "GCN (default)"


def test_strong_size_is_the_small_volumes_with_longer_trained_cnns(study):
    small, strong = study.SIZES["small"], study.SIZES["strong"]
    assert (strong["shape"], strong["spacing"]) == (small["shape"], small["spacing"])
    # low-value counts 3, 2, 2, 1 (one n_train value: always low); alternating ends of that order
    assert [(r["steps"], r["n_train"], r["dropout"]) for r in study.regimes("strong")] == [
        (1500, 5, 0.1), (3000, 5, 0.3), (3000, 5, 0.1), (1500, 5, 0.3)]
    assert study.test_seeds("strong", 4) == [5400 + i for i in range(8)]
