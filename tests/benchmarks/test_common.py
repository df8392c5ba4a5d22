"""benchmarks/common.py: the host's CPU accounting around timed calls, on hand-written /proc/stat lines."""
from __future__ import annotations

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="module")
def common(load_benchmark):
    return load_benchmark("common")


def test_parse_proc_stat_by_hand(common):
    # user nice system idle iowait irq softirq steal guest guest_nice, in ticks of 1/100 s
    line = "cpu  5594622 4368732 962383 1783978 8854 0 2757 84119 0 0\n"
    s = common.parse_proc_stat(line, 100)
    assert s["user"] == pytest.approx(55946.22) and s["idle"] == pytest.approx(17839.78)
    assert s["steal"] == pytest.approx(841.19) and s["softirq"] == pytest.approx(27.57)
    assert common.parse_proc_stat("cpu 1 2 3 4", 100)["steal"] == 0  # an old kernel without the later states
    with pytest.raises(ValueError, match="machine-wide"):
        common.parse_proc_stat("cpu0 1 2 3 4 5 6 7 8", 100)


def test_timed_call_shares_of_the_calls_cpu_time(common, monkeypatch):
    stats = iter([{"steal": 10.0, "idle": 100.0}, {"steal": 13.0, "idle": 104.5}])
    clock = iter([50.0, 60.0])  # a call of 10 s on 2 cores: 20 CPU seconds
    monkeypatch.setattr(common, "cpu_seconds", lambda: next(stats))
    # the clock of common only (not the time module that pytest and jax share)
    monkeypatch.setattr(common, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    call = common.timed_call(lambda: None)
    assert call == {"seconds": 10.0, "idle_fraction": pytest.approx(4.5 / 20), "steal_fraction": pytest.approx(3 / 20)}
    monkeypatch.setattr(common, "cpu_seconds", lambda: None)
    clock = iter([0.0, 2.0])
    assert common.timed_call(lambda: None) == {"seconds": 2.0, "idle_fraction": None, "steal_fraction": None}


def test_summarize_calls_median_time_and_largest_shares(common):
    calls = [{"seconds": s, "idle_fraction": i, "steal_fraction": f}
             for s, i, f in [(10.0, 0.01, 0.002), (23.0, 0.35, 0.1), (11.0, 0.02, 0.03), (10.4, None, None)]]
    assert common.summarize_calls(calls) == {"seconds": 10.7, "max_idle_fraction": 0.35, "max_steal_fraction": 0.1}
    unknown = common.summarize_calls([{"seconds": 3.0, "idle_fraction": None, "steal_fraction": None}])
    assert unknown == {"seconds": 3.0, "max_idle_fraction": None, "max_steal_fraction": None}
