"""GitHub: what perfgate tells it (commit statuses, check runs, one sticky PR comment,
deployment-protection reviews) and what it asks of it (workflow dispatches, run artifacts).

``github_report`` runs inside the transaction that changed a validation and only *records* the
calls in the outbox; ``deliver`` performs one recorded call later (``integrations.outbox``).
``GitHubClient`` authenticates as a GitHub App installation (RS256 JWT → installation token,
cached until shortly before it expires) or with a fine-grained token.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from urllib.parse import urlsplit

import jwt
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gates.models import Validation
from gates.report import markdown_table
from gates.selectors import validation_document
from integrations import http
from integrations.models import DeploymentReview, GitHubConnection, GitHubObject, OutboundCall
from integrations.outbox import queue_delivery

API_VERSION = "2022-11-28"
STATUS_DESCRIPTION_MAX = 140
CHECK_OUTPUT_MAX_BYTES = 65_000  # GitHub's limit is 65,535 characters; bytes are the stricter count
COMMENT_MAX_BYTES = 60_000  # GitHub's limit is 65,536 characters
ANNOTATIONS_PER_REQUEST = 50
CHECK_NAME = "perfgate"
SHA = re.compile(r"^[0-9a-f]{40}$")
# Installation tokens live an hour; one is used until this many seconds before it expires.
TOKEN_MARGIN_SECONDS = 300


def context_of(validation: Validation) -> str:
    return f"perfgate/{validation.project.slug}/{validation.environment.name}"


def comment_marker(validation: Validation) -> str:
    return f"<!-- perfgate:{validation.project.slug}/{validation.environment.name} -->"


def absolute(path: str) -> str:
    return settings.PERFGATE_BASE_URL + path


# --- What is reported ---------------------------------------------------------------------------


def _status_state(validation: Validation) -> str:
    if validation.is_pending:
        return "pending"
    if validation.deployment_allowed:
        return "success"
    return "error" if validation.verdict == "error" and not validation.manual_block_reason else "failure"


def _headline(validation: Validation) -> str:
    if validation.status == Validation.Status.QUEUED:
        return "Waiting for a load test"
    if validation.status == Validation.Status.RUNNING:
        return "Load test running"
    text = {
        Validation.Status.PASSED: "Passed",
        Validation.Status.BLOCKED: "Blocked",
        Validation.Status.FAILED: "Failed (deployment allowed by policy)",
        Validation.Status.BYPASSED: "Bypassed by ops",
    }.get(validation.status, validation.status)
    if validation.verdict:
        text += f" — verdict {validation.verdict}"
    if validation.would_block and validation.deployment_allowed and validation.status != "bypassed":
        text += " (shadow: would have blocked)"
    return text


def status_description(validation: Validation) -> str:
    """At most 140 characters: the outcome and the first blocking reason."""
    text = _headline(validation)
    reason = (validation.blocking_reasons or [""])[0] or (
        validation.status_reason if not validation.is_pending else ""
    )
    if reason:
        text += f": {reason}"
    text = " ".join(text.split())
    return text if len(text) <= STATUS_DESCRIPTION_MAX else text[: STATUS_DESCRIPTION_MAX - 1] + "…"


def _links(validation: Validation) -> tuple[str, str]:
    links = validation_document(validation)["links"]
    return absolute(links["admin"]), absolute(links["chart"])


def summary_markdown(validation: Validation, *, max_bytes: int) -> str:
    page, chart = _links(validation)
    head = (
        f"**{_headline(validation)}** · {validation.project.slug}/{validation.environment.name} · "
        f"build `{validation.build_id}`\n\n"
    )
    if validation.status_reason and not validation.is_pending:
        head += f"{validation.status_reason}\n\n"
    tail = f"\n[Metric history chart]({chart}) · [Validation in perfgate]({page})\n"
    checks = validation.report.get("checks", []) if validation.report else []
    if not checks:
        return (head + tail)[:max_bytes]
    room = max_bytes - len(head.encode()) - len(tail.encode())
    return head + markdown_table(checks, max_bytes=room) + tail


def _annotations(validation: Validation) -> list[dict]:
    """One annotation per check that warned or failed, on the scenario's script (GitHub
    requires a path in the repository)."""
    scenario = validation.scenario
    path = (scenario.script_path if scenario else "") or ".github/perfgate"
    level = {"fail": "failure", "error": "failure", "warn": "warning", "inconclusive": "warning"}
    return [
        {
            "path": path,
            "start_line": 1,
            "end_line": 1,
            "annotation_level": level[check["verdict"]],
            "title": str(check.get("rule", ""))[:255],
            "message": str(check.get("reason", "")) or check["verdict"],
        }
        for check in (validation.report or {}).get("checks", [])
        if check.get("verdict") in level
    ]


def _check_payload(validation: Validation) -> dict:
    page, _ = _links(validation)
    payload = {
        "name": f"{CHECK_NAME} {validation.project.slug}/{validation.environment.name}",
        "head_sha": validation.git_hash,
        "external_id": str(validation.pk),
        "details_url": page,
    }
    if validation.is_pending:
        payload["status"] = "queued" if validation.status == Validation.Status.QUEUED else "in_progress"
        payload["output"] = {
            "title": _headline(validation),
            "summary": summary_markdown(validation, max_bytes=4000),
        }
        return payload
    conclusion = "success" if validation.deployment_allowed else "failure"
    if validation.status == Validation.Status.FAILED or (
        validation.would_block and validation.deployment_allowed
    ):
        conclusion = "neutral"
    payload.update(
        status="completed",
        conclusion=conclusion,
        output={
            "title": _headline(validation)[:255],
            "summary": summary_markdown(validation, max_bytes=CHECK_OUTPUT_MAX_BYTES),
            "annotations": _annotations(validation),
        },
    )
    return payload


def _pull_request(validation: Validation) -> int | None:
    number = (validation.deployment_context or {}).get("pullRequest")
    return number if isinstance(number, int) and number > 0 else None


def github_report(validation: Validation) -> None:
    """Record, in the current transaction, what GitHub must be told about this validation's
    status: a commit status, a check run (App), the sticky PR comment, and the answers to
    deployments waiting on it. Nothing is sent here."""
    connection = GitHubConnection.objects.filter(project_id=validation.project_id).first()
    repository = validation.project.repository
    if connection is None or not repository or not SHA.match(validation.git_hash or ""):
        return
    context = context_of(validation)
    key = f"{repository}@{validation.git_hash}:{context}"
    page, _ = _links(validation)
    calls = [
        (
            "status",
            key,
            {
                "repository": repository,
                "sha": validation.git_hash,
                "body": {
                    "state": _status_state(validation),
                    "context": context,
                    "description": status_description(validation),
                    "target_url": page,
                },
            },
        )
    ]
    if connection.is_app and connection.report_checks:
        calls.append(
            (
                "check_run",
                key + ":check",
                {
                    "repository": repository,
                    "object_key": f"check_run:{validation.pk}",
                    "body": _check_payload(validation),
                },
            )
        )
    number = _pull_request(validation)
    if number and connection.report_comments:
        marker = comment_marker(validation)
        calls.append(
            (
                "comment",
                f"{repository}#{number}:{context}",
                {
                    "repository": repository,
                    "issue": number,
                    "marker": marker,
                    "object_key": f"comment:{repository}#{number}:{context}",
                    "body": f"{marker}\n### perfgate · {context.removeprefix('perfgate/')}\n\n"
                    + summary_markdown(validation, max_bytes=COMMENT_MAX_BYTES),
                },
            )
        )
    OutboundCall.objects.bulk_create(
        OutboundCall(
            project_id=validation.project_id, validation=validation, kind=kind, ordering_key=k, payload=p
        )
        for kind, k, p in calls
    )
    if not validation.is_pending:
        # A deployment is answered once: by the first outcome (GitHub takes no second review).
        waiting = DeploymentReview.objects.filter(validation=validation, answered_at__isnull=True)
        answered = set(
            OutboundCall.objects.filter(validation=validation, kind="deployment_review").values_list(
                "ordering_key", flat=True
            )
        )
        for review in waiting:
            if f"review:{review.pk}" not in answered:
                record_review(review, validation)
    transaction.on_commit(queue_delivery)


def record_review(review: DeploymentReview, validation: Validation) -> None:
    """Record the answer to a deployment waiting on this (finished) validation."""
    OutboundCall.objects.create(
        project_id=validation.project_id,
        validation=validation,
        kind="deployment_review",
        ordering_key=f"review:{review.pk}",
        payload=_review_payload(review, validation),
    )
    transaction.on_commit(queue_delivery)


def record_rejection(
    *, project, callback_url: str, environment_name: str, deployment_id, reason: str
) -> None:
    """Reject a deployment perfgate cannot validate at all (no such environment, a refused
    request): answered at once, with the reason."""
    OutboundCall.objects.create(
        project=project,
        kind="deployment_review",
        ordering_key=f"deployment:{deployment_id}",
        payload={
            "review_id": None,
            "callback_url": callback_url,
            "body": {"environment_name": environment_name, "state": "rejected", "comment": reason[:1000]},
        },
    )
    transaction.on_commit(queue_delivery)


def _review_payload(review: DeploymentReview, validation: Validation) -> dict:
    approved = bool(validation.deployment_allowed)
    if approved:
        comment = f"perfgate: {_headline(validation)}."
    else:
        reasons = "; ".join(validation.blocking_reasons) or validation.status_reason or "blocked"
        comment = f"perfgate blocked this deployment: {reasons}"
    page, _ = _links(validation)
    comment = f"{comment} {page}"
    return {
        "review_id": review.pk,
        "callback_url": review.callback_url,
        "body": {
            "environment_name": review.environment_name,
            "state": "approved" if approved else "rejected",
            "comment": comment if len(comment) <= 1000 else comment[:999] + "…",
        },
    }


# --- Talking to GitHub --------------------------------------------------------------------------

_tokens: dict[tuple[str, int], tuple[str, float]] = {}
_tokens_lock = threading.Lock()


def app_jwt(app_id: str, private_key: str, *, now: float | None = None) -> str:
    """The App's own credential: RS256, issued 60 s in the past (clock drift), 10 minutes long."""
    issued = int(now if now is not None else time.time()) - 60
    return jwt.encode(
        {"iat": issued, "exp": issued + 600, "iss": str(app_id)}, private_key, algorithm="RS256"
    )


