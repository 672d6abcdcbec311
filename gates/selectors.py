"""Reads that take more than one query: which rules apply to a validation, and what a results
parser must compute for them."""

from __future__ import annotations

import base64
import functools
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import orjson
from django.db import connection
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


def report_of(results, outcomes) -> dict:
    """What a validation shows about its run, computed once when it is decided: the headline
    numbers plus every series a check looked at, and the checks in the API's shape."""
    checked = {outcome.metric for outcome in outcomes if outcome.metric}
    metrics: dict[str, dict[str, float]] = {}
    for series in results.series.values():
        wanted = SUMMARY_METRICS.get(series.key)
        if wanted is None and series.key not in checked:
            continue
        values = {
            aggregation: value
            for aggregation, value in series.values.items()
            if (series.key in checked or aggregation in wanted) and math.isfinite(value)
        }
        if values:
            metrics[series.key] = values
    checks = [
        {
            "rule": outcome.label,
            "kind": outcome.kind,
            "severity": str(outcome.severity),
            "metric": outcome.metric,
            "aggregation": outcome.aggregation or "",
            "verdict": str(outcome.verdict),
            "observed": outcome.observed,
            "baseline": outcome.baseline,
            "limit": outcome.limit,
            "changePct": None if outcome.change_pct is None else round(outcome.change_pct, 2),
            "pValue": outcome.p_value,
            "reason": outcome.reason,
        }
        for outcome in outcomes
    ]
    return {"metrics": metrics, "checks": checks}


def validation_for_build(project: Project, build_id: str, environment_name: str | None = None) -> Validation:
    """The latest validation of a build (in one environment, or in any). Raises NotFound."""
    validations = Validation.objects.filter(project=project, build_id=build_id)
    if environment_name:
        validations = validations.filter(environment__name=environment_name)
    validation = (
        validations.select_related("project", "environment", "scenario").order_by("-created_at").first()
    )
    if validation is None:
        raise NotFound(_no_validation(project, build_id, environment_name))
    return validation


def _no_validation(project: Project, build_id: str, environment_name: str | None) -> str:
    where = f"{project.slug}/{environment_name}" if environment_name else project.slug
    return f"No validation of build {build_id!r} in {where}."


@dataclass(frozen=True)
class StatusRow:
    """The fields of a validation that its API document shows."""

    id: str
    project: str
    build_id: str
    environment: str
    git_hash: str
    scenario: str | None
    status: str
    verdict: str
    deployment_allowed: bool | None
    would_block: bool
    status_reason: str
    report: dict
    blocking_reasons: list
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: dict
    estimated_completion: datetime | None

    @property
    def is_pending(self) -> bool:
        return self.status in Validation.PENDING_STATUSES


def status_row_of(validation: Validation) -> StatusRow:
    return StatusRow(
        id=str(validation.pk),
        project=validation.project.slug,
        build_id=validation.build_id,
        environment=validation.environment.name,
        git_hash=validation.git_hash,
        scenario=validation.scenario.name if validation.scenario else None,
        status=validation.status,
        verdict=validation.verdict,
        deployment_allowed=validation.deployment_allowed,
        would_block=validation.would_block,
        status_reason=validation.status_reason,
        report=validation.report,
        blocking_reasons=list(validation.blocking_reasons),
        created_at=validation.created_at,
        started_at=validation.started_at,
        finished_at=validation.finished_at,
        progress=validation.progress,
        estimated_completion=validation.estimated_completion,
    )


# CI polls the status of its build all the time: that read is one prepared SQL statement instead
# of an ORM query, which costs several times more in Python than PostgreSQL takes to answer it.
# Only the models' table names are formatted into these statements.
_STATUS_SELECT = (
    "SELECT v.id, v.build_id, e.name, v.git_hash, s.name, v.status, v.verdict, v.deployment_allowed,"  # noqa: S608
    " v.would_block, v.status_reason, v.report, v.blocking_reasons, v.created_at, v.started_at,"
    " v.finished_at, v.progress, v.estimated_completion"
    f" FROM {Validation._meta.db_table} v"
    f" JOIN {Environment._meta.db_table} e ON e.id = v.environment_id"
    f" LEFT JOIN {Scenario._meta.db_table} s ON s.id = v.scenario_id"
)
_STATUS_BY_BUILD = (
    _STATUS_SELECT + " WHERE v.project_id = %s AND v.build_id = %s ORDER BY v.created_at DESC LIMIT 1"
)
_STATUS_BY_BUILD_AND_ENVIRONMENT = (
    _STATUS_SELECT
    + " WHERE v.project_id = %s AND v.build_id = %s AND e.name = %s ORDER BY v.created_at DESC LIMIT 1"
)
_STATUS_BY_ID = _STATUS_SELECT + " WHERE v.id = %s"


def _as_datetime(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value).replace(tzinfo=UTC)  # SQLite keeps UTC as text


def _as_json(value):
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _status_row(project: Project, row) -> StatusRow | None:
    if row is None:
        return None
    (
        pk,
        build_id,
        environment,
        git_hash,
        scenario,
        status,
        verdict,
        allowed,
        would_block,
        reason,
        report,
        blocking,
        created_at,
        started_at,
        finished_at,
        progress,
        estimated_completion,
    ) = row
    return StatusRow(
        id=str(pk if isinstance(pk, uuid.UUID) else uuid.UUID(pk)),
        project=project.slug,
        build_id=build_id,
        environment=environment,
        git_hash=git_hash,
        scenario=scenario,
        status=status,
        verdict=verdict,
        deployment_allowed=None if allowed is None else bool(allowed),
        would_block=bool(would_block),
        status_reason=reason,
        report=_as_json(report),
        blocking_reasons=_as_json(blocking),
        created_at=_as_datetime(created_at),
        started_at=_as_datetime(started_at),
        finished_at=_as_datetime(finished_at),
        progress=_as_json(progress),
        estimated_completion=_as_datetime(estimated_completion),
    )


