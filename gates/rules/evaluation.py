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
    DEFAULT_TIME_FLOOR_MS,
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


def measured_value(
    results: ResultSet, selector: MetricSelector, aggregation: str
) -> tuple[float | None, Series | None, str]:
    """The value a rule reads: (value, its series, "") or (None, series or None, what is missing).
    The one lookup of the gate, for the rules, the A/B loop and calibration alike."""
    series, problem = _find_series(results, selector)
    if series is None:
        return None, None, problem
    problem = _kind_problem(series, aggregation)
    if problem:
        return None, series, problem
    _, _, percentile = parse_aggregation(aggregation)
    value, problem = _read_value(series, selector, aggregation, percentile)
    return value, series, problem


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


@dataclass(frozen=True)
class _Measured:
    """What a relative check measured before it decides: the numbers and how to word them."""

    rule: RelativeRule
    series: Series
    method: str
    observed: float
    base: float
    sign: float
    floor: float
    model: stats.NoiseModel | None
    p_value: float | None  # one-sided, in the worse direction; None without a noise model


def _floor(rule: RelativeRule, series: Series) -> float:
    """The rule's floor, or the default one: 1 ms for a time metric, nothing for others."""
    if rule.floor is not None:
        return rule.floor
    return DEFAULT_TIME_FLOOR_MS if series.unit == "ms" else 0.0


def _relative_outcome(rule: RelativeRule, verdict: Verdict, reason: str, **numbers) -> CheckOutcome:
    return _outcome(rule, "relative", verdict, str(rule.selector), rule.aggregation, reason, **numbers)


def _measure(
    rule: RelativeRule, results: ResultSet, baseline: BaselineValue | None
) -> _Measured | CheckOutcome:
    """The numbers of a relative check, or its outcome when it cannot compare (error, no baseline)."""
    metric = str(rule.selector)
    aggregation = rule.aggregation
    _, method, percentile = parse_aggregation(aggregation)
    series, problem = _find_series(results, rule.selector)
    if series is None:
        return _relative_outcome(rule, Verdict.ERROR, problem)
    problem = _kind_problem(series, aggregation)
    if problem:
        return _relative_outcome(rule, Verdict.ERROR, problem)
    observed, problem = _read_value(series, rule.selector, aggregation, percentile)
    if observed is None:
        return _relative_outcome(rule, Verdict.ERROR, problem)
    if baseline is None:
        return _relative_outcome(
            rule,
            Verdict.NO_BASELINE,
            f"no baseline yet for {metric} {aggregation}; absolute rules still decide",
            observed=observed,
        )
    base = float(baseline.value)
    if not math.isfinite(base):
        reason = f"the baseline's {aggregation} of {metric} is not a finite number"
        return _relative_outcome(rule, Verdict.ERROR, reason, observed=observed)
    run_values = tuple(float(v) for v in baseline.run_values)
    if not all(math.isfinite(v) for v in run_values):
        return _relative_outcome(
            rule,
            Verdict.ERROR,
            f"the baseline runs of {metric} {aggregation} include a value that is not a finite number",
            observed=observed,
            baseline=base,
        )
    direction = rule.direction
    if direction == "auto":
        direction = default_direction(rule.selector.name, series.kind, method)
    model = stats.noise_model(run_values)
    return _Measured(
        rule=rule,
        series=series,
        method=method,
        observed=observed,
        base=base,
        sign=1.0 if direction == "up" else -1.0,
        floor=_floor(rule, series),
        model=model,
        p_value=model.p_value(observed, direction) if model is not None else None,
    )


def _decide(m: _Measured, alpha: float, p_value: float | None, family: str = "") -> CheckOutcome:
    """History mode's decision. A check fails only when the change is both practically large (at
    least ``fail_pct`` and the floor) and beyond the run-to-run noise of the baseline's runs
    (``p_value`` < ``alpha``; with fewer than three runs there is no noise model and the threshold
    alone decides). Large but within the noise warns, and so does a change beyond the noise but
    under the threshold: neither passes silently, neither blocks. ``family`` is the Holm note."""
    rule, series, method = m.rule, m.series, m.method
    aggregation = rule.aggregation
    change = m.observed - m.base
    worsening = m.sign * change
    change_pct = change / abs(m.base) * 100.0 if m.base != 0 else None
    # The value at which the rule starts to fail: fail_pct of the baseline, never closer than the floor.
    limit = m.base + m.sign * max(abs(m.base) * rule.fail_pct / 100.0, m.floor)
    numbers = {
        "observed": m.observed,
        "baseline": m.base,
        "limit": limit,
        "change_pct": change_pct,
        "p_value": p_value,
    }

    def outcome(verdict, reason):
        return _relative_outcome(rule, verdict, reason, **numbers)

    now = _format_value(m.observed, series, method)
    then = _format_value(m.base, series, method)
    up = m.sign > 0
    worse_word = "above" if up else "below"
    fail_text = f"fail {worse_word} {'+' if up else '-'}{rule.fail_pct:g}%"
    warn_text = ""
    if rule.warn_pct is not None:
        warn_text = f"warn {worse_word} {'+' if up else '-'}{rule.warn_pct:g}%"

    if change == 0:
        return outcome(Verdict.PASS, f"{aggregation} {now} is unchanged from baseline {then}")
    side = "above" if change > 0 else "below"
    if m.base != 0:
        moved = f"{aggregation} {now} is {abs(change_pct):.1f}% {side} baseline {then}"
    else:
        moved = f"{aggregation} {now} is {side} baseline {then}"
    if worsening < 0:
        return outcome(Verdict.PASS, f"{moved}, an improvement")

    if m.model is None:
        noise_text = ""
        significant = None
    else:
        runs = f"{m.model.n} baseline runs"
        spread = f"run-to-run noise ±{m.model.cv * 100:.1f}%" if m.model.log else "run-to-run noise"
        significant = p_value is not None and p_value < alpha
        noise_text = (
            f"beyond the {spread} of the {runs} (p={p_value:.2g}{family})"
            if significant
            else f"within the {spread} of the {runs} (p={p_value:.2g}{family})"
        )
    if worsening < m.floor:
        floor = _format_floor(m.floor, series, method)
        if significant:
            return outcome(Verdict.WARN, f"{moved}, {noise_text} but within the {floor} floor")
        return outcome(Verdict.PASS, f"{moved}, within the {floor} floor")

    if m.base == 0:
        # No percentage of zero exists; a worsening beyond the floor is an infinite relative change.
        worsening_pct = math.inf
        moved += "; from a zero baseline any change beyond the floor counts as +inf%"
    else:
        worsening_pct = worsening / abs(m.base) * 100.0
    if worsening_pct >= rule.fail_pct:
        if significant is None:  # too few baseline runs for a noise model: the threshold decides
            return outcome(Verdict.FAIL, f"{moved} ({fail_text})")
        if significant:
            return outcome(Verdict.FAIL, f"{moved} ({fail_text}), {noise_text}")
        return outcome(Verdict.WARN, f"{moved} ({fail_text}) but {noise_text}: not blocked")
    if significant:
        return outcome(Verdict.WARN, f"{moved}, {noise_text}, under the threshold ({fail_text})")
    if rule.warn_pct is not None and worsening_pct >= rule.warn_pct:
        return outcome(Verdict.WARN, f"{moved} ({warn_text}, {fail_text})")
    suffix = f", {noise_text}" if noise_text else ""
    return outcome(Verdict.PASS, f"{moved} ({warn_text or fail_text}){suffix}")


