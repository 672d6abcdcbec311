"""Exact trend statistics with bounded memory (gates/results/trend.py)."""

from __future__ import annotations

import math
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gates.results.trend import TrendStore, percentile_key


def k6_percentile(values: list[float], pct: float) -> float:
    """k6's TrendSink.P, written out independently of the store."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = pct * (len(ordered) - 1)
    low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
    return low + (high - low) * (position - math.floor(position))


def fill(store: TrendStore, values: list[float]):
    trend = store.new_trend()
    for value in values:
        if not store.reserve(1):
            raise AssertionError("reserve always allows at least one step")
        trend.values.append(value)
    return trend


def test_percentile_keys_are_spelled_like_k6():
    assert [percentile_key(p) for p in (90, 95.0, 99, 99.9, 99.99, 50)] == [
        "p(90)",
        "p(95)",
        "p(99)",
        "p(99.9)",
        "p(99.99)",
        "p(50)",
    ]


def test_statistics_match_k6_interpolation_in_memory():
    values = [random.Random(3).lognormvariate(3, 0.5) for _ in range(1001)]
    with TrendStore() as store:
        stats = store.statistics(fill(store, values), [90, 95, 99, 99.9])
    assert stats["med"] == k6_percentile(values, 0.5)
    for percent in (90, 95, 99, 99.9):
        assert stats[percentile_key(percent)] == k6_percentile(values, percent / 100)
    assert stats["min"] == min(values) and stats["max"] == max(values)
    assert stats["avg"] == math.fsum(values) / len(values)
    assert stats["count"] == 1001
    assert list(stats)[:4] == ["avg", "min", "med", "max"] and list(stats)[-1] == "count"


def test_spilled_statistics_are_identical_to_in_memory_ones():
    values = [random.Random(5).expovariate(0.1) for _ in range(5000)]
    with TrendStore() as in_memory:
        expected = in_memory.statistics(fill(in_memory, values), [50, 90, 99.9, 100])
        assert in_memory.spilled_runs == 0
    with TrendStore(budget=300, run_values=128, chunk_values=17) as spilling:
        got = spilling.statistics(fill(spilling, values), [50, 90, 99.9, 100])
        assert spilling.spilled_runs > 20
        assert spilling.peak_held <= 300
    assert got == expected


def test_budget_is_shared_by_all_trends_and_biggest_buffers_spill_first():
    with TrendStore(budget=100, run_values=1000) as store:
        big, small = store.new_trend(), store.new_trend()
        for index in range(95):
            steps = store.reserve(2)
            assert steps >= 1
            big.values.append(float(index))
            if index % 10 == 0:
                small.values.append(float(index))
        assert store.spilled_runs >= 1
        assert big.spilled > 0 and small.spilled == 0
        assert store.held() <= 100
        assert store.statistics(big)["count"] == 95
        assert store.statistics(small)["count"] == 10


def test_reserve_never_lets_the_caller_exceed_the_budget():
    with TrendStore(budget=50, run_values=16) as store:
        trends = [store.new_trend() for _ in range(3)]
        countdown = 0
        highest = 0
        for step in range(2000):
            if not countdown:
                countdown = store.reserve(3)
            countdown -= 1
            for trend in trends:
                trend.values.append(float(step))
            highest = max(highest, store.held())
        assert highest <= 50
        assert store.peak_held == highest


def test_spill_file_is_removed_when_the_store_closes(tmp_path):
    with TrendStore(budget=10, run_values=4, directory=str(tmp_path)) as store:
        fill(store, [float(v) for v in range(100)])
        assert store.spilled_runs > 0
        descriptor = store._file.fileno()
        assert os.fstat(descriptor).st_size > 0
    with pytest.raises(OSError):
        os.fstat(descriptor)
    assert list(tmp_path.iterdir()) == []


def test_empty_trend_has_only_a_zero_count():
    with TrendStore() as store:
        assert store.statistics(store.new_trend()) == {"count": 0.0}


def test_single_value_is_every_percentile():
    with TrendStore() as store:
        stats = store.statistics(fill(store, [42.5]), [90, 95, 99, 99.9])
    assert stats == {
        "avg": 42.5,
        "min": 42.5,
        "med": 42.5,
        "max": 42.5,
        "p(90)": 42.5,
        "p(95)": 42.5,
        "p(99)": 42.5,
        "p(99.9)": 42.5,
        "count": 1.0,
    }


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=300),
    budget=st.integers(min_value=2, max_value=64),
    run_values=st.integers(min_value=1, max_value=40),
)
def test_any_budget_gives_the_same_statistics_as_plain_sorting(values, budget, run_values):
    with TrendStore(budget=budget, run_values=run_values, chunk_values=3) as store:
        stats = store.statistics(fill(store, values), [25, 99.9])
    assert stats["med"] == k6_percentile(values, 0.5)
    assert stats["p(25)"] == k6_percentile(values, 0.25)
    assert stats["p(99.9)"] == k6_percentile(values, 99.9 / 100)  # k6 divides by 100 too
    assert stats["min"] == min(values) and stats["max"] == max(values)
    assert stats["avg"] == math.fsum(values) / len(values)
