"""Rolling production back through Vercel: a watched deployment degrades, the rollback is decided
by the gate, and the outbox asks the fake Vercel to roll back to the newest earlier deployment
perfgate passed, then follows the project's alias request to its end. Also: the promotion that
starts the watch."""

from __future__ import annotations

import io
import time

import pytest
from django.utils import timezone

from gates.audit import SYSTEM, Actor
from gates.models import Environment, Rollback, Scenario, Validation, Watch
from gates.services import validation_claim, validation_evaluate, validation_request
from gates.services.rollbacks import rollback_decide
from gates.services.watches import watch_start
from integrations import outbox
from integrations.models import OutboundCall, VercelConnection, WebhookDelivery
from integrations.vercel import delivery
from integrations.webhooks import webhook_process
from tests.factories import PASSING_SUMMARY, make_results, make_validation
from tests.fake_vercel import PROJECT_ID, TEAM_ID, FakeVercel, load_webhook_fixture, signed_webhook

SECRET = "vercel-integration-client-secret"
ACTOR = Actor("user", "olivia-ops")


@pytest.fixture(autouse=True)
def _vercel_settings(settings):
    settings.VERCEL_WEBHOOK_SECRET = SECRET
    settings.VERCEL_TIMEOUT_SECONDS = 2
    settings.PERFGATE_VERCEL_DEPLOYMENT_SCHEME = "http"
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 0.05
    settings.PERFGATE_ROLLBACK_POLL_SECONDS = 0.05
    settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS = 5


@pytest.fixture
def vercel():
    with FakeVercel() as server:
        yield server


@pytest.fixture
def watched_production(project, production, scenario):
    """Production watched after each deploy with a gentle probe, rolled back automatically."""
    probe = Scenario.objects.create(
        project=project, name="probe", script_text=scenario.script_text, target_url=scenario.target_url, vus=1
    )
    Environment.objects.filter(pk=production.pk).update(watch_scenario=probe, auto_rollback=True)
    production.refresh_from_db()
    return production


@pytest.fixture
def connection(project, vercel, watched_production):
    project.vercel_project_id = PROJECT_ID
    project.save(update_fields=["vercel_project_id"])
    return VercelConnection.objects.create(
        project=project, team_id=TEAM_ID, token=vercel.token, api_url=vercel.url
    )


def promoted(project, production, vercel, *, sha: str, deployment_id: str | None) -> Watch:
    """A production deployment perfgate passed, serving production on the fake, and watched."""
    staging = project.environments.get(name="staging")
    validation_request(
        project=project,
        environment=staging,
        build_id=f"ci-{sha[:8]}",
        git_hash=sha,
        actor=ACTOR,
        results=io.BytesIO(PASSING_SUMMARY),
        results_format="k6-summary-export",
    )
    if deployment_id:
        vercel.add_deployment(deployment_id=deployment_id, url=f"{deployment_id}.vercel.app", sha=sha)
    context = {"provider": "vercel", "deploymentId": deployment_id} if deployment_id else {}
    validation, _ = make_validation(
        project=project,
        environment=production,
        build_id=f"vercel-{deployment_id or sha[:8]}",
        git_hash=sha,
        actor=ACTOR,
        deployment_context=context,
    )
    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    validation = validation_evaluate(validation=claimed, results=make_results(p95=120.0), actor=ACTOR)
    assert validation.status == "passed"
    return watch_start(
        validation=validation, actor=ACTOR, source="vercel", deployment_url="http://127.0.0.1:8001"
    )


@pytest.fixture
def degraded(project, watched_production, vercel, connection) -> Rollback:
    """dpl_good was promoted and watched, then dpl_slow replaced it and degraded: the rollback to
    dpl_good is decided (automatically) and recorded in the outbox."""
    promoted(project, watched_production, vercel, sha="a" * 40, deployment_id="dpl_good")
    watch = promoted(project, watched_production, vercel, sha="b" * 40, deployment_id="dpl_slow")
    assert vercel.production_deployment() == "dpl_slow"
    rollback = rollback_decide(watch=watch, trigger="watch", reason="p(95) doubled in 3 probes", actor=SYSTEM)
    assert (rollback.state, rollback.target_validation.build_id) == ("approved", "vercel-dpl_good")
    return rollback


