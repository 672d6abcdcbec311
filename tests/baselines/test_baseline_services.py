"""Baselines: a window of the recent runs that passed or warned (never a blocked, failed,
bypassed, cancelled or errored one), centred on their median; a new version each time; pinning."""

import pytest
from django.test import override_settings
from guardian.shortcuts import assign_perm

from baselines.models import Baseline
from baselines.selectors import baseline_active
from baselines.services import baseline_pin, baseline_promote, baseline_unpin
from gates.audit import Actor
from gates.errors import InvalidState
from gates.models import AuditEvent, Environment, Run, Validation
from gates.services import (
    bypass_approve,
    bypass_request,
    validation_block,
    validation_cancel,
    validation_evaluate,
)
from tests.factories import make_results, make_validation


@pytest.fixture
def manual_staging(staging):
    staging.auto_baseline = False
    staging.save(update_fields=["auto_baseline"])
    return staging


def evaluate(project, environment, actor, p95, build):
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build, git_hash="b" * 40, actor=actor
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)


def p95_of(baseline):
    return baseline.metrics.get(series="http_req_duration", aggregation="p(95)")


def test_a_blocked_validation_cannot_become_a_baseline(project, manual_staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<100")
    blocked = evaluate(project, manual_staging, actor, 300.0, "slow")
    with pytest.raises(InvalidState) as error:
        baseline_promote(validation=blocked, actor=actor)
    assert "blocked" in str(error.value)
    assert not Baseline.objects.exists()


def test_each_promotion_makes_a_new_version_with_the_statistics_of_its_runs(
    project, manual_staging, actor, scenario
):
    first = baseline_promote(validation=evaluate(project, manual_staging, actor, 200.0, "b1"), actor=actor)
    second = baseline_promote(validation=evaluate(project, manual_staging, actor, 220.0, "b2"), actor=actor)

    assert (first.version, second.version) == (1, 2)
    assert baseline_active(project, manual_staging, scenario) == second
    p95 = p95_of(second)
    assert p95.run_values == [200.0, 220.0]
    assert p95.value == pytest.approx(210.0) and p95.minimum == 200.0 and p95.maximum == 220.0
    assert p95.stdev == pytest.approx(14.1421356)
    assert p95.noise is None  # two runs make no noise model
    event = AuditEvent.objects.filter(action="baseline.promoted").latest("id")
    assert event.data["version"] == 2 and event.data["previous_version"] == 1


def test_the_baseline_value_is_the_median_of_its_runs_not_their_mean(project, staging, actor):
    for i, p95 in enumerate([100.0, 400.0, 110.0, 105.0, 900.0]):
        evaluate(project, staging, actor, p95, f"b{i}")

    p95 = p95_of(Baseline.objects.latest("version"))
    assert p95.value == pytest.approx(110.0)  # the mean, 323, would follow the two wild runs
    assert p95.noise is not None and p95.noise > 0
    assert (p95.minimum, p95.maximum) == (100.0, 900.0)


def test_run_values_are_stored_oldest_run_first(project, staging, actor):
    for i, p95 in enumerate([300.0, 100.0, 200.0, 150.0]):
        evaluate(project, staging, actor, p95, f"b{i}")

    latest = Baseline.objects.latest("version")
    assert p95_of(latest).run_values == [300.0, 100.0, 200.0, 150.0]
    runs = list(Run.objects.filter(baselines=latest).order_by("created_at").values_list("pk", flat=True))
    assert AuditEvent.objects.filter(action="baseline.promoted").latest("id").data["runs"] == runs


@override_settings(PERFGATE_BASELINE_WINDOW=3)
def test_the_window_keeps_only_the_most_recent_eligible_runs(project, staging, actor):
    for i, p95 in enumerate([100.0, 200.0, 300.0, 400.0, 500.0]):
        evaluate(project, staging, actor, p95, f"b{i}")

    latest = Baseline.objects.latest("version")
    assert latest.version == 5
    assert p95_of(latest).run_values == [300.0, 400.0, 500.0]
    assert latest.runs.count() == 3


def test_the_window_is_thirty_runs_by_default(settings):
    assert settings.PERFGATE_BASELINE_WINDOW == 30


def test_a_warned_validation_becomes_the_baseline_automatically(project, staging, actor, add_rule, scenario):
    add_rule("http_req_duration", threshold="p(95)<150", severity="info")
    fast = evaluate(project, staging, actor, 140.0, "fast")
    slow = evaluate(project, staging, actor, 160.0, "slow")

    assert (fast.status, fast.verdict) == ("passed", "pass")
    assert (slow.status, slow.verdict) == ("passed", "warn")
    active = baseline_active(project, staging, scenario)
    assert active.source_validation == slow and active.version == 2
    assert p95_of(active).run_values == [140.0, 160.0]
    assert AuditEvent.objects.filter(action="baseline.promoted", actor="system:perfgate").count() == 2


def test_an_info_check_in_error_does_not_stop_automatic_promotion(
    project, staging, actor, add_rule, scenario
):
    add_rule("http_req_duration{name:photos}", threshold="p(95)<500", severity="info")
    validation = evaluate(project, staging, actor, 200.0, "b1")

    assert validation.checks.get(kind="absolute").verdict == "error"
    assert (validation.status, validation.verdict) == ("passed", "warn")
    active = baseline_active(project, staging, scenario)
    assert active is not None and active.source_validation == validation
    assert p95_of(active).run_values == [200.0]
    assert not active.metrics.filter(series__contains="photos").exists()


def test_blocked_and_errored_validations_are_never_promoted_automatically(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    blocked = evaluate(project, staging, actor, 450.0, "blocked")
    add_rule("http_req_duration{name:photos}", threshold="p(95)<500")
    errored = evaluate(project, staging, actor, 200.0, "errored")

    assert (blocked.status, blocked.verdict) == ("blocked", "fail")
    assert (errored.status, errored.verdict) == ("failed", "error")
    assert not Baseline.objects.exists()


def test_a_shadow_mode_fail_passes_but_is_never_promoted(project, staging, actor, add_rule):
    staging.mode = Environment.Mode.SHADOW
    staging.save(update_fields=["mode"])
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, 450.0, "would-block")

    assert (validation.status, validation.verdict, validation.would_block) == ("passed", "fail", True)
    assert not Baseline.objects.exists()


def test_a_cancelled_validation_is_never_promoted(project, staging, actor):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b1", git_hash="b" * 40, actor=actor
    )
    cancelled = validation_cancel(validation=validation, reason="wrong build", actor=actor)

    assert cancelled.verdict == "error" and cancelled.status != "passed"
    assert not Baseline.objects.exists()


