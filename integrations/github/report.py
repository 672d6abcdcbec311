"""What GitHub must hear about a validation: a commit status, a check run (App connections), the
sticky pull-request comment, and the answers to deployments waiting on it.

``github_listen`` is registered with the gate (``IntegrationsConfig.ready``) and runs inside the
transaction that changed a validation: it only *records* calls in the outbox, which delivers them
later (``integrations.github.delivery``). Nothing is sent from here.

An approved rollback of a deployment (``Change.ROLLBACK``) is taken when the environment names a
rollback workflow: its ``workflow_dispatch`` is recorded, and the delivery follows the run to its
conclusion. The workflow must declare these string inputs: ``environment``, ``target_sha``,
``target_deployment``, ``rolled_back_sha``, ``reason`` and ``correlation_id`` (its ``run-name``
should carry ``inputs.correlation_id``, so the run is found where GitHub does not return its id).
"""

from __future__ import annotations

import re
import uuid

from django.conf import settings
from django.db import transaction

from gates.documents import validation_links
from gates.models import Rollback, Validation
from gates.registry import Change
from gates.report import markdown_table, markdown_text
from gates.services.rollbacks import rollback_take
from integrations.models import DeploymentReview, GitHubConnection, NotificationChannel, OutboundCall
from integrations.outbox import queue_delivery

STATUS_DESCRIPTION_MAX = 140
CHECK_OUTPUT_MAX_BYTES = 65_000  # GitHub's limit is 65,535 characters; bytes are the stricter count
COMMENT_MAX_BYTES = 60_000  # GitHub's limit is 65,536 characters
CHECK_NAME = "perfgate"
SHA = re.compile(r"^[0-9a-f]{40}$")


def context_of(validation: Validation) -> str:
    return f"perfgate/{validation.project.slug}/{validation.environment.name}"


def comment_marker(validation: Validation) -> str:
    return f"<!-- perfgate:{validation.project.slug}/{validation.environment.name} -->"


def absolute(path: str) -> str:
    return settings.PERFGATE_BASE_URL + path


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
    links = validation_links(validation)
    return absolute(links["admin"]), absolute(links["chart"])


def summary_markdown(validation: Validation, *, max_bytes: int) -> str:
    page, chart = _links(validation)
    head = (
        f"**{_headline(validation)}** · {validation.project.slug}/{validation.environment.name} · "
        f"build `{validation.build_id}`\n\n"
    )
    if validation.status_reason and not validation.is_pending:
        head += f"{validation.status_reason}\n\n"
    head += _broken_channels(validation)
    tail = f"\n[Metric history chart]({chart}) · [Validation in perfgate]({page})\n"
    report = validation.report or {}
    checks = report.get("checks", [])
    if not checks:
        return (head + tail)[:max_bytes]
    room = max_bytes - len(head.encode()) - len(tail.encode())
    return head + markdown_table(checks, max_bytes=room, notices=report.get("notices", ())) + tail


def _broken_channels(validation: Validation) -> str:
    """A warning for each notification channel of the project that Slack closed: people who
    rely on it are not being told."""
    broken = NotificationChannel.objects.filter(project_id=validation.project_id, broken_at__isnull=False)
    return "".join(
        f"> [!WARNING]\n> Notification channel **{markdown_text(c.name)}** is broken "
        f"({markdown_text(c.broken_reason)}): nobody hears about this project there until it gets a new "
        "webhook URL in perfgate's admin.\n\n"
        for c in broken.order_by("name")
    )


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


def github_listen(validation: Validation, change: Change) -> None:
    """Record, in the current transaction, what GitHub must be told about this validation's
    status: a commit status, a check run (App), the sticky PR comment, and the answers to
    deployments waiting on it. Every change is reported the same way: GitHub shows the status a
    validation has now, whatever moved it there. Nothing is sent here.

    A rollback decided after the validation passed changes nothing GitHub shows about it: only
    the rollback workflow is recorded (when the environment has one)."""
    if change == Change.ROLLBACK:
        record_rollbacks(validation)
        return
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


ROLLBACK_REASON_MAX = 200


def record_rollbacks(validation: Validation) -> None:
    """Take each approved rollback of this deployment that a GitHub workflow can carry out (a
    GitHub connection, the repository, and the environment's rollback workflow) and record the
    workflow's dispatch. Each rollback is taken once (``rollback_take``), so announcing it again
    records nothing more."""
    connection = GitHubConnection.objects.filter(project_id=validation.project_id).first()
    repository = validation.project.repository
    if connection is None or not repository:
        return
    rollbacks = Rollback.objects.filter(
        validation=validation, state=Rollback.State.APPROVED, via=""
    ).select_related("environment", "target_validation")
    recorded = False
    for rollback in rollbacks:
        workflow = rollback.environment.rollback_workflow
        target = rollback.target_validation
        if not workflow or target is None or not rollback_take(rollback=rollback, via="github"):
            continue
        reason = " ".join(rollback.reason.split())
        if len(reason) > ROLLBACK_REASON_MAX:
            reason = reason[: ROLLBACK_REASON_MAX - 1] + "…"
        # Strings only, and six: within GitHub's limit (10 inputs on older servers, 25 today).
        inputs = {
            "environment": rollback.environment.name,
            "target_sha": target.git_hash,
            "target_deployment": str((target.deployment_context or {}).get("deploymentId") or ""),
            "rolled_back_sha": validation.git_hash,
            "reason": reason,
            "correlation_id": f"rollback-{rollback.pk}-{uuid.uuid4().hex[:12]}",
        }
        OutboundCall.objects.create(
            project_id=validation.project_id,
            validation=validation,
            kind="rollback_workflow",
            ordering_key=f"github:rollback:{rollback.pk}",
            payload={
                "rollback": rollback.pk,
                "repository": repository,
                "workflow": workflow,
                "ref": connection.workflow_ref,
                "inputs": inputs,
                "target_build_id": target.build_id,
            },
        )
        recorded = True
    if recorded:
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