def rollback_requests(vercel):
    return [r for r in vercel.requests if r.method == "POST" and "/rollback/" in r.path]


def test_an_approved_rollback_is_sent_to_vercel_and_its_alias_request_followed_to_success(degraded, vercel):
    degraded.refresh_from_db()
    assert degraded.via == "vercel"
    [call] = OutboundCall.objects.filter(provider="vercel", kind="rollback")
    assert call.payload["deployment_id"] == "dpl_good"

    outbox.deliver_due(wait_seconds=5)

    degraded.refresh_from_db()
    assert degraded.state == "succeeded", degraded.detail
    assert "dpl_good" in degraded.detail
    assert "automatic production domain assignment" in degraded.detail
    assert "vercel promote" in degraded.detail and "Undo rollback" in degraded.detail
    assert vercel.production_deployment() == "dpl_good"
    assert vercel.projects[PROJECT_ID]["autoAssignCustomDomains"] is False
    [sent] = rollback_requests(vercel)
    assert sent.path == f"/v1/projects/{PROJECT_ID}/rollback/dpl_good"
    assert all(r.query.get("teamId") == TEAM_ID for r in vercel.requests)
    call.refresh_from_db()
    assert call.state == "delivered" and call.progress["requested"] is True
    assert "tries" not in call.progress, "looking at an alias request under way is no failed try"
    assert call.attempts == 1, "looking at an alias request under way is no failed attempt"
    assert len([r for r in vercel.requests if r.method == "GET"]) == 3, (
        "sent once, then looked at until it ended"
    )


def test_a_rollback_whose_alias_request_fails_is_failed_loudly_and_not_retried(degraded, vercel):
    vercel.alias_outcome = "failed"

    outbox.deliver_due(wait_seconds=5)

    degraded.refresh_from_db()
    assert degraded.state == "failed"
    assert "ended 'failed'" in degraded.detail and "check Vercel now" in degraded.detail
    assert vercel.production_deployment() == "dpl_slow"
    call = OutboundCall.objects.get(kind="rollback")
    assert call.state == "failed"
    assert outbox.deliver_due(wait_seconds=1).sent == 0
    assert len(rollback_requests(vercel)) == 1


def test_a_rollback_vercel_refuses_is_failed_with_the_refusal(degraded, vercel):
    vercel.set_ready_state("dpl_good", "DELETED")  # someone removed the deployment to go back to

    report = outbox.deliver_due(wait_seconds=2)

    assert (report.sent, report.failed) == (0, 1)
    degraded.refresh_from_db()
    assert degraded.state == "failed"
    assert "Vercel refused the rollback" in degraded.detail and "HTTP 422" in degraded.detail
    assert vercel.token not in degraded.detail
    assert vercel.production_deployment() == "dpl_slow"


def test_an_alias_request_that_never_ends_is_given_up_in_time(degraded, vercel, settings, monkeypatch):
    monkeypatch.setattr(delivery, "FOLLOW_SECONDS", 1)
    vercel.alias_polls = 1000  # the alias request never ends

    outbox.deliver_due(wait_seconds=5)

    degraded.refresh_from_db()
    assert degraded.state == "failed"
    assert "did not finish within" in degraded.detail
    call = OutboundCall.objects.get(kind="rollback")
    assert call.state == "failed"
    assert len(rollback_requests(vercel)) == 1, "the rollback was asked for once; the retries only looked"


def test_a_rollback_vercel_keeps_failing_to_take_is_given_up_after_the_allowed_attempts(
    degraded, vercel, settings
):
    settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS = 3
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 0.05
    vercel.outage(503)

    outbox.deliver_due(wait_seconds=5)

    degraded.refresh_from_db()
    assert degraded.state == "failed"
    assert "no outcome after 3 attempts" in degraded.detail
    call = OutboundCall.objects.get(kind="rollback")
    assert (call.state, call.progress["tries"]) == ("failed", 3)


