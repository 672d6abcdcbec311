"""POST /api/ci-cd/performance/alerts: Prometheus Alertmanager's webhook, for monitoring tokens.

The bodies are Alertmanager's (``tests/fixtures/alertmanager``, payload version 4). A firing alert
on a watched deployment queues the confirming probe; the probe itself is the watch's task, so the
queued task is recorded at the broker's edge (``gates.services.watches.async_task``).
"""

import copy
import json
from pathlib import Path

import pytest

from gates.models import AuditEvent, Environment, Project, Rollback, Scenario, Watch
from gates.services import validation_evaluate
from gates.services.watches import watch_start
from integrations.models import WebhookDelivery
from tests.conftest import SCRIPT, Api, make_token
from tests.factories import make_results, make_validation

URL = "/api/ci-cd/performance/alerts"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "alertmanager"
SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


FIRING = fixture("firing.json")
RESOLVED = fixture("resolved.json")


@pytest.fixture
def queued(monkeypatch):
    """The tasks the services queue, as (function, arguments), instead of the broker."""
    sent = []
    monkeypatch.setattr(
        "gates.services.watches.async_task", lambda func, *args, **kwargs: sent.append((func, args))
    )
    return sent


@pytest.fixture
def monitoring_api(project):
    """What Alertmanager holds: a monitoring token of the project."""
    return Api(make_token(project, "monitoring")[1])


@pytest.fixture
def watch(project, production, actor, queued):
    """The promoted production build gha-100, watched (its own task recorded and forgotten)."""
    probe = Scenario.objects.create(
        project=project, name="probe", script_text=SCRIPT, target_url="http://127.0.0.1:8001", vus=2
    )
    production.watch_scenario = probe
    production.save(update_fields=["watch_scenario"])
    validation, _ = make_validation(
        project=project,
        environment=production,
        build_id="gha-100",
        git_hash=SHA,
        actor=actor,
        staging_pass=True,
    )
    validation = validation_evaluate(validation=validation, results=make_results(), actor=actor)
    started = watch_start(validation=validation, actor=actor, source=Watch.Source.CI)
    queued.clear()
    return started


def post(api, body, capture):
    with capture(execute=True):
        return api.post(URL, body)


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    data = response.json()
    assert set(data) == {"error", "detail", "fields"}
    assert data["error"] == code and data["detail"]
    return data


