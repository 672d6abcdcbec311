"""The audit log: append-only in the model layer, hash-chained with a key, checked against signed
digests outside the database, tampering detected. (The attacks themselves: tests/faults.)"""

import hashlib
import hmac
import json
import math
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core import checks
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone
from django_q.models import Schedule
from django_q.tasks import async_task

from gates.audit import (
    DIGEST_SCHEDULE_NAME,
    GENESIS_HASH,
    Actor,
    audit_digest_write,
    audit_log_verify,
    audit_record,
    canonical_json,
    digests_load,
    plain_chain_hash,
    verify_chain,
)
from gates.models import AuditEvent
from tests.qcluster import qcluster, wait_for

ACTOR = Actor("user", "olivia-ops", 7)
ROOT = Path(__file__).resolve().parent.parent.parent
OLD_KEY = "an-old-audit-key-that-signed-the-first-events"
NEW_KEY = "a-new-audit-key-put-in-front-when-rotating"


@pytest.fixture(autouse=True)
def digests(settings, tmp_path):
    """Each test signs into a directory of its own, never the installation's."""
    settings.PERFGATE_AUDIT_DIGEST_DIR = tmp_path / "audit-digests"
    return settings.PERFGATE_AUDIT_DIGEST_DIR


def record(n):
    with transaction.atomic():
        return [
            audit_record(
                action="test.event",
                actor=ACTOR,
                project="wedsync-web",
                reason=f"event {i}",
                data={"i": i, "ratio": 0.1 * i},
            )
            for i in range(n)
        ]


@pytest.mark.django_db
def test_events_form_a_chain_from_the_genesis_hash():
    events = record(3)
    assert events[0].prev_hash == GENESIS_HASH
    assert events[1].prev_hash == events[0].hash and events[2].prev_hash == events[1].hash
    assert verify_chain() == (3, None)


@pytest.mark.django_db
def test_an_event_records_who_what_and_why():
    event = record(1)[0]
    event.refresh_from_db()
    assert (event.actor, event.actor_user_id, event.action, event.project, event.reason) == (
        "user:olivia-ops",
        7,
        "test.event",
        "wedsync-web",
        "event 0",
    )


@pytest.mark.django_db(transaction=True)
def test_audit_rows_cannot_be_written_outside_a_transaction():
    with pytest.raises(RuntimeError):
        audit_record(action="test.event", actor=ACTOR)


@pytest.mark.django_db
def test_audit_rows_cannot_be_changed_or_deleted_through_the_models():
    event = record(1)[0]
    event.reason = "rewritten"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.filter(pk=event.pk).update(reason="rewritten")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()


@pytest.mark.django_db
def test_a_changed_row_is_detected_at_its_link():
    events = record(4)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE gates_auditevent SET reason = %s WHERE id = %s", ["nothing to see", events[2].pk]
        )
    checked, broken = verify_chain()
    assert checked == 2 and broken.event_id == events[2].pk and "changed" in broken.problem


@pytest.mark.django_db
def test_a_removed_row_is_detected_at_the_next_link():
    events = record(4)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM gates_auditevent WHERE id = %s", [events[1].pk])
    checked, broken = verify_chain()
    assert checked == 1 and broken.event_id == events[2].pk and "removed" in broken.problem


@pytest.mark.django_db
def test_verify_audit_log_exits_non_zero_at_the_first_broken_link():
    events = record(3)
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert "intact: 3 event(s)" in out.getvalue()

    with connection.cursor() as cursor:
        cursor.execute("UPDATE gates_auditevent SET data = %s WHERE id = %s", ['{"i": 99}', events[0].pk])
    err = StringIO()
    with pytest.raises(SystemExit) as exit_:
        call_command("verify_audit_log", stdout=StringIO(), stderr=err)
    assert exit_.value.code == 1
    assert f"#{events[0].pk}" in err.getvalue()


NUMBERS_EVERY_DATABASE_STORES_ITS_OWN_WAY = {
    "huge": 1e17,
    "negative_zero": -0.0,
    "tiny": 1.5e-300,
    "big_and_odd": 123456789012345678.0,
    "nested": [{"p(95)": 1e23}, -1e16, 0.1],
}


