"""validation_evaluate and friends: every verdict path through the policy of an environment."""

import pytest

from gates.errors import InvalidState, ServiceError
from gates.models import AuditEvent, CheckResult, Environment, MetricObservation, Run, Validation
from gates.results.base import TREND, Series
from gates.services import validation_block, validation_evaluate, validation_request
from tests.factories import make_results, make_validation


def evaluate(project, environment, actor, results, build="b-1", test_config=None):
    validation, created = make_validation(
        project=project,
        environment=environment,
        build_id=build,
        git_hash="a" * 40,
        actor=actor,
        test_config=test_config,
        staging_pass=environment.require_staging_pass,
    )
    assert created
    return validation_evaluate(validation=validation, results=results, actor=actor)


def test_passing_results_pass_and_allow_the_deployment(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=210.0))

    assert (validation.status, validation.verdict, validation.deployment_allowed) == ("passed", "pass", True)
    assert validation.would_block is False
    checks = list(validation.checks.order_by("position"))
    assert [c.kind for c in checks] == ["load", "absolute"]
    assert checks[1].observed == 210.0 and checks[1].limit == 400.0 and checks[1].verdict == "pass"
    assert checks[1].reason
    event = AuditEvent.objects.get(action="validation.evaluated")
    assert event.data["verdict"] == "pass" and event.data["deployment_allowed"] is True
    assert [c["verdict"] for c in event.data["checks"]] == ["pass", "pass"]
    assert event.actor == "user:olivia-ops"


def test_every_observation_of_the_run_is_stored_for_history(project, staging, actor):
    validation = evaluate(project, staging, actor, make_results(p95=210.0))
    run = Run.objects.get(validation=validation)
    stored = dict(
        MetricObservation.objects.filter(run=run, series="http_req_duration").values_list(
            "aggregation", "value"
        )
    )
    assert stored["p(95)"] == 210.0 and stored["count"] == 1000.0
    assert run.request_count == 1000


def test_a_failing_key_rule_blocks_with_its_reason(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=441.0))

    assert (validation.status, validation.verdict, validation.deployment_allowed) == (
        "blocked",
        "fail",
        False,
    )
    assert validation.would_block is True
    assert len(validation.blocking_reasons) == 1
    assert "441" in validation.blocking_reasons[0] and "http_req_duration" in validation.blocking_reasons[0]


def test_a_failing_info_rule_only_warns(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400", severity="info")
    validation = evaluate(project, staging, actor, make_results(p95=441.0))
    assert (validation.status, validation.verdict, validation.deployment_allowed) == ("passed", "warn", True)
    assert validation.blocking_reasons == []


def test_a_missing_metric_is_an_error_that_fail_open_lets_through_loudly(project, staging, actor, add_rule):
    add_rule("http_req_duration{name:rsvp}", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results())

    assert (validation.status, validation.verdict, validation.deployment_allowed) == ("failed", "error", True)
    check = validation.checks.get(kind="absolute")
    assert check.verdict == "error" and "rsvp" in check.reason


def test_a_missing_metric_blocks_a_fail_closed_environment(project, production, actor, add_rule):
    # The rule applies to staging too, so no staging pass could exist: production's own
    # fail-closed policy is what this is about.
    production.require_staging_pass = False
    production.save(update_fields=["require_staging_pass"])
    add_rule("http_req_duration{name:rsvp}", threshold="p(95)<400")
    validation = evaluate(project, production, actor, make_results())
    assert (validation.status, validation.verdict, validation.deployment_allowed) == (
        "blocked",
        "error",
        False,
    )
    assert any("rsvp" in reason for reason in validation.blocking_reasons)


def test_a_series_with_zero_samples_is_never_a_pass(project, staging, actor, add_rule):
    add_rule("http_req_duration{name:rsvp}", threshold="p(95)<400")
    empty = Series("http_req_duration", TREND, "ms", (("name", "rsvp"),), 0, {"p(95)": 0.0, "count": 0.0})
    validation = evaluate(project, staging, actor, make_results(extra=[empty]))
    assert validation.checks.get(kind="absolute").verdict == "error"
    assert validation.verdict == "error"


def test_fewer_requests_than_the_scenario_minimum_is_insufficient_load(project, production, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, production, actor, make_results(p95=100.0, requests=42))

    load = validation.checks.get(kind="load")
    assert load.verdict == "error" and "insufficient load" in load.reason and "42" in load.reason
    assert (validation.status, validation.verdict) == ("blocked", "error")


def test_insufficient_load_blocks_even_a_fail_open_environment(project, staging, actor, add_rule):
    # A fail-open environment lets perfgate's own errors through, never a test that measured too
    # little: that would let CI skip the gate by asking for next to no load.
    assert not staging.fail_closed
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=100.0, requests=3))

    assert validation.checks.get(kind="load").verdict == "error"
    assert (validation.status, validation.verdict, validation.deployment_allowed) == (
        "blocked",
        "error",
        False,
    )
    assert validation.would_block is True
    assert any("insufficient load" in reason for reason in validation.blocking_reasons)
    assert "insufficient load" in validation.status_reason


