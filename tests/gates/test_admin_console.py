"""The console as its readers meet it (issue 15): each person is offered exactly what they may do,
the API's links can be followed from anywhere, and the README says what the code does."""

import re
from pathlib import Path

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.urls import reverse
from guardian.shortcuts import assign_perm

from gates.admin.validations import askable_validations
from gates.audit import Actor
from gates.documents import public_url, validation_links
from gates.errors import ServiceError
from gates.models import BypassRequest, Validation
from gates.services import bypass_request, validation_evaluate
from tests.factories import make_results, make_validation
from tests.gates.test_browser import browser  # noqa: F401 - the fixture: Debian's chromium, headless

ROOT = Path(__file__).resolve().parents[2]


def blocked_build(project, environment, build_id):
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build_id,
        git_hash="d" * 40,
        actor=Actor("user", "dev-dana"),
        deployment_context={"actor": "dev-dana"},
    )
    validation = validation_evaluate(
        validation=validation, results=make_results(p95=900.0), actor=Actor("user", "dev-dana")
    )
    assert validation.status == "blocked"
    return validation


@pytest.fixture
def blocked(project, staging, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    return blocked_build(project, staging, "b-1")


@pytest.fixture
def approver(client, ops, project):
    """An ops user who may approve bypasses of the project and nothing else."""
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", ops, project)
    client.force_login(ops)
    return ops


def test_an_approver_without_block_deployment_is_told_why_they_cannot_ask_for_a_bypass(
    client, approver, blocked
):
    listing = client.get(reverse("admin:gates_bypassrequest_changelist")).content.decode()
    assert "asking for one needs the block_deployment right on the project" in listing
    assert reverse("admin:gates_bypassrequest_add") not in listing
    assert client.get(reverse("admin:gates_bypassrequest_add")).status_code == 403


def test_someone_who_may_ask_sees_no_note_and_may_add(client, approver, project, blocked):
    assign_perm("gates.block_deployment", approver, project)
    listing = client.get(reverse("admin:gates_bypassrequest_changelist")).content.decode()
    assert "asking for one needs" not in listing
    assert reverse("admin:gates_bypassrequest_add") in listing


def test_the_bypass_form_offers_exactly_the_builds_the_service_would_accept(
    client, approver, project, staging, blocked
):
    assign_perm("gates.block_deployment", approver, project)
    waiting = blocked_build(project, staging, "b-2")
    bypass_request(validation=waiting, justification="already asked", actor=Actor("user", "dev-dana"))
    form = client.get(reverse("admin:gates_bypassrequest_add")).content.decode()
    offered = set(re.findall(r'<option value="([0-9a-f-]{36})"', form))
    assert offered == {str(blocked.pk)}
    for validation in Validation.objects.all():
        accepted = True
        try:
            bypass_request(validation=validation, justification="why", actor=Actor.for_user(approver))
        except ServiceError:
            accepted = False
        assert accepted is (str(validation.pk) in offered), validation.build_id


def test_the_form_and_the_service_ask_for_the_same_right(ops, project, blocked):
    assert not askable_validations(ops).exists()
    with pytest.raises(ServiceError, match="needs the block_deployment right"):
        bypass_request(validation=blocked, justification="why", actor=Actor.for_user(ops))
    assign_perm("gates.block_deployment", ops, project)
    assert list(askable_validations(ops)) == [blocked]


def test_the_readme_says_who_may_ask_for_a_bypass_as_the_service_does():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "`block_deployment` (cancel validations, ask for bypasses)" in readme
    assert "`approve_bypass` alone lets them decide, not ask" in readme
    service = " ".join((ROOT / "gates" / "services" / "bypasses.py").read_text().split())
    assert "A person asking for one needs ``block_deployment`` on the project" in service


OUR_APPS = ("gates", "baselines", "integrations", "django_q")


def test_an_auditor_is_offered_nothing_they_may_not_do_on_any_page(auditor_client, blocked):
    BypassRequest.objects.create(
        project=blocked.project,
        environment=blocked.environment,
        validation=blocked,
        build_id=blocked.build_id,
        justification="x",
        requested_by="user:dev-dana",
        requester_names=["dev-dana"],
        required_approvals=1,
        expires_at=blocked.created_at.replace(year=blocked.created_at.year + 1),
    )
    offered = []
    for model, _ in admin.site._registry.items():
        meta = model._meta
        if meta.app_label not in OUR_APPS:
            continue
        urls = [reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")]
        urls += [
            reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
            for obj in model.objects.all()[:1]
        ]
        for url in urls:
            response = auditor_client.get(url)
            if response.status_code == 403:
                continue
            html = response.content.decode()
            for sign in (
                "Object permissions",
                '<option value="cancel"',
                'name="_save"',
                "addlink",
                "deletelink",
            ):
                if sign in html:
                    offered.append(f"{url}: {sign}")
    assert offered == []
    permissions = reverse("admin:gates_project_permissions", args=[blocked.project.pk])
    assert auditor_client.get(permissions).status_code == 403  # refused, not a silent redirect


def test_api_links_stay_paths_when_no_base_url_was_given(settings, blocked):
    settings.PERFGATE_BASE_URL_GIVEN = False
    links = validation_links(blocked, public=True)
    assert links["admin"] == reverse("admin:gates_validation_change", args=[blocked.pk])
    assert all(link.startswith("/") for link in links.values())


def test_api_links_are_absolute_under_the_base_url_someone_gave(settings, blocked):
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    settings.PERFGATE_BASE_URL_GIVEN = True
    links = validation_links(blocked, public=True)
    assert links["chart"] == "https://perfgate.example.com" + reverse("validation-chart", args=[blocked.pk])
    assert all(link.startswith("https://perfgate.example.com/") for link in links.values())
    assert validation_links(blocked)["admin"].startswith("/admin/")  # integrations prefix it themselves
    assert public_url("/api/docs/") == "https://perfgate.example.com/api/docs/"


def test_the_base_url_counts_as_given_only_from_the_environment(tmp_path):
    import os
    import subprocess
    import sys

    code = "from django.conf import settings; print(settings.PERFGATE_BASE_URL_GIVEN)"
    env = {k: v for k, v in os.environ.items() if k != "PERFGATE_BASE_URL"}
    env.update(DJANGO_SETTINGS_MODULE="perfgate_site.settings", DEBUG="true")

    def given(**extra):
        result = subprocess.run(
            [sys.executable, "-c", f"import django; django.setup(); {code}"],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    env_file = ROOT / ".env"
    if env_file.exists() and "PERFGATE_BASE_URL" in env_file.read_text():
        pytest.skip("this checkout's .env gives PERFGATE_BASE_URL")
    assert given() == "False"
    assert given(PERFGATE_BASE_URL="https://perfgate.example.com") == "True"


def test_make_test_installs_debians_chromium_when_it_is_missing(tmp_path):
    import os
    import shutil
    import subprocess

    assert "bash scripts/ensure-chromium" in (ROOT / "Makefile").read_text().split("test: setup", 1)[1]
    log = tmp_path / "apt.log"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    (fake / "apt-get").chmod(0o755)
    for tool in ("bash", "id", "env"):  # what the script itself needs, and no chromium
        (fake / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure-chromium")],
        env={**os.environ, "PATH": str(fake)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "install -y -qq chromium" in log.read_text()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_validation_list_reads_at_1280_px_without_scrolling_sideways(
    browser,  # noqa: F811 - the fixture imported above
    live_server,
    project,
    staging,
):
    from django.apps import apps as django_apps
    from django.contrib.auth import get_user_model

    from gates.permissions import ensure_groups
    from tests.gates.test_browser import ARTIFACTS, PASSWORD, login

    ensure_groups(django_apps)
    for number in range(3):
        validation, _ = make_validation(
            project=project,
            environment=staging,
            build_id=f"gha{number}_" + "0123456789abcdef" * 6,  # no place a browser would break it
            git_hash="a" * 40,
            actor=Actor("token", "ci"),
        )
        validation.status, validation.verdict = "blocked", "fail"
        validation.status_reason = (
            "p(95) of http_req_duration{name:guest_list_" + "x" * 60 + "} is 41.2% above " * 3
        )
        validation.save(update_fields=["status", "verdict", "status_reason"])
    get_user_model().objects.create_superuser("root-ui", "r@example.invalid", PASSWORD)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    login(page, live_server.url, "root-ui")
    page.goto(f"{live_server.url}/admin/gates/validation/")
    page.screenshot(path=str(ARTIFACTS / "console-validation-list-1280.png"), full_page=True)
    # The admin scrolls a wide table inside its own box (div.results), not the page.
    overflow = page.evaluate(
        "Math.max(...[document.documentElement, document.querySelector('#changelist .results')]"
        ".map(box => box.scrollWidth - box.clientWidth))"
    )
    assert overflow <= 0, f"the list is {overflow} px wider than its box"
