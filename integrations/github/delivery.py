"""Delivering recorded GitHub calls: the outbox hands each one to ``deliver``
(registered in ``IntegrationsConfig.ready``).

``rollback_workflow``: dispatch the environment's rollback workflow once, then follow its run,
one look per attempt, until it concludes; what was done is saved on the call (``progress``), so
a later attempt never dispatches it again.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from gates.models import Rollback
from gates.services.rollbacks import rollback_record_outcome, rollback_record_progress
from integrations import http
from integrations.github.client import GitHubClient
from integrations.github.workflows import FIND_RUN_SECONDS
from integrations.models import DeploymentReview, GitHubConnection, GitHubObject, OutboundCall

ANNOTATIONS_PER_REQUEST = 50
# A workflow is named by its file in .github/workflows (or its numeric id): nothing that could
# turn the API path into another one.
WORKFLOW_NAME = re.compile(r"[\w.-]+")


def deliver(call: OutboundCall) -> None:
    """Perform one recorded call. Raises ``http.TryLater`` or ``http.Refused``; progress made by a
    call of several requests is saved on the row, so a retry does not repeat what went through."""
    connection = GitHubConnection.objects.select_related("project").filter(project_id=call.project_id).first()
    if connection is None:
        if call.kind == "rollback_workflow":
            _fail_rollback(call, "the project has no GitHub connection any more")
        raise http.Refused("The project has no GitHub connection.")
    client = GitHubClient(connection)
    payload = call.payload
    if call.kind == "status":
        client.request(
            "POST", f"/repos/{payload['repository']}/statuses/{payload['sha']}", json=payload["body"]
        )
    elif call.kind == "check_run":
        _deliver_check_run(client, call)
    elif call.kind == "comment":
        _deliver_comment(client, payload)
    elif call.kind == "deployment_review":
        client.request("POST", payload["callback_url"], json=payload["body"])
        if payload.get("review_id"):
            DeploymentReview.objects.filter(pk=payload["review_id"]).update(answered_at=timezone.now())
    elif call.kind == "rollback_workflow":
        _deliver_rollback_workflow(client, call)
    else:
        raise http.Refused(f"Unknown outbound call kind {call.kind!r}.")


def _deliver_check_run(client: GitHubClient, call: OutboundCall) -> None:
    payload = call.payload
    repository = payload["repository"]
    body = dict(payload["body"])
    output = dict(body.get("output") or {})
    annotations = output.pop("annotations", [])
    sent = call.progress.get("annotations_sent", 0)
    known = GitHubObject.objects.filter(key=payload["object_key"]).first()
    first = annotations[sent : sent + ANNOTATIONS_PER_REQUEST]
    if output:
        body["output"] = {**output, "annotations": first} if first else output
    if known is None:
        reply = client.request("POST", f"/repos/{repository}/check-runs", json=body)
        known, _ = GitHubObject.objects.get_or_create(
            key=payload["object_key"], defaults={"github_id": reply.json()["id"]}
        )
    else:
        client.request("PATCH", f"/repos/{repository}/check-runs/{known.github_id}", json=body)
    sent += len(first)
    _save_progress(call, annotations_sent=sent)
    while sent < len(annotations):
        batch = annotations[sent : sent + ANNOTATIONS_PER_REQUEST]
        client.request(
            "PATCH",
            f"/repos/{repository}/check-runs/{known.github_id}",
            json={"output": {**output, "annotations": batch}},
        )
        sent += len(batch)
        _save_progress(call, annotations_sent=sent)


def _save_progress(call: OutboundCall, **progress) -> None:
    call.progress = {**call.progress, **progress}
    OutboundCall.objects.filter(pk=call.pk).update(progress=call.progress)


def _deliver_comment(client: GitHubClient, payload: dict) -> None:
    """Edit perfgate's comment in place; find it by its hidden marker among the bot's own
    comments (across every page) when perfgate does not know its id yet."""
    repository, number, key = payload["repository"], payload["issue"], payload["object_key"]
    known = GitHubObject.objects.filter(key=key).first()
    if known is not None:
        try:
            client.request(
                "PATCH",
                f"/repos/{repository}/issues/comments/{known.github_id}",
                json={"body": payload["body"]},
            )
            return
        except http.Refused as exc:
            if exc.status != 404:
                raise
            known.delete()  # someone deleted the comment: post a new one
    me = client.whoami()
    existing = next(
        (
            comment
            for comment in client.pages(f"/repos/{repository}/issues/{number}/comments")
            if comment.get("user", {}).get("login") == me and payload["marker"] in (comment.get("body") or "")
        ),
        None,
    )
    if existing is not None:
        client.request(
            "PATCH", f"/repos/{repository}/issues/comments/{existing['id']}", json={"body": payload["body"]}
        )
        comment_id = existing["id"]
    else:
        reply = client.request(
            "POST", f"/repos/{repository}/issues/{number}/comments", json={"body": payload["body"]}
        )
        comment_id = reply.json()["id"]
    GitHubObject.objects.update_or_create(key=key, defaults={"github_id": comment_id})


# --- rollbacks through a GitHub workflow -------------------------------------------------------


def _deliver_rollback_workflow(client: GitHubClient, call: OutboundCall) -> None:
    """One attempt: dispatch the workflow (once), then look at its run. A run that is still going
    is looked at again after PERFGATE_ROLLBACK_POLL_SECONDS, and those looks are no failures. A
    refusal, PERFGATE_ROLLBACK_MAX_ATTEMPTS failed attempts, or a run that outlives
    PERFGATE_WORKFLOW_TIMEOUT_MINUTES fail the rollback, loudly and for good."""
    rollback = Rollback.objects.filter(pk=call.payload["rollback"]).first()
    if rollback is None or rollback.state not in (Rollback.State.APPROVED, Rollback.State.RUNNING):
        return  # already ended (recorded by an earlier attempt whose call was not marked)
    try:
        run = _rollback_step(client, call, rollback)
    except http.TryLater as exc:
        failures = call.progress.get("failures", 0) + 1
        _save_progress(call, failures=failures)
        if failures < settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS:
            raise
        _fail_rollback(call, f"GitHub gave no answer in {failures} attempts (the last: {exc})")
        raise http.Refused(f"Rollback workflow given up after {failures} failed attempts: {exc}") from None
    except http.Refused as exc:
        _fail_rollback(call, f"GitHub refused: {exc}")
        raise
    where = (run.get("html_url") or f"run {run.get('id')}") if run else ""
    if run is None or run.get("status") != "completed":
        dispatched_at = datetime.fromisoformat(call.progress["dispatched_at"])
        if run is None and timezone.now() - dispatched_at > timedelta(seconds=FIND_RUN_SECONDS):
            why = (
                f"it was dispatched, but its run was not found within {FIND_RUN_SECONDS} s (does the "
                "workflow's run-name include inputs.correlation_id?); perfgate cannot follow it"
            )
            _fail_rollback(call, why)
            raise http.Refused(f"Rollback workflow: {why}")
        timeout = settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES
        if timezone.now() - dispatched_at > timedelta(minutes=timeout):
            why = f"its run {where} did not finish within {timeout} minutes; perfgate stopped following it"
            _fail_rollback(call, why)
            raise http.Refused(f"Rollback workflow: {why}")
        state = run.get("status") if run else "not found yet"
        raise http.Pending(
            f"The rollback workflow's run is {state}", retry_after=settings.PERFGATE_ROLLBACK_POLL_SECONDS
        )
    conclusion = run.get("conclusion")
    payload = call.payload
    what = f"The rollback workflow {payload['workflow']} ({where}) ended {conclusion}"
    if conclusion == "success":
        detail = f"{what}: production is back on build {payload.get('target_build_id', '?')}."
    else:
        detail = (
            f"{what}: the rollback to build {payload.get('target_build_id', '?')} failed. Production may "
            "still serve the degraded deployment: look at the run now."
        )
    rollback_record_outcome(rollback=rollback, succeeded=conclusion == "success", detail=detail)


def _rollback_step(client: GitHubClient, call: OutboundCall, rollback: Rollback) -> dict | None:
    """Dispatch the workflow unless an earlier attempt did; then the run as GitHub shows it now
    (None while the run of a dispatch GitHub gave no id for is not listed yet)."""
    payload = call.payload
    repository, workflow = payload["repository"], payload["workflow"]
    correlation = payload["inputs"]["correlation_id"]
    if not WORKFLOW_NAME.fullmatch(workflow):
        raise http.Refused(f"{workflow!r} is not a workflow file name")
    if not call.progress.get("dispatched_at") and call.progress.get("dispatch_tried"):
        # The last dispatch got no answer, so it may have gone through: look before sending another.
        found = client.find_dispatched_run(repository, correlation)
        if found is not None:
            _dispatched(call, rollback, int(found["id"]))
    if not call.progress.get("dispatched_at"):
        _save_progress(call, dispatch_tried=True)
        run_id = client.dispatch_workflow(repository, workflow, ref=payload["ref"], inputs=payload["inputs"])
        _dispatched(call, rollback, run_id)
    run_id = call.progress.get("run_id")
    if run_id is None:
        found = client.find_dispatched_run(repository, correlation)
        if found is None:
            return None
        run_id = int(found["id"])
        _save_progress(call, run_id=run_id)
    run = client.run(repository, run_id)
    if run.get("html_url") and not call.progress.get("run_url"):
        _save_progress(call, run_url=run["html_url"])
        rollback_record_progress(
            rollback=rollback,
            detail=f"The rollback workflow {workflow} runs on GitHub: {run['html_url']} (rolling back to "
            f"build {payload.get('target_build_id', '?')}).",
        )
    return run


def _dispatched(call: OutboundCall, rollback: Rollback, run_id: int | None) -> None:
    _save_progress(call, dispatched_at=timezone.now().isoformat(), run_id=run_id)
    payload = call.payload
    rollback_record_progress(
        rollback=rollback,
        detail=f"The rollback workflow {payload['workflow']} was dispatched on {payload['ref']} of "
        f"{payload['repository']} (rolling back to build {payload.get('target_build_id', '?')}, commit "
        f"{payload['inputs']['target_sha'][:12]}); following its run.",
    )


def _fail_rollback(call: OutboundCall, why: str) -> None:
    rollback = Rollback.objects.filter(pk=call.payload.get("rollback")).first()
    if rollback is None:
        return
    if call.progress.get("dispatched_at"):
        run = call.progress.get("run_url") or "its run"
        then = f"The workflow was dispatched: look at {run} before rolling back by hand."
    else:
        then = "Production still serves the degraded deployment: roll back by hand now."
    rollback_record_outcome(
        rollback=rollback,
        succeeded=False,
        detail=f"The rollback through the GitHub workflow {call.payload.get('workflow')} to build "
        f"{call.payload.get('target_build_id', '?')} failed: {why}. {then}",
    )
