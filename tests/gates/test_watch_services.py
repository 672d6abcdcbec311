"""Watching production: how probes are counted (Argo Rollouts' failureLimit, consecutive,
inconclusiveLimit, consecutiveErrorLimit), that an error is never a failure, and how the one
rollback of a watched deployment is decided, approved, rejected or refused."""

from __future__ import annotations

import io
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.audit import Actor
from gates.errors import InvalidState, NotPermitted, ServiceError
from gates.models import AuditEvent, Notice, Probe, Rollback, Scenario, Validation, Watch
from gates.probes import ProbeResult
from gates.services import validation_block, validation_request
from gates.services.rollbacks import rollback_approve, rollback_decide, rollback_reject
from gates.services.watches import probe_record, watch_alerted, watch_conclude, watch_start
from tests.factories import PASSING_SUMMARY

P95 = "http_req_duration|p(95)"


@pytest.fixture
def probe_scenario(project):
    return Scenario.objects.create(
        project=project, name="probe", script_text="export default function () {}", vus=2, duration_seconds=5
    )


@pytest.fixture
def watched(production, probe_scenario):
    production.watch_scenario = probe_scenario
    production.watch_initial_delay_seconds = 0
    production.watch_interval_seconds = 10
    production.watch_window_seconds = 600
    production.watch_failure_limit = 2
    production.watch_consecutive = True
    production.watch_inconclusive_limit = 1
    production.watch_consecutive_error_limit = 2
    production.auto_rollback = True
    production.save()
    return production


CI = Actor("token", "ci")


def passed(project, environment, build_id, *, deployment_id="", actor=CI):
    """A production validation that passed, asked for the way CI asks, with uploaded results."""
    sha = f"{abs(hash(build_id)):040x}"[:40]
    staging = project.environments.get(name="staging")
    for env, suffix in ((staging, "~staging"), (environment, "")):
        validation, _ = validation_request(
            project=project,
            environment=env,
            build_id=build_id + suffix,
            git_hash=sha,
            actor=actor,
            test_config={"targetUrl": "http://127.0.0.1:8001"},
            deployment_context={"deploymentId": deployment_id} if deployment_id and not suffix else {},
            results=io.BytesIO(PASSING_SUMMARY),
            results_format="k6-summary-export",
        )
    assert validation.status == Validation.Status.PASSED
    return validation


def start(validation):
    with mock.patch("gates.services.watches.queue_watch"):
        return watch_start(validation=validation, actor=Actor("token", "ci"), source=Watch.Source.CI)


def probe(watch, outcome, value=100.0, trigger=Probe.Trigger.SCHEDULE):
    result = ProbeResult(
        outcome=outcome,
        verdict={"success": "pass", "failure": "fail", "inconclusive": "inconclusive"}.get(outcome, ""),
        reason=f"probe said {outcome}",
        values={P95: value} if outcome != "error" else {},
    )
    probe_record(
        watch=watch, result=result, trigger=trigger, target_url=watch.target_url, started_at=timezone.now()
    )
    watch.refresh_from_db()
    return watch


def test_a_watch_needs_a_watch_scenario(project, production):
    validation = passed(project, production, "b1")
    with pytest.raises(ServiceError, match="no watch scenario"):
        watch_start(validation=validation, actor=Actor("token", "ci"), source="ci")
    assert not Watch.objects.exists()


def test_a_url_off_the_allowlist_is_never_probed(project, watched):
    validation = passed(project, watched, "b1")
    with pytest.raises(ServiceError, match=r"deploymentUrl refused: host 'evil\.example' is not in"):
        watch_start(validation=validation, actor=CI, source="ci", deployment_url="https://evil.example")
    assert not Watch.objects.exists()


def test_a_blocked_deployment_is_not_watched(project, watched):
    validation = passed(project, watched, "b1")
    validation_block(validation=validation, reason="slow", actor=Actor("user", "olivia-ops"))
    with pytest.raises(InvalidState):
        start(validation)


def test_starting_twice_gives_the_same_watch_and_a_newer_deployment_supersedes_the_older(project, watched):
    first = start(passed(project, watched, "b1"))
    assert start(first.validation).pk == first.pk
    second = start(passed(project, watched, "b2"))
    first.refresh_from_db()
    assert first.state == Watch.State.STOPPED and "Superseded" in first.state_reason
    assert second.state == Watch.State.WAITING
    assert second.policy["failureLimit"] == 2 and second.policy["consecutive"] is True
    assert AuditEvent.objects.filter(action="watch.started").count() == 2


