"""Watching production after a deploy: starting a watch, its task's lease, recording its probes,
and the alerts that name its deployment.

The counting follows Argo Rollouts' analysis, which users know: a watch is *degraded* when more
than ``failureLimit`` probes failed (only failures in a row when ``consecutive``), *inconclusive*
when more than ``inconclusiveLimit`` were inconclusive, and stops with an error when more than
``consecutiveErrorLimit`` probes in a row could not run. An error is never a failure: a probe that
could not run or measured nothing tells people, and never rolls back. A success or an inconclusive
probe ends a row of failures; an error does not (it says nothing about the deployment).

A degraded watch, or an alert a probe confirmed, decides the one rollback of the watched
deployment (``gates.services.rollbacks``).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from statistics import median

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task

from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, ServiceError
from gates.models import Environment, Notice, Probe, Rollback, Validation, Watch
from gates.permissions import require_right
from gates.services.notices import notice_record, notice_title
from gates.services.rollbacks import rollback_decide
from gates.targets import TargetRefused, check_target_url, ports_of

logger = logging.getLogger(__name__)

# How much longer than the work it covers a watch task's lease lasts.
LEASE_MARGIN_SECONDS = 60


def watch_policy(environment: Environment) -> dict:
    """The environment's watch policy in the names of perfgate.yaml (and Argo Rollouts)."""
    return {
        "scenario": environment.watch_scenario.name if environment.watch_scenario else None,
        "initialDelay": environment.watch_initial_delay_seconds,
        "interval": environment.watch_interval_seconds,
        "window": environment.watch_window_seconds,
        "failureLimit": environment.watch_failure_limit,
        "consecutive": environment.watch_consecutive,
        "inconclusiveLimit": environment.watch_inconclusive_limit,
        "consecutiveErrorLimit": environment.watch_consecutive_error_limit,
        "dryRun": environment.watch_dry_run,
        "autoRollback": environment.auto_rollback,
    }


def lease_seconds(watch: Watch) -> float:
    """A watch task's lease: one interval and one probe, with a margin."""
    return watch.limit("interval") + settings.PERFGATE_PROBE_MAX_SECONDS + LEASE_MARGIN_SECONDS


# --- Starting and ending a watch -----------------------------------------------------------------


