"""Calibration: how noisy a scenario's checked metrics are when nothing changes, and what the
gate can therefore see.

``manage.py calibrate`` runs a scenario several times against the same target (A/A: the same
code every time), as a worker would run it (its script, load, warm-up left out, target checked
against the allowlist and pinned), and reads, from every run, the value of each metric that a
relative rule of the environment checks. From those values:

- the noise: ``baselines.stats.noise_model`` (robust, log scale), whose spread is about the
  coefficient of variation;
- history mode's detectable change: the smallest worsening one new run shows beyond a baseline
  window of ``PERFGATE_BASELINE_WINDOW`` runs with this noise, at ``PERFGATE_FALSE_BLOCK_RATE``
  and 80% power (``NoiseModel.detectable_change``);
- gate-run mode's detectable change: what ``PERFGATE_AB_MAX_PAIRS`` paired repetitions block at
  ``PERFGATE_AB_ALPHA`` (``stats.paired_detectable_change``). The sd of one pair's log ratio is
  estimated from consecutive runs' log differences (1.4826 times their median absolute value, so
  one wild run moves it little; the difference of two runs is what a pair is) and multiplied by
  sqrt(``PERFGATE_AB_REPETITIONS_PER_RUN``), because a repetition lasts 1/that of a run (at
  least 1 s, so for short scenarios fewer).
  That factor is a model assumption: the noise of a mean-like statistic shrinks as
  1/sqrt(duration). Tail percentiles of short repetitions and slow drifts may do worse.

A relative rule whose fail % is below history mode's detectable change is *below noise*: a
regression between the two is beyond the rule's threshold but inside the noise, so it warns
instead of blocking. The stored document (``Scenario.calibration``) is read here too, for the
admin and ``apply_config``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from django.conf import settings
from scipy import stats as distributions

from baselines import stats
from gates import plans, rules
from gates.execution import UNREACHABLE_SERIES, RunFailed, address_pins, check_connected, check_reachable
from gates.loadtest import ab
from gates.loadtest.k6 import K6NotFound, K6Spec, run_k6
from gates.loadtest.locust import LocustSpec, run_locust
from gates.models import Environment, Scenario, ThresholdRule
from gates.results import parse_results
from gates.results.base import COUNTER, RATE, ParseError, ResultSet
from gates.targets import Target, TargetRefused, ports_of, resolve_target

MIN_RUNS = stats.MIN_RUNS
RECOMMENDED_RUNS = 10
POWER = stats.DEFAULT_POWER
# The median absolute value of a normal variable with sd 1 (1 / 1.4826).
NORMAL_MAD = float(distributions.norm.ppf(0.75))


class CalibrationRefused(ValueError):
    """The scenario cannot be calibrated as configured; the message says why."""


class Interrupted(Exception):
    """The operator stopped the calibration (Ctrl-C)."""


@dataclass(frozen=True)
class CheckedMetric:
    """One metric and aggregation that relative rules check, with those rules' specs. Its values
    are keyed ``"<series> <aggregation>"``."""

    key: str
    selector: rules.MetricSelector
    aggregation: str
    specs: tuple[rules.RelativeRule, ...]

    @property
    def strictest(self) -> rules.RelativeRule:
        return min(self.specs, key=lambda spec: spec.fail_pct)


@dataclass(frozen=True)
class CalibrationPlan:
    """What a calibration runs and reads: resolved once, before the first run."""

    scenario: Scenario
    environment: Environment
    target: Target
    metrics: tuple[CheckedMetric, ...]
    submetrics: tuple[str, ...]
    percentiles: tuple[float, ...]

    @property
    def run_seconds(self) -> int:
        return self.scenario.warmup_seconds + self.scenario.duration_seconds


@dataclass(frozen=True)
class RunNumbers:
    """What one calibration run measured: each checked metric's value, and its request count."""

    values: dict[str, float]
    requests: int | None
    kinds: dict[str, tuple[str, str]]  # metric key → (series kind, unit), for display


def metric_key(spec: rules.RelativeRule) -> str:
    return ab.rule_key(str(spec.selector), spec.aggregation)


def checked_metrics(environment: Environment, scenario: Scenario) -> list[CheckedMetric]:
    """Every metric a relative rule of the scenario checks in this environment, in rule order."""
    grouped: dict[str, list[rules.RelativeRule]] = {}
    for rule in plans.configured_rules(environment, scenario):
        if rule.kind == ThresholdRule.Kind.RELATIVE:
            spec = rule.to_spec()
            grouped.setdefault(metric_key(spec), []).append(spec)
    return [
        CheckedMetric(
            key=key, selector=specs[0].selector, aggregation=specs[0].aggregation, specs=tuple(specs)
        )
        for key, specs in grouped.items()
    ]


