"""Reads that take more than one query: a build's latest validation, a page of history, a
validation next to its baseline, what its chart shows, and how often each rule would have blocked."""

from __future__ import annotations

import base64
import functools
import math
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection
from django.db.models import Count, F, Max, Q, Window
from django.db.models.functions import RowNumber
from django.utils import timezone
from scipy.stats import t as t_distribution

from baselines import stats
from baselines.models import Baseline, BaselineMetric
from baselines.selectors import baseline_active
from gates import rules
from gates.charts import ABInterval, BaselineRuns, Point, PredictionBand, Quantile, QuantileRange
from gates.documents import SUMMARY_METRICS
from gates.errors import NotFound, ServiceError
from gates.models import (
    BypassRequest,
    CheckResult,
    Environment,
    MetricObservation,
    Project,
    Rollback,
    Scenario,
    ThresholdRule,
    Validation,
    Watch,
)
from gates.permissions import users_with_right, visible_projects
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
    """What the history chart of a validation shows (``gates.charts.history_svg``'s arguments):
    the metric over the last validations of its project, environment and scenario (up to and
    including it), the runs of the baseline it was compared with, and the numbers its check
    decided with: the fail threshold, and history mode's prediction band or, when the gate ran A
    and B side by side, the A/B interval."""
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
    observed = {
        validation_id: (value, kind)
        for validation_id, value, kind in MetricObservation.objects.filter(
            run__validation__in=[pk for pk, _, _ in history], series=metric, aggregation=aggregation
        )
        .order_by("run__created_at")
        .values_list("run__validation_id", "value", "kind")
    }
    check = next(
        (
            c
            for c in (validation.report or {}).get("checks", [])
            if c.get("metric") == metric
            and c.get("aggregation") == aggregation
            and c.get("kind") == "relative"
        ),
        None,
    )
    worse = _worse_direction(check, metric, aggregation, next(iter(observed.values()), (None, ""))[1])
    runs, band = _baseline_runs(validation, metric, aggregation, worse)
    interval = _ab_interval(validation, check, worse)
    unit = "ms" if metric.endswith("duration") else ""
    return {
        "title": f"{metric} {aggregation} — {validation.project.slug}/{validation.environment.name}/"
        f"{validation.scenario.name if validation.scenario else '—'}",
        "unit": unit,
        "points": [
            Point(
                label=build,
                value=observed.get(pk, (None, ""))[0],
                status=status,
                current=pk == validation.pk,
            )
            for pk, build, status in history
        ],
        "baseline": runs,
        "band": None if interval is not None else band,
        "limit": check.get("limit") if check else None,
        "interval": interval,
    }


def _worse_direction(check: dict | None, metric: str, aggregation: str, kind: str) -> str:
    """Which way the check's metric gets worse: its fail threshold's side of the baseline, else
    the rule grammar's default for the metric."""
    limit, base = (check.get("limit"), check.get("baseline")) if check else (None, None)
    if limit is not None and base is not None and limit != base:
        return "up" if limit > base else "down"
    _, method, _ = rules.parse_aggregation(aggregation)
    return rules.default_direction(metric, kind or "trend", method)


def _baseline_runs(
    validation: Validation, metric: str, aggregation: str, worse: str
) -> tuple[BaselineRuns | None, PredictionBand | None]:
    """The runs of the baseline the validation was compared with (before it was decided, the
    active one), and history mode's prediction band over them, as ``rules`` computes the p-value:
    the noise model of the runs, its one-sided Student's t bound at the false-block rate."""
    baseline = validation.baseline or baseline_active(
        validation.project, validation.environment, validation.scenario
    )
    if baseline is None:
        return None, None
    reference = BaselineMetric.objects.filter(
        baseline=baseline, series=metric, aggregation=aggregation
    ).first()
    if reference is None:
        return None, None
    values = tuple(float(v) for v in reference.run_values)
    runs = BaselineRuns(version=baseline.version, centre=reference.value, runs=values)
    try:
        model = stats.noise_model(values)
    except ValueError:  # a value that is not finite: the check said so, no band to show
        return runs, None
    if model is None:
        return runs, None
    alpha = settings.PERFGATE_FALSE_BLOCK_RATE
    margin = float(t_distribution.ppf(1 - alpha, model.df)) * model.scale
    if model.log:
        low, high = model.centre * math.exp(-margin), model.centre * math.exp(margin)
    else:
        low, high = model.centre - margin, model.centre + margin
    band = PredictionBand(low=low, high=high, false_block_rate=alpha, runs=model.n, worse=worse)
    return runs, band


# How ``gates.loadtest.ab.ABCheck.describe`` words the interval in a paired check's reason.
_AB_REASON = re.compile(
    r"over the reference in (?P<pairs>\d+) ABBA pairs \(interval (?P<low>[+-]?(?:[\d.]+|∞))% to "
    r"(?P<high>[+-]?(?:[\d.]+|∞))%"
)


