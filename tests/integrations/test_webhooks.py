"""GitHub webhooks: GitHub's own example payloads, signed and sent to the endpoint, then
processed as the task would, with the fake GitHub answering perfgate's calls."""

from __future__ import annotations

import json
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from gates import execution
from gates.audit import Actor
from gates.models import Scenario, Validation
from gates.services import validation_claim, validation_evaluate
from integrations import outbox, webhooks
from integrations.github.workflows import WorkflowFailed, extract_artifact
from integrations.models import DeploymentReview, WebhookDelivery
from integrations.webhooks import signature_valid, webhook_process
from tests.factories import make_results, make_validation
from tests.integrations.conftest import fixture_payload, send_webhook, signature, zip_of
from tests.qcluster import wait_for

ACTOR = Actor("user", "olivia-ops")
LOCUST_STATS = (
    Path(__file__).resolve().parents[1] / "fixtures" / "results" / "locust_stats.csv"
).read_bytes()


def test_githubs_published_signature_test_vector_passes():
    secret = "It's a Secret to Everybody"
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert signature_valid(secret, b"Hello, World!", header)
    assert not signature_valid(secret, b"Hello, World?", header)
    assert not signature_valid(secret, b"Hello, World!", header.replace("sha256=", "sha1="))


@pytest.mark.parametrize("sign", [None, "sha256=" + "0" * 64, "sha1=deadbeef"])
def test_a_missing_or_bad_signature_is_401_and_nothing_is_stored(client, db, sign):
    body = json.dumps(fixture_payload("ping.payload.json")).encode()
    response = send_webhook(client, "ping", body, sign=sign)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert WebhookDelivery.objects.count() == 0


def test_a_body_changed_after_signing_is_refused(client, db):
    text = json.dumps(fixture_payload("ping.payload.json"))
    response = client.post(
        "/api/ci-cd/webhooks/github",
        data=text.replace("Hello-World", "Hello-Mallory").encode(),
        content_type="application/json",
        HTTP_X_GITHUB_EVENT="ping",
        HTTP_X_GITHUB_DELIVERY=str(uuid.uuid4()),
        HTTP_X_HUB_SIGNATURE_256=signature(text.encode()),
    )
    assert response.status_code == 401
    assert WebhookDelivery.objects.count() == 0


def test_ping_and_events_perfgate_does_not_use_are_acknowledged_and_ignored(client, db):
    ping = send_webhook(client, "ping", json.dumps(fixture_payload("ping.payload.json")).encode())
    pr = send_webhook(
        client, "pull_request", json.dumps(fixture_payload("pull_request.opened.json")).encode()
    )
    assert (ping.status_code, ping.json()["status"]) == (202, "ignored")
    assert (pr.status_code, pr.json()["status"]) == (202, "ignored")
    assert set(WebhookDelivery.objects.values_list("state", flat=True)) == {"ignored"}


def test_a_replayed_delivery_is_acknowledged_once_and_processed_once(client, project, app_connection, fake):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    body = _protection_rule_body(fake, run_id=5001)
    delivery = str(uuid.uuid4())
    first = send_webhook(client, "deployment_protection_rule", body, delivery=delivery)
    replay = send_webhook(client, "deployment_protection_rule", body, delivery=delivery)
    assert (first.json()["status"], replay.json()["status"]) == ("queued", "duplicate")
    [stored] = WebhookDelivery.objects.all()
    webhook_process(stored.pk)
    assert webhook_process(stored.pk) == "already processed"
    assert DeploymentReview.objects.count() == 1


class WorkerKilled(BaseException):
    """What a worker killed mid-task looks like from inside: nothing after it runs."""


def _stored_protection_rule(client, project, fake, *, run_id: int) -> WebhookDelivery:
    """A signed deployment_protection_rule delivery for the project, received and not processed."""
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    send_webhook(client, "deployment_protection_rule", _protection_rule_body(fake, run_id=run_id))
    [stored] = WebhookDelivery.objects.all()
    return stored


