"""Reads that take more than one query: which rules apply to a validation, and what a results
parser must compute for them."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode

from django.db.models import Q
from django.urls import reverse

from gates import rules
from gates.errors import NotFound, ServiceError
from gates.models import Environment, MetricObservation, Project, Scenario, ThresholdRule, Validation


@dataclass(frozen=True)
class AppliedRule:
    """A rule as evaluated: the pure spec, and the configured row it came from (None for a rule
    the request added)."""

    spec: rules.AbsoluteRule | rules.RelativeRule
    rule: ThresholdRule | None = None


def scenario_for(project: Project, name: str | None) -> Scenario | None:
    """The named scenario of a project, or its default one when no name is given."""
    scenarios = Scenario.objects.filter(project=project)
    if name:
        return scenarios.filter(name=name).first()
    return scenarios.filter(is_default=True).first()


def configured_rules(environment: Environment, scenario: Scenario) -> list[ThresholdRule]:
    """Rules of the scenario that apply to this environment (no environments listed: all of them)."""
    return list(
        ThresholdRule.objects.filter(scenario=scenario)
        .filter(Q(environments=environment) | Q(environments__isnull=True))
        .distinct()
        .order_by("id")
    )


def request_rules(test_config: dict) -> list[rules.AbsoluteRule]:
    """Absolute rules a request adds through ``testConfig.thresholds`` ({metric: [expression]}).

    They are always ``key`` and only ever add checks, so a request can tighten what ops
    configured but never loosen it. Raises RuleSyntaxError for a bad one.
    """
    extra = []
    for metric, expressions in (test_config.get("thresholds") or {}).items():
        for expression in expressions:
            selector, threshold = rules.validate_absolute_rule(metric, expression)
            extra.append(
                rules.AbsoluteRule(
                    label=f"{selector}: {threshold} (request)",
                    selector=selector,
                    threshold=threshold,
                    severity=rules.Severity.KEY,
                )
            )
    return extra


def validation_rules(validation: Validation) -> list[AppliedRule]:
    """Every rule that decides this validation: configured ones first, then the request's."""
    applied = []
    if validation.scenario_id:
        for rule in configured_rules(validation.environment, validation.scenario):
            applied.append(AppliedRule(spec=rule.to_spec(), rule=rule))
    applied.extend(AppliedRule(spec=spec) for spec in request_rules(validation.test_config))
    return applied


def parser_needs(applied: list[AppliedRule]) -> tuple[list[str], list[float]]:
    """The submetrics and extra percentiles a raw-results parser must compute for these rules."""
    submetrics: set[str] = set()
    percentiles: set[float] = set()
    for item in applied:
        spec = item.spec
        if spec.selector.tags:
            submetrics.add(str(spec.selector))
        aggregation = spec.threshold.aggregation if isinstance(spec, rules.AbsoluteRule) else spec.aggregation
        percentile = rules.percentile_of(aggregation)
        if percentile is not None:
            percentiles.add(percentile)
    return sorted(submetrics), sorted(percentiles)


SUMMARY_METRICS = {
    "http_req_duration": ("avg", "med", "p(95)", "p(99)"),
    "http_req_failed": ("rate",),
    "http_reqs": ("count", "rate"),
}


def validation_metrics(validation: Validation) -> dict[str, dict[str, float]]:
    """The headline numbers of the validation's latest run, plus every series a check looked at."""
    run = validation.runs.order_by("-created_at").first()
    if run is None:
        return {}
    checked = set(validation.checks.exclude(metric="").values_list("metric", flat=True))
    metrics: dict[str, dict[str, float]] = {}
    for series, aggregation, value in run.observations.filter(
        Q(series__in=list(SUMMARY_METRICS)) | Q(series__in=checked)
    ).values_list("series", "aggregation", "value"):
        wanted = SUMMARY_METRICS.get(series)
        if wanted is None or aggregation in wanted or series in checked:
            metrics.setdefault(series, {})[aggregation] = value
    return metrics


def validation_checks(validation: Validation) -> list[dict]:
    """Check results in the API's shape, in evaluation order."""
    return [
        {
            "rule": check.label,
            "kind": check.kind,
            "severity": check.severity,
            "metric": check.metric,
            "aggregation": check.aggregation,
            "verdict": check.verdict,
            "observed": check.observed,
            "baseline": check.baseline_value,
            "limit": check.limit,
            "changePct": None if check.change_pct is None else round(check.change_pct, 2),
            "pValue": check.p_value,
            "reason": check.reason,
        }
        for check in validation.checks.order_by("position")
    ]


def validation_for_build(
    project: Project, build_id: str, environment: Environment | None = None
) -> Validation:
    """The latest validation of a build (in one environment, or in any). Raises NotFound."""
    validations = Validation.objects.filter(project=project, build_id=build_id)
    if environment is not None:
        validations = validations.filter(environment=environment)
    validation = (
        validations.select_related("project", "environment", "scenario").order_by("-created_at").first()
    )
    if validation is None:
        where = f"{project.slug}/{environment.name}" if environment else project.slug
        raise NotFound(f"No validation of build {build_id!r} in {where}.")
    return validation