def _ab_interval(validation: Validation, check: dict | None, worse: str) -> ABInterval | None:
    """Gate-run mode's interval of the change, from the check the A/B comparison decided: its
    reason keeps the interval (``ABCheck.describe``), its baseline the reference's median."""
    if check is None or "comparison" not in (validation.report or {}) or check.get("baseline") is None:
        return None
    match = _AB_REASON.search(check.get("reason") or "")
    if match is None:
        return None

    def pct(text: str) -> float | None:
        return None if "∞" in text else float(text)

    reference = float(check["baseline"])

    def value(change_pct: float | None) -> float | None:
        """The metric's value at a change (worse is positive) from the reference; None when
        unbounded."""
        if change_pct is None:
            return None
        ratio = 1 + change_pct / 100
        if worse == "up":
            return reference * ratio
        return reference / ratio if ratio > 0 else None

    low_pct, high_pct, change_pct = pct(match["low"]), pct(match["high"]), check.get("changePct")
    worst, best = value(high_pct), value(low_pct)
    return ABInterval(
        reference=reference,
        estimate=value(change_pct) if change_pct is not None else float(check.get("observed") or reference),
        low=best if worse == "up" else worst,
        high=worst if worse == "up" else best,
        level=1 - 2 * settings.PERFGATE_AB_ALPHA,
        pairs=int(match["pairs"]),
        change_pct=change_pct,
        low_pct=low_pct,
        high_pct=high_pct,
    )


def distribution_of(validation: Validation, metric: str = "http_req_duration") -> dict:
    """What the distribution chart of a validation shows (``gates.charts.distribution_svg``'s
    arguments): the stored percentiles of its latest run (perfgate keeps percentiles, not raw
    samples) against the same percentiles of its baseline: their median over its runs, and the
    lowest and highest run."""
    run = validation.runs.order_by("-created_at").first()
    quantiles = []
    if run is not None:
        for aggregation, value in run.observations.filter(series=metric).values_list("aggregation", "value"):
            level = _quantile_level(aggregation)
            if level is not None:
                quantiles.append(Quantile(level=level, label=_quantile_label(aggregation), value=value))
    baseline = validation.baseline or baseline_active(
        validation.project, validation.environment, validation.scenario
    )
    ranges = []
    if baseline is not None:
        for row in BaselineMetric.objects.filter(baseline=baseline, series=metric):
            level = _quantile_level(row.aggregation)
            if level is not None:
                ranges.append(
                    QuantileRange(
                        level=level,
                        label=_quantile_label(row.aggregation),
                        centre=row.value,
                        low=row.minimum,
                        high=row.maximum,
                    )
                )
    # One point a level: k6's "med" and a requested "p(50)" are the same percentile.
    quantiles = list({q.level: q for q in sorted(quantiles, key=lambda q: q.label != "p50")}.values())
    ranges = list({q.level: q for q in sorted(ranges, key=lambda q: q.label != "p50")}.values())
    return {
        "title": f"{metric} distribution — build {validation.build_id} against "
        + (f"baseline v{baseline.version}" if baseline is not None else "no baseline"),
        "unit": "ms" if metric.endswith("duration") else "",
        "build": validation.build_id,
        "run": sorted(quantiles, key=lambda q: q.level),
        "baseline": sorted(ranges, key=lambda q: q.level),
        "version": baseline.version if baseline is not None else None,
        "runs": baseline.runs.count() if baseline is not None else 0,
    }


def _quantile_level(aggregation: str) -> float | None:
    """The percentile an aggregation is (min 0, med 50, p(N) N, max 100), or None (avg, count…)."""
    if aggregation in ("min", "med", "max"):
        return {"min": 0.0, "med": 50.0, "max": 100.0}[aggregation]
    match = re.fullmatch(r"p\((\d+(?:\.\d+)?)\)", aggregation)
    return float(match[1]) if match and 0 <= float(match[1]) <= 100 else None


def _quantile_label(aggregation: str) -> str:
    return {"med": "p50"}.get(aggregation, aggregation.replace("(", "").replace(")", ""))


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


DASHBOARD_VALIDATIONS = 5  # the newest validations shown per environment
DASHBOARD_ROLLBACKS = 3  # the newest rollbacks shown per environment
DASHBOARD_ROLLBACK_DAYS = 30  # older ones are history, unless still open
DASHBOARD_METRIC = ("http_req_duration", "p(95)")


@dataclass
class EnvironmentBoard:
    """One environment of a project on the dashboard. ``validations`` are the newest first, each
    with ``key_value`` (p(95) of http_req_duration in ms, or None); ``baseline`` is the active
    baseline's number for the newest validation's scenario (a ``BaselineMetric`` with its
    ``baseline``), or None; each pending bypass carries ``approvers``, the usernames that may
    still approve it; ``blind_rules`` are the relative rules that apply here and have no baseline
    to compare with."""

    environment: Environment
    validations: list[Validation]
    baseline: BaselineMetric | None
    bypasses: list[BypassRequest]
    watches: list[Watch]
    rollbacks: list[Rollback]
    blind_rules: list[ThresholdRule]


@dataclass
class ProjectBoard:
    project: Project
    environments: list[EnvironmentBoard]


