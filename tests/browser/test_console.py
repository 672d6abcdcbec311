"""Walking the console as the people who use it: an ops user finds a blocked build on the
dashboard and asks for a bypass they cannot approve themselves; a second ops user approves it; an
auditor reads everything and is offered nothing to do."""

import re

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from guardian.shortcuts import assign_perm

from gates.audit import Actor
from gates.models import BypassRequest, Environment, Project, Scenario, Validation
from gates.permissions import ensure_groups
from gates.services import validation_evaluate
from gates.services.bypasses import bypass_request
from tests.browser.conftest import WIDTH, Screens, log_in, log_out
from tests.conftest import SCRIPT
from tests.factories import make_results, make_validation

pytestmark = pytest.mark.django_db(transaction=True)

CI = Actor("token", "ci")
BLOCKED = re.compile("blocked", re.IGNORECASE)


def decided(project, environment, build_id, p95):
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build_id, git_hash="a" * 40, actor=CI
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=CI)


@pytest.fixture
def scene(project, staging, add_rule, ops, second_ops, auditor):
    """wedsync-web: two builds that passed in staging (the baseline) and gha-102, blocked by its
    p(95); another team's project; olivia (ops: may block, ask and approve), oscar (ops: may
    approve) and audrey (auditor)."""
    ensure_groups(django_apps)  # made by a migration; transactional tests before this one emptied the tables
    add_rule("http_req_duration", threshold="p(95)<400")
    decided(project, staging, "gha-100", 210.0)
    decided(project, staging, "gha-101", 220.0)
    blocked = decided(project, staging, "gha-102", 900.0)
    assert blocked.status == Validation.Status.BLOCKED

    other = Project.objects.create(slug="other-shop", name="Other shop", allowed_hosts=["127.0.0.1"])
    other_staging = Environment.objects.create(project=other, name="staging")
    Scenario.objects.create(
        project=other, name="home", script_text=SCRIPT, target_url="http://127.0.0.1:8001", is_default=True
    )
    decided(other, other_staging, "other-1", 120.0)

    ops.groups.add(Group.objects.get(name="ops"))
    second_ops.groups.add(Group.objects.get(name="ops"))
    auditor.groups.add(Group.objects.get(name="auditors"))
    for right in ("approve_bypass", "block_deployment"):
        assign_perm(f"gates.{right}", ops, project)
    assign_perm("gates.approve_bypass", second_ops, project)
    return blocked


def open_dashboard(page, base):
    page.goto(f"{base}/admin/")
    page.wait_for_selector("#perfgate-dashboard")
    chart = page.locator("#perfgate-dashboard figure.perfgate-chart img").first
    if chart.count():
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
    # Everything on the dashboard reads at 1,280 px without scrolling sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH


def action_names(page) -> list[str]:
    return page.locator("select[name=action] option").all_inner_texts()


def test_ops_find_a_blocked_build_and_ask_for_a_bypass_they_cannot_approve_themselves(
    page, live_server, scene, ops
):
    base, shot = live_server.url, Screens(page, "ops")
    log_in(page, base, ops.username)

    open_dashboard(page, base)
    staging = page.locator("#perfgate-dashboard [data-environment=staging]")
    newest = staging.locator("table.perfgate-validations tbody tr").first
    assert "gha-102" in newest.inner_text() and "900 ms" in newest.inner_text()
    assert BLOCKED.search(newest.inner_text())
    assert "Baseline v2" in staging.locator("figcaption").inner_text()
    assert "other-1" not in page.inner_text("#perfgate-dashboard")
    shot("dashboard")

    newest.locator("a", has_text="gha-102").click()
    page.wait_for_url(f"**/admin/gates/validation/{scene.pk}/change/")
    assert BLOCKED.search(page.inner_text("#content"))
    shot("blocked-validation")

    page.goto(f"{base}/admin/gates/bypassrequest/add/")
    page.select_option("#id_validation", str(scene.pk))
    page.fill("#id_justification", "Known slowdown in the RSVP page; the bookings hotfix must ship")
    page.fill("#id_ticket_url", "https://tickets.example/INC-7")
    shot("asking-for-a-bypass")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    request = BypassRequest.objects.get()
    assert (request.status, request.validation_id) == (BypassRequest.Status.PENDING, scene.pk)
    assert not any("Approve" in name for name in action_names(page))  # their own request
    shot("bypass-asked-no-approve-action")

    open_dashboard(page, base)
    row = page.locator("#perfgate-dashboard table.perfgate-bypasses tbody tr")
    assert row.count() == 1 and "gha-102" in row.inner_text()
    approvers = row.locator("td.perfgate-approvers").inner_text()
    assert "oscar-ops" in approvers and "olivia-ops" not in approvers
    shot("dashboard-pending-bypass")


