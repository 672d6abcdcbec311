"""Twenty CI jobs asking for the same build (or with the same Idempotency-Key) at the same moment
make one validation; an operator blocking a build while its bypass is approved never deadlocks.

Real transactions in real threads, each with its own database connection. On SQLite writers are
serialized anyway; the interesting run is CI's PostgreSQL pass, where they truly race.
"""

import functools
import io
import json
import logging
import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from gates.audit import Actor
from gates.errors import ServiceError
from gates.models import AuditEvent, IdempotencyKey, Run, Validation
from gates.services import bypass_approve, bypass_request, validation_block, validation_request, validations
from tests.conftest import make_token
from tests.factories import PASSING_SUMMARY

THREADS = 20
# Before the lock order, 3 rounds in 60 deadlocked on PostgreSQL.
BLOCK_APPROVE_ROUNDS = 60

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="only PostgreSQL runs the two transactions concurrently"
)


def race(token: str, body: dict | list[dict], headers: dict | None = None) -> list[tuple[int, dict]]:
    """Post ``body`` (or the i-th of ``body``) from every thread at once: (status, JSON) each."""
    bodies = body if isinstance(body, list) else [body] * THREADS
    barrier = threading.Barrier(THREADS)
    answers: list[tuple[int, dict]] = []
    lock = threading.Lock()

    def ask(document):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", **(headers or {}))
        barrier.wait()
        try:
            response = client.post("/api/ci-cd/performance/validate", document, format="json")
            with lock:
                answers.append((response.status_code, response.json()))
        finally:
            connection.close()

    threads = [threading.Thread(target=ask, args=(document,)) for document in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def codes_of(answers: list[tuple[int, dict]]) -> list[int]:
    return sorted(code for code, _ in answers)


@pytest.mark.django_db(transaction=True)
def test_twenty_simultaneous_requests_make_one_queued_validation(project):
    _, token = make_token(project, "ci")
    body = {"project": "wedsync-web", "buildId": "race-1", "environment": "staging", "gitHash": "a" * 40}
    codes = codes_of(race(token, body))

    assert codes == [200] * (THREADS - 1) + [202]
    assert Validation.objects.count() == 1
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1


@pytest.mark.django_db(transaction=True)
def test_twenty_simultaneous_uploads_are_evaluated_once(project, k6_outputs):
    _, token = make_token(project, "ci")
    body = {
        "project": "wedsync-web",
        "buildId": "race-2",
        "environment": "staging",
        "gitHash": "a" * 40,
        "results": json.loads(k6_outputs.summary_export.read_text()),
    }
    codes = codes_of(race(token, body))

    assert codes == [200] * THREADS
    assert Validation.objects.count() == 1 and Run.objects.count() == 1
    # Evaluated in the request that made it: one event records both the request and the decision.
    assert AuditEvent.objects.filter(action__startswith="validation.").count() == 1
    assert AuditEvent.objects.get(action__startswith="validation.").action == "validation.evaluated"


def staging_request(build_id: str) -> dict:
    return {"project": "wedsync-web", "buildId": build_id, "environment": "staging", "gitHash": "a" * 40}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_idempotency_key_with_twenty_different_bodies_makes_one_validation(project):
    _, token = make_token(project, "ci")
    bodies = [staging_request(f"race-key-{i}") for i in range(THREADS)]
    answers = race(token, bodies, headers={"HTTP_IDEMPOTENCY_KEY": "one-key"})

    assert codes_of(answers) == [202] + [422] * (THREADS - 1)
    assert all(answer["error"] == "idempotency_key_reused" for code, answer in answers if code == 422)
    validation = Validation.objects.get()
    assert IdempotencyKey.objects.get(key="one-key").validation == validation
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_idempotency_key_with_twenty_identical_bodies_replays_one_validation(project):
    _, token = make_token(project, "ci")
    answers = race(token, staging_request("race-key-same"), headers={"HTTP_IDEMPOTENCY_KEY": "same-key"})

    assert codes_of(answers) == [200] * (THREADS - 1) + [202]
    validation = Validation.objects.get()
    assert {answer["validationId"] for _, answer in answers} == {str(validation.pk)}
    assert IdempotencyKey.objects.get(key="same-key").validation == validation
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_request_that_fails_after_claiming_its_key_leaves_the_key_free_for_a_retry(project, monkeypatch):
    _, token = make_token(project, "ci")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", HTTP_IDEMPOTENCY_KEY="retry-key")

    def fails_midway(**kwargs):
        raise ServiceError("The validation could not be created.")

    monkeypatch.setattr(validations, "_validation_create", fails_midway)
    failed = client.post("/api/ci-cd/performance/validate", staging_request("retry-1"), format="json")
    assert failed.status_code == 400
    assert not IdempotencyKey.objects.exists() and not Validation.objects.exists()

    monkeypatch.undo()
    retried = client.post("/api/ci-cd/performance/validate", staging_request("retry-1"), format="json")
    assert retried.status_code == 202
    assert IdempotencyKey.objects.get(key="retry-key").validation == Validation.objects.get()


@postgres_only
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_manual_block_racing_the_approval_of_its_bypass_never_deadlocks(project, staging, add_rule, caplog):
    """The approval used to lock the bypass, write its audit event and only then lock the
    validation; a block locks the validation, then writes its audit event. Both now lock the
    validation first, so neither waits for the other while holding what the other needs."""
    add_rule("http_req_duration", threshold="p(95)<10")
    approver = get_user_model().objects.create_user("ada-approver", password="x")
    assign_perm("gates.approve_bypass", approver, project)
    failures: list[str] = []

    def run(barrier, service):
        barrier.wait()
        try:
            service()
        except Exception as exc:  # any escape is what a client would see as a 500
            failures.append(repr(exc))
        finally:
            connection.close()

    with caplog.at_level(logging.WARNING, logger="gates.services.validations"):
        for round_ in range(BLOCK_APPROVE_ROUNDS):
            build, _ = validation_request(
                project=project,
                environment=staging,
                build_id=f"blocked-{round_}",
                git_hash="a" * 40,
                actor=Actor("cli", "tests"),
                results=io.BytesIO(PASSING_SUMMARY),
                results_format="k6-summary-export",
            )
            bypass = bypass_request(validation=build, justification="launch", actor=Actor("token", "ci"))
            barrier = threading.Barrier(2)
            approve = functools.partial(bypass_approve, bypass=bypass, approver=approver)
            block = functools.partial(
                validation_block, validation=build, reason="incident", actor=Actor("token", "ops")
            )
            threads = [threading.Thread(target=run, args=(barrier, service)) for service in (approve, block)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)

    assert failures == []
    assert not [record.message for record in caplog.records if "lost a lock conflict" in record.message]
    for build in Validation.objects.all():
        events = AuditEvent.objects.filter(
            target_id=str(build.pk), action__in=["validation.blocked", "bypass.used"]
        )
        assert events.count() == 2  # both went through
        last = events.latest("id").action
        assert build.status == ("blocked" if last == "validation.blocked" else "bypassed")
