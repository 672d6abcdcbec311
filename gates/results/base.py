"""The normalized shape every results parser produces, and the one error they raise.

Pure code: no Django imports, so parsers and their tests stay fast.

Every tool's output is mapped onto k6's metric vocabulary so that one rule
(``http_req_duration{name:rsvp}: p(95)<400``) reads the same whichever tool ran:
request latency is ``http_req_duration`` (trend, ms), request volume ``http_reqs``
(counter) and the failure ratio ``http_req_failed`` (rate).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

TREND = "trend"
COUNTER = "counter"
RATE = "rate"
GAUGE = "gauge"
METRIC_KINDS = (TREND, COUNTER, RATE, GAUGE)

Tags = tuple[tuple[str, str], ...]


class ParseError(ValueError):
    """Input that a parser cannot read. The message names the file, the line or field, and
    what was expected, so that a CI log alone tells the user what to fix."""

    def __init__(
        self, message: str, *, source: str | None = None, line: int | None = None, field: str | None = None
    ):
        self.message = message
        self.source = source
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [self.source or "<results>"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return f"{': '.join(where)}: {self.message}"


def normalize_tags(tags: dict[str, str] | Tags | None) -> Tags:
    """Tags as a sorted tuple of (key, value) string pairs: hashable and order-independent."""
    if not tags:
        return ()
    items = tags.items() if isinstance(tags, dict) else tags
    return tuple(sorted((str(k), str(v)) for k, v in items))


def series_key(metric: str, tags: Tags = ()) -> str:
    """Canonical name of a (sub)metric, in k6's own spelling: ``http_req_duration{name:rsvp}``."""
    if not tags:
        return metric
    return metric + "{" + ",".join(f"{k}:{v}" for k, v in tags) + "}"


@dataclass(frozen=True)
class Observation:
    """One normalized number: the row every parser's output flattens to."""

    metric: str
    kind: str
    aggregation: str
    value: float
    unit: str
    tags: Tags = ()


@dataclass
class Series:
    """All aggregations of one metric or tag-filtered submetric.

    ``samples`` is how many points the numbers summarise (``None`` when the format
    does not say). Zero samples means the series exists but has no data: never a pass.
    """

    metric: str
    kind: str
    unit: str
    tags: Tags = ()
    samples: int | None = None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return series_key(self.metric, self.tags)

    def observations(self) -> Iterator[Observation]:
        for aggregation, value in self.values.items():
            yield Observation(self.metric, self.kind, aggregation, value, self.unit, self.tags)


@dataclass
class Warmup:
    """The ramp-up before measuring: how long it ran, how many requests it made (``None`` when
    the tool does not say), and whether its samples were left out of the numbers.

    A parser can only see the warm-up's samples, which start after the ramp's first VU does; the
    runner that scheduled the warm-up sets ``seconds`` to its real length."""

    seconds: float
    requests: int | None
    excluded: bool

    def describe(self) -> str:
        """``warm-up of 10 s, 850 requests, excluded``."""
        parts = [f"warm-up of {round(self.seconds, 1):g} s"]
        if self.requests is not None:
            parts.append(f"{self.requests} requests")
        return ", ".join(parts) + (", excluded" if self.excluded else ", included")


@dataclass
class ResultSet:
    """What one load test produced, whatever the tool: series keyed by canonical name."""

    tool: str
    format: str
    series: dict[str, Series] = field(default_factory=dict)
    duration_seconds: float | None = None
    # The warm-up, when the run had one; ``None`` when it had none or the file does not say.
    warmup: Warmup | None = None
    # What the tool itself concluded about the thresholds it knew, {series key: {expression: ok}}.
    # Informational only: the gate recomputes its own verdict.
    tool_thresholds: dict[str, dict[str, bool]] = field(default_factory=dict)

    def add(self, series: Series) -> Series:
        self.series[series.key] = series
        return series

    def find(self, metric: str, tags: Tags = ()) -> Series | None:
        """The series for ``metric`` filtered by ``tags``.

        An exact match wins; otherwise the only series of that metric whose tags include the
        filter (Locust rows carry both name and method). Several candidates: ``None``,
        because picking one would be a guess.
        """
        tags = normalize_tags(tags)
        exact = self.series.get(series_key(metric, tags))
        if exact is not None:
            return exact
        if not tags:
            return None
        wanted = set(tags)
        candidates = [s for s in self.series.values() if s.metric == metric and wanted <= set(s.tags)]
        return candidates[0] if len(candidates) == 1 else None

    @property
    def request_count(self) -> int | None:
        """Total HTTP requests of the run, from ``http_reqs`` (``None`` when absent)."""
        reqs = self.series.get("http_reqs")
        if reqs is None or "count" not in reqs.values:
            return None
        return int(reqs.values["count"])

    def observations(self) -> Iterator[Observation]:
        for series in self.series.values():
            yield from series.observations()
