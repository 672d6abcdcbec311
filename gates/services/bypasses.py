"""Emergency bypasses, with four eyes.

A bypass request covers exactly one blocked validation. It needs a justification and expires
(4 h by default, 24 h at most). A person asking for one needs ``block_deployment`` on the project,
the right the admin offers the request form with (CI tokens ask by their role). Each approver must
hold ``approve_bypass`` on the project (``gates.permissions.may``: on it or on every project) and
must not be anyone behind the request (the person or CI actor who asked, the token's owner) —
superusers included. Production can require two distinct approvers. The last approval turns the
validation ``bypassed``: deployment allowed, the underlying verdict kept. These rules live here,
not in the admin, so every way of approving obeys them; the admin asks ``bypass_refusal`` to
offer its Approve and Reject actions exactly when these services would accept.

In the global lock order (``gates.services.validations``) a bypass request comes after its
validation: approving locks the validation first, then the request, so an approval racing a
manual block or another request of the same build waits instead of deadlocking.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, NotPermitted, ServiceError
from gates.models import BypassApproval, BypassRequest, Notice, Validation
from gates.permissions import may, require_right
from gates.registry import Change, announce
from gates.services.notices import notice_record
from gates.services.validations import atomic_retried, lock_validation, record_outcome

DEFAULT_EXPIRY_MINUTES = 4 * 60
MAX_EXPIRY_MINUTES = 24 * 60


def _names(*names: str | None) -> list[str]:
    return sorted({name.strip().lower() for name in names if name and name.strip()})


@atomic_retried
def bypass_request(
    *,
    validation: Validation,
    justification: str,
    actor: Actor,
    ticket_url: str = "",
    expires_in_minutes: int | None = None,
    requested_for: str = "",
) -> BypassRequest:
    """Ask for a bypass of a blocked validation. ``requested_for`` is the person or CI actor a
    token asks on behalf of; they, the token's owner and the actor may not approve it."""
    justification = (justification or "").strip()
    if not justification:
        raise ServiceError(
            "A justification is required.", fields={"justification": ["This field is required."]}
        )
    minutes = DEFAULT_EXPIRY_MINUTES if expires_in_minutes is None else expires_in_minutes
    if not 1 <= minutes <= MAX_EXPIRY_MINUTES:
        raise ServiceError(
            f"A bypass expires after 1 to {MAX_EXPIRY_MINUTES} minutes.",
            fields={"expiresInMinutes": [f"Between 1 and {MAX_EXPIRY_MINUTES}."]},
        )
    validation = lock_validation(validation.pk, "project", "environment")
    require_right(actor, "block_deployment", validation.project, to="ask for bypasses")
    if validation.status != Validation.Status.BLOCKED:
        raise InvalidState(
            f"Only a blocked validation can be bypassed; build {validation.build_id} is {validation.status}."
        )
    if validation.bypass_requests.filter(status=BypassRequest.Status.PENDING).exists():
        raise InvalidState(f"A bypass of build {validation.build_id} is already waiting for approval.")
    owner = get_user_model().objects.filter(pk=actor.user_id).first() if actor.user_id else None
    context_actor = (validation.deployment_context or {}).get("actor")
    names = _names(
        requested_for,
        context_actor,
        owner.get_username() if owner else None,
        actor.name if actor.kind == "user" else None,
    )
    bypass = BypassRequest.objects.create(
        project=validation.project,
        environment=validation.environment,
        validation=validation,
        build_id=validation.build_id,
        justification=justification,
        ticket_url=ticket_url or "",
        requested_by=actor.label + (f" for {requested_for}" if requested_for else ""),
        requester_names=names,
        required_approvals=validation.environment.bypass_approvals,
        expires_at=timezone.now() + timedelta(minutes=minutes),
    )
    audit_record(
        action="bypass.requested",
        actor=actor,
        target=bypass,
        project=validation.project.slug,
        environment=validation.environment.name,
        reason=justification,
        data={
            "build_id": validation.build_id,
            "validation": str(validation.pk),
            "ticket_url": ticket_url,
            "expires_at": bypass.expires_at,
            "required_approvals": bypass.required_approvals,
            "requester_names": names,
            "verdict": validation.verdict,
        },
    )
    approvals = "two approvals" if bypass.required_approvals > 1 else "an approval"
    notice_record(
        bypass=bypass,
        kind="bypass_requested",
        level=Notice.Level.WARNING,
        title=f"{_where(bypass)} bypass requested by {bypass.requested_by}",
        text=f"{justification}\nIt needs {approvals} by someone else before "
        f"{bypass.expires_at:%Y-%m-%d %H:%M} UTC.",
    )
    return bypass


def _where(bypass: BypassRequest) -> str:
    return f"{bypass.project.slug}/{bypass.environment.name} build {bypass.build_id}"


def _locked(bypass: BypassRequest) -> BypassRequest:
    return (
        BypassRequest.objects.select_for_update(of=("self",), no_key=True)
        .select_related("project", "environment")
        .get(pk=bypass.pk)
    )


def bypass_refusal(*, bypass: BypassRequest, user, approving: bool = True) -> ServiceError | None:
    """Why ``user`` may not approve (or, ``approving=False``, reject) ``bypass`` now, or None when
    they may: the request must be pending and unexpired, the user must not be behind it, must
    hold ``approve_bypass`` on its project, and may approve only once. The services raise what
    this returns; the admin asks it before offering the actions, so both always agree."""
    if bypass.status != BypassRequest.Status.PENDING:
        return InvalidState(f"This bypass request is {bypass.status}; it can no longer be decided.")
    if bypass.expires_at <= timezone.now():
        return InvalidState(f"This bypass request expired at {bypass.expires_at:%Y-%m-%d %H:%M} UTC.")
    if user.get_username().lower() in bypass.requester_names:
        return NotPermitted(
            "You asked for this bypass (or it was asked on your behalf): someone else must decide on it."
        )
    if not may(user, "approve_bypass", bypass.project):
        return NotPermitted(f"You may not approve bypasses of {bypass.project.slug}.")
    if approving and bypass.approvals.filter(approver=user).exists():
        return InvalidState("You already approved this bypass; it needs another person's approval.")
    return None


