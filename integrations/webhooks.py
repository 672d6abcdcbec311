"""GitHub webhooks: verified, stored once per delivery, answered at once, processed by a task.

``POST /api/ci-cd/webhooks/github`` checks ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body
with ``GITHUB_WEBHOOK_SECRET``, compared in constant time) before anything is stored. A delivery
id seen before is acknowledged and not processed again (GitHub redelivers with the same id).

Storing a delivery once (``webhook_store``) and processing it once (``webhook_process``) are
shared by every provider: another provider's view stores its deliveries here, and its table of
handlers is registered with ``register_handlers`` (``IntegrationsConfig.ready``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import tempfile
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from django_q.tasks import async_task
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from gates.api import errors
from gates.audit import Actor
from gates.errors import ServiceError
from gates.models import Environment, Project, Validation, Watch
from gates.results.common import holds_nul
from gates.services import validation_request
from gates.services.watches import watch_start
from integrations.github import workflows
from integrations.github.report import record_rejection, record_review
from integrations.models import DeploymentReview, WebhookDelivery
from perfgate_site.api import json_object
from perfgate_site.limits import PayloadTooLarge

logger = logging.getLogger(__name__)
# Events acted on (by a task); any other, ping included, is stored and acknowledged only.


def signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """GitHub's ``X-Hub-Signature-256``: ``sha256=`` and the hex HMAC of the raw body."""
    if not secret or not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.encode())


class GitHubWebhookView(APIView):
    """Receives GitHub's webhooks (no token: the signature is the authentication)."""

    authentication_classes = []
    permission_classes = []
    throttle_classes = []

    def get_authenticate_header(self, request):
        # Makes DRF answer a bad signature 401, as for a bad token, not 403.
        return 'HMAC-SHA256 realm="github-webhooks", header="X-Hub-Signature-256"'

    @extend_schema(
        operation_id="github_webhook",
        summary="GitHub webhook (signed with X-Hub-Signature-256)",
        request={"application/json": {"type": "object", "additionalProperties": True}},
        responses={
            202: OpenApiResponse(
                inline_serializer(
                    "WebhookAccepted",
                    {"delivery": serializers.CharField(), "status": serializers.CharField()},
                ),
                description="Stored and queued (or acknowledged: a duplicate, or an event perfgate ignores).",
            ),
            **errors(400, 401, 413),
        },
    )
    def post(self, request):
        secret = settings.GITHUB_WEBHOOK_SECRET
        if not secret:
            raise exceptions.AuthenticationFailed(
                "GitHub webhooks are not configured (GITHUB_WEBHOOK_SECRET)."
            )
        body = read_raw_body(request)
        if not signature_valid(secret, body, request.headers.get("X-Hub-Signature-256")):
            raise exceptions.AuthenticationFailed("Missing or invalid X-Hub-Signature-256.")
        event = request.headers.get("X-GitHub-Event", "")
        delivery_id = request.headers.get("X-GitHub-Delivery", "")
        if not event or not delivery_id or len(delivery_id) > 100:
            raise exceptions.ValidationError(
                {"headers": ["X-GitHub-Event and X-GitHub-Delivery (at most 100 characters) are required."]}
            )
        payload = json_object(body, what="The webhook body")
        if holds_nul(payload):
            # PostgreSQL's JSONB cannot hold it; GitHub's own payloads never carry one.
            raise exceptions.ParseError("The webhook body holds a NUL character (\\u0000); it is not stored.")
        state = webhook_receive(event=event, delivery_id=delivery_id, payload=payload)
        return Response({"delivery": delivery_id, "status": state}, status=status.HTTP_202_ACCEPTED)


def read_raw_body(request) -> bytes:
    """The request body as sent (signatures are over these bytes), at most PERFGATE_WEBHOOK_MAX_BYTES."""
    limit = settings.PERFGATE_WEBHOOK_MAX_BYTES
    length = request.META.get("CONTENT_LENGTH") or "0"
    if not length.isdigit() or int(length) > limit:
        raise PayloadTooLarge(f"A webhook body may be at most {limit} bytes.")
    return request._request.read(int(length)) if int(length) else b""


