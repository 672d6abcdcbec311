"""block and baseline: who may, and what they do."""

import json

import pytest

from baselines.models import Baseline
from gates.models import AuditEvent, Validation
from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation


@pytest.fixture
def passed(project, staging, actor):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="f" * 40, actor=actor
    )
    return validation_evaluate(validation=validation, results=make_results(), actor=actor)


def block(api, **overrides):
    body = {
        "project": "wedsync-web",
        "environment": "staging",
        "buildId": "b-1",
        "reason": "memory leak in canary",
    }
    return api.post("/api/ci-cd/performance/block", {**body, **overrides})


def test_ops_block_a_build_by_hand(ops_api, passed):
    response = block(ops_api)
    assert response.status_code == 200
    data = response.json()
    assert (data["status"], data["deploymentAllowed"], data["verdict"]) == ("blocked", False, "pass")
    assert "memory leak in canary" in data["statusReason"]
    event = AuditEvent.objects.get(action="validation.blocked")
    assert event.actor.startswith("token:ops test token") and event.actor_user_id is not None


def test_a_ci_token_may_block_only_when_allowed(ci_api, project, passed):
    assert block(ci_api).status_code == 403
    allowed = Api(make_token(project, "ci", can_block=True)[1])
    assert block(allowed).status_code == 200


def test_an_auditor_cannot_block(auditor_api, passed):
    response = block(auditor_api)
    assert response.status_code == 403 and response.json()["error"] == "permission_denied"
    assert Validation.objects.get().status == "passed"


def test_blocking_needs_a_reason(ops_api, passed):
    response = block(ops_api, reason="")
    assert response.status_code == 400 and "reason" in response.json()["fields"]


def test_ops_promote_a_passed_validation_to_a_pinned_baseline(ops_api, passed):
    Baseline.objects.all().delete()  # the automatic one from the passing evaluation
    response = ops_api.post(
        "/api/ci-cd/performance/baseline",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "b-1",
            "pin": True,
            "reason": "release 42",
        },
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["version"], data["pinned"], data["sourceBuildId"], data["runs"]) == (1, True, "b-1", 1)
    assert data["metrics"]["http_req_duration"]["p(95)"] == 200.0


def test_a_blocked_validation_cannot_become_a_baseline(ops_api, project, staging, actor, add_rule):
    add_rule("http_req_duration", threshold="p(95)<100")
    validation, _ = make_validation(
        project=project, environment=staging, build_id="slow", git_hash="f" * 40, actor=actor
    )
    validation_evaluate(validation=validation, results=make_results(p95=300.0), actor=actor)
    response = ops_api.post(
        "/api/ci-cd/performance/baseline",
        {"project": "wedsync-web", "environment": "staging", "buildId": "slow"},
    )
    assert response.status_code == 409 and response.json()["error"] == "invalid_state"


def test_a_baseline_can_be_made_from_uploaded_results(ops_api, k6_outputs, project):
    response = ops_api.post(
        "/api/ci-cd/performance/baseline",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "upload-1",
            "gitHash": "a" * 40,
            "results": json.loads(k6_outputs.summary_export.read_text()),
        },
    )
    assert response.status_code == 201, response.content
    assert Validation.objects.get(build_id="upload-1").status == "passed"


def test_only_ops_tokens_make_baselines(ci_api, passed):
    response = ci_api.post(
        "/api/ci-cd/performance/baseline",
        {"project": "wedsync-web", "environment": "staging", "buildId": "b-1"},
    )
    assert response.status_code == 403
