"""Rolling back a watched deployment: deciding the one rollback of a watch, a person approving or
rejecting a proposed one, and recording what the integration that carries it out reports.

A degraded watch, or an alert a probe confirmed, decides one rollback per watched deployment
(``rollback_decide``): to the newest earlier production deployment perfgate passed (never one it
blocked or bypassed), automatically when the environment says so (``autoRollback``), otherwise
proposed for someone with ``trigger_rollback``. The rollback is announced to the integrations
(``Change.ROLLBACK``); the one that can carry it out takes it (``rollback_take``), records its
call, and reports back with ``rollback_record_progress`` and ``rollback_record_outcome``.
"""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, ServiceError
from gates.models import Notice, Rollback, Validation, Watch
from gates.permissions import require_right
from gates.registry import Change, announce
from gates.services.notices import notice_record, notice_title


def rollback_target(watch: Watch) -> Validation | None:
    """The newest earlier production deployment perfgate passed and that served production (it
    was watched), other than the watched one: what a rollback goes back to. Blocked, bypassed,
    failed (fail-open) and degraded deployments are never a target."""
    current = watch.validation
    candidates = (
        Validation.objects.filter(
            project=watch.project,
            environment=watch.environment,
            status=Validation.Status.PASSED,
            created_at__lt=current.created_at,
            watches__isnull=False,
        )
        .exclude(pk=current.pk)
        .exclude(watches__state=Watch.State.DEGRADED)
        .distinct()
        .order_by("-created_at")
    )
    deployment_id = current.deployment_context.get("deploymentId")
    for candidate in candidates[:50]:
        if deployment_id and candidate.deployment_context.get("deploymentId") == deployment_id:
            continue
        return candidate
    return None


def rollback_decide(*, watch: Watch, trigger: str, reason: str, actor: Actor) -> Rollback:
    """Decide the one rollback of a watched deployment (in the caller's transaction). Repeated
    decisions (alerts after the watch degraded) get the existing one, unchanged.

    No earlier passed production deployment: ``refused``, loudly. Dry run: recorded as what would
    have been done. ``autoRollback``: approved and announced to the integrations now. Otherwise
    ``proposed``, waiting for someone with ``trigger_rollback``."""
    existing = Rollback.objects.filter(watch=watch).first()
    if existing is not None:
        return existing
    target = rollback_target(watch)
    now = timezone.now()
    fields = {
        "watch": watch,
        "validation": watch.validation,
        "target_validation": target,
        "project": watch.project,
        "environment": watch.environment,
        "trigger": trigger,
        "reason": reason[:5000],
    }
    if target is None:
        state, detail = (
            Rollback.State.REFUSED,
            (
                "No earlier production deployment that perfgate passed (and that served production) exists: "
                "there is nothing safe to roll back to. Roll back or fix forward by hand."
            ),
        )
    elif watch.dry_run:
        state, detail = Rollback.State.DRY_RUN, f"Dry run: would have rolled back to build {target.build_id}."
    elif watch.policy.get("autoRollback"):
        state, detail = Rollback.State.APPROVED, f"Rolling back to build {target.build_id} (autoRollback)."
    else:
        state, detail = (
            Rollback.State.PROPOSED,
            (
                f"Proposed: roll back to build {target.build_id}. "
                "Someone with trigger_rollback approves it in the admin."
            ),
        )
    try:
        with transaction.atomic():
            rollback = Rollback.objects.create(
                **fields,
                state=state,
                detail=detail,
                decided_by="perfgate (autoRollback)" if state == Rollback.State.APPROVED else "",
                decided_at=now if state == Rollback.State.APPROVED else None,
                finished_at=now if state in (Rollback.State.REFUSED, Rollback.State.DRY_RUN) else None,
            )
    except IntegrityError:
        return Rollback.objects.get(watch=watch)
    if state == Rollback.State.DRY_RUN:
        Watch.objects.filter(pk=watch.pk).update(would_roll_back=True)
    audit_record(
        action=f"rollback.{state}",
        actor=actor,
        target=rollback,
        project=watch.project.slug,
        environment=watch.environment.name,
        reason=reason[:2000],
        data={
            "build_id": watch.validation.build_id,
            "target_build_id": target.build_id if target else None,
            "trigger": trigger,
        },
    )
    level = {
        Rollback.State.REFUSED: Notice.Level.ERROR,
        Rollback.State.PROPOSED: Notice.Level.WARNING,
        Rollback.State.DRY_RUN: Notice.Level.INFO,
        Rollback.State.APPROVED: Notice.Level.WARNING,
    }[state]
    title = {
        Rollback.State.REFUSED: "is degraded and cannot be rolled back",
        Rollback.State.PROPOSED: "is degraded: rollback proposed",
        Rollback.State.DRY_RUN: "is degraded (dry run: nothing rolled back)",
        Rollback.State.APPROVED: "is degraded: rolling back",
    }[state]
    notice_record(
        watch=watch,
        kind=f"rollback_{state}",
        level=level,
        title=notice_title(watch, title),
        text=f"{reason}\n{detail}",
    )
    if state == Rollback.State.APPROVED:
        _send(rollback)
    return rollback


