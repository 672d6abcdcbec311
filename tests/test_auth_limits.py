"""Failed authentication is limited per client address (PERFGATE_FAILED_AUTH_RATE): beyond the
limit a wrong, revoked or expired token gets 429 with Retry-After instead of 401, while valid
tokens, from that address or any other, go on as before."""

import logging
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from gates.audit import Actor
from integrations.models import ApiToken
from integrations.services import token_revoke
from tests.conftest import Api, make_token
from tests.factories import make_validation

HISTORY = "/api/ci-cd/performance/history"
WRONG = "pg_" + "x" * 43


@pytest.fixture
def three_failures_an_hour(settings):
    # An hour's window: a test never straddles two windows.
    settings.PERFGATE_FAILED_AUTH_RATE = "3/hour"


def get(token, address="192.0.2.10", **headers):
    return Api(token).get(HISTORY, REMOTE_ADDR=address, **headers)


def test_an_address_that_keeps_failing_gets_429_with_retry_after(project, three_failures_an_hour):
    revoked, revoked_plaintext = make_token(project, "auditor")
    token_revoke(token=revoked, actor=Actor("user", "olivia-ops"), reason="leaked")
    expiring, expired = make_token(project, "auditor")
    ApiToken.objects.filter(pk=expiring.pk).update(expires_at=timezone.now() - timedelta(days=1))

    codes = [get(token).status_code for token in (WRONG, revoked_plaintext, expired, WRONG, "not-a-pg-token")]

    assert codes == [401, 401, 401, 429, 429]
    refused = get(WRONG)
    assert refused.status_code == 429
    body = refused.json()
    assert (body["error"], body["fields"]) == ("throttled", {})
    assert body["detail"].startswith("Too many failed authentications from this address; retry in")
    assert 1 <= int(refused["Retry-After"]) <= 3600


def test_a_valid_token_is_not_blocked_by_failures_from_its_address(project, three_failures_an_hour):
    for _ in range(5):
        get(WRONG)
    assert get(make_token(project, "auditor")[1]).status_code == 200


def test_one_address_failing_does_not_limit_another(project, three_failures_an_hour):
    for _ in range(5):
        get(WRONG, address="192.0.2.10")
    assert get(WRONG, address="198.51.100.7").status_code == 401


def test_a_forged_x_forwarded_for_does_not_escape_the_limit(project, three_failures_an_hour):
    codes = [get(WRONG, HTTP_X_FORWARDED_FOR=f"203.0.113.{n}").status_code for n in range(5)]
    assert codes == [401, 401, 401, 429, 429]


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(
    project, three_failures_an_hour, settings
):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.2"
    for _ in range(5):
        get(WRONG, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1")
    assert get(WRONG, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 429
    assert get(WRONG, address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.2").status_code == 401


def test_crossing_the_limit_is_logged_once_without_the_token(project, three_failures_an_hour, caplog):
    caplog.set_level(logging.WARNING, logger="perfgate_site.limits")
    for _ in range(8):
        get(WRONG)
    logged = [r.getMessage() for r in caplog.records if "Authentication failed" in r.getMessage()]
    assert len(logged) == 1 and "192.0.2.10" in logged[0]
    assert WRONG not in caplog.text


def test_a_chart_link_beyond_the_limit_is_refused_not_an_error(project, staging, three_failures_an_hour):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="c" * 40, actor=Actor("cli", "tests")
    )
    url = reverse("validation-chart", args=[validation.pk])
    codes = [get(WRONG).status_code for _ in range(3)]
    chart = Api(WRONG).get(url, REMOTE_ADDR="192.0.2.10")
    assert codes == [401] * 3
    assert chart.status_code == 401 and b"failed authentications" in chart.content


def test_an_empty_rate_turns_the_limit_off(project, settings):
    settings.PERFGATE_FAILED_AUTH_RATE = ""
    assert {get(WRONG).status_code for _ in range(40)} == {401}


def test_with_the_cache_unreachable_failures_are_still_counted_per_process(
    project, three_failures_an_hour, settings
):
    # Redis at a port where nothing listens: the cache is down from the first request.
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",
        }
    }
    assert [get(WRONG).status_code for _ in range(5)] == [401, 401, 401, 429, 429]
