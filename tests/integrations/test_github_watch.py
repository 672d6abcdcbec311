"""The GitHub side of watching production: a signed ``deployment_status`` of success starts the
watch of the validation that let the commit out, and an approved rollback is carried out by the
environment's rollback workflow on the fake GitHub, dispatched once and followed to its end."""

from __future__ import annotations

import io
import json
import time

import pytest
from django.utils import timezone

from gates import registry
from gates.audit import SYSTEM, Actor
from gates.models import AuditEvent, Notice, Probe, Rollback, Scenario, Validation, Watch
from gates.probes import ProbeResult
from gates.registry import Change
from gates.services import validation_block, validation_request
from gates.services.rollbacks import rollback_decide
from gates.services.watches import probe_record, watch_start
from integrations import outbox
from integrations.models import OutboundCall, WebhookDelivery
from integrations.webhooks import webhook_process
from tests.factories import PASSING_SUMMARY
from tests.integrations.conftest import fixture_payload, send_webhook

REPOSITORY = "Codertocat/Hello-World"
FIXTURE_SHA = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
FIXTURE_DEPLOYMENT = 145988746
CI = Actor("token", "ci")
# The rollback workflow's `on.workflow_dispatch.inputs` (name → required), as a repository
# following docs would declare them.
ROLLBACK_INPUTS = {
    "environment": True,
    "target_sha": True,
    "target_deployment": False,
    "rolled_back_sha": True,
    "reason": False,
    "correlation_id": True,
}
P95 = "http_req_duration|p(95)"


@pytest.fixture
def watched(project, production):
    """Production of a project on the fixtures' repository, watched by a probe scenario, rolled
    back automatically through the rollback.yml workflow after more than one failed probe."""
    project.repository = REPOSITORY
    project.allowed_hosts = [*project.allowed_hosts, "wedsync.example", "green.wedsync.example"]
    project.save(update_fields=["repository", "allowed_hosts"])
    probe = Scenario.objects.create(
        project=project,
        name="probe",
        script_text="export default function () {}",
        target_url="http://127.0.0.1:8001",
        vus=2,
        duration_seconds=5,
    )
    production.watch_scenario = probe
    production.watch_initial_delay_seconds = 0
    production.watch_interval_seconds = 10
    production.watch_window_seconds = 600
    production.watch_failure_limit = 1
    production.watch_consecutive = True
    production.auto_rollback = True
    production.rollback_workflow = "rollback.yml"
    production.save()
    return production


@pytest.fixture(autouse=True)
def _quick_polls(settings):
    settings.PERFGATE_ROLLBACK_POLL_SECONDS = 0.05
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 0.05
    settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS = 5


def passed(project, environment, build_id, *, sha, deployment_id=None) -> Validation:
    """A production validation that passed (after its staging pass), asked for the way CI asks,
    with uploaded results."""
    staging = project.environments.get(name="staging")
    context = {"provider": "github", "deploymentId": deployment_id} if deployment_id else {}
    for env, suffix, ctx in ((staging, "~staging", {}), (environment, "", context)):
        validation, _ = validation_request(
            project=project,
            environment=env,
            build_id=build_id + suffix,
            git_hash=sha,
            actor=CI,
            test_config={"targetUrl": "http://127.0.0.1:8001"},
            deployment_context=ctx,
            results=io.BytesIO(PASSING_SUMMARY),
            results_format="k6-summary-export",
        )
    assert validation.status == Validation.Status.PASSED
    return validation


def deployment_status(**changes) -> dict:
    """GitHub's example deployment_status payload, with the deployment served at a URL."""
    payload = fixture_payload("deployment_status.created.json")
    payload["deployment_status"]["environment_url"] = "https://wedsync.example/"
    for path, value in changes.items():
        section, key = path.split("__")
        payload[section][key] = value
    return payload


def deliver_status(client, payload: dict, *, delivery: str | None = None) -> WebhookDelivery:
    response = send_webhook(client, "deployment_status", json.dumps(payload).encode(), delivery=delivery)
    assert response.status_code == 202, response.content
    stored = WebhookDelivery.objects.filter(event="deployment_status").latest("received_at")
    if response.json()["status"] == "queued":
        webhook_process(stored.pk)
        stored.refresh_from_db()
    return stored


# --- deployment_status starts a watch ------------------------------------------------------------