def test_a_delivery_whose_worker_died_is_not_processed_and_is_taken_again_when_its_claim_expires(
    client, project, app_connection, fake, monkeypatch
):
    stored = _stored_protection_rule(client, project, fake, run_id=5003)
    real_handler = webhooks._deployment_protection_rule

    def dies_after_the_work(payload, delivery, downloaded):
        real_handler(payload, delivery, downloaded)
        assert DeploymentReview.objects.count() == 1, "the work was done, not yet committed"
        raise WorkerKilled

    monkeypatch.setitem(webhooks.HANDLERS, "deployment_protection_rule", dies_after_the_work)
    with pytest.raises(WorkerKilled):
        webhook_process(stored.pk)

    stored.refresh_from_db()
    assert stored.state == "processing" and stored.claimed_until is not None
    assert DeploymentReview.objects.count() == 0, "the dead worker's writes went with it"
    monkeypatch.setitem(webhooks.HANDLERS, "deployment_protection_rule", real_handler)
    assert webhook_process(stored.pk) == "being processed by another worker"
    assert webhooks.webhook_process_abandoned() == 0, "not before the claim expires"
    assert DeploymentReview.objects.count() == 0

    # The claim's time passes with nobody renewing it.
    WebhookDelivery.objects.filter(pk=stored.pk).update(claimed_until=timezone.now() - timedelta(seconds=1))
    assert webhooks.webhook_process_abandoned() == 1
    stored.refresh_from_db()
    assert (stored.state, stored.claimed_until) == ("processed", None)
    assert stored.processed_at is not None and "waits on validation" in stored.result
    assert DeploymentReview.objects.count() == 1
    assert webhook_process(stored.pk) == "already processed"
    assert DeploymentReview.objects.count() == 1


def test_a_delivery_is_marked_processed_only_together_with_the_works_writes(
    client, project, app_connection, fake, monkeypatch
):
    stored = _stored_protection_rule(client, project, fake, run_id=5004)
    real_handler = webhooks._deployment_protection_rule
    seen = []

    def watched(payload, delivery, downloaded):
        seen.append(WebhookDelivery.objects.get(pk=delivery.pk).state)
        return real_handler(payload, delivery, downloaded)

    monkeypatch.setitem(webhooks.HANDLERS, "deployment_protection_rule", watched)
    result = webhook_process(stored.pk)
    assert seen == ["processing"], "not processed while the work runs"
    stored.refresh_from_db()
    assert (stored.state, stored.result) == ("processed", result)
    assert DeploymentReview.objects.count() == 1


def test_a_handler_that_fails_leaves_the_delivery_failed_with_none_of_its_writes(
    client, project, app_connection, fake, monkeypatch
):
    stored = _stored_protection_rule(client, project, fake, run_id=5005)
    real_handler = webhooks._deployment_protection_rule

    def fails_after_the_work(payload, delivery, downloaded):
        real_handler(payload, delivery, downloaded)
        raise RuntimeError("the callback URL vanished")

    monkeypatch.setitem(webhooks.HANDLERS, "deployment_protection_rule", fails_after_the_work)
    with pytest.raises(RuntimeError):
        webhook_process(stored.pk)
    stored.refresh_from_db()
    assert (stored.state, stored.claimed_until) == ("failed", None)
    assert stored.result == "RuntimeError: the callback URL vanished"
    assert DeploymentReview.objects.count() == 0
    assert webhook_process(stored.pk) == "already failed"


def test_a_webhook_is_answered_at_once_and_its_work_queued(client, project, app_connection, fake):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    body = _protection_rule_body(fake, run_id=5002)
    # How fast: bench/webhooks.py. Here: the answer comes before any of the work is done.
    response = send_webhook(client, "deployment_protection_rule", body)
    assert response.status_code == 202
    assert WebhookDelivery.objects.get().state == "queued"
    assert Validation.objects.count() == 0, "no work was done while GitHub waited"


def _protection_rule_body(fake, *, run_id: int) -> bytes:
    """GitHub's example deployment_protection_rule payload, with its callback pointing at the fake."""
    payload = fixture_payload("deployment_protection_rule.requested.json")
    payload["deployment_callback_url"] = (
        f"{fake.url}/repos/Codertocat/Hello-World/actions/runs/{run_id}/deployment_protection_rule"
    )
    return json.dumps(payload, indent=2).encode()


def _deliver_webhook(client, event: str, body: bytes) -> str:
    response = send_webhook(client, event, body)
    assert response.status_code == 202, response.content
    delivery = WebhookDelivery.objects.get(delivery_id=response.json()["delivery"])
    return webhook_process(delivery.pk)


