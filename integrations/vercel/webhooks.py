"""Vercel webhooks: verified, stored once per envelope id, answered at once, processed by a task.

``POST /api/ci-cd/webhooks/vercel`` checks ``x-vercel-signature`` (the hex HMAC-SHA1 of the raw
body with ``VERCEL_WEBHOOK_SECRET``, compared in constant time) before anything is stored. Vercel
waits 30 s for an answer and retries anything else for up to a day, so the work is queued and a
delivery whose envelope ``id`` was seen before is acknowledged as a duplicate.

Events: ``deployment.created`` makes a held validation of the deployment and registers
perfgate's check; ``deployment.ready`` sends its load test against the deployment's URL;
``deployment.check-rerequested`` starts a fresh attempt; ``deployment.canceled`` and
``deployment.error`` cancel it; ``deployment.promoted`` starts watching production.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from gates.api import DeploymentContextSerializer, errors
from gates.audit import Actor
from gates.errors import ServiceError
from gates.models import Environment, Project, Validation
from gates.results.common import holds_nul
from gates.services import validation_cancel, validation_record_error, validation_release, validation_request
from gates.services.watches import watch_start
from integrations.models import VercelCheck, VercelConnection, WebhookDelivery
from integrations.vercel import report
from integrations.webhooks import read_raw_body, webhook_store
from perfgate_site.api import json_object

# Commit metadata Vercel adds to a deployment from each git provider: (sha, ref, author, org, repo).
GIT_META = (
    ("githubCommitSha", "githubCommitRef", "githubCommitAuthorLogin", "githubCommitOrg", "githubCommitRepo"),
    (
        "gitlabCommitSha",
        "gitlabCommitRef",
        "gitlabCommitAuthorLogin",
        "gitlabProjectNamespace",
        "gitlabProjectName",
    ),
    (
        "bitbucketCommitSha",
        "bitbucketCommitRef",
        "bitbucketCommitAuthorName",
        "bitbucketRepoOwner",
        "bitbucketRepoName",
    ),
)


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """Vercel's ``x-vercel-signature``: the hex HMAC-SHA1 of the raw body."""
    if not secret or not header:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())


