"""perfgate's check on each Vercel deployment, driven by the fixture webhooks and delivered through
the outbox to the fake Vercel: registered (project-level check runs, or the legacy API), marked
running, concluded from the verdict, rerun, cancelled; teamId, rate limits and outages; secrets."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection as db_connection
from django.utils import timezone

from gates import registry
from gates.audit import Actor
from gates.models import AuditEvent, Environment, Validation
from gates.services import (
    validation_claim,
    validation_evaluate,
    validation_record_error,
    validation_request,
)
from integrations import outbox
from integrations.models import OutboundCall, VercelCheck, VercelConnection, WebhookDelivery
from integrations.vercel.report import protection_headers
from integrations.webhooks import webhook_process
from tests.factories import PASSING_SUMMARY, make_results, make_validation
from tests.fake_vercel import PROJECT_ID, TEAM_ID, FakeVercel, load_webhook_fixture, signed_webhook

SECRET = "vercel-integration-client-secret"
DEPLOYMENT = "dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs"
SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"
HOST = "127.0.0.1:8001"  # the deployment's URL, served over plain http in tests
ACTOR = Actor("user", "olivia-ops")


@pytest.fixture(autouse=True)
def _vercel_settings(settings):
    settings.VERCEL_WEBHOOK_SECRET = SECRET
    settings.VERCEL_TIMEOUT_SECONDS = 2
    settings.PERFGATE_VERCEL_DEPLOYMENT_SCHEME = "http"
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 1


@pytest.fixture
def vercel():
    with FakeVercel() as server:
        yield server


@pytest.fixture
def connection(project, vercel):
    project.vercel_project_id = PROJECT_ID
    project.save(update_fields=["vercel_project_id"])
    return VercelConnection.objects.create(
        project=project, team_id=TEAM_ID, token=vercel.token, api_url=vercel.url
    )


@pytest.fixture
def legacy(connection):
    connection.checks_api = VercelConnection.ChecksApi.LEGACY
    connection.save(update_fields=["checks_api"])
    return connection


@pytest.fixture
def preview(vercel):
    """The preview deployment of the fixtures, building on the fake."""
    return vercel.add_deployment(
        deployment_id=DEPLOYMENT, target=None, url=HOST, ready_state="BUILDING", sha=SHA
    )


def event(name: str, *, target: str | None = "same", envelope: str | None = None) -> dict:
    """A fixture payload, pointed at the test's deployment URL (``target`` overrides the fixture's)."""
    payload = load_webhook_fixture(name)
    body = payload["payload"]
    if "url" in body.get("deployment", {}):
        body["deployment"]["url"] = HOST
    if target != "same":
        body["target"] = target
    if envelope:
        payload["id"] = envelope
    return payload


def deliver(client, payload: dict) -> str:
    """Send a signed delivery and process it as the task would; the handler's result."""
    body, headers = signed_webhook(payload, SECRET)
    response = client.post(
        "/api/ci-cd/webhooks/vercel",
        data=body,
        content_type="application/json",
        HTTP_X_VERCEL_SIGNATURE=headers["x-vercel-signature"],
    )
    assert response.status_code == 202, response.content
    return webhook_process(WebhookDelivery.objects.get(provider="vercel", delivery_id=payload["id"]).pk)


def the_validation(build_id: str = f"vercel-{DEPLOYMENT}") -> Validation:
    return Validation.objects.get(build_id=build_id)


def ready_preview(client) -> Validation:
    """A preview deployment created and ready: its validation released against its URL."""
    deliver(client, event("deployment.preview.created"))
    deliver(client, event("deployment.ready", target=None))
    return the_validation()


def run(validation: Validation, *, p95: float = 120.0) -> Validation:
    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    return validation_evaluate(validation=claimed, results=make_results(p95=p95), actor=ACTOR)


def the_run(vercel) -> dict:
    [check_run] = vercel.check_runs.values()
    return check_run