def calibration_plan(environment: Environment, scenario: Scenario) -> CalibrationPlan:
    """Resolve what to run; raises CalibrationRefused when there is nothing to calibrate or the
    scenario cannot run here."""
    if scenario.tool not in (Scenario.Tool.K6, Scenario.Tool.LOCUST):
        raise CalibrationRefused(
            f"Scenario {scenario.name} runs on {scenario.get_tool_display()}; calibrate runs k6 and "
            "Locust scenarios only."
        )
    metrics = checked_metrics(environment, scenario)
    if not metrics:
        raise CalibrationRefused(
            f"Scenario {scenario.name} has no relative rule in {environment.name}: nothing to calibrate "
            "(absolute rules do not depend on the run-to-run noise)."
        )
    if not scenario.target_url:
        raise CalibrationRefused(f"Scenario {scenario.name} has no target URL to run against.")
    try:
        target = resolve_target(
            scenario.target_url,
            scenario.project.allowed_hosts,
            configured_ports=ports_of(scenario.target_url, scenario.reference_url),
        )
    except TargetRefused as exc:
        raise CalibrationRefused(f"Target refused: {exc}.") from None
    submetrics, percentiles = plans.parser_needs(plans.rules_for(environment, scenario, {}))
    return CalibrationPlan(
        scenario=scenario,
        environment=environment,
        target=target,
        metrics=tuple(metrics),
        submetrics=tuple(submetrics),
        percentiles=tuple(percentiles),
    )


def run_once(plan: CalibrationPlan, *, should_stop: Callable[[], bool] = lambda: False) -> RunNumbers:
    """One run of the scenario and the values of its checked metrics. Raises RunFailed with the
    reason when the run produced no usable numbers, Interrupted when ``should_stop()`` said so."""
    check_reachable(plan.target)
    with tempfile.TemporaryDirectory(prefix="perfgate-calibrate-") as workdir:
        if plan.scenario.tool == Scenario.Tool.LOCUST:
            results = _locust(plan, Path(workdir), should_stop)
        else:
            results = _k6(plan, Path(workdir), should_stop)
    check_connected(results, plan.target)
    requests = results.request_count
    minimum = plan.scenario.min_requests
    if requests is not None and requests < minimum:
        raise RunFailed(
            f"insufficient load: {requests} requests, fewer than the scenario's minimum of {minimum}"
        )
    values, kinds = {}, {}
    for metric in plan.metrics:
        values[metric.key], kinds[metric.key] = _value_of(results, metric)
    return RunNumbers(values=values, requests=requests, kinds=kinds)


def _k6(plan: CalibrationPlan, workdir: Path, should_stop: Callable[[], bool]) -> ResultSet:
    scenario = plan.scenario
    spec = K6Spec(
        script_text=scenario.script_text,
        target_url=plan.target.url,
        vus=scenario.vus,
        duration_seconds=scenario.duration_seconds,
        arrival_rate=scenario.arrival_rate,
        max_vus=scenario.max_vus,
        warmup_seconds=scenario.warmup_seconds,
        hosts=address_pins(plan.target),
    )
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
        raise RunFailed(f"the load test could not start: {exc}") from None
    # Ctrl-C in a terminal reaches k6 too, which then ends early on its own: a short run.
    if outcome.cancelled or should_stop():
        raise Interrupted
    if outcome.timed_out:
        raise RunFailed(f"k6 did not finish within {timeout:g} s and was stopped")
    try:
        return parse_results(
            outcome.raw_path,
            format="k6-ndjson",
            name="the raw k6 output",
            submetrics=[*plan.submetrics, UNREACHABLE_SERIES],
            percentiles=plan.percentiles,
            warmup_tag=spec.warmup_tag,
        )
    except (OSError, ParseError) as exc:
        detail = _last_line(outcome.stderr_tail) or exc
        raise RunFailed(f"k6 produced no usable results ({detail})") from None


def _locust(plan: CalibrationPlan, workdir: Path, should_stop: Callable[[], bool]) -> ResultSet:
    scenario = plan.scenario
    spec = LocustSpec(
        locustfile_text=scenario.script_text,
        target_url=plan.target.url,
        users=scenario.vus,
        duration_seconds=scenario.duration_seconds,
        warmup_seconds=scenario.warmup_seconds,
    )
    outcome = run_locust(
        spec,
        workdir,
        timeout_seconds=spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS,
        should_cancel=should_stop,
    )
    if outcome.cancelled or should_stop():
        raise Interrupted
    if not outcome.completed:
        detail = _last_line(outcome.stderr_tail) or f"exit code {outcome.exit_code}"
        raise RunFailed(f"Locust produced no usable results ({detail})")
    try:
        return parse_results(outcome.stats_path, format="locust-csv", name="the Locust stats")
    except ParseError as exc:
        raise RunFailed(f"Locust produced no usable results ({exc})") from None