def _newest_per(queryset, partition: list[str], order: list, count: int):
    """The first ``count`` rows of each group of ``partition``, in ``order``: one query, however
    long each group's history is."""
    ranked = Window(RowNumber(), partition_by=[F(field) for field in partition], order_by=order)
    return queryset.annotate(dashboard_rank=ranked).filter(dashboard_rank__lte=count)


def dashboard_of(user) -> list[ProjectBoard]:
    """What the dashboard shows ``user``, per project they may see and per environment: the
    newest validations with the key metric, the active baseline's number, pending bypass
    requests with who may approve them, active watches, recent rollbacks, and relative rules
    without a baseline. A fixed number of queries whatever the history, plus the approvers'
    rights for each project with a pending request."""
    projects = list(visible_projects(user).order_by("slug"))
    if not projects:
        return []
    environments = sorted(
        Environment.objects.filter(project__in=projects),
        key=lambda env: (env.project_id, _ENVIRONMENT_ORDER.get(env.name, len(_ENVIRONMENT_ORDER)), env.name),
    )
    metric, aggregation = DASHBOARD_METRIC

    validations = list(
        _newest_per(
            Validation.objects.filter(project__in=projects)
            .select_related("scenario")
            .defer("report", "test_config", "deployment_context", "progress"),
            ["environment_id"],
            [F("created_at").desc(), F("pk").desc()],
            DASHBOARD_VALIDATIONS,
        ).order_by("-created_at", "-pk")
    )
    key_values = dict(
        MetricObservation.objects.filter(
            run__validation__in=[v.pk for v in validations], series=metric, aggregation=aggregation
        )
        .order_by("run__created_at")
        .values_list("run__validation_id", "value")
    )
    for validation in validations:
        validation.key_value = key_values.get(validation.pk)

    active = {
        (b.environment_id, b.scenario_id): b
        for b in _newest_per(
            Baseline.objects.filter(project__in=projects),
            ["environment_id", "scenario_id"],
            [F("pinned").desc(), F("version").desc()],
            1,
        )
    }
    baseline_numbers = {
        (m.baseline.environment_id, m.baseline.scenario_id): m
        for m in BaselineMetric.objects.filter(
            baseline__in=list(active.values()), series=metric, aggregation=aggregation
        ).select_related("baseline")
    }

    bypasses = list(
        BypassRequest.objects.filter(
            project__in=projects, status=BypassRequest.Status.PENDING, expires_at__gt=timezone.now()
        )
        .prefetch_related("approvals")
        .order_by("expires_at")
    )
    holders = {
        project.pk: users_with_right("approve_bypass", project)
        for project in projects
        if any(b.project_id == project.pk for b in bypasses)
    }
    for bypass in bypasses:
        approved = {approval.approver_id for approval in bypass.approvals.all()}
        bypass.approvers = [
            person.get_username()
            for person in holders[bypass.project_id]
            if person.pk not in approved and person.get_username().lower() not in bypass.requester_names
        ]

    watches = list(
        Watch.objects.filter(project__in=projects, state__in=Watch.ACTIVE_STATES)
        .select_related("validation")
        .order_by("-created_at")
    )
    recent = timezone.now() - timedelta(days=DASHBOARD_ROLLBACK_DAYS)
    rollbacks = list(
        _newest_per(
            Rollback.objects.filter(project__in=projects)
            .filter(Q(created_at__gte=recent) | Q(state__in=Rollback.OPEN_STATES))
            .select_related("validation"),
            ["environment_id"],
            [F("created_at").desc(), F("pk").desc()],
            DASHBOARD_ROLLBACKS,
        ).order_by("-created_at", "-pk")
    )
    relative_rules = list(
        ThresholdRule.objects.filter(project__in=projects, kind=ThresholdRule.Kind.RELATIVE)
        .select_related("scenario")
        .prefetch_related("environments")
        .order_by("scenario__name", "metric", "pk")
    )

    boards = {project.pk: ProjectBoard(project=project, environments=[]) for project in projects}
    for environment in environments:
        mine = [v for v in validations if v.environment_id == environment.pk]
        newest_scenario = mine[0].scenario_id if mine else None
        boards[environment.project_id].environments.append(
            EnvironmentBoard(
                environment=environment,
                validations=mine,
                baseline=baseline_numbers.get((environment.pk, newest_scenario)),
                bypasses=[b for b in bypasses if b.environment_id == environment.pk],
                watches=[w for w in watches if w.environment_id == environment.pk],
                rollbacks=[r for r in rollbacks if r.environment_id == environment.pk],
                blind_rules=[
                    rule
                    for rule in relative_rules
                    if rule.project_id == environment.project_id
                    and _applies(rule, environment)
                    and (environment.pk, rule.scenario_id) not in active
                ],
            )
        )
    return list(boards.values())


_ENVIRONMENT_ORDER = {name: index for index, name in enumerate(Environment.Name.values)}


def _applies(rule: ThresholdRule, environment: Environment) -> bool:
    chosen = rule.environments.all()
    return not chosen or any(env.pk == environment.pk for env in chosen)
