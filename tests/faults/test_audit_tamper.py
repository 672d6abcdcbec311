"""Someone who can write the audit table (or the digest directory) but has not the audit key
tampers with the log: deletes the newest events or all of them, rewrites an event and re-chains
the rest, appends a forged event, deletes or edits a digest file. `verify_audit_log` must exit 1
and name the first bad event or digest; the untouched log verifies whole, every event counted once.

On PostgreSQL the attacker first lifts the append-only trigger (the suite's connections run in
the maintenance mode of migration 0010, as a superuser would), so what is tested is the evidence
left, not the trigger.
"""

from __future__ import annotations

import hashlib
import hmac
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from gates.audit import Actor, audit_digest_write, audit_record, canonical_json, plain_chain_hash
from gates.models import AuditEvent

ACTOR = Actor("user", "olivia-ops", 7)
GUESSED_KEY = b"not-the-audit-key-but-the-attackers-best-guess"


@pytest.fixture(autouse=True)
def digests(settings, tmp_path):
    settings.PERFGATE_AUDIT_DIGEST_DIR = tmp_path / "audit-digests"
    return settings.PERFGATE_AUDIT_DIGEST_DIR


def record(n, label="event"):
    with transaction.atomic():
        return [
            audit_record(action="test.event", actor=ACTOR, project="wedsync-web", reason=f"{label} {i}")
            for i in range(n)
        ]


def verify(*args) -> tuple[int, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit_log", *args, stdout=out, stderr=err)
    except SystemExit as exit_:
        return exit_.code, err.getvalue()
    return 0, out.getvalue()


def sql(statement, params=()):
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def a_signed_log(n=5):
    """n events, covered by a digest, verified whole before the attack."""
    events = record(n)
    audit_digest_write()
    code, message = verify()
    assert code == 0 and f"intact: {n} event(s) verified" in message
    return events


@pytest.mark.django_db
def test_deleting_the_newest_events_is_caught_by_the_digest():
    events = a_signed_log(5)
    sql("DELETE FROM gates_auditevent WHERE id >= %s", [events[3].pk])
    assert AuditEvent.objects.count() == 3

    code, message = verify()
    assert code == 1
    assert f"event #{events[4].pk}, the last one digest #1" in message
    assert "counts 5 event(s)" in message and "the table has 3 before it" in message


@pytest.mark.django_db
def test_deleting_every_event_is_caught_by_the_digest():
    events = a_signed_log(5)
    sql("DELETE FROM gates_auditevent")

    code, message = verify()
    assert code == 1
    assert f"event #{events[4].pk}, the last one digest #1" in message and "the table has 0" in message


def guessed_key(prev_hash, event):
    return hmac.new(GUESSED_KEY, (prev_hash + canonical_json(event)).encode(), hashlib.sha256).hexdigest()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("rehash", "evidence"),
    [(plain_chain_hash, "its hash is a plain SHA-256"), (guessed_key, "its contents do not match its hash")],
    ids=["sha256", "guessed-key"],
)
def test_rewriting_an_event_and_re_chaining_the_rest_is_caught(rehash, evidence):
    events = a_signed_log(5)
    rewritten = events[1]
    prev_hash = rewritten.prev_hash
    for event in AuditEvent.objects.filter(id__gte=rewritten.pk).order_by("id"):
        if event.pk == rewritten.pk:
            event.actor = "user:mallory"
        event.prev_hash, event.hash = prev_hash, rehash(prev_hash, event)
        sql(
            "UPDATE gates_auditevent SET actor = %s, prev_hash = %s, hash = %s WHERE id = %s",
            [event.actor, event.prev_hash, event.hash, event.pk],
        )
        prev_hash = event.hash

    code, message = verify()
    assert code == 1
    assert f"event #{rewritten.pk}: {evidence}" in message and "1 event(s) before it verified" in message


@pytest.mark.django_db
def test_a_forged_event_appended_after_the_digest_is_caught_and_never_signed(digests):
    events = a_signed_log(3)
    forged = AuditEvent(
        created_at=timezone.now(),
        action="bypass.approve",
        actor="user:mallory",
        reason="approved, honest",
        data={},
        prev_hash=events[2].hash,
    )
    forged.hash = plain_chain_hash(forged.prev_hash, forged)
    forged.save(force_insert=True)

    code, message = verify()
    assert code == 1
    assert f"event #{forged.pk}: its hash is a plain SHA-256" in message and "3 event(s) before it" in message

    err = StringIO()
    with pytest.raises(SystemExit) as refused:
        call_command("audit_digest", stdout=StringIO(), stderr=err)
    assert refused.value.code == 1 and f"event #{forged.pk}" in err.getvalue()
    assert sorted(path.name for path in digests.iterdir()) == ["0000000001.json"]


def three_digests():
    """Three digests, each after two new events."""
    for batch in range(3):
        record(2, label=f"batch {batch}")
        audit_digest_write()
    assert verify()[0] == 0


@pytest.mark.django_db
def test_a_deleted_digest_in_the_middle_is_caught(digests):
    three_digests()
    (digests / "0000000002.json").unlink()

    code, message = verify()
    assert code == 1 and "digest #2 is missing (the next file is digest #3" in message


@pytest.mark.django_db
def test_deleting_the_newest_digest_leaves_its_events_uncovered_past_the_grace(digests):
    three_digests()
    (digests / "0000000003.json").unlink()
    assert verify()[0] == 0  # within a digest period the next digest is simply not due yet

    code, message = verify("--grace-minutes", "0")
    assert code == 1
    assert "not covered by a signed digest after digest #2" in message and "were deleted" in message


@pytest.mark.django_db
def test_deleting_every_digest_leaves_the_whole_log_uncovered_past_the_grace(digests):
    three_digests()
    for path in digests.iterdir():
        path.unlink()

    code, message = verify("--grace-minutes", "0")
    assert code == 1 and "there is no digest at all" in message


@pytest.mark.django_db
def test_an_edited_digest_does_not_match_its_signature(digests):
    three_digests()
    path = digests / "0000000002.json"
    path.write_text(path.read_text().replace('"count": 4', '"count": 3'))

    code, message = verify()
    assert code == 1 and "digest #2 (0000000002.json) does not match its signature" in message
