"""Validations: asking, evaluating, blocking, and the errors that end them.

Every request enters through ``validation_request``: it resolves a ``Plan`` once (scenario,
effective test config, rules), creates the validation once, and then evaluates uploaded results,
refuses it (a precondition failed) or queues its test run. Every outcome is written by
``record_outcome`` and announced through ``gates.registry``.

Lock order. Every transaction that changes a validation, a baseline or a bypass takes its locks
in one global order (``docs/architecture.md``, "Lock order"): the validation rows, by primary key
(``lock_validation``); then the scenario row, which numbers its baselines (``lock_scenario``);
then baseline rows; then bypass requests; and last the audit chain, which ``audit_record`` takes:
after its first audit event a transaction takes no new lock. Row locks are ``FOR NO KEY UPDATE``,
so the ``KEY SHARE`` locks of foreign-key checks (a run, a baseline, an outbox row referring to a
locked validation) never wait for them. What still deadlocks (a path outside this order) is
retried by ``atomic_retried`` instead of reaching the client as a 500.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.utils import timezone
from django_q.tasks import async_task

from baselines.selectors import baseline_active, baseline_value_for, blind_notice, blind_since
from gates import rules
from gates.audit import SYSTEM, Actor, audit_record
from gates.documents import report_of
from gates.errors import IdempotencyMismatch, InvalidState, ServiceError
from gates.loadtest import ab
from gates.models import (
    CheckResult,
    Environment,
    IdempotencyKey,
    MetricObservation,
    Project,
    Run,
    Scenario,
    Validation,
    Verdict,
)
from gates.permissions import require_right
from gates.plans import AppliedRule, Plan, plan_of, validation_plan, validation_rules
from gates.registry import Change, announce
from gates.results import parse_results
from gates.results.base import ParseError, ResultSet
from gates.targets import TargetRefused, ports_of, resolve_target

logger = logging.getLogger(__name__)

# PostgreSQL's SQLSTATEs for "this transaction lost a lock conflict; run it again":
# deadlock_detected and serialization_failure.
LOCK_CONFLICTS = {"40P01", "40001"}
TRANSACTION_ATTEMPTS = 5


def atomic_retried(service):
    """``transaction.atomic``, run again (at most ``TRANSACTION_ATTEMPTS`` times, after a short
    random pause) when PostgreSQL aborts it to break a deadlock.

    Only the outermost transaction can be retried: nested in another one, the service runs once
    and the conflict goes up to whoever opened the transaction. A retried service must re-read
    what it locks (every service here does), and what it queued with ``on_commit`` went away with
    the rolled-back attempt.
    """
    atomic_service = transaction.atomic(service)

    @functools.wraps(service)
    def run(*args, **kwargs):
        if transaction.get_connection().in_atomic_block:
            return atomic_service(*args, **kwargs)
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            try:
                return atomic_service(*args, **kwargs)
            except OperationalError as exc:
                sqlstate = getattr(exc.__cause__, "sqlstate", None)
                if sqlstate not in LOCK_CONFLICTS or attempt == TRANSACTION_ATTEMPTS:
                    raise
                logger.warning(
                    "%s lost a lock conflict (SQLSTATE %s), attempt %d of %d; retrying",
                    service.__qualname__,
                    sqlstate,
                    attempt,
                    TRANSACTION_ATTEMPTS,
                )
                time.sleep(random.uniform(0.005, 0.02 * attempt))

    return run


def lock_validation(pk, *related: str) -> Validation:
    """The validation, locked for this transaction (``FOR NO KEY UPDATE``): the first lock of the
    global order. Transactions that lock several validations lock them by ascending ``pk``."""
    return Validation.objects.select_for_update(of=("self",), no_key=True).select_related(*related).get(pk=pk)


def lock_scenario(pk) -> None:
    """Lock the scenario row, which numbers its baseline versions and guards their pins: after
    the validations, before baselines, bypasses and the audit chain."""
    Scenario.objects.select_for_update(no_key=True).filter(pk=pk).values_list("pk").first()


def validation_request(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    git_hash: str,
    actor: Actor,
    test_config: dict | None = None,
    deployment_context: dict | None = None,
    results=None,
    results_format: str | None = None,
    results_name: str | None = None,
    source: str = Run.Source.UPLOADED,
    idempotency_key: str | None = None,
    request_document: dict | None = None,
    results_digest: str = "",
    hold: bool = False,
    extra_hosts: tuple[str, ...] | list[str] = (),
) -> tuple[Validation, bool]:
    """CI's "may this build deploy?": (validation, created).

    The one way into a validation. The request is resolved into a plan first (a bad scenario,
    threshold, duration or target is refused before anything is written), and uploaded results
    are parsed before anything is written too. Then, in one transaction, the validation is
    created (or the existing one of the build is taken) and it is refused (production without a
    staging pass), evaluated (results uploaded) or queued for a worker.

    The same build asked again gets its existing validation, with its outcome unchanged. An
    ``Idempotency-Key`` seen before with a different request (``request_document`` and the
    uploaded results' ``results_digest``) is refused.

    ``hold`` queues the load test without sending it to a worker: ``validation_release`` sends it
    once the deployment is ready (a Vercel deployment is tested when its URL answers).
    ``extra_hosts`` join the project's allowlist for this validation only (its deployment's URL).
    """
    fingerprint = _idempotency_fingerprint(request_document or {}, results_digest) if idempotency_key else ""
    if idempotency_key:
        seen = _idempotency_key_seen(project, idempotency_key, fingerprint)
        if seen is not None:
            return seen.validation, False
    plan = validation_plan(
        project=project, environment=environment, test_config=test_config, extra_hosts=extra_hosts
    )
    existing = Validation.objects.of_build(project, environment, build_id)
    take_existing = existing is not None and (not existing.is_pending or results is None)
    missing, parsed = "", None
    if not take_existing:
        if existing is not None:
            plan = plan_of(existing)  # results for a build already asked: judged by its own plan
        missing = _missing_staging_pass(project, environment, git_hash)
        if results is not None and not missing:
            parsed = _parse(results, results_format=results_format, results_name=results_name, plan=plan)
    return _validation_record_request(
        project=project,
        environment=environment,
        build_id=build_id,
        git_hash=git_hash,
        actor=actor,
        plan=plan,
        deployment_context=deployment_context or {},
        existing=existing if take_existing else None,
        missing=missing,
        parsed=parsed,
        source=source,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        hold=hold,
    )


@atomic_retried
def _validation_record_request(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    git_hash: str,
    actor: Actor,
    plan: Plan,
    deployment_context: dict,
    existing: Validation | None,
    missing: str,
    parsed: ResultSet | None,
    source: str,
    idempotency_key: str | None,
    fingerprint: str,
    hold: bool = False,
) -> tuple[Validation, bool]:
    """The writing half of ``validation_request``, one transaction: claim the key, take
    ``existing`` or create the validation, then refuse it (``missing`` says why), evaluate the
    ``parsed`` results or queue its run. Everything slow (parsing) happened before."""
    claim = _idempotency_claim(project, idempotency_key, fingerprint) if idempotency_key else None
    if claim is not None and claim.validation_id is not None:
        return claim.validation, False  # a concurrent twin with the same request made it
    if existing is not None:
        validation, created = existing, False
    else:
        validation, created = _validation_create(
            project=project,
            environment=environment,
            build_id=build_id,
            git_hash=git_hash,
            actor=actor,
            plan=plan,
            deployment_context=deployment_context,
            # Uploaded results are evaluated in this transaction: ``validation.evaluated``
            # then records the request too.
            audited=parsed is None,
        )
        if validation.is_pending and missing:
            if created:
                _validation_refuse(validation, reason=missing)
        elif validation.is_pending and parsed is not None:
            validation = validation_evaluate(
                validation=validation, results=parsed, actor=actor, source=source, applied=plan.rules
            )
        elif created and hold:
            Validation.objects.filter(pk=validation.pk).update(held=True)
            validation.held = True
        elif created:
            transaction.on_commit(lambda: _queue_run(validation))
    if claim is not None:
        claim.validation = validation
        claim.save(update_fields=["validation"])
    return validation, created


def _idempotency_fingerprint(document: dict, results_digest: str = "") -> str:
    """What makes two requests "the same" for an ``Idempotency-Key``: the request document
    without inline results, and the digest of the results however they were sent."""
    body = {key: value for key, value in document.items() if key != "results"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, default=str).encode() + results_digest.encode()
    ).hexdigest()


def _idempotency_key_seen(project: Project, key: str, fingerprint: str) -> IdempotencyKey | None:
    seen = IdempotencyKey.objects.filter(project=project, key=key).select_related("validation").first()
    if seen is not None and seen.fingerprint != fingerprint:
        raise IdempotencyMismatch(
            "This Idempotency-Key was already used with a different request; use a new key."
        )
    return seen


def _idempotency_claim(project: Project, key: str, fingerprint: str) -> IdempotencyKey:
    """Claim ``key`` for this request before anything is created: the new, still empty row (the
    caller fills in its validation), or the row of the request that claimed it first.

    Call it first in the transaction that creates the validation. The unique constraint makes
    the claim atomic: on PostgreSQL a concurrent INSERT of the same key waits until the claiming
    transaction ends (SQLite's IMMEDIATE transactions queue whole), then fails if it committed (so
    the winner's row is complete: replayed, or refused if the request differs, with nothing
    written) or succeeds if it rolled back, so a request that failed never blocks a retry.
    """
    for _ in range(3):
        try:
            with transaction.atomic():
                return IdempotencyKey.objects.create(project=project, key=key, fingerprint=fingerprint)
        except IntegrityError:
            seen = _idempotency_key_seen(project, key, fingerprint)
            if seen is not None:
                return seen
            # The claiming row went away between our INSERT and the read (its project or
            # validation was deleted): claim again.
    raise InvalidState("This Idempotency-Key is in use by another request; try again.")


def _parse(results, *, results_format: str | None, results_name: str | None, plan: Plan) -> ResultSet:
    submetrics, percentiles = plan.parser_needs
    try:
        return parse_results(
            results, format=results_format, name=results_name, submetrics=submetrics, percentiles=percentiles
        )
    except ParseError as exc:
        raise ServiceError(f"The results could not be read: {exc}", fields={"results": [str(exc)]}) from exc


def _validation_create(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    git_hash: str,
    actor: Actor,
    plan: Plan,
    deployment_context: dict,
    audited: bool,
) -> tuple[Validation, bool]:
    """Create the validation of one build, or take the one that exists: (validation, created).
    A concurrent duplicate loses on the unique constraint and gets the winner's row."""
    existing = Validation.objects.of_build(project, environment, build_id)
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            validation = Validation.objects.create(
                project=project,
                environment=environment,
                scenario=plan.scenario,
                build_id=build_id,
                git_hash=git_hash,
                branch=deployment_context.get("ref") or "",
                test_config=plan.test_config,
                deployment_context=deployment_context,
                requested_by=actor.label,
            )
    except IntegrityError:
        return Validation.objects.of_build(project, environment, build_id), False
    if audited:
        audit_record(
            action="validation.requested",
            actor=actor,
            target=validation,
            project=project.slug,
            environment=environment.name,
            data={
                "build_id": build_id,
                "git_hash": git_hash,
                "scenario": plan.scenario.name,
                "test_config": plan.test_config,
                "deployment_context": deployment_context,
            },
        )
        announce(validation, Change.QUEUED)
    return validation, True


