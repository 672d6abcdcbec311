"""The k6 threshold grammar, and the rule specs built from it.

Pure code: no Django, no I/O.

The grammar mirrors k6 v1.x (``metrics/thresholds_parser.go``, ``metrics/metric.go``
``ParseMetricName`` and ``Metric.AddSubmetric``, ``metrics/registry.go`` ``checkName``),
checked against the k6 binary itself. An expression k6 rejects is rejected here too, because
request thresholds may be handed to k6 verbatim. Where k6 is lenient we are stricter, and say
so where it happens: a gate must not quietly accept a rule that can never mean anything.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import EnumType, StrEnum

from gates.results.base import (
    COUNTER,
    GAUGE,
    METRIC_KINDS,
    RATE,
    TREND,
    Tags,
    normalize_tags,
    series_key,
)
from gates.results.common import BUILTIN_METRICS


class RuleSyntaxError(ValueError):
    """A metric, threshold or rule that cannot be used. The message says what is wrong and
    what is expected; it is shown to ops in the admin and to CI in API errors."""


class _ChoicesType(EnumType):
    """Django's ``TextChoices`` class attributes (``choices``, ``values``, ``labels``, ``names``) on a
    plain enum: the models build their fields' choices from the enums defined here, once, and this
    module still imports no Django."""

    @property
    def choices(cls) -> list[tuple[str, str]]:
        return [(member.value, member.label) for member in cls]

    @property
    def values(cls) -> list[str]:
        return [member.value for member in cls]

    @property
    def labels(cls) -> list[str]:
        return [member.label for member in cls]

    @property
    def names(cls) -> list[str]:
        return [member.name for member in cls]


class Choices(StrEnum, metaclass=_ChoicesType):
    """A string enum whose members may carry a label, as Django's ``TextChoices`` do:
    ``NO_BASELINE = "no_baseline", "no baseline"``. Without one the label is the name in words
    ("Pass"), Django's default, so the models' choices (and their migrations) stay as they were."""

    def __new__(cls, value: str, label: str | None = None):
        member = str.__new__(cls, value)
        member._value_ = value
        member._label = label
        return member

    @property
    def label(self) -> str:
        return self._label or self.name.replace("_", " ").title()


class Verdict(Choices):
    """The outcome of one check, and of a validation (the worst of its checks)."""

    PASS = "pass"  # noqa: S105 -- a verdict, not a password
    WARN = "warn"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    NO_BASELINE = "no_baseline", "no baseline"
    ERROR = "error"


class Severity(Choices):
    """What a failing rule may do: a ``key`` rule can block, an ``info`` rule can only warn."""

    KEY = "key", "key (can block)"
    INFO = "info", "info (can only warn)"


# k6's built-in metrics (metrics/builtin.go and the browser/gRPC/WebSocket modules) and their kinds.
KNOWN_METRICS: dict[str, str] = {name: kind for name, (kind, _) in BUILTIN_METRICS.items()}

# Which aggregation methods each kind accepts (k6's MetricType.supportedAggregationMethods).
AGGREGATIONS_BY_KIND: dict[str, tuple[str, ...]] = {
    TREND: ("avg", "min", "max", "med", "p"),
    COUNTER: ("count", "rate"),
    RATE: ("rate",),
    GAUGE: ("value",),
}
_AGGREGATION_HINTS = {
    TREND: "avg, min, max, med or p(N)",
    COUNTER: "count or rate",
    RATE: "rate",
    GAUGE: "value",
}
METHODS = ("value", "count", "rate", "avg", "min", "med", "max", "p")
OPERATORS = ("<", "<=", ">", ">=", "==", "===", "!=")
DIRECTIONS = ("up", "down", "auto")

# Go's strings.TrimSpace trims unicode.IsSpace; Python's str.strip() trims a few more
# characters (\x1c-\x1f), so spell Go's set out.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# k6 v1.x registry.go: "^[a-zA-Z_][a-zA-Z0-9_]{1,128}$". Note the {1,128}: k6 refuses
# one-character names and accepts 129 characters although its message says "up to 128".
# Mirrored exactly, because a metric k6 cannot create can never appear in its results.
_METRIC_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]{1,128}")

# Go strconv.ParseFloat syntax: decimal with optional exponent, hexadecimal with a mandatory
# p exponent, underscores only between digits (or right after 0x), inf/infinity (signed)
# and nan (unsigned). Explicit [0-9]: Python's \d also matches non-ASCII digits.
_DEC_DIGITS = r"[0-9](?:_?[0-9])*"
_HEX_DIGITS = r"[0-9a-fA-F](?:_?[0-9a-fA-F])*"
_GO_DECIMAL = re.compile(
    rf"[+-]?(?:{_DEC_DIGITS}(?:\.(?:{_DEC_DIGITS})?)?|\.{_DEC_DIGITS})(?:[eE][+-]?{_DEC_DIGITS})?"
)
_GO_HEX = re.compile(
    rf"[+-]?0[xX](?:_?{_HEX_DIGITS}(?:\.(?:{_HEX_DIGITS})?)?|\.{_HEX_DIGITS})[pP][+-]?{_DEC_DIGITS}"
)
_GO_INF = re.compile(r"[+-]?(?:inf|infinity)", re.IGNORECASE)
_GO_NAN = re.compile(r"nan", re.IGNORECASE)
# A number followed by a unit, to explain the most common mistake: p(95)<400ms.
_NUMBER_WITH_UNIT = re.compile(r"([+-]?[0-9._]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Zµ%]+)")
_OPERATOR_RUN = re.compile(r"[<>=!]+")


def parse_go_float(text: str) -> float:
    """The float Go's ``strconv.ParseFloat(text, 64)`` returns, or ValueError with Go's reason
    ("invalid syntax" or "value out of range")."""
    if _GO_DECIMAL.fullmatch(text):
        value = float(text.replace("_", ""))
        if math.isinf(value):
            raise ValueError("value out of range")
        return value
    if _GO_HEX.fullmatch(text):
        try:
            return float.fromhex(text.replace("_", ""))
        except OverflowError:
            raise ValueError("value out of range") from None
    if _GO_INF.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _GO_NAN.fullmatch(text):
        return math.nan
    raise ValueError("invalid syntax")


def format_number(value: float) -> str:
    """The shortest spelling of ``value`` that reads back to the same float, without a
    trailing ``.0``: 400.0 → "400", 0.01 → "0.01", 1e16 → "1e+16" (Go parses all of these)."""
    text = repr(float(value) + 0.0)  # + 0.0 turns -0.0 into 0.0
    return text[:-2] if text.endswith(".0") else text


def _go_percentile_key(percentile: float) -> str:
    # k6 names a percentile fmt.Sprintf("p(%g)"): Go's shortest %g. For 0 <= N <= 100 that is
    # Python's repr without ".0" (both switch to an exponent below 1e-4), and it equals
    # f"p({N:g})" whenever N has at most six significant digits.
    return f"p({format_number(percentile)})"


@dataclass(frozen=True)
class MetricSelector:
    """A metric, optionally filtered by tags: ``http_req_duration{name:rsvp}``."""

    name: str
    tags: Tags = ()

    def __post_init__(self):
        object.__setattr__(self, "tags", normalize_tags(self.tags))

    def __str__(self) -> str:
        return series_key(self.name, self.tags)


@dataclass(frozen=True)
class ThresholdExpression:
    """One parsed k6 threshold: ``aggregation operator limit``, e.g. ``p(95)<400``.

    ``aggregation`` is the canonical spelling (``p(95)``, never ``p(95.0)``), the key under
    which the value is looked up; ``source`` is the text as written and takes no part in
    equality, so two spellings of the same threshold compare equal.
    """

    aggregation: str
    method: str
    percentile: float | None
    operator: str
    limit: float
    source: str = field(default="", compare=False)

    def __str__(self) -> str:
        return f"{self.aggregation}{self.operator}{format_number(self.limit)}"


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RuleSyntaxError(f"{what} must be text, got {type(value).__name__}")
    return value


def _check_metric_name(name: str, text: str) -> None:
    if not name:
        raise RuleSyntaxError(
            f"metric name is missing in {text!r}; write a k6 metric name such as http_req_duration, "
            "optionally with tag filters: http_req_duration{name:rsvp}"
        )
    if not _METRIC_NAME.fullmatch(name):
        raise RuleSyntaxError(
            f"metric name {name!r} is not a valid k6 metric name; k6 names start with a letter or an "
            "underscore and have 2 to 129 ASCII letters, digits or underscores (no spaces)"
        )


def parse_selector(text: str) -> MetricSelector:
    """Parse ``metric`` or ``metric{tag:value,tag2:value2}`` the way k6 does.

    Like k6, the tag filter runs from the first ``{`` to the last ``}`` (so a value may hold
    braces, as the ``name`` tag of ``http.url`` requests does: ``posts/${}``), it is split on
    commas and each part at its first colon (``group:::setup`` is the group ``::setup``), and
    keys and values are trimmed of spaces and then of quote characters.

    Stricter than k6, which accepts these and then silently matches nothing, or something
    else: an empty value (``name:`` after trimming, ``name:""``), an empty key, a key with a
    brace, the same key twice, and a quoted value with spaces at its ends. Spaces around the
    whole text are trimmed (k6 would look for a metric named " http_reqs").
    """
    raw = _text(text, "metric").strip(_GO_SPACE)
    if not raw:
        raise RuleSyntaxError(
            "metric is empty; write a k6 metric name such as http_req_duration, optionally with tag "
            "filters: http_req_duration{name:rsvp}"
        )
    opening = raw.find("{")
    closing = raw.rfind("}")
    if opening == -1 and closing == -1:
        _check_metric_name(raw, raw)
        return MetricSelector(raw, ())
    if closing == -1:
        raise RuleSyntaxError(f"metric {raw!r} has a '{{' without a closing '}}'")
    if opening == -1:
        raise RuleSyntaxError(f"metric {raw!r} has a '}}' without an opening '{{'")
    if closing < opening:
        raise RuleSyntaxError(f"metric {raw!r} has its closing '}}' before the opening '{{'")
    if closing != len(raw) - 1:
        raise RuleSyntaxError(
            f"metric {raw!r} has text {raw[closing + 1 :]!r} after the closing '}}'; the tag filter "
            "must end the metric, as in http_req_duration{name:rsvp}"
        )
    name = raw[:opening]
    _check_metric_name(name, raw)
    content = raw[opening + 1 : closing]
    if not content.strip(_GO_SPACE):
        raise RuleSyntaxError(
            f"metric {raw!r} has an empty tag filter; write {name}{{tag:value}} or leave out the braces"
        )
    tags: dict[str, str] = {}
    for part in content.split(","):
        if not part.strip(_GO_SPACE):
            raise RuleSyntaxError(
                f"metric {raw!r} has an empty tag filter between commas; separate tag:value pairs "
                "with single commas"
            )
        key_text, colon, value_text = part.partition(":")
        if not colon:
            raise RuleSyntaxError(
                f"metric {raw!r}: the tag filter {part.strip(_GO_SPACE)!r} has no value; "
                "write it as tag:value"
            )
        key = key_text.strip(_GO_SPACE).strip("\"'")
        value = value_text.strip(_GO_SPACE).strip("\"'")
        if not key:
            raise RuleSyntaxError(f"metric {raw!r}: the tag filter {part.strip(_GO_SPACE)!r} has no tag name")
        if "{" in key or "}" in key:
            raise RuleSyntaxError(f"metric {raw!r}: the tag name {key!r} contains a brace")
        if not value:
            raise RuleSyntaxError(
                f"metric {raw!r}: the tag {key!r} has an empty value; write {key}:value (an empty value "
                "would only match samples without that tag)"
            )
        if value != value.strip(_GO_SPACE) or key != key.strip(_GO_SPACE):
            raise RuleSyntaxError(
                f"metric {raw!r}: the tag {key!r} has spaces at the ends of a quoted name or value"
            )
        if key in tags:
            raise RuleSyntaxError(f"metric {raw!r} filters the tag {key!r} twice; give each tag once")
        tags[key] = value
    return MetricSelector(name, normalize_tags(tags))


def parse_aggregation(text: str) -> tuple[str, str, float | None]:
    """``(canonical aggregation, method, percentile)`` of an aggregation such as ``avg`` or
    ``p(99.9)``. Like k6, the method names are lower case and ``p(N)`` takes no spaces
    inside. Stricter than k6, which takes any float: 0 <= N <= 100."""
    raw = _text(text, "aggregation").strip(_GO_SPACE)
    expected = (
        "use avg, min, max, med or p(N) for trends, count or rate for counters, rate for rates, "
        "value for gauges"
    )
    if not raw:
        raise RuleSyntaxError(f"aggregation is missing; {expected}")
    if raw in METHODS and raw != "p":
        return raw, raw, None
    if raw.startswith("p(") and raw.endswith(")"):
        inner = raw[2:-1]
        if not inner:
            raise RuleSyntaxError(
                "aggregation 'p()' has no percentile; write one between 0 and 100, like p(95)"
            )
        if inner != inner.strip(_GO_SPACE):
            raise RuleSyntaxError(
                f"aggregation {raw!r}: k6 takes no spaces inside the parentheses; write p({inner.strip()})"
            )
        try:
            percentile = parse_go_float(inner)
        except ValueError:
            raise RuleSyntaxError(
                f"aggregation {raw!r}: {inner!r} is not a number; write a percentile between 0 and 100 "
                "without spaces, like p(95) or p(99.9)"
            ) from None
        if not 0.0 <= percentile <= 100.0:
            raise RuleSyntaxError(
                f"aggregation {raw!r}: the percentile must be between 0 and 100, like p(95) or p(99.9)"
            )
        percentile += 0.0  # -0.0 → 0.0, so p(-0) and p(0) look up the same key
        return _go_percentile_key(percentile), "p", percentile
    if raw.lower() in METHODS and raw.lower() != "p":
        raise RuleSyntaxError(f"aggregation {raw!r} is not known; aggregations are lower case: {raw.lower()}")
    if re.fullmatch(r"[pP][0-9.]+", raw):
        raise RuleSyntaxError(
            f"aggregation {raw!r} is not known; write percentiles as p(N), like p({raw[1:]})"
        )
    if raw.startswith("p(") or raw.startswith("P("):
        raise RuleSyntaxError(
            f"aggregation {raw!r} is not a percentile; write p(N) with a number between 0 and 100, like p(95)"
        )
    raise RuleSyntaxError(f"aggregation {raw!r} is not known; {expected}")


def percentile_of(aggregation: str) -> float | None:
    """The N of a ``p(N)`` aggregation; ``None`` for any other aggregation, valid or not."""
    try:
        _, method, percentile = parse_aggregation(aggregation)
    except RuleSyntaxError:
        return None
    return percentile if method == "p" else None


def _parse_limit(text: str, operator: str) -> float:
    if not text:
        raise RuleSyntaxError(
            f"the limit after {operator!r} is missing; write a plain number, like p(95){operator}400"
        )
    try:
        limit = parse_go_float(text)
    except ValueError as exc:
        with_unit = _NUMBER_WITH_UNIT.fullmatch(text)
        if with_unit and with_unit.group(2) == "%":
            raise RuleSyntaxError(
                f"the limit {text!r} is not a plain number; k6 rates are fractions, so 1% is written 0.01"
            ) from None
        if with_unit:
            raise RuleSyntaxError(
                f"the limit {text!r} is not a plain number; k6 thresholds take numbers in the metric's "
                "unit (ms for time)"
            ) from None
        if str(exc) == "value out of range":
            raise RuleSyntaxError(f"the limit {text!r} is out of range for a number") from None
        raise RuleSyntaxError(
            f"the limit {text!r} is not a number; write a plain number, like 400 or 0.01"
        ) from None
    # k6 accepts NaN and ±Inf; a threshold that is always or never met checks nothing.
    if not math.isfinite(limit):
        raise RuleSyntaxError(f"the limit {text!r} is not a finite number; write a plain number, like 400")
    return limit + 0.0


def parse_threshold(text: str) -> ThresholdExpression:
    """Parse a k6 threshold expression such as ``p(95)<400``, ``rate<0.01`` or ``count>=300``.

    k6 splits the text at the first of ``<=``, ``<``, ``>=``, ``>``, ``===``, ``==``, ``!=``
    it finds, in that order, then trims both sides. Every text k6 accepts has exactly one
    run of operator characters and it is one of those tokens (neither an aggregation nor a
    number contains ``<>=!``), so finding that run gives the same results in any scanning
    order and lets the error name the operator that is wrong (``=<``, ``=``, ``<>``).
    Whitespace around the operator is allowed, as in k6; inside ``p( 95 )`` it is not.

    Limits are parsed as Go's ``strconv.ParseFloat`` does (``1e3``, ``.5``, ``1_000`` and
    hex floats are numbers; ``400ms`` is not). Stricter than k6: NaN and infinite limits
    and percentiles outside 0..100 are rejected.
    """
    source = _text(text, "threshold")
    raw = source.strip(_GO_SPACE)
    if not raw:
        raise RuleSyntaxError(
            "threshold is empty; write an aggregation, an operator and a number, like p(95)<400 or rate<0.01"
        )
    runs = list(_OPERATOR_RUN.finditer(raw))
    tokens = "<, <=, >, >=, ==, === or !="
    if not runs:
        raise RuleSyntaxError(f"threshold {raw!r} has no comparison operator; use {tokens}, as in p(95)<400")
    if len(runs) > 1:
        found = ", ".join(repr(run.group()) for run in runs)
        raise RuleSyntaxError(
            f"threshold {raw!r} has more than one operator ({found}); use exactly one of {tokens}"
        )
    run = runs[0]
    operator = run.group()
    if operator not in OPERATORS:
        hint = {
            "=<": " (did you mean <=?)",
            "=>": " (did you mean >=?)",
            "=": " (equality is ==)",
            "<>": " (inequality is !=)",
        }.get(operator, "")
        raise RuleSyntaxError(f"threshold {raw!r}: {operator!r} is not an operator{hint}; use {tokens}")
    left = raw[: run.start()].strip(_GO_SPACE)
    right = raw[run.end() :].strip(_GO_SPACE)
    if not left:
        raise RuleSyntaxError(
            f"threshold {raw!r} has no aggregation before {operator!r}; use avg, min, max, med, p(N), "
            "count, rate or value, as in p(95)<400"
        )
    aggregation, method, percentile = parse_aggregation(left)
    limit = _parse_limit(right, operator)
    return ThresholdExpression(aggregation, method, percentile, operator, limit, source)


def check_aggregation(kind: str, threshold: ThresholdExpression | str) -> None:
    """Raise RuleSyntaxError unless metrics of ``kind`` offer the threshold's aggregation."""
    if kind not in AGGREGATIONS_BY_KIND:
        raise RuleSyntaxError(f"metric kind {kind!r} is not known; kinds are {', '.join(METRIC_KINDS)}")
    if isinstance(threshold, ThresholdExpression):
        aggregation, method = threshold.aggregation, threshold.method
    else:
        aggregation, method, _ = parse_aggregation(threshold)
    if method not in AGGREGATIONS_BY_KIND[kind]:
        shown = "p(N)" if method == "p" else aggregation
        raise RuleSyntaxError(
            f"aggregation {shown!r} is not valid for a {kind} metric; use {_AGGREGATION_HINTS[kind]}"
        )