def webhook_receive(*, event: str, delivery_id: str, payload: dict) -> str:
    """Store a verified GitHub delivery once and queue its processing: "queued", "ignored" or
    "duplicate". Events perfgate does not handle are stored (for dedupe and the record) only."""
    ignored = ""
    if event not in HANDLERS:
        ignored = "pong" if event == "ping" else "event not used by perfgate"
    return webhook_store(
        provider="github",
        event=event,
        delivery_id=delivery_id,
        action=str(payload.get("action", "")),
        payload=payload,
        ignored=ignored,
    )


def webhook_store(
    *, provider: str, event: str, delivery_id: str, payload: dict, action: str = "", ignored: str = ""
) -> str:
    """Store a verified delivery once per (provider, delivery id) and queue its processing:
    "queued", "ignored" (``ignored`` says why, and is its recorded result) or "duplicate"."""
    state = WebhookDelivery.State.IGNORED if ignored else WebhookDelivery.State.QUEUED
    try:
        with transaction.atomic():
            delivery = WebhookDelivery.objects.create(
                provider=provider,
                delivery_id=delivery_id,
                event=event[:100],
                action=action[:100],
                payload=payload,
                state=state,
                result=ignored[:2000],
                processed_at=timezone.now() if ignored else None,
            )
            if not ignored:
                transaction.on_commit(lambda: _queue(delivery.pk))
    except IntegrityError:
        return "duplicate"
    return "ignored" if ignored else "queued"


def _queue(delivery_pk: int) -> None:
    """After commit: a task processes the delivery. When the task broker is unreachable the
    delivery stays queued and ``webhook_process_abandoned`` (scheduled) takes it later."""
    try:
        async_task(
            "integrations.tasks.webhook_process",
            delivery_pk,
            task_name=f"webhook {delivery_pk}",
            group="webhooks",
        )
    except Exception as exc:
        logger.warning(
            "The task broker is unreachable (%s): webhook delivery %s is processed later.",
            exc.__class__.__name__,
            delivery_pk,
        )


# --- Processing ---------------------------------------------------------------------------------


# A claim outlives any handler (an artifact download is bounded by GitHub timeouts); once it has
# expired, its worker is taken for dead and the delivery is processed again.
CLAIM_SECONDS = 600


class _ClaimLost(Exception):
    """Another worker took the delivery over (this one's claim expired): its work is undone."""


def webhook_process(delivery_pk: int) -> str:
    """Act on one stored delivery, once.

    The delivery is claimed with a conditional update (``queued``, or ``processing`` with an
    expired claim, → ``processing`` until ``claimed_until``), so a task run twice does nothing the
    second time. The work and the mark ``processed`` commit in one transaction: a worker that dies
    mid-way leaves the delivery ``processing`` with nothing done, and once its claim expires
    :func:`webhook_process_abandoned` takes it again. A handler that fails marks it ``failed``.
    """
    claimed_until = _claim(delivery_pk)
    if claimed_until is None:
        state = WebhookDelivery.objects.filter(pk=delivery_pk).values_list("state", flat=True).first()
        if state == WebhookDelivery.State.PROCESSING:
            return "being processed by another worker"
        return f"already {state}"
    delivery = WebhookDelivery.objects.get(pk=delivery_pk)
    mine = WebhookDelivery.objects.filter(
        pk=delivery_pk, state=WebhookDelivery.State.PROCESSING, claimed_until=claimed_until
    )
    try:
        handlers, downloads = handlers_for(delivery.provider)
        handler = handlers[delivery.event]
        download = downloads.get(delivery.event)
        with tempfile.TemporaryDirectory(prefix="perfgate-webhook-") as workdir:
            # Slow I/O first, outside the transaction: on SQLite a transaction holds the write lock.
            downloaded = download(delivery.payload, Path(workdir)) if download else None
            with transaction.atomic():
                result = handler(delivery.payload, delivery, downloaded)
                finished = mine.update(
                    state=WebhookDelivery.State.PROCESSED,
                    processed_at=timezone.now(),
                    claimed_until=None,
                    result=result[:2000],
                )
                if not finished:
                    raise _ClaimLost
    except _ClaimLost:
        logger.warning("webhook %s (%s): taken over by another worker", delivery.delivery_id, delivery.event)
        return "taken over by another worker"
    except Exception as exc:
        logger.exception("webhook %s (%s) failed", delivery.delivery_id, delivery.event)
        mine.update(
            state=WebhookDelivery.State.FAILED,
            claimed_until=None,
            processed_at=timezone.now(),
            result=f"{type(exc).__name__}: {exc}"[:2000],
        )
        raise
    return result


