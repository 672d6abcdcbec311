"""The only writer of audit rows, the signed digests, and the check of both (docs/audit.md).

Each event's hash is an HMAC-SHA256, with the audit key, over the previous event's hash and the
canonical JSON of the event: changing, removing or reordering a row breaks every hash after it,
and whoever can write the table but lacks the key cannot re-chain it or append a valid event.
What a chain cannot show is its own end: deleting the newest events, or all of them, leaves a
valid chain. So every few minutes a digest (count, last id, last hash, the previous digest's hash),
signed with the same key, is written to a directory outside the database, and the table is
checked against every digest.

Call ``audit_record`` inside the transaction of the change it records: the row commits or rolls
back with it. The key lives in the settings (``PERFGATE_AUDIT_KEYS``), never in the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, connections, models, transaction
from django.utils import timezone

from gates.models import AuditEvent

GENESIS_HASH = "0" * 64
# Any constants: serialize audit writers (and, apart from them, digest writers) on PostgreSQL so
# neither chain forks.
_CHAIN_LOCK_KEY = 0x70657266  # "perf"
_DIGEST_LOCK_KEY = 0x70676467  # "pgdg"
DIGEST_SCHEDULE_NAME = "perfgate: audit digest"
DIGEST_VERSION = 1
_DIGEST_FILE = re.compile(r"^(\d{10})\.json$")


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


def _keys() -> list[bytes]:
    return [key.encode() for key in settings.PERFGATE_AUDIT_KEYS]


def key_id(key: bytes) -> str:
    """Names a key in a digest without revealing it."""
    return hashlib.sha256(b"perfgate-audit-key-id:" + key).hexdigest()[:16]


def chain_hash(prev_hash: str, event: AuditEvent, key: bytes | None = None) -> str:
    """The event's hash: HMAC-SHA256 with the signing key (the first of PERFGATE_AUDIT_KEYS)."""
    message = (prev_hash + canonical_json(event)).encode()
    return hmac.new(key or _keys()[0], message, hashlib.sha256).hexdigest()


def plain_chain_hash(prev_hash: str, event: AuditEvent) -> str:
    """The unkeyed SHA-256 that events had before the chain was keyed; anyone can compute it."""
    return hashlib.sha256((prev_hash + canonical_json(event)).encode()).hexdigest()


def _lock(key: int) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])
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
    _lock(_CHAIN_LOCK_KEY)
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


class ChainBroken(Exception):
    """The chain fails at ``link``; ``checked`` events before it verified."""

    def __init__(self, link: BrokenLink, checked: int):
        super().__init__(f"event #{link.event_id}: {link.problem}")
        self.link = link
        self.checked = checked


def _is_keyed(event: AuditEvent) -> bool:
    return any(hmac.compare_digest(chain_hash(event.prev_hash, event, key), event.hash) for key in _keys())


def _verified(
    events: Iterable[AuditEvent], *, prev_hash: str = GENESIS_HASH, legacy_until: int | None = None
) -> Iterator[AuditEvent]:
    """Yield the events (oldest first) while their links and hashes hold; raise ChainBroken at the
    first that does not.

    Unkeyed (plain SHA-256) events are accepted only as the log's old prefix: before its first
    keyed event, and, once a digest has fixed it, up to the digest's ``legacy_until``. Anywhere
    else a plain hash means someone without the key wrote or re-chained the event."""
    keyed_seen = False
    for checked, event in enumerate(events):
        if event.prev_hash != prev_hash:
            raise ChainBroken(
                BrokenLink(
                    event.pk,
                    "prev_hash does not match the hash of the event before it "
                    "(an event was removed, inserted or reordered)",
                ),
                checked,
            )
        if _is_keyed(event):
            keyed_seen = True
        elif plain_chain_hash(event.prev_hash, event) == event.hash:
            legacy_allowed = not keyed_seen and (legacy_until is None or event.pk <= legacy_until)
            if not legacy_allowed:
                raise ChainBroken(
                    BrokenLink(
                        event.pk,
                        "its hash is a plain SHA-256, not keyed with the audit key: it was written or "
                        "re-chained by someone without the key (a forged event)",
                    ),
                    checked,
                )
        else:
            raise ChainBroken(
                BrokenLink(event.pk, "its contents do not match its hash (the row was changed)"), checked
            )
        prev_hash = event.hash
        yield event