def test_a_run_that_made_no_requests_blocks_a_fail_open_environment(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=100.0, requests=0))
    assert (validation.status, validation.deployment_allowed) == ("blocked", False)


def test_insufficient_load_in_shadow_mode_says_enforcement_would_block(project, staging, actor, add_rule):
    staging.mode = Environment.Mode.SHADOW
    staging.save(update_fields=["mode"])
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=100.0, requests=3))
    assert (validation.status, validation.deployment_allowed, validation.would_block) == (
        "failed",
        True,
        True,
    )
    assert validation.status_reason.startswith("Shadow mode: enforcement would have blocked")


def test_shadow_mode_never_blocks_but_says_what_enforcement_would_do(project, production, actor, add_rule):
    production.mode = Environment.Mode.SHADOW
    production.save(update_fields=["mode"])
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, production, actor, make_results(p95=900.0))

    assert validation.verdict == "fail"
    assert validation.deployment_allowed is True and validation.status == "passed"
    assert validation.would_block is True
    assert "would have blocked" in validation.status_reason


def test_a_relative_rule_without_a_baseline_warns_and_absolute_rules_still_decide(
    project, staging, actor, add_rule
):
    staging.auto_baseline = False
    staging.save(update_fields=["auto_baseline"])
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(project, staging, actor, make_results(p95=210.0))
    relative = validation.checks.get(kind="relative")
    assert relative.verdict == "no_baseline" and relative.baseline_value is None
    assert (validation.status, validation.verdict) == ("passed", "warn")

    blocked = evaluate(project, staging, actor, make_results(p95=450.0), build="b-2")
    assert blocked.checks.get(kind="relative").verdict == "no_baseline"
    assert (blocked.status, blocked.verdict) == ("blocked", "fail")


def test_a_relative_rule_blocks_a_slowdown_against_the_passing_builds_baseline(
    project, staging, actor, add_rule
):
    from baselines.selectors import baseline_active

    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    add_rule("http_req_duration", threshold="p(95)<1000")
    first = evaluate(project, staging, actor, make_results(p95=200.0))
    assert first.verdict == "warn"  # no baseline yet
    baseline = baseline_active(project, staging, project.scenarios.get())
    assert baseline.source_validation == first  # the first good build seeds the baseline

    slow = evaluate(project, staging, actor, make_results(p95=300.0), build="b-2")
    check = slow.checks.get(kind="relative")
    assert check.verdict == "fail"
    assert check.baseline_value == 200.0 and check.observed == 300.0
    assert check.change_pct == pytest.approx(50.0)
    assert check.limit == pytest.approx(220.0)
    assert (slow.status, slow.deployment_allowed) == ("blocked", False)
    assert slow.baseline_id == baseline.pk

    steady = evaluate(project, staging, actor, make_results(p95=203.0), build="b-3")
    assert steady.checks.get(kind="relative").verdict == "pass"


def test_a_passing_build_becomes_the_baseline_automatically(project, staging, actor, add_rule):
    from baselines.selectors import baseline_active

    add_rule("http_req_duration", threshold="p(95)<400")
    evaluate(project, staging, actor, make_results(p95=200.0))
    baseline = baseline_active(project, staging, project.scenarios.get())
    assert baseline is not None and baseline.version == 1
    assert AuditEvent.objects.filter(action="baseline.promoted", actor="system:perfgate").count() == 1


def test_a_build_that_only_warns_is_promoted_automatically_too(project, staging, actor, add_rule):
    """Leaving warned runs out would pull the baseline towards the fastest runs."""
    from baselines.models import Baseline

    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    evaluate(project, staging, actor, make_results(p95=200.0))
    drifting = evaluate(project, staging, actor, make_results(p95=214.0), build="b-2")

    assert drifting.checks.get(kind="relative").verdict == "warn"
    assert drifting.status == "passed"
    assert Baseline.objects.count() == 2
    assert drifting.runs.get().baselines.exists()


