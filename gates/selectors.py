"""Reads that take more than one query: a build's latest validation, a page of history, a
validation next to its baseline, what its chart shows, and how often each rule would have blocked."""

from __future__ import annotations

import base64
import functools
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import connection
from django.db.models import Count, Max, Q

from baselines.models import BaselineMetric
from baselines.selectors import baseline_active
from gates import rules
from gates.charts import Band, Point
from gates.documents import SUMMARY_METRICS
from gates.errors import NotFound, ServiceError
from gates.models import CheckResult, Environment, MetricObservation, Project, Scenario, Validation
from gates.plans import scenario_for


def validation_for_build(project: Project, build_id: str, environment_name: str | None = None) -> Validation:
    """The latest validation of a build (in one environment, or in any), with its project, and
    its environment and scenario by name (their other fields load when read). Raises NotFound.

    CI polls this all the time, and compiling the ORM's query costs several times what the
    database takes to answer it, so it is one SQL statement built once from the model: every
    column of the validation, whatever fields it gains, turned into a model instance by the
    fields' own converters.
    """
    statement = _BY_BUILD_AND_ENVIRONMENT if environment_name else _BY_BUILD
    params = [project.pk, build_id, environment_name] if environment_name else [project.pk, build_id]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
    if row is None:
        raise NotFound(_no_validation(project, build_id, environment_name))
    return _validation_of_row(project, row)


# What a request asked for is not part of what CI reads back: those columns load only if read.
_FIELDS = [f for f in Validation._meta.concrete_fields if f.name not in ("test_config", "deployment_context")]
_COLUMNS = ", ".join(f"v.{connection.ops.quote_name(field.column)}" for field in _FIELDS)
_BY_BUILD = (
    f"SELECT {_COLUMNS}, e.name, s.name"  # noqa: S608 - only the models' own names are formatted in
    f" FROM {Validation._meta.db_table} v"
    f" JOIN {Environment._meta.db_table} e ON e.id = v.environment_id"
    f" LEFT JOIN {Scenario._meta.db_table} s ON s.id = v.scenario_id"
    " WHERE v.project_id = %s AND v.build_id = %s"
)
_BY_BUILD_AND_ENVIRONMENT = _BY_BUILD + " AND e.name = %s ORDER BY v.created_at DESC LIMIT 1"
_BY_BUILD += " ORDER BY v.created_at DESC LIMIT 1"


@functools.cache
def _converters(vendor: str) -> list[tuple[list, object]]:
    """What the ORM does to each column it reads (JSON text to objects, SQLite's text to UUIDs
    and datetimes), per field, for this database."""
    converters = []
    for field in _FIELDS:
        column = field.get_col(Validation._meta.db_table)
        converters.append(
            (connection.ops.get_db_converters(column) + column.get_db_converters(connection), column)
        )
    return converters


def _validation_of_row(project: Project, row) -> Validation:
    values = list(row[: len(_FIELDS)])
    for index, (converters, column) in enumerate(_converters(connection.vendor)):
        for convert in converters:
            values[index] = convert(values[index], column, connection)
    validation = Validation.from_db(connection.alias, [field.attname for field in _FIELDS], values)
    environment_name, scenario_name = row[len(_FIELDS) :]
    validation.project = project
    validation.environment = _named(Environment, validation.environment_id, project, environment_name)
    validation.scenario = _named(Scenario, validation.scenario_id, project, scenario_name)
    return validation


def _named(model, pk, project: Project, name: str | None):
    """A row of ``model`` known by its id and name; its other fields are loaded if read."""
    if pk is None:
        return None
    instance = model.from_db(connection.alias, ["id", "project_id", "name"], [pk, project.pk, name])
    instance.project = project
    return instance


def _no_validation(project: Project, build_id: str, environment_name: str | None) -> str:
    where = f"{project.slug}/{environment_name}" if environment_name else project.slug
    return f"No validation of build {build_id!r} in {where}."


def validation_status(validation_id) -> str | None:
    """A validation's status as it is now (one column), or None if there is no such validation."""
    return Validation.objects.filter(pk=validation_id).values_list("status", flat=True).first()