def test_more_failures_in_a_row_than_the_limit_degrade_and_roll_back(project, watched):
    passed_before = passed(project, watched, "b0", deployment_id="dpl_0")
    start(passed_before)
    watch = start(passed(project, watched, "b1", deployment_id="dpl_1"))
    for outcome in ("failure", "failure"):
        watch = probe(watch, outcome)
    assert watch.state == Watch.State.WATCHING and watch.consecutive_failures == 2
    watch = probe(watch, "failure")
    assert watch.state == Watch.State.DEGRADED
    assert "3 failed probes in a row (failureLimit 2)" in watch.state_reason
    rollback = watch.rollback
    assert rollback.target_validation == passed_before
    assert rollback.trigger == Rollback.Trigger.WATCH
    # autoRollback: approved and announced; the test project has no Vercel or GitHub connection,
    # so no integration takes it and it fails at once, loudly.
    assert rollback.state == Rollback.State.FAILED
    assert "No integration can carry this rollback out" in rollback.detail
    assert Notice.objects.filter(watch=watch, kind="rollback_failed", level="error").exists()


def test_a_success_between_failures_breaks_the_row_when_consecutive(project, watched):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for outcome in ("failure", "failure", "success", "failure", "failure"):
        watch = probe(watch, outcome)
    assert watch.state == Watch.State.WATCHING
    assert watch.failures == 4 and watch.consecutive_failures == 2
    assert not Rollback.objects.exists()


def test_without_consecutive_every_failure_counts(project, watched):
    watched.watch_consecutive = False
    watched.save()
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for outcome in ("failure", "success", "failure", "success", "failure"):
        watch = probe(watch, outcome)
    assert watch.state == Watch.State.DEGRADED
    assert "3 failed probes (failureLimit 2)" in watch.state_reason


def test_an_error_is_never_a_failure_and_never_rolls_back(project, watched):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    watch = probe(watch, "error")
    assert watch.state == Watch.State.WATCHING and watch.failures == 0
    assert Notice.objects.filter(watch=watch, kind="probe_error").count() == 1
    watch = probe(watch, "error")
    watch = probe(watch, "error")
    assert watch.state == Watch.State.ERRORED
    assert "3 probes in a row could not run (consecutiveErrorLimit 2)" in watch.state_reason
    assert not Rollback.objects.exists()
    assert Notice.objects.filter(watch=watch, kind="watch_errored", level="error").exists()


def test_an_error_does_not_hide_a_row_of_failures(project, watched):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for outcome in ("failure", "error", "failure", "failure"):
        watch = probe(watch, outcome)
    assert watch.state == Watch.State.DEGRADED and watch.errors == 1


def test_too_many_inconclusive_probes_ask_a_person_and_do_not_roll_back(project, watched):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    watch = probe(watch, "inconclusive")
    assert watch.state == Watch.State.WATCHING
    watch = probe(watch, "inconclusive")
    assert watch.state == Watch.State.INCONCLUSIVE
    assert not Rollback.objects.exists()
    assert Notice.objects.filter(watch=watch, kind="watch_inconclusive").exists()


def test_no_earlier_passed_deployment_refuses_the_rollback_loudly(project, watched):
    watch = start(passed(project, watched, "b1"))
    for _ in range(3):
        watch = probe(watch, "failure")
    rollback = watch.rollback
    assert rollback.state == Rollback.State.REFUSED and rollback.target_validation is None
    assert "nothing safe to roll back to" in rollback.detail
    assert Notice.objects.filter(kind="rollback_refused", level="error").exists()
    assert AuditEvent.objects.filter(action="rollback.refused").exists()


def test_the_target_is_never_a_blocked_bypassed_or_unwatched_deployment(project, watched):
    good = passed(project, watched, "b0")
    start(good)
    blocked = passed(project, watched, "b1")
    start(blocked)
    validation_block(validation=blocked, reason="bad", actor=Actor("user", "olivia-ops"))
    passed(project, watched, "b2")  # passed but never served production (no watch)
    watch = start(passed(project, watched, "b3"))
    rollback = rollback_decide(watch=watch, trigger="watch", reason="test", actor=Actor("system", "t"))
    assert rollback.target_validation == good