def _resolve_kind(selector: MetricSelector, kind: str | None) -> str | None:
    builtin = KNOWN_METRICS.get(selector.name)
    if kind is None:
        return builtin
    if kind not in AGGREGATIONS_BY_KIND:
        raise RuleSyntaxError(f"metric kind {kind!r} is not known; kinds are {', '.join(METRIC_KINDS)}")
    if builtin is not None and builtin != kind:
        raise RuleSyntaxError(f"{selector.name} is a k6 {builtin} metric, not a {kind}")
    return kind


def validate_absolute_rule(
    metric_text: str, threshold_text: str, kind: str | None = None
) -> tuple[MetricSelector, ThresholdExpression]:
    """Parse and check one absolute rule. ``kind`` defaults to the kind of a k6 built-in
    metric; a custom metric of unknown kind is checked for grammar only."""
    selector = parse_selector(metric_text)
    expression = parse_threshold(threshold_text)
    resolved = _resolve_kind(selector, kind)
    if resolved is not None:
        try:
            check_aggregation(resolved, expression)
        except RuleSyntaxError as exc:
            raise RuleSyntaxError(f"{selector.name} is a {resolved} metric: {exc}") from None
    return selector, expression


@dataclass(frozen=True)
class AbsoluteRule:
    """A k6 threshold on one (sub)metric. ``key`` rules can block, ``info`` rules only warn."""

    label: str
    selector: MetricSelector
    threshold: ThresholdExpression
    severity: Severity = Severity.KEY


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# A relative rule's floor when it gives none and its metric is a time: changes under 1 ms are not
# worth a block, whatever their percentage.
DEFAULT_TIME_FLOOR_MS = 1.0