def webhook_process_abandoned() -> int:
    """Process the deliveries no worker is on: claims that expired (their worker died) and
    deliveries still queued a claim's length after they arrived (their task was lost). Returns
    how many of them are processed now; one another worker claimed first is left to it."""
    now = timezone.now()
    abandoned = WebhookDelivery.objects.filter(
        Q(state=WebhookDelivery.State.PROCESSING, claimed_until__lt=now)
        | Q(state=WebhookDelivery.State.QUEUED, received_at__lt=now - timedelta(seconds=CLAIM_SECONDS))
    )
    processed = 0
    for delivery_pk in abandoned.order_by("received_at").values_list("pk", flat=True)[:100]:
        try:
            webhook_process(delivery_pk)
        except Exception:
            # Logged, and recorded on the delivery, by webhook_process: the next one goes on.
            logger.info("webhook delivery %s failed again", delivery_pk)
        processed += WebhookDelivery.objects.filter(
            pk=delivery_pk, state=WebhookDelivery.State.PROCESSED
        ).exists()
    return processed


def _claim(delivery_pk: int):
    """Claim a delivery that is queued or whose claim expired; the new ``claimed_until``, or
    None when it is not to be processed (done, failed, or another worker's claim still runs)."""
    now = timezone.now()
    claimed_until = now + timedelta(seconds=CLAIM_SECONDS)
    claimed = (
        WebhookDelivery.objects.filter(pk=delivery_pk)
        .filter(
            Q(state=WebhookDelivery.State.QUEUED)
            | Q(state=WebhookDelivery.State.PROCESSING, claimed_until__lt=now)
        )
        .update(state=WebhookDelivery.State.PROCESSING, claimed_until=claimed_until)
    )
    return claimed_until if claimed else None


def _project_of(payload: dict) -> Project | None:
    repository = (payload.get("repository") or {}).get("full_name") or ""
    if not repository:
        return None
    return Project.objects.filter(repository__iexact=repository).select_related("github").first()


def _actor(payload: dict) -> Actor:
    return Actor("github", (payload.get("sender") or {}).get("login") or "github")


def _environment(project: Project, *names: str) -> Environment | None:
    for name in names:
        if name:
            found = project.environments.filter(name__iexact=name).first()
            if found is not None:
                return found
    return None


