"""benchmarks/study_refine.py: the paired statistics and the grouping by CNN quality, on hand-checked numbers."""
from __future__ import annotations

from pathlib import Path

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
