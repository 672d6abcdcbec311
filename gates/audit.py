"""The only writer of audit rows, and the chain check.

Each event's hash is SHA-256 over the previous event's hash and the canonical JSON of the event,
so changing, removing or reordering any row breaks every hash after it. Call ``audit_record``
inside the transaction of the change it records: the row commits or rolls back with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, models, transaction
from django.utils import timezone

from gates.models import AuditEvent

GENESIS_HASH = "0" * 64
# Any constant: serializes audit writers on PostgreSQL so the chain has no forks.
_CHAIN_LOCK_KEY = 0x70657266  # "perf"


@dataclass(frozen=True)
class Actor:
    """Who did something: a person, a CI token, or perfgate itself."""

    kind: str  # "user", "token", "system", "cli"
    name: str
    user_id: int | None = None

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.name}"

    @classmethod
    def for_user(cls, user) -> Actor:
        return cls("user", user.get_username(), user.pk)


SYSTEM = Actor("system", "perfgate")


def _canonical_number(value: float) -> float | int | None:
    """A float as every database's JSON column gives it back.

    PostgreSQL's jsonb keeps numbers as ``numeric``, which has no infinity, NaN or negative zero
    and writes no exponent: Python's ``1e+17`` comes back as the integer ``100000000000000000``,
    ``-0.0`` as ``0.0``. A float whose shortest form has a positive exponent is a whole number,
    so it is stored as that integer, spelt from the same shortest digits that PostgreSQL reads
    (``1e23`` is 100000000000000000000000, not the float's exact binary value); small exponents
    (``1.5e-300``) read back as the same float and stay as they are.
    """
    if not math.isfinite(value):
        return None  # NaN and infinity survive no database's JSON type
    if value == 0:
        return 0.0
    text = repr(value)
    if "e+" in text:
        return int(Decimal(text))
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, float):
        return _canonical_number(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """Exactly what the JSON column will give back, on SQLite and PostgreSQL alike, so the hash
    is computed on the data as it will be read."""
    return json.loads(json.dumps(_canonical(value), cls=DjangoJSONEncoder))


def canonical_json(event: AuditEvent) -> str:
    """The bytes the hash covers: every meaningful field, sorted keys, no whitespace."""
    body = {
        "created_at": event.created_at.isoformat(),
        "action": event.action,
        "actor": event.actor,
        "actor_user_id": event.actor_user_id,
        "project": event.project,
        "environment": event.environment,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_repr": event.target_repr,
        "reason": event.reason,
        "data": event.data,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256((prev_hash + canonical_json(event)).encode()).hexdigest()


def _lock_chain() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])
    # SQLite: transactions begin IMMEDIATE (see settings), so writers are already serialized.


def audit_record(
    *,
    action: str,
    actor: Actor,
    target: models.Model | None = None,
    project: str = "",
    environment: str = "",
    reason: str = "",
    data: dict | None = None,
) -> AuditEvent:
    """Append one event to the chain. Must run inside the transaction of the change it records."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record must be called inside the transaction of the change it records")
    _lock_chain()
    last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    event = AuditEvent(
        created_at=timezone.now(),
        action=action,
        actor=actor.label,
        actor_user_id=actor.user_id,
        project=project,
        environment=environment,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:300] if target is not None else "",
        reason=reason,
        data=_jsonable(data or {}),
        prev_hash=last or GENESIS_HASH,
    )
    event.hash = chain_hash(event.prev_hash, event)
    event.save(force_insert=True)
    return event


@dataclass(frozen=True)
class BrokenLink:
    event_id: int
    problem: str


def verify_chain(events: Iterator[AuditEvent] | None = None) -> tuple[int, BrokenLink | None]:
    """Walk the chain oldest first; (events checked, the first broken link or None)."""
    if events is None:
        events = AuditEvent.objects.order_by("id").iterator(chunk_size=2000)
    expected_prev = GENESIS_HASH
    checked = 0
    for event in events:
        if event.prev_hash != expected_prev:
            return checked, BrokenLink(
                event.pk,
                "prev_hash does not match the hash of the event before it "
                "(an event was removed, inserted or reordered)",
            )
        if chain_hash(event.prev_hash, event) != event.hash:
            return checked, BrokenLink(event.pk, "its contents do not match its hash (the row was changed)")
        expected_prev = event.hash
        checked += 1
    return checked, None