@atomic_retried
def bypass_approve(*, bypass: BypassRequest, approver) -> BypassRequest:
    """One approval, refused for the reasons ``bypass_refusal`` gives. The validation and then
    the request row are locked (the lock order), so two people approving at the same moment are
    counted one after the other: never twice, never beyond what is required."""
    validation = lock_validation(bypass.validation_id)
    bypass = _locked(bypass)
    refusal = bypass_refusal(bypass=bypass, user=approver)
    if refusal is not None:
        raise refusal
    BypassApproval.objects.create(bypass=bypass, approver=approver)
    approvers = list(bypass.approvals.select_related("approver").values_list("approver__username", flat=True))
    actor = Actor.for_user(approver)
    audit_record(
        action="bypass.approved",
        actor=actor,
        target=bypass,
        project=bypass.project.slug,
        environment=bypass.environment.name,
        data={
            "build_id": bypass.build_id,
            "approvals": len(approvers),
            "required": bypass.required_approvals,
            "approvers": approvers,
        },
    )
    if len(approvers) < bypass.required_approvals:
        return bypass
    bypass.status = BypassRequest.Status.APPROVED
    bypass.decided_at = timezone.now()
    bypass.decided_by = ", ".join(approvers)
    bypass.save(update_fields=["status", "decided_at", "decided_by"])
    _apply(bypass, validation, approvers, actor)
    return bypass


def _apply(bypass: BypassRequest, validation: Validation, approvers: list[str], actor: Actor) -> None:
    """Let the (locked) validation through, keeping its verdict."""
    if validation.status != Validation.Status.BLOCKED:
        raise InvalidState(f"Build {validation.build_id} is no longer blocked ({validation.status}).")
    ticket = f" ({bypass.ticket_url})" if bypass.ticket_url else ""
    record_outcome(
        validation,
        status=Validation.Status.BYPASSED,
        deployment_allowed=True,
        would_block=validation.would_block,
        reason=f"Bypassed: approved by {', '.join(approvers)}{ticket}: {bypass.justification} "
        f"(underlying verdict: {validation.verdict or 'none'}; {validation.status_reason})",
        blocking_reasons=validation.blocking_reasons,
    )
    audit_record(
        action="bypass.used",
        actor=actor,
        target=validation,
        project=bypass.project.slug,
        environment=bypass.environment.name,
        reason=bypass.justification,
        data={
            "bypass": str(bypass.pk),
            "build_id": validation.build_id,
            "verdict": validation.verdict,
            "approvers": approvers,
            "ticket_url": bypass.ticket_url,
        },
    )
    announce(validation, Change.BYPASSED)
    notice_record(
        bypass=bypass,
        kind="bypass_approved",
        level=Notice.Level.WARNING,
        title=f"{_where(bypass)} bypass approved by {', '.join(approvers)}",
        text=f"{bypass.justification}\nThe build may deploy; its verdict stays "
        f"{validation.verdict or 'none'}.",
    )


@atomic_retried
def bypass_reject(*, bypass: BypassRequest, user, reason: str = "") -> BypassRequest:
    """Refuse a bypass: the validation stays blocked. Who may reject is who may approve."""
    bypass = _locked(bypass)
    refusal = bypass_refusal(bypass=bypass, user=user, approving=False)
    if refusal is not None:
        raise refusal
    bypass.status = BypassRequest.Status.REJECTED
    bypass.decided_at = timezone.now()
    bypass.decided_by = user.get_username()
    bypass.decision_reason = reason
    bypass.save(update_fields=["status", "decided_at", "decided_by", "decision_reason"])
    audit_record(
        action="bypass.rejected",
        actor=Actor.for_user(user),
        target=bypass,
        project=bypass.project.slug,
        environment=bypass.environment.name,
        reason=reason,
        data={"build_id": bypass.build_id},
    )
    notice_record(
        bypass=bypass,
        kind="bypass_rejected",
        level=Notice.Level.INFO,
        title=f"{_where(bypass)} bypass rejected by {bypass.decided_by}",
        text=reason or "No reason given. The build stays blocked.",
    )
    return bypass


def bypass_expire_due(*, now=None) -> int:
    """Close the pending requests whose time ran out (scheduled). Returns how many."""
    now = now or timezone.now()
    due = BypassRequest.objects.filter(status=BypassRequest.Status.PENDING, expires_at__lte=now)
    return sum(_bypass_expire(pk=pk, now=now) for pk in due.values_list("pk", flat=True))


@atomic_retried
def _bypass_expire(*, pk, now) -> bool:
    """Expire one request, unless it was decided meanwhile; True when it expired."""
    bypass = _locked(BypassRequest(pk=pk))
    if bypass.status != BypassRequest.Status.PENDING:
        return False
    bypass.status = BypassRequest.Status.EXPIRED
    bypass.decided_at = now
    bypass.save(update_fields=["status", "decided_at"])
    audit_record(
        action="bypass.expired",
        actor=SYSTEM,
        target=bypass,
        project=bypass.project.slug,
        environment=bypass.environment.name,
        data={"build_id": bypass.build_id, "expires_at": bypass.expires_at},
    )
    return True
