"""The blind gate is loud: when the key relative rules have had no baseline for more than
PERFGATE_BLIND_AFTER validations in a row, every check table, the GitHub summary and the admin say
that relative rules are not active, and since when."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from django.test import override_settings
from django.urls import reverse
from perfgate_cli import cli

from baselines.selectors import baseline_active, blind_notice, blind_now, blind_since
from gates.models import CheckResult, Validation
from gates.report import check_table, markdown_table
from gates.services import validation_request
from tests.gates.conftest import RESULTS_FIXTURES

LOCUST_STATS = RESULTS_FIXTURES / "locust_stats.csv"
NOTICE = "relative rules are not active: no baseline since 2026-11-02 14:03 UTC"
CHECKS = [
    {
        "rule": "http_req_duration p(95) relative",
        "kind": "relative",
        "severity": "key",
        "verdict": "no_baseline",
        "observed": 13.0,
        "baseline": None,
        "changePct": None,
        "limit": None,
        "reason": "no baseline yet",
    }
]
T0 = datetime(2026, 11, 2, 14, 3, 27, tzinfo=UTC)


@pytest.fixture
def blind_rules(project, scenario, add_rule):
    """A key relative rule, and an info rule on a tag the uploaded results never emit."""
    scenario.min_requests = 50  # the Locust sample made 99 requests
    scenario.save(update_fields=["min_requests"])
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=1)
    add_rule("http_req_duration{name:photos}", threshold="p(95)<500", severity="info")


def upload(project, environment, actor, build):
    validation, created = validation_request(
        project=project,
        environment=environment,
        build_id=build,
        git_hash="e" * 40,
        actor=actor,
        results=LOCUST_STATS,
    )
    assert created
    return validation


def test_the_first_upload_seeds_the_baseline_and_the_second_compares_with_it(
    project, staging, scenario, actor, blind_rules
):
    first = upload(project, staging, actor, "b-1")

    checks = {check.kind: check for check in first.checks.all()}
    assert checks["relative"].verdict == "no_baseline"
    assert checks["absolute"].verdict == "error" and checks["absolute"].severity == "info"
    assert (first.status, first.verdict, first.deployment_allowed) == ("passed", "warn", True)
    baseline = baseline_active(project, staging, scenario)
    assert baseline is not None and baseline.source_validation == first

    second = upload(project, staging, actor, "b-2")
    relative = second.checks.get(kind="relative")
    assert relative.verdict != "no_baseline"
    assert relative.baseline_value == pytest.approx(13.0) and relative.observed == pytest.approx(13.0)
    assert second.baseline == baseline
    assert second.report["notices"] == []


@override_settings(PERFGATE_BLIND_AFTER=2)
def test_the_third_validation_without_a_baseline_says_relative_rules_are_not_active(
    project, staging, actor, blind_rules
):
    staging.auto_baseline = False
    staging.save(update_fields=["auto_baseline"])
    first = upload(project, staging, actor, "b-1")
    second = upload(project, staging, actor, "b-2")
    third = upload(project, staging, actor, "b-3")

    assert [v.checks.get(kind="relative").verdict for v in (first, second, third)] == ["no_baseline"] * 3
    assert first.report["notices"] == [] and second.report["notices"] == []
    assert third.report["notices"] == [blind_notice(first.created_at)]
    assert third.status == "passed"


def decided(environment, scenario, *verdicts, at, severity="key", kind="relative", status="passed"):
    """A finished validation whose checks had these verdicts, created at ``at``."""
    validation = Validation.objects.create(
        project=environment.project,
        environment=environment,
        scenario=scenario,
        build_id=f"build-{Validation.objects.count()}",
        git_hash="f" * 40,
        status=status,
        verdict="warn",
    )
    Validation.objects.filter(pk=validation.pk).update(created_at=at)
    for position, verdict in enumerate(verdicts):
        CheckResult.objects.create(
            validation=validation,
            position=position,
            label=f"check {position}",
            kind=kind,
            severity=severity,
            verdict=verdict,
            reason="",
        )
    return validation


def minutes(n):
    return T0 + timedelta(minutes=n)


@override_settings(PERFGATE_BLIND_AFTER=2)
def test_blind_since_needs_more_than_blind_after_validations_without_a_baseline(staging, scenario):
    decided(staging, scenario, "no_baseline", at=minutes(0))
    assert blind_since(staging, scenario, current_no_baseline=True) is None

    decided(staging, scenario, "no_baseline", at=minutes(1))
    assert blind_since(staging, scenario, current_no_baseline=True) == minutes(0)
    assert blind_since(staging, scenario, current_no_baseline=False) is None


@override_settings(PERFGATE_BLIND_AFTER=2)
def test_blind_since_is_the_start_of_the_whole_streak_after_the_last_baseline(staging, scenario):
    decided(staging, scenario, "no_baseline", at=minutes(0))
    decided(staging, scenario, "pass", "no_baseline", at=minutes(1))  # saw a baseline
    for n in range(2, 8):
        decided(staging, scenario, "no_baseline", "no_baseline", at=minutes(n))

    assert blind_since(staging, scenario, current_no_baseline=True) == minutes(2)
    assert blind_now(staging, scenario) == minutes(2)


@override_settings(PERFGATE_BLIND_AFTER=2)
def test_a_validation_that_compared_with_a_baseline_ends_the_streak(staging, scenario):
    decided(staging, scenario, "no_baseline", at=minutes(0))
    decided(staging, scenario, "no_baseline", at=minutes(1))
    decided(staging, scenario, "fail", at=minutes(2))
    decided(staging, scenario, "no_baseline", at=minutes(3))

    assert blind_since(staging, scenario, current_no_baseline=True) is None
    assert blind_now(staging, scenario) is None


@override_settings(PERFGATE_BLIND_AFTER=2)
def test_only_finished_validations_with_key_relative_checks_of_the_scenario_count(
    project, staging, production, scenario
):
    other = project.scenarios.create(name="checkout", script_text="x", target_url="http://127.0.0.1:8001")
    decided(staging, scenario, "no_baseline", at=minutes(0))
    decided(staging, scenario, "pass", at=minutes(1), kind="absolute")  # no relative check: skipped
    decided(staging, scenario, "pass", at=minutes(2), severity="info")  # an info relative rule: skipped
    decided(staging, scenario, "pass", at=minutes(3), status="running")  # not finished: skipped
    decided(staging, other, "pass", at=minutes(4))  # another scenario
    decided(production, scenario, "pass", at=minutes(5))  # another environment
    decided(staging, scenario, "no_baseline", at=minutes(6))

    assert blind_since(staging, scenario, current_no_baseline=True) == minutes(0)
    assert blind_since(production, scenario, current_no_baseline=True) is None
    assert blind_since(staging, other, current_no_baseline=True) is None


@override_settings(PERFGATE_BLIND_AFTER=3)
def test_blind_since_reads_at_most_two_queries(staging, scenario, django_assert_max_num_queries):
    for n in range(40):
        decided(staging, scenario, "no_baseline", at=minutes(n))
    with django_assert_max_num_queries(2):
        assert blind_since(staging, scenario, current_no_baseline=True) == minutes(0)


@override_settings(PERFGATE_BLIND_AFTER=0)
def test_with_blind_after_zero_the_first_validation_without_a_baseline_is_loud(staging, scenario):
    assert blind_since(staging, scenario, current_no_baseline=True) is not None
    assert blind_since(staging, scenario, current_no_baseline=False) is None


def test_the_notice_names_the_time_in_utc_to_the_minute():
    assert blind_notice(T0) == NOTICE
    assert blind_notice(T0.astimezone(timezone(timedelta(hours=-5)))) == NOTICE


def test_the_text_table_prints_each_notice_above_the_checks():
    lines = check_table(CHECKS, [NOTICE]).splitlines()
    assert lines[0] == f"! {NOTICE}"
    assert lines[1].split()[:2] == ["rule", "observed"]
    assert check_table(CHECKS).splitlines()[0].split()[:2] == ["rule", "observed"]


def test_the_cli_prints_the_notices_above_its_check_table(capsys):
    document = {
        "project": "wedsync-web",
        "environment": "staging",
        "buildId": "b-3",
        "status": "passed",
        "verdict": "warn",
        "deploymentAllowed": True,
        "checks": CHECKS,
        "notices": [NOTICE],
        "blockingReasons": [],
        "links": {},
    }
    cli.report(document, "http://perfgate.example", cli.Output([]))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"! {NOTICE}"
    assert "http_req_duration p(95) relative" in out[3]


def test_the_markdown_table_puts_the_notices_above_the_table():
    table = markdown_table(CHECKS, max_bytes=65_000, notices=[NOTICE])
    first, rest = table.split("\n", 1)
    assert first == f"**⚠ {NOTICE}**"
    assert rest.lstrip("\n").startswith("| rule |")
    assert markdown_table(CHECKS, max_bytes=65_000).startswith("| rule |")


@override_settings(PERFGATE_BLIND_AFTER=1)
def test_the_admin_environment_page_says_whether_relative_rules_are_active(
    client, admin_user, staging, scenario
):
    client.force_login(admin_user)
    url = reverse("admin:gates_environment_change", args=[staging.pk])
    page = client.get(url).content.decode()
    assert "Relative rules" in page and "guest-list: <strong" in page and ">active<" in page

    decided(staging, scenario, "no_baseline", at=minutes(0))
    decided(staging, scenario, "no_baseline", at=minutes(1))
    page = client.get(url).content.decode()
    assert "not active: no baseline since 2026-11-02 14:03 UTC" in page
    listing = client.get(reverse("admin:gates_environment_changelist")).content.decode()
    assert "not active: no baseline since 2026-11-02 14:03 UTC" in listing


def test_the_admin_validation_page_shows_the_notices(client, admin_user, staging, scenario):
    validation = decided(staging, scenario, "no_baseline", at=minutes(0))
    Validation.objects.filter(pk=validation.pk).update(report={"checks": CHECKS, "notices": [NOTICE]})
    client.force_login(admin_user)
    page = client.get(reverse("admin:gates_validation_change", args=[validation.pk])).content.decode()
    assert f"⚠ {NOTICE}" in page
    assert page.index(NOTICE) < page.index("Blocking reasons")
