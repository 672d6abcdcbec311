"""How perfgate and the outside world talk: API tokens for CI, ops, auditors and monitoring;
GitHub and Vercel credentials (encrypted at rest); the outbox of calls to them; received webhook
deliveries; the checks perfgate keeps on Vercel deployments.
"""

import hashlib
import secrets

from django.conf import settings
from django.core.validators import URLValidator
from django.db import models
from django.utils import timezone

from integrations.secrets import EncryptedTextField

TOKEN_PREFIX = "pg_"  # noqa: S105 - the visible prefix of every token, not a secret


def hash_token(plaintext: str) -> str:
    """SHA-256 of the whole token. Tokens carry 256 bits of randomness, so a fast hash is safe:
    nothing short enough to brute-force is ever hashed."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class ApiToken(models.Model):
    """A bearer token for the CI API, scoped to one project, a role and some environments.

    Only the hash is stored; the token itself is shown once, when it is made. ``environments``
    empty means every environment of the project.
    """

    class Role(models.TextChoices):
        CI = "ci"
        OPS = "ops"
        AUDITOR = "auditor"
        MONITORING = "monitoring", "monitoring (may only post alerts)"

    name = models.CharField(max_length=100, help_text="What this token is for, e.g. 'GitHub Actions'.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(
        max_length=12, editable=False, help_text="The first characters, to recognise a token in a list."
    )
    role = models.CharField(max_length=10, choices=Role.choices)
    project = models.ForeignKey("gates.Project", on_delete=models.CASCADE, related_name="api_tokens")
    environments = models.JSONField(
        default=list, blank=True, help_text="Environment names it may touch; empty: all of them."
    )
    can_block = models.BooleanField(
        default=False, help_text="A CI token that may also block builds by hand (ops tokens always may)."
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_tokens"
    )
    created_by = models.CharField(max_length=200, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["project__slug", "name"]
        verbose_name = "API token"

    def __str__(self):
        return f"{self.name} ({self.token_prefix}…, {self.role}, {self.project.slug})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at is not None and self.expires_at <= timezone.now()

    @property
    def is_usable(self) -> bool:
        return self.revoked_at is None and not self.is_expired

    def allows_environment(self, name: str) -> bool:
        return not self.environments or name in self.environments

    @property
    def can_write(self) -> bool:
        return self.role in (self.Role.CI, self.Role.OPS)

    @property
    def is_monitoring(self) -> bool:
        """A monitoring token (Alertmanager's) posts alerts and nothing else: it reads nothing."""
        return self.role == self.Role.MONITORING


class GitHubConnection(models.Model):
    """How perfgate reaches a project's repository on GitHub: as a GitHub App installation
    (statuses, check runs, comments, protection-rule reviews) or with a fine-grained token
    (statuses, comments and workflows only: GitHub lets no personal token create check runs or
    review protection rules). The private key and the token are encrypted at rest."""

    class Auth(models.TextChoices):
        APP = "app", "GitHub App"
        TOKEN = "token", "fine-grained personal access token"

    project = models.OneToOneField("gates.Project", on_delete=models.CASCADE, related_name="github")
    auth = models.CharField(max_length=5, choices=Auth.choices, default=Auth.APP)
    app_id = models.CharField(
        max_length=64, blank=True, help_text="The App's ID or client ID (the JWT's issuer)."
    )
    installation_id = models.BigIntegerField(null=True, blank=True)
    private_key = EncryptedTextField(blank=True, help_text="The App's private key (PEM).")
    token = EncryptedTextField(blank=True, help_text="A fine-grained personal access token.")
    api_url = models.CharField(
        max_length=200,
        blank=True,
        validators=[URLValidator(schemes=["https", "http"])],
        help_text="Empty: the GITHUB_API_URL setting (github.com). GitHub Enterprise: https://HOST/api/v3.",
    )
    report_checks = models.BooleanField(default=True, help_text="Create check runs (GitHub App only).")
    report_comments = models.BooleanField(default=True, help_text="Keep one sticky comment on pull requests.")
    performance_workflow = models.CharField(
        max_length=200, blank=True, help_text="File name of the performance workflow, e.g. performance.yml."
    )
    workflow_ref = models.CharField(
        max_length=200, default="main", help_text="Branch the workflow runs from."
    )
    workflow_environment = models.CharField(
        max_length=20,
        default="staging",
        help_text="Environment a workflow run perfgate did not start counts for.",
    )
    artifact_name = models.CharField(max_length=100, default="perfgate-results")
    bot_login = models.CharField(
        max_length=200,
        blank=True,
        editable=False,
        help_text="Who GitHub says perfgate is (found on first use).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "GitHub connection"

    def __str__(self):
        return f"{self.project.slug} on GitHub ({self.get_auth_display()})"

    @property
    def is_app(self) -> bool:
        return self.auth == self.Auth.APP

    @property
    def base_url(self) -> str:
        return (self.api_url or settings.GITHUB_API_URL).rstrip("/")


class VercelConnection(models.Model):
    """How perfgate reaches a project on Vercel: a token for its REST API (checks on deployments,
    rollbacks), the team it belongs to, and the protection-bypass secret that lets load tests
    through Vercel's deployment protection. The token and the secret are encrypted at rest.

    Vercel's deployment targets map to perfgate environments: production to
    ``production_environment``, previews (``target: null``) to ``preview_environment``."""

    class ChecksApi(models.TextChoices):
        PROJECT = "project", "project-level checks with check runs"
        LEGACY = "legacy", "per-deployment checks (deprecated)"

    project = models.OneToOneField("gates.Project", on_delete=models.CASCADE, related_name="vercel")
    team_id = models.CharField(
        max_length=100, blank=True, help_text="Sent as ?teamId= on every call; empty for a personal account."
    )
    token = EncryptedTextField(
        blank=True, help_text="The integration's access token (Vercel's checks need an OAuth2 token)."
    )
    protection_bypass_secret = EncryptedTextField(
        blank=True,
        help_text="Protection Bypass for Automation: sent as x-vercel-protection-bypass so protected "
        "deployments can be load-tested.",
    )
    checks_api = models.CharField(max_length=10, choices=ChecksApi.choices, default=ChecksApi.PROJECT)
    check_id = models.CharField(
        max_length=100,
        blank=True,
        editable=False,
        help_text="perfgate's project-level check on Vercel (made on first use).",
    )
    production_environment = models.CharField(
        max_length=20, default="production", help_text="perfgate environment of production deployments."
    )
    preview_environment = models.CharField(
        max_length=20, default="staging", help_text="perfgate environment of preview deployments."
    )
    scenario = models.CharField(
        max_length=100,
        blank=True,
        help_text="Scenario run on each deployment; empty: the environment's default.",
    )
    api_url = models.CharField(
        max_length=200,
        blank=True,
        validators=[URLValidator(schemes=["https", "http"])],
        help_text="Empty: the VERCEL_API_URL setting (api.vercel.com).",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "Vercel connection"

    def __str__(self):
        return f"{self.project.slug} on Vercel"

    @property
    def base_url(self) -> str:
        return (self.api_url or settings.VERCEL_API_URL).rstrip("/")

    def environment_name(self, target: str | None) -> str:
        """The perfgate environment of a deployment with this Vercel ``target``."""
        return self.production_environment if target == "production" else self.preview_environment


class VercelCheck(models.Model):
    """perfgate's check on one Vercel deployment, for one validation (an attempt): a check run of
    the project-level check, or a legacy per-deployment check. A rerun from Vercel's dashboard is
    a new validation on the same Vercel check, so several rows may share ``vercel_id``."""

    validation = models.ForeignKey("gates.Validation", on_delete=models.CASCADE, related_name="vercel_checks")
    deployment_id = models.CharField(max_length=100, db_index=True)
    api = models.CharField(max_length=10, choices=VercelConnection.ChecksApi.choices)
    vercel_id = models.CharField(
        max_length=100, blank=True, help_text="The check run's or legacy check's id, once made."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "Vercel check"
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["validation", "deployment_id"], name="vercel_check_once"),
        ]

    def __str__(self):
        return f"perfgate check on {self.deployment_id} ({self.api})"


class OutboundCall(models.Model):
    """The outbox: one call to a third party, recorded in the transaction that decided it and
    delivered afterwards by a task. Calls with the same ``ordering_key`` (a commit and a status
    context) are delivered one after another in the order they were recorded; a call that fails
    for a while holds back the later ones of its key, never those of other keys."""

    class State(models.TextChoices):
        PENDING = "pending"
        SENDING = "sending"
        DELIVERED = "delivered"
        FAILED = "failed", "failed (given up)"

    project = models.ForeignKey("gates.Project", on_delete=models.CASCADE, related_name="outbound_calls")
    validation = models.ForeignKey(
        "gates.Validation", on_delete=models.CASCADE, null=True, blank=True, related_name="outbound_calls"
    )
    provider = models.CharField(max_length=20, default="github")
    kind = models.CharField(max_length=30)
    ordering_key = models.CharField(max_length=300)
    payload = models.JSONField(default=dict)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    progress = models.JSONField(
        default=dict, blank=True, help_text="What a multi-request call has sent so far."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["state", "next_attempt_at"], name="outbox_due"),
            models.Index(fields=["ordering_key", "id"], name="outbox_order"),
        ]

    def __str__(self):
        return f"{self.kind} #{self.pk} ({self.state})"


class GitHubObject(models.Model):
    """Something perfgate made on GitHub and edits later: a validation's check run, the sticky
    comment of a pull request."""

    key = models.CharField(max_length=300, unique=True)
    github_id = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.key} → {self.github_id}"


