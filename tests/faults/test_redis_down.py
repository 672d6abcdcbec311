"""Redis stopped under a running API: a private redis-server (never the shared one) serves as the
shared cache and the task broker, is stopped mid-test and started again on the same port.

The API must keep answering (rate limits count per process meanwhile), say so once in the log,
report "degraded" in readyz, and be back to normal when Redis is."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time

import pytest
import redis
from django.test import Client
from django_q.brokers import get_broker
from django_q.conf import Conf

from gates.models import AuditEvent, Validation
from gates.services import validation_dispatch_pending
from perfgate_site import health
from perfgate_site.limits import TokenRateThrottle
from tests.conftest import Api, make_token

SHA = "b" * 40
CACHE_DOWN = "The shared cache is unreachable"
CACHE_BACK = "The shared cache answers again"


@pytest.fixture(autouse=True)
def _no_outage_yet():
    """Each test sees its outages start: none is left over from an earlier test."""
    health.broker_outage.forget()
    health.database_outage.forget()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test alone, on a free loopback port, without persistence."""

    def __init__(self):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "the private redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    server.start()
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def on_private_redis(private_redis, settings, monkeypatch):
    """The shared cache and the django-q2 broker on the private Redis, as with REDIS_URL set;
    every request asks the cache (batch 1, retried at once) so each one meets the outage."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": private_redis.url,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    settings.PERFGATE_RATE_LIMIT_BATCH = 1
    settings.PERFGATE_CACHE_RETRY_SECONDS = 0
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "BROKER_CLASS", None)
    monkeypatch.setattr(Conf, "REDIS", private_redis.url)
    TokenRateThrottle.forget()
    yield private_redis
    TokenRateThrottle.forget()


def validate(api, build_id):
    return api.post(
        "/api/ci-cd/performance/validate",
        {"project": "wedsync-web", "buildId": build_id, "environment": "staging", "gitHash": SHA},
    )


def messages(caplog, text):
    return [r for r in caplog.records if text in r.getMessage()]


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_the_api_keeps_answering_says_so_once_and_recovers(
    project, on_private_redis, caplog
):
    ci = Api(make_token(project, "ci")[1])
    assert validate(ci, "before-outage").status_code == 202
    assert Client().get("/readyz").json()["status"] == "ready"

    caplog.set_level(logging.INFO, logger="perfgate_site")
    on_private_redis.stop()
    status = [ci.get("/api/ci-cd/performance/status/before-outage").status_code for _ in range(5)]
    history = ci.get("/api/ci-cd/performance/history")
    ready = Client().get("/readyz")

    assert status == [200] * 5 and history.status_code == 200
    assert history.json()["results"][0]["buildId"] == "before-outage"
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "broker": "unreachable", "cache": "unreachable"},
    }
    down = messages(caplog, CACHE_DOWN)
    assert len(down) == 1 and down[0].levelno == logging.WARNING
    assert len(messages(caplog, "The task broker is unreachable")) == 1
    assert not messages(caplog, CACHE_BACK)

    on_private_redis.start()
    assert ci.get("/api/ci-cd/performance/status/before-outage").status_code == 200
    assert redis.from_url(on_private_redis.url).keys("*throttle:token-*"), "counting is shared again"
    assert len(messages(caplog, CACHE_BACK)) == 1
    assert Client().get("/readyz").json()["status"] == "ready"
    assert len(messages(caplog, CACHE_DOWN)) == 1
    assert Validation.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_each_process_still_limits_a_token_to_its_rate(
    project, on_private_redis, monkeypatch
):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "4/min"})
    auditor = Api(make_token(project, "auditor")[1])
    assert auditor.get("/api/ci-cd/performance/history").status_code == 200
    on_private_redis.stop()
    codes = [auditor.get("/api/ci-cd/performance/history").status_code for _ in range(5)]
    # The shared count (1) is out of reach: this process counts anew, to the same budget.
    assert codes == [200, 200, 200, 200, 429]
    refused = auditor.get("/api/ci-cd/performance/history")
    assert refused.json()["error"] == "throttled" and int(refused["Retry-After"]) >= 1


@pytest.fixture
def hung_redis():
    """A "Redis" that accepts connections and never answers (a server stuck or a network that
    drops replies): its port, and the connections it accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted: list[socket.socket] = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1], accepted
    listener.close()
    for connection in accepted:
        connection.close()


@pytest.mark.django_db
def test_a_hung_redis_delays_one_request_per_retry_interval_not_every_one(project, hung_redis, settings):
    port, accepted = hung_redis
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.3, "socket_timeout": 0.3},
        }
    }
    settings.PERFGATE_RATE_LIMIT_BATCH = 1
    settings.PERFGATE_CACHE_RETRY_SECONDS = 60
    auditor = Api(make_token(project, "auditor")[1])
    codes = [auditor.get("/api/ci-cd/performance/history").status_code for _ in range(6)]
    assert codes == [200] * 6
    assert len(accepted) == 1, "only the first request waited for Redis; the others counted at once"


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_a_new_validation_is_kept_and_sent_when_redis_is_back(project, on_private_redis):
    ci = Api(make_token(project, "ci")[1])
    on_private_redis.stop()
    response = validate(ci, "during-outage")
    assert response.status_code == 202, response.content
    validation = Validation.objects.get()
    assert (validation.status, validation.dispatch_pending) == (Validation.Status.QUEUED, True)
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1
    assert validation_dispatch_pending() == 0, "nothing can be sent while Redis is down"

    on_private_redis.start()
    assert validation_dispatch_pending() == 1
    validation.refresh_from_db()
    assert (validation.status, validation.dispatch_pending) == (Validation.Status.QUEUED, False)
    assert get_broker().queue_size() == 1, "the load test is in the broker's queue once"
    assert validation_dispatch_pending() == 0
    assert get_broker().queue_size() == 1
