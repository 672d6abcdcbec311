"""A watch end to end, with real parts: real k6 probes against the local sample target, the gate's
own decision code, and the rollback through the outbox to the local fake of Vercel's API.

A healthy deployment is watched for its whole window and left alone; its probes become the probe
baseline of the next deployment, which slows down by 2x after two probes and is rolled back to the
healthy one. The watch task runs here, in the test's process, as a worker would run it."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import requests

from gates import watching
from gates.audit import Actor
from gates.loadtest.sample_target import start_in_thread
from gates.models import AuditEvent, Notice, Rollback, Scenario, ThresholdRule, Validation, Watch
from gates.services import validation_request
from gates.services.watches import watch_start
from integrations.models import VercelConnection
from integrations.outbox import deliver_due
from tests.conftest import Api, make_token
from tests.factories import PASSING_SUMMARY
from tests.fake_vercel import PROJECT_ID, FakeVercel

pytestmark = pytest.mark.slow
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

PROBE_SCRIPT = """import http from 'k6/http';
export default function () { http.get(`${__ENV.TARGET_URL}/api/guests`); }
"""
# Well above this machine's noise (see gates/management/commands/demo.py).
LATENCY_MS = 50.0


@pytest.fixture
def target():
    server = start_in_thread(latency_ms=LATENCY_MS, jitter_ms=2.0)
    yield server
    server.shutdown()


@pytest.fixture
def vercel():
    with FakeVercel() as server:
        yield server


@pytest.fixture
def watched(project, production, target, vercel, settings):
    settings.PERFGATE_ROLLBACK_POLL_SECONDS = 0.05
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    project.vercel_project_id = PROJECT_ID
    project.allowed_hosts = [*project.allowed_hosts, target.url.removeprefix("http://")]
    project.save(update_fields=["vercel_project_id", "allowed_hosts"])
    probe = Scenario.objects.create(
        project=project,
        name="probe",
        script_text=PROBE_SCRIPT,
        target_url=target.url,
        vus=2,
        duration_seconds=1,
        min_requests=10,
    )
    rule = ThresholdRule.objects.create(
        project=project,
        scenario=probe,
        metric="http_req_duration",
        kind=ThresholdRule.Kind.RELATIVE,
        aggregation="p(95)",
        fail_pct=25,
    )
    rule.environments.set([production])
    production.require_staging_pass = False
    production.watch_scenario = probe
    production.watch_initial_delay_seconds = 0
    production.watch_interval_seconds = 2
    production.watch_window_seconds = 12
    production.watch_failure_limit = 1
    production.watch_consecutive = True
    production.auto_rollback = True
    production.save()
    VercelConnection.objects.create(
        project=project, token=vercel.token, team_id=vercel.team_id, api_url=vercel.url
    )
    return production


def deploy(vercel, project, production, number: int, target_url: str) -> Validation:
    deployment_id = f"dpl_e2e{number}"
    vercel.add_deployment(deployment_id=deployment_id, url=f"e2e-{number}.vercel.app")
    validation, _ = validation_request(
        project=project,
        environment=production,
        build_id=f"build-{number}",
        git_hash=f"{number:040x}",
        actor=Actor("token", "ci"),
        test_config={"targetUrl": target_url},
        deployment_context={"provider": "vercel", "deploymentId": deployment_id},
        results=io.BytesIO(PASSING_SUMMARY),
        results_format="k6-summary-export",
    )
    assert validation.status == Validation.Status.PASSED
    return validation


def watch(validation, target_url) -> Watch:
    return watch_start(
        validation=validation, actor=Actor("token", "ci"), source="ci", deployment_url=target_url
    )


def test_a_healthy_deployment_is_left_alone_and_a_slowed_one_is_rolled_back(
    project, watched, target, vercel, monkeypatch
):
    healthy = watch(deploy(vercel, project, watched, 1, target.url), target.url)
    watching.watch_run(healthy.pk)
    healthy.refresh_from_db()
    assert healthy.state == Watch.State.HEALTHY, healthy.state_reason
    assert healthy.probes_run >= 6 and healthy.failures == 0
    assert not Rollback.objects.exists()

    slowed = watch(deploy(vercel, project, watched, 2, target.url), target.url)
    assert "probes of build build-1" in slowed.baseline_source
    probe_once = watching.probe_once
    slowed_at = {}

    def probe_then_slow(watch, **kwargs):
        probe = probe_once(watch, **kwargs)
        if probe.number == 2:
            requests.post(f"{target.url}/_knobs", json={"latency_ms": 2 * LATENCY_MS}, timeout=5)
            slowed_at["t"] = time.time()
        return probe

    monkeypatch.setattr(watching, "probe_once", probe_then_slow)
    watching.watch_run(slowed.pk)
    slowed.refresh_from_db()
    assert slowed.state == Watch.State.DEGRADED, slowed.state_reason
    assert slowed.probes.filter(outcome="failure").count() == 2
    assert [p.outcome for p in slowed.probes.order_by("number")][:2] == ["success", "success"]
    rollback = slowed.rollback
    assert rollback.state == Rollback.State.APPROVED and rollback.via == "vercel"
    assert rollback.target_validation.build_id == "build-1"

    deliver_due(wait_seconds=10)
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED, rollback.detail
    assert "automatic" in rollback.detail.lower()
    calls = [r for r in vercel.requests if r.method == "POST" and "/rollback/" in r.path]
    assert [r.path for r in calls] == [f"/v1/projects/{PROJECT_ID}/rollback/dpl_e2e1"]
    assert all(r.query.get("teamId") == vercel.team_id for r in vercel.requests)
    assert vercel.production_deployment() == "dpl_e2e1"
    assert calls[0].at - slowed_at["t"] < (1 + 1) * 2 + 1 + 10
    assert Notice.objects.filter(watch=slowed, kind="rollback_succeeded").exists()
    actions = set(AuditEvent.objects.values_list("action", flat=True))
    assert {"watch.degraded", "rollback.approved", "rollback.running", "rollback.succeeded"} <= actions


def test_a_target_that_cannot_be_probed_errors_and_is_never_rolled_back(project, watched, target, vercel):
    good = watch(deploy(vercel, project, watched, 1, target.url), target.url)
    Watch.objects.filter(pk=good.pk).update(state=Watch.State.HEALTHY)
    watched.watch_consecutive_error_limit = 1
    watched.save()
    down = "http://127.0.0.1:9"  # discard port: nothing listens
    project.allowed_hosts = [*project.allowed_hosts, "127.0.0.1:9"]
    project.save(update_fields=["allowed_hosts"])
    broken = watch(deploy(vercel, project, watched, 2, down), down)
    watching.watch_run(broken.pk)
    broken.refresh_from_db()
    assert broken.state == Watch.State.ERRORED and broken.failures == 0 and broken.errors == 2
    assert not Rollback.objects.exists()
    assert not [r for r in vercel.requests if "/rollback/" in r.path]
    assert Notice.objects.filter(watch=broken, kind="watch_errored").exists()


def test_a_firing_alert_that_a_real_probe_confirms_rolls_back_once(
    project, watched, target, vercel, monkeypatch, django_capture_on_commit_callbacks
):
    healthy = watch(deploy(vercel, project, watched, 1, target.url), target.url)
    watching.watch_run(healthy.pk)
    current = watch(deploy(vercel, project, watched, 2, target.url), target.url)
    requests.post(f"{target.url}/_knobs", json={"latency_ms": 2 * LATENCY_MS}, timeout=5)
    queued = []
    monkeypatch.setattr(
        "gates.services.watches.async_task", lambda name, *args, **kwargs: queued.append((name, args))
    )
    monitoring = Api(make_token(project, "monitoring")[1])
    body = json.loads((FIXTURES / "alertmanager" / "firing.json").read_text())

    with django_capture_on_commit_callbacks(execute=True):
        response = monitoring.post("/api/ci-cd/performance/alerts", body)
    assert response.status_code in (200, 202), response.content
    assert queued == [("gates.tasks.watch_alert_probe", (current.pk,))]
    watching.alert_probe(current.pk)  # what the queued task does, on a worker

    current.refresh_from_db()
    assert current.state == Watch.State.DEGRADED
    rollback = current.rollback
    assert rollback.trigger == Rollback.Trigger.ALERT and rollback.target_validation.build_id == "build-1"
    deliver_due(wait_seconds=10)
    rollback.refresh_from_db()
    assert rollback.state == Rollback.State.SUCCEEDED, rollback.detail

    # Alertmanager repeats the group (a new delivery after its repeat interval): nothing more.
    body["alerts"][0]["startsAt"] = "2026-12-01T09:19:27.3Z"
    with django_capture_on_commit_callbacks(execute=True):
        assert monitoring.post("/api/ci-cd/performance/alerts", body).status_code in (200, 202)
    assert len(queued) == 1
    assert Rollback.objects.count() == 1
    assert len([r for r in vercel.requests if "/rollback/" in r.path]) == 1