def _deployment_protection_rule(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    if payload.get("action") != "requested":
        return f"ignored action {payload.get('action')!r}"
    project = _project_of(payload)
    if project is None:
        return "no perfgate project for this repository"
    deployment = payload.get("deployment") or {}
    github_environment = str(payload.get("environment") or deployment.get("environment") or "")
    callback_url = payload.get("deployment_callback_url") or ""
    environment = _environment(project, github_environment, deployment.get("environment", ""))
    pull_requests = [pr.get("number") for pr in payload.get("pull_requests") or [] if pr.get("number")]
    with transaction.atomic():
        if environment is None:
            return _reject_at_once(project, callback_url, github_environment, deployment)
        validation = (
            Validation.objects.filter(
                project=project, environment=environment, git_hash=deployment.get("sha", "")
            )
            .order_by("-created_at")
            .first()
        )
        if validation is None:
            try:
                with transaction.atomic():  # a refused request leaves nothing behind
                    validation, _ = validation_request(
                        project=project,
                        environment=environment,
                        build_id=f"deployment-{deployment.get('id')}",
                        git_hash=str(deployment.get("sha", "")),
                        actor=_actor(payload),
                        deployment_context={
                            "provider": "github",
                            "repository": project.repository,
                            "ref": deployment.get("ref") or "",
                            "pullRequest": pull_requests[0] if pull_requests else None,
                            "deploymentId": deployment.get("id"),
                            "actor": (payload.get("sender") or {}).get("login"),
                        },
                    )
            except ServiceError as exc:
                return _reject_at_once(project, callback_url, github_environment, deployment, reason=str(exc))
        review = DeploymentReview.objects.create(
            validation=validation,
            callback_url=callback_url,
            environment_name=github_environment,
            deployment_id=deployment.get("id"),
        )
        if not validation.is_pending:
            record_review(review, validation)
    return f"deployment {deployment.get('id')} waits on validation {validation.pk} ({validation.status})"


def _reject_at_once(project, callback_url, environment_name, deployment, *, reason: str = "") -> str:
    reason = reason or f"perfgate has no environment {environment_name!r} for project {project.slug}"
    record_rejection(
        project=project,
        callback_url=callback_url,
        environment_name=environment_name,
        deployment_id=deployment.get("id"),
        reason=reason,
    )
    return f"rejected: {reason}"


def _workflow_run_download(payload: dict, workdir: Path) -> Path | str:
    """The results of a completed performance-workflow run, or why there are none to evaluate."""
    run = payload.get("workflow_run") or {}
    if payload.get("action") != "completed":
        return f"ignored action {payload.get('action')!r}"
    project = _project_of(payload)
    connection = getattr(project, "github", None) if project else None
    if connection is None or not connection.performance_workflow:
        return "the project does not use a performance workflow"
    if not str(run.get("path", "")).endswith("/" + connection.performance_workflow):
        return f"not the performance workflow ({run.get('path')})"
    return workflows.workflow_run_results(connection=connection, run=run, workdir=workdir)


def _workflow_run(payload: dict, delivery: WebhookDelivery, downloaded: Path | str) -> str:
    if isinstance(downloaded, str):
        return downloaded
    return workflows.workflow_run_evaluate(
        connection=_project_of(payload).github,
        run=payload["workflow_run"],
        results=downloaded,
        actor=_actor(payload),
    )


def _check_run(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    if payload.get("action") != "rerequested":
        return f"ignored action {payload.get('action')!r}"
    project = _project_of(payload)
    if project is None:
        return "no perfgate project for this repository"
    external_id = (payload.get("check_run") or {}).get("external_id") or ""
    original = (
        Validation.objects.filter(project=project, pk=external_id).first() if _uuid(external_id) else None
    )
    if original is None:
        return "the check run is not one of perfgate's"
    return workflows.validation_rerun(
        original=original, actor=_actor(payload), delivery_id=delivery.delivery_id
    )


def _deployment_status(payload: dict, delivery: WebhookDelivery, downloaded=None) -> str:
    """A deployment reached an environment: a ``success`` in an environment perfgate watches
    starts the watch of the validation that let this commit out (one per validation, however
    many deliveries say so). Anything else is recorded with the reason nothing was done."""
    if payload.get("action") != "created":
        return f"ignored action {payload.get('action')!r}"
    status = payload.get("deployment_status") or {}
    deployment = payload.get("deployment") or {}
    if status.get("state") != "success":
        return (
            f"deployment {deployment.get('id')} is {status.get('state')!r}, not a success: nothing to watch"
        )
    project = _project_of(payload)
    if project is None:
        return "no perfgate project for this repository"
    github_environment = str(status.get("environment") or deployment.get("environment") or "")
    environment = _environment(project, github_environment)
    if environment is None:
        return (
            f"perfgate has no environment {github_environment!r} for project {project.slug}: nothing watched"
        )
    if environment.watch_scenario_id is None:
        return f"environment {environment.name} has no watch scenario: nothing watched"
    sha = str(deployment.get("sha") or "")
    validation = _validation_of_deployment(environment, sha, deployment.get("id"))
    if validation is None:
        return f"no validation of commit {sha[:12] or '?'} in {environment.name}: nothing watched"
    if not validation.deployment_allowed:
        return (
            f"validation {validation.pk} of commit {sha[:12]} is {validation.status}: "
            "only a deployment perfgate let out is watched"
        )
    existed = Watch.objects.filter(validation=validation).exists()
    try:
        watch = watch_start(
            validation=validation,
            actor=_actor(payload),
            source=Watch.Source.GITHUB,
            deployment_id=str(deployment.get("id") or ""),
            deployment_url=_deployment_url(status, deployment),
        )
    except ServiceError as exc:
        return f"not watched: {exc}"
    done = "already watched" if existed else "watch started"
    return f"deployment {deployment.get('id')}: {done} (watch {watch.pk}, validation {validation.pk})"


def _validation_of_deployment(environment: Environment, sha: str, deployment_id) -> Validation | None:
    """The newest validation of ``sha`` in ``environment`` that allowed the deployment, preferring
    one made for this very deployment; else the newest of the commit (to say why it is not
    watched); None when the commit was never validated there."""
    if not sha:
        return None
    candidates = list(
        Validation.objects.filter(environment=environment, git_hash=sha).order_by("-created_at")[:50]
    )
    allowed = [v for v in candidates if v.deployment_allowed]
    for validation in allowed:
        if deployment_id and str((validation.deployment_context or {}).get("deploymentId")) == str(
            deployment_id
        ):
            return validation
    return (allowed or candidates or [None])[0]


def _deployment_url(status: dict, deployment: dict) -> str:
    """Where the deployment serves: the status's ``environment_url``, else a URL the deployment's
    own payload names (deployment tools put it there under various keys), else nothing (the
    watch then probes the validation's target)."""
    if status.get("environment_url"):
        return str(status["environment_url"])
    extra = deployment.get("payload")
    if isinstance(extra, dict):
        for key in ("environment_url", "web_url", "url"):
            if isinstance(extra.get(key), str) and extra[key].startswith(("http://", "https://")):
                return extra[key]
    return ""


def _uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# What each handled event does, inside the transaction that marks its delivery processed; and,
# for an event that must fetch something first, the download that runs before that transaction.
HANDLERS = {
    "deployment_protection_rule": _deployment_protection_rule,
    "workflow_run": _workflow_run,
    "check_run": _check_run,
    "deployment_status": _deployment_status,
}
DOWNLOADS = {"workflow_run": _workflow_run_download}

Handler = Callable[[dict, WebhookDelivery, object], str]
_providers: dict[str, tuple[dict[str, Handler], dict]] = {}


def register_handlers(provider: str, handlers: dict[str, Handler], downloads: dict | None = None) -> None:
    """What each event of another provider's deliveries does (its view stores them with
    ``webhook_store``): the same contract as ``HANDLERS`` and ``DOWNLOADS``."""
    _providers[provider] = (handlers, downloads or {})


def handlers_for(provider: str) -> tuple[dict[str, Handler], dict]:
    """The handlers and downloads of ``provider``'s deliveries."""
    if provider == "github":
        return HANDLERS, DOWNLOADS
    if provider not in _providers:
        raise LookupError(f"No webhook handlers are registered for {provider!r} deliveries.")
    return _providers[provider]