def _send(rollback: Rollback) -> None:
    """Announce an approved rollback to the integrations; the one that can carry it out takes it
    (``rollback_take``). When none can, it fails now, loudly."""
    announce(rollback.validation, Change.ROLLBACK)
    rollback.refresh_from_db(fields=["via", "state"])
    if rollback.via or rollback.state != Rollback.State.APPROVED:
        return
    rollback_record_outcome(
        rollback=rollback,
        succeeded=False,
        detail="No integration can carry this rollback out: the project needs a Vercel connection (and "
        "Vercel deployment ids on both validations) or a GitHub connection with the environment's "
        "rollback workflow.",
    )


def rollback_take(*, rollback: Rollback, via: str) -> bool:
    """An integration takes an approved rollback (from its listener): True when it is now its own."""
    return bool(
        Rollback.objects.filter(pk=rollback.pk, via="", state=Rollback.State.APPROVED).update(via=via)
    )


@transaction.atomic
def rollback_approve(*, rollback: Rollback, actor: Actor) -> Rollback:
    """A person with ``trigger_rollback`` approves a proposed rollback: it is sent at once."""
    rollback = (
        Rollback.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation", "target_validation")
        .get(pk=rollback.pk)
    )
    require_right(actor, "trigger_rollback", rollback.project, to="approve rollbacks")
    if rollback.state != Rollback.State.PROPOSED:
        raise InvalidState(f"The rollback is {rollback.state}; only a proposed one can be approved.")
    rollback.state = Rollback.State.APPROVED
    rollback.decided_by = actor.label
    rollback.decided_at = timezone.now()
    rollback.detail = (
        f"Approved by {actor.name}: rolling back to build {rollback.target_validation.build_id}."
    )
    rollback.save(update_fields=["state", "decided_by", "decided_at", "detail"])
    audit_record(
        action="rollback.approved",
        actor=actor,
        target=rollback,
        project=rollback.project.slug,
        environment=rollback.environment.name,
        data={
            "build_id": rollback.validation.build_id,
            "target_build_id": rollback.target_validation.build_id,
        },
    )
    _send(rollback)
    rollback.refresh_from_db()
    return rollback


@transaction.atomic
def rollback_reject(*, rollback: Rollback, actor: Actor, reason: str) -> Rollback:
    """A person with ``trigger_rollback`` keeps the deployment: the proposed rollback is rejected."""
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError(
            "A reason is required to reject a rollback.", fields={"reason": ["This field is required."]}
        )
    rollback = (
        Rollback.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation")
        .get(pk=rollback.pk)
    )
    require_right(actor, "trigger_rollback", rollback.project, to="reject rollbacks")
    if rollback.state != Rollback.State.PROPOSED:
        raise InvalidState(f"The rollback is {rollback.state}; only a proposed one can be rejected.")
    rollback.state = Rollback.State.REJECTED
    rollback.decided_by = actor.label
    rollback.decided_at = rollback.finished_at = timezone.now()
    rollback.detail = f"Rejected by {actor.name}: {reason}"
    rollback.save(update_fields=["state", "decided_by", "decided_at", "finished_at", "detail"])
    audit_record(
        action="rollback.rejected",
        actor=actor,
        target=rollback,
        project=rollback.project.slug,
        environment=rollback.environment.name,
        reason=reason,
        data={"build_id": rollback.validation.build_id},
    )
    return rollback


@transaction.atomic
def rollback_record_progress(*, rollback: Rollback, detail: str) -> Rollback:
    """The integration sent the rollback and follows it (Vercel's alias request, a workflow run)."""
    rollback = (
        Rollback.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment")
        .get(pk=rollback.pk)
    )
    if rollback.state not in (Rollback.State.APPROVED, Rollback.State.RUNNING):
        return rollback
    first = rollback.state == Rollback.State.APPROVED
    rollback.state = Rollback.State.RUNNING
    rollback.detail = detail[:5000]
    rollback.save(update_fields=["state", "detail"])
    if first:
        audit_record(
            action="rollback.running",
            actor=SYSTEM,
            target=rollback,
            project=rollback.project.slug,
            environment=rollback.environment.name,
            data={"via": rollback.via, "detail": detail[:1000]},
        )
    return rollback


@transaction.atomic
def rollback_record_outcome(*, rollback: Rollback, succeeded: bool, detail: str) -> Rollback:
    """The rollback went through, or failed: recorded once, audited, and told to people. A failed
    rollback stays failed; nothing retries it."""
    rollback = (
        Rollback.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment", "validation", "watch", "target_validation")
        .get(pk=rollback.pk)
    )
    if rollback.state not in (Rollback.State.APPROVED, Rollback.State.RUNNING):
        return rollback
    rollback.state = Rollback.State.SUCCEEDED if succeeded else Rollback.State.FAILED
    rollback.detail = detail[:5000]
    rollback.finished_at = timezone.now()
    rollback.save(update_fields=["state", "detail", "finished_at"])
    audit_record(
        action=f"rollback.{rollback.state}",
        actor=SYSTEM,
        target=rollback,
        project=rollback.project.slug,
        environment=rollback.environment.name,
        data={"via": rollback.via, "detail": detail[:1000]},
    )
    target = rollback.target_validation.build_id if rollback.target_validation else "?"
    notice_record(
        watch=rollback.watch,
        kind=f"rollback_{rollback.state}",
        level=Notice.Level.INFO if succeeded else Notice.Level.ERROR,
        title=notice_title(
            rollback.watch, f"rolled back to build {target}" if succeeded else "rollback FAILED"
        ),
        text=detail,
    )
    return rollback