def _value_of(results: ResultSet, metric: CheckedMetric) -> tuple[float, tuple[str, str]]:
    value, series, problem = rules.measured_value(results, metric.selector, metric.aggregation)
    if value is None:
        raise RunFailed(problem)
    return value, (series.kind, series.unit)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@dataclass(frozen=True)
class Noise:
    """The noise of one metric over A/A runs and the smallest changes the gate detects at it.
    Fractions (0.12 is 12%); ``None`` where the model cannot say (a value of zero: no ratio)."""

    values: tuple[float, ...]
    median: float
    cv: float | None
    history_detectable: float | None
    pair_noise: float | None
    gate_run_detectable: float | None
    fail_pct: float
    direction: str


def repetitions_per_run(duration_seconds: float) -> float:
    """How many gate-run repetitions last as long as one run: PERFGATE_AB_REPETITIONS_PER_RUN,
    fewer when a repetition would be shorter than 1 s."""
    repetition = max(1.0, duration_seconds / settings.PERFGATE_AB_REPETITIONS_PER_RUN)
    return max(1.0, duration_seconds / repetition)


def pair_noise(values: Sequence[float], repetitions_per_run: float) -> float | None:
    """The sd of one gate-run pair's log ratio, estimated from consecutive A/A runs.

    The log difference of two consecutive runs is what one pair measures, at full run length.
    Its sd is 1.4826 times the median absolute difference: robust (a wild run spoils two
    differences of many), and centred on 0, which is what an A/A pair's log ratio is centred on
    (centred on their median instead, runs alternating high and low would look noiseless; a slow
    drift inflates it a little, on the safe side). A repetition lasts 1/``repetitions_per_run``
    of a run, and the noise of a mean-like statistic grows as 1/sqrt(duration) (an assumption),
    hence the factor sqrt(repetitions_per_run). Never below the noise floor of two runs.
    ``None`` when a value is not positive (no log ratio).
    """
    numbers = np.asarray(values, dtype=float)
    if len(numbers) < 2 or np.any(numbers <= 0):
        return None
    steps = np.diff(np.log(numbers))
    spread = float(np.median(np.abs(steps))) / NORMAL_MAD
    return max(spread, stats.MIN_NOISE * math.sqrt(2.0)) * math.sqrt(repetitions_per_run)


def gate_run_detectable(pair_sd: float | None, fail_pct: float) -> float | None:
    """Gate-run mode's smallest blocked change for a rule failing from ``fail_pct`` percent."""
    if pair_sd is None:
        return None
    return stats.paired_detectable_change(
        pair_sd,
        pairs=settings.PERFGATE_AB_MAX_PAIRS,
        threshold=fail_pct / 100.0,
        alpha=settings.PERFGATE_AB_ALPHA,
        power=POWER,
    )


def noise_of(
    values: Sequence[float], *, fail_pct: float, direction: str = "up", repetitions: float | None = None
) -> Noise:
    """The noise of one metric's per-run values (at least ``MIN_RUNS``) and what the gate detects
    at it, in both modes, with today's settings. ``direction`` is which change is worse;
    ``repetitions`` is how many gate-run repetitions a run is long (default
    PERFGATE_AB_REPETITIONS_PER_RUN)."""
    model = stats.noise_model(values)
    if model is None:
        raise ValueError(f"calibration needs at least {MIN_RUNS} runs")
    window = settings.PERFGATE_BASELINE_WINDOW
    history = None
    if window >= MIN_RUNS:  # below that a baseline has no noise model: the threshold alone decides
        full_window = stats.NoiseModel(centre=model.centre, spread=model.spread, n=window, log=model.log)
        history = full_window.detectable_change(settings.PERFGATE_FALSE_BLOCK_RATE, POWER)
        if model.log and direction == "down":
            # The same margin on the log scale is a smaller fall than rise: 1 - 1/(1 + rise).
            history = history / (1.0 + history)
    if repetitions is None:
        repetitions = settings.PERFGATE_AB_REPETITIONS_PER_RUN
    pair_sd = pair_noise(values, repetitions)
    return Noise(
        values=tuple(float(v) for v in values),
        median=float(np.median(values)),
        cv=_finite(model.cv),
        history_detectable=_finite(history),
        pair_noise=pair_sd,
        gate_run_detectable=_finite(gate_run_detectable(pair_sd, fail_pct)),
        fail_pct=fail_pct,
        direction=direction,
    )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(fraction * 100.0, 2)


def _direction(spec: rules.RelativeRule, kind: str) -> str:
    if spec.direction != "auto":
        return spec.direction
    _, method, _ = rules.parse_aggregation(spec.aggregation)
    return rules.default_direction(spec.selector.name, kind, method)