def _queue_run(validation: Validation) -> None:
    """After commit: send the load test to a worker. When the task broker (Redis) is down the
    request still succeeds: the validation stays queued, marked, and ``validation_dispatch_pending``
    sends it once the broker answers."""
    try:
        _send_run(validation)
    except Exception as exc:
        logger.warning(
            "The task broker is unreachable (%s): validation %s stays queued and is sent when it answers.",
            exc.__class__.__name__,
            validation.pk,
        )
        Validation.objects.filter(pk=validation.pk, status=Validation.Status.QUEUED).update(
            dispatch_pending=True
        )


def _send_run(validation: Validation) -> None:
    async_task(
        "gates.tasks.validation_run",
        str(validation.pk),
        task_name=f"run {validation.project.slug}/{validation.environment.name} {validation.build_id}"[:100],
        group="validation-runs",
    )


@atomic_retried
def validation_release(*, validation: Validation, actor: Actor, target_url: str = "") -> Validation:
    """Send a held validation's load test to a worker, now that its deployment is ready;
    ``target_url`` (checked against the allowlist and the validation's own extra hosts) becomes
    its target. A validation that is not held (released already, ended) is left as it is."""
    validation = lock_validation(validation.pk, "project", "environment", "scenario")
    if not validation.held or validation.status != Validation.Status.QUEUED:
        return validation
    config = dict(validation.test_config)
    if target_url:
        allowed = [*validation.project.allowed_hosts, *config.get("extraHosts", [])]
        scenario = validation.scenario
        try:
            resolve_target(
                target_url,
                allowed,
                configured_ports=ports_of(scenario.target_url, scenario.reference_url) if scenario else (),
            )
        except TargetRefused as exc:
            raise ServiceError(
                f"Target URL refused: {exc}.", fields={"testConfig.targetUrl": [str(exc)]}
            ) from exc
        config["targetUrl"] = target_url
    validation.test_config = config
    validation.held = False
    validation.save(update_fields=["test_config", "held"])
    audit_record(
        action="validation.released",
        actor=actor,
        target=validation,
        project=validation.project.slug,
        environment=validation.environment.name,
        data={"target_url": config.get("targetUrl", "")},
    )
    transaction.on_commit(lambda: _queue_run(validation))
    return validation