@transaction.atomic
def watch_start(
    *,
    validation: Validation,
    actor: Actor,
    source: str,
    deployment_id: str = "",
    deployment_url: str = "",
    extra_hosts: tuple[str, ...] | list[str] = (),
    baseline_url: str = "",
) -> Watch:
    """Start watching the deployment ``validation`` let out, now that it serves production.

    The same validation asked again gets its existing watch. A newer deployment ends the watch of
    the one it replaced (stopped, superseded). The probe baseline is the probes of the previous
    healthy watch; without one, ``baseline_url`` (the previous production deployment, or the
    previous watch's URL) is probed a few times before the first probe. Refused
    (``ServiceError``) when the environment has no watch scenario, when the validation did not
    allow the deployment, or when there is no URL to probe or it is not on the allowlist (the
    project's, and the hosts allowed for this validation only).
    """
    validation = (
        Validation.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "environment__watch_scenario", "scenario")
        .get(pk=validation.pk)
    )
    environment = validation.environment
    existing = validation.watches.order_by("-created_at").first()
    if existing is not None:
        return existing
    scenario = environment.watch_scenario
    if scenario is None:
        raise ServiceError(
            f"Environment {environment} has no watch scenario: set watch.scenario in perfgate.yaml or "
            "the environment's watch scenario in the admin.",
            fields={"environment": ["No watch scenario."]},
        )
    if validation.is_pending or not validation.deployment_allowed:
        raise InvalidState(
            f"Build {validation.build_id} is {validation.status}: "
            "only a deployment perfgate let out is watched."
        )
    target_url = deployment_url or (validation.test_config or {}).get("targetUrl") or scenario.target_url
    if not target_url:
        raise ServiceError(
            "No URL to probe: give the deployment's URL.", fields={"deploymentUrl": ["Required here."]}
        )
    extra_hosts = sorted(set(extra_hosts) | set((validation.test_config or {}).get("extraHosts", [])))
    allowlist = [*validation.project.allowed_hosts, *extra_hosts]
    tested = validation.scenario
    own_ports = ports_of(
        scenario.target_url,
        scenario.reference_url,
        tested.target_url if tested else "",
        tested.reference_url if tested else "",
    )
    for field, url in (("deploymentUrl", target_url), ("baselineUrl", baseline_url)):
        # Production is never probed anywhere the allowlist does not name.
        try:
            if url:
                check_target_url(url, allowlist, own_ports)
        except TargetRefused as exc:
            raise ServiceError(f"{field} refused: {exc}.", fields={field: [str(exc)]}) from None
    now = timezone.now()
    policy = watch_policy(environment)
    for older in Watch.objects.select_for_update(of=("self",), no_key=True).filter(
        environment=environment, state__in=Watch.ACTIVE_STATES
    ):
        _finish(
            older, Watch.State.STOPPED, f"Superseded by the deployment of build {validation.build_id}.", now
        )
        audit_record(
            action="watch.stopped",
            actor=actor,
            target=older,
            project=validation.project.slug,
            environment=environment.name,
            reason="superseded",
            data={"build_id": older.validation.build_id, "by_build_id": validation.build_id},
        )
    baseline, baseline_source = _probe_baseline(environment, scenario)
    if not baseline and not baseline_url:
        previous = (
            Watch.objects.filter(environment=environment, scenario=scenario)
            .exclude(state=Watch.State.DEGRADED)
            .order_by("-created_at")
            .first()
        )
        baseline_url = previous.target_url if previous and previous.target_url != target_url else ""
    first_probe = now + timedelta(seconds=policy["initialDelay"])
    watch = Watch.objects.create(
        validation=validation,
        project=validation.project,
        environment=environment,
        scenario=scenario,
        source=source,
        deployment_id=str(deployment_id or validation.deployment_context.get("deploymentId") or "")[:200],
        target_url=target_url,
        extra_hosts=extra_hosts,
        policy=policy,
        dry_run=policy["dryRun"],
        baseline=baseline,
        baseline_source=baseline_source,
        baseline_url="" if baseline else baseline_url,
        started_by=actor.label,
        next_probe_at=first_probe,
        ends_at=first_probe + timedelta(seconds=policy["window"]),
    )
    audit_record(
        action="watch.started",
        actor=actor,
        target=watch,
        project=validation.project.slug,
        environment=environment.name,
        data={
            "build_id": validation.build_id,
            "source": source,
            "deployment_id": watch.deployment_id,
            "target_url": target_url,
            "policy": policy,
            "baseline": baseline_source,
        },
    )
    transaction.on_commit(lambda: queue_watch(watch.pk))
    return watch


def _probe_baseline(environment: Environment, scenario) -> tuple[dict, str]:
    """The probe baseline: the values of the successful scheduled probes of the newest watch of
    this environment and probe scenario that ended healthy, or that was superseded without a
    failure. Never the pre-deployment validations: they ran a different load."""
    previous = (
        Watch.objects.filter(environment=environment, scenario=scenario)
        .filter(Q(state=Watch.State.HEALTHY) | Q(state=Watch.State.STOPPED, failures=0))
        .filter(probes__outcome=Probe.Outcome.SUCCESS)
        .select_related("validation")
        .order_by("-created_at")
        .first()
    )
    if previous is None:
        return {}, ""
    window = settings.PERFGATE_BASELINE_WINDOW
    values: dict[str, list[float]] = {}
    probes = previous.probes.filter(
        outcome=Probe.Outcome.SUCCESS, trigger__in=[Probe.Trigger.SCHEDULE, Probe.Trigger.BASELINE]
    ).order_by("-number")[:window]
    for probe in reversed(list(probes)):
        for key, value in (probe.values or {}).items():
            values.setdefault(key, []).append(value)
    return values, f"{len(probes)} probes of build {previous.validation.build_id} (watch #{previous.pk})"


def baseline_values(watch: Watch) -> dict:
    """{series|aggregation: (median, run values)} of a watch's probe baseline."""
    return {key: (median(values), tuple(values)) for key, values in (watch.baseline or {}).items() if values}


