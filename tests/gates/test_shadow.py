"""Shadow figures: per rule, how often it would have blocked over an environment's last
validations, so ops can tune a rule before enforcing it."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.urls import reverse

from gates.models import CheckResult, Environment, Validation
from gates.selectors import shadow_figures
from gates.services import validation_evaluate
from tests.factories import make_results, make_validation

T0 = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def decided(environment, checks, *, minute, status="passed"):
    """A finished validation with these (label, severity, verdict) checks, created at T0 + minute."""
    validation = Validation.objects.create(
        project=environment.project,
        environment=environment,
        scenario=environment.project.scenarios.get(name="guest-list"),
        build_id=f"build-{minute}",
        git_hash="f" * 40,
        status=status,
        verdict="warn",
    )
    Validation.objects.filter(pk=validation.pk).update(created_at=T0 + timedelta(minutes=minute))
    CheckResult.objects.bulk_create(
        CheckResult(
            validation=validation,
            position=position,
            label=label,
            kind="absolute",
            severity=severity,
            verdict=verdict,
            reason="",
        )
        for position, (label, severity, verdict) in enumerate(checks)
    )
    return validation


def figures_by_label(environment, **kwargs):
    return {figure.label: figure for figure in shadow_figures(environment, **kwargs)}


def test_a_key_rule_would_have_blocked_on_the_verdicts_the_policy_blocks(project, staging, production):
    for environment in (staging, production):
        for minute, verdict in enumerate(["fail", "error", "inconclusive", "pass", "warn"]):
            decided(environment, [("p95 < 400", "key", verdict)], minute=minute)

    open_figure = figures_by_label(staging)["p95 < 400"]
    closed_figure = figures_by_label(production)["p95 < 400"]
    assert (open_figure.hits, open_figure.checked) == (1, 5)  # fail-open: only the fail
    assert (closed_figure.hits, closed_figure.checked) == (3, 5)  # fail-closed: error, inconclusive too
    assert open_figure.last_hit == T0 and closed_figure.last_hit == T0 + timedelta(minutes=2)
    assert open_figure.would_block and open_figure.scenario == "guest-list"


def test_an_info_rule_counts_how_often_it_failed(staging):
    for minute, verdict in enumerate(["fail", "error", "fail", "pass"]):
        decided(staging, [("errors < 1%", "info", verdict)], minute=minute)

    figure = figures_by_label(staging)["errors < 1%"]
    assert (figure.hits, figure.checked, figure.would_block) == (2, 4, False)
    assert figure.last_hit == T0 + timedelta(minutes=2)


@override_settings(PERFGATE_SHADOW_WINDOW=3)
def test_only_the_last_finished_validations_count(staging):
    for minute, verdict in enumerate(["fail", "fail", "pass", "fail", "pass"]):
        decided(staging, [("p95 < 400", "key", verdict)], minute=minute)
    decided(staging, [("p95 < 400", "key", "fail")], minute=9, status="running")

    figure = figures_by_label(staging)["p95 < 400"]
    assert (figure.hits, figure.checked) == (1, 3)
    assert figures_by_label(staging, last=5)["p95 < 400"].hits == 3


def test_the_figures_are_one_query(staging, django_assert_num_queries):
    for minute in range(30):
        decided(staging, [("a", "key", "fail"), ("b", "info", "pass")], minute=minute)
    with django_assert_num_queries(1):
        figures = shadow_figures(staging)
    assert [(f.label, f.hits, f.checked) for f in figures] == [("a", 20, 20), ("b", 0, 20)]


@pytest.fixture
def admin_client_logged_in(client, admin_user):
    client.force_login(admin_user)
    return client


def test_the_environment_page_shows_how_often_each_rule_would_have_blocked(
    admin_client_logged_in, project, staging, actor, add_rule
):
    staging.mode = Environment.Mode.SHADOW
    staging.save(update_fields=["mode"])
    add_rule("http_req_duration", threshold="p(95)<400")
    for build, p95 in (("b-1", 300.0), ("b-2", 450.0), ("b-3", 500.0)):
        validation, _ = make_validation(
            project=project, environment=staging, build_id=build, git_hash="a" * 40, actor=actor
        )
        validation = validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)
        assert validation.deployment_allowed and validation.would_block == (p95 > 400)

    page = admin_client_logged_in.get(reverse("admin:gates_environment_change", args=[staging.pk]))
    text = page.content.decode()
    assert page.status_code == 200
    assert "Shadow figures" in text
    assert "http_req_duration: p(95)&lt;400" in text and "would have blocked 2 of 3" in text


def test_the_environment_page_says_when_nothing_was_decided_yet(admin_client_logged_in, staging):
    text = admin_client_logged_in.get(reverse("admin:gates_environment_change", args=[staging.pk])).content
    assert "No finished validation yet." in text.decode()


def test_an_auditor_sees_the_figures_and_cannot_change_the_environment(auditor_client, staging):
    decided(staging, [("p95 < 400", "key", "fail")], minute=0)
    url = reverse("admin:gates_environment_change", args=[staging.pk])
    text = auditor_client.get(url).content.decode()
    assert "would have blocked 1 of 1" in text and 'name="_save"' not in text