def staging_pass(project, staging, sha: str = SHA) -> Validation:
    validation, _ = validation_request(
        project=project,
        environment=staging,
        build_id="ci-staging-1",
        git_hash=sha,
        actor=ACTOR,
        results=io.BytesIO(PASSING_SUMMARY),
        results_format="k6-summary-export",
    )
    assert validation.status == "passed"
    return validation


# --- Registered, running, concluded ---------------------------------------------------------------


def test_a_preview_deployment_gets_a_held_staging_validation_and_a_check_run_of_perfgates_project_check(
    client, connection, preview, vercel
):
    result = deliver(client, event("deployment.preview.created"))

    validation = the_validation()
    assert "held until the deployment is ready" in result
    assert (validation.environment.name, validation.status, validation.held) == ("staging", "queued", True)
    assert validation.git_hash == SHA
    assert validation.test_config["extraHosts"] == [HOST]
    assert validation.deployment_context == {
        "provider": "vercel",
        "deploymentId": DEPLOYMENT,
        "deploymentUrl": f"http://{HOST}",
        "repository": "acme/wedsync",
        "ref": "main",
        "actor": "octocat",
        "pullRequest": 42,
    } | ({"target": "preview"} if "target" in validation.deployment_context else {})

    assert outbox.deliver_due().sent == 1
    [project_check] = vercel.project_checks.values()
    assert (project_check["name"], project_check["blocks"], project_check["isRerequestable"]) == (
        "perfgate",
        "deployment-alias",
        True,
    )
    check_run = the_run(vercel)
    assert (check_run["checkId"], check_run["deploymentId"], check_run["status"]) == (
        project_check["id"],
        DEPLOYMENT,
        "queued",
    )
    connection.refresh_from_db()
    assert connection.check_id == project_check["id"]
    assert VercelCheck.objects.get().vercel_id == check_run["id"]


def test_perfgates_project_check_is_made_once_for_every_deployment(client, connection, vercel):
    for number in (1, 2):
        deployment = vercel.add_deployment(target=None, url=HOST, ready_state="BUILDING")
        payload = event("deployment.preview.created", envelope=f"whk_created_{number}")
        payload["payload"]["deployment"]["id"] = deployment
        deliver(client, payload)
        outbox.deliver_due()
    assert len(vercel.project_checks) == 1
    assert len(vercel.check_runs) == 2
    made = [r for r in vercel.requests if r.method == "POST" and r.path.endswith("/checks")]
    assert len(made) == 1