class VercelWebhookView(APIView):
    """Receives Vercel's webhooks (no token: the signature is the authentication)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    def get_authenticate_header(self, request):
        # Makes DRF answer a bad signature 401, as for a bad token, not 403.
        return 'HMAC-SHA1 realm="vercel-webhooks", header="x-vercel-signature"'

    @extend_schema(
        operation_id="vercel_webhook",
        summary="Vercel webhook (signed with x-vercel-signature)",
        request={"application/json": {"type": "object", "additionalProperties": True}},
        responses={
            202: OpenApiResponse(
                inline_serializer(
                    "VercelWebhookAccepted",
                    {"delivery": serializers.CharField(), "status": serializers.CharField()},
                ),
                description="Stored and queued (or acknowledged: a duplicate, or an event perfgate ignores).",
            ),
            **errors(400, 401, 413),
        },
    )
    def post(self, request):
        secret = settings.VERCEL_WEBHOOK_SECRET
        if not secret:
            raise exceptions.AuthenticationFailed(
                "Vercel webhooks are not configured (VERCEL_WEBHOOK_SECRET)."
            )
        body = read_raw_body(request)
        if not signature_valid(secret, body, request.headers.get("x-vercel-signature")):
            raise exceptions.AuthenticationFailed("Missing or invalid x-vercel-signature.")
        payload = json_object(body, what="The webhook body")
        delivery_id, event = payload.get("id"), payload.get("type")
        if not isinstance(delivery_id, str) or not delivery_id or len(delivery_id) > 100:
            raise exceptions.ValidationError(
                {"id": ["The envelope id (at most 100 characters) is required."]}
            )
        if not isinstance(event, str) or not event:
            raise exceptions.ValidationError({"type": ["The event type is required."]})
        if holds_nul(payload):
            # PostgreSQL's JSONB cannot hold it; Vercel's own payloads never carry one.
            raise exceptions.ParseError("The webhook body holds a NUL character (\\u0000); it is not stored.")
        state = webhook_store(
            provider="vercel",
            event=event,
            delivery_id=delivery_id,
            payload=payload,
            ignored=_ignored_because(event, payload),
        )
        return Response({"delivery": delivery_id, "status": state}, status=status.HTTP_202_ACCEPTED)


def _ignored_because(event: str, payload: dict) -> str:
    """Why a delivery is only recorded (its result in the admin), or "" when it is to be processed."""
    if event not in HANDLERS:
        return f"event type {event!r} not used by perfgate"
    project_id = _project_id(payload.get("payload"))
    if project_id and not Project.objects.filter(vercel_project_id=project_id).exists():
        return f"no perfgate project has Vercel project id {project_id!r}"
    return ""


def _project_id(body) -> str:
    project = (body or {}).get("project") if isinstance(body, dict) else None
    return str(project.get("id") or "") if isinstance(project, dict) else ""


# --- Processing (each handler runs in the transaction that marks its delivery processed) --------


class _Deployment:
    """The facts of a deployment event that perfgate uses."""

    def __init__(self, body: dict):
        deployment = body.get("deployment") or {}
        self.id = str(deployment.get("id") or "")
        self.url = str(deployment.get("url") or "")
        self.meta = {k: v for k, v in (deployment.get("meta") or {}).items() if isinstance(v, str)}
        self.target = body.get("target")
        self.project_id = _project_id(body)
        self.user = str((body.get("user") or {}).get("id") or "")

    @property
    def host(self) -> str:
        return urlsplit(f"//{self.url}").netloc

    @property
    def full_url(self) -> str:
        return f"{settings.PERFGATE_VERCEL_DEPLOYMENT_SCHEME}://{self.url}" if self.url else ""

    def git(self) -> dict[str, str]:
        for sha, ref, author, org, repo in GIT_META:
            if self.meta.get(sha):
                owner, name = self.meta.get(org, ""), self.meta.get(repo, "")
                return {
                    "sha": self.meta[sha][:64],
                    "ref": self.meta.get(ref, ""),
                    "actor": self.meta.get(author, ""),
                    "repository": f"{owner}/{name}" if owner and name else "",
                }
        return {"sha": "", "ref": "", "actor": "", "repository": ""}

    def actor(self) -> Actor:
        return Actor("vercel", self.git()["actor"] or self.user or "vercel")


def _project_and_connection(deployment: _Deployment) -> tuple[Project | None, VercelConnection | None]:
    project = (
        Project.objects.filter(vercel_project_id=deployment.project_id).first()
        if deployment.project_id
        else None
    )
    connection = VercelConnection.objects.filter(project=project).first() if project else None
    return project, connection


def _reports_checks(connection: VercelConnection | None) -> bool:
    return connection is not None and bool(connection.token)


def _attempts(project: Project, deployment_id: str):
    """Every validation of this Vercel deployment, newest first."""
    return Validation.objects.filter(
        project=project, deployment_context__provider="vercel", deployment_context__deploymentId=deployment_id
    ).order_by("-created_at")


def _context(deployment: _Deployment) -> dict:
    """The deployment context, holding only what the API defines for one."""
    git = deployment.git()
    pull_request = deployment.meta.get("githubPrId", "")
    context = {
        "provider": "vercel",
        "deploymentId": deployment.id,
        "deploymentUrl": deployment.full_url,
        "target": deployment.target or "preview",
        "repository": git["repository"],
        "ref": git["ref"],
        "actor": git["actor"],
        "pullRequest": int(pull_request) if pull_request.isdigit() and int(pull_request) > 0 else None,
    }
    allowed = DeploymentContextSerializer().fields
    return {key: value for key, value in context.items() if key in allowed and value not in ("", None)}


def _deployment_created(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    deployment = _Deployment(payload.get("payload") or {})
    project, connection = _project_and_connection(deployment)
    if project is None:
        return "no perfgate project for this Vercel project"
    if not deployment.id:
        return "the event names no deployment"
    existing = _attempts(project, deployment.id).first()
    if existing is not None:
        return f"deployment {deployment.id} already has validation {existing.pk} ({existing.status})"
    return _validate_deployment(project, connection, deployment, hold=True)


def _validate_deployment(project, connection, deployment: _Deployment, *, hold: bool) -> str:
    """A validation of the deployment (held until it is ready, or sent now against its URL),
    and perfgate's check on it; a deployment perfgate cannot validate fails its check at once."""
    environment_name = (
        connection.environment_name(deployment.target)
        if connection
        else ("production" if deployment.target == "production" else "staging")
    )
    environment = Environment.objects.filter(project=project, name=environment_name).first()
    if environment is None:
        return _refuse(
            connection, deployment, f"project {project.slug} has no environment {environment_name!r}"
        )
    test_config = {"scenario": connection.scenario} if connection and connection.scenario else {}
    if not hold:
        test_config["targetUrl"] = deployment.full_url
    try:
        with transaction.atomic():  # a refused request leaves nothing behind
            validation, _ = validation_request(
                project=project,
                environment=environment,
                build_id=f"vercel-{deployment.id}",
                git_hash=deployment.git()["sha"],
                actor=deployment.actor(),
                test_config=test_config or None,
                deployment_context=_context(deployment),
                hold=hold,
                extra_hosts=[deployment.host] if deployment.host else [],
            )
    except ServiceError as exc:
        return _refuse(connection, deployment, str(exc))
    _register_check(connection, validation, deployment.id)
    state = "held until the deployment is ready" if validation.held else validation.status
    return f"deployment {deployment.id}: validation {validation.pk} ({state})"