def calibration_document(plan: CalibrationPlan, runs: Sequence[RunNumbers], at: datetime) -> dict:
    """What ``Scenario.calibration`` stores: when, how many runs, where, the load they ran, the
    settings the detectable changes assume, and per metric its values and noise."""
    if len(runs) < MIN_RUNS:
        raise ValueError(f"calibration needs at least {MIN_RUNS} runs")
    scenario = plan.scenario
    repetitions = repetitions_per_run(scenario.duration_seconds)
    metrics = {}
    for metric in plan.metrics:
        spec = metric.strictest
        kind, unit = runs[0].kinds[metric.key]
        noise = noise_of(
            [run.values[metric.key] for run in runs],
            fail_pct=spec.fail_pct,
            direction=_direction(spec, kind),
            repetitions=repetitions,
        )
        metrics[metric.key] = {
            "values": list(noise.values),
            "median": noise.median,
            "cvPct": _pct(noise.cv),
            "historyDetectablePct": _pct(noise.history_detectable),
            "gateRunDetectablePct": _pct(noise.gate_run_detectable),
            "pairNoise": noise.pair_noise,
            "failPct": noise.fail_pct,
            "direction": noise.direction,
            "kind": kind,
            "unit": unit,
        }
    return {
        "at": at.isoformat(),
        "runs": len(runs),
        "environment": plan.environment.name,
        "targetUrl": plan.target.url,
        "load": {
            "vus": scenario.vus,
            "arrivalRate": scenario.arrival_rate,
            "durationSeconds": scenario.duration_seconds,
            "warmupSeconds": scenario.warmup_seconds,
        },
        "model": {
            "falseBlockRate": settings.PERFGATE_FALSE_BLOCK_RATE,
            "power": POWER,
            "baselineWindow": settings.PERFGATE_BASELINE_WINDOW,
            "abMaxPairs": settings.PERFGATE_AB_MAX_PAIRS,
            "abAlpha": settings.PERFGATE_AB_ALPHA,
            "abRepetitionsPerRun": round(repetitions, 2),
        },
        "metrics": metrics,
    }


def format_value(value: float, kind: str, unit: str, aggregation: str) -> str:
    """A measured number as a person reads it: "14.2 ms", "1.20%", "101.8/s", "2431"."""
    if kind == RATE:
        return f"{value * 100:.2f}%"
    if kind == COUNTER and aggregation == "rate":
        return f"{value:.1f}/s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.6g} {unit}".rstrip()


@dataclass(frozen=True)
class RuleNoise:
    """What a stored calibration says about one relative rule. Percentages; ``None`` where the
    calibration could not say."""

    cv_pct: float | None
    history_pct: float | None
    gate_run_pct: float | None
    fail_pct: float
    environment: str
    calibrated_on: str  # the date, YYYY-MM-DD

    @property
    def below_noise(self) -> bool:
        """The rule fails from a smaller change than history mode can tell from noise."""
        return self.history_pct is not None and self.fail_pct < self.history_pct

    def describe(self) -> str:
        """``CV 6.8%, detects ≥ 23% (history) / ≥ 14% (gate-run), calibrated 2026-12-01 on staging``."""

        def pct(value):
            if value is None:
                return "?"
            return f"{value:.2g}%" if value < 10 else f"{value:.0f}%"

        return (
            f"CV {pct(self.cv_pct)}, detects ≥ {pct(self.history_pct)} (history) / "
            f"≥ {pct(self.gate_run_pct)} (gate-run), calibrated {self.calibrated_on} on {self.environment}"
        )


def noise_for(spec: rules.RelativeRule, calibration: dict | None) -> RuleNoise | None:
    """A rule's noise from its scenario's stored calibration; None when it measured none for the
    rule's metric. Gate-run mode's detectable change depends on the fail %: for a rule whose
    fail % is not the one calibrated, it is recomputed from the stored pair noise."""
    metric = ((calibration or {}).get("metrics") or {}).get(metric_key(spec))
    if not metric:
        return None
    gate_run = metric.get("gateRunDetectablePct")
    if metric.get("failPct") != spec.fail_pct:
        gate_run = _pct(_finite(gate_run_detectable(metric.get("pairNoise"), spec.fail_pct)))
    return RuleNoise(
        cv_pct=metric.get("cvPct"),
        history_pct=metric.get("historyDetectablePct"),
        gate_run_pct=gate_run,
        fail_pct=spec.fail_pct,
        environment=calibration.get("environment", "?"),
        calibrated_on=str(calibration.get("at", ""))[:10] or "?",
    )


def rule_noise(rule: ThresholdRule) -> RuleNoise | None:
    """A configured relative rule's noise, from its scenario's calibration (None: not calibrated,
    or not a relative rule)."""
    if rule.kind != ThresholdRule.Kind.RELATIVE or not rule.scenario.calibration:
        return None
    try:
        spec = rule.to_spec()
    except rules.RuleSyntaxError:
        return None
    return noise_for(spec, rule.scenario.calibration)
