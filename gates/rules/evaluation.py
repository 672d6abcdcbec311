"""Evaluation of rules against normalized results: absolute and relative checks, the load check,
and the verdict of a validation. Pure code.

Different from k6 on purpose in one way: missing data is never a pass. k6 skips a threshold
whose submetric saw no samples; here that is an ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from baselines import stats
from gates.results.base import (
    COUNTER,
    RATE,
    TREND,
    ResultSet,
    Series,
)
from gates.rules.grammar import (
    AGGREGATIONS_BY_KIND,
    AbsoluteRule,
    MetricSelector,
    RelativeRule,
    RuleSyntaxError,
    Severity,
    Verdict,
    check_aggregation,
    default_direction,
    format_number,
    parse_aggregation,
    percentile_of,
)


@dataclass(frozen=True)
class BaselineValue:
    """The baseline's number for one series and aggregation, and the per-run numbers it was
    built from (three or more allow a significance test)."""

    value: float
    run_values: tuple[float, ...] = ()


@dataclass(frozen=True)
class CheckOutcome:
    """The explained outcome of one check. Numbers are finite or ``None`` (never NaN or
    infinity), so the outcome serializes to strict JSON."""

    label: str
    kind: str
    severity: Severity
    verdict: Verdict
    metric: str
    aggregation: str
    observed: float | None
    baseline: float | None
    limit: float | None
    change_pct: float | None
    p_value: float | None
    reason: str


def _format_value(value: float, series: Series, method: str) -> str:
    """A measured number as a person reads it: "441.0 ms", "1.20%", "101.8/s", "6120"."""
    if series.kind == RATE:
        return f"{value * 100:.2f}%"
    if series.kind == COUNTER and method == "rate":
        return f"{value:.1f}/s"
    if series.unit == "ms":
        return f"{value:.1f} ms"
    text = _plain(value)
    return f"{text} {series.unit}" if series.unit else text


def _format_amount(value: float, series: Series, method: str) -> str:
    """A configured number (a limit, a floor) as written, in the series' unit: "400 ms", "1%"."""
    if series.kind == RATE:
        return f"{value * 100:.6g}%"
    if series.kind == COUNTER and method == "rate":
        return f"{format_number(value)}/s"
    return f"{format_number(value)} {series.unit}" if series.unit else format_number(value)


def _format_floor(floor: float, series: Series, method: str) -> str:
    if series.kind == RATE:
        return f"{floor * 100:.6g}-percentage-point"
    return _format_amount(floor, series, method)


