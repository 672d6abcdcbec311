"""The one seam out of the gate: every state change of a validation is announced to the
registered listeners, inside the transaction that made it."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from guardian.shortcuts import assign_perm

from gates import execution, registry
from gates.audit import Actor
from gates.models import AuditEvent, Validation
from gates.services import (
    bypass_approve,
    bypass_request,
    validation_block,
    validation_cancel,
    validation_claim,
    validation_evaluate,
    validation_record_error,
)
from tests.factories import make_results, make_validation

ACTOR = Actor("user", "olivia-ops")
CI = Actor("token", "ci-bot")


@pytest.fixture
def heard():
    """A listener that records (build, change, whether it ran inside a transaction)."""
    changes = []

    def listener(validation, change):
        changes.append((validation.build_id, change, connection.in_atomic_block))

    registry.listen("test", listener)
    yield changes
    registry._listeners.pop("test")


def queued(project, environment, build="b-1"):
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build, git_hash="a" * 40, actor=ACTOR
    )
    return validation


def test_every_state_change_of_a_validation_is_announced_in_its_transaction(
    project, staging, heard, add_rule, ops
):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = queued(project, staging)
    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    validation_evaluate(validation=claimed, results=make_results(p95=900.0), actor=ACTOR)
    bypass = bypass_request(validation=claimed, justification="Known slowdown, hotfix.", actor=CI)
    assign_perm("gates.approve_bypass", ops, project)
    bypass_approve(bypass=bypass, approver=ops)

    other = queued(project, staging, "b-2")
    validation_cancel(validation=other, reason="Wrong branch.", actor=ACTOR)
    third = queued(project, staging, "b-3")
    validation_block(validation=third, reason="Freeze.", actor=ACTOR)
    fourth = queued(project, staging, "b-4")
    validation_record_error(validation=fourth, reason="Target unreachable.", actor=ACTOR)

    assert [(build, str(change)) for build, change, _ in heard] == [
        ("b-1", "queued"),
        ("b-1", "running"),
        ("b-1", "finished"),
        ("b-1", "bypassed"),
        ("b-2", "queued"),
        ("b-2", "cancelled"),
        ("b-3", "queued"),
        ("b-3", "blocked"),
        ("b-4", "queued"),
        ("b-4", "finished"),
    ]
    assert all(in_transaction for _, _, in_transaction in heard)


def test_a_listener_that_fails_takes_the_state_change_back_with_it(project, staging):
    validation = queued(project, staging)
    audited = AuditEvent.objects.count()

    def broken(validation, change):
        raise RuntimeError("the outbox table is gone")

    registry.listen("broken", broken)
    try:
        with pytest.raises(RuntimeError):
            validation_block(validation=validation, reason="Freeze.", actor=ACTOR)
    finally:
        registry._listeners.pop("broken")
    validation.refresh_from_db()
    assert validation.status == Validation.Status.QUEUED and not validation.manual_block_reason
    assert AuditEvent.objects.count() == audited


def test_a_state_change_that_rolls_back_leaves_no_announcement_behind(project, staging, heard):
    validation = queued(project, staging)
    heard.clear()
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        validation_block(validation=validation, reason="Freeze.", actor=ACTOR)
        assert [str(change) for _, change, _ in heard] == ["blocked"]
        1 / 0  # noqa: B018 - the caller's transaction fails after the change
    validation.refresh_from_db()
    assert validation.status == Validation.Status.QUEUED


def test_a_tool_without_a_runner_ends_the_validation_with_the_reason(project, staging, monkeypatch):
    validation = queued(project, staging)
    monkeypatch.setattr(registry, "_runners", {})
    execution.execute(validation.pk)
    validation.refresh_from_db()
    assert validation.verdict == "error"
    assert "No runner is registered for the tool 'k6'" in validation.status_reason