def validation_dispatch_pending() -> int:
    """Send the load tests the broker could not take when they were asked for, oldest first; stop
    at the first that still cannot be sent. Returns how many were sent. Sending one twice is
    harmless: a worker runs a validation only after claiming it while it is queued."""
    pending = Validation.objects.filter(dispatch_pending=True, status=Validation.Status.QUEUED)
    sent = 0
    for validation in pending.select_related("project", "environment").order_by("created_at"):
        try:
            _send_run(validation)
        except Exception as exc:
            logger.info("The task broker is still unreachable (%s).", exc.__class__.__name__)
            break
        Validation.objects.filter(pk=validation.pk).update(dispatch_pending=False)
        sent += 1
    if sent:
        logger.warning("Sent %d load test(s) the task broker could not take earlier.", sent)
    return sent


def _missing_staging_pass(project: Project, environment: Environment, git_hash: str) -> str:
    """Why a production validation may not start (empty when it may): production can require a
    passed, or bypassed, staging validation of the same commit first."""
    if environment.name != Environment.Name.PRODUCTION or not environment.require_staging_pass:
        return ""
    passed = Validation.objects.filter(
        project=project,
        environment__name=Environment.Name.STAGING,
        git_hash=git_hash,
        status__in=[Validation.Status.PASSED, Validation.Status.BYPASSED],
    ).exists()
    if passed:
        return ""
    return (
        f"Production requires a passed staging validation of git hash {git_hash} first, and there is "
        "none; validate staging first."
    )