def forget_installation_tokens() -> None:
    with _tokens_lock:
        _tokens.clear()


class GitHubClient:
    """Calls GitHub's REST API for one project's connection. Credentials go only to the
    connection's API host; anything else (blob storage behind a redirect) is fetched without."""

    def __init__(self, connection: GitHubConnection):
        self.connection = connection
        self.base = connection.base_url
        self.timeout = settings.GITHUB_TIMEOUT_SECONDS

    # credentials

    def _installation_token(self, *, fresh: bool = False) -> str:
        key = (self.base, int(self.connection.installation_id or 0))
        with _tokens_lock:
            cached = _tokens.get(key)
            if cached and not fresh and cached[1] - TOKEN_MARGIN_SECONDS > time.time():
                return cached[0]
        reply = self._send(
            "POST",
            f"/app/installations/{self.connection.installation_id}/access_tokens",
            credential=self._jwt(),
        )
        body = reply.json()
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        with _tokens_lock:
            _tokens[key] = (body["token"], expires)
        return body["token"]

    def _jwt(self) -> str:
        connection = self.connection
        if not (connection.app_id and connection.private_key and connection.installation_id):
            raise http.Refused(
                "The GitHub App connection needs an app id, a private key and an installation id."
            )
        return app_jwt(connection.app_id, connection.private_key)

    def _credential(self, *, fresh: bool = False) -> str:
        if self.connection.is_app:
            return self._installation_token(fresh=fresh)
        if not self.connection.token:
            raise http.Refused("The GitHub connection has no token.")
        return self.connection.token

    # requests

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self.base + path_or_url
        if _origin(path_or_url) != _origin(self.base):
            raise http.Refused(f"Refusing to send GitHub credentials to {_origin(path_or_url)}.")
        return path_or_url

    def _send(self, method: str, path_or_url: str, *, credential: str, json=None) -> http.Reply:
        return http.call(
            method,
            self._url(path_or_url),
            timeout=self.timeout,
            json=json,
            headers={
                "Authorization": f"Bearer {credential}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
            },
        )

    def request(self, method: str, path_or_url: str, json=None) -> http.Reply:
        self._url(path_or_url)  # refuse a foreign host before any credential is made
        try:
            return self._send(method, path_or_url, credential=self._credential(), json=json)
        except http.Refused as exc:
            if exc.status != 401 or not self.connection.is_app:
                raise
        # The cached installation token was revoked or expired early: mint another, once.
        return self._send(method, path_or_url, credential=self._credential(fresh=True), json=json)

    def pages(self, path: str):
        """Every item of a paginated list, following the ``Link: rel="next"`` header."""
        url = path + ("&" if "?" in path else "?") + "per_page=100"
        while url:
            reply = self.request("GET", url)
            yield from reply.json()
            url = _next_link(reply.headers.get("Link", ""))

    def whoami(self) -> str:
        """The login perfgate posts as: ``<app-slug>[bot]`` for an App, the token's user otherwise."""
        if self.connection.bot_login:
            return self.connection.bot_login
        if self.connection.is_app:
            login = self._send("GET", "/app", credential=self._jwt()).json()["slug"] + "[bot]"
        else:
            login = self.request("GET", "/user").json()["login"]
        self.connection.bot_login = login
        GitHubConnection.objects.filter(pk=self.connection.pk).update(bot_login=login)
        return login

    # workflows

    def dispatch_workflow(self, repository: str, workflow: str, *, ref: str, inputs: dict) -> int | None:
        """Start the workflow; the run's id when GitHub tells it (``return_run_details``)."""
        path = f"/repos/{repository}/actions/workflows/{workflow}/dispatches"
        try:
            reply = self.request(
                "POST", path, json={"ref": ref, "inputs": inputs, "return_run_details": True}
            )
        except http.Refused as exc:
            if exc.status != 422 or "return_run_details" not in str(exc):
                raise
            # An older GitHub Enterprise Server: dispatch without it, find the run by correlation id.
            reply = self.request("POST", path, json={"ref": ref, "inputs": inputs})
        body = reply.json() if reply.status == 200 else None
        return int(body["workflow_run_id"]) if body and body.get("workflow_run_id") else None

    def find_dispatched_run(self, repository: str, correlation_id: str) -> dict | None:
        """The run whose title carries our correlation id (the workflow's
        ``run-name: perfgate ${{ inputs.correlation_id }}``)."""
        reply = self.request("GET", f"/repos/{repository}/actions/runs?event=workflow_dispatch&per_page=50")
        for run in reply.json().get("workflow_runs", []):
            if correlation_id in (run.get("display_title") or "") or correlation_id in (
                run.get("name") or ""
            ):
                return run
        return None

    def run(self, repository: str, run_id: int) -> dict:
        return self.request("GET", f"/repos/{repository}/actions/runs/{run_id}").json()

    def download_artifact(self, repository: str, run_id: int, name: str, destination) -> int:
        """The run's artifact called ``name`` into ``destination``. GitHub answers the download
        with a redirect to blob storage, which is fetched without the Authorization header."""
        artifacts = self.request("GET", f"/repos/{repository}/actions/runs/{run_id}/artifacts").json()
        artifact = next((a for a in artifacts.get("artifacts", []) if a.get("name") == name), None)
        if artifact is None:
            raise http.Refused(f"Run {run_id} has no artifact named {name!r}.")
        if artifact.get("expired"):
            raise http.Refused(f"The artifact {name!r} of run {run_id} has expired.")
        if artifact.get("size_in_bytes", 0) > settings.PERFGATE_ARTIFACT_MAX_BYTES:
            raise http.Refused(f"The artifact {name!r} is larger than PERFGATE_ARTIFACT_MAX_BYTES.")
        reply = self.request("GET", f"/repos/{repository}/actions/artifacts/{artifact['id']}/zip")
        location = reply.headers.get("Location")
        if reply.status not in (301, 302, 303, 307, 308) or not location:
            raise http.Refused(f"Expected a redirect to the artifact's archive, got HTTP {reply.status}.")
        return http.download(
            location, destination, timeout=self.timeout * 6, max_bytes=settings.PERFGATE_ARTIFACT_MAX_BYTES
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="next"', part)
        if match:
            return match.group(1)
    return None


# --- Delivering recorded calls ------------------------------------------------------------------


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