class WebhookDelivery(models.Model):
    """A received, signature-checked webhook: stored once per delivery id (GitHub redelivers
    with the same one) and processed by a task.

    The task claims it (``queued`` → ``processing`` until ``claimed_until``) and marks it
    ``processed`` in the same transaction as the work's writes: a worker that dies mid-way leaves
    it ``processing`` with nothing done, and once the claim expires it is taken again."""

    class State(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        PROCESSED = "processed"
        IGNORED = "ignored"
        FAILED = "failed"

    provider = models.CharField(max_length=20)
    delivery_id = models.CharField(max_length=100)
    event = models.CharField(max_length=100)
    action = models.CharField(max_length=100, blank=True)
    payload = models.JSONField()
    state = models.CharField(max_length=10, choices=State.choices, default=State.QUEUED)
    result = models.TextField(blank=True)
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        ordering = ["-received_at"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "delivery_id"], name="webhook_delivery_once"),
        ]

    def __str__(self):
        return f"{self.provider} {self.event}.{self.action} {self.delivery_id}"


class DeploymentReview(models.Model):
    """A GitHub deployment waiting on perfgate (a custom deployment protection rule): answered
    through its callback URL once the validation has an outcome."""

    validation = models.ForeignKey(
        "gates.Validation", on_delete=models.CASCADE, related_name="deployment_reviews"
    )
    callback_url = models.URLField(max_length=500)
    environment_name = models.CharField(max_length=255)
    deployment_id = models.BigIntegerField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"deployment {self.deployment_id} → {self.environment_name}"