@contextmanager
def _events_after(last_id: int = 0) -> Iterator[Iterator[AuditEvent]]:
    """The events after ``last_id``, oldest first, read in chunks. The cursor (a server-side one on
    PostgreSQL) is closed when the block is left, early exits included: left to the garbage
    collector it would be closed inside some later transaction, which PostgreSQL then aborts."""
    events = AuditEvent.objects.filter(id__gt=last_id).order_by("id").iterator(chunk_size=2000)
    try:
        yield events
    finally:
        events.close()


def verify_chain(events: Iterable[AuditEvent] | None = None) -> tuple[int, BrokenLink | None]:
    """Walk the chain oldest first; (events checked, the first broken link or None). The chain
    alone: ``verify_audit_log`` also checks the table against the signed digests."""
    if events is None:
        with _events_after() as all_events:
            return verify_chain(all_events)
    checked = 0
    try:
        for _ in _verified(events):
            checked += 1
    except ChainBroken as broken:
        return broken.checked, broken.link
    return checked, None


@dataclass(frozen=True)
class Digest:
    """One signed digest file: what the table held when it was written."""

    sequence: int
    created_at: str
    count: int
    last_id: int
    last_hash: str
    legacy_until: int
    previous_digest: str
    key_id: str
    signature: str
    file_hash: str  # SHA-256 of the file's bytes: the next digest's previous_digest

    @property
    def name(self) -> str:
        return f"digest #{self.sequence} ({self.sequence:010d}.json)"

    def body(self) -> dict:
        """The signed fields."""
        return {
            "version": DIGEST_VERSION,
            "sequence": self.sequence,
            "created_at": self.created_at,
            "count": self.count,
            "last_id": self.last_id,
            "last_hash": self.last_hash,
            "legacy_until": self.legacy_until,
            "previous_digest": self.previous_digest,
            "key_id": self.key_id,
        }


class DigestInvalid(Exception):
    """A digest file is unreadable, unsigned, out of sequence or does not follow its predecessor."""


def _digest_signature(body: dict, key: bytes) -> str:
    message = b"perfgate-audit-digest:" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def digest_dir() -> Path:
    return Path(settings.PERFGATE_AUDIT_DIGEST_DIR)


def _digest_files(directory: Path) -> list[tuple[int, Path]]:
    """Digest files by sequence; anything else in the directory (a writer's temporary file) is
    not a digest."""
    if not directory.is_dir():
        return []
    found = ((_DIGEST_FILE.match(path.name), path) for path in directory.iterdir())
    return sorted((int(match.group(1)), path) for match, path in found if match)


