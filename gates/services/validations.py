"""Validations: asking, evaluating, blocking, and the errors that end them."""

from __future__ import annotations

from dataclasses import asdict

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from baselines.selectors import baseline_active, baseline_value_for
from baselines.services import baseline_promote
from gates import rules, selectors
from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import IdempotencyMismatch, InvalidState, NotFound, ServiceError
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
from gates.results import parse_results
from gates.results.base import ParseError, ResultSet
from gates.targets import TargetRefused, resolve_target
from gates.units import parse_duration
from integrations.github import github_report


def validation_create(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    git_hash: str,
    actor: Actor,
    scenario: Scenario | None = None,
    branch: str = "",
    test_config: dict | None = None,
    deployment_context: dict | None = None,
    audit_request: bool = True,
) -> tuple[Validation, bool]:
    """Start a validation of one build, or return the one that exists: (validation, created).

    One (project, environment, buildId) is one validation, whoever asks and however often; a
    concurrent duplicate loses on the unique constraint and gets the winner's row.
    ``audit_request=False`` is for a caller that evaluates it in the same transaction: its
    ``validation.evaluated`` event then records the request too.
    """
    if environment.project_id != project.pk:
        raise ServiceError(
            f"Environment {environment} does not belong to project {project.slug}.",
            fields={"environment": ["Not an environment of this project."]},
        )
    existing = Validation.objects.of_build(project, environment, build_id)
    if existing is not None:
        return existing, False
    test_config = test_config or {}
    if scenario is None:
        scenario = selectors.scenario_for(project, None)
        if scenario is None:
            raise ServiceError(
                f"Project {project.slug} has no default scenario; name one in testConfig.scenario.",
                fields={"testConfig.scenario": ["Required: the project has no default scenario."]},
            )
    try:
        selectors.request_rules(test_config)
    except rules.RuleSyntaxError as exc:
        raise ServiceError(str(exc), fields={"testConfig.thresholds": [str(exc)]}) from exc
    try:
        with transaction.atomic():
            validation = Validation.objects.create(
                project=project,
                environment=environment,
                scenario=scenario,
                build_id=build_id,
                git_hash=git_hash,
                branch=branch,
                test_config=test_config,
                deployment_context=deployment_context or {},
                requested_by=actor.label,
            )
            if not audit_request:
                return validation, True
            audit_record(
                action="validation.requested",
                actor=actor,
                target=validation,
                project=project.slug,
                environment=environment.name,
                data={
                    "build_id": build_id,
                    "git_hash": git_hash,
                    "scenario": scenario.name,
                    "test_config": test_config,
                    "deployment_context": deployment_context or {},
                },
            )
            announce(validation)
    except IntegrityError:
        return Validation.objects.of_build(project, environment, build_id), False
    return validation, True


def announce(validation: Validation) -> None:
    """Record, in this transaction, what GitHub must hear about the validation's new status
    (commit status, check run, PR comment, deployment reviews); the outbox delivers it."""
    github_report(validation)


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


def _evaluate(validation: Validation, results: ResultSet, applied: list[selectors.AppliedRule], alpha: float):
    """(applied rule or None, outcome) pairs: the load check first, then every rule."""
    baseline = baseline_active(validation.project, validation.environment, validation.scenario)
    min_requests = validation.scenario.min_requests if validation.scenario else 0
    pairs = [(None, rules.evaluate_load(results, min_requests))]
    for item in applied:
        spec = item.spec
        if isinstance(spec, rules.AbsoluteRule):
            pairs.append((item, rules.evaluate_absolute(spec, results)))
            continue
        series = results.find(spec.selector.name, spec.selector.tags)
        reference = None
        if baseline is not None:
            key = series.key if series is not None else str(spec.selector)
            reference = baseline_value_for(baseline, key, spec.aggregation)
        pairs.append((item, rules.evaluate_relative(spec, results, reference, alpha=alpha)))
    return pairs, baseline


def _blocking(outcome: rules.CheckOutcome, environment: Environment) -> bool:
    return outcome.severity == rules.Severity.KEY and environment.would_block(outcome.verdict)


