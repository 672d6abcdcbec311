"""DRF authentication and permissions for API tokens.

A token authenticates as a ``TokenPrincipal``; views scope every lookup to the token's project
(another project's objects are simply not found) and check its environments and role.
"""

from __future__ import annotations

import time
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions, permissions

from gates.audit import Actor
from integrations.models import TOKEN_PREFIX, ApiToken, hash_token
from perfgate_site.limits import failed_authentication

# Writing last_used_at on every request would make every read a write; once a minute is enough
# to answer "is this token still in use?".
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Tokens this process verified recently: {token hash: (verified at, token)}. Polling CI asks
# several times a second; the database is asked again after PERFGATE_TOKEN_CACHE_SECONDS.
# Expiry is checked on every request; a revocation reaches this process at once and other
# processes within those seconds.
_verified: dict[str, tuple[float, ApiToken]] = {}


def forget_token(token_hash: str | None = None) -> None:
    """Drop a token (or all of them) from this process's cache of verified tokens."""
    if token_hash is None:
        _verified.clear()
    else:
        _verified.pop(token_hash, None)


def _lookup(token_hash: str) -> ApiToken | None:
    ttl = settings.PERFGATE_TOKEN_CACHE_SECONDS
    now = time.monotonic()
    cached = _verified.get(token_hash)
    if cached is not None and now - cached[0] < ttl:
        return cached[1]
    token = ApiToken.objects.select_related("project").filter(token_hash=token_hash).first()
    if token is not None and token.is_usable and ttl > 0:
        _verified[token_hash] = (now, token)
    else:
        _verified.pop(token_hash, None)
    return token


class TokenPrincipal:
    """The request's user when it came with an API token."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, token: ApiToken):
        self.token = token
        self.pk = None

    def __str__(self):
        return f"token:{self.token.name}"

    def get_username(self) -> str:
        return f"token:{self.token.name}"

    @property
    def actor(self) -> Actor:
        """Audited as the token, with its owner's id so four-eyes rules can see who is behind it."""
        return Actor("token", f"{self.token.name} ({self.token.token_prefix}…)", self.token.owner_id)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer pg_…``. A missing header leaves the request anonymous (and the
    permission check answers 401); a wrong, expired or revoked token is 401 at once, or 429 from
    an address that failed more than PERFGATE_FAILED_AUTH_RATE (``limits.failed_authentication``)."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header:
            return None
        try:
            token = self._usable_token(header)
        except exceptions.AuthenticationFailed:
            # Counted per address: beyond PERFGATE_FAILED_AUTH_RATE the answer is 429, not 401.
            failed_authentication(request)
            raise
        now = timezone.now()
        if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return TokenPrincipal(token), token

    def _usable_token(self, header: list[bytes]) -> ApiToken:
        if header[0].decode("latin-1").lower() != self.keyword.lower():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <token>'.")
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header must be 'Bearer <token>'.")
        try:
            plaintext = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        if not plaintext.startswith(TOKEN_PREFIX):
            raise exceptions.AuthenticationFailed("Invalid token.")
        token = _lookup(hash_token(plaintext))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token was revoked.")
        if token.is_expired:
            raise exceptions.AuthenticationFailed("This token has expired.")
        return token

    def authenticate_header(self, request):
        return f'{self.keyword} realm="perfgate"'


class HasToken(permissions.BasePermission):
    """Any valid token but a monitoring one; auditors only read. A monitoring token (what
    Alertmanager holds) may only post alerts, which its own endpoint allows with
    ``IsMonitoringToken``: everywhere else it is refused, reads included."""

    AUDITOR_MESSAGE = "An auditor token can only read."
    MONITORING_MESSAGE = "A monitoring token may only post alerts."
    message = AUDITOR_MESSAGE

    def has_permission(self, request, view):
        token = request.auth
        if not isinstance(token, ApiToken):
            return False
        if token.is_monitoring:
            self.message = self.MONITORING_MESSAGE
            return False
        return request.method in permissions.SAFE_METHODS or token.can_write


class IsOpsToken(permissions.BasePermission):
    message = "Only an ops token may do this."

    def has_permission(self, request, view):
        return isinstance(request.auth, ApiToken) and request.auth.role == ApiToken.Role.OPS


class CanBlock(permissions.BasePermission):
    message = "This token may not block builds: use an ops token, or a CI token allowed to block."

    def has_permission(self, request, view):
        token = request.auth
        return isinstance(token, ApiToken) and (
            token.role == ApiToken.Role.OPS or (token.role == ApiToken.Role.CI and token.can_block)
        )


class IsMonitoringToken(permissions.BasePermission):
    """Only a monitoring token: the alerts endpoint, and nothing else, takes one."""

    message = "Only a monitoring token may post alerts."

    def has_permission(self, request, view):
        return isinstance(request.auth, ApiToken) and request.auth.is_monitoring


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Describes the token scheme in the OpenAPI schema."""

    target_class = "integrations.auth.ApiTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "bearerFormat": "pg_<random>"}