class NotificationChannel(models.Model):
    """Where people hear about the gate: a Slack incoming webhook or some email addresses, with
    the events it wants and the environments it covers (empty: all of them).

    A Slack webhook URL is a secret: encrypted at rest, set in the admin or taken by
    ``apply_config`` from the environment variable perfgate.yaml names, shown nowhere. A channel
    Slack says is gone (404, 410) or forbidden (403) is marked broken and sent nothing more until
    someone gives it a new URL."""

    class Kind(models.TextChoices):
        SLACK = "slack", "Slack"
        EMAIL = "email", "Email"

    class Event(models.TextChoices):
        BLOCKED = "blocked", "Build blocked"
        BYPASS_REQUESTED = "bypass_requested", "Bypass requested"
        BYPASS_APPROVED = "bypass_approved", "Bypass approved"
        BYPASS_REJECTED = "bypass_rejected", "Bypass rejected"
        DEGRADED = "degraded", "Production degrading"
        ROLLBACK = "rollback", "Rollback"
        BLIND = "blind", "Gate blind (cannot decide)"

    project = models.ForeignKey(
        "gates.Project", on_delete=models.CASCADE, related_name="notification_channels"
    )
    name = models.CharField(max_length=100, help_text="How people recognise it, e.g. '#perf-wedsync'.")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    slack_webhook_url = EncryptedTextField(
        blank=True, help_text="The incoming webhook URL (https://hooks.slack.com/services/…): a secret."
    )
    webhook_secret_env = models.CharField(
        max_length=100,
        blank=True,
        help_text="The environment variable perfgate.yaml names for the webhook URL (webhookSecret).",
    )
    recipients = models.JSONField(default=list, blank=True, help_text="Email addresses.")
    events = models.JSONField(default=list, blank=True, help_text="Events it wants; empty: every event.")
    environments = models.JSONField(
        default=list, blank=True, help_text="Environment names it covers; empty: every environment."
    )
    enabled = models.BooleanField(default=True)
    broken_at = models.DateTimeField(null=True, blank=True, editable=False)
    broken_reason = models.CharField(max_length=300, blank=True, editable=False)
    next_send_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Slack: not before this (one message per second)."
    )
    config_source = models.CharField(max_length=300, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["project__slug", "name"]
        verbose_name = "notification channel"
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="notification_channel_name_once"),
        ]

    def __str__(self):
        return f"{self.name} ({self.get_kind_display()}, {self.project.slug})"

    @property
    def is_broken(self) -> bool:
        return self.broken_at is not None

    def wants(self, event: str, environment: str) -> bool:
        return (
            self.enabled
            and (not self.events or event in self.events)
            and (not self.environments or environment in self.environments)
        )

    @property
    def ordering_key(self) -> str:
        return f"notify:{self.pk}"


class Notification(models.Model):
    """One event for one channel, or for one person by email (the requester of a bypass hears
    the decision): what to say (``item``, rendered when it is sent) and the outbox call that
    carries it. Events of a channel that come within the coalescing window share one call: one
    message with all of them."""

    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.SET_NULL, null=True, blank=True, related_name="notifications"
    )
    recipients = models.JSONField(
        default=list, blank=True, help_text="A direct email to these addresses (no channel)."
    )
    project = models.ForeignKey("gates.Project", on_delete=models.CASCADE, related_name="notifications")
    environment = models.CharField(max_length=20, blank=True)
    validation = models.ForeignKey(
        "gates.Validation", on_delete=models.SET_NULL, null=True, blank=True, related_name="notifications"
    )
    event = models.CharField(max_length=20, choices=NotificationChannel.Event.choices)
    title = models.CharField(max_length=300)
    item = models.JSONField(help_text="What the message says about it.")
    call = models.ForeignKey(
        OutboundCall, on_delete=models.SET_NULL, null=True, blank=True, related_name="notifications"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["call", "id"], name="notification_by_call")]

    def __str__(self):
        return self.title
