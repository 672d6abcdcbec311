"""Delivering recorded Vercel calls: the outbox hands each one to ``deliver`` (registered in
``IntegrationsConfig.ready``).

``check``: make perfgate's check on the deployment if it is not made yet (a run of the project's
check, or a legacy check), then bring it up to date. ``rollback``: ask Vercel to roll production
back, then follow the project's alias request to its end, one look per attempt; what was sent is
saved on the call (``progress``), so a retry after the rollback went through only looks again.
"""

from __future__ import annotations

import time

from django.conf import settings

from gates.models import Rollback
from gates.services.rollbacks import rollback_record_outcome, rollback_record_progress
from integrations import http
from integrations.models import OutboundCall, VercelCheck, VercelConnection
from integrations.vercel.client import CHECK_NAME, VercelClient

ALIAS_UNFINISHED = ("pending", "in-progress")
# The longest a rollback's alias request is followed before the rollback is called failed.
FOLLOW_SECONDS = 600
UNDO_ROLLBACK = (
    "Vercel has turned off automatic production domain assignment for the project: new production "
    "deployments will not go live until the rollback is undone. Undo it by promoting a deployment "
    '(`vercel promote <deployment>`, or "Promote" in the dashboard) or with "Undo rollback" on the '
    "project's dashboard."
)


def deliver(call: OutboundCall) -> None:
    """Perform one recorded call. Raises ``http.TryLater`` or ``http.Refused``."""
    connection = VercelConnection.objects.select_related("project").filter(project_id=call.project_id).first()
    if connection is None:
        if call.kind == "rollback":
            _fail_rollback(call, "the project has no Vercel connection any more")
        raise http.Refused("The project has no Vercel connection.")
    client = VercelClient(connection)
    if call.kind == "check":
        _deliver_check(client, call)
    elif call.kind == "rollback":
        _deliver_rollback(client, call)
    else:
        raise http.Refused(f"Unknown outbound call kind {call.kind!r}.")


# --- checks --------------------------------------------------------------------------------------


def _deliver_check(client: VercelClient, call: OutboundCall) -> None:
    payload = call.payload
    deployment_id, api = payload["deployment_id"], payload["api"]
    vercel_id = _known_check(call)
    if not vercel_id:
        if api == VercelConnection.ChecksApi.PROJECT:
            vercel_id = _create_check_run(client, deployment_id)
        else:
            vercel_id = client.create_legacy_check(deployment_id, payload["create"])
        if payload.get("check"):
            VercelCheck.objects.filter(pk=payload["check"], vercel_id="").update(vercel_id=vercel_id)
        _save_progress(call, vercel_id=vercel_id)
    if payload.get("update"):
        if api == VercelConnection.ChecksApi.PROJECT:
            client.update_check_run(deployment_id, vercel_id, payload["update"])
        else:
            client.update_legacy_check(deployment_id, vercel_id, payload["update"])


def _known_check(call: OutboundCall) -> str:
    """The Vercel id of the call's check: made by this call's earlier attempt, by an earlier
    call, or (a rerun) by an earlier attempt on the same deployment."""
    payload = call.payload
    if call.progress.get("vercel_id"):
        return call.progress["vercel_id"]
    known = VercelCheck.objects.filter(
        validation__project_id=call.project_id, deployment_id=payload["deployment_id"], api=payload["api"]
    ).exclude(vercel_id="")
    if payload.get("check"):
        own = known.filter(pk=payload["check"]).values_list("vercel_id", flat=True).first()
        if own:
            return own
    return known.order_by("created_at").values_list("vercel_id", flat=True).first() or ""


def _create_check_run(client: VercelClient, deployment_id: str) -> str:
    check_id = _project_check(client)
    try:
        return client.create_check_run(deployment_id, check_id)
    except http.Refused as exc:
        if exc.status != 404:
            raise
    # The deployment exists (Vercel told us about it), so the check is what is gone: someone
    # deleted perfgate's project check. Make it again, once.
    VercelConnection.objects.filter(pk=client.connection.pk, check_id=check_id).update(check_id="")
    client.connection.check_id = ""
    return client.create_check_run(deployment_id, _project_check(client))


def _project_check(client: VercelClient) -> str:
    """perfgate's project-level check: the stored one, perfgate's own found on Vercel (a
    creation whose answer was lost), or a new one."""
    connection = client.connection
    if connection.check_id:
        return connection.check_id
    project_id = connection.project.vercel_project_id
    if not project_id:
        raise http.Refused(f"Project {connection.project.slug} has no Vercel project id.")
    found = next((c["id"] for c in client.project_checks(project_id) if c.get("name") == CHECK_NAME), None)
    check_id = found or client.create_project_check(project_id)
    # Two deliveries racing each made one: the first stored is the one used.
    VercelConnection.objects.filter(pk=connection.pk, check_id="").update(check_id=check_id)
    connection.check_id = VercelConnection.objects.values_list("check_id", flat=True).get(pk=connection.pk)
    return connection.check_id