def evaluate_relative(
    rule: RelativeRule,
    results: ResultSet,
    baseline: BaselineValue | None,
    *,
    alpha: float = stats.DEFAULT_FALSE_BLOCK_RATE,
) -> CheckOutcome:
    """Compare one aggregation with the baseline in history mode (see ``_decide``); ``alpha`` is
    the one-sided false-block rate. No baseline: ``no_baseline``; missing data: ``error``."""
    measured = _measure(rule, results, baseline)
    if isinstance(measured, CheckOutcome):
        return measured
    return _decide(measured, alpha, measured.p_value)


def evaluate_relatives(
    checks: list[tuple[RelativeRule, BaselineValue | None]],
    results: ResultSet,
    *,
    alpha: float = stats.DEFAULT_FALSE_BLOCK_RATE,
) -> list[CheckOutcome]:
    """Several relative checks of one validation, in order. The key checks share one false-block
    rate (Holm's step-down over their p-values); each info check is tested alone. When Holm made
    the difference, the check's reason says so and its ``p_value`` is the adjusted one."""
    measured = [_measure(rule, results, baseline) for rule, baseline in checks]
    family = [
        index
        for index, m in enumerate(measured)
        if isinstance(m, _Measured) and m.p_value is not None and m.rule.severity == Severity.KEY
    ]
    adjusted = dict(zip(family, stats.holm([measured[i].p_value for i in family]), strict=True))
    outcomes = []
    for index, m in enumerate(measured):
        if isinstance(m, CheckOutcome):
            outcomes.append(m)
            continue
        if index not in adjusted or len(family) == 1:
            outcomes.append(_decide(m, alpha, m.p_value))
            continue
        p_value = adjusted[index]
        note = ""
        if (m.p_value < alpha) != (p_value < alpha):
            note = f" after Holm over {len(family)} key checks; {m.p_value:.2g} alone"
        elif p_value != m.p_value:
            note = ", Holm-adjusted"
        outcomes.append(_decide(m, alpha, p_value, note))
    return outcomes


def evaluate_paired(rule: RelativeRule, results: ResultSet, check) -> CheckOutcome:
    """Gate-run mode: a relative rule decided on interleaved A/B repetitions (``check`` is the
    rule's ``gates.loadtest.ab.ABCheck``). ``fail`` when the interval of the change is wholly above
    the fail threshold, ``pass`` (``warn`` when the slowdown is certain but smaller) when wholly
    below, ``inconclusive`` when still undecided after the most pairs allowed."""
    metric = str(rule.selector)
    series, problem = _find_series(results, rule.selector)
    if series is None:
        return _relative_outcome(rule, Verdict.ERROR, problem)
    _, method, _ = parse_aggregation(rule.aggregation)
    now = _format_value(check.candidate, series, method)
    then = _format_value(check.reference, series, method)
    limit = check.reference * (1 + check.threshold_pct / 100)
    numbers = {
        "observed": check.candidate,
        "baseline": check.reference,
        "limit": limit if math.isfinite(limit) else None,
        "change_pct": check.estimate_pct,
        "p_value": check.p_value,
    }
    measured = f"{rule.aggregation} {now} against {then} on the reference: {check.describe()}"
    if check.verdict == "fail":
        return _relative_outcome(rule, Verdict.FAIL, f"{measured}, wholly above the threshold", **numbers)
    if check.verdict == "warn":
        return _relative_outcome(
            rule, Verdict.WARN, f"{measured}: a certain slowdown, but under the threshold", **numbers
        )
    if check.verdict == "pass":
        return _relative_outcome(rule, Verdict.PASS, f"{measured}, wholly below the threshold", **numbers)
    return _relative_outcome(
        rule,
        Verdict.INCONCLUSIVE,
        f"{measured}: still undecided when the A/B loop reached its limit for {metric}",
        **numbers,
    )


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