def _register_check(connection, validation: Validation, deployment_id: str, *, vercel_id: str = "") -> None:
    if not _reports_checks(connection):
        return
    check, _ = VercelCheck.objects.get_or_create(
        validation=validation,
        deployment_id=deployment_id,
        defaults={"api": connection.checks_api, "vercel_id": vercel_id},
    )
    report.record_check(check, validation)


def _refuse(connection, deployment: _Deployment, reason: str) -> str:
    if _reports_checks(connection):
        report.record_refusal(connection=connection, deployment_id=deployment.id, reason=reason)
    return f"refused: {reason}"


def _deployment_ready(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    deployment = _Deployment(payload.get("payload") or {})
    project, connection = _project_and_connection(deployment)
    if project is None:
        return "no perfgate project for this Vercel project"
    validation = _attempts(project, deployment.id).first()
    if validation is None:
        # Its deployment.created never came (not subscribed, or lost): validate it now.
        return _validate_deployment(project, connection, deployment, hold=False)
    if not validation.held:
        return f"validation {validation.pk} is not waiting for its deployment ({validation.status})"
    return _release(validation, deployment.full_url, deployment.actor())


def _release(validation: Validation, target_url: str, actor: Actor) -> str:
    try:
        with transaction.atomic():
            validation = validation_release(validation=validation, actor=actor, target_url=target_url)
    except ServiceError as exc:
        # The deployment's own URL is refused (the allowlist, an address no test may hit): no
        # verdict can come, and the policy decides what that means.
        validation_record_error(
            validation=validation, reason=f"The deployment's URL cannot be tested: {exc}", actor=actor
        )
        return f"validation {validation.pk}: deployment URL refused: {exc}"
    return f"validation {validation.pk} released against {target_url}"


def _check_rerequested(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    body = payload.get("payload") or {}
    deployment_id = str((body.get("deployment") or {}).get("id") or "")
    check_id = str((body.get("check") or {}).get("id") or "")
    checks = (
        VercelCheck.objects.filter(deployment_id=deployment_id)
        .select_related("validation__project", "validation__environment")
        .order_by("-created_at")
    )
    previous = checks.filter(vercel_id=check_id).first() if deployment_id and check_id else None
    if previous is None and check_id and VercelConnection.objects.filter(check_id=check_id).exists():
        previous = checks.first()  # named by perfgate's project-level check rather than its run
    if previous is None:
        return "not a check of perfgate's"
    original = previous.validation
    connection = VercelConnection.objects.filter(project=original.project).first()
    if not _reports_checks(connection):
        return "the project has no Vercel connection any more"
    attempt = (
        VercelCheck.objects.filter(deployment_id=deployment_id, validation__project=original.project).count()
        + 1
    )
    config = {k: v for k, v in original.test_config.items() if k not in ("capped", "extraHosts")}
    ready = "targetUrl" in config  # released before: the deployment's URL answers
    try:
        with transaction.atomic():
            validation, created = validation_request(
                project=original.project,
                environment=original.environment,
                build_id=f"vercel-{deployment_id}~attempt-{attempt}",
                git_hash=original.git_hash,
                actor=Actor("vercel", str((body.get("user") or {}).get("id") or "vercel")),
                test_config=config,
                deployment_context=dict(original.deployment_context),
                hold=not ready,
                extra_hosts=original.test_config.get("extraHosts", []),
            )
    except ServiceError as exc:
        # The rerun Vercel queued on its check is concluded at once, with the reason.
        report.record_refusal(connection=connection, deployment_id=deployment_id, reason=str(exc))
        return f"rerun refused: {exc}"
    _register_check(connection, validation, deployment_id, vercel_id=previous.vercel_id)
    return f"rerun {'queued' if created else 'exists'}: validation {validation.pk} (attempt {attempt})"


def _deployment_cancel(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    deployment = _Deployment(payload.get("payload") or {})
    project, _ = _project_and_connection(deployment)
    if project is None:
        return "no perfgate project for this Vercel project"
    pending = [v for v in _attempts(project, deployment.id) if v.is_pending]
    if not pending:
        return f"deployment {deployment.id}: no validation to cancel"
    for validation in pending:
        validation_cancel(
            validation=validation,
            reason=f"Vercel sent {delivery.event} for the deployment",
            actor=deployment.actor(),
        )
    return f"deployment {deployment.id}: {len(pending)} validation(s) cancelled ({delivery.event})"


def _deployment_promoted(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    deployment = _Deployment(payload.get("payload") or {})
    project, connection = _project_and_connection(deployment)
    if project is None:
        return "no perfgate project for this Vercel project"
    production = connection.production_environment if connection else "production"
    validation = next(
        (
            v
            for v in _attempts(project, deployment.id).select_related("environment")
            if v.environment.name == production
        ),
        None,
    )
    if validation is None:
        return f"deployment {deployment.id} has no {production} validation to watch"
    try:
        with transaction.atomic():
            watch = watch_start(
                validation=validation,
                actor=deployment.actor(),
                source="vercel",
                deployment_id=deployment.id,
                deployment_url=deployment.full_url,
                extra_hosts=[deployment.host] if deployment.host else [],
            )
    except ServiceError as exc:
        return f"not watched: {exc}"
    return f"watch {watch.pk} of validation {validation.pk} ({watch.state})"


def _deployment_succeeded(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    return "recorded; nothing to do"


HANDLERS = {
    "deployment.created": _deployment_created,
    "deployment.ready": _deployment_ready,
    "deployment.check-rerequested": _check_rerequested,
    "deployment.canceled": _deployment_cancel,
    "deployment.error": _deployment_cancel,
    "deployment.promoted": _deployment_promoted,
    "deployment.succeeded": _deployment_succeeded,
}
