"""/healthz and /readyz for load balancers; /api/schema/ and /api/docs/ for everyone."""

import logging

import pytest
from django_q.conf import Conf

from perfgate_site import health


def test_healthz_says_the_process_is_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# Nothing listens on the discard port: a Redis there is a Redis that is down.
DOWN_REDIS = "redis://:s3cret-password@127.0.0.1:9/0"


@pytest.fixture(autouse=True)
def _no_outage_yet():
    """Each test sees its outages start: none is left over from an earlier test."""
    health.broker_outage.forget()
    health.database_outage.forget()


@pytest.mark.django_db
def test_readyz_checks_the_database_the_broker_and_the_cache(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "cache": "ok"},
    }


@pytest.mark.django_db
def test_readyz_stays_200_but_degraded_when_the_broker_is_unreachable(client, monkeypatch, caplog):
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "BROKER_CLASS", None)
    monkeypatch.setattr(Conf, "REDIS", DOWN_REDIS)
    caplog.set_level(logging.WARNING, logger="perfgate_site")
    responses = [client.get("/readyz") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert responses[0].json() == {
        "status": "degraded",
        "checks": {"database": "ok", "broker": "unreachable", "cache": "ok"},
    }
    assert len([r for r in caplog.records if "task broker is unreachable" in r.getMessage()]) == 1
    assert "s3cret" not in caplog.text and all("s3cret" not in r.content.decode() for r in responses)


@pytest.mark.django_db
def test_readyz_stays_200_but_degraded_when_the_cache_is_unreachable(client, settings, caplog):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": DOWN_REDIS}
    }
    caplog.set_level(logging.WARNING, logger="perfgate_site")
    responses = [client.get("/readyz") for _ in range(3)]
    assert [r.status_code for r in responses] == [200] * 3
    assert responses[0].json()["status"] == "degraded"
    assert responses[0].json()["checks"]["cache"] == "unreachable"
    assert len([r for r in caplog.records if "shared cache is unreachable" in r.getMessage()]) == 1
    assert "s3cret" not in caplog.text


@pytest.mark.django_db
def test_readyz_is_503_when_the_database_is_unreachable(client, monkeypatch):
    monkeypatch.setattr("perfgate_site.health._database_ready", lambda: False)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["database"] == "unreachable"


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
