"""Delivering recorded GitHub calls: the outbox hands each one to ``deliver``
(registered in ``IntegrationsConfig.ready``)."""

from __future__ import annotations

from django.utils import timezone

from integrations import http
from integrations.github.client import GitHubClient
from integrations.models import DeploymentReview, GitHubConnection, GitHubObject, OutboundCall

ANNOTATIONS_PER_REQUEST = 50


def deliver(call: OutboundCall) -> None:
    """Perform one recorded call. Raises ``http.TryLater`` or ``http.Refused``; progress made by a
    call of several requests is saved on the row, so a retry does not repeat what went through."""
    connection = GitHubConnection.objects.select_related("project").get(project_id=call.project_id)
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
