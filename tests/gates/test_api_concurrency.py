"""Twenty CI jobs asking for the same build at the same moment make one validation.

Real transactions in real threads, each with its own database connection. On SQLite writers are
serialized anyway; the interesting run is CI's PostgreSQL pass, where they truly race.
"""

import json
import threading

import pytest
from django.db import connection
from rest_framework.test import APIClient

from gates.models import AuditEvent, Run, Validation
from tests.conftest import make_token

THREADS = 20


def race(token: str, body: dict) -> list[int]:
    barrier = threading.Barrier(THREADS)
    codes: list[int] = []
    lock = threading.Lock()

    def ask():
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
        barrier.wait()
        try:
            response = client.post("/api/ci-cd/performance/validate", body, format="json")
            with lock:
                codes.append(response.status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=ask) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return codes


@pytest.mark.django_db(transaction=True)
def test_twenty_simultaneous_requests_make_one_queued_validation(project):
    _, token = make_token(project, "ci")
    body = {"project": "wedsync-web", "buildId": "race-1", "environment": "staging", "gitHash": "a" * 40}
    codes = race(token, body)

    assert sorted(codes) == [200] * (THREADS - 1) + [202]
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
    codes = race(token, body)

    assert codes == [200] * THREADS
    assert Validation.objects.count() == 1 and Run.objects.count() == 1
    # Evaluated in the request that made it: one event records both the request and the decision.
    assert AuditEvent.objects.filter(action__startswith="validation.").count() == 1
    assert AuditEvent.objects.get(action__startswith="validation.").action == "validation.evaluated"
