"""POST /api/ci-cd/performance/watch, and the watch block of the status document.

The watch's own work (probes, counting, rollbacks) runs in a task and is tested where it lives;
here the API starts a watch, and the task it queues is recorded at the broker's edge
(``gates.services.watches.async_task``) instead of being sent.
"""

import re

import pytest
from django.utils import timezone
from perfgate_cli import cli

from gates.models import AuditEvent, Notice, Probe, Rollback, Scenario, Watch
from gates.services import validation_evaluate
from tests.conftest import SCRIPT, Api, make_token
from tests.factories import make_results, make_validation

URL = "/api/ci-cd/performance/watch"
SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"


@pytest.fixture
def queued(monkeypatch):
    """The tasks the services queue, as (function, arguments), instead of the broker."""
    sent = []
    monkeypatch.setattr(
        "gates.services.watches.async_task", lambda func, *args, **kwargs: sent.append((func, args))
    )
    return sent


@pytest.fixture
def probe_scenario(project, production):
    """A gentle probe scenario, production's watch scenario."""
    probe = Scenario.objects.create(
        project=project,
        name="probe",
        script_text=SCRIPT,
        target_url="http://127.0.0.1:8001",
        vus=2,
        duration_seconds=5,
        min_requests=10,
    )
    production.watch_scenario = probe
    production.save(update_fields=["watch_scenario"])
    return probe


def decided(project, environment, actor, build_id, *, p95=200.0, deployment_id=None):
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build_id,
        git_hash=SHA,
        actor=actor,
        staging_pass=True,
        test_config={"targetUrl": "http://127.0.0.1:8001"},
        deployment_context={"deploymentId": deployment_id} if deployment_id else None,
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)


@pytest.fixture
def passed_build(project, production, actor, probe_scenario):
    validation = decided(project, production, actor, "gha-100", deployment_id="dpl_100")
    assert validation.deployment_allowed is True
    return validation


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    data = response.json()
    assert set(data) == {"error", "detail", "fields"}
    assert data["error"] == code and data["detail"]
    return data


def test_a_ci_token_starts_a_watch_and_asking_again_answers_with_the_same_watch(
    ci_api, passed_build, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"})
    assert first.status_code == 201, first.content
    watch = Watch.objects.get()
    assert (watch.validation_id, watch.source, watch.state) == (passed_build.pk, "ci", "waiting")
    assert (watch.target_url, watch.deployment_id) == ("http://127.0.0.1:8001", "dpl_100")
    assert queued == [("gates.tasks.watch_run", (watch.pk,))]
    assert AuditEvent.objects.filter(action="watch.started").count() == 1

    document = first.json()
    assert document["watchId"] == watch.pk and document["buildId"] == "gha-100"
    assert (document["environment"], document["state"], document["source"]) == ("production", "waiting", "ci")
    assert document["policy"]["scenario"] == "probe"
    assert document["probes"] == {
        "run": 0,
        "failures": 0,
        "consecutiveFailures": 0,
        "inconclusive": 0,
        "errors": 0,
        "consecutiveErrors": 0,
    }
    assert (document["lastProbe"], document["rollback"], document["notices"]) == (None, None, [])

    with django_capture_on_commit_callbacks(execute=True):
        again = ci_api.post(
            URL, {"project": "wedsync-web", "buildId": "gha-100", "environment": "production"}
        )
    assert again.status_code == 200, again.content
    assert again.json()["watchId"] == watch.pk
    assert Watch.objects.count() == 1 and len(queued) == 1


def test_an_ops_token_may_start_a_watch_with_its_own_deployment_url(ops_api, passed_build, queued):
    response = ops_api.post(
        URL,
        {
            "project": "wedsync-web",
            "buildId": "gha-100",
            "deploymentUrl": "https://wedsync-abc123.vercel.app",
            "deploymentId": "dpl_given",
        },
    )
    assert response.status_code == 201, response.content
    assert (response.json()["targetUrl"], response.json()["deploymentId"]) == (
        "https://wedsync-abc123.vercel.app",
        "dpl_given",
    )


def test_a_deployment_url_outside_the_allowlist_is_refused_naming_the_field(ci_api, passed_build, queued):
    response = ci_api.post(
        URL, {"project": "wedsync-web", "buildId": "gha-100", "deploymentUrl": "https://evil.example"}
    )
    data = assert_error(response, 400, "invalid")
    assert "allowlist" in data["fields"]["deploymentUrl"][0]
    assert not Watch.objects.exists() and queued == []


def test_a_blocked_build_is_not_watched(ci_api, project, production, actor, probe_scenario, add_rule, queued):
    add_rule("http_req_duration", threshold="p(95)<400")
    blocked = decided(project, production, actor, "gha-slow", p95=9000.0)
    assert blocked.status == "blocked"

    response = ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-slow"})
    assert_error(response, 409, "invalid_state")
    assert not Watch.objects.exists() and queued == []


def test_a_build_still_being_validated_is_not_watched(ci_api, project, production, actor, probe_scenario):
    validation, _ = make_validation(
        project=project,
        environment=production,
        build_id="gha-running",
        git_hash=SHA,
        actor=actor,
        staging_pass=True,
    )
    assert validation.is_pending
    assert_error(ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-running"}), 409, "invalid_state")


def test_an_unknown_build_is_not_found(ci_api, probe_scenario):
    assert_error(ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-never"}), 404, "not_found")


def test_an_environment_without_a_watch_scenario_is_refused_naming_it(ci_api, project, production, actor):
    decided(project, production, actor, "gha-100")
    data = assert_error(ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}), 400, "invalid")
    assert "watch scenario" in data["detail"] and "environment" in data["fields"]


def test_unknown_fields_are_refused(ci_api, passed_build):
    data = assert_error(
        ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100", "url": "https://x"}), 400, "invalid"
    )
    assert data["fields"] == {"url": ["Unknown field."]}


def test_a_staging_token_cannot_watch_production(staging_api, passed_build):
    assert_error(
        staging_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}), 403, "permission_denied"
    )
    assert not Watch.objects.exists()


