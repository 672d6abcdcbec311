"""What Vercel must hear about a validation: its check on the deployment (registered, running,
concluded) and, when a watched deployment degrades, the rollback.

``vercel_listen`` is registered with the gate (``IntegrationsConfig.ready``) and runs inside the
transaction that changed a validation: it only *records* calls in the outbox, which delivers them
later (``integrations.vercel.delivery``). Nothing is sent from here. ``protection_headers`` gives
the load test of a Vercel deployment the project's protection-bypass secret.
"""

from __future__ import annotations

from django.db import transaction

from gates.documents import validation_links
from gates.models import AuditEvent, Rollback, Validation
from gates.registry import Change
from gates.services.rollbacks import rollback_take
from integrations.github.report import absolute, status_description
from integrations.models import OutboundCall, VercelCheck, VercelConnection
from integrations.outbox import queue_delivery
from integrations.vercel.client import CHECK_NAME

PROVIDER = "vercel"
BYPASS_HEADER = "x-vercel-protection-bypass"


def from_vercel(validation: Validation) -> bool:
    return (validation.deployment_context or {}).get("provider") == PROVIDER


def details_url(validation: Validation) -> str:
    """The validation's page in perfgate, absolute (Vercel links to it from the check)."""
    return absolute(validation_links(validation)["admin"])


def was_cancelled(validation: Validation) -> bool:
    """Cancelled by a person or by Vercel (``validation_cancel``), as the audit log records it."""
    return AuditEvent.objects.filter(action="validation.cancelled", target_id=str(validation.pk)).exists()


def conclusion_of(validation: Validation, change: Change | None = None) -> str:
    """The check's conclusion for a finished validation. Only a pass is ``succeeded``: a shadow
    "would block", a fail-open error and a bypass let the deployment through as ``neutral``, so no
    deployment, production above all, is ever marked succeeded without a perfgate pass."""
    if change == Change.CANCELLED or (change is None and was_cancelled(validation)):
        return "canceled"
    if validation.status == Validation.Status.PASSED and not validation.would_block:
        return "succeeded"
    if validation.deployment_allowed:
        return "neutral"
    return "failed"


def _update_body(api: str, validation: Validation, change: Change | None) -> dict | None:
    """What the check must say now, in the shape of its API; None while the validation waits
    (a new check is ``registered``/``queued`` already)."""
    if validation.status == Validation.Status.QUEUED:
        return None
    page = details_url(validation)
    if validation.status == Validation.Status.RUNNING:
        status = {"status": "running"}
    else:
        status = {"status": "completed", "conclusion": conclusion_of(validation, change)}
    if api == VercelConnection.ChecksApi.LEGACY:
        return {**status, "detailsUrl": page, "externalId": str(validation.pk)}
    body = {**status, "externalId": str(validation.pk), "externalUrl": page}
    if not validation.is_pending:
        body["conclusionText"] = status_description(validation)
    return body


def _legacy_create_body(validation: Validation | None) -> dict:
    body = {"name": CHECK_NAME, "blocking": True, "rerequestable": True}
    if validation is not None:
        body.update(detailsUrl=details_url(validation), externalId=str(validation.pk))
    return body


def _check_key(deployment_id: str) -> str:
    # Every call about one deployment's check goes out in the order it was recorded.
    return f"vercel:{deployment_id}:check"


def record_check(check: VercelCheck, validation: Validation, change: Change | None = None) -> None:
    """Record (in the current transaction) the call that brings the check on Vercel up to date
    with ``validation``: made if it is not yet, then running or concluded."""
    update = _update_body(check.api, validation, change)
    if update is None and check.vercel_id:
        return
    OutboundCall.objects.create(
        project_id=validation.project_id,
        validation=validation,
        provider=PROVIDER,
        kind="check",
        ordering_key=_check_key(check.deployment_id),
        payload={
            "check": check.pk,
            "deployment_id": check.deployment_id,
            "api": check.api,
            "create": _legacy_create_body(validation),
            "update": update,
        },
    )
    transaction.on_commit(queue_delivery)


def record_refusal(*, connection: VercelConnection, deployment_id: str, reason: str) -> None:
    """A deployment perfgate cannot validate at all (no such environment, a refused request):
    its check is made and concluded failed at once, with the reason."""
    api = connection.checks_api
    update = {"status": "completed", "conclusion": "failed"}
    if api == VercelConnection.ChecksApi.PROJECT:
        update["conclusionText"] = _short(f"perfgate refused: {reason}")
    OutboundCall.objects.create(
        project_id=connection.project_id,
        provider=PROVIDER,
        kind="check",
        ordering_key=_check_key(deployment_id),
        payload={
            "check": None,
            "deployment_id": deployment_id,
            "api": api,
            "create": _legacy_create_body(None),
            "update": update,
        },
    )
    transaction.on_commit(queue_delivery)


def _short(text: str, limit: int = 140) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def vercel_listen(validation: Validation, change: Change) -> None:
    """Record, in the current transaction, what Vercel must hear: the check of each attempt on
    the validation's deployment follows its status, and an approved rollback of a deployment
    Vercel serves is carried out through Vercel. Nothing is sent here."""
    if change == Change.ROLLBACK:
        _record_rollbacks(validation)
        return
    if change == Change.BYPASSED or not from_vercel(validation):
        # A bypass comes after a blocked outcome, which concluded the check: Vercel keeps a
        # completed check as it is until someone reruns it, so there is nothing to update.
        return
    for check in VercelCheck.objects.filter(validation=validation):
        record_check(check, validation, change)


def _record_rollbacks(validation: Validation) -> None:
    """Take each approved rollback of this deployment that Vercel can carry out (a Vercel
    connection, and Vercel deployment ids on both sides) and record its call."""
    connection = VercelConnection.objects.filter(project_id=validation.project_id).first()
    project = validation.project
    if connection is None or not project.vercel_project_id:
        return
    from_id = (validation.deployment_context or {}).get("deploymentId")
    rollbacks = Rollback.objects.filter(validation=validation, state=Rollback.State.APPROVED, via="")
    for rollback in rollbacks.select_related("target_validation"):
        target = rollback.target_validation
        to_id = (target.deployment_context or {}).get("deploymentId") if target else None
        if not (from_id and to_id) or not rollback_take(rollback=rollback, via=PROVIDER):
            continue
        OutboundCall.objects.create(
            project_id=validation.project_id,
            validation=validation,
            provider=PROVIDER,
            kind="rollback",
            ordering_key=f"vercel:rollback:{rollback.pk}",
            payload={
                "rollback": rollback.pk,
                "project_id": project.vercel_project_id,
                "deployment_id": str(to_id),
                "from_deployment_id": str(from_id),
                "target_build_id": target.build_id,
            },
        )
        transaction.on_commit(queue_delivery)


def protection_headers(validation: Validation) -> dict[str, str]:
    """``x-vercel-protection-bypass`` for a load test (or probe) of a Vercel deployment whose
    project has a bypass secret, so protected deployments can be tested; nothing otherwise."""
    if not from_vercel(validation):
        return {}
    connection = VercelConnection.objects.filter(project_id=validation.project_id).first()
    if connection is None or not connection.protection_bypass_secret:
        return {}
    return {BYPASS_HEADER: connection.protection_bypass_secret}