@dataclass(frozen=True)
class RelativeRule:
    """An aggregation compared with the baseline.

    ``direction`` says which change is worse: ``up`` (latency, errors), ``down``
    (throughput), or ``auto`` to decide by the metric when evaluating. A change is ignored
    below ``floor`` (in the metric's unit; ``None``: :data:`DEFAULT_TIME_FLOOR_MS` for a time
    metric, 0 for others), warns from ``warn_pct`` and fails from ``fail_pct`` percent of the
    baseline. The aggregation is stored in its canonical spelling.
    """

    label: str
    selector: MetricSelector
    aggregation: str
    warn_pct: float | None
    fail_pct: float
    floor: float | None = None
    direction: str = "auto"
    severity: Severity = Severity.KEY

    def __post_init__(self):
        canonical, _, _ = parse_aggregation(self.aggregation)
        object.__setattr__(self, "aggregation", canonical)
        if self.direction not in DIRECTIONS:
            raise RuleSyntaxError(f"direction {self.direction!r} is not known; use up, down or auto")
        # 0 is allowed: fail_pct 0 with a floor fails on any worsening beyond the floor.
        if not _is_number(self.fail_pct) or self.fail_pct < 0:
            raise RuleSyntaxError(
                f"fail_pct must be zero or a positive number of percent, got {self.fail_pct!r}"
            )
        if self.warn_pct is not None:
            if not _is_number(self.warn_pct) or self.warn_pct < 0:
                raise RuleSyntaxError(
                    f"warn_pct must be zero or a positive number of percent, got {self.warn_pct!r}"
                )
            if self.warn_pct > self.fail_pct:
                raise RuleSyntaxError(
                    f"warn_pct ({self.warn_pct:g}) must not be larger than fail_pct ({self.fail_pct:g})"
                )
        if self.floor is not None and (not _is_number(self.floor) or self.floor < 0):
            raise RuleSyntaxError(f"floor must be zero or a positive number, got {self.floor!r}")