def test_a_ready_deployment_is_tested_at_its_url_and_its_check_runs_then_succeeds_on_a_pass(
    client, connection, preview, vercel, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    deliver(client, event("deployment.preview.created"))
    result = deliver(client, event("deployment.ready", target=None))

    validation = the_validation()
    assert result == f"validation {validation.pk} released against http://{HOST}"
    assert (validation.held, validation.test_config["targetUrl"]) == (False, f"http://{HOST}")

    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    outbox.deliver_due()
    assert the_run(vercel)["status"] == "running"

    validation_evaluate(validation=claimed, results=make_results(p95=120.0), actor=ACTOR)
    outbox.deliver_due()
    check_run = the_run(vercel)
    assert (check_run["status"], check_run["conclusion"]) == ("completed", "succeeded")
    assert check_run["externalId"] == str(validation.pk)
    assert (
        check_run["externalUrl"]
        == f"https://perfgate.example.com/admin/gates/validation/{validation.pk}/change/"
    )
    assert check_run["conclusionText"].startswith("Passed")
    assert [body.get("status") for body in check_run["history"][1:]] == ["running", "completed"]


@pytest.mark.parametrize(
    ("setup", "conclusion"),
    [
        ("pass", "succeeded"),
        ("fail", "failed"),
        ("shadow fail", "neutral"),
        ("fail-open error", "neutral"),
        ("fail-closed error", "failed"),
    ],
)
def test_a_verdict_concludes_the_check(
    client, connection, preview, vercel, add_rule, staging, setup, conclusion
):
    add_rule("http_req_duration", threshold="p(95)<400")
    if setup == "shadow fail":
        Environment.objects.filter(pk=staging.pk).update(mode=Environment.Mode.SHADOW)
    if setup == "fail-closed error":
        Environment.objects.filter(pk=staging.pk).update(fail_closed=True)
    validation = ready_preview(client)
    if setup.endswith("error"):
        validation_record_error(validation=validation, reason="the target did not answer", actor=ACTOR)
    else:
        run(validation, p95=900.0 if "fail" in setup else 120.0)

    outbox.deliver_due()
    check_run = the_run(vercel)
    assert (check_run["status"], check_run["conclusion"]) == ("completed", conclusion)


def test_a_production_deployment_without_a_staging_pass_is_failed_at_once_and_never_succeeds(
    client, connection, vercel, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    vercel.add_deployment(deployment_id=DEPLOYMENT, url=HOST, ready_state="BUILDING", sha=SHA)
    deliver(client, event("deployment.created"))
    validation = the_validation()
    assert (validation.environment.name, validation.status) == ("production", "blocked")

    outbox.deliver_due()
    check_run = the_run(vercel)
    assert (check_run["status"], check_run["conclusion"]) == ("completed", "failed")
    assert "staging" in check_run["conclusionText"]
    assert deliver(client, event("deployment.ready")).startswith(f"validation {validation.pk} is not waiting")


def test_a_production_deployment_succeeds_only_with_a_pass(
    client, connection, vercel, add_rule, project, staging
):
    add_rule("http_req_duration", threshold="p(95)<400")
    staging_pass(project, staging)
    vercel.add_deployment(deployment_id=DEPLOYMENT, url=HOST, ready_state="BUILDING", sha=SHA)
    deliver(client, event("deployment.created"))
    deliver(client, event("deployment.ready"))
    validation = the_validation()
    assert (validation.environment.name, validation.status, validation.held) == (
        "production",
        "queued",
        False,
    )

    run(validation, p95=120.0)
    outbox.deliver_due()
    assert the_run(vercel)["conclusion"] == "succeeded"


def test_a_fail_open_error_in_production_is_neutral_never_succeeded(
    client, connection, vercel, add_rule, project, staging, production
):
    add_rule("http_req_duration", threshold="p(95)<400")
    Environment.objects.filter(pk=production.pk).update(fail_closed=False)
    staging_pass(project, staging)
    vercel.add_deployment(deployment_id=DEPLOYMENT, url=HOST, ready_state="BUILDING", sha=SHA)
    deliver(client, event("deployment.created"))
    deliver(client, event("deployment.ready"))
    validation = validation_record_error(validation=the_validation(), reason="k6 crashed", actor=ACTOR)
    assert (validation.status, validation.deployment_allowed) == ("failed", True)

    outbox.deliver_due()
    assert the_run(vercel)["conclusion"] == "neutral"


def test_the_legacy_api_registers_a_blocking_rerequestable_check_and_concludes_it(
    client, legacy, preview, vercel, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<100")
    deliver(client, event("deployment.preview.created"))
    outbox.deliver_due()
    [check] = vercel.checks.values()
    validation = the_validation()
    assert (check["name"], check["blocking"], check["rerequestable"], check["status"]) == (
        "perfgate",
        True,
        True,
        "registered",
    )
    assert check["externalId"] == str(validation.pk)
    assert check["detailsUrl"].endswith(f"/admin/gates/validation/{validation.pk}/change/")
    assert not vercel.project_checks and not vercel.check_runs

    deliver(client, event("deployment.ready", target=None))
    run(validation, p95=300.0)
    outbox.deliver_due()
    assert (check["status"], check["conclusion"]) == ("completed", "failed")
    assert [body.get("status") for body in check["history"][1:]] == ["running", "completed"]


def test_a_rerun_from_vercel_is_a_fresh_attempt_on_the_same_check(
    client, connection, preview, vercel, add_rule
):
    rule = add_rule("http_req_duration", threshold="p(95)<100")
    first = ready_preview(client)
    run(first, p95=300.0)
    outbox.deliver_due()
    check_run = the_run(vercel)
    assert check_run["conclusion"] == "failed"

    rule.threshold = "p(95)<400"  # ops fixed the limit; someone clicks "Rerun" on Vercel
    rule.save(update_fields=["threshold"])
    vercel.rerequest_check(check_run["id"])
    rerequest = event("deployment.check-rerequested")
    rerequest["payload"]["check"]["id"] = check_run["id"]
    result = deliver(client, rerequest)

    second = the_validation(f"vercel-{DEPLOYMENT}~attempt-2")
    assert "rerun queued" in result and str(second.pk) in result
    assert (second.status, second.held, second.test_config["targetUrl"]) == (
        "queued",
        False,
        f"http://{HOST}",
    )
    assert second.deployment_context == first.deployment_context
    first.refresh_from_db()
    assert first.status == "blocked", "the first attempt stays on record"

    run(second, p95=120.0)
    outbox.deliver_due()
    assert len(vercel.check_runs) == 1, "the same check, not a second one"
    assert (check_run["status"], check_run["conclusion"]) == ("completed", "succeeded")
    assert check_run["externalId"] == str(second.pk)


def test_a_rerun_named_by_perfgates_project_check_reruns_that_deployments_run(
    client, connection, preview, vercel
):
    run(ready_preview(client), p95=120.0)
    outbox.deliver_due()
    connection.refresh_from_db()
    rerequest = event("deployment.check-rerequested")
    rerequest["payload"]["check"]["id"] = connection.check_id
    assert "rerun queued" in deliver(client, rerequest)
    assert VercelCheck.objects.filter(vercel_id=the_run(vercel)["id"]).count() == 2


@pytest.mark.parametrize("name", ["deployment.canceled", "deployment.error"])
def test_a_canceled_or_failed_deployment_cancels_its_validation_and_check(
    client, connection, preview, vercel, name
):
    validation = ready_preview(client)
    result = deliver(client, event(name, target=None))

    validation.refresh_from_db()
    assert "1 validation(s) cancelled" in result
    assert not validation.is_pending
    assert f"Vercel sent {name}" in validation.status_reason
    outbox.deliver_due()
    assert (the_run(vercel)["status"], the_run(vercel)["conclusion"]) == ("completed", "canceled")
    assert deliver(client, event(name, target=None, envelope="whk_again")).endswith("no validation to cancel")


def test_a_deployment_url_no_load_test_may_hit_is_refused_and_its_check_failed_at_once(
    client, connection, vercel
):
    # The created event never came, and the URL is the cloud metadata address.
    vercel.add_deployment(deployment_id=DEPLOYMENT, target=None, url="169.254.169.254", ready_state="READY")
    payload = event("deployment.ready", target=None)
    payload["payload"]["deployment"]["url"] = "169.254.169.254"
    result = deliver(client, payload)
    assert result.startswith("refused:")
    assert Validation.objects.count() == 0
    outbox.deliver_due()
    assert (the_run(vercel)["status"], the_run(vercel)["conclusion"]) == ("completed", "failed")


def test_a_held_validation_whose_deployment_url_is_refused_ends_by_policy_with_the_reason(
    client, connection, vercel
):
    vercel.add_deployment(
        deployment_id=DEPLOYMENT, target=None, url="169.254.169.254", ready_state="BUILDING"
    )
    created = event("deployment.preview.created")
    created["payload"]["deployment"]["url"] = "169.254.169.254"
    deliver(client, created)
    ready = event("deployment.ready", target=None)
    ready["payload"]["deployment"]["url"] = "169.254.169.254"
    assert "deployment URL refused" in deliver(client, ready)

    validation = the_validation()
    assert (validation.verdict, validation.status) == ("error", "failed"), "staging is fail-open"
    assert "cannot be tested" in validation.status_reason
    outbox.deliver_due()
    assert the_run(vercel)["conclusion"] == "neutral"


def test_a_ready_deployment_whose_created_event_was_missed_is_validated_at_once(
    client, connection, preview, vercel
):
    result = deliver(client, event("deployment.ready", target=None))
    validation = the_validation()
    assert str(validation.pk) in result
    assert (validation.status, validation.held, validation.test_config["targetUrl"]) == (
        "queued",
        False,
        f"http://{HOST}",
    )


def test_without_a_vercel_token_the_deployment_is_still_validated_and_nothing_is_sent_to_vercel(
    client, project, preview, vercel
):
    project.vercel_project_id = PROJECT_ID
    project.save(update_fields=["vercel_project_id"])
    deliver(client, event("deployment.preview.created"))
    deliver(client, event("deployment.ready", target=None))
    assert the_validation().test_config["targetUrl"] == f"http://{HOST}"
    assert OutboundCall.objects.filter(provider="vercel").count() == 0
    assert vercel.requests == []


# --- Calling Vercel: teamId, rate limits, outages ---------------------------------------------------


def test_every_call_names_the_team_and_carries_the_token_and_no_call_is_refused(
    client, connection, preview, vercel, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    run(ready_preview(client))
    outbox.deliver_due()
    assert len(vercel.requests) >= 5
    assert all(r.query.get("teamId") == TEAM_ID for r in vercel.requests)
    assert {(r.token, r.status) for r in vercel.requests} == {("integration", 200)}


def test_a_personal_account_is_called_without_a_team(client, project, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    with FakeVercel(team_id=None) as personal:
        project.vercel_project_id = PROJECT_ID
        project.save(update_fields=["vercel_project_id"])
        VercelConnection.objects.create(project=project, token=personal.token, api_url=personal.url)
        personal.add_deployment(deployment_id=DEPLOYMENT, target=None, url=HOST, ready_state="BUILDING")
        run(ready_preview(client))
        assert outbox.deliver_due().failed == 0
        assert all("teamId" not in r.query for r in personal.requests)
        assert the_run(personal)["conclusion"] == "succeeded"


def test_a_429_is_retried_no_sooner_than_vercels_retry_after(client, connection, preview, vercel, caplog):
    deliver(client, event("deployment.preview.created"))
    vercel.fail_next(1, status=429, retry_after=7)

    report = outbox.deliver_due()

    assert (report.sent, report.retrying) == (0, 1)
    call = OutboundCall.objects.get(provider="vercel")
    assert call.next_attempt_at >= timezone.now() + timedelta(seconds=6)
    assert "HTTP 429" in call.last_error
    assert vercel.token not in call.last_error and vercel.token not in caplog.text
    assert outbox.deliver_due().sent == 0, "not before Vercel's time"

    OutboundCall.objects.filter(pk=call.pk).update(next_attempt_at=timezone.now())  # the seconds pass
    assert outbox.deliver_due().sent == 1
    assert the_run(vercel)["status"] == "queued"


def test_an_outage_holds_the_checks_calls_in_order_until_vercel_recovers(
    client, connection, preview, vercel, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    vercel.outage(503)
    run(ready_preview(client))

    report = outbox.deliver_due()
    assert (report.sent, report.retrying) == (0, 1), "the first call waits, the later ones wait behind it"
    assert not vercel.check_runs

    vercel.recover()
    OutboundCall.objects.filter(provider="vercel").update(next_attempt_at=timezone.now())
    assert outbox.deliver_due().sent == 3
    check_run = the_run(vercel)
    assert [body.get("status") for body in check_run["history"][1:]] == ["running", "completed"]
    assert check_run["conclusion"] == "succeeded"


def test_a_deleted_project_check_is_made_again(client, connection, preview, vercel):
    connection.check_id = "chk_deleted_by_someone"
    connection.save(update_fields=["check_id"])
    deliver(client, event("deployment.preview.created"))
    assert outbox.deliver_due().sent == 1
    [project_check] = vercel.project_checks.values()
    connection.refresh_from_db()
    assert connection.check_id == project_check["id"]
    assert the_run(vercel)["checkId"] == project_check["id"]


# --- Protected deployments, secrets ------------------------------------------------------------------


def test_the_protection_bypass_secret_goes_only_to_the_load_tests_of_vercel_deployments(
    client, connection, preview, project, staging
):
    connection.protection_bypass_secret = "bypass-0123456789abcdef0123456789ab"
    connection.save(update_fields=["protection_bypass_secret"])
    from_vercel = ready_preview(client)
    from_ci, _ = make_validation(
        project=project, environment=staging, build_id="ci-1", git_hash=SHA, actor=ACTOR
    )

    expected = {"x-vercel-protection-bypass": "bypass-0123456789abcdef0123456789ab"}
    assert protection_headers(from_vercel) == expected
    assert registry.headers_for(from_vercel) == expected
    assert protection_headers(from_ci) == {}

    connection.protection_bypass_secret = ""
    connection.save(update_fields=["protection_bypass_secret"])
    assert protection_headers(from_vercel) == {}


def test_vercel_secrets_are_encrypted_at_rest_and_rotate_to_the_newest_key(connection, settings, vercel):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.PERFGATE_SECRETS_KEYS = [old]
    connection.protection_bypass_secret = "bypass-secret-value"
    connection.token = vercel.token
    connection.save()

    def stored():
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT token, protection_bypass_secret FROM integrations_vercelconnection")
            return cursor.fetchone()

    assert all(value.startswith("fernet:") for value in stored())
    assert vercel.token not in stored()[0] and "bypass-secret-value" not in stored()[1]

    settings.PERFGATE_SECRETS_KEYS = [new, old]
    output = io.StringIO()
    call_command("rotate_secrets", stdout=output)
    assert "Re-encrypted 2 secret(s)" in output.getvalue()
    settings.PERFGATE_SECRETS_KEYS = [new]
    assert Fernet(new.encode()).decrypt(stored()[0][7:].encode()).decode() == vercel.token
    assert VercelConnection.objects.get().protection_bypass_secret == "bypass-secret-value"


ADMIN_FORM = {
    "team_id": TEAM_ID,
    "checks_api": "project",
    "production_environment": "production",
    "preview_environment": "staging",
    "scenario": "",
    "api_url": "",
}


def test_the_admin_takes_vercel_secrets_and_never_shows_them_back_or_audits_them(
    client, admin_user, project, vercel
):
    project.vercel_project_id = PROJECT_ID
    project.save(update_fields=["vercel_project_id"])
    client.force_login(admin_user)
    response = client.post(
        "/admin/integrations/vercelconnection/add/",
        {
            **ADMIN_FORM,
            "project": project.pk,
            "token": vercel.token,
            "protection_bypass_secret": "bypass-abc",
        },
    )
    assert response.status_code == 302, response.content[:3000]
    connection = VercelConnection.objects.get()
    page = client.get(f"/admin/integrations/vercelconnection/{connection.pk}/change/").content.decode()
    assert vercel.token not in page and "bypass-abc" not in page

    response = client.post(
        f"/admin/integrations/vercelconnection/{connection.pk}/change/",
        {
            **ADMIN_FORM,
            "project": project.pk,
            "token": "",
            "protection_bypass_secret": "",
            "checks_api": "legacy",
        },
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert (connection.token, connection.protection_bypass_secret) == (vercel.token, "bypass-abc")
    assert connection.checks_api == "legacy"

    events = AuditEvent.objects.filter(action__startswith="config.vercelconnection").order_by("id")
    assert [e.action for e in events] == [
        "config.vercelconnection.created",
        "config.vercelconnection.updated",
    ]
    for audited in events:
        assert vercel.token not in str(audited.data) and "bypass-abc" not in str(audited.data)
        assert audited.data["after"]["token_set"] is True
    assert events.last().data["before"]["checks_api"] == "project"


def test_vercel_checks_are_a_read_only_record_in_the_admin(client, admin_user, connection, preview):
    deliver(client, event("deployment.preview.created"))
    client.force_login(admin_user)
    check = VercelCheck.objects.get()
    assert client.get("/admin/integrations/vercelcheck/").status_code == 200
    assert client.get("/admin/integrations/vercelcheck/add/").status_code == 403
    page = client.get(f"/admin/integrations/vercelcheck/{check.pk}/change/")
    assert page.status_code == 200 and DEPLOYMENT in page.content.decode()
