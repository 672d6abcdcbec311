"""Test runs: a worker claims a queued validation, holds it by a lease it renews, and the reaper
ends the ones whose worker stopped renewing. Cancelling asks the worker to stop its test.

The Validation row is the record of truth; a task that finds its row already claimed, finished
or reaped does nothing.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from gates.audit import SYSTEM, Actor, audit_record
from gates.errors import InvalidState, ServiceError
from gates.models import Validation
from gates.permissions import require_right
from gates.registry import Change, announce
from gates.services.validations import validation_record_error


def worker_actor(worker: str) -> Actor:
    return Actor("worker", worker)


@transaction.atomic
def validation_claim(*, validation_id, worker: str, lease_seconds: float) -> Validation | None:
    """Take a queued validation for this worker: a conditional update, so of two workers handed
    the same validation exactly one gets it. None when it was not (or no longer) queued."""
    now = timezone.now()
    claimed = Validation.objects.filter(pk=validation_id, status=Validation.Status.QUEUED).update(
        status=Validation.Status.RUNNING,
        worker=worker,
        started_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        progress={"elapsedSeconds": 0.0, "requests": 0, "requestRate": 0.0},
    )
    if not claimed:
        return None
    validation = Validation.objects.select_related("project", "environment", "scenario").get(pk=validation_id)
    audit_record(
        action="validation.started",
        actor=worker_actor(worker),
        target=validation,
        project=validation.project.slug,
        environment=validation.environment.name,
        data={"build_id": validation.build_id, "worker": worker, "lease_seconds": lease_seconds},
    )
    announce(validation, Change.RUNNING)
    return validation


def validation_renew_lease(
    *, validation_id, worker: str, lease_seconds: float, progress: dict, estimated_completion=None
) -> bool:
    """Extend this worker's lease and record progress; False when the lease is no longer this
    worker's (the validation was reaped or ended), and the test should stop."""
    return bool(
        Validation.objects.filter(pk=validation_id, status=Validation.Status.RUNNING, worker=worker).update(
            lease_expires_at=timezone.now() + timedelta(seconds=lease_seconds),
            progress=progress,
            estimated_completion=estimated_completion,
        )
    )


@transaction.atomic
def validation_cancel(*, validation: Validation, reason: str, actor: Actor) -> Validation:
    """Stop a validation. A queued one ends at once; for a running one the worker is asked to
    stop its test, and ends the validation with this reason within seconds. Either way the
    outcome is an error, which the environment's policy turns into blocked or failed."""
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("A reason is required to cancel.", fields={"reason": ["This field is required."]})
    validation = (
        Validation.objects.select_for_update(of=("self",))
        .select_related("project", "environment")
        .get(pk=validation.pk)
    )
    require_right(actor, "block_deployment", validation.project, to="cancel validations")
    if not validation.is_pending:
        raise InvalidState(f"Build {validation.build_id} already finished with status {validation.status}.")
    message = f"Cancelled by {actor.name}: {reason}"
    lease_lapsed = validation.lease_expires_at is not None and validation.lease_expires_at < timezone.now()
    if validation.status == Validation.Status.QUEUED or lease_lapsed:
        return validation_record_error(
            validation=validation, reason=message, actor=actor, action="validation.cancelled"
        )
    validation.cancel_requested_by = actor.label
    validation.cancel_reason = message
    validation.save(update_fields=["cancel_requested_by", "cancel_reason"])
    audit_record(
        action="validation.cancel_requested",
        actor=actor,
        target=validation,
        project=validation.project.slug,
        environment=validation.environment.name,
        reason=reason,
        data={"build_id": validation.build_id, "worker": validation.worker},
    )
    return validation


def validation_reap_expired(*, now=None) -> int:
    """End every running validation whose lease expired unrenewed (its worker died or hangs):
    verdict error, then blocked or failed by policy, with the reason. Returns how many."""
    now = now or timezone.now()
    expired = Validation.objects.filter(status=Validation.Status.RUNNING, lease_expires_at__lt=now)
    reaped = 0
    for validation in expired.only("pk", "worker", "lease_expires_at"):
        renewed_at = validation.lease_expires_at.strftime("%H:%M:%S UTC")
        reason = (
            f"The load test stopped reporting: its worker ({validation.worker or 'unknown'}) no longer "
            f"renewed its lease, which expired at {renewed_at}. The worker probably died; no verdict "
            "was produced."
        )
        ended = validation_record_error(
            validation=validation,
            reason=reason,
            actor=SYSTEM,
            action="validation.lease_expired",
            only_if_lease_expired=True,
        )
        reaped += ended.status != Validation.Status.RUNNING
    return reaped