def validation_reread(validation: Validation) -> Validation:
    """The validation as it is now, with what its status document shows of its relations."""
    return Validation.objects.select_related("project", "environment", "scenario").get(pk=validation.pk)


def _encode_cursor(created_at: datetime, pk) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{pk}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor holds; anything else, even well encoded, is a 400 before it
    reaches a query (an id that is not a UUID would fail there, as a 500)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, pk = text.split("|", 1)
        return datetime.fromisoformat(created_at), uuid.UUID(pk)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError(
            "The cursor is not one this API gave out.", fields={"cursor": ["Invalid cursor."]}
        ) from None


def history_page(
    *,
    project: Project,
    environments: list[str] | None = None,
    scenario: str | None = None,
    metric: str | None = None,
    branch: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Validation], str | None]:
    """One page of validations, newest first, each with ``metrics`` ({series: {aggregation:
    value}}): (validations, next cursor or None). ``environments`` limits the page to those
    (None: all), before the page is cut, so a page is only short when it is the last one.

    Keyset pagination on (created_at, id): every page is one index range scan however deep it
    is, where an offset would count every row before it.
    """
    validations = Validation.objects.filter(project=project).select_related("environment", "scenario")
    if environments is not None:
        validations = validations.filter(environment__name__in=environments)
    if scenario:
        found = scenario_for(project, scenario)
        if found is None:
            raise NotFound(f"Project {project.slug} has no scenario {scenario!r}.")
        validations = validations.filter(scenario=found)
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
    for validation in page:
        validation.metrics = metrics.get(validation.pk, {})
    next_cursor = _encode_cursor(page[-1].created_at, page[-1].pk) if more else None
    return page, next_cursor


def regression_report(validation: Validation) -> dict:
    """Every metric of the validation's latest run next to the baseline it was compared with
    (or, before it was compared, the active one)."""
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


@dataclass(frozen=True)
class ShadowFigure:
    """How one rule fared over an environment's recent validations: ``hits`` of ``checked``
    checks would have blocked (a key rule) or failed (an info rule, which cannot block);
    ``last_hit`` is when it last happened."""

    label: str
    scenario: str
    severity: str
    hits: int
    checked: int
    last_hit: datetime | None

    @property
    def would_block(self) -> bool:
        return self.severity == rules.Severity.KEY


def shadow_figures(environment: Environment, last: int | None = None) -> list[ShadowFigure]:
    """Per rule (by its label and scenario), how often it would have blocked over the
    environment's last ``last`` finished validations (``PERFGATE_SHADOW_WINDOW``), so ops can tune
    a rule before enforcing it: a key check whose verdict the environment's policy blocks (fail;
    with fail-closed, error and inconclusive too), and for an info rule a fail. One aggregate
    query over the check results of those validations; the most frequent first."""
    last = settings.PERFGATE_SHADOW_WINDOW if last is None else last
    recent = (
        Validation.objects.filter(project_id=environment.project_id, environment=environment)
        .exclude(status__in=Validation.PENDING_STATUSES)
        .order_by("-created_at")
        .values("pk")[:last]
    )
    blocking = [verdict for verdict in rules.Verdict.values if environment.would_block(verdict)]
    hit = Q(severity=rules.Severity.KEY, verdict__in=blocking) | Q(
        severity=rules.Severity.INFO, verdict=rules.Verdict.FAIL
    )
    rows = (
        CheckResult.objects.filter(validation__in=recent)
        .values("label", "validation__scenario__name", "severity")
        .annotate(
            hits=Count("pk", filter=hit),
            checked=Count("pk"),
            last_hit=Max("validation__created_at", filter=hit),
        )
        .order_by("-hits", "validation__scenario__name", "label", "severity")
    )
    return [
        ShadowFigure(
            label=row["label"],
            scenario=row["validation__scenario__name"] or "",
            severity=row["severity"],
            hits=row["hits"],
            checked=row["checked"],
            last_hit=row["last_hit"],
        )
        for row in rows
    ]