def queue_watch(watch_pk: int) -> None:
    """After commit: a task runs the watch. When the task broker is unreachable the reaper sends
    it later (a watch without a live lease is taken up again)."""
    try:
        async_task("gates.tasks.watch_run", watch_pk, task_name=f"watch {watch_pk}", group="watches")
    except Exception as exc:
        logger.warning(
            "The task broker is unreachable (%s): watch %s starts later.", exc.__class__.__name__, watch_pk
        )


def watch_claim(*, watch_pk: int, worker: str) -> Watch | None:
    """Take an active watch whose lease is free or expired; None when another task has it."""
    now = timezone.now()
    watch = Watch.objects.filter(pk=watch_pk).first()
    if watch is None or not watch.is_active:
        return None
    claimed = (
        Watch.objects.filter(pk=watch_pk, state__in=Watch.ACTIVE_STATES)
        .filter(Q(lease_expires_at__isnull=True) | Q(lease_expires_at__lt=now) | Q(worker=worker))
        .update(worker=worker, lease_expires_at=now + timedelta(seconds=lease_seconds(watch)))
    )
    return (
        Watch.objects.select_related("project", "environment", "scenario", "validation").get(pk=watch_pk)
        if claimed
        else None
    )


def watch_renew(*, watch: Watch, worker: str) -> bool:
    """Renew the lease; False when the watch is no longer this worker's or no longer active."""
    return bool(
        Watch.objects.filter(pk=watch.pk, worker=worker, state__in=Watch.ACTIVE_STATES).update(
            lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds(watch))
        )
    )


def watch_release(*, watch: Watch, worker: str) -> None:
    """Hand the watch on (the next task claims it at once)."""
    Watch.objects.filter(pk=watch.pk, worker=worker).update(lease_expires_at=None, worker="")


def watch_reap() -> int:
    """Send a task for every active watch no task holds (its task died, or the broker was away
    when it started). Returns how many were sent."""
    now = timezone.now()
    orphans = Watch.objects.filter(state__in=Watch.ACTIVE_STATES).filter(
        Q(lease_expires_at__lt=now)
        | Q(lease_expires_at__isnull=True, created_at__lt=now - timedelta(seconds=60))
    )
    sent = 0
    for pk in orphans.values_list("pk", flat=True)[:100]:
        queue_watch(pk)
        sent += 1
    return sent


def _finish(watch: Watch, state: str, reason: str, now=None) -> None:
    watch.state = state
    watch.state_reason = reason
    watch.finished_at = now or timezone.now()
    watch.lease_expires_at = None
    watch.save(update_fields=["state", "state_reason", "finished_at", "lease_expires_at"])


@transaction.atomic
def watch_conclude(*, watch: Watch) -> Watch:
    """The window ended without a breach: the deployment is healthy (its probes become the next
    deployment's probe baseline)."""
    watch = (
        Watch.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation")
        .get(pk=watch.pk)
    )
    if not watch.is_active:
        return watch
    reason = (
        f"Window over: {watch.probes_run} probes, {watch.failures} failed, {watch.inconclusives} "
        f"inconclusive, {watch.errors} errors."
    )
    _finish(watch, Watch.State.HEALTHY, reason)
    audit_record(
        action="watch.healthy",
        actor=SYSTEM,
        target=watch,
        project=watch.project.slug,
        environment=watch.environment.name,
        data=_counters(watch),
    )
    return watch


@transaction.atomic
def watch_stop(*, watch: Watch, actor: Actor, reason: str) -> Watch:
    """Stop watching, by hand (someone with ``trigger_rollback``)."""
    watch = (
        Watch.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment")
        .get(pk=watch.pk)
    )
    require_right(actor, "trigger_rollback", watch.project, to="stop watches")
    if not watch.is_active:
        raise InvalidState(f"The watch is already {watch.state}.")
    _finish(watch, Watch.State.STOPPED, f"Stopped by {actor.name}: {reason}")
    audit_record(
        action="watch.stopped",
        actor=actor,
        target=watch,
        project=watch.project.slug,
        environment=watch.environment.name,
        reason=reason,
        data=_counters(watch),
    )
    return watch