def test_a_signed_success_deployment_status_starts_the_watch_of_the_validation_of_that_deployment(
    client, project, watched
):
    made_for_it = passed(project, watched, "b-1", sha=FIXTURE_SHA, deployment_id=FIXTURE_DEPLOYMENT)
    passed(project, watched, "b-1-again", sha=FIXTURE_SHA, deployment_id=99)  # newer, another deployment

    stored = deliver_status(client, deployment_status())

    assert stored.state == WebhookDelivery.State.PROCESSED
    assert stored.result.startswith(f"deployment {FIXTURE_DEPLOYMENT}: watch started")
    [watch] = Watch.objects.all()
    assert watch.validation == made_for_it, "the validation made for this deployment, not the newest"
    assert (watch.source, watch.deployment_id) == (Watch.Source.GITHUB, str(FIXTURE_DEPLOYMENT))
    assert watch.target_url == "https://wedsync.example/"
    assert watch.state == Watch.State.WAITING and watch.started_by.endswith("Codertocat")
    assert AuditEvent.objects.filter(action="watch.started").count() == 1


def test_a_deployment_url_off_the_allowlist_is_not_watched(client, project, watched):
    passed(project, watched, "b-1", sha=FIXTURE_SHA, deployment_id=FIXTURE_DEPLOYMENT)
    payload = deployment_status()
    payload["deployment_status"]["environment_url"] = "https://elsewhere.example/"

    stored = deliver_status(client, payload)

    assert "not watched: deploymentUrl refused: host 'elsewhere.example'" in stored.result
    assert not Watch.objects.exists()


def test_without_an_environment_url_the_deployment_payload_names_what_is_probed(client, project, watched):
    passed(project, watched, "b-1", sha=FIXTURE_SHA)
    payload = deployment_status()
    del payload["deployment_status"]["environment_url"]
    payload["deployment"]["payload"] = {"web_url": "https://green.wedsync.example"}

    deliver_status(client, payload)

    assert Watch.objects.get().target_url == "https://green.wedsync.example"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"deployment_status__state": "failure"}, "is 'failure', not a success: nothing to watch"),
        ({"deployment_status__state": "in_progress"}, "is 'in_progress', not a success"),
        (
            {"deployment_status__environment": "qa", "deployment__environment": "qa"},
            "perfgate has no environment 'qa' for project wedsync-web: nothing watched",
        ),
        ({"deployment_status__environment": "staging"}, "environment staging has no watch scenario"),
        ({"deployment__sha": "0" * 40}, "no validation of commit 000000000000 in production"),
    ],
)
def test_a_deployment_status_that_is_not_a_watched_success_starts_nothing_and_says_why(
    client, project, watched, changes, why
):
    passed(project, watched, "b-1", sha=FIXTURE_SHA, deployment_id=FIXTURE_DEPLOYMENT)

    stored = deliver_status(client, deployment_status(**changes))

    assert stored.state == WebhookDelivery.State.PROCESSED
    assert why in stored.result
    assert not Watch.objects.exists()


def test_a_deployment_perfgate_blocked_is_not_watched(client, project, watched):
    validation = passed(project, watched, "b-1", sha=FIXTURE_SHA, deployment_id=FIXTURE_DEPLOYMENT)
    validation_block(validation=validation, reason="p95 too slow", actor=Actor("user", "olivia-ops"))

    stored = deliver_status(client, deployment_status())

    assert f"validation {validation.pk} of commit {FIXTURE_SHA[:12]} is blocked" in stored.result
    assert not Watch.objects.exists()


def test_a_repeated_delivery_or_a_second_success_of_the_same_deployment_makes_one_watch(
    client, project, watched
):
    passed(project, watched, "b-1", sha=FIXTURE_SHA, deployment_id=FIXTURE_DEPLOYMENT)
    payload = deployment_status(deployment_status__environment="Production")  # GitHub's case

    first = deliver_status(client, payload, delivery="d-1")
    replay = send_webhook(client, "deployment_status", json.dumps(payload).encode(), delivery="d-1")
    second = deliver_status(client, payload, delivery="d-2")

    assert replay.json()["status"] == "duplicate"
    assert "watch started" in first.result and "already watched" in second.result
    assert Watch.objects.count() == 1
    assert AuditEvent.objects.filter(action="watch.started").count() == 1


# --- an approved rollback runs the rollback workflow ---------------------------------------------


