"""Credentials that let the outside world talk to perfgate: API tokens for CI, ops and auditors.

(GitHub and Vercel credentials, the outbox and webhook deliveries arrive with their issues.)
"""

import hashlib
import secrets

from django.conf import settings
from django.db import models
from django.utils import timezone

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