def _read_digest(sequence: int, path: Path) -> Digest:
    """Parse one digest file and check its signature against the keys perfgate has."""
    name = f"digest #{sequence} ({path.name})"
    try:
        raw = path.read_bytes()
        fields = json.loads(raw)
        signature = fields.pop("signature")
        digest = Digest(
            sequence=int(fields["sequence"]),
            created_at=str(fields["created_at"]),
            count=int(fields["count"]),
            last_id=int(fields["last_id"]),
            last_hash=str(fields["last_hash"]),
            legacy_until=int(fields["legacy_until"]),
            previous_digest=str(fields["previous_digest"]),
            key_id=str(fields["key_id"]),
            signature=str(signature),
            file_hash=hashlib.sha256(raw).hexdigest(),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise DigestInvalid(f"{name} is not a readable digest ({error.__class__.__name__})") from None
    key = next((key for key in _keys() if key_id(key) == digest.key_id), None)
    if key is None:
        raise DigestInvalid(f"{name} is signed with a key perfgate does not have (key id {digest.key_id})")
    if fields != digest.body() or not hmac.compare_digest(_digest_signature(fields, key), digest.signature):
        raise DigestInvalid(f"{name} does not match its signature: the file was changed or forged")
    if digest.sequence != sequence:
        raise DigestInvalid(f"{name} says it is digest #{digest.sequence}: the file was renamed")
    return digest


def _follows(digest: Digest, previous: Digest | None) -> None:
    """A digest continues its predecessor: next number, its hash, never fewer events."""
    expected_sequence = previous.sequence + 1 if previous else 1
    if digest.sequence != expected_sequence:
        raise DigestInvalid(
            f"digest #{expected_sequence} is missing (the next file is {digest.name}): "
            "digest files were deleted"
        )
    if digest.previous_digest != (previous.file_hash if previous else GENESIS_HASH):
        raise DigestInvalid(
            f"{digest.name} does not follow the digest before it: a digest file was replaced or deleted"
        )
    if previous and (
        digest.count < previous.count
        or digest.last_id < previous.last_id
        or digest.legacy_until != previous.legacy_until
    ):
        raise DigestInvalid(f"{digest.name} covers less than {previous.name}")


def digests_load(directory: Path | None = None) -> list[Digest]:
    """Every digest, oldest first, each signed and following the one before; DigestInvalid at the
    first that is not."""
    digests: list[Digest] = []
    for sequence, path in _digest_files(directory or digest_dir()):
        digest = _read_digest(sequence, path)
        _follows(digest, digests[-1] if digests else None)
        digests.append(digest)
    return digests


def _latest_digest(directory: Path) -> Digest | None:
    files = _digest_files(directory)
    return _read_digest(*files[-1]) if files else None


def _write_digest_file(directory: Path, body: dict) -> None:
    """Write the digest so that it appears whole or not at all, and never over an existing one
    (a second writer of the same number fails instead of forking the digest chain)."""
    key = _keys()[0]
    data = json.dumps({**body, "signature": _digest_signature(body, key)}, indent=2, sort_keys=True).encode()
    final = directory / f"{body['sequence']:010d}.json"
    temporary = directory / f".{final.name}.{os.getpid()}.tmp"
    with open(temporary, "wb") as file:
        file.write(data + b"\n")
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(temporary, final)
    finally:
        temporary.unlink()


def audit_digest_write() -> Digest | None:
    """Sign what the table holds now into the next digest file; None when no event came since the
    last one.

    The events since the last digest are verified first: a digest signs only a valid chain, so an
    event forged or cut in between is refused (ChainBroken, DigestInvalid) instead of covered."""
    directory = digest_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with transaction.atomic():
        _lock(_DIGEST_LOCK_KEY)
        latest = _latest_digest(directory)
        count, last, last_plain_id = _new_events(latest)
        if latest is not None and last is None:
            return None
        body = {
            "version": DIGEST_VERSION,
            "sequence": latest.sequence + 1 if latest else 1,
            "created_at": timezone.now().isoformat(),
            "count": (latest.count if latest else 0) + count,
            "last_id": last.pk if last else 0,
            "last_hash": last.hash if last else GENESIS_HASH,
            "legacy_until": latest.legacy_until if latest else last_plain_id,
            "previous_digest": latest.file_hash if latest else GENESIS_HASH,
            "key_id": key_id(_keys()[0]),
        }
        _write_digest_file(directory, body)
    return _read_digest(body["sequence"], directory / f"{body['sequence']:010d}.json")


def _new_events(latest: Digest | None) -> tuple[int, AuditEvent | None, int]:
    """Verify the events after the latest digest: (how many, the last, the last unkeyed one's id).
    The first digest walks the whole log and so fixes where its unkeyed prefix ends."""
    if latest is not None:
        _still_in_table(latest)
    after, prev_hash = (latest.last_id, latest.last_hash) if latest else (0, GENESIS_HASH)
    legacy_until = latest.legacy_until if latest else None
    count, last, last_plain_id = 0, None, 0
    with _events_after(after) as events:
        for event in _verified(events, prev_hash=prev_hash, legacy_until=legacy_until):
            count, last = count + 1, event
            if legacy_until is None and plain_chain_hash(event.prev_hash, event) == event.hash:
                last_plain_id = event.pk
    return count, last, last_plain_id


def _still_in_table(digest: Digest) -> None:
    if digest.last_id and not AuditEvent.objects.filter(id=digest.last_id, hash=digest.last_hash).exists():
        raise DigestInvalid(
            f"event #{digest.last_id}, the last one {digest.name} covers, is not in the table as signed: "
            "events were deleted or rewritten"
        )


@dataclass(frozen=True)
class AuditReport:
    """What ``audit_log_verify`` found: the events that verified, the newest digest, how many
    events came after it, and the first problem (None when the log is intact)."""

    checked: int
    latest: Digest | None
    uncovered: int
    problem: str | None


def _digest_mismatch(digest: Digest, checked: int, last_id: int, last_hash: str) -> str | None:
    """How the table, read up to ``last_id`` (``checked`` events), differs from a digest."""
    if digest.last_id != last_id:
        return (
            f"event #{digest.last_id}, the last one {digest.name} covers, is not in the table: events were "
            f"deleted (the digest counts {digest.count} event(s) up to it; the table has {checked} before it)"
        )
    if digest.last_hash != last_hash:
        return f"event #{last_id} does not match {digest.name}: it was rewritten"
    if digest.count != checked:
        return (
            f"{digest.name} counts {digest.count} event(s) up to #{last_id}, the table has {checked}: "
            "events were deleted or inserted"
        )
    return None


def _uncovered_problem(oldest: AuditEvent | None, latest: Digest | None, grace: timedelta) -> str | None:
    """Events stay uncovered for at most a digest period; older ones mean the newest digest files
    were deleted or nothing writes digests."""
    if oldest is None or oldest.created_at > timezone.now() - grace:
        return None
    since = f"after {latest.name}" if latest else "and there is no digest at all"
    return (
        f"event #{oldest.pk} ({oldest.created_at.isoformat()}) is not covered by a signed digest {since}, "
        f"although one is due every {settings.PERFGATE_AUDIT_DIGEST_MINUTES} minute(s): the newest "
        "digest files were deleted, or the digest task is not running (manage.py audit_digest)"
    )


def audit_log_verify(*, grace: timedelta | None = None) -> AuditReport:
    """Check the digest files, then walk the chain and hold the table against every digest.

    ``grace``: how old an event may be and still lack a digest (two digest periods by default)."""
    if grace is None:
        grace = timedelta(minutes=2 * settings.PERFGATE_AUDIT_DIGEST_MINUTES)
    try:
        digests = digests_load()
    except DigestInvalid as invalid:
        return AuditReport(0, None, 0, str(invalid))
    latest = digests[-1] if digests else None
    pending = iter(digests)
    due = next(pending, None)
    checked, last_id, last_hash, oldest_uncovered = 0, 0, GENESIS_HASH, None
    try:
        with _events_after() as events:
            for event in _verified(events, legacy_until=latest.legacy_until if latest else None):
                while due is not None and due.last_id < event.pk:
                    if problem := _digest_mismatch(due, checked, last_id, last_hash):
                        return AuditReport(checked, latest, 0, problem)
                    due = next(pending, None)
                checked, last_id, last_hash = checked + 1, event.pk, event.hash
                if oldest_uncovered is None and (latest is None or event.pk > latest.last_id):
                    oldest_uncovered = event
    except ChainBroken as broken:
        return AuditReport(broken.checked, latest, 0, str(broken))
    while due is not None:
        if problem := _digest_mismatch(due, checked, last_id, last_hash):
            return AuditReport(checked, latest, 0, problem)
        due = next(pending, None)
    uncovered = checked - (latest.count if latest else 0)
    return AuditReport(checked, latest, uncovered, _uncovered_problem(oldest_uncovered, latest, grace))


def ensure_digest_schedule(sender, using: str = "default", **kwargs) -> None:
    """post_migrate: the digest task runs every PERFGATE_AUDIT_DIGEST_MINUTES, first one period
    after the database is migrated. Kept here, not in a data migration, so a changed period takes
    effect at the next migrate."""
    from django_q.models import Schedule

    if Schedule._meta.db_table not in connections[using].introspection.table_names():
        return  # migrated part of the way, before django-q2's tables
    minutes = settings.PERFGATE_AUDIT_DIGEST_MINUTES
    Schedule.objects.using(using).update_or_create(
        name=DIGEST_SCHEDULE_NAME,
        defaults={
            "func": "gates.tasks.write_audit_digest",
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
        },
        create_defaults={
            "func": "gates.tasks.write_audit_digest",
            "schedule_type": Schedule.MINUTES,
            "minutes": minutes,
            "repeats": -1,
            "next_run": timezone.now() + timedelta(minutes=minutes),
        },
    )


@checks.register(checks.Tags.security, deploy=True)
def check_audit_key(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """A derived key dies with SECRET_KEY: rotating that would leave the audit log unverifiable."""
    if not settings.PERFGATE_AUDIT_KEYS_DERIVED:
        return []
    return [
        checks.Warning(
            "PERFGATE_AUDIT_KEYS is not set: the audit log is keyed with a key derived from SECRET_KEY.",
            hint="Set PERFGATE_AUDIT_KEYS to a random key of 32+ characters kept out of the database "
            "(docs/audit.md) before the log grows; rotating SECRET_KEY would orphan the derived one.",
            id="perfgate.W001",
        )
    ]