def degrade(watch: Watch) -> Watch:
    """Two failed probes in a row against failureLimit 1: degraded, and (autoRollback) the
    rollback is approved and announced in the same transaction."""
    for _ in range(2):
        probe_record(
            watch=watch,
            result=ProbeResult(outcome="failure", verdict="fail", reason="p95 doubled", values={P95: 400.0}),
            trigger=Probe.Trigger.SCHEDULE,
            target_url=watch.target_url,
            started_at=timezone.now(),
        )
    watch.refresh_from_db()
    assert watch.state == Watch.State.DEGRADED
    return watch


@pytest.fixture
def deployments(project, watched):
    """The deployment before (passed, watched, healthy until replaced) and the one now serving
    production: (earlier validation, current watch)."""
    earlier = passed(project, watched, "b-0", sha="a" * 40, deployment_id=700)
    watch_start(validation=earlier, actor=CI, source=Watch.Source.GITHUB, deployment_id="700")
    current = passed(project, watched, "b-1", sha="b" * 40, deployment_id=701)
    watch = watch_start(validation=current, actor=CI, source=Watch.Source.GITHUB, deployment_id="701")
    return earlier, watch


def rollback_calls():
    return OutboundCall.objects.filter(kind="rollback_workflow")


def dispatch_requests(fake):
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/dispatches")]