def rule_from_fields(
    *,
    label: str,
    kind: str,
    metric: str,
    threshold: str = "",
    aggregation: str = "",
    warn_pct: float | None = None,
    fail_pct: float | None = None,
    floor: float | None = None,
    direction: str = "auto",
    severity: str = Severity.KEY,
) -> AbsoluteRule | RelativeRule:
    """The pure rule for a configured row (``kind`` "absolute" or "relative"). Raises
    RuleSyntaxError for anything invalid, with a message fit for the admin form."""
    try:
        severity = Severity(severity)
    except ValueError:
        raise RuleSyntaxError(f"severity {severity!r} is not known; use key or info") from None
    if kind == "absolute":
        selector, expression = validate_absolute_rule(metric, threshold)
        return AbsoluteRule(label=label, selector=selector, threshold=expression, severity=severity)
    if kind != "relative":
        raise RuleSyntaxError(f"rule kind {kind!r} is not known; use absolute or relative")
    selector = parse_selector(metric)
    builtin = KNOWN_METRICS.get(selector.name)
    if builtin is not None:
        try:
            check_aggregation(builtin, aggregation)
        except RuleSyntaxError as exc:
            raise RuleSyntaxError(f"{selector.name} is a {builtin} metric: {exc}") from None
    if fail_pct is None:
        raise RuleSyntaxError("fail_pct is required for a relative rule (the change in % that fails it)")
    return RelativeRule(
        label=label,
        selector=selector,
        aggregation=aggregation,
        warn_pct=None if warn_pct is None else _number(warn_pct, "warn_pct"),
        fail_pct=_number(fail_pct, "fail_pct"),
        floor=None if floor is None else _number(floor, "floor"),
        direction=direction,
        severity=severity,
    )


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RuleSyntaxError(f"{name} must be a number, got {value!r}") from None


def default_direction(metric: str, kind: str, aggregation: str) -> str:
    """Which change of ``aggregation`` of ``metric`` is worse: "up" or "down".

    Latency trends and error rates (http_req_failed, rates named *_failed or *_errors) get
    worse going up; throughput (a counter's count or rate: http_reqs, iterations) and the
    share of passing ``checks`` get worse going down. Counters of bad things
    (dropped_iterations, *_errors, *_failed) get worse going up. Anything else: up.
    """
    name = metric.split("{", 1)[0]
    bad_thing = name.endswith(("_failed", "_errors", "_failures")) or name == "dropped_iterations"
    if kind == RATE:
        if name == "checks":
            return "down"
        return "up"
    if kind == COUNTER and aggregation in ("count", "rate"):
        return "up" if bad_thing else "down"
    return "up"