def _validation_refuse(validation: Validation, *, reason: str) -> None:
    """Block a validation before any test, because a precondition failed."""
    record_outcome(
        validation,
        status=Validation.Status.BLOCKED,
        deployment_allowed=False,
        would_block=True,
        reason=reason,
        blocking_reasons=[reason],
    )
    audit_record(
        action="validation.refused",
        actor=SYSTEM,
        target=validation,
        project=validation.project.slug,
        environment=validation.environment.name,
        reason=reason,
        data={"build_id": validation.build_id, "git_hash": validation.git_hash},
    )
    announce(validation, Change.FINISHED)


def record_outcome(
    validation: Validation,
    *,
    status: str,
    deployment_allowed: bool,
    would_block: bool,
    reason: str,
    blocking_reasons: list[str],
    **more,
) -> None:
    """Write a validation's outcome: the decision fields, the sentence CI reads, when it ended
    (the first time), and whatever else the caller decided (``more``: field → value).

    Every outcome goes through here (a verdict, an error, a refusal, a block, a bypass). It is
    not a service: its caller holds the row lock, writes the audit event and announces."""
    decided = {
        "status": status,
        "deployment_allowed": deployment_allowed,
        "would_block": would_block,
        "status_reason": reason,
        "blocking_reasons": blocking_reasons,
        "finished_at": validation.finished_at or timezone.now(),
        **more,
    }
    for name, value in decided.items():
        setattr(validation, name, value)
    validation.save(update_fields=list(decided))