def test_a_dry_run_records_what_it_would_have_done(project, watched):
    watched.watch_dry_run = True
    watched.save()
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for _ in range(3):
        watch = probe(watch, "failure")
    assert watch.rollback.state == Rollback.State.DRY_RUN and watch.would_roll_back


def test_a_proposed_rollback_waits_for_someone_with_trigger_rollback(project, watched, ops, second_ops):
    watched.auto_rollback = False
    watched.save()
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for _ in range(3):
        watch = probe(watch, "failure")
    rollback = watch.rollback
    assert rollback.state == Rollback.State.PROPOSED
    nobody = get_user_model().objects.create_user("nobody")
    with pytest.raises(NotPermitted):
        rollback_approve(rollback=rollback, actor=Actor.for_user(nobody))
    assign_perm("trigger_rollback", ops, project)
    rollback = rollback_approve(rollback=rollback, actor=Actor.for_user(ops))
    assert rollback.decided_by == f"user:{ops.username}"
    assert rollback.state == Rollback.State.FAILED  # approved, but no integration in this test can do it
    with pytest.raises(InvalidState):
        rollback_reject(rollback=rollback, actor=Actor.for_user(ops), reason="too late")


def test_rejecting_a_proposed_rollback_needs_a_reason_and_keeps_the_deployment(project, watched, ops):
    watched.auto_rollback = False
    watched.save()
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    for _ in range(3):
        watch = probe(watch, "failure")
    assign_perm("trigger_rollback", ops, project)
    with pytest.raises(ServiceError):
        rollback_reject(rollback=watch.rollback, actor=Actor.for_user(ops), reason=" ")
    rollback = rollback_reject(rollback=watch.rollback, actor=Actor.for_user(ops), reason="known spike")
    assert rollback.state == Rollback.State.REJECTED and "known spike" in rollback.detail


def test_repeated_alerts_decide_one_rollback(project, watched, django_capture_on_commit_callbacks):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    with (
        mock.patch("gates.services.watches.async_task") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert watch_alerted(watch=watch, actor=Actor("token", "am"), alert={"alertname": "HighLatency"})
        watch = probe(watch, "failure", trigger=Probe.Trigger.ALERT)
        assert watch.state == Watch.State.DEGRADED
        first = watch.rollback
        assert first.trigger == Rollback.Trigger.ALERT
        assert not watch_alerted(watch=watch, actor=Actor("token", "am"), alert={"alertname": "HighLatency"})
        probe(watch, "failure", trigger=Probe.Trigger.ALERT)
    assert queued.call_count == 1
    assert Rollback.objects.count() == 1 and Rollback.objects.get().pk == first.pk


def test_an_alert_a_probe_does_not_confirm_is_told_and_not_rolled_back(project, watched):
    start(passed(project, watched, "b0"))
    watch = start(passed(project, watched, "b1"))
    watch = probe(watch, "success", trigger=Probe.Trigger.ALERT)
    assert watch.state == Watch.State.WATCHING and not Rollback.objects.exists()
    assert Notice.objects.filter(kind="alert_unconfirmed").exists()


def test_the_probe_baseline_is_the_previous_healthy_watch_s_probes(project, watched):
    first = start(passed(project, watched, "b0"))
    for value in (100.0, 104.0, 98.0):
        first = probe(first, "success", value)
    probe(first, "error")
    watch_conclude(watch=first)
    second = start(passed(project, watched, "b1"))
    assert second.baseline == {P95: [100.0, 104.0, 98.0]}
    assert "3 probes of build b0" in second.baseline_source
    assert second.baseline_url == ""


def test_without_a_healthy_watch_the_previous_deployment_is_probed_for_a_baseline(project, watched):
    project.allowed_hosts = [*project.allowed_hosts, "127.0.0.1:8002"]
    project.save(update_fields=["allowed_hosts"])
    first = start(passed(project, watched, "b0"))
    second = watch_start(
        validation=passed(project, watched, "b1"),
        actor=Actor("token", "ci"),
        source="ci",
        deployment_url="http://127.0.0.1:8002",
    )
    assert second.baseline == {} and second.baseline_url == first.target_url
    second = probe(second, "success", 90.0, trigger=Probe.Trigger.BASELINE)
    assert second.baseline == {P95: [90.0]} and second.probes_run == 0