def test_a_second_ops_user_approves_the_bypass_and_the_build_may_deploy(
    page, live_server, scene, ops, second_ops
):
    bypass_request(validation=scene, justification="hotfix must ship", actor=Actor.for_user(ops))
    base, shot = live_server.url, Screens(page, "second-ops")
    log_in(page, base, second_ops.username)

    open_dashboard(page, base)
    row = page.locator("#perfgate-dashboard table.perfgate-bypasses tbody tr")
    assert "oscar-ops (you)" in row.inner_text()
    shot("dashboard-may-approve")

    row.locator("a", has_text="gha-102").click()
    page.wait_for_url("**/admin/gates/bypassrequest/*/change/")
    assert "hotfix must ship" in page.inner_text("#content")
    shot("bypass-request")

    page.goto(f"{base}/admin/gates/bypassrequest/")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "approve")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "approved; the build may deploy" in page.inner_text(".messagelist")
    shot("bypass-approved")

    scene.refresh_from_db()
    assert (scene.status, scene.deployment_allowed) == (Validation.Status.BYPASSED, True)
    open_dashboard(page, base)
    assert page.locator("#perfgate-dashboard table.perfgate-bypasses").count() == 0
    newest = page.locator(
        "#perfgate-dashboard [data-environment=staging] table.perfgate-validations tbody tr"
    )
    assert re.search("bypassed", newest.first.inner_text(), re.IGNORECASE)
    shot("dashboard-bypassed")
    log_out(page)


def test_an_auditor_sees_every_project_and_is_offered_nothing_to_do(page, live_server, scene, ops, auditor):
    bypass_request(validation=scene, justification="hotfix must ship", actor=Actor.for_user(ops))
    base, shot = live_server.url, Screens(page, "auditor")
    log_in(page, base, auditor.username)

    open_dashboard(page, base)
    dashboard = page.inner_text("#perfgate-dashboard")
    assert "gha-102" in dashboard and "other-1" in dashboard and "Other shop" in dashboard
    assert "(you)" not in dashboard
    assert page.locator("#content-main a.addlink").count() == 0
    shot("dashboard")

    page.goto(f"{base}/admin/gates/validation/")
    assert not any("Cancel" in name for name in action_names(page))
    shot("validations-no-cancel")

    page.goto(f"{base}/admin/gates/validation/{scene.pk}/change/")
    assert BLOCKED.search(page.inner_text("#content"))
    assert page.locator("input[type=submit]").count() == 0
    shot("blocked-validation")

    page.goto(f"{base}/admin/gates/bypassrequest/")
    assert not any("Approve" in name or "Reject" in name for name in action_names(page))
    assert page.locator("a.addlink").count() == 0
    shot("bypasses-no-approve")

    page.goto(f"{base}/admin/gates/project/{scene.project_id}/change/")
    assert page.get_by_text("Object permissions").count() == 0
    assert page.locator("input[type=submit]").count() == 0
    shot("project-no-object-permissions")

    response = page.goto(f"{base}/admin/gates/bypassrequest/add/")
    assert response.status == 403
