"""API tokens: shown once, stored hashed, scoped to a project, its environments and a role."""

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.audit import Actor
from gates.errors import NotPermitted
from gates.models import AuditEvent, Environment, Project
from integrations.models import ApiToken, hash_token
from integrations.services import token_create, token_revoke
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


@pytest.fixture
def other_token(db):
    other = Project.objects.create(slug="other-shop", name="Other shop", allowed_hosts=["127.0.0.1"])
    Environment.objects.create(project=other, name="staging")
    return make_token(other, "ci")[0]


@pytest.fixture
def token_ops(ops, project):
    """Ops who manage wedsync-web's configuration, tokens included: the ops group opens the
    token admin, change_thresholds on the project lets them make and revoke its tokens."""
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.change_thresholds", ops, project)
    return ops


def revoke_in_admin(client, *tokens):
    return client.post(
        reverse("admin:integrations_apitoken_changelist"),
        {"action": "revoke", "_selected_action": [str(t.pk) for t in tokens]},
        follow=True,
    )


def test_an_auditor_sees_every_token_read_only_and_cannot_revoke_one(auditor_client, project, other_token):
    token, plaintext = make_token(project, "ci")
    listing = auditor_client.get(reverse("admin:integrations_apitoken_changelist")).content.decode()
    assert token.token_prefix in listing and other_token.token_prefix in listing
    assert 'value="revoke"' not in listing
    assert auditor_client.get(reverse("admin:integrations_apitoken_add")).status_code == 403

    revoke_in_admin(auditor_client, token, other_token)
    assert not ApiToken.objects.filter(revoked_at__isnull=False).exists()
    assert validate(Api(plaintext)).status_code == 202


def test_ops_see_and_revoke_only_their_projects_tokens(client, token_ops, project, other_token):
    token, plaintext = make_token(project, "ci")
    client.force_login(token_ops)
    listing = client.get(reverse("admin:integrations_apitoken_changelist")).content.decode()
    assert token.token_prefix in listing and other_token.token_prefix not in listing
    assert 'value="revoke"' in listing

    response = revoke_in_admin(client, token, other_token)
    assert "is revoked" in response.content.decode()
    token.refresh_from_db()
    other_token.refresh_from_db()
    assert token.revoked_at is not None and other_token.revoked_at is None
    assert validate(Api(plaintext)).status_code == 401
    assert AuditEvent.objects.get(action="token.revoked").actor == "user:olivia-ops"


def test_ops_without_a_right_on_any_project_are_offered_no_token_action(client, ops, project):
    ops.groups.add(Group.objects.get(name="ops"))
    token, _ = make_token(project, "ci")
    client.force_login(ops)
    assert client.get(reverse("admin:integrations_apitoken_add")).status_code == 403
    revoke_in_admin(client, token)
    token.refresh_from_db()
    assert token.revoked_at is None


def test_revoking_a_token_takes_change_thresholds_on_its_project(project, ops, auditor, other_token):
    token, _ = make_token(project, "ci")
    auditor.groups.add(Group.objects.get(name="auditors"))
    for person in (auditor, ops):
        with pytest.raises(NotPermitted, match="may not revoke tokens of wedsync-web"):
            token_revoke(token=token, actor=Actor.for_user(person), reason="leaked")
    assign_perm("gates.change_thresholds", ops, project)
    with pytest.raises(NotPermitted):
        token_revoke(token=other_token, actor=Actor.for_user(ops), reason="not mine")
    token_revoke(token=token, actor=Actor.for_user(ops), reason="leaked")
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert list(AuditEvent.objects.filter(action="token.revoked").values_list("actor", flat=True)) == [
        "user:olivia-ops"
    ]


def test_a_person_makes_a_token_that_can_block_only_with_block_deployment(project, ops):
    assign_perm("gates.change_thresholds", ops, project)
    as_ops = Actor.for_user(ops)
    token_create(project=project, role="ci", name="read and validate", actor=as_ops)
    for kwargs in ({"role": "ops"}, {"role": "ci", "can_block": True}):
        with pytest.raises(NotPermitted, match="block_deployment"):
            token_create(project=project, name="can block", actor=as_ops, **kwargs)
    assign_perm("gates.block_deployment", ops, project)
    token_create(project=project, role="ops", name="can block", actor=as_ops)
    assert sorted(ApiToken.objects.values_list("role", flat=True)) == ["ci", "ops"]


def test_a_refused_token_in_the_admin_is_a_message_not_a_server_error(client, token_ops, project):
    client.force_login(token_ops)
    response = client.post(
        reverse("admin:integrations_apitoken_add"),
        {"name": "deployer", "project": project.pk, "role": "ops", "owner": "", "expires_days": ""},
        follow=True,
    )
    assert response.status_code == 200
    assert "needs the block_deployment right" in response.content.decode()
    assert not ApiToken.objects.exists()


def test_the_ops_group_opens_the_token_admin_and_makes_tokens_where_it_holds_the_right(
    client, token_ops, project
):
    client.force_login(token_ops)
    assert client.get(reverse("admin:integrations_apitoken_changelist")).status_code == 200
    assert client.get(reverse("admin:integrations_apitoken_add")).status_code == 200