def _record_run(*, validation: Validation, results: ResultSet, source: str) -> Run:
    run = Run.objects.create(
        validation=validation,
        project_id=validation.project_id,
        environment_id=validation.environment_id,
        scenario_id=validation.scenario_id,
        source=source,
        tool=results.tool,
        results_format=results.format,
        request_count=results.request_count,
        duration_seconds=results.duration_seconds,
    )
    MetricObservation.objects.record(run, results)
    return run


def _evaluate(
    validation: Validation,
    results: ResultSet,
    applied: list[AppliedRule],
    alpha: float,
    comparison: ab.ABDecision | None = None,
):
    """(applied rule or None, outcome) pairs: the load check first, then every rule in order.

    Relative rules that the A/B ``comparison`` decided (gate-run mode) are judged on it; the
    others compare with the baseline in history mode, the key ones sharing one false-block rate."""
    baseline = baseline_active(validation.project, validation.environment, validation.scenario)
    min_requests = validation.scenario.min_requests if validation.scenario else 0
    outcomes: dict[int, rules.CheckOutcome] = {}
    historical = []
    for index, item in enumerate(applied):
        spec = item.spec
        if isinstance(spec, rules.AbsoluteRule):
            outcomes[index] = rules.evaluate_absolute(spec, results)
            continue
        series = results.find(spec.selector.name, spec.selector.tags)
        key = series.key if series is not None else str(spec.selector)
        paired = comparison.check_for(ab.rule_key(key, spec.aggregation)) if comparison else None
        if paired is not None:
            outcomes[index] = rules.evaluate_paired(spec, results, paired)
            continue
        reference = baseline_value_for(baseline, key, spec.aggregation) if baseline is not None else None
        historical.append((index, spec, reference))
    judged = rules.evaluate_relatives(
        [(spec, reference) for _, spec, reference in historical], results, alpha=alpha
    )
    outcomes.update(zip([index for index, _, _ in historical], judged, strict=True))
    pairs = [(None, rules.evaluate_load(results, min_requests))]
    pairs.extend((item, outcomes[index]) for index, item in enumerate(applied))
    return pairs, baseline


def _blocking(outcome: rules.CheckOutcome, environment: Environment) -> bool:
    return outcome.severity == rules.Severity.KEY and environment.would_block(outcome.verdict)