@pytest.mark.django_db
def test_an_event_with_numbers_the_database_rewrites_still_verifies():
    with transaction.atomic():
        event = audit_record(action="test.event", actor=ACTOR, data=NUMBERS_EVERY_DATABASE_STORES_ITS_OWN_WAY)
    stored = AuditEvent.objects.get(pk=event.pk)
    assert stored.data == event.data
    assert stored.data["huge"] == 100000000000000000 and stored.data["big_and_odd"] == 123456789012345680
    assert math.copysign(1, stored.data["negative_zero"]) == 1
    assert stored.data["tiny"] == 1.5e-300
    assert verify_chain() == (1, None)
    out = StringIO()
    call_command("verify_audit_log", stdout=out)
    assert "intact: 1 event(s)" in out.getvalue()


@pytest.mark.django_db
def test_numbers_are_stored_as_the_database_gives_them_back():
    with transaction.atomic():
        event = audit_record(action="test.event", actor=ACTOR, data={"n": [1e17, -0.0, float("nan"), 2.5]})
    with connection.cursor() as cursor:
        cursor.execute("SELECT data FROM gates_auditevent WHERE id = %s", [event.pk])
        raw = cursor.fetchone()[0]
    read_back = raw if isinstance(raw, dict) else json.loads(raw)
    # Compared as text: 1e17 == 100000000000000000 and -0.0 == 0.0 in Python, not in a hash.
    expected = '{"n": [100000000000000000, 0.0, null, 2.5]}'
    assert json.dumps(read_back) == expected == json.dumps(event.data)


postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the append-only trigger exists on PostgreSQL only"
)


def without_maintenance(cursor):
    cursor.execute("SET LOCAL perfgate.audit_maintenance = 'off'")


@postgres_only
@pytest.mark.django_db
@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE gates_auditevent SET reason = 'rewritten'",
        "DELETE FROM gates_auditevent",
        "TRUNCATE gates_auditevent",
    ],
)
def test_the_database_itself_refuses_to_change_the_audit_log(statement):
    from django.db import DatabaseError

    record(2)
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        without_maintenance(cursor)
        cursor.execute(statement)
    assert AuditEvent.objects.count() == 2


@postgres_only
@pytest.mark.django_db
def test_a_superuser_who_disables_the_trigger_to_tamper_is_still_caught():
    events = record(3)
    with transaction.atomic(), connection.cursor() as cursor:
        without_maintenance(cursor)
        cursor.execute("ALTER TABLE gates_auditevent DISABLE TRIGGER gates_auditevent_no_update_delete")
        cursor.execute("UPDATE gates_auditevent SET actor = 'user:mallory' WHERE id = %s", [events[1].pk])
        cursor.execute("ALTER TABLE gates_auditevent ENABLE TRIGGER gates_auditevent_no_update_delete")
    checked, broken = verify_chain()
    assert checked == 1 and broken.event_id == events[1].pk


def unkeyed_event(reason):
    """An event as perfgate wrote them before the chain was keyed: a plain SHA-256 link."""
    prev = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first() or GENESIS_HASH
    event = AuditEvent(created_at=timezone.now(), action="test.event", actor="system:perfgate", reason=reason)
    event.data, event.prev_hash = {}, prev
    event.hash = plain_chain_hash(prev, event)
    event.save(force_insert=True)
    return event


def verify(*args):
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit_log", *args, stdout=out, stderr=err)
    except SystemExit as exit_:
        return exit_.code, out.getvalue() + err.getvalue()
    return 0, out.getvalue() + err.getvalue()


@pytest.mark.django_db
def test_an_event_hash_is_keyed_with_the_audit_key_not_a_plain_sha256(settings):
    event = record(1)[0]
    message = (GENESIS_HASH + canonical_json(event)).encode()
    key = settings.PERFGATE_AUDIT_KEYS[0].encode()
    assert event.hash == hmac.new(key, message, hashlib.sha256).hexdigest()
    assert event.hash != hashlib.sha256(message).hexdigest()


@pytest.mark.django_db
def test_events_signed_with_an_old_key_still_verify_after_a_new_key_is_put_in_front(settings):
    settings.PERFGATE_AUDIT_KEYS = [OLD_KEY]
    old = record(2)
    settings.PERFGATE_AUDIT_KEYS = [NEW_KEY, OLD_KEY]
    new = record(1)
    assert new[0].prev_hash == old[1].hash
    assert verify_chain() == (3, None)

    settings.PERFGATE_AUDIT_KEYS = [NEW_KEY]
    checked, broken = verify_chain()
    assert checked == 0 and broken.event_id == old[0].pk and "changed" in broken.problem