def _save_progress(call: OutboundCall, **progress) -> None:
    call.progress = {**call.progress, **progress}
    OutboundCall.objects.filter(pk=call.pk).update(progress=call.progress)


# --- rollbacks -----------------------------------------------------------------------------------


def _deliver_rollback(client: VercelClient, call: OutboundCall) -> None:
    """One try: send the rollback (once), then look at the alias request; while it is under way,
    look again later. After PERFGATE_ROLLBACK_MAX_ATTEMPTS tries without an outcome, or at a
    refusal, the rollback has failed, loudly and for good: it is never retried into a loop."""
    rollback = Rollback.objects.filter(pk=call.payload["rollback"]).first()
    if rollback is None or rollback.state not in (Rollback.State.APPROVED, Rollback.State.RUNNING):
        return  # already ended (recorded by an earlier try whose call was not marked)
    try:
        _rollback_step(client, call, rollback)
    except http.Pending:
        # A look at an alias request under way is no failed try; following one is bounded in time.
        requested_at = call.progress.get("requested_at") or time.time()
        if time.time() - requested_at > FOLLOW_SECONDS:
            _fail_rollback(call, f"its alias request did not finish within {FOLLOW_SECONDS // 60} minutes")
            raise http.Refused("Rollback alias request not finished in time") from None
        raise
    except http.TryLater as exc:
        # Counted here, not by the outbox, whose give-up is a day away: a rollback that cannot be
        # sent is loud within a few tries.
        tries = call.progress.get("tries", 0) + 1
        _save_progress(call, tries=tries)
        if tries < settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS:
            raise
        _fail_rollback(call, f"no outcome after {tries} attempts (the last: {exc})")
        raise http.Refused(f"Rollback given up after {tries} attempts: {exc}") from None
    except http.Refused as exc:
        _fail_rollback(call, str(exc))
        raise


def _rollback_step(client: VercelClient, call: OutboundCall, rollback: Rollback) -> None:
    payload = call.payload
    project_id, target = payload["project_id"], payload["deployment_id"]
    build = payload.get("target_build_id", "?")
    if not call.progress.get("requested"):
        try:
            client.rollback(project_id, target, description=f"perfgate: {rollback.reason}")
        except http.Refused as exc:
            # A 409 may answer our own rollback, sent by an attempt whose answer was lost.
            if exc.status != 409 or not _is_rollback_to(target, client.project(project_id)):
                raise http.Refused(f"Vercel refused the rollback ({exc})", status=exc.status) from None
        _save_progress(call, requested=True, requested_at=time.time())
        rollback_record_progress(
            rollback=rollback,
            detail=f"Vercel accepted the rollback to deployment {target} (build {build}); "
            "following its alias request.",
        )
    project = client.project(project_id)
    if not _is_rollback_to(target, project):
        raise http.Refused(
            f"Vercel's latest alias request is not the rollback to {target}: another rollback or a "
            "promotion replaced it"
        )
    job = project["lastAliasRequest"].get("jobStatus")
    if job in ALIAS_UNFINISHED:
        raise http.Pending(
            f"Vercel's alias request for the rollback is {job}",
            retry_after=settings.PERFGATE_ROLLBACK_POLL_SECONDS,
        )
    if job != "succeeded":
        raise http.Refused(f"Vercel's alias request for the rollback ended {job!r}")
    rollback_record_outcome(
        rollback=rollback,
        succeeded=True,
        detail=f"Vercel rolled production back to deployment {target} (build {build}). {UNDO_ROLLBACK}",
    )


def _is_rollback_to(target: str, project: dict) -> bool:
    alias = project.get("lastAliasRequest") or {}
    return alias.get("toDeploymentId") == target and alias.get("type", "rollback") == "rollback"


def _fail_rollback(call: OutboundCall, why: str) -> None:
    rollback = Rollback.objects.filter(pk=call.payload.get("rollback")).first()
    if rollback is not None:
        rollback_record_outcome(
            rollback=rollback,
            succeeded=False,
            detail=f"The rollback through Vercel to deployment {call.payload.get('deployment_id')} "
            f"failed: {why}. Production may still serve the degraded deployment: check Vercel now.",
        )
