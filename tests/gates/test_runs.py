"""Claims, leases, the reaper and the staging-first rule, through the services."""

from datetime import timedelta

import pytest
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.audit import Actor
from gates.errors import InvalidState, NotPermitted
from gates.models import AuditEvent, Validation
from gates.services import (
    validation_block,
    validation_cancel,
    validation_claim,
    validation_evaluate,
    validation_reap_expired,
    validation_renew_lease,
    validation_request,
)
from tests.factories import make_results, make_validation

ACTOR = Actor("user", "olivia-ops")


@pytest.fixture
def queued(project, staging):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=ACTOR
    )
    return validation


def test_only_the_first_claim_wins(queued):
    first = validation_claim(validation_id=queued.pk, worker="host-a:1", lease_seconds=30)
    second = validation_claim(validation_id=queued.pk, worker="host-b:2", lease_seconds=30)
    assert first is not None and second is None
    queued.refresh_from_db()
    assert (queued.status, queued.worker) == ("running", "host-a:1")
    assert queued.lease_expires_at > timezone.now() + timedelta(seconds=25)
    assert AuditEvent.objects.filter(action="validation.started").count() == 1


def test_only_the_lease_holder_renews_it(queued):
    validation_claim(validation_id=queued.pk, worker="host-a:1", lease_seconds=30)
    progress = {"elapsedSeconds": 5.0, "requests": 400, "requestRate": 80.0}
    assert validation_renew_lease(
        validation_id=queued.pk, worker="host-a:1", lease_seconds=30, progress=progress
    )
    assert not validation_renew_lease(
        validation_id=queued.pk, worker="host-b:2", lease_seconds=30, progress={}
    )
    queued.refresh_from_db()
    assert queued.progress == progress


def test_the_reaper_ends_expired_leases_by_policy_and_leaves_live_ones(project, staging, production):
    live, _ = make_validation(
        project=project, environment=staging, build_id="live", git_hash="a" * 40, actor=ACTOR
    )
    dead_staging, _ = make_validation(
        project=project, environment=staging, build_id="dead", git_hash="a" * 40, actor=ACTOR
    )
    dead_production, _ = make_validation(
        project=project,
        environment=production,
        build_id="dead",
        git_hash="a" * 40,
        actor=ACTOR,
        staging_pass=True,
    )
    for validation in (live, dead_staging, dead_production):
        validation_claim(validation_id=validation.pk, worker="host-a:1", lease_seconds=30)
    past = timezone.now() - timedelta(seconds=1)
    Validation.objects.filter(build_id="dead").update(lease_expires_at=past)

    assert validation_reap_expired() == 2
    outcomes = {v.environment.name: v for v in Validation.objects.filter(build_id="dead")}
    assert (outcomes["staging"].status, outcomes["staging"].deployment_allowed) == ("failed", True)
    assert (outcomes["production"].status, outcomes["production"].deployment_allowed) == ("blocked", False)
    assert "host-a:1" in outcomes["production"].status_reason
    assert "lease" in outcomes["production"].blocking_reasons[0]
    live.refresh_from_db()
    assert live.status == "running"
    assert AuditEvent.objects.filter(action="validation.lease_expired").count() == 2


def test_a_late_evaluation_of_a_reaped_validation_changes_nothing(queued):
    validation_claim(validation_id=queued.pk, worker="host-a:1", lease_seconds=30)
    Validation.objects.filter(pk=queued.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    validation_reap_expired()
    with pytest.raises(InvalidState):
        validation_evaluate(validation=queued, results=make_results(), actor=ACTOR)
    queued.refresh_from_db()
    assert queued.verdict == "error"


def test_cancelling_a_running_validation_asks_its_worker_to_stop(queued):
    validation_claim(validation_id=queued.pk, worker="host-a:1", lease_seconds=30)
    validation_cancel(validation=queued, reason="wrong build", actor=ACTOR)
    queued.refresh_from_db()
    assert queued.status == "running" and queued.cancel_reason == "Cancelled by olivia-ops: wrong build"
    assert AuditEvent.objects.filter(action="validation.cancel_requested").count() == 1


def test_cancelling_a_running_validation_whose_worker_is_gone_ends_it_at_once(queued):
    validation_claim(validation_id=queued.pk, worker="host-a:1", lease_seconds=30)
    Validation.objects.filter(pk=queued.pk).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    validation_cancel(validation=queued, reason="stuck", actor=ACTOR)
    queued.refresh_from_db()
    assert queued.status == "failed" and "stuck" in queued.status_reason


def test_production_needs_a_passed_staging_validation_of_the_same_commit(project, staging, production):
    refused, _ = validation_request(
        project=project, environment=production, build_id="prod-1", git_hash="b" * 40, actor=ACTOR
    )
    assert (refused.status, refused.deployment_allowed) == ("blocked", False)
    assert "passed staging validation of git hash " + "b" * 40 in refused.status_reason
    assert AuditEvent.objects.filter(action="validation.refused").count() == 1

    passed, _ = make_validation(
        project=project, environment=staging, build_id="stg-1", git_hash="b" * 40, actor=ACTOR
    )
    validation_evaluate(validation=passed, results=make_results(), actor=ACTOR)
    allowed, _ = validation_request(
        project=project, environment=production, build_id="prod-2", git_hash="b" * 40, actor=ACTOR
    )
    assert allowed.status == "queued"


def test_a_person_without_the_block_right_can_neither_cancel_nor_block(project, staging, auditor, ops):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-x", git_hash="c" * 40, actor=ACTOR
    )
    with pytest.raises(NotPermitted, match="block_deployment"):
        validation_cancel(validation=validation, reason="Wrong branch.", actor=Actor.for_user(auditor))
    with pytest.raises(NotPermitted, match="block_deployment"):
        validation_block(validation=validation, reason="Freeze.", actor=Actor.for_user(auditor))
    assign_perm("gates.block_deployment", ops, project)
    blocked = validation_block(validation=validation, reason="Freeze.", actor=Actor.for_user(ops))
    assert blocked.status == Validation.Status.BLOCKED