def test_an_auditor_token_cannot_start_a_watch(auditor_api, passed_build):
    assert_error(
        auditor_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}), 403, "permission_denied"
    )


def test_another_projects_token_does_not_see_the_build(other_project_api, passed_build):
    assert_error(
        other_project_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}), 404, "not_found"
    )


def test_a_monitoring_token_may_not_watch_validate_or_read_a_status(project, passed_build):
    monitoring = Api(make_token(project, "monitoring")[1])
    assert_error(
        monitoring.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}), 403, "permission_denied"
    )
    assert_error(
        monitoring.post(
            "/api/ci-cd/performance/validate",
            {"project": "wedsync-web", "buildId": "gha-101", "environment": "staging", "gitHash": SHA},
        ),
        403,
        "permission_denied",
    )
    assert_error(
        monitoring.get("/api/ci-cd/performance/status/gha-100", {"project": "wedsync-web"}),
        403,
        "permission_denied",
    )
    assert not Watch.objects.exists()


def test_status_shows_no_watch_block_for_a_build_that_is_not_watched(ci_api, passed_build):
    response = ci_api.get("/api/ci-cd/performance/status/gha-100", {"project": "wedsync-web"})
    assert response.status_code == 200
    assert response.json()["watch"] is None


def test_status_shows_the_watch_with_its_probes_rollback_and_latest_notices(
    ci_api, passed_build, queued, actor
):
    assert ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}).status_code == 201
    watch = Watch.objects.get()
    now = timezone.now()
    Watch.objects.filter(pk=watch.pk).update(
        state=Watch.State.DEGRADED,
        state_reason="3 failed probes in a row (failureLimit 2)",
        probes_run=4,
        failures=3,
        consecutive_failures=3,
        errors=1,
        finished_at=now,
    )
    for number, outcome in enumerate(["success", "failure", "failure", "failure"], start=1):
        Probe.objects.create(
            watch=watch,
            number=number,
            target_url=watch.target_url,
            outcome=outcome,
            reason=f"probe {number} was a {outcome}",
            started_at=now,
        )
    Rollback.objects.create(
        watch=watch,
        validation=passed_build,
        project=watch.project,
        environment=watch.environment,
        trigger=Rollback.Trigger.WATCH,
        state=Rollback.State.REFUSED,
        reason="3 failed probes in a row",
        detail="Nothing safe to roll back to.",
        finished_at=now,
    )
    for index in range(7):
        Notice.objects.create(
            project=watch.project,
            environment=watch.environment,
            validation=passed_build,
            watch=watch,
            kind="test",
            level=Notice.Level.WARNING,
            title=f"notice {index}",
            text="",
        )

    document = ci_api.get("/api/ci-cd/performance/status/gha-100", {"project": "wedsync-web"}).json()["watch"]
    assert (document["state"], document["stateReason"]) == (
        "degraded",
        "3 failed probes in a row (failureLimit 2)",
    )
    assert document["nextProbeAt"] is None and document["finishedAt"] is not None
    assert document["probes"]["run"] == 4 and document["probes"]["consecutiveFailures"] == 3
    assert document["lastProbe"]["number"] == 4 and document["lastProbe"]["outcome"] == "failure"
    assert document["rollback"] == {
        "state": "refused",
        "trigger": "watch",
        "via": "",
        "targetBuildId": None,
        "reason": "3 failed probes in a row",
        "detail": "Nothing safe to roll back to.",
        "decidedBy": "",
        "finishedAt": document["rollback"]["finishedAt"],
    }
    assert [notice["title"] for notice in document["notices"]] == [f"notice {i}" for i in (6, 5, 4, 3, 2)]


def test_the_status_of_a_pending_validation_reads_no_watch(
    ci_api, project, staging, actor, django_assert_num_queries
):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="gha-running", git_hash=SHA, actor=actor
    )
    assert validation.is_pending
    ci_api.get("/api/ci-cd/performance/status/gha-running", {"project": "wedsync-web"})  # tokens cached
    with django_assert_num_queries(1):
        response = ci_api.get("/api/ci-cd/performance/status/gha-running", {"project": "wedsync-web"})
    assert response.json()["watch"] is None


def test_the_cli_reads_the_watch_document_the_api_answers_with(ci_api, passed_build, queued):
    document = ci_api.post(URL, {"project": "wedsync-web", "buildId": "gha-100"}).json()

    lines = cli.watch_lines(document)
    assert lines[0] == "Watch: waiting"
    next_probe = next(line for line in lines if line.startswith("  Next probe: "))
    assert re.fullmatch(r"  Next probe: \d\d:\d\d:\d\d UTC; window ends \d\d:\d\d:\d\d UTC", next_probe)
    assert (
        cli.watch_summary_line(document) == "wedsync-web/production build gha-100: watch waiting → watching"
    )
    assert cli.watch_exit_code(document) == cli.EXIT_ALLOWED
