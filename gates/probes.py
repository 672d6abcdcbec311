"""Production probes: a short, gentle run of a probe scenario against a live deployment, judged
by the decision code of a history-mode validation. Writes nothing; the watch that runs probes
records them.

A probe is the scenario's own k6 script with its load capped (:func:`probe_limits`), because
this is production. Its target is checked like a validation's (the project's allowlist plus the
hosts allowed for this deployment only, resolved and pinned, listening). It is judged by the
same functions as a validation: the load check, the absolute rules, and the relative rules
against a *probe baseline* (the same probe scenario's values on the previous healthy production
deployment, built with :func:`baseline_from`), never against the pre-deployment validations,
which ran a different load.

Anything that keeps a probe from producing numbers (a target refused or unreachable, k6 missing
or timed out, no samples, unreadable output, a stop) is an ``error`` outcome, never a
``failure``: errors notify humans, only failures may roll a deployment back. Such a probe never
raises; its ``reason`` says what happened.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from gates import plans, rules
from gates.documents import report_of
from gates.execution import (
    UNREACHABLE_SERIES,
    RunFailed,
    _checked_target,
    _last_line,
    address_pins,
    check_connected,
)
from gates.loadtest.k6 import K6NotFound, K6Spec, redacted, run_k6
from gates.models import Scenario
from gates.results import parse_results
from gates.results.base import ParseError, ResultSet
from gates.rules import BaselineValue, CheckOutcome, Verdict
from gates.targets import ports_of

logger = logging.getLogger(__name__)

SUCCESS = "success"
FAILURE = "failure"
INCONCLUSIVE = "inconclusive"
ERROR = "error"
# The least requests a probe must make, whatever it is capped to: a p(95) of fewer samples is one
# of its two slowest requests, which no relative rule can compare with anything.
PROBE_MIN_REQUESTS = 20
STOPPED = "stopped"


@dataclass(frozen=True)
class ProbeResult:
    """What one probe found: its outcome, the verdict of its checks, the sentence a person reads,
    the report (``gates.documents.report_of``'s shape) and the values the probe baseline is built
    from ({"<series key>|<aggregation>": value} of every relative rule it measured)."""

    outcome: str  # "success" | "failure" | "inconclusive" | "error"
    verdict: str  # the aggregate verdict of the checks ("" for an error before any check)
    reason: str
    report: dict = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    duration_seconds: float = 0.0


@dataclass(frozen=True)
class ProbeLoad:
    """The capped load of a probe."""

    vus: int
    duration_seconds: int
    arrival_rate: int | None
    max_vus: int
    warmup_seconds: int
    min_requests: int


def probe_limits(scenario: Scenario) -> tuple[int, int]:
    """(VUs, seconds): the scenario's own, capped by ``PERFGATE_PROBE_MAX_VUS`` and
    ``PERFGATE_PROBE_MAX_SECONDS``, since production is probed gently."""
    vus = max(1, min(scenario.vus, settings.PERFGATE_PROBE_MAX_VUS))
    seconds = max(1, min(scenario.duration_seconds, settings.PERFGATE_PROBE_MAX_SECONDS))
    return vus, seconds


def probe_load(scenario: Scenario) -> ProbeLoad:
    """Everything a probe's k6 run is given, capped.

    An open model (arrival rate) keeps its pace per VU: its rate shrinks in proportion to the VUs
    the cap took away, and k6 may never start more than the capped VUs. The warm-up is the
    scenario's, never longer than the probe itself.

    The minimum of requests is the scenario's share for the load the probe really runs: its
    ``min_requests`` was set for the whole load, so a probe capped to a fifth of the VU-seconds
    (or iterations) needs a fifth of it, the same requests per second of load. It is never below
    :data:`PROBE_MIN_REQUESTS` (fewer samples say nothing about a p(95)) and never above the
    scenario's own minimum.
    """
    vus, seconds = probe_limits(scenario)
    max_vus = max(vus, min(scenario.max_vus or vus, settings.PERFGATE_PROBE_MAX_VUS))
    arrival_rate = None
    if scenario.arrival_rate:
        arrival_rate = max(1, math.floor(scenario.arrival_rate * vus / max(scenario.vus, 1)))
        full = scenario.arrival_rate * scenario.duration_seconds
        share = arrival_rate * seconds / full if full else 1.0
    else:
        full = scenario.vus * scenario.duration_seconds
        share = vus * seconds / full if full else 1.0
    scaled = math.ceil(scenario.min_requests * min(share, 1.0))
    min_requests = min(scenario.min_requests, max(scaled, PROBE_MIN_REQUESTS))
    return ProbeLoad(
        vus=vus,
        duration_seconds=seconds,
        arrival_rate=arrival_rate,
        max_vus=max_vus,
        warmup_seconds=min(scenario.warmup_seconds, seconds),
        min_requests=min_requests,
    )


def baseline_key(series: str, aggregation: str) -> str:
    """How a probe value and its baseline are keyed: "<series key>|<aggregation>"."""
    return f"{series}|{aggregation}"


def baseline_from(values: list[dict[str, float]]) -> dict[str, BaselineValue]:
    """A probe baseline from earlier probes' ``values`` (oldest first): per key, the median of the
    last ``PERFGATE_BASELINE_WINDOW`` finite values, and those values (oldest first), which allow
    the significance test of history mode from three on."""
    collected: dict[str, list[float]] = {}
    for probe in values:
        for key, value in probe.items():
            if value is not None and math.isfinite(value):
                collected.setdefault(key, []).append(float(value))
    window = settings.PERFGATE_BASELINE_WINDOW
    baseline = {}
    for key, numbers in collected.items():
        recent = numbers[-window:]
        baseline[key] = BaselineValue(value=float(statistics.median(recent)), run_values=tuple(recent))
    return baseline


def run_probe(
    *,
    scenario: Scenario,
    environment,
    target_url: str,
    allowed_hosts: Iterable[str],
    extra_hosts: Iterable[str] = (),
    headers: dict[str, str] | None = None,
    workdir: Path,
    should_stop: Callable[[], bool] = lambda: False,
    baseline: dict[str, BaselineValue] | None,
) -> ProbeResult:
    """Run one probe of ``scenario`` against ``target_url`` in ``workdir`` (which must exist and be
    private to this probe) and judge it in ``environment`` against ``baseline``.

    ``allowed_hosts`` is the project's allowlist, ``extra_hosts`` the hosts allowed for this
    deployment only; ``headers`` go on every request to the target (their values are secrets and
    appear in no reason); ``should_stop()`` is asked about twice a second and ends the probe as an
    error ("stopped"). Never raises for a probe that cannot run: that is an ``error`` outcome.
    """
    started = time.monotonic()
    headers = dict(headers or {})

    def error(reason: str) -> ProbeResult:
        reason = redacted(reason, headers)
        logger.info("probe of %s against %s: error: %s", scenario, target_url, reason)
        return ProbeResult(
            outcome=ERROR, verdict="", reason=reason, duration_seconds=time.monotonic() - started
        )

    try:
        measured = _measure(
            scenario=scenario,
            environment=environment,
            target_url=target_url,
            allowed_hosts=[*allowed_hosts, *extra_hosts],
            headers=headers,
            workdir=Path(workdir),
            should_stop=should_stop,
        )
    except RunFailed as failure:
        return error(str(failure))
    except Exception:
        # A probe that cannot run is an error for the watch to report, never a reason to stop it.
        logger.exception("the probe of %s against %s could not run", scenario, target_url)
        return error("The probe could not run: an internal error occurred (see the worker's log).")
    results, applied, min_requests = measured
    outcomes, values = judge(results, applied, baseline, min_requests)
    verdict = rules.aggregate_verdict(outcomes)
    load = outcomes[0]
    if load.verdict == Verdict.ERROR:
        # Too little load makes every other number meaningless: whatever the rules say of them,
        # the probe measured nothing to roll back on (a fail outranks an error in the verdict).
        outcome, reason = ERROR, _described(load)
    else:
        outcome, reason = outcome_of(verdict), reason_of(verdict, outcomes)
    notices = []
    if not baseline and any(isinstance(item.spec, rules.RelativeRule) for item in applied):
        notices.append("No probe baseline yet: relative rules do not decide; absolute rules still do.")
    return ProbeResult(
        outcome=outcome,
        verdict=str(verdict),
        reason=redacted(reason, headers),
        report=report_of(results, outcomes, notices=notices),
        values=values,
        duration_seconds=time.monotonic() - started,
    )


def _measure(
    *,
    scenario: Scenario,
    environment,
    target_url: str,
    allowed_hosts: list[str],
    headers: dict[str, str],
    workdir: Path,
    should_stop: Callable[[], bool],
) -> tuple[ResultSet, list[plans.AppliedRule], int]:
    """Check the target, run k6 with the capped load, and parse its raw output; RunFailed with the
    reason when that produced nothing to judge."""
    if scenario.tool != Scenario.Tool.K6:
        raise RunFailed(f"Probes run k6 scenarios; scenario {scenario.name} uses {scenario.tool}.")
    if not target_url:
        raise RunFailed(f"No target URL to probe with scenario {scenario.name}.")
    applied = plans.rules_for(environment, scenario, {})
    submetrics, percentiles = plans.parser_needs(applied)
    submetrics = [*submetrics, UNREACHABLE_SERIES]
    # A host listed without a port opens 80, 443 and the ports of the scenario's own URLs.
    own_ports = ports_of(scenario.target_url, scenario.reference_url)
    target = _checked_target(target_url, allowed_hosts, "Target", own_ports)
    if should_stop():
        raise RunFailed(STOPPED)
    load = probe_load(scenario)
    try:
        spec = K6Spec(
            script_text=scenario.script_text,
            target_url=target.url,
            vus=load.vus,
            duration_seconds=load.duration_seconds,
            arrival_rate=load.arrival_rate,
            max_vus=load.max_vus,
            warmup_seconds=load.warmup_seconds,
            hosts=address_pins(target),
            headers=headers,
        )
    except ValueError as exc:  # a bad header: its message names the header, never its value
        raise RunFailed(f"The probe could not start: {exc}.") from None
    timeout = spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS
    try:
        outcome = run_k6(
            spec,
            workdir,
            timeout_seconds=timeout,
            binary=settings.PERFGATE_K6_BINARY,
            should_cancel=should_stop,
        )
    except K6NotFound as exc:
        raise RunFailed(f"The probe could not start: {exc}.") from None
    if outcome.cancelled:
        raise RunFailed(STOPPED)
    if outcome.timed_out:
        raise RunFailed(f"k6 did not finish the probe within {timeout:g} s and was stopped.")
    try:
        results = parse_results(
            outcome.raw_path,
            format="k6-ndjson",
            name="the raw k6 output of the probe",
            submetrics=submetrics,
            percentiles=percentiles,
            warmup_tag=spec.warmup_tag,
        )
    except (ParseError, OSError) as exc:
        detail = _last_line(outcome.stderr_tail) or str(exc) or f"exit code {outcome.exit_code}"
        raise RunFailed(f"k6 produced no usable results ({detail}).") from None
    if results.warmup is not None:
        results.warmup.seconds = float(spec.warmup_seconds)
    check_connected(results, target)
    return results, applied, load.min_requests


def judge(
    results: ResultSet,
    applied: list[plans.AppliedRule],
    baseline: dict[str, BaselineValue] | None,
    min_requests: int,
) -> tuple[list[CheckOutcome], dict[str, float]]:
    """The checks of a probe, as a history-mode validation makes them (the load check first, then
    every rule in order; the key relative ones share one false-block rate), and the value of every
    relative rule it measured, keyed like the probe baseline."""
    baseline = baseline or {}
    outcomes: dict[int, CheckOutcome] = {}
    relative = []
    values: dict[str, float] = {}
    for index, item in enumerate(applied):
        spec = item.spec
        if isinstance(spec, rules.AbsoluteRule):
            outcomes[index] = rules.evaluate_absolute(spec, results)
            continue
        series = results.find(spec.selector.name, spec.selector.tags)
        key = baseline_key(series.key if series is not None else str(spec.selector), spec.aggregation)
        value, _, _ = rules.measured_value(results, spec.selector, spec.aggregation)
        if value is not None:
            values[key] = value
        relative.append((index, spec, baseline.get(key)))
    judged = rules.evaluate_relatives(
        [(spec, reference) for _, spec, reference in relative],
        results,
        alpha=settings.PERFGATE_FALSE_BLOCK_RATE,
    )
    outcomes.update(zip([index for index, _, _ in relative], judged, strict=True))
    checks = [rules.evaluate_load(results, min_requests)]
    checks.extend(outcomes[index] for index in range(len(applied)))
    return checks, values


def outcome_of(verdict: Verdict) -> str:
    """A probe's outcome from its checks' verdict: only a failed key check is a failure."""
    if verdict == Verdict.FAIL:
        return FAILURE
    if verdict == Verdict.INCONCLUSIVE:
        return INCONCLUSIVE
    if verdict == Verdict.ERROR:
        return ERROR
    return SUCCESS


def reason_of(verdict: Verdict, outcomes: list[CheckOutcome]) -> str:
    """One line: the key checks that decided a failure, an inconclusive probe or an error; or that
    all checks passed (and the warnings, when some warned)."""
    if verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE, Verdict.ERROR):
        deciding = [o for o in outcomes if o.severity == rules.Severity.KEY and o.verdict == verdict]
        return "; ".join(_described(o) for o in deciding) or "nothing was checked"
    warnings = [o for o in outcomes if o.verdict != Verdict.PASS]
    if not warnings:
        return "all checks passed"
    return "no check failed; " + "; ".join(f"{o.verdict}: {_described(o)}" for o in warnings)


def _described(outcome: CheckOutcome) -> str:
    return f"{outcome.metric} {outcome.reason}".strip()