def noisy_baseline(project, environment, actor, values):
    for i, p95 in enumerate(values):
        validation = evaluate(project, environment, actor, make_results(p95=p95), build=f"base-{i}")
        assert validation.verdict == "pass"


@pytest.mark.parametrize("environment_name", ["staging", "production"])
def test_a_large_change_within_the_noise_of_the_baseline_runs_warns_and_blocks_nowhere(
    project, actor, add_rule, environment_name
):
    environment = project.environments.get(name=environment_name)
    noisy_baseline(project, environment, actor, [200.0, 260.0, 180.0, 240.0])
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)

    validation = evaluate(project, environment, actor, make_results(p95=250.0), build="candidate")
    check = validation.checks.get(kind="relative")
    assert check.verdict == "warn"
    assert "within the run-to-run noise" in check.reason
    assert check.p_value is not None and check.p_value > 0.05
    assert validation.verdict == "warn"
    assert validation.status == "passed"  # fail-closed production too: warn is not a block


def test_a_large_change_outside_the_noise_of_the_baseline_runs_fails(project, staging, actor, add_rule):
    noisy_baseline(project, staging, actor, [200.0, 202.0, 199.0, 201.0])
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)

    validation = evaluate(project, staging, actor, make_results(p95=250.0), build="candidate")
    check = validation.checks.get(kind="relative")
    assert check.verdict == "fail" and check.p_value < 0.05
    assert validation.status == "blocked"


def test_thresholds_in_the_request_can_only_tighten(project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = evaluate(
        project,
        staging,
        actor,
        make_results(p95=200.0),
        test_config={"thresholds": {"http_req_duration": ["p(95)<150"]}},
    )
    verdicts = {c.label: c.verdict for c in validation.checks.all()}
    assert verdicts["http_req_duration: p(95)<400"] == "pass"
    assert [v for label, v in verdicts.items() if "(request)" in label] == ["fail"]
    assert validation.status == "blocked"


def test_a_bad_threshold_in_the_request_is_refused_before_anything_is_written(project, staging, actor):
    with pytest.raises(ServiceError) as error:
        make_validation(
            project=project,
            environment=staging,
            build_id="b-1",
            git_hash="a" * 40,
            actor=actor,
            test_config={"thresholds": {"http_req_duration": ["p(101)<150"]}},
        )
    assert "testConfig.thresholds" in error.value.fields
    assert not Validation.objects.exists() and not AuditEvent.objects.exists()


def test_repeating_a_build_returns_the_same_validation(project, staging, actor):
    first, created = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=actor
    )
    again, created_again = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=actor
    )
    assert created and not created_again and first.pk == again.pk
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1


def test_a_finished_validation_is_never_evaluated_again(project, staging, actor):
    validation = evaluate(project, staging, actor, make_results())
    with pytest.raises(InvalidState):
        validation_evaluate(validation=validation, results=make_results(p95=5000.0), actor=actor)
    assert CheckResult.objects.filter(validation=validation).count() == 1


def test_ops_can_block_a_passed_build_by_hand_with_a_reason(project, staging, actor):
    validation = evaluate(project, staging, actor, make_results())
    blocked = validation_block(validation=validation, reason="memory leak seen in canary", actor=actor)

    assert (blocked.status, blocked.deployment_allowed, blocked.verdict) == ("blocked", False, "pass")
    assert "memory leak" in blocked.status_reason
    event = AuditEvent.objects.get(action="validation.blocked")
    assert event.reason == "memory leak seen in canary" and event.data["previous_status"] == "passed"


def test_blocking_by_hand_needs_a_reason(project, staging, actor):
    validation = evaluate(project, staging, actor, make_results())
    with pytest.raises(ServiceError):
        validation_block(validation=validation, reason="  ", actor=actor)
    validation.refresh_from_db()
    assert validation.status == "passed"


def test_unreadable_results_leave_nothing_behind(project, staging, actor, tmp_path):
    bad = tmp_path / "summary.json"
    bad.write_text('{"metrics": {"http_reqs": {"count": "many"}}}')
    with pytest.raises(ServiceError) as error:
        validation_request(
            project=project, environment=staging, build_id="b-1", git_hash="a" * 40, results=bad, actor=actor
        )
    assert "summary.json" in error.value.detail
    assert not Validation.objects.exists() and not AuditEvent.objects.exists() and not Run.objects.exists()