@atomic_retried
def validation_evaluate(
    *,
    validation: Validation,
    results: ResultSet,
    actor: Actor,
    source: str = Run.Source.UPLOADED,
    applied: list[AppliedRule] | None = None,
    comparison: ab.ABDecision | None = None,
) -> Validation:
    """Turn results into a verdict: record the run and its metrics, evaluate the load check and
    every rule, then set status, ``deployment_allowed`` and ``would_block`` by the environment's
    policy (shadow never blocks; fail-closed blocks on error and inconclusive).

    A validation that already has its outcome is refused: a decision, once made, is not rewritten.
    ``applied`` saves reading the rules again when the caller already has them. ``comparison`` is
    gate-run mode's A/B decision: the relative rules it decided are judged on it.

    The scenario row is locked right after the validation, before anything is written: the
    evaluation compares with the scenario's active baseline, and the listeners it announces to may
    make the next version (``baselines.services.baseline_follow``) after the audit event, when the
    lock order allows no new lock.
    """
    validation = lock_validation(validation.pk, "project", "environment", "scenario")
    if not validation.is_pending:
        raise InvalidState(
            f"Validation of build {validation.build_id} already finished with status {validation.status}."
        )
    if validation.scenario_id is not None:
        lock_scenario(validation.scenario_id)
    environment = validation.environment
    run = _record_run(validation=validation, results=results, source=source)
    if applied is None:
        applied = validation_rules(validation)
    pairs, baseline = _evaluate(validation, results, applied, settings.PERFGATE_FALSE_BLOCK_RATE, comparison)
    outcomes = [outcome for _, outcome in pairs]

    verdict = rules.aggregate_verdict(outcomes)
    # Too little load is an error, yet it blocks even where fail-open lets errors through (see
    # Environment.would_block): otherwise CI could skip the gate by asking for next to no load.
    insufficient_load = any(o.kind == "load" and o.verdict == Verdict.ERROR for o in outcomes)
    status, deployment_allowed = environment.outcome_for(verdict, insufficient_load=insufficient_load)
    would_block = environment.would_block(verdict, insufficient_load=insufficient_load)
    blocking_reasons = [
        f"{o.metric} {o.reason}".strip()
        for o in outcomes
        if _blocking(o, environment) or (o.kind == "load" and o.verdict == Verdict.ERROR)
    ]

    CheckResult.objects.bulk_create(
        CheckResult(
            validation=validation,
            run=run,
            rule=item.rule if item is not None else None,
            position=position,
            label=outcome.label,
            kind=outcome.kind,
            severity=outcome.severity,
            metric=outcome.metric,
            aggregation=outcome.aggregation or "",
            verdict=outcome.verdict,
            observed=outcome.observed,
            baseline_value=outcome.baseline,
            limit=outcome.limit,
            change_pct=outcome.change_pct,
            p_value=outcome.p_value,
            reason=outcome.reason,
        )
        for position, (item, outcome) in enumerate(pairs)
    )

    record_outcome(
        validation,
        status=status,
        deployment_allowed=deployment_allowed,
        would_block=would_block,
        reason=_status_reason(
            verdict, status, environment, blocking_reasons, outcomes, would_block=would_block
        ),
        blocking_reasons=blocking_reasons,
        verdict=verdict,
        report=report_of(
            results,
            outcomes,
            notices=_notices(validation, outcomes),
            comparison=_comparison_document(comparison),
        ),
        baseline=baseline,
        started_at=validation.started_at or timezone.now(),
    )
    audit_record(
        action="validation.evaluated",
        actor=actor,
        target=validation,
        project=validation.project.slug,
        environment=environment.name,
        reason=validation.status_reason,
        data={
            "build_id": validation.build_id,
            "git_hash": validation.git_hash,
            "scenario": validation.scenario.name if validation.scenario else None,
            "requested_by": validation.requested_by,
            "test_config": validation.test_config,
            "deployment_context": validation.deployment_context,
            "verdict": verdict,
            "status": status,
            "deployment_allowed": deployment_allowed,
            "would_block": would_block,
            "policy": {"mode": environment.mode, "fail_closed": environment.fail_closed},
            "run": {
                "id": run.pk,
                "source": source,
                "tool": results.tool,
                "format": results.format,
                "request_count": results.request_count,
                "duration_seconds": results.duration_seconds,
            },
            "baseline": {"id": baseline.pk, "version": baseline.version} if baseline else None,
            "rules": [
                {"label": item.spec.label, "rule_id": item.rule.pk if item.rule else None}
                for item, _ in pairs
                if item is not None
            ],
            "checks": [asdict(outcome) for outcome in outcomes],
        },
    )
    announce(validation, Change.FINISHED)
    return validation


def _notices(validation: Validation, outcomes: list[rules.CheckOutcome]) -> list[str]:
    """What every check table shows above the checks: that the key relative rules have been blind
    (no baseline) for more than a few validations, so nobody takes a pass for a comparison."""
    key_relative = [o for o in outcomes if o.kind == "relative" and o.severity == rules.Severity.KEY]
    blind = bool(key_relative) and all(o.verdict == Verdict.NO_BASELINE for o in key_relative)
    since = blind_since(validation.environment, validation.scenario, current_no_baseline=blind)
    return [blind_notice(since)] if since else []


def _comparison_document(comparison: ab.ABDecision | None) -> dict | None:
    """What the report keeps of a gate-run A/B decision: how it ended and what it cost."""
    if comparison is None:
        return None
    return {
        "verdict": comparison.verdict,
        "pairs": comparison.pairs,
        "stoppedBy": comparison.stopped_by,
        "loadSeconds": round(comparison.load_seconds, 1),
        "repetitionSeconds": comparison.repetition_seconds,
    }