def test_a_firing_alert_on_the_watched_deployment_queues_the_confirming_probe(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    response = post(monitoring_api, FIRING, django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["status"] == "processed" and len(data["delivery"]) == 64
    [alert] = data["alerts"]
    assert (alert["outcome"], alert["watchId"], alert["project"], alert["environment"]) == (
        "probe_queued",
        watch.pk,
        "wedsync-web",
        "production",
    )
    assert (alert["alertname"], alert["fingerprint"], alert["status"]) == (
        "HighLatencyP95",
        "a1c4e9f07b3d2e58",
        "firing",
    )
    assert queued == [("gates.tasks.watch_alert_probe", (watch.pk,))]
    event = AuditEvent.objects.get(action="watch.alert")
    assert event.data["alertname"] == "HighLatencyP95" and event.data["fingerprint"] == "a1c4e9f07b3d2e58"
    assert event.actor.startswith("token:monitoring test token")
    delivery = WebhookDelivery.objects.get(provider="alertmanager")
    assert (delivery.event, delivery.action, delivery.state) == ("alert", "firing", "processed")
    assert delivery.payload == FIRING


def test_a_repeated_delivery_is_a_duplicate_and_does_nothing_again(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    first = post(monitoring_api, FIRING, django_capture_on_commit_callbacks)
    again = post(monitoring_api, FIRING, django_capture_on_commit_callbacks)

    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["status"] == "duplicate" and again.json()["alerts"] == []
    assert again.json()["delivery"] == first.json()["delivery"]
    assert len(queued) == 1
    assert AuditEvent.objects.filter(action="watch.alert").count() == 1
    assert WebhookDelivery.objects.filter(provider="alertmanager").count() == 1


def test_a_new_firing_of_the_same_alert_is_a_new_delivery(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    post(monitoring_api, FIRING, django_capture_on_commit_callbacks)
    later = copy.deepcopy(FIRING)
    later["alerts"][0]["startsAt"] = "2026-12-01T11:02:00Z"

    assert post(monitoring_api, later, django_capture_on_commit_callbacks).json()["status"] == "processed"
    assert len(queued) == 2


def test_a_resolved_alert_is_recorded_and_probes_nothing(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    response = post(monitoring_api, RESOLVED, django_capture_on_commit_callbacks)

    assert response.status_code == 200, response.content
    [alert] = response.json()["alerts"]
    assert (alert["outcome"], alert["status"], alert["watchId"]) == ("recorded", "resolved", watch.pk)
    assert queued == []
    delivery = WebhookDelivery.objects.get(provider="alertmanager")
    assert (delivery.action, delivery.state, delivery.payload) == ("resolved", "processed", RESOLVED)
    assert "recorded" in delivery.result
    assert not AuditEvent.objects.filter(action="watch.alert").exists()


def test_an_older_sender_without_truncated_alerts_and_a_newer_one_with_a_reason_both_parse(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    older = copy.deepcopy(FIRING)
    del older["truncatedAlerts"]
    newer = copy.deepcopy(FIRING)
    newer["alerts"][0]["startsAt"] = "2026-12-01T12:00:00Z"
    newer["notification_reason"] = "repeat_interval"
    newer["alerts"][0]["somethingNew"] = {"nested": True}

    for body in (older, newer):
        response = post(monitoring_api, body, django_capture_on_commit_callbacks)
        assert response.status_code == 200, response.content
        assert response.json()["alerts"][0]["outcome"] == "probe_queued"
    assert len(queued) == 2


def test_an_alert_for_another_project_is_ignored_and_says_why(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    other = Project.objects.create(slug="other-shop", name="Other shop")
    Environment.objects.create(project=other, name="production")
    body = copy.deepcopy(FIRING)
    body["alerts"][0]["labels"]["service"] = "other-shop"

    response = post(monitoring_api, body, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    [alert] = response.json()["alerts"]
    assert (alert["outcome"], alert["project"]) == ("ignored", "other-shop")
    assert "wedsync-web" in alert["detail"]
    assert queued == [] and not AuditEvent.objects.filter(action="watch.alert").exists()
    assert WebhookDelivery.objects.get(provider="alertmanager").state == "ignored"


def test_a_firing_alert_with_nothing_watched_is_acknowledged(
    monitoring_api, project, queued, django_capture_on_commit_callbacks
):
    response = post(monitoring_api, FIRING, django_capture_on_commit_callbacks)

    assert response.status_code == 200
    [alert] = response.json()["alerts"]
    assert alert["outcome"] == "not_watched" and "wedsync-web/production" in alert["detail"]
    assert queued == []


def test_alerts_without_the_labels_or_for_an_unknown_environment_are_ignored(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    body = copy.deepcopy(FIRING)
    unlabelled = copy.deepcopy(body["alerts"][0])
    del unlabelled["labels"]["service"]
    unlabelled["fingerprint"] = "0000000000000001"
    elsewhere = copy.deepcopy(body["alerts"][0])
    elsewhere["labels"]["environment"] = "preview"
    elsewhere["fingerprint"] = "0000000000000002"
    body["alerts"] = [unlabelled, elsewhere]

    outcomes = post(monitoring_api, body, django_capture_on_commit_callbacks).json()["alerts"]

    assert [alert["outcome"] for alert in outcomes] == ["ignored", "ignored"]
    assert "'service' label" in outcomes[0]["detail"]
    assert "no environment 'preview'" in outcomes[1]["detail"]
    assert queued == []


def test_the_label_names_are_settings(
    monitoring_api, watch, queued, settings, django_capture_on_commit_callbacks
):
    settings.PERFGATE_ALERT_PROJECT_LABEL = "app"
    body = copy.deepcopy(FIRING)
    body["alerts"][0]["labels"]["app"] = body["alerts"][0]["labels"].pop("service")

    assert post(monitoring_api, body, django_capture_on_commit_callbacks).json()["alerts"][0]["outcome"] == (
        "probe_queued"
    )


def test_several_alerts_on_one_deployment_ask_for_one_probe(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    body = copy.deepcopy(FIRING)
    second = copy.deepcopy(body["alerts"][0])
    second["labels"]["route"] = "/api/rsvp"
    second["fingerprint"] = "b2d5f0a18c4e3f69"
    body["alerts"].append(second)

    outcomes = post(monitoring_api, body, django_capture_on_commit_callbacks).json()["alerts"]

    assert [alert["outcome"] for alert in outcomes] == ["probe_queued", "probe_queued"]
    assert len(queued) == 1


def test_an_alert_after_the_rollback_was_decided_changes_nothing(
    monitoring_api, watch, queued, django_capture_on_commit_callbacks
):
    Rollback.objects.create(
        watch=watch,
        validation=watch.validation,
        project=watch.project,
        environment=watch.environment,
        trigger=Rollback.Trigger.WATCH,
        state=Rollback.State.PROPOSED,
        reason="3 failed probes in a row",
    )

    [alert] = post(monitoring_api, FIRING, django_capture_on_commit_callbacks).json()["alerts"]

    assert alert["outcome"] == "rollback_decided"
    assert queued == []


def test_a_monitoring_token_limited_to_staging_cannot_act_on_production(
    project, watch, queued, django_capture_on_commit_callbacks
):
    staging_monitor = Api(make_token(project, "monitoring", environments=["staging"])[1])

    [alert] = post(staging_monitor, FIRING, django_capture_on_commit_callbacks).json()["alerts"]

    assert alert["outcome"] == "ignored" and "may not touch" in alert["detail"]
    assert queued == []


@pytest.mark.parametrize("persona", ["ci_api", "ops_api", "auditor_api"])
def test_only_a_monitoring_token_may_post_alerts(request, persona, watch, queued):
    api = request.getfixturevalue(persona)
    assert_error(api.post(URL, FIRING), 403, "permission_denied")
    assert queued == [] and not WebhookDelivery.objects.exists()


def test_alerts_without_a_token_are_unauthenticated(watch):
    assert_error(Api(None).post(URL, FIRING), 401, "unauthenticated")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"version": "4", "status": "firing"}, "alerts"),
        ({"alerts": "everything is on fire"}, "alerts.non_field_errors"),
        ({"alerts": [{"labels": {"service": "wedsync-web"}}]}, "alerts[0].status"),
        ([FIRING], "_"),
    ],
)
def test_a_body_that_is_not_an_alertmanager_delivery_is_refused(monitoring_api, watch, queued, body, field):
    data = assert_error(monitoring_api.post(URL, body), 400, "invalid")
    assert field in data["fields"]
    assert queued == [] and not WebhookDelivery.objects.exists()


def test_a_body_that_is_not_json_is_malformed(monitoring_api, watch):
    response = monitoring_api.client.post(URL, "{not json", content_type="application/json")
    assert_error(response, 400, "malformed")
    assert not WebhookDelivery.objects.exists()


def test_a_body_holding_a_nul_character_is_refused_before_it_is_stored(monitoring_api, watch, queued):
    body = copy.deepcopy(FIRING)
    body["alerts"][0]["annotations"]["description"] = "p95 \u0000"
    assert_error(monitoring_api.post(URL, body), 400, "malformed")
    assert not WebhookDelivery.objects.exists()
