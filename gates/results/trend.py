"""Exact trend statistics (avg, min, max, percentiles) over more values than fit in memory.

A load test of a few hours produces tens of millions of latency values, and gate decisions need
their percentiles exactly as k6 computes them, not an approximation. Values are appended to
``array('d')`` buffers; when the values held across all trends of a :class:`TrendStore` would
exceed its budget, the biggest buffers are sorted and written to one temporary file as sorted
runs of float64. The final statistics merge the runs (``heapq.merge`` over chunks read back from
the file) and pick exactly the ranks needed, so a spilled trend gives the same numbers, bit for
bit, as one that stayed in memory.

Percentiles follow k6 (``TrendSink.P``): over the sorted values, ``i = pct * (n - 1)`` and the
result interpolates linearly between the values at ``floor(i)`` and ``ceil(i)``; ``med`` is
``P(0.5)``. The average is ``math.fsum(values) / n``: correctly rounded, so independent of the
order the values were summed in.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import tempfile
from array import array
from collections.abc import Callable, Iterable, Iterator

DEFAULT_BUDGET = 4_000_000  # float64 values held in memory across all trends: 32 MB
DEFAULT_PERCENTILES = (90.0, 95.0, 99.0)

_ITEM = array("d").itemsize


def percentile_key(percent: float) -> str:
    """k6's spelling of a percentile aggregation: 95 → ``p(95)``, 99.9 → ``p(99.9)``."""
    return f"p({percent:g})"


def interpolate(low: float, high: float, fraction: float) -> float:
    """k6's linear interpolation between two neighbouring sorted values."""
    return low + (high - low) * fraction


def percentile_ranks(count: int, pct: float) -> tuple[int, int, float]:
    """The two ranks (0-based) a percentile interpolates between, and the fraction between them.

    ``pct`` is a fraction (0.95 for p(95)), as in k6's ``TrendSink.P``.
    """
    position = pct * (count - 1)
    low = math.floor(position)
    return low, math.ceil(position), position - low


class Trend:
    """The values of one trend: some in memory (``values``), some spilled as sorted runs.

    Parsers append to ``values`` directly (it is the hot path); spilling empties it in place, so
    a reference to ``values`` or to its ``append`` stays valid for the life of the store.
    """

    __slots__ = ("runs", "spilled", "values")

    def __init__(self, values: array):
        self.values = values
        # (byte offset in the spill file, number of values, smallest, largest) per sorted run
        self.runs: list[tuple[int, int, float, float]] = []
        self.spilled = 0

    @property
    def count(self) -> int:
        """Values added so far, in memory and spilled."""
        return len(self.values) + self.spilled


