"""/healthz and /readyz for load balancers; /api/schema/ and /api/docs/ for everyone."""

import pytest


def test_healthz_says_the_process_is_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_checks_the_database_and_the_broker(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


@pytest.mark.django_db
def test_readyz_is_503_when_the_broker_is_unreachable(client, monkeypatch):
    class DeadBroker:
        def ping(self):
            raise ConnectionError("redis://:secret@10.0.0.1:6379 refused")

    monkeypatch.setattr("django_q.brokers.get_broker", lambda *a, **k: DeadBroker())
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"database": "ok", "broker": "unreachable"}
    assert "secret" not in response.content.decode()


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_is_unreachable(client, monkeypatch):
    monkeypatch.setattr("perfgate_site.health._database_ready", lambda: False)
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["database"] == "unreachable"


def test_unknown_api_paths_answer_json_in_the_error_shape(client):
    response = client.get("/api/ci-cd/performance/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


@pytest.mark.django_db
def test_the_schema_and_its_docs_are_public(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ["validate", "status/{buildId}", "block", "history", "baseline", "regression"]:
        assert f"/api/ci-cd/performance/{path}" in paths
    docs = client.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()
