"""API tokens: shown once, stored hashed, scoped to a project, its environments and a role."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from gates.models import AuditEvent
from integrations.models import ApiToken, hash_token
from integrations.services import token_revoke
from perfgate_site.limits import TokenRateThrottle
from tests.conftest import Api, make_token

SHA = "a" * 40


def validate(api, environment="staging", project="wedsync-web"):
    return api.post(
        "/api/ci-cd/performance/validate",
        {"project": project, "buildId": "b-1", "environment": environment, "gitHash": SHA},
    )


def test_a_token_is_stored_only_as_a_hash(project):
    token, plaintext = make_token(project, "ci")
    assert plaintext.startswith("pg_") and len(plaintext) > 40
    assert token.token_hash == hash_token(plaintext)
    assert plaintext not in str(ApiToken.objects.values())
    event = AuditEvent.objects.get(action="token.created")
    assert plaintext not in str(event.data) and event.data["prefix"] == token.token_prefix


def test_create_api_token_prints_the_token_alone_on_stdout(project, ops):
    out, err = StringIO(), StringIO()
    call_command(
        "create_api_token",
        "--project",
        "wedsync-web",
        "--role",
        "ci",
        "--environments",
        "staging",
        "--expires-days",
        "30",
        "--owner",
        ops.username,
        stdout=out,
        stderr=err,
    )
    plaintext = out.getvalue().strip()
    assert plaintext.startswith("pg_") and "\n" not in plaintext
    token = ApiToken.objects.get(token_hash=hash_token(plaintext))
    assert (token.role, token.environments, token.owner) == ("ci", ["staging"], ops)
    assert timedelta(days=29) < token.expires_at - timezone.now() <= timedelta(days=30)
    assert "cannot be shown again" in err.getvalue()
    assert validate(Api(plaintext)).status_code == 202


def test_create_api_token_refuses_an_unknown_environment(project):
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="qa"):
        call_command(
            "create_api_token",
            "--project",
            "wedsync-web",
            "--role",
            "ci",
            "--environments",
            "qa",
            stdout=StringIO(),
            stderr=StringIO(),
        )


def test_a_staging_token_gets_403_on_production(staging_api, project):
    assert validate(staging_api, "staging").status_code == 202
    response = validate(staging_api, "production")
    assert response.status_code == 403 and response.json()["error"] == "permission_denied"


def test_another_projects_token_sees_this_project_as_404(other_project_api, project):
    response = validate(other_project_api)
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    status = other_project_api.get("/api/ci-cd/performance/status/b-1", {"project": "wedsync-web"})
    assert status.status_code == 404


def test_an_auditor_token_can_read_but_not_write(auditor_api, ci_api, project):
    validate(ci_api)
    assert auditor_api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging"}).status_code == 200
    assert auditor_api.get("/api/ci-cd/performance/history").status_code == 200
    response = validate(auditor_api)
    assert response.status_code == 403 and response.json()["error"] == "permission_denied"


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer pg_wrong", "Token pg_x", "Bearer not-a-perfgate-token"]
)
def test_missing_or_wrong_credentials_are_401_in_the_error_shape(project, header):
    api = Api(None)
    if header:
        api.client.credentials(HTTP_AUTHORIZATION=header)
    response = validate(api)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_an_expired_token_is_401(project):
    token, plaintext = make_token(project, "ci", expires_days=1)
    ApiToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = validate(Api(plaintext))
    assert response.status_code == 401 and "expired" in response.json()["detail"]


def test_a_revoked_token_is_401_and_the_revocation_is_audited(project, actor):
    token, plaintext = make_token(project, "ci")
    token_revoke(token=token, actor=actor, reason="leaked in a log")
    response = validate(Api(plaintext))
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    assert AuditEvent.objects.get(action="token.revoked").reason == "leaked in a log"


def test_last_use_is_recorded(project):
    token, plaintext = make_token(project, "auditor")
    Api(plaintext).get("/api/ci-cd/performance/history")
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_too_many_requests_get_429_with_retry_after(project, monkeypatch):
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "3/min"})
    api = Api(make_token(project, "auditor")[1])
    codes = [api.get("/api/ci-cd/performance/history").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    response = api.get("/api/ci-cd/performance/history")
    assert response.json()["error"] == "throttled"
    assert 1 <= int(response["Retry-After"]) <= 60


def test_a_token_made_in_the_admin_is_shown_once(client, admin_user, project):
    client.force_login(admin_user)
    response = client.post(
        reverse("admin:integrations_apitoken_add"),
        {
            "name": "GitHub Actions",
            "project": project.pk,
            "role": "ci",
            "environments": ["staging"],
            "owner": "",
            "expires_days": "90",
        },
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "copy it now" in str(m)]
    assert len(shown) == 1
    plaintext = shown[0].split("pg_", 1)[1].split(" ", 1)[0]
    token = ApiToken.objects.get(token_hash=hash_token("pg_" + plaintext))
    assert (token.name, token.environments, token.created_by) == ("GitHub Actions", ["staging"], "user:root")
    page = client.get(reverse("admin:integrations_apitoken_change", args=[token.pk])).content.decode()
    assert plaintext not in page


def test_processes_share_one_budget_that_is_never_exceeded(project, monkeypatch, settings):
    settings.PERFGATE_RATE_LIMIT_BATCH = 10
    monkeypatch.setattr(TokenRateThrottle, "THROTTLE_RATES", {"token": "50/day"})
    api = Api(make_token(project, "auditor")[1])
    # Two server processes: each keeps its own reservations, both draw on the shared counter.
    processes = ({}, {})
    allowed = 0
    for request in range(120):
        monkeypatch.setattr(TokenRateThrottle, "_allowances", processes[request % 2])
        allowed += api.get("/api/ci-cd/performance/history").status_code == 200
    assert 50 - 2 * 10 <= allowed <= 50