@pytest.mark.django_db
def test_a_log_written_before_the_chain_was_keyed_verifies_and_continues_keyed():
    legacy = [unkeyed_event("before the upgrade") for _ in range(2)]
    keyed = record(2)
    assert keyed[0].prev_hash == legacy[1].hash
    assert verify_chain() == (4, None)
    digest = audit_digest_write()
    assert (digest.count, digest.last_id, digest.legacy_until) == (4, keyed[1].pk, legacy[1].pk)
    assert verify()[0] == 0


@pytest.mark.django_db
def test_an_unkeyed_event_after_a_keyed_one_is_a_forgery():
    record(1)
    forged = unkeyed_event("appended without the key")
    checked, broken = verify_chain()
    assert checked == 1 and broken.event_id == forged.pk and "forged" in broken.problem


@pytest.mark.django_db
def test_a_digest_signs_count_last_id_last_hash_and_the_previous_digest(digests, settings):
    events = record(3)
    first = audit_digest_write()
    assert (first.sequence, first.count, first.last_id, first.last_hash) == (
        1,
        3,
        events[2].pk,
        events[2].hash,
    )
    assert first.previous_digest == GENESIS_HASH
    assert audit_digest_write() is None  # nothing new: no file

    more = record(2)
    second = audit_digest_write()
    assert (second.sequence, second.count, second.last_id) == (2, 5, more[1].pk)
    assert second.previous_digest == hashlib.sha256((digests / "0000000001.json").read_bytes()).hexdigest()
    assert [d.sequence for d in digests_load()] == [1, 2]

    stored = json.loads((digests / "0000000002.json").read_text())
    assert {"count", "last_id", "last_hash", "created_at", "previous_digest", "signature"} <= set(stored)
    assert settings.PERFGATE_AUDIT_KEYS[0] not in (digests / "0000000002.json").read_text()


@pytest.mark.django_db
def test_a_digest_of_an_empty_log_is_checked_like_any_other():
    assert audit_digest_write().count == 0
    record(2)
    report = audit_log_verify()
    assert (report.checked, report.latest.sequence, report.uncovered, report.problem) == (2, 1, 2, None)


@pytest.mark.django_db
def test_verify_audit_log_says_how_much_a_signed_digest_covers():
    record(3)
    code, output = verify()
    assert code == 0 and "no signed digest yet" in output
    call_command("audit_digest", stdout=StringIO())
    record(1)
    code, output = verify()
    assert code == 0
    assert "intact: 4 event(s) verified" in output and "digest #1" in output
    assert "covers 3 up to" in output and "1 event(s) after it not yet covered" in output


@pytest.mark.django_db
def test_events_left_without_a_digest_longer_than_the_grace_fail_verification():
    record(2)
    assert verify()[0] == 0  # young events: the next scheduled digest will cover them
    code, output = verify("--grace-minutes", "0")
    assert code == 1 and "there is no digest at all" in output


@pytest.mark.django_db
def test_migrate_schedules_the_digest_every_configured_period(settings):
    schedule = Schedule.objects.get(name=DIGEST_SCHEDULE_NAME)
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == (
        "gates.tasks.write_audit_digest",
        Schedule.MINUTES,
        -1,
    )
    assert schedule.minutes == settings.PERFGATE_AUDIT_DIGEST_MINUTES


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_writes_the_digest_with_the_same_key(digests):
    events = record(3)
    with qcluster(PERFGATE_AUDIT_DIGEST_DIR=str(digests)):
        async_task("gates.tasks.write_audit_digest")
        wait_for(lambda: (digests / "0000000001.json").exists(), timeout=30, what="the worker's digest")
    report = audit_log_verify()
    assert report.problem is None
    assert (report.checked, report.latest.last_id, report.uncovered) == (3, events[2].pk, 0)


def test_the_deploy_check_warns_while_the_audit_key_is_derived_from_secret_key(settings):
    settings.PERFGATE_AUDIT_KEYS_DERIVED = True
    assert "perfgate.W001" in {m.id for m in checks.run_checks(include_deployment_checks=True)}
    settings.PERFGATE_AUDIT_KEYS_DERIVED = False
    assert "perfgate.W001" not in {m.id for m in checks.run_checks(include_deployment_checks=True)}


def test_a_short_audit_key_is_refused_at_startup():
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.PERFGATE_AUDIT_KEYS"],
        cwd=ROOT,
        env={
            "DJANGO_SETTINGS_MODULE": "perfgate_site.settings",
            "DEBUG": "true",
            "PERFGATE_AUDIT_KEYS": "short",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "at least 32 characters" in result.stderr
