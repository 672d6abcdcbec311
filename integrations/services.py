"""Token state changes: making and revoking API tokens, each audited.

Tokens are part of a project's configuration, so a person manages them with the right that
guards the rest of it, ``change_thresholds`` on the token's project (``gates.permissions``; a
superuser holds every right). That is ops' right and never an auditor's. A token that can block
deployments (role ``ops``, or ``can_block``) also needs ``block_deployment``: nobody makes a token
that may do what they may not. The command line (``create_api_token``) runs with the machine's
authority and is not asked.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from gates.audit import Actor, audit_record
from gates.errors import ServiceError
from gates.models import Project
from gates.permissions import require_right
from integrations.auth import forget_token
from integrations.models import TOKEN_PREFIX, ApiToken, generate_token, hash_token

MAX_EXPIRY_DAYS = 3650


@transaction.atomic
def token_create(
    *,
    project: Project,
    role: str,
    name: str,
    actor: Actor,
    environments: list[str] | None = None,
    expires_days: int | None = None,
    owner=None,
    can_block: bool = False,
) -> tuple[ApiToken, str]:
    """Make a token: (the row, the plaintext token). The plaintext is not stored anywhere:
    whoever asked must copy it now. A person needs ``change_thresholds`` on the project, and
    ``block_deployment`` too for a token that can block."""
    require_right(actor, "change_thresholds", project, to="make tokens")
    if role == ApiToken.Role.OPS or can_block:
        require_right(actor, "block_deployment", project, to="make tokens that can block builds")
    if role not in ApiToken.Role.values:
        raise ServiceError(
            f"Unknown role {role!r}; use one of {', '.join(ApiToken.Role.values)}.",
            fields={"role": ["Unknown role."]},
        )
    environments = sorted(set(environments or []))
    known = set(project.environments.values_list("name", flat=True))
    unknown = [name for name in environments if name not in known]
    if unknown:
        raise ServiceError(
            f"Project {project.slug} has no environment {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(known)) or 'none'}).",
            fields={"environments": [f"Unknown environment: {', '.join(unknown)}."]},
        )
    if expires_days is not None and not 1 <= expires_days <= MAX_EXPIRY_DAYS:
        raise ServiceError(
            f"expires_days must be between 1 and {MAX_EXPIRY_DAYS}.",
            fields={"expires_days": ["Out of range."]},
        )
    plaintext = generate_token()
    token = ApiToken.objects.create(
        name=name,
        token_hash=hash_token(plaintext),
        token_prefix=plaintext[: len(TOKEN_PREFIX) + 6],
        role=role,
        project=project,
        environments=environments,
        can_block=can_block,
        owner=owner,
        created_by=actor.label,
        expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
    )
    audit_record(
        action="token.created",
        actor=actor,
        target=token,
        project=project.slug,
        data={
            "name": name,
            "role": role,
            "environments": environments,
            "can_block": can_block,
            "prefix": token.token_prefix,
            "owner": owner.get_username() if owner else None,
            "expires_at": token.expires_at,
        },
    )
    return token, plaintext


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: Actor, reason: str = "") -> ApiToken:
    """Stop a token from working, at once and for good. A person needs ``change_thresholds`` on
    the token's project: revoking is managing the project's configuration, like making one."""
    require_right(actor, "change_thresholds", token.project, to="revoke tokens")
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    forget_token(token.token_hash)
    audit_record(
        action="token.revoked",
        actor=actor,
        target=token,
        project=token.project.slug,
        reason=reason,
        data={"name": token.name, "prefix": token.token_prefix, "role": token.role},
    )
    return token
