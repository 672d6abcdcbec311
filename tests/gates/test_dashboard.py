"""The admin's index is a dashboard: per project and environment a user may see, the newest
validations with their verdicts and p(95), a chart against the baseline, pending bypasses with who
may approve them, active watches, recent rollbacks, and what is blind or broken."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.admin.dashboard import dashboard_panels, milliseconds
from gates.audit import Actor
from gates.models import Environment, Project, Rollback, Scenario, Validation, Watch
from gates.services import validation_evaluate
from gates.services.bypasses import bypass_request
from integrations.dashboard import integration_problems
from integrations.models import NotificationChannel, OutboundCall
from tests.conftest import SCRIPT
from tests.factories import make_results, make_validation

CI = Actor("token", "ci")


def decided(project, environment, build_id, p95, scenario=None):
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build_id,
        git_hash="a" * 40,
        actor=CI,
        scenario=scenario,
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=CI)


@pytest.fixture
def wedsync(project, staging, add_rule):
    """Two builds that passed (the second became staging's baseline) and one blocked by p(95)."""
    add_rule("http_req_duration", threshold="p(95)<400")
    decided(project, staging, "gha-100", 210.0)
    decided(project, staging, "gha-101", 220.0)
    return decided(project, staging, "gha-102", 900.0)


@pytest.fixture
def other_shop(db):
    """Another team's project, with one validation of its own."""
    other = Project.objects.create(slug="other-shop", name="Other shop", allowed_hosts=["127.0.0.1"])
    environment = Environment.objects.create(project=other, name="staging")
    Scenario.objects.create(
        project=other, name="home", script_text=SCRIPT, target_url="http://127.0.0.1:8001", is_default=True
    )
    decided(other, environment, "other-1", 120.0)
    return other


@pytest.fixture
def asker(ops, project):
    """The ops user of wedsync-web, who may block, ask for bypasses and approve others'."""
    ops.groups.add(Group.objects.get(name="ops"))
    for right in ("approve_bypass", "block_deployment"):
        assign_perm(f"gates.{right}", ops, project)
    return ops


@pytest.fixture
def ops_client(client, asker):
    client.force_login(asker)
    return client


@pytest.fixture
def approver(second_ops, project):
    second_ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", second_ops, project)
    return second_ops


def environment_panel(panels, slug, name):
    panel = next(p for p in panels if p["project"].slug == slug)
    return next(e for e in panel["environments"] if e["environment"].name == name)


def test_ops_see_their_project_with_verdicts_numbers_and_the_chart_and_nothing_of_other_projects(
    ops_client, wedsync, other_shop
):
    page = ops_client.get(reverse("admin:index")).content.decode()

    assert 'id="perfgate-dashboard"' in page
    assert f'href="{reverse("admin:gates_validation_change", args=[wedsync.pk])}"' in page
    assert "gha-102" in page and "900 ms" in page and "210 ms" in page
    assert f'src="{reverse("validation-chart", args=[wedsync.pk])}"' in page
    assert "other-1" not in page and "Other shop" not in page
    assert 'id="content-main"' in page  # the app list is still there, below


def test_an_auditor_sees_every_project(auditor_client, wedsync, other_shop):
    page = auditor_client.get(reverse("admin:index")).content.decode()

    assert "gha-102" in page and "other-1" in page and "Other shop" in page


def test_newest_validations_come_first_with_status_verdict_and_p95_in_milliseconds(ops, ops_client, wedsync):
    staging = environment_panel(dashboard_panels(ops), "wedsync-web", "staging")

    assert [v["build"] for v in staging["validations"]] == ["gha-102", "gha-101", "gha-100"]
    newest = staging["validations"][0]
    assert "blocked" in newest["status"].lower() and "fail" in newest["verdict"].lower()
    assert newest["key_value"] == "900 ms"
    assert staging["chart"]["src"] == reverse("validation-chart", args=[wedsync.pk])
    assert "gha-102 900 ms (blocked)" in staging["chart"]["alt"]


def test_the_chart_caption_gives_the_baseline_and_the_spread_of_its_runs(ops, ops_client, wedsync):
    staging = environment_panel(dashboard_panels(ops), "wedsync-web", "staging")

    assert staging["baseline"].startswith("Baseline v2: p(95) ")
    assert "runs from 210 ms to 220 ms (2 runs)" in staging["baseline"]
    production = environment_panel(dashboard_panels(ops), "wedsync-web", "production")
    assert production["validations"] == [] and production["chart"] is None
    assert production["baseline"] == "No baseline yet: relative rules cannot decide."


def test_a_pending_bypass_names_who_may_still_approve_it_and_never_who_asked(
    ops, ops_client, approver, wedsync
):
    bypass_request(validation=wedsync, justification="hotfix must ship", actor=Actor.for_user(ops))

    (bypass,) = environment_panel(dashboard_panels(ops), "wedsync-web", "staging")["bypasses"]
    assert bypass["approvers"] == ["oscar-ops"]
    assert bypass["approvals"] == "0 of 1" and bypass["requested_by"] == "user:olivia-ops"
    assert bypass["url"].endswith("/change/")
    page = ops_client.get(reverse("admin:index")).content.decode()
    assert 'class="perfgate-approvers">oscar-ops<' in page


def test_the_approver_is_told_they_may_approve(client, asker, approver, wedsync):
    bypass_request(validation=wedsync, justification="hotfix must ship", actor=Actor.for_user(asker))
    client.force_login(approver)

    assert "<strong>oscar-ops (you)</strong>" in client.get(reverse("admin:index")).content.decode()


def test_active_watches_and_recent_rollbacks_are_shown_and_old_finished_rollbacks_are_not(
    ops, ops_client, project, staging, scenario, wedsync
):
    passed = Validation.objects.get(build_id="gha-101")
    now = timezone.now()
    fields = {
        "project": project,
        "environment": staging,
        "scenario": scenario,
        "source": Watch.Source.CI,
        "target_url": "http://127.0.0.1:8001",
        "started_by": "token:ci",
        "next_probe_at": now,
        "ends_at": now + timedelta(minutes=15),
    }
    watching = Watch.objects.create(validation=wedsync, state=Watch.State.WATCHING, probes_run=3, **fields)
    degraded = Watch.objects.create(validation=passed, state=Watch.State.DEGRADED, **fields)
    old = Watch.objects.create(validation=passed, state=Watch.State.HEALTHY, **fields)
    rollback = Rollback.objects.create(
        watch=degraded,
        validation=passed,
        project=project,
        environment=staging,
        trigger=Rollback.Trigger.WATCH,
        state=Rollback.State.SUCCEEDED,
        reason="p(95) degraded",
    )
    finished = Rollback.objects.create(
        watch=old,
        validation=passed,
        project=project,
        environment=staging,
        trigger=Rollback.Trigger.MANUAL,
        state=Rollback.State.SUCCEEDED,
        reason="long ago",
    )
    Rollback.objects.filter(pk=finished.pk).update(created_at=now - timedelta(days=60))

    staging_panel = environment_panel(dashboard_panels(ops), "wedsync-web", "staging")
    assert [w["url"] for w in staging_panel["watches"]] == [
        reverse("admin:gates_watch_change", args=[watching.pk])
    ]
    assert staging_panel["watches"][0]["probes"] == "3 run, 0 failed, 0 errors"
    assert [r["url"] for r in staging_panel["rollbacks"]] == [
        reverse("admin:gates_rollback_change", args=[rollback.pk])
    ]
    assert staging_panel["rollbacks"][0]["trigger"] == "the watch's probes"


def test_blind_rules_broken_channels_and_given_up_calls_are_listed_with_links(
    auditor, auditor_client, project, production, add_rule, wedsync
):
    rule = add_rule("http_req_duration", aggregation="p(95)", fail_pct=10.0, environments=[production])
    NotificationChannel.objects.create(
        project=project,
        name="#perf-wedsync",
        kind="slack",
        broken_at=timezone.now(),
        broken_reason="Slack answered 410: no_service",
    )
    for error in ("HTTP 500 from GitHub", "HTTP 502 from GitHub\nretry later"):
        OutboundCall.objects.create(
            project=project,
            provider="github",
            kind="status",
            ordering_key="k",
            state=OutboundCall.State.FAILED,
            last_error=error,
        )

    page = auditor_client.get(reverse("admin:index")).content.decode()

    assert "http_req_duration p(95) relative (guest-list) has no baseline in production" in page
    assert f'href="{reverse("admin:gates_thresholdrule_change", args=[rule.pk])}"' in page
    assert "Notification channel #perf-wedsync (Slack) is broken" in page
    assert "Slack answered 410: no_service" in page
    assert "2 outbox calls given up" in page and "github status: HTTP 502 from GitHub" in page
    assert "retry later" not in page  # the first line of the error only
    changelist = reverse("admin:integrations_outboundcall_changelist")
    assert f"{changelist}?state__exact=failed&amp;project__id__exact={project.pk}" in page


def test_a_relative_rule_with_a_baseline_is_not_blind(ops, ops_client, staging, add_rule, wedsync):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10.0, environments=[staging])

    panel = next(p for p in dashboard_panels(ops) if p["project"].slug == "wedsync-web")
    assert panel["problems"] == []