def _status_reason(
    verdict: str,
    status: str,
    environment: Environment,
    blocking: list[str],
    outcomes: list[rules.CheckOutcome],
    *,
    would_block: bool,
) -> str:
    """The one sentence CI logs and the admin list show."""
    if status == Validation.Status.BLOCKED:
        return "Blocked: " + "; ".join(blocking) if blocking else f"Blocked: verdict {verdict}."
    if not environment.enforced and would_block:
        return "Shadow mode: enforcement would have blocked (" + "; ".join(blocking) + ")."
    if status == Validation.Status.FAILED:
        errors = [f"{o.metric} {o.reason}".strip() for o in outcomes if o.verdict == Verdict.ERROR]
        return (
            "No trustworthy verdict (" + ("; ".join(errors) or "error") + "); the fail-open policy lets "
            "the deployment proceed."
        )
    notes = [f"{o.label}: {o.reason}" for o in outcomes if o.verdict != Verdict.PASS]
    if notes:
        return f"Passed with {len(notes)} warning{'s' if len(notes) > 1 else ''}: " + "; ".join(notes)
    return "Passed: every check is within its limits."


@atomic_retried
def validation_record_error(
    *,
    validation: Validation,
    reason: str,
    actor: Actor,
    action: str = "validation.errored",
    only_if_lease_expired: bool = False,
) -> Validation:
    """End a validation that could not produce results (target down, tool crashed, cancelled,
    lease expired): verdict ``error``, then ``blocked`` or ``failed`` by the environment's policy.

    A validation that already ended is left as it is. ``only_if_lease_expired`` is the reaper's
    guard: a worker that renewed its lease in the meantime keeps it.
    """
    validation = lock_validation(validation.pk, "project", "environment")
    if not validation.is_pending:
        return validation
    if only_if_lease_expired and not (
        validation.status == Validation.Status.RUNNING
        and validation.lease_expires_at is not None
        and validation.lease_expires_at < timezone.now()
    ):
        return validation
    environment = validation.environment
    status, deployment_allowed = environment.outcome_for(Verdict.ERROR)
    record_outcome(
        validation,
        status=status,
        deployment_allowed=deployment_allowed,
        would_block=environment.would_block(Verdict.ERROR),
        reason=reason,
        blocking_reasons=[reason] if status == Validation.Status.BLOCKED else [],
        verdict=Verdict.ERROR,
        lease_expires_at=None,
    )
    audit_record(
        action=action,
        actor=actor,
        target=validation,
        project=validation.project.slug,
        environment=environment.name,
        reason=reason,
        data={
            "build_id": validation.build_id,
            "verdict": Verdict.ERROR,
            "status": status,
            "deployment_allowed": deployment_allowed,
            "worker": validation.worker,
            "policy": {"mode": environment.mode, "fail_closed": environment.fail_closed},
        },
    )
    announce(validation, Change.CANCELLED if action == "validation.cancelled" else Change.FINISHED)
    return validation


@atomic_retried
def validation_block(*, validation: Validation, reason: str, actor: Actor) -> Validation:
    """Close the gate on a build by hand. The verdict, if any, is kept; only the outcome changes."""
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError(
            "A reason is required to block a build.", fields={"reason": ["This field is required."]}
        )
    validation = lock_validation(validation.pk, "project", "environment")
    require_right(actor, "block_deployment", validation.project, to="block builds")
    if validation.manual_block_reason:
        return validation
    previous = validation.status
    record_outcome(
        validation,
        status=Validation.Status.BLOCKED,
        deployment_allowed=False,
        would_block=True,
        reason=f"Blocked by hand by {actor.name}: {reason}",
        blocking_reasons=[*validation.blocking_reasons, f"blocked by {actor.name}: {reason}"],
        manual_block_reason=reason,
    )
    audit_record(
        action="validation.blocked",
        actor=actor,
        target=validation,
        project=validation.project.slug,
        environment=validation.environment.name,
        reason=reason,
        data={"build_id": validation.build_id, "previous_status": previous, "verdict": validation.verdict},
    )
    announce(validation, Change.BLOCKED)
    return validation
