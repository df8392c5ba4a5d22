"""benchmarks/common.py: the host's CPU accounting around timed calls, on hand-written /proc/stat lines."""
from __future__ import annotations

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


def test_disturbed_is_steal_over_five_percent_of_the_calls_cpu_time(common):
    # two cores for 10 s: 20 CPU seconds; 5 % of them is 1 s
    assert not common.is_disturbed(10.0, 0.99, 2)
    assert common.is_disturbed(10.0, 1.01, 2)
    assert common.is_disturbed(23.6, 5.98, 2)  # the slow call measured on the 2-core VM (12.7 %)


def test_timed_call_reads_the_accounting_around_the_call(common, monkeypatch):
    stats = iter([{"steal": 10.0, "idle": 100.0}, {"steal": 13.0, "idle": 104.5}])
    monkeypatch.setattr(common, "cpu_seconds", lambda: next(stats))
    monkeypatch.setattr(common.os, "cpu_count", lambda: 2)
    call = common.timed_call(lambda: None)
    assert call["steal_seconds"] == pytest.approx(3.0) and call["idle_seconds"] == pytest.approx(4.5)
    assert call["disturbed"] is True  # 3 s of steal in a call of microseconds
    monkeypatch.setattr(common, "cpu_seconds", lambda: None)
    assert common.timed_call(lambda: None)["disturbed"] is None


def test_summarize_calls_keeps_both_medians(common):
    calls = [{"seconds": s, "disturbed": d} for s, d in [(10.0, False), (23.0, True), (11.0, False), (10.4, False),
                                                         (22.0, True)]]
    summary = common.summarize_calls(calls)
    assert summary == {"seconds": 11.0, "undisturbed_seconds": 10.4, "disturbed_calls": 2}
    unknown = common.summarize_calls([{"seconds": 3.0, "disturbed": None}])
    assert unknown == {"seconds": 3.0, "undisturbed_seconds": None, "disturbed_calls": 0}