def _counters(watch: Watch) -> dict:
    return {
        "probes": watch.probes_run,
        "failures": watch.failures,
        "consecutive_failures": watch.consecutive_failures,
        "inconclusive": watch.inconclusives,
        "errors": watch.errors,
        "consecutive_errors": watch.consecutive_errors,
    }


# --- Probes --------------------------------------------------------------------------------------


@transaction.atomic
def probe_record(
    *, watch: Watch, result, trigger: str, target_url: str, started_at, actor: Actor = SYSTEM
) -> Probe:
    """Record one probe (``result``: a ``gates.probes.ProbeResult``) and act on it the way Argo
    Rollouts' analysis does (see the module's docstring). A baseline probe only builds the
    baseline. An alert's probe that fails confirms the alert: the deployment is degraded at once,
    whatever the counters say; one that does not fail is told to people."""
    watch = (
        Watch.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation")
        .get(pk=watch.pk)
    )
    number = (watch.probes.order_by("-number").values_list("number", flat=True).first() or 0) + 1
    probe = Probe.objects.create(
        watch=watch,
        number=number,
        trigger=trigger,
        target_url=target_url,
        outcome=result.outcome,
        verdict=result.verdict,
        reason=result.reason[:5000],
        report=result.report,
        values=result.values,
        duration_seconds=result.duration_seconds,
        started_at=started_at,
    )
    if trigger == Probe.Trigger.BASELINE:
        if result.outcome == Probe.Outcome.SUCCESS:
            for key, value in result.values.items():
                watch.baseline.setdefault(key, []).append(value)
            count = len(next(iter(watch.baseline.values()), []))
            watch.baseline_source = (
                f"{count} probes of the previous deployment ({target_url}) before this one was watched"
            )
            watch.save(update_fields=["baseline", "baseline_source"])
        return probe
    outcome = result.outcome
    watch.probes_run += 1
    if outcome == Probe.Outcome.ERROR:
        watch.errors += 1
        watch.consecutive_errors += 1
    else:
        watch.consecutive_errors = 0
        if outcome == Probe.Outcome.FAILURE:
            watch.failures += 1
            watch.consecutive_failures += 1
        else:
            watch.consecutive_failures = 0
            if outcome == Probe.Outcome.INCONCLUSIVE:
                watch.inconclusives += 1
    if watch.state == Watch.State.WAITING:
        watch.state = Watch.State.WATCHING
    watch.save(
        update_fields=[
            "probes_run",
            "errors",
            "consecutive_errors",
            "failures",
            "consecutive_failures",
            "inconclusives",
            "state",
        ]
    )
    audit_record(
        action="watch.probe",
        actor=actor,
        target=watch,
        project=watch.project.slug,
        environment=watch.environment.name,
        data={
            "number": number,
            "trigger": trigger,
            "outcome": outcome,
            "reason": result.reason[:500],
            **_counters(watch),
        },
    )
    if trigger == Probe.Trigger.ALERT:
        _alert_confirmed_or_not(watch, probe)
        return probe
    if not watch.is_active:
        return probe
    _apply_limits(watch, probe)
    return probe