def validation_wait(validation: Validation, seconds: float, poll_seconds: float = 0.25) -> Validation:
    """Long-poll: the validation as soon as it leaves queued/running, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    while validation.is_pending and time.monotonic() < deadline:
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
        validation = Validation.objects.select_related("project", "environment", "scenario").get(
            pk=validation.pk
        )
    return validation


def validation_links(validation: Validation) -> dict:
    scope = {"project": validation.project.slug, "environment": validation.environment.name}
    status_path = reverse("api:status", args=[validation.build_id])
    regression_path = reverse("api:regression")
    return {
        "status": f"{status_path}?{urlencode(scope)}",
        "regression": f"{regression_path}?{urlencode({**scope, 'buildId': validation.build_id})}",
        "admin": reverse("admin:gates_validation_change", args=[validation.pk]),
        # The metric chart arrives with the ops-console work; no link until it exists.
        "chart": None,
    }


def validation_document(validation: Validation) -> dict:
    """Everything CI sees about a validation, in the API's shape."""
    return {
        "validationId": str(validation.pk),
        "project": validation.project.slug,
        "buildId": validation.build_id,
        "environment": validation.environment.name,
        "gitHash": validation.git_hash,
        "scenario": validation.scenario.name if validation.scenario else None,
        "status": validation.status,
        "verdict": validation.verdict or None,
        "deploymentAllowed": validation.deployment_allowed,
        "wouldBlock": validation.would_block,
        "statusReason": validation.status_reason,
        "metrics": validation_metrics(validation),
        "checks": validation_checks(validation),
        "blockingReasons": list(validation.blocking_reasons),
        "progress": None,
        "estimatedCompletion": None,
        "createdAt": validation.created_at,
        "startedAt": validation.started_at,
        "finishedAt": validation.finished_at,
        "links": validation_links(validation),
    }


def _encode_cursor(created_at: datetime, pk) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, pk = text.split("|", 1)
        return datetime.fromisoformat(created_at), pk
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(
            "The cursor is not one this API gave out.", fields={"cursor": ["Invalid cursor."]}
        ) from None


def history_page(
    *,
    project: Project,
    environment: Environment | None = None,
    scenario: Scenario | None = None,
    metric: str | None = None,
    branch: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[dict], str | None]:
    """One page of validations, newest first, with their metrics: (items, next cursor or None).

    Keyset pagination on (created_at, id): every page is one index range scan however deep it
    is, where an offset would count every row before it.
    """
    validations = Validation.objects.filter(project=project).select_related("environment", "scenario")
    if environment is not None:
        validations = validations.filter(environment=environment)
    if scenario is not None:
        validations = validations.filter(scenario=scenario)
    if branch:
        validations = validations.filter(branch=branch)
    if since is not None:
        validations = validations.filter(created_at__gte=since)
    if until is not None:
        validations = validations.filter(created_at__lt=until)
    if cursor:
        created_at, pk = _decode_cursor(cursor)
        validations = validations.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=pk))
    page = list(validations.order_by("-created_at", "-pk")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]

    series = [metric] if metric else list(SUMMARY_METRICS)
    metrics: dict = {}
    observations = MetricObservation.objects.filter(run__validation__in=page, series__in=series).values_list(
        "run__validation_id", "series", "aggregation", "value"
    )
    for validation_id, name, aggregation, value in observations:
        wanted = SUMMARY_METRICS.get(name)
        if metric or wanted is None or aggregation in wanted:
            metrics.setdefault(validation_id, {}).setdefault(name, {})[aggregation] = value
    items = [
        {
            "validationId": str(v.pk),
            "buildId": v.build_id,
            "gitHash": v.git_hash,
            "branch": v.branch,
            "environment": v.environment.name,
            "scenario": v.scenario.name if v.scenario else None,
            "status": v.status,
            "verdict": v.verdict or None,
            "deploymentAllowed": v.deployment_allowed,
            "createdAt": v.created_at,
            "finishedAt": v.finished_at,
            "metrics": metrics.get(v.pk, {}),
        }
        for v in page
    ]
    next_cursor = _encode_cursor(page[-1].created_at, page[-1].pk) if more else None
    return items, next_cursor


def regression_report(validation: Validation) -> dict:
    """Every metric of the validation's latest run next to the baseline it was compared with
    (or, before it was compared, the active one)."""
    from baselines.models import BaselineMetric
    from baselines.selectors import baseline_active

    baseline = validation.baseline or baseline_active(
        validation.project, validation.environment, validation.scenario
    )
    run = validation.runs.order_by("-created_at").first()
    verdicts = {
        (check.metric, check.aggregation): check.verdict
        for check in validation.checks.filter(kind="relative")
    }
    comparisons = []
    if run is not None and baseline is not None:
        reference = {(m.series, m.aggregation): m for m in BaselineMetric.objects.filter(baseline=baseline)}
        for obs in run.observations.order_by("series", "aggregation"):
            ref = reference.get((obs.series, obs.aggregation))
            if ref is None:
                continue
            change_pct = None if ref.value == 0 else round((obs.value - ref.value) / abs(ref.value) * 100, 2)
            direction = rules.default_direction(obs.metric, obs.kind, obs.aggregation)
            worse = (obs.value > ref.value) if direction == "up" else (obs.value < ref.value)
            comparisons.append(
                {
                    "metric": obs.series,
                    "aggregation": obs.aggregation,
                    "unit": obs.unit,
                    "observed": obs.value,
                    "baseline": ref.value,
                    "baselineStdev": ref.stdev,
                    "changePct": change_pct,
                    "worseWhen": direction,
                    "worse": worse and obs.value != ref.value,
                    "verdict": verdicts.get((obs.series, obs.aggregation)),
                }
            )
    return {
        "validationId": str(validation.pk),
        "project": validation.project.slug,
        "environment": validation.environment.name,
        "buildId": validation.build_id,
        "baseline": None
        if baseline is None
        else {
            "version": baseline.version,
            "pinned": baseline.pinned,
            "runs": len(baseline.runs.all()),
            "createdAt": baseline.created_at,
        },
        "comparisons": comparisons,
    }
