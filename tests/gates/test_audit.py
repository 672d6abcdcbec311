"""The audit log: append-only in the model layer, hash-chained, tampering detected."""

import json
import math
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection, transaction

from gates.audit import GENESIS_HASH, Actor, audit_record, verify_chain
from gates.models import AuditEvent

ACTOR = Actor("user", "olivia-ops", 7)


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