def test_an_approved_rollback_dispatches_the_rollback_workflow_and_follows_it_to_success(
    project, watched, deployments, app_connection, fake
):
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    earlier, watch = deployments

    watch = degrade(watch)

    rollback = watch.rollback
    assert (rollback.state, rollback.via) == (Rollback.State.APPROVED, "github")
    [call] = rollback_calls()
    outbox.deliver_due()
    [dispatch] = fake.dispatches
    assert (dispatch["repo"], dispatch["workflow"], dispatch["ref"]) == (REPOSITORY, "rollback.yml", "main")
    inputs = dispatch["inputs"]
    assert {k: v for k, v in inputs.items() if k not in ("reason", "correlation_id")} == {
        "environment": "production",
        "target_sha": "a" * 40,
        "target_deployment": "700",
        "rolled_back_sha": "b" * 40,
    }
    assert "2 failed probes in a row" in inputs["reason"] and len(inputs["reason"]) <= 200
    assert all(isinstance(value, str) for value in inputs.values())
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.RUNNING, "dispatched; the run is queued"
    run_url = f"https://github.com/{REPOSITORY}/actions/runs/{dispatch['run_id']}"
    assert run_url in rollback.detail
    call.refresh_from_db()
    assert call.state == OutboundCall.State.PENDING and call.progress["run_id"] == dispatch["run_id"]

    fake.complete_run(dispatch["run_id"], conclusion="success")
    outbox.deliver_due(wait_seconds=5)

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED
    assert run_url in rollback.detail and "ended success" in rollback.detail
    assert f"build {earlier.build_id}" in rollback.detail
    call.refresh_from_db()
    assert call.state == OutboundCall.State.DELIVERED
    assert len(dispatch_requests(fake)) == 1
    assert list(
        AuditEvent.objects.filter(action__startswith="rollback.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["rollback.approved", "rollback.running", "rollback.succeeded"]
    assert Notice.objects.filter(watch=watch, kind="rollback_succeeded", level="info").exists()


def test_a_rollback_workflow_that_fails_fails_the_rollback_loudly(
    project, watched, deployments, app_connection, fake
):
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    _, watch = deployments
    rollback = degrade(watch).rollback
    outbox.deliver_due()
    [dispatch] = fake.dispatches

    fake.complete_run(dispatch["run_id"], conclusion="failure")
    outbox.deliver_due(wait_seconds=5)

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.FAILED
    assert "ended failure" in rollback.detail and str(dispatch["run_id"]) in rollback.detail
    notice = Notice.objects.get(watch=watch, kind="rollback_failed")
    assert notice.level == Notice.Level.ERROR and "rollback FAILED" in notice.title
    assert len(dispatch_requests(fake)) == 1, "a failed rollback is not tried again"


def test_a_dispatch_github_refuses_fails_the_rollback_with_githubs_message_and_is_not_retried(
    project, watched, deployments, app_connection, fake
):
    fake.declare_workflow("rollback.yml", {k: v for k, v in ROLLBACK_INPUTS.items() if k != "reason"})
    _, watch = deployments
    rollback = degrade(watch).rollback

    outbox.deliver_due()
    outbox.deliver_due()

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.FAILED
    assert 'HTTP 422 Unexpected inputs provided: ["reason"]' in rollback.detail
    assert "roll back by hand now" in rollback.detail
    [call] = rollback_calls()
    assert call.state == OutboundCall.State.FAILED
    assert [r.status for r in dispatch_requests(fake)] == [422]
    assert fake.dispatches == []
    assert Notice.objects.filter(watch=watch, kind="rollback_failed", level="error").exists()


def test_announcing_a_rollback_again_dispatches_the_workflow_once(
    project, watched, deployments, app_connection, fake
):
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    _, watch = deployments
    watch = degrade(watch)
    calls_before = OutboundCall.objects.count()

    for _ in range(2):
        assert rollback_decide(watch=watch, trigger=Rollback.Trigger.ALERT, reason="again", actor=SYSTEM).pk
        registry.announce(watch.validation, Change.ROLLBACK)
    outbox.deliver_due()

    assert OutboundCall.objects.count() == calls_before, "no second workflow, no status for a rollback"
    assert rollback_calls().count() == 1
    assert len(fake.dispatches) == 1


def test_polls_of_a_running_workflow_are_no_failures_but_failed_looks_end_it_without_a_second_dispatch(
    project, watched, deployments, app_connection, fake, settings
):
    settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS = 2
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    _, watch = deployments
    rollback = degrade(watch).rollback

    outbox.deliver_due()
    [dispatch] = fake.dispatches

    def looks():
        return [r for r in fake.requests if r.path.endswith(f"/actions/runs/{dispatch['run_id']}")]

    deadline = time.monotonic() + 5
    while len(looks()) <= settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS and time.monotonic() < deadline:
        outbox.deliver_due(wait_seconds=0.2)  # the run stays queued: it is looked at again and again

    [call] = rollback_calls()
    assert len(looks()) > settings.PERFGATE_ROLLBACK_MAX_ATTEMPTS
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.RUNNING
    assert call.state == OutboundCall.State.PENDING

    fake.outage(502)
    outbox.deliver_due(wait_seconds=3)

    rollback.refresh_from_db()
    call.refresh_from_db()
    assert rollback.state == Rollback.State.FAILED
    assert "GitHub gave no answer in 2 attempts" in rollback.detail
    assert "The workflow was dispatched: look at https://github.com/" in rollback.detail
    assert call.state == OutboundCall.State.FAILED and call.progress["failures"] == 2
    fake.recover()
    outbox.deliver_due()
    assert len(dispatch_requests(fake)) == 1, "never dispatched again after it went through"


def test_a_dispatch_whose_answer_was_lost_is_found_and_not_sent_again(
    project, watched, deployments, token_connection, fake, settings
):
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    _, watch = deployments
    rollback = degrade(watch).rollback
    settings.GITHUB_TIMEOUT_SECONDS = 0.3
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 1  # the next attempt waits for the slow answer
    fake.slow(0.8)

    outbox.deliver_due()  # the dispatch goes through, but its answer comes too late

    deadline = time.monotonic() + 5
    while not fake.dispatches and time.monotonic() < deadline:
        time.sleep(0.05)
    fake.slow(None)
    [call] = rollback_calls()
    call.refresh_from_db()
    assert call.progress == {"dispatch_tried": True, "failures": 1}
    time.sleep(max(0.0, (call.next_attempt_at - timezone.now()).total_seconds()) + 0.05)

    outbox.deliver_due()

    assert len(dispatch_requests(fake)) == 1
    call.refresh_from_db()
    assert call.progress["run_id"] == fake.dispatches[0]["run_id"]
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.RUNNING


def test_a_workflow_that_outlives_the_timeout_fails_the_rollback_instead_of_being_followed_forever(
    project, watched, deployments, app_connection, fake, settings
):
    settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES = 0
    fake.declare_workflow("rollback.yml", ROLLBACK_INPUTS)
    _, watch = deployments
    rollback = degrade(watch).rollback

    outbox.deliver_due()

    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.FAILED
    assert "did not finish within 0 minutes" in rollback.detail
    assert len(fake.dispatches) == 1


def test_without_a_rollback_workflow_github_does_not_take_the_rollback(
    project, watched, deployments, app_connection, fake
):
    watched.rollback_workflow = ""
    watched.save(update_fields=["rollback_workflow"])
    _, watch = deployments

    rollback = degrade(watch).rollback

    assert rollback.state == Rollback.State.FAILED and rollback.via == ""
    assert "No integration can carry this rollback out" in rollback.detail
    assert not rollback_calls().exists()