def _plain(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _outcome(
    rule: AbsoluteRule | RelativeRule | None,
    kind: str,
    verdict: Verdict,
    metric: str,
    aggregation: str,
    reason: str,
    *,
    observed=None,
    baseline=None,
    limit=None,
    change_pct=None,
    p_value=None,
) -> CheckOutcome:
    # The load check has no configured rule: it is always key, because too little load makes
    # every other number meaningless.
    return CheckOutcome(
        label=rule.label if rule is not None else "minimum load",
        kind=kind,
        severity=Severity(rule.severity) if rule is not None else Severity.KEY,
        verdict=verdict,
        metric=metric,
        aggregation=aggregation,
        observed=observed,
        baseline=baseline,
        limit=limit,
        change_pct=change_pct,
        p_value=p_value,
        reason=reason,
    )


def _find_series(results: ResultSet, selector: MetricSelector) -> tuple[Series | None, str]:
    """The series a selector names, or None and what is wrong."""
    series = results.find(selector.name, selector.tags)
    if series is not None:
        return series, ""
    candidates = [
        s.key
        for s in results.series.values()
        if s.metric == selector.name and set(selector.tags) <= set(s.tags)
    ]
    if len(candidates) > 1:
        return None, (
            f"{selector} matches several series ({', '.join(sorted(candidates))}); "
            "add tags to the filter to pick one"
        )
    return None, f"{selector} is not in the results"


def _read_value(
    series: Series, selector: MetricSelector, aggregation: str, percentile: float | None
) -> tuple[float | None, str]:
    """The aggregation's value in a series, or None and what is missing."""
    if series.samples == 0:
        return None, f"{selector} has no samples"
    value = series.values.get(aggregation)
    if value is None and percentile is not None:
        # Parsers may spell a percentile p(95.0) or p(99.90); match by number, not by text.
        for key, candidate in series.values.items():
            if percentile_of(key) == percentile:
                value = candidate
                break
    if value is None:
        hint = " (add it to --summary-trend-stats)" if series.kind == TREND else ""
        return None, f"{aggregation} of {selector} is not in the results{hint}"
    if math.isnan(value):
        return None, f"{aggregation} of {selector} is NaN, not a number"
    if math.isinf(value):
        return None, f"{aggregation} of {selector} is infinite"
    return float(value), ""


def _kind_problem(series: Series, aggregation: str) -> str:
    if series.kind not in AGGREGATIONS_BY_KIND:
        return f"{series.key} has an unknown metric kind {series.kind!r}"
    try:
        check_aggregation(series.kind, aggregation)
    except RuleSyntaxError as exc:
        return f"{series.key}: {exc}"
    return ""


def _compare(observed: float, operator: str, limit: float) -> bool:
    # k6 compares floats directly; "==" and "===" are the same numeric equality.
    if operator == "<":
        return observed < limit
    if operator == "<=":
        return observed <= limit
    if operator == ">":
        return observed > limit
    if operator == ">=":
        return observed >= limit
    if operator in ("==", "==="):
        return observed == limit
    if operator == "!=":
        return observed != limit
    raise ValueError(f"unknown operator {operator!r}")


def evaluate_absolute(rule: AbsoluteRule, results: ResultSet) -> CheckOutcome:
    """Pass or fail one k6 threshold; ``error`` when the data it needs is missing."""
    threshold = rule.threshold
    metric = str(rule.selector)
    aggregation = threshold.aggregation

    def error(reason):
        return _outcome(rule, "absolute", Verdict.ERROR, metric, aggregation, reason, limit=threshold.limit)

    series, problem = _find_series(results, rule.selector)
    if series is None:
        return error(problem)
    problem = _kind_problem(series, aggregation)
    if problem:
        return error(problem)
    observed, problem = _read_value(series, rule.selector, aggregation, threshold.percentile)
    if observed is None:
        return error(problem)
    shown = _format_value(observed, series, threshold.method)
    expression = str(threshold)
    if _compare(observed, threshold.operator, threshold.limit):
        verb = "within" if threshold.operator in ("<", "<=") else "meets"
        reason = f"{aggregation} {shown} {verb} {expression}"
        return _outcome(
            rule,
            "absolute",
            Verdict.PASS,
            metric,
            aggregation,
            reason,
            observed=observed,
            limit=threshold.limit,
        )
    if observed > threshold.limit:
        relation = "is above"
    elif observed < threshold.limit:
        relation = "is below"
    else:
        relation = "equals"
    limit_shown = _format_amount(threshold.limit, series, threshold.method)
    reason = f"{aggregation} {shown} {relation} the limit {limit_shown} ({expression})"
    return _outcome(
        rule, "absolute", Verdict.FAIL, metric, aggregation, reason, observed=observed, limit=threshold.limit
    )


def evaluate_relative(
    rule: RelativeRule, results: ResultSet, baseline: BaselineValue | None, *, alpha: float = 0.05
) -> CheckOutcome:
    """Compare an aggregation with the baseline.

    A change blocks only when it is practically large (beyond the floor and at least
    ``fail_pct``) and, when the baseline has three or more runs, statistically significant
    (prediction-interval t test, p < ``alpha``); a large change within the noise of the
    baseline runs is ``inconclusive``. No baseline: ``no_baseline``.
    """
    metric = str(rule.selector)
    aggregation = rule.aggregation
    _, method, percentile = parse_aggregation(aggregation)

    def outcome(verdict, reason, **numbers):
        return _outcome(rule, "relative", verdict, metric, aggregation, reason, **numbers)

    series, problem = _find_series(results, rule.selector)
    if series is None:
        return outcome(Verdict.ERROR, problem)
    problem = _kind_problem(series, aggregation)
    if problem:
        return outcome(Verdict.ERROR, problem)
    observed, problem = _read_value(series, rule.selector, aggregation, percentile)
    if observed is None:
        return outcome(Verdict.ERROR, problem)
    if baseline is None:
        return outcome(
            Verdict.NO_BASELINE,
            f"no baseline yet for {metric} {aggregation}; absolute rules still decide",
            observed=observed,
        )
    base = float(baseline.value)
    if not math.isfinite(base):
        return outcome(
            Verdict.ERROR,
            f"the baseline's {aggregation} of {metric} is not a finite number",
            observed=observed,
        )
    run_values = tuple(float(v) for v in baseline.run_values)
    if not all(math.isfinite(v) for v in run_values):
        return outcome(
            Verdict.ERROR,
            f"the baseline runs of {metric} {aggregation} include a value that is not a finite number",
            observed=observed,
            baseline=base,
        )

    direction = rule.direction
    if direction == "auto":
        direction = default_direction(rule.selector.name, series.kind, method)
    sign = 1.0 if direction == "up" else -1.0
    change = observed - base
    worsening = sign * change
    change_pct = change / abs(base) * 100.0 if base != 0 else None
    # The value at which the rule starts to fail: fail_pct of the baseline, but never closer
    # than the floor (with a zero baseline only the floor is left).
    limit = base + sign * max(abs(base) * rule.fail_pct / 100.0, rule.floor)
    p_value = stats.prediction_p_value(observed, run_values)  # None below three runs
    numbers = {
        "observed": observed,
        "baseline": base,
        "limit": limit,
        "change_pct": change_pct,
        "p_value": p_value,
    }

    now = _format_value(observed, series, method)
    then = _format_value(base, series, method)
    worse_word = "above" if direction == "up" else "below"
    fail_text = f"fail {worse_word} {'+' if direction == 'up' else '-'}{rule.fail_pct:g}%"
    warn_text = (
        f"warn {worse_word} {'+' if direction == 'up' else '-'}{rule.warn_pct:g}%"
        if rule.warn_pct is not None
        else ""
    )

    if change == 0:
        return outcome(Verdict.PASS, f"{aggregation} {now} is unchanged from baseline {then}", **numbers)
    side = "above" if change > 0 else "below"
    if base != 0:
        moved = f"{aggregation} {now} is {abs(change_pct):.1f}% {side} baseline {then}"
    else:
        moved = f"{aggregation} {now} is {side} baseline {then}"
    if worsening < 0:
        return outcome(Verdict.PASS, f"{moved}, an improvement", **numbers)
    if worsening < rule.floor:
        floor = _format_floor(rule.floor, series, method)
        return outcome(Verdict.PASS, f"{moved}, within the {floor} floor", **numbers)

    if base == 0:
        # No percentage of zero exists; a worsening beyond the floor is an infinite relative change.
        worsening_pct = math.inf
        moved += "; from a zero baseline any change beyond the floor counts as +inf%"
    else:
        worsening_pct = worsening / abs(base) * 100.0
    if worsening_pct >= rule.fail_pct:
        if p_value is not None and p_value >= alpha:
            return outcome(
                Verdict.INCONCLUSIVE,
                f"{moved} ({fail_text}) but within the noise of the {len(run_values)} baseline "
                f"runs (p={p_value:.2g})",
                **numbers,
            )
        return outcome(Verdict.FAIL, f"{moved} ({fail_text})", **numbers)
    if rule.warn_pct is not None and worsening_pct >= rule.warn_pct:
        return outcome(Verdict.WARN, f"{moved} ({warn_text}, {fail_text})", **numbers)
    return outcome(Verdict.PASS, f"{moved} ({warn_text or fail_text})", **numbers)


def evaluate_load(results: ResultSet, min_requests: int) -> CheckOutcome:
    """``error`` ("insufficient load") when the run made fewer requests than the scenario's
    minimum, or when the request count is unknown; otherwise ``pass``. The reason says whether
    the count left a warm-up out ("6120 requests measured (warm-up of 10 s, 850 requests,
    excluded)") or, when the tool could not separate it, took it in."""
    count = results.request_count
    limit = float(min_requests)
    counted = f"{count} requests"
    if results.warmup is not None:
        counted += f" measured ({results.warmup.describe()})"

    def outcome(verdict, reason, observed=None):
        return _outcome(None, "load", verdict, "http_reqs", "count", reason, observed=observed, limit=limit)

    if count is None:
        return outcome(Verdict.ERROR, "request count unknown: the results have no http_reqs count")
    if count < min_requests:
        return outcome(
            Verdict.ERROR,
            f"insufficient load: {counted}, the scenario needs at least {min_requests}",
            observed=float(count),
        )
    if count == 0:
        reason = "insufficient load: the run made no requests"
        if results.warmup is not None:
            reason += f" after its warm-up ({results.warmup.describe()})"
        return outcome(Verdict.ERROR, reason, observed=0.0)
    return outcome(Verdict.PASS, f"{counted}, at least {min_requests} needed", observed=float(count))


def aggregate_verdict(outcomes: Iterable[CheckOutcome]) -> Verdict:
    """The validation's verdict: any key fail → fail; else any key error → error; else any key
    inconclusive → inconclusive; else any warn or no_baseline, or an info-level fail, error
    or inconclusive → warn; else pass. Nothing checked is an error, never a pass."""
    outcomes = list(outcomes)
    if not outcomes:
        return Verdict.ERROR
    key = [o.verdict for o in outcomes if o.severity == Severity.KEY]
    for verdict in (Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE):
        if verdict in key:
            return verdict
    warning = (Verdict.WARN, Verdict.NO_BASELINE, Verdict.FAIL, Verdict.ERROR, Verdict.INCONCLUSIVE)
    if any(o.verdict in warning for o in outcomes):
        return Verdict.WARN
    return Verdict.PASS