def test_runs_of_blocked_bypassed_cancelled_or_errored_validations_never_stay_in_the_window(
    project, staging, actor, add_rule, ops
):
    """Each run enters while its validation passed; then the validation ends otherwise (blocked by
    hand, bypassed, ended as an error as a cancel or a crash does), and the next version drops it."""
    evaluate(project, staging, actor, 100.0, "kept")
    hand_blocked = evaluate(project, staging, actor, 110.0, "hand-blocked")
    bypassed = evaluate(project, staging, actor, 120.0, "bypassed")
    errored = evaluate(project, staging, actor, 130.0, "errored")
    assert p95_of(Baseline.objects.latest("version")).run_values == [100.0, 110.0, 120.0, 130.0]

    validation_block(validation=hand_blocked, reason="leaks memory", actor=actor)
    validation_block(validation=bypassed, reason="needs a look", actor=actor)
    assign_perm("gates.approve_bypass", ops, project)
    bypass = bypass_request(
        validation=bypassed, justification="Known and accepted for the launch.", actor=Actor("user", "dev")
    )
    bypass_approve(bypass=bypass, approver=ops)
    # A crash or a cancel ends a validation as an error; the service refuses one already decided.
    Validation.objects.filter(pk=errored.pk).update(status=Validation.Status.FAILED, verdict="error")
    assert set(Validation.objects.values_list("build_id", "status")) == {
        ("kept", "passed"),
        ("hand-blocked", "blocked"),
        ("bypassed", "bypassed"),
        ("errored", "failed"),
    }

    evaluate(project, staging, actor, 140.0, "next")
    assert p95_of(Baseline.objects.latest("version")).run_values == [100.0, 140.0]


@override_settings(PERFGATE_BASELINE_WINDOW=2)
def test_a_version_keeps_only_the_most_recent_runs(project, manual_staging, actor):
    for i, p95 in enumerate([100.0, 200.0, 300.0]):
        latest = baseline_promote(
            validation=evaluate(project, manual_staging, actor, p95, f"b{i}"), actor=actor
        )
    assert p95_of(latest).run_values == [200.0, 300.0]


def test_a_pinned_version_stays_active_until_unpinned(project, manual_staging, actor, scenario):
    pinned = baseline_promote(
        validation=evaluate(project, manual_staging, actor, 200.0, "b1"), actor=actor, pin=True
    )
    newer = baseline_promote(validation=evaluate(project, manual_staging, actor, 210.0, "b2"), actor=actor)
    assert baseline_active(project, manual_staging, scenario) == pinned

    baseline_unpin(baseline=pinned, actor=actor)
    assert baseline_active(project, manual_staging, scenario) == newer
    baseline_pin(baseline=newer, actor=actor)
    assert Baseline.objects.filter(pinned=True).get() == newer
    assert AuditEvent.objects.filter(action__in=["baseline.pinned", "baseline.unpinned"]).count() == 2


def test_runs_of_a_build_blocked_later_leave_the_next_version(project, manual_staging, actor):
    good = evaluate(project, manual_staging, actor, 200.0, "b1")
    baseline_promote(validation=good, actor=actor)
    validation_block(validation=good, reason="leaks memory", actor=actor)
    latest = baseline_promote(validation=evaluate(project, manual_staging, actor, 250.0, "b2"), actor=actor)
    assert p95_of(latest).run_values == [250.0]