def _apply_limits(watch: Watch, probe: Probe) -> None:
    failure_limit = watch.limit("failureLimit")
    counted = watch.consecutive_failures if watch.policy.get("consecutive") else watch.failures
    in_a_row = " in a row" if watch.policy.get("consecutive") else ""
    if probe.outcome == Probe.Outcome.FAILURE and counted > failure_limit:
        reason = f"{counted} failed probes{in_a_row} (failureLimit {failure_limit}); the last: {probe.reason}"
        _degrade(watch, reason)
        rollback_decide(watch=watch, trigger=Rollback.Trigger.WATCH, reason=reason, actor=SYSTEM)
        return
    if probe.outcome == Probe.Outcome.INCONCLUSIVE and watch.inconclusives > watch.limit("inconclusiveLimit"):
        reason = (
            f"{watch.inconclusives} inconclusive probes "
            f"(inconclusiveLimit {watch.limit('inconclusiveLimit')}): "
            f"a person decides whether to roll back. The last: {probe.reason}"
        )
        _finish(watch, Watch.State.INCONCLUSIVE, reason)
        _audit_state(watch, "watch.inconclusive", reason)
        notice_record(
            watch=watch,
            kind="watch_inconclusive",
            level=Notice.Level.WARNING,
            title=notice_title(watch, "is inconclusive"),
            text=reason,
        )
        return
    if probe.outcome == Probe.Outcome.ERROR:
        limit = watch.limit("consecutiveErrorLimit")
        if watch.consecutive_errors > limit:
            reason = (
                f"{watch.consecutive_errors} probes in a row could not run (consecutiveErrorLimit {limit}); "
                f"the watch stopped and nothing was rolled back. The last: {probe.reason}"
            )
            _finish(watch, Watch.State.ERRORED, reason)
            _audit_state(watch, "watch.errored", reason)
            notice_record(
                watch=watch,
                kind="watch_errored",
                level=Notice.Level.ERROR,
                title=notice_title(watch, "stopped: probes keep erroring"),
                text=reason,
            )
        elif watch.consecutive_errors == 1:
            notice_record(
                watch=watch,
                kind="probe_error",
                level=Notice.Level.WARNING,
                title=notice_title(watch, "could not be probed"),
                text=f"Probe {probe.number} could not run: {probe.reason}. An error never rolls back; "
                f"after {limit + 1} in a row the watch stops.",
            )


def _alert_confirmed_or_not(watch: Watch, probe: Probe) -> None:
    if probe.outcome == Probe.Outcome.FAILURE:
        reason = f"An alert was confirmed by probe {probe.number}: {probe.reason}"
        if watch.state not in (Watch.State.DEGRADED,):
            _degrade(watch, reason)
        rollback_decide(watch=watch, trigger=Rollback.Trigger.ALERT, reason=reason, actor=SYSTEM)
        return
    what = "could not run" if probe.outcome == Probe.Outcome.ERROR else f"was {probe.outcome}"
    notice_record(
        watch=watch,
        kind="alert_unconfirmed",
        level=Notice.Level.WARNING,
        title=notice_title(watch, "alert not confirmed by a probe"),
        text=f"An alert named this deployment, but the confirming probe {probe.number} {what}: "
        f"{probe.reason}. Nothing was rolled back; look at the alert.",
    )


def _degrade(watch: Watch, reason: str) -> None:
    _finish(watch, Watch.State.DEGRADED, reason)
    _audit_state(watch, "watch.degraded", reason)


def _audit_state(watch: Watch, action: str, reason: str) -> None:
    audit_record(
        action=action,
        actor=SYSTEM,
        target=watch,
        project=watch.project.slug,
        environment=watch.environment.name,
        reason=reason[:2000],
        data={"build_id": watch.validation.build_id, **_counters(watch)},
    )


# --- Alerts --------------------------------------------------------------------------------------


def watch_for_alert(*, project, environment: Environment) -> Watch | None:
    """The watch of the deployment serving ``environment`` now: the newest one that was not
    superseded (a newer deployment's watch replaces it)."""
    return (
        Watch.objects.filter(project=project, environment=environment)
        .exclude(state=Watch.State.STOPPED, state_reason__startswith="Superseded")
        .select_related("validation")
        .order_by("-created_at")
        .first()
    )


@transaction.atomic
def watch_alerted(*, watch: Watch, actor: Actor, alert: dict) -> bool:
    """An alert names the deployment ``watch`` watches: record it and queue a confirming probe.
    False when a rollback of it was already decided (repeated alerts change nothing)."""
    watch = (
        Watch.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation")
        .get(pk=watch.pk)
    )
    decided = Rollback.objects.filter(watch=watch).exists()
    audit_record(
        action="watch.alert",
        actor=actor,
        target=watch,
        project=watch.project.slug,
        environment=watch.environment.name,
        data={**alert, "rollback_already_decided": decided},
    )
    if decided:
        return False
    transaction.on_commit(
        lambda: async_task(
            "gates.tasks.watch_alert_probe", watch.pk, task_name=f"alert probe {watch.pk}", group="watches"
        )
    )
    return True