def status_row_for_build(project: Project, build_id: str, environment_name: str | None = None) -> StatusRow:
    """The latest validation of a build as its status document shows it. Raises NotFound."""
    with connection.cursor() as cursor:
        if environment_name:
            cursor.execute(_STATUS_BY_BUILD_AND_ENVIRONMENT, [project.pk, build_id, environment_name])
        else:
            cursor.execute(_STATUS_BY_BUILD, [project.pk, build_id])
        row = _status_row(project, cursor.fetchone())
    if row is None:
        raise NotFound(_no_validation(project, build_id, environment_name))
    return row


def status_wait(project: Project, row: StatusRow, seconds: float, poll_seconds: float = 0.25) -> StatusRow:
    """Long-poll: the row as soon as it leaves queued/running, or as it is after ``seconds``."""
    deadline = time.monotonic() + seconds
    pk = uuid.UUID(row.id) if connection.vendor == "postgresql" else uuid.UUID(row.id).hex
    while row.is_pending and time.monotonic() < deadline:
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))
        with connection.cursor() as cursor:
            cursor.execute(_STATUS_BY_ID, [pk])
            row = _status_row(project, cursor.fetchone()) or row
    return row


@functools.lru_cache(maxsize=4096)
def _links(project: str, environment: str, build_id: str, validation_id: str) -> dict:
    scope = urlencode({"project": project, "environment": environment})
    return {
        "status": f"{reverse('api:status', args=[build_id])}?{scope}",
        "regression": f"{reverse('api:regression')}?{scope}&{urlencode({'buildId': build_id})}",
        "admin": reverse("admin:gates_validation_change", args=[validation_id]),
        "chart": reverse("validation-chart", args=[validation_id]),
    }


def status_document(row: StatusRow) -> dict:
    """Everything CI sees about a validation, in the API's shape."""
    return {
        "validationId": row.id,
        "project": row.project,
        "buildId": row.build_id,
        "environment": row.environment,
        "gitHash": row.git_hash,
        "scenario": row.scenario,
        "status": row.status,
        "verdict": row.verdict or None,
        "deploymentAllowed": row.deployment_allowed,
        "wouldBlock": row.would_block,
        "statusReason": row.status_reason,
        "metrics": row.report.get("metrics", {}),
        "checks": row.report.get("checks", []),
        "blockingReasons": row.blocking_reasons,
        # Progress is shown while the test runs; afterwards it is history, and the times tell it.
        "progress": (row.progress or None) if row.status == Validation.Status.RUNNING else None,
        "estimatedCompletion": row.estimated_completion if row.is_pending else None,
        "createdAt": row.created_at,
        "startedAt": row.started_at,
        "finishedAt": row.finished_at,
        "links": dict(_links(row.project, row.environment, row.build_id, row.id)),
    }


def validation_document(validation: Validation) -> dict:
    return status_document(status_row_of(validation))


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
        # A range on the index (created_at at most the cursor's), then the few rows of the same
        # instant already shown are dropped: an OR of the two conditions would defeat the index.
        validations = validations.filter(created_at__lte=created_at).exclude(
            created_at=created_at, pk__gte=pk
        )
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


def chart_of(
    validation: Validation, metric: str = "http_req_duration", aggregation: str = "p(95)", points: int = 30
) -> dict:
    """What the history chart of a validation shows: the metric over the last validations of
    its project, environment and scenario (up to and including it), its baseline band and the
    fail limit its check used."""
    from baselines.models import BaselineMetric
    from baselines.selectors import baseline_active
    from gates.charts import Band, Point

    history = list(
        Validation.objects.filter(
            project=validation.project,
            environment=validation.environment,
            scenario=validation.scenario,
            created_at__lte=validation.created_at,
        )
        .order_by("-created_at")
        .values_list("pk", "build_id", "status")[:points]
    )[::-1]
    values = dict(
        MetricObservation.objects.filter(
            run__validation__in=[pk for pk, _, _ in history], series=metric, aggregation=aggregation
        )
        .order_by("run__created_at")
        .values_list("run__validation_id", "value")
    )
    baseline = validation.baseline or baseline_active(
        validation.project, validation.environment, validation.scenario
    )
    band = None
    if baseline is not None:
        reference = BaselineMetric.objects.filter(
            baseline=baseline, series=metric, aggregation=aggregation
        ).first()
        if reference is not None:
            band = Band(
                low=reference.minimum, high=reference.maximum, mean=reference.value, version=baseline.version
            )
    limit = next(
        (
            c["limit"]
            for c in validation.report.get("checks", [])
            if c.get("metric") == metric
            and c.get("aggregation") == aggregation
            and c.get("kind") == "relative"
            and c.get("limit") is not None
        ),
        None,
    )
    unit = "ms" if metric.endswith("duration") else ""
    return {
        "title": f"{metric} {aggregation} — {validation.project.slug}/{validation.environment.name}/"
        f"{validation.scenario.name if validation.scenario else '—'}",
        "unit": unit,
        "points": [
            Point(label=build, value=values.get(pk), status=status, current=pk == validation.pk)
            for pk, build, status in history
        ],
        "band": band,
        "limit": limit,
    }