def test_ops_get_no_link_to_pages_they_may_not_open(ops, ops_client, project, wedsync):
    OutboundCall.objects.create(
        project=project, kind="status", ordering_key="k", state=OutboundCall.State.FAILED, last_error="x"
    )
    projects = list(Project.objects.all())

    (problem,) = integration_problems(user=ops, projects=projects)
    assert problem.what == "1 outbox call given up" and problem.url == ""


def test_an_environment_without_numbers_shows_one_dash(ops, ops_client, project, staging):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="q-1", git_hash="b" * 40, actor=CI
    )

    (row,) = environment_panel(dashboard_panels(ops), "wedsync-web", "staging")["validations"]
    assert row["key_value"] == "\N{EN DASH}" and milliseconds(None) == "\N{EN DASH}"
    assert milliseconds(42.54) == "42.5 ms" and milliseconds(3.251) == "3.25 ms"
    assert validation.status == "queued"


def test_the_dashboard_needs_an_admin_login(client):
    response = client.get(reverse("admin:index"))

    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_the_dashboard_reads_a_fixed_number_of_queries_however_long_the_history(
    auditor,
    auditor_client,
    project,
    staging,
    production,
    add_rule,
    wedsync,
    other_shop,
    django_assert_max_num_queries,
):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10.0, environments=[production])
    url = reverse("admin:index")
    auditor_client.get(url)  # the session and permission caches are warm from here on
    with CaptureQueriesContext(connection) as before:
        auditor_client.get(url)

    for number in range(12):
        decided(project, staging, f"more-{number}", 200.0 + number)
        decided(project, production, f"prod-{number}", 200.0 + number)
    with django_assert_max_num_queries(len(before.captured_queries)):
        page = auditor_client.get(url).content.decode()

    assert "more-11" in page and "more-6" not in page  # five per environment
    assert len(before.captured_queries) <= 25
