"""The admin in a real browser: Debian's chromium, headless, driven by Playwright.

An ops user approves a bypass that CI asked for and sees the validation turn bypassed; an auditor
opens the audit log, filters it, sees the chart, and finds no approve action. Screenshots are
kept in test-artefacts/screenshots/.
"""

import shutil
from pathlib import Path

import pytest
from django.apps import apps as django_apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections
from guardian.shortcuts import assign_perm

from gates.audit import Actor
from gates.models import BypassRequest, Validation
from gates.permissions import ensure_groups
from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artefacts" / "screenshots"
PASSWORD = "a long and unguessable test password"


@pytest.fixture
def browser(monkeypatch):
    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are ordinary synchronous ones.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()
        # ORM calls made while Playwright's loop ran opened their own connections: close them,
        # or PostgreSQL refuses to drop the test database at the end of the suite.
        connections.close_all()


@pytest.fixture
def scene(project, staging, add_rule):
    """A build blocked by its p(95) limit, a bypass CI asked for, an ops user who may approve
    it and an auditor."""
    ensure_groups(django_apps)  # made by a migration; transactional tests before this one emptied the tables
    add_rule("http_req_duration", threshold="p(95)<400")
    for build, p95 in (("gha-100", 210.0), ("gha-101", 220.0), ("gha-102", 900.0)):
        validation, _ = make_validation(
            project=project,
            environment=staging,
            build_id=build,
            git_hash="a" * 40,
            actor=Actor("token", "ci"),
            deployment_context={"actor": "dev-dana"},
        )
        validation_evaluate(validation=validation, results=make_results(p95=p95), actor=Actor("token", "ci"))
    response = Api(make_token(project, "ci")[1]).post(
        "/api/ci-cd/performance/bypass",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "gha-102",
            "requestedBy": "dev-dana",
            "justification": "Known slowdown in the RSVP page; the hotfix for bookings must ship",
            "ticketUrl": "https://tickets.example/INC-7",
        },
    )
    assert response.status_code == 201, response.content
    users = get_user_model().objects
    olivia = users.create_user("olivia", password=PASSWORD, is_staff=True)
    olivia.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", olivia, project)
    audrey = users.create_user("audrey", password=PASSWORD, is_staff=True)
    audrey.groups.add(Group.objects.get(name="auditors"))
    return Validation.objects.get(build_id="gha-102")


def login(page, base, username):
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def test_ops_approve_a_bypass_and_an_auditor_reviews_it(browser, live_server, scene):
    base = live_server.url
    page = browser.new_page(viewport={"width": 1400, "height": 1000})

    login(page, base, "olivia")
    page.goto(f"{base}/admin/gates/bypassrequest/")
    page.check("input[name=_selected_action]")
    page.select_option("select[name=action]", "approve")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert "approved; the build may deploy" in page.inner_text(".messagelist")
    page.screenshot(path=str(ARTIFACTS / "1-ops-approved-bypass.png"), full_page=True)

    page.goto(f"{base}/admin/gates/validation/{scene.pk}/change/")
    assert "Bypassed" in page.inner_text("#content")
    page.screenshot(path=str(ARTIFACTS / "2-ops-validation-bypassed.png"), full_page=True)
    scene.refresh_from_db()
    assert (scene.status, scene.deployment_allowed, scene.verdict) == ("bypassed", True, "fail")
    assert BypassRequest.objects.get().status == "approved"

    page.click("#logout-form button")
    login(page, base, "audrey")
    page.goto(f"{base}/admin/gates/auditevent/")
    page.click('#changelist-filter a:text-is("bypass.used")')
    page.wait_for_url("**action=bypass.used**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1 and "olivia" in rows.first.inner_text()
    page.screenshot(path=str(ARTIFACTS / "3-auditor-audit-log-filtered.png"), full_page=True)

    page.goto(f"{base}/admin/gates/validation/{scene.pk}/change/")
    chart = page.locator("img[alt^='p(95) history']")
    chart.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=chart.element_handle())
    page.screenshot(path=str(ARTIFACTS / "4-auditor-validation-chart.png"), full_page=True)

    page.goto(f"{base}/admin/gates/bypassrequest/")
    actions = page.locator("select[name=action] option").all_inner_texts()
    assert not any("Approve" in action or "Reject" in action for action in actions)
    page.screenshot(path=str(ARTIFACTS / "5-auditor-no-approve-action.png"), full_page=True)
