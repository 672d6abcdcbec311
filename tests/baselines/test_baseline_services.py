"""Baselines: only passed, non-bypassed runs; a new version each time; pinning."""

import pytest
from django.test import override_settings

from baselines.models import Baseline
from baselines.selectors import baseline_active
from baselines.services import baseline_pin, baseline_promote, baseline_unpin
from gates.errors import InvalidState
from gates.models import AuditEvent
from gates.services import validation_block, validation_evaluate
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
    p95 = second.metrics.get(series="http_req_duration", aggregation="p(95)")
    assert sorted(p95.run_values) == [200.0, 220.0]
    assert p95.value == pytest.approx(210.0) and p95.minimum == 200.0 and p95.maximum == 220.0
    assert p95.stdev == pytest.approx(14.1421356)
    event = AuditEvent.objects.filter(action="baseline.promoted").latest("id")
    assert event.data["version"] == 2 and event.data["previous_version"] == 1


@override_settings(PERFGATE_BASELINE_WINDOW=2)
def test_a_version_keeps_only_the_most_recent_runs(project, manual_staging, actor):
    for i, p95 in enumerate([100.0, 200.0, 300.0]):
        latest = baseline_promote(
            validation=evaluate(project, manual_staging, actor, p95, f"b{i}"), actor=actor
        )
    values = latest.metrics.get(series="http_req_duration", aggregation="p(95)").run_values
    assert sorted(values) == [200.0, 300.0]


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
    assert latest.metrics.get(series="http_req_duration", aggregation="p(95)").run_values == [250.0]