def test_a_protection_rule_is_approved_once_the_validation_passes(
    client, project, staging, production, app_connection, fake
):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    sha = fixture_payload("deployment_protection_rule.requested.json")["deployment"]["sha"]
    staged, _ = make_validation(
        project=project, environment=staging, build_id="s-1", git_hash=sha, actor=ACTOR
    )
    validation_evaluate(validation=staged, results=make_results(p95=100.0), actor=ACTOR)

    result = _deliver_webhook(client, "deployment_protection_rule", _protection_rule_body(fake, run_id=6001))

    production_validation = Validation.objects.get(environment=production)
    assert production_validation.status == "queued", result
    outbox.deliver_due()
    assert fake.protection_reviews == []
    production_statuses = [
        s for s in fake.statuses[("Codertocat/Hello-World", sha)] if s["context"].endswith("/production")
    ]
    assert [s["state"] for s in production_statuses] == ["pending"]

    claimed = validation_claim(validation_id=production_validation.pk, worker="w:1", lease_seconds=30)
    validation_evaluate(validation=claimed, results=make_results(p95=100.0), actor=ACTOR)
    outbox.deliver_due()

    [review] = fake.protection_reviews
    assert (review["run_id"], review["environment_name"], review["state"]) == (
        6001,
        "my-environment",
        "approved",
    )
    assert "Passed" in review["comment"]
    assert DeploymentReview.objects.get().answered_at is not None


def test_a_protection_rule_is_rejected_with_the_reason(client, project, production, app_connection, fake):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])

    _deliver_webhook(client, "deployment_protection_rule", _protection_rule_body(fake, run_id=6002))
    outbox.deliver_due()

    [review] = fake.protection_reviews
    assert review["state"] == "rejected"
    assert "staging" in review["comment"], "says why: production needs a passed staging validation first"
    assert Validation.objects.get().status == "blocked"


def test_a_protection_rule_for_an_unknown_environment_is_rejected(client, project, app_connection, fake):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    payload = json.loads(_protection_rule_body(fake, run_id=6003))
    payload["deployment"]["environment"] = "qa"
    _deliver_webhook(client, "deployment_protection_rule", json.dumps(payload).encode())
    outbox.deliver_due()
    [review] = fake.protection_reviews
    assert review["state"] == "rejected" and "no environment" in review["comment"]


def _workflow_run_body(fake, run_id: int, *, sha: str) -> bytes:
    payload = fixture_payload("workflow_run.completed.with-pull-requests.json")
    text = json.dumps(payload).replace("https://api.github.com", fake.url)
    payload = json.loads(text)
    payload["workflow_run"].update(id=run_id, head_sha=sha, path=".github/workflows/performance.yml")
    return json.dumps(payload).encode()


def test_a_completed_performance_workflow_run_is_downloaded_without_credentials_and_evaluated(
    client, project, staging, app_connection, fake
):
    repository = fixture_payload("workflow_run.completed.with-pull-requests.json")["repository"]["full_name"]
    fake.repos[repository.lower()] = repository
    project.repository = repository
    project.save(update_fields=["repository"])
    sha = "c" * 40
    run_id = fake.add_run(repository, head_sha=sha, status="in_progress")
    fake.complete_run(run_id, artifacts={"perfgate-results": zip_of({"locust_stats.csv": LOCUST_STATS})})

    result = _deliver_webhook(client, "workflow_run", _workflow_run_body(fake, run_id, sha=sha))

    validation = Validation.objects.get(build_id=f"workflow-run-{run_id}")
    assert not validation.is_pending, result
    assert validation.environment == staging and validation.git_hash == sha
    blob = [r for r in fake.requests if r.path.startswith("/blob/")]
    assert blob and all("Authorization" not in r.headers for r in blob)
    assert blob[-1].status == 200


def test_an_artifact_that_escapes_its_directory_is_refused(tmp_path, settings):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_of({"../../etc/cron.d/evil": b"x"}))
    with pytest.raises(WorkflowFailed, match="unsafe path"):
        extract_artifact(archive, tmp_path / "out")
    settings.PERFGATE_ARTIFACT_MAX_UNPACKED_BYTES = 1000
    archive.write_bytes(zip_of({"raw.ndjson": b"0" * 5000}))
    with pytest.raises(WorkflowFailed, match="unpacks to more than"):
        extract_artifact(archive, tmp_path / "out2")
    assert not (tmp_path / "etc").exists()


def test_a_workflow_run_of_another_workflow_is_ignored(client, project, app_connection, fake):
    repository = fixture_payload("workflow_run.completed.json")["repository"]["full_name"]
    project.repository = repository
    project.save(update_fields=["repository"])
    body = json.dumps(fixture_payload("workflow_run.completed.json")).encode()  # .github/workflows/test.yml
    assert "not the performance workflow" in _deliver_webhook(client, "workflow_run", body)
    assert Validation.objects.count() == 0


