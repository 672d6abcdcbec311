"""Baseline state changes: promoting a validation to a new version, pinning one.

What a baseline is decides which builds pass, so a person changes baselines with the right that
guards thresholds, ``change_thresholds`` on the project (``gates.permissions``). Ops tokens
(``POST …/baseline``) were authorised by their role; automatic promotion acts as perfgate.
"""

from __future__ import annotations

from collections import defaultdict

from django.conf import settings
from django.db import transaction
from django.db.models import Max

from baselines import stats
from baselines.models import Baseline, BaselineMetric
from baselines.selectors import baseline_active
from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, NotFound, ServiceError
from gates.models import Environment, MetricObservation, Project, Scenario, Validation, Verdict
from gates.permissions import require_right
from gates.registry import Change
from gates.services import validation_request

PROMOTABLE_VERDICTS = (Verdict.PASS, Verdict.WARN)


def _eligible_runs(runs):
    """Only runs whose validation passed, on its own merits, enter a baseline: a blocked,
    failed or bypassed run never does, even if it was eligible once."""
    return runs.filter(
        validation__status=Validation.Status.PASSED, validation__verdict__in=PROMOTABLE_VERDICTS
    )


@transaction.atomic
def baseline_promote(
    *, validation: Validation, actor: Actor, pin: bool = False, reason: str = ""
) -> Baseline:
    """Make a new baseline version from a passed validation.

    The version is built from the validation's runs plus the most recent eligible runs of the
    version before it, up to ``PERFGATE_BASELINE_WINDOW`` runs, so the significance test has
    several runs to measure noise with. Each call makes a new version; ``pin`` also pins it.
    """
    validation = Validation.objects.select_related("project", "environment", "scenario").get(pk=validation.pk)
    require_right(actor, "change_thresholds", validation.project, to="make baselines")
    if validation.status != Validation.Status.PASSED or validation.verdict not in PROMOTABLE_VERDICTS:
        raise InvalidState(
            f"Only a passed validation can become a baseline; build {validation.build_id} is "
            f"{validation.status} (verdict {validation.verdict or 'none'})."
        )
    if validation.scenario is None:
        raise InvalidState(f"Build {validation.build_id} ran no scenario, so it cannot be a baseline.")
    # Versions of one scenario are numbered one after another: take the scenario's row lock.
    Scenario.objects.select_for_update().get(pk=validation.scenario_id)
    scope = {
        "project": validation.project,
        "environment": validation.environment,
        "scenario": validation.scenario,
    }

    window = settings.PERFGATE_BASELINE_WINDOW
    runs = list(_eligible_runs(validation.runs.all()).order_by("-created_at")[:window])
    previous = baseline_active(**scope)
    if previous is not None:
        earlier = _eligible_runs(previous.runs.exclude(pk__in=[r.pk for r in runs])).order_by("-created_at")
        runs.extend(earlier[: max(0, window - len(runs))])
    if not runs:
        raise InvalidState(f"Build {validation.build_id} has no runs to build a baseline from.")

    version = (Baseline.objects.filter(**scope).aggregate(Max("version"))["version__max"] or 0) + 1
    if pin:
        Baseline.objects.filter(**scope, pinned=True).update(pinned=False)
    baseline = Baseline.objects.create(
        **scope,
        version=version,
        source_validation=validation,
        pinned=pin,
        created_by=actor.label,
        note=reason,
    )
    baseline.runs.set(runs)

    values = defaultdict(list)
    units = {}
    observations = MetricObservation.objects.filter(run__in=runs).values_list(
        "series", "metric", "aggregation", "unit", "value"
    )
    for series, metric, aggregation, unit, value in observations:
        values[(series, metric, aggregation)].append(value)
        units[(series, metric, aggregation)] = unit
    BaselineMetric.objects.bulk_create(
        [
            BaselineMetric(
                baseline=baseline,
                series=series,
                metric=metric,
                aggregation=aggregation,
                unit=units[(series, metric, aggregation)],
                value=summary["mean"],
                stdev=summary["stdev"],
                minimum=summary["min"],
                maximum=summary["max"],
                run_values=run_values,
            )
            for (series, metric, aggregation), run_values in values.items()
            for summary in [stats.summarize(run_values)]
        ],
        batch_size=500,
    )
    audit_record(
        action="baseline.promoted",
        actor=actor,
        target=baseline,
        project=validation.project.slug,
        environment=validation.environment.name,
        reason=reason,
        data={
            "version": version,
            "scenario": validation.scenario.name,
            "pinned": pin,
            "source_validation": str(validation.pk),
            "build_id": validation.build_id,
            "runs": [r.pk for r in runs],
            "metrics": len(values),
            "previous_version": previous.version if previous else None,
        },
    )
    return baseline