@transaction.atomic
def validation_evaluate(
    *,
    validation: Validation,
    results: ResultSet,
    actor: Actor,
    source: str = Run.Source.UPLOADED,
    applied: list[selectors.AppliedRule] | None = None,
) -> Validation:
    """Turn results into a verdict: record the run and its metrics, evaluate the load check and
    every rule, then set status, ``deployment_allowed`` and ``would_block`` by the environment's
    policy (shadow never blocks; fail-closed blocks on error and inconclusive).

    A validation that already has its outcome is refused: a decision, once made, is not rewritten.
    ``applied`` saves reading the rules again when the caller already has them.
    """
    validation = (
        Validation.objects.select_for_update(of=("self",))
        .select_related("project", "environment", "scenario")
        .get(pk=validation.pk)
    )
    if not validation.is_pending:
        raise InvalidState(
            f"Validation of build {validation.build_id} already finished with status {validation.status}."
        )
    environment = validation.environment
    run = _record_run(validation=validation, results=results, source=source)
    if applied is None:
        applied = selectors.validation_rules(validation)
    pairs, baseline = _evaluate(validation, results, applied, settings.PERFGATE_SIGNIFICANCE_ALPHA)
    outcomes = [outcome for _, outcome in pairs]

    verdict = rules.aggregate_verdict(outcomes)
    status, deployment_allowed = environment.outcome_for(verdict)
    would_block = environment.would_block(verdict)
    blocking_reasons = [f"{o.metric} {o.reason}".strip() for o in outcomes if _blocking(o, environment)]

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

    now = timezone.now()
    validation.verdict = verdict
    validation.status = status
    validation.deployment_allowed = deployment_allowed
    validation.would_block = would_block
    validation.blocking_reasons = blocking_reasons
    validation.status_reason = _status_reason(verdict, status, environment, blocking_reasons, outcomes)
    validation.report = selectors.report_of(results, outcomes)
    validation.baseline = baseline
    validation.started_at = validation.started_at or now
    validation.finished_at = now
    validation.save(
        update_fields=[
            "verdict",
            "status",
            "deployment_allowed",
            "would_block",
            "blocking_reasons",
            "status_reason",
            "report",
            "baseline",
            "started_at",
            "finished_at",
        ]
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
    if environment.auto_baseline and _promotes_automatically(outcomes, status):
        baseline_promote(validation=validation, actor=SYSTEM, reason="automatic: every check passed")
    announce(validation)
    return validation


def _promotes_automatically(outcomes: list[rules.CheckOutcome], status: str) -> bool:
    """Every check passed, apart from relative rules that had no baseline yet (so the first good
    build seeds the baseline). A warning of any other kind is left for ops to promote by hand:
    absorbing every +4% automatically would let a service drift slower unnoticed."""
    if status != Validation.Status.PASSED:
        return False
    return all(o.verdict in (Verdict.PASS, Verdict.NO_BASELINE) for o in outcomes)


def _status_reason(
    verdict: str,
    status: str,
    environment: Environment,
    blocking: list[str],
    outcomes: list[rules.CheckOutcome],
) -> str:
    """The one sentence CI logs and the admin list show."""
    if status == Validation.Status.BLOCKED:
        return "Blocked: " + "; ".join(blocking) if blocking else f"Blocked: verdict {verdict}."
    if not environment.enforced and environment.would_block(verdict):
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


@transaction.atomic
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
    validation = (
        Validation.objects.select_for_update(of=("self",))
        .select_related("project", "environment")
        .get(pk=validation.pk)
    )
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
    now = timezone.now()
    validation.verdict = Verdict.ERROR
    validation.status = status
    validation.deployment_allowed = deployment_allowed
    validation.would_block = environment.would_block(Verdict.ERROR)
    validation.status_reason = reason
    validation.blocking_reasons = [reason] if status == Validation.Status.BLOCKED else []
    validation.lease_expires_at = None
    validation.finished_at = now
    validation.save(
        update_fields=[
            "verdict",
            "status",
            "deployment_allowed",
            "would_block",
            "status_reason",
            "blocking_reasons",
            "lease_expires_at",
            "finished_at",
        ]
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
    announce(validation)
    return validation


@transaction.atomic
def validation_block(*, validation: Validation, reason: str, actor: Actor) -> Validation:
    """Close the gate on a build by hand. The verdict, if any, is kept; only the outcome changes."""
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError(
            "A reason is required to block a build.", fields={"reason": ["This field is required."]}
        )
    validation = (
        Validation.objects.select_for_update(of=("self",))
        .select_related("project", "environment")
        .get(pk=validation.pk)
    )
    if validation.manual_block_reason:
        return validation
    previous = validation.status
    now = timezone.now()
    validation.status = Validation.Status.BLOCKED
    validation.deployment_allowed = False
    validation.would_block = True
    validation.manual_block_reason = reason
    validation.status_reason = f"Blocked by hand by {actor.name}: {reason}"
    validation.blocking_reasons = [*validation.blocking_reasons, f"blocked by {actor.name}: {reason}"]
    validation.finished_at = validation.finished_at or now
    validation.save(
        update_fields=[
            "status",
            "deployment_allowed",
            "would_block",
            "manual_block_reason",
            "status_reason",
            "blocking_reasons",
            "finished_at",
        ]
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
    announce(validation)
    return validation


def validation_ingest(
    *,
    project: Project,
    environment: Environment,
    build_id: str,
    git_hash: str,
    results,
    actor: Actor,
    results_format: str | None = None,
    results_name: str | None = None,
    scenario: Scenario | None = None,
    branch: str = "",
    test_config: dict | None = None,
    deployment_context: dict | None = None,
    source: str = Run.Source.UPLOADED,
) -> tuple[Validation, bool]:
    """Evaluate results CI uploaded (a path or a binary stream): (validation, created).

    The results are parsed before anything is written, so bad input leaves nothing behind. A
    repeated request for a build that already has its outcome returns that outcome unchanged.
    """
    existing = Validation.objects.of_build(project, environment, build_id)
    if existing is not None and not existing.is_pending:
        return existing, False
    if existing is not None:
        scenario, test_config = existing.scenario, existing.test_config
    scenario = scenario or selectors.scenario_for(project, None)
    try:
        applied = [
            selectors.AppliedRule(spec=r.to_spec(), rule=r)
            for r in (selectors.configured_rules(environment, scenario) if scenario else [])
        ]
        applied += [selectors.AppliedRule(spec=spec) for spec in selectors.request_rules(test_config or {})]
    except rules.RuleSyntaxError as exc:
        raise ServiceError(str(exc), fields={"testConfig.thresholds": [str(exc)]}) from exc
    submetrics, percentiles = selectors.parser_needs(applied)
    try:
        parsed = parse_results(
            results, format=results_format, name=results_name, submetrics=submetrics, percentiles=percentiles
        )
    except ParseError as exc:
        raise ServiceError(f"The results could not be read: {exc}", fields={"results": [str(exc)]}) from exc
    with transaction.atomic():
        validation, created = validation_create(
            project=project,
            environment=environment,
            build_id=build_id,
            git_hash=git_hash,
            actor=actor,
            scenario=scenario,
            branch=branch,
            test_config=test_config,
            deployment_context=deployment_context,
            audit_request=False,
        )
        if validation.is_pending:
            validation = validation_evaluate(
                validation=validation, results=parsed, actor=actor, source=source, applied=applied
            )
    return validation, created


def _effective_test_config(project: Project, scenario: Scenario, requested: dict) -> dict:
    """The request's testConfig with its load capped by the scenario's limits and its target
    checked against the project's allowlist. The caps are recorded, so nobody wonders later."""
    config = dict(requested)
    config["scenario"] = scenario.name
    capped = {}
    if config.get("vus") is not None and config["vus"] > scenario.max_vus:
        capped["vus"] = {"requested": config["vus"], "allowed": scenario.max_vus}
        config["vus"] = scenario.max_vus
    if config.get("duration") is not None:
        try:
            seconds = parse_duration(config["duration"])
        except ValueError as exc:
            raise ServiceError(str(exc), fields={"testConfig.duration": [str(exc)]}) from exc
        if seconds > scenario.max_duration_seconds:
            capped["duration"] = {
                "requested": config["duration"],
                "allowed": f"{scenario.max_duration_seconds}s",
            }
            config["duration"] = f"{scenario.max_duration_seconds}s"
    if config.get("targetUrl"):
        try:
            resolve_target(config["targetUrl"], project.allowed_hosts)
        except TargetRefused as exc:
            raise ServiceError(
                f"Target URL refused: {exc}.", fields={"testConfig.targetUrl": [str(exc)]}
            ) from exc
    if capped:
        config["capped"] = capped
    return config


def _queue_run(validation: Validation) -> None:
    from django_q.tasks import async_task

    async_task(
        "gates.tasks.validation_run",
        str(validation.pk),
        task_name=f"run {validation.project.slug}/{validation.environment.name} {validation.build_id}"[:100],
        group="validation-runs",
    )


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


@transaction.atomic
def _validation_refused(*, reason: str, actor: Actor, **fields) -> tuple[Validation, bool]:
    """A validation that is blocked before any test, because a precondition failed."""
    validation, created = validation_create(actor=actor, **fields)
    if not created or not validation.is_pending:
        return validation, created
    now = timezone.now()
    validation.status = Validation.Status.BLOCKED
    validation.deployment_allowed = False
    validation.would_block = True
    validation.status_reason = reason
    validation.blocking_reasons = [reason]
    validation.finished_at = now
    validation.save(
        update_fields=[
            "status",
            "deployment_allowed",
            "would_block",
            "status_reason",
            "blocking_reasons",
            "finished_at",
        ]
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
    announce(validation)
    return validation, created


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
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> tuple[Validation, bool]:
    """CI's "may this build deploy?": evaluate uploaded results at once, or queue a test run.

    Returns (validation, created). The same build asked again gets its existing validation; an
    ``Idempotency-Key`` seen before with a different request fingerprint is refused.
    """
    if idempotency_key:
        seen = IdempotencyKey.objects.filter(project=project, key=idempotency_key).select_related(
            "validation"
        )
        seen = seen.first()
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used with a different request; use a new key."
                )
            return seen.validation, False
    test_config = dict(test_config or {})
    scenario = selectors.scenario_for(project, test_config.get("scenario"))
    if scenario is None:
        name = test_config.get("scenario")
        detail = (
            f"Project {project.slug} has no scenario {name!r}."
            if name
            else f"Project {project.slug} has no default scenario; name one in testConfig.scenario."
        )
        raise ServiceError(detail, fields={"testConfig.scenario": [detail]})
    test_config = _effective_test_config(project, scenario, test_config)
    branch = (deployment_context or {}).get("ref") or ""
    missing = _missing_staging_pass(project, environment, git_hash)
    if missing:
        validation, created = _validation_refused(
            project=project,
            environment=environment,
            scenario=scenario,
            build_id=build_id,
            git_hash=git_hash,
            branch=branch,
            test_config=test_config,
            deployment_context=deployment_context,
            actor=actor,
            reason=missing,
        )
    elif results is not None:
        validation, created = validation_ingest(
            project=project,
            environment=environment,
            build_id=build_id,
            git_hash=git_hash,
            results=results,
            actor=actor,
            results_format=results_format,
            results_name=results_name,
            scenario=scenario,
            branch=branch,
            test_config=test_config,
            deployment_context=deployment_context,
        )
    else:
        with transaction.atomic():
            validation, created = validation_create(
                project=project,
                environment=environment,
                build_id=build_id,
                git_hash=git_hash,
                actor=actor,
                scenario=scenario,
                branch=branch,
                test_config=test_config,
                deployment_context=deployment_context,
            )
            if created:
                transaction.on_commit(lambda: _queue_run(validation))
    if idempotency_key:
        try:
            with transaction.atomic():
                IdempotencyKey.objects.create(
                    project=project, key=idempotency_key, fingerprint=fingerprint, validation=validation
                )
        except IntegrityError:
            seen = IdempotencyKey.objects.get(project=project, key=idempotency_key)
            if seen.fingerprint != fingerprint:
                raise IdempotencyMismatch(
                    "This Idempotency-Key was already used with a different request; use a new key."
                ) from None
    return validation, created


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
):
    """Ops' "make this the baseline": a new version from a build's passed validation, or from
    results uploaded with the request (evaluated first, like any upload; only a pass counts)."""
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