def test_a_rerequested_check_run_validates_the_build_again(client, project, staging, app_connection, fake):
    payload = fixture_payload("check_run.rerequested.json")
    project.repository = payload["repository"]["full_name"]
    project.save(update_fields=["repository"])
    original, _ = make_validation(
        project=project,
        environment=staging,
        build_id="b-7",
        git_hash=payload["check_run"]["head_sha"],
        actor=ACTOR,
    )
    validation_evaluate(validation=original, results=make_results(p95=100.0), actor=ACTOR)
    payload["check_run"]["external_id"] = str(original.pk)
    body = json.dumps(payload).encode()

    delivery = str(uuid.uuid4())
    first = send_webhook(client, "check_run", body, delivery=delivery)
    result = webhook_process(WebhookDelivery.objects.get(delivery_id=delivery).pk)
    redelivered = send_webhook(client, "check_run", body, delivery=delivery)

    rerun = Validation.objects.exclude(pk=original.pk).get()
    assert rerun.status == "queued" and rerun.git_hash == original.git_hash, result
    assert rerun.build_id.startswith("b-7~rerun-")
    assert (first.json()["status"], redelivered.json()["status"]) == ("queued", "duplicate")


@contextmanager
def alongside(work, *, timeout: float = 30.0):
    """Runs ``work`` in a thread while the block runs (GitHub Actions, beside the worker); when
    the block ends, waits for it at most ``timeout`` seconds and re-raises what it raised."""
    failures = []

    def guarded():
        try:
            work()
        except BaseException as exc:  # handed to the test's thread below
            failures.append(exc)

    thread = threading.Thread(target=guarded, name=work.__name__, daemon=True)
    thread.start()
    yield
    thread.join(timeout)
    assert not thread.is_alive(), f"{work.__name__} did not finish within {timeout:.0f} s"
    if failures:
        raise failures[0]


def dispatched(fake) -> list[dict]:
    return wait_for(
        lambda: fake.dispatches, timeout=10, interval=0.05, what="perfgate to dispatch the workflow"
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("run_details", [True, False], ids=["run-id-returned", "found-by-correlation-id"])
def test_a_github_workflow_scenario_dispatches_follows_and_ingests_the_run(
    project, staging, app_connection, fake, run_details, settings
):
    settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES = 1  # a run that never completes fails the test in time
    fake.run_details_supported = run_details
    Scenario.objects.filter(project=project).update(is_default=False)
    Scenario.objects.create(
        project=project,
        name="in-actions",
        tool=Scenario.Tool.GITHUB,
        script_text="-",
        is_default=True,
        min_requests=1,
    )
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-9", git_hash="d" * 40, actor=ACTOR
    )

    def finish_the_run():
        run_id = dispatched(fake)[0]["run_id"]
        time.sleep(0.3)  # the worker sees it running for a while
        fake.complete_run(
            run_id, artifacts={"perfgate-results": zip_of({"stats/locust_stats.csv": LOCUST_STATS})}
        )

    with alongside(finish_the_run):
        execution.execute(validation.pk)

    validation.refresh_from_db()
    [dispatch] = fake.dispatches
    assert dispatch["inputs"]["correlation_id"] == str(validation.pk)
    assert dispatch["inputs"]["git_hash"] == "d" * 40
    assert validation.deployment_context["workflowRunId"] == dispatch["run_id"]
    assert not validation.is_pending, validation.status_reason
    assert validation.runs.get().results_format == "locust-csv"


@pytest.mark.django_db(transaction=True)
def test_a_failed_workflow_run_ends_the_validation_with_the_reason(
    project, staging, app_connection, fake, settings
):
    settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES = 1  # a run that never completes fails the test in time
    Scenario.objects.filter(project=project).update(tool=Scenario.Tool.GITHUB)
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-10", git_hash="e" * 40, actor=ACTOR
    )

    def fail_the_run():
        fake.complete_run(dispatched(fake)[0]["run_id"], conclusion="failure")

    with alongside(fail_the_run):
        execution.execute(validation.pk)
    validation.refresh_from_db()
    assert validation.verdict == "error"
    assert "ended failure" in validation.status_reason


def test_a_signed_webhook_without_a_delivery_id_is_400_and_nothing_is_stored(client, db):
    body = json.dumps(fixture_payload("ping.payload.json")).encode()
    response = client.post(
        "/api/ci-cd/webhooks/github",
        data=body,
        content_type="application/json",
        HTTP_X_GITHUB_EVENT="ping",
        HTTP_X_HUB_SIGNATURE_256=signature(body),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid"
    assert WebhookDelivery.objects.count() == 0


def test_a_webhook_larger_than_the_limit_is_413_before_it_is_read(client, db, settings):
    settings.PERFGATE_WEBHOOK_MAX_BYTES = 1000
    body = json.dumps(fixture_payload("workflow_run.completed.json")).encode()
    response = send_webhook(client, "workflow_run", body)
    assert response.status_code == 413
    assert response.json()["error"] == "too_large"
    assert WebhookDelivery.objects.count() == 0