@transaction.atomic
def baseline_pin(*, baseline: Baseline, actor: Actor, reason: str = "") -> Baseline:
    """Make this version the active one until it is unpinned, whatever newer versions appear.
    A person needs ``change_thresholds`` on the project."""
    require_right(actor, "change_thresholds", baseline.project, to="pin baselines")
    scope = {
        "project_id": baseline.project_id,
        "environment_id": baseline.environment_id,
        "scenario_id": baseline.scenario_id,
    }
    Baseline.objects.filter(**scope, pinned=True).exclude(pk=baseline.pk).update(pinned=False)
    Baseline.objects.filter(pk=baseline.pk).update(pinned=True)
    baseline.pinned = True
    audit_record(
        action="baseline.pinned",
        actor=actor,
        target=baseline,
        project=baseline.project.slug,
        environment=baseline.environment.name,
        reason=reason,
        data={"version": baseline.version},
    )
    return baseline


@transaction.atomic
def baseline_unpin(*, baseline: Baseline, actor: Actor, reason: str = "") -> Baseline:
    """Go back to following the newest version. A person needs ``change_thresholds`` on the
    project."""
    require_right(actor, "change_thresholds", baseline.project, to="unpin baselines")
    Baseline.objects.filter(pk=baseline.pk).update(pinned=False)
    baseline.pinned = False
    audit_record(
        action="baseline.unpinned",
        actor=actor,
        target=baseline,
        project=baseline.project.slug,
        environment=baseline.environment.name,
        reason=reason,
        data={"version": baseline.version},
    )
    return baseline


def baseline_request(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    actor: Actor,
    pin: bool = False,
    reason: str = "",
    git_hash: str = "",
    results=None,
    results_format: str | None = None,
    test_config: dict | None = None,
) -> Baseline:
    """Ops' "make this the baseline": a new version from a build's passed validation, or from
    results uploaded with the request (evaluated first, like any upload; only a pass counts)."""
    require_right(actor, "change_thresholds", project, to="make baselines")
    if results is not None:
        if not git_hash:
            raise ServiceError(
                "gitHash is required with results.", fields={"gitHash": ["Required with results."]}
            )
        validation, _ = validation_request(
            project=project,
            environment=environment,
            build_id=build_id,
            git_hash=git_hash,
            actor=actor,
            test_config=test_config,
            results=results,
            results_format=results_format,
        )
    else:
        validation = Validation.objects.of_build(project, environment, build_id)
        if validation is None:
            raise NotFound(f"No validation of build {build_id!r} in {project.slug}/{environment.name}.")
    return baseline_promote(validation=validation, actor=actor, pin=pin, reason=reason)


def baseline_follow(validation: Validation, change: Change) -> None:
    """Registered with the gate (``BaselinesConfig.ready``): a validation that just passed with
    every check passing becomes the next baseline version, in the same transaction, when its
    environment baselines automatically. Relative rules that had no baseline yet count as
    passing, so the first good build seeds the baseline; a warning of any other kind is left for
    ops to promote by hand, since absorbing every +4% would let a service drift slower unnoticed."""
    if change != Change.FINISHED or not validation.environment.auto_baseline:
        return
    if validation.status != Validation.Status.PASSED:
        return
    checks = (validation.report or {}).get("checks", [])
    if checks and all(check["verdict"] in (Verdict.PASS, Verdict.NO_BASELINE) for check in checks):
        baseline_promote(validation=validation, actor=SYSTEM, reason="automatic: every check passed")
