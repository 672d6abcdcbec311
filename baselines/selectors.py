"""Reads about baselines: which version is active, its number for one series, and whether the
relative rules of a scenario have gone blind (no baseline for several validations in a row)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.conf import settings
from django.db.models import DateTimeField, Exists, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from baselines.models import Baseline, BaselineMetric
from gates import rules
from gates.models import CheckResult, Validation

NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def baseline_active(project, environment, scenario) -> Baseline | None:
    """The pinned version when ops pinned one, otherwise the newest; None before the first."""
    if scenario is None:
        return None
    versions = Baseline.objects.filter(project=project, environment=environment, scenario=scenario)
    return versions.order_by("-pinned", "-version").first()


def baseline_value_for(baseline: Baseline, series: str, aggregation: str) -> rules.BaselineValue | None:
    """The baseline's centre (the median of its runs) for (series, aggregation), with the per-run
    values behind it, oldest first."""
    metric = BaselineMetric.objects.filter(baseline=baseline, series=series, aggregation=aggregation).first()
    if metric is None:
        return None
    return rules.BaselineValue(value=metric.value, run_values=tuple(metric.run_values))


def blind_since(environment, scenario, *, current_no_baseline: bool) -> datetime | None:
    """When the key relative rules of (environment, scenario) lost sight of a baseline, if they
    have had none for more than ``PERFGATE_BLIND_AFTER`` validations in a row; else None.

    Asked while a validation is decided, before its checks are written: ``current_no_baseline``
    says that one too has a key relative check without a baseline, and it counts as the newest of
    the streak (False: it compared with a baseline, or has no key relative rule, so the rules are
    not blind). Only finished validations with at least one key relative check count; one in
    which every key relative check said ``no_baseline`` continues the streak, any other ends it.
    The answer is the creation time of the streak's oldest validation ("no baseline since …").
    """
    if not current_no_baseline:
        return None
    earlier = settings.PERFGATE_BLIND_AFTER
    if earlier <= 0:
        # The validation being decided is streak enough; it began with an earlier one, if any.
        return _blind_streak_start(environment, scenario, 0) or timezone.now()
    return _blind_streak_start(environment, scenario, earlier)


def blind_now(environment, scenario) -> datetime | None:
    """What the admin shows: the same question as ``blind_since`` about the validations already
    decided, i.e. whether the latest one was decided with its relative rules not active."""
    return _blind_streak_start(environment, scenario, settings.PERFGATE_BLIND_AFTER + 1)


def _blind_streak_start(environment, scenario, needed: int) -> datetime | None:
    """The creation time of the oldest validation of the streak of blind validations that ends
    with the newest finished one, if that streak holds at least ``needed`` of them; else None.

    The first query reads only the newest ``needed`` validations with key relative checks (an
    index range on the scenario's history, stopped by the LIMIT). The second, only when they are
    all blind, finds where the streak began: right after the newest validation that saw a baseline.
    """
    if scenario is None:
        return None
    key_relative = CheckResult.objects.filter(
        validation=OuterRef("pk"), kind=CheckResult.Kind.RELATIVE, severity=rules.Severity.KEY
    )
    decided = (
        Validation.objects.filter(
            project_id=environment.project_id, environment=environment, scenario=scenario
        )
        .exclude(status__in=Validation.PENDING_STATUSES)
        .filter(Exists(key_relative))
    )
    seeing = Exists(key_relative.exclude(verdict=rules.Verdict.NO_BASELINE))
    if needed > 0:
        newest = list(
            decided.annotate(seeing=seeing).order_by("-created_at").values_list("seeing", flat=True)[:needed]
        )
        if len(newest) < needed or any(newest):
            return None
    last_seen = decided.filter(seeing).order_by("-created_at").values("created_at")[:1]
    # One bound for the index range (no OR): before any baseline was seen, the streak is all history.
    after = Coalesce(Subquery(last_seen), Value(NEVER), output_field=DateTimeField())
    return (
        decided.filter(created_at__gt=after)
        .order_by("created_at")
        .values_list("created_at", flat=True)
        .first()
    )


def blind_notice(since: datetime) -> str:
    """The line every check table shows above the checks while the relative rules are blind:
    "relative rules are not active: no baseline since 2026-11-02 14:03 UTC"."""
    return f"relative rules are {not_active_since(since)}"


def not_active_since(since: datetime) -> str:
    """The state of blind relative rules, as the admin shows it next to a scenario."""
    return f"not active: no baseline since {since.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