class TrendStore:
    """Trends sharing one memory budget and one spill file. Use as a context manager, or
    call :meth:`close`, so the temporary file is removed.

    ``budget`` is the most float64 values held in memory across all trends, provided the
    caller asks :meth:`reserve` for room as documented there.
    """

    def __init__(
        self,
        budget: int = DEFAULT_BUDGET,
        *,
        run_values: int = 1 << 19,
        chunk_values: int = 1 << 15,
        directory: str | None = None,
    ):
        if budget < 1 or run_values < 1 or chunk_values < 1:
            raise ValueError("budget, run_values and chunk_values must be positive")
        self.budget = budget
        # Sorting goes through a list of Python floats (~32 bytes a value), so runs are sorted
        # in slices of at most this many values to bound that transient memory.
        self.run_values = run_values
        self.chunk_values = chunk_values
        self.directory = directory
        self.trends: list[Trend] = []
        self.peak_held = 0
        self.spilled_runs = 0
        self.spilled_values = 0
        self._file = None

    def __enter__(self) -> TrendStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Delete the spill file. The trends' in-memory values stay readable."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _new_array(self) -> array:
        return array("d")

    def new_trend(self) -> Trend:
        """A new, empty trend sharing this store's budget and spill file."""
        trend = Trend(self._new_array())
        self.trends.append(trend)
        return trend

    def held(self) -> int:
        """How many values are in memory right now, across all trends."""
        return sum(len(trend.values) for trend in self.trends)

    def reserve(self, per_step: int) -> int:
        """Make room for the caller's next steps and say how many it may take before asking again.

        A step is whatever the caller does between calls (one NDJSON line, one JTL row) and
        appends at most ``per_step`` values in total. Values only grow between calls, so the
        held count seen here is the peak since the previous call and ``peak_held`` is exact.
        """
        per_step = max(1, per_step)
        held = self.held()
        self.peak_held = max(self.peak_held, held)
        if held + per_step > self.budget:
            # Spill down to half the budget so that the next spill is far away.
            self._spill_until(self.budget // 2)
            held = self.held()
        return max(1, (self.budget - held) // per_step)

    def _spill_until(self, target: int) -> None:
        held = self.held()
        for trend in sorted(self.trends, key=lambda t: len(t.values), reverse=True):
            if held <= target or not trend.values:
                break
            held -= len(trend.values)
            self._spill(trend)

    def _spill(self, trend: Trend) -> None:
        if self._file is None:
            # Open until close(): runs are read back at the end. An unnamed file on Linux, so
            # nothing is left behind even if the process dies.
            self._file = tempfile.TemporaryFile(prefix="perfgate-trend-", dir=self.directory)  # noqa: SIM115
        values = trend.values
        for start in range(0, len(values), self.run_values):
            run = array("d", sorted(values[start : start + self.run_values]))
            offset = self._file.seek(0, os.SEEK_END)
            run.tofile(self._file)
            trend.runs.append((offset, len(run), run[0], run[-1]))
            trend.spilled += len(run)
            self.spilled_runs += 1
            self.spilled_values += len(run)
        del values[:]

    def _read_run(self, offset: int, count: int) -> Iterator[array]:
        fd = self._file.fileno()
        done = 0
        while done < count:
            take = min(self.chunk_values, count - done)
            chunk = array("d")
            chunk.frombytes(os.pread(fd, take * _ITEM, offset + done * _ITEM))
            if len(chunk) != take:
                raise OSError("spill file is shorter than what was written to it")
            done += take
            yield chunk

    def _sorted_runs(self, trend: Trend) -> list[Iterable[array]]:
        """Every sorted run of a trend as an iterable of chunks: the spilled ones, then the
        in-memory values sorted in slices (left unsorted in ``values``: more may come)."""
        if trend.runs:
            self._file.flush()
        runs: list[Iterable[array]] = [self._read_run(offset, count) for offset, count, _, _ in trend.runs]
        values = trend.values
        for start in range(0, len(values), self.run_values):
            runs.append([array("d", sorted(values[start : start + self.run_values]))])
        return runs

    def statistics(
        self, trend: Trend, percentiles: Iterable[float] = DEFAULT_PERCENTILES
    ) -> dict[str, float]:
        """``avg, min, med, max, p(N)…, count`` of a trend, exactly as k6 computes them.

        ``percentiles`` are numbers such as 95 or 99.9. A trend with no values gives only
        ``{"count": 0.0}``: no latency at all must never look like a fast one.
        """
        self.peak_held = max(self.peak_held, self.held())
        count = trend.count
        if count == 0:
            return {"count": 0.0}
        fractions = {"med": 0.5}
        for percent in percentiles:
            fractions[percentile_key(percent)] = float(percent) / 100.0
        wanted: dict[str, tuple[int, int, float]] = {
            key: percentile_ranks(count, pct) for key, pct in fractions.items()
        }
        ranks = sorted({rank for low, high, _ in wanted.values() for rank in (low, high)})

        if not trend.runs and len(trend.values) <= self.run_values:
            ordered = sorted(trend.values)
            at = {rank: ordered[rank] for rank in ranks}
            smallest, largest = ordered[0], ordered[-1]
            total = _fsum(lambda: ordered)
        else:
            at = self._pick_ranks(trend, ranks)
            mins = [run[2] for run in trend.runs]
            maxes = [run[3] for run in trend.runs]
            if trend.values:
                mins.append(min(trend.values))
                maxes.append(max(trend.values))
            smallest, largest = min(mins), max(maxes)
            total = _fsum(
                lambda: itertools.chain.from_iterable(
                    itertools.chain.from_iterable(self._chunks_for_sum(trend))
                )
            )

        result = {"avg": total / count, "min": smallest}
        for key, (low, high, fraction) in wanted.items():
            result[key] = at[low] if count == 1 else interpolate(at[low], at[high], fraction)
        result["max"] = largest
        result["count"] = float(count)
        # Keep k6's order of keys (avg, min, med, max, p(N)…, count) for readable output.
        ordered_keys = [
            "avg",
            "min",
            "med",
            "max",
            *sorted((k for k in result if k.startswith("p(")), key=lambda k: fractions[k]),
            "count",
        ]
        return {key: result[key] for key in ordered_keys}

    def _chunks_for_sum(self, trend: Trend) -> Iterator[Iterable[array]]:
        # The sum does not need sorted data: read spilled runs back and take memory as it is.
        for offset, count, _, _ in trend.runs:
            yield self._read_run(offset, count)
        yield [trend.values]

    def _pick_ranks(self, trend: Trend, ranks: list[int]) -> dict[int, float]:
        """Values at the given (sorted, 0-based) ranks, by a k-way merge of the sorted runs."""
        merged = heapq.merge(*(itertools.chain.from_iterable(run) for run in self._sorted_runs(trend)))
        at: dict[int, float] = {}
        position = 0
        for rank in ranks:
            # islice consumes the skipped values without holding them.
            value = next(itertools.islice(merged, rank - position, None))
            at[rank] = value
            position = rank + 1
        return at


def _fsum(values: Callable[[], Iterable[float]]) -> float:
    """``math.fsum`` of the values the callable yields, or their plain sum (±inf) when that
    overflows: only values near the float64 limit get there."""
    try:
        return math.fsum(values())
    except OverflowError:
        return sum(values(), 0.0)