def test_a_rollback_whose_answer_was_lost_is_not_sent_twice(degraded, vercel, settings):
    settings.VERCEL_TIMEOUT_SECONDS = 0.3
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 60  # one attempt now, the next one later
    vercel.slow(0.8)  # Vercel rolls back, but its answer comes too late
    outbox.deliver_due()
    call = OutboundCall.objects.get(kind="rollback")
    assert (call.state, call.progress) == ("pending", {"tries": 1})
    deadline = time.monotonic() + 5
    while not rollback_requests(vercel) and time.monotonic() < deadline:
        time.sleep(0.05)  # Vercel finishes the rollback it was asked for
    assert [r.status for r in rollback_requests(vercel)] == [201]
    vercel.slow(None)
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 0.05
    OutboundCall.objects.filter(pk=call.pk).update(next_attempt_at=timezone.now())

    outbox.deliver_due(wait_seconds=5)

    degraded.refresh_from_db()
    assert degraded.state == "succeeded", degraded.detail
    assert [r.status for r in rollback_requests(vercel)] == [201, 409]
    assert vercel.production_deployment() == "dpl_good"


def test_a_5xx_on_the_rollback_is_retried_by_the_outbox(degraded, vercel):
    vercel.fail_next(1, status=502)
    outbox.deliver_due(wait_seconds=5)
    degraded.refresh_from_db()
    assert degraded.state == "succeeded", degraded.detail
    assert [r.status for r in rollback_requests(vercel)] == [502, 201]


def test_a_rollback_vercel_cannot_carry_out_is_left_to_other_integrations(
    project, watched_production, vercel, connection
):
    promoted(project, watched_production, vercel, sha="a" * 40, deployment_id=None)
    watch = promoted(project, watched_production, vercel, sha="b" * 40, deployment_id="dpl_slow")
    rollback = rollback_decide(watch=watch, trigger="watch", reason="slow", actor=SYSTEM)
    rollback.refresh_from_db()
    assert rollback.via != "vercel"
    assert not OutboundCall.objects.filter(kind="rollback").exists()
    assert rollback.state == "failed" and "No integration can carry this rollback out" in rollback.detail


# --- deployment.promoted starts the watch --------------------------------------------------------


def deliver(client, payload: dict) -> str:
    body, headers = signed_webhook(payload, SECRET)
    response = client.post(
        "/api/ci-cd/webhooks/vercel",
        data=body,
        content_type="application/json",
        HTTP_X_VERCEL_SIGNATURE=headers["x-vercel-signature"],
    )
    assert response.status_code == 202, response.content
    return webhook_process(WebhookDelivery.objects.get(delivery_id=payload["id"]).pk)


def test_a_promoted_deployment_perfgate_passed_is_watched(client, project, watched_production, connection):
    deployment = "dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs"
    validation, _ = make_validation(
        project=project,
        environment=watched_production,
        build_id=f"vercel-{deployment}",
        git_hash="3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e",
        actor=ACTOR,
        deployment_context={"provider": "vercel", "deploymentId": deployment},
        staging_pass=True,
    )
    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    validation_evaluate(validation=claimed, results=make_results(p95=120.0), actor=ACTOR)

    result = deliver(client, load_webhook_fixture("deployment.promoted"))

    watch = Watch.objects.get()
    assert result == f"watch {watch.pk} of validation {validation.pk} ({watch.state})"
    assert (watch.source, watch.deployment_id) == ("vercel", deployment)
    assert watch.target_url == "http://wedsync-web-k3j9x2mq7-acme.vercel.app"
    assert "wedsync-web-k3j9x2mq7-acme.vercel.app" in watch.extra_hosts
    assert deliver(client, {**load_webhook_fixture("deployment.promoted"), "id": "whk_again"}) == result
    assert Watch.objects.count() == 1


def test_a_promoted_deployment_perfgate_blocked_is_not_watched(
    client, project, watched_production, connection
):
    deployment = "dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs"
    validation, _ = make_validation(  # production without a staging pass: refused
        project=project,
        environment=watched_production,
        build_id=f"vercel-{deployment}",
        git_hash="3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e",
        actor=ACTOR,
        deployment_context={"provider": "vercel", "deploymentId": deployment},
    )
    assert Validation.objects.get(pk=validation.pk).status == "blocked"
    result = deliver(client, load_webhook_fixture("deployment.promoted"))
    assert result.startswith("not watched:") and "only a deployment perfgate let out is watched" in result
    assert Watch.objects.count() == 0


def test_a_promoted_deployment_perfgate_never_saw_is_recorded_with_the_reason(client, connection):
    result = deliver(client, load_webhook_fixture("deployment.promoted"))
    assert result == "deployment dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs has no production validation to watch"
