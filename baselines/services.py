"""Baseline state changes: promoting a validation to a new version, pinning one.

What a baseline is decides which builds pass, so a person changes baselines with the right that
guards thresholds, ``change_thresholds`` on the project (``gates.permissions``). Ops tokens
(``POST …/baseline``) were authorised by their role; automatic promotion acts as perfgate.

Locks follow the global order (``gates.services.validations``): the source validation, then the
scenario row, which numbers the versions of its baselines and guards their pins, then baseline
rows, and the audit chain last. A promotion therefore waits for a block of the same build (and is
refused after it) instead of deadlocking with it.
"""

from __future__ import annotations

from collections import defaultdict

from django.conf import settings
from django.db.models import Max

from baselines import stats
from baselines.models import Baseline, BaselineMetric
from baselines.selectors import baseline_active
from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, NotFound, ServiceError
from gates.models import Environment, MetricObservation, Project, Validation, Verdict
from gates.permissions import require_right
from gates.registry import Change
from gates.services import validation_request
from gates.services.validations import atomic_retried, lock_scenario, lock_validation

PROMOTABLE_VERDICTS = (Verdict.PASS, Verdict.WARN)


def _eligible_runs(runs):
    """Only runs whose validation passed or warned, on its own merits, enter a baseline: a
    blocked, failed (errored, cancelled) or bypassed run never does, even if it was eligible once,
    and neither does a shadow-mode fail or a fail-open inconclusive, which passed by policy only."""
    return runs.filter(
        validation__status=Validation.Status.PASSED, validation__verdict__in=PROMOTABLE_VERDICTS
    )


@atomic_retried
def baseline_promote(
    *, validation: Validation, actor: Actor, pin: bool = False, reason: str = ""
) -> Baseline:
    """Make a new baseline version from a validation that passed or warned.

    The version keeps a window of recent eligible runs: the validation's runs plus the most
    recent eligible runs of the version before it, up to ``PERFGATE_BASELINE_WINDOW`` runs, so the
    noise model has many runs to measure run-to-run noise with. Each metric stores the centre of
    its runs (their median, which a few wild runs do not move), its noise, and the per-run values
    oldest first. Each call makes a new version; ``pin`` also pins it. The validation is locked
    before its status is read, so a build blocked a moment earlier is refused, not promoted.
    """
    validation = lock_validation(validation.pk, "project", "environment", "scenario")
    require_right(actor, "change_thresholds", validation.project, to="make baselines")
    if validation.status != Validation.Status.PASSED or validation.verdict not in PROMOTABLE_VERDICTS:
        raise InvalidState(
            f"Only a passed validation can become a baseline; build {validation.build_id} is "
            f"{validation.status} (verdict {validation.verdict or 'none'})."
        )
    if validation.scenario is None:
        raise InvalidState(f"Build {validation.build_id} ran no scenario, so it cannot be a baseline.")
    # Versions of one scenario are numbered one after another: take the scenario's row lock.
    lock_scenario(validation.scenario_id)
    scope = {
        "project": validation.project,
        "environment": validation.environment,
        "scenario": validation.scenario,
    }

    window = settings.PERFGATE_BASELINE_WINDOW
    runs = list(_eligible_runs(validation.runs.all()).order_by("-created_at", "-pk")[:window])
    previous = baseline_active(**scope)
    if previous is not None:
        earlier = _eligible_runs(previous.runs.exclude(pk__in=[r.pk for r in runs])).order_by(
            "-created_at", "-pk"
        )
        runs.extend(earlier[: max(0, window - len(runs))])
    if not runs:
        raise InvalidState(f"Build {validation.build_id} has no runs to build a baseline from.")
    # Oldest first: the per-run values keep the order the runs happened in (drift shows in it).
    runs.sort(key=lambda run: (run.created_at, run.pk))

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

    position = {run.pk: index for index, run in enumerate(runs)}
    values = defaultdict(list)
    units = {}
    observations = MetricObservation.objects.filter(run__in=runs).values_list(
        "run_id", "series", "metric", "aggregation", "unit", "value"
    )
    for _run, series, metric, aggregation, unit, value in sorted(
        observations, key=lambda row: position[row[0]]
    ):
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
                value=summary["centre"],
                noise=summary["noise"],
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


@atomic_retried
def baseline_pin(*, baseline: Baseline, actor: Actor, reason: str = "") -> Baseline:
    """Make this version the active one until it is unpinned, whatever newer versions appear.
    A person needs ``change_thresholds`` on the project."""
    require_right(actor, "change_thresholds", baseline.project, to="pin baselines")
    lock_scenario(baseline.scenario_id)  # the pins of its baselines change one at a time
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


@atomic_retried
def baseline_unpin(*, baseline: Baseline, actor: Actor, reason: str = "") -> Baseline:
    """Go back to following the newest version. A person needs ``change_thresholds`` on the
    project."""
    require_right(actor, "change_thresholds", baseline.project, to="unpin baselines")
    lock_scenario(baseline.scenario_id)
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
    """Registered with the gate (``BaselinesConfig.ready``): a validation that finished passed,
    with verdict pass or warn, becomes the next baseline version in the same transaction, when
    its environment baselines automatically.

    Warned runs enter too: a baseline fed only by the runs that passed every check would keep the
    fast half of the noise and drift towards the fastest runs, so ordinary noise would start to
    fail. A real slowdown is not absorbed by one run either: the window of
    ``PERFGATE_BASELINE_WINDOW`` runs and its median move only when many runs move. A check that
    could not be evaluated (an info rule whose series is missing: ``error``) does not stop it; the
    metrics the run has form the baseline. Blocked, failed (errored or cancelled) and bypassed
    validations never enter, and a shadow-mode fail is verdict ``fail``, so it does not either.
    """
    if change != Change.FINISHED or not validation.environment.auto_baseline:
        return
    if validation.status != Validation.Status.PASSED or validation.verdict not in PROMOTABLE_VERDICTS:
        return
    if validation.scenario_id is None or not validation.runs.exists():
        return
    baseline_promote(validation=validation, actor=SYSTEM, reason=f"automatic: verdict {validation.verdict}")
