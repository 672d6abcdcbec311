"""Vercel webhooks: the fixture payloads, signed as Vercel signs them (the fake's helpers), sent to
the endpoint and processed as the task would. Also: a monitoring token reaches nothing but alerts."""

from __future__ import annotations

import json

import pytest

from gates.models import Validation
from integrations.models import VercelConnection, WebhookDelivery
from integrations.vercel import webhooks as vercel_webhooks
from integrations.vercel.webhooks import signature_valid
from integrations.webhooks import handlers_for, webhook_process
from tests.conftest import Api, make_token
from tests.fake_vercel import (
    PROJECT_ID,
    TEAM_ID,
    FakeVercel,
    load_webhook_fixture,
    signed_webhook,
    webhook_signature,
)

SECRET = "vercel-integration-client-secret"
URL = "/api/ci-cd/webhooks/vercel"


@pytest.fixture(autouse=True)
def _vercel_settings(settings):
    settings.VERCEL_WEBHOOK_SECRET = SECRET
    settings.VERCEL_TIMEOUT_SECONDS = 2
    settings.PERFGATE_VERCEL_DEPLOYMENT_SCHEME = "http"


@pytest.fixture
def vercel():
    with FakeVercel() as server:
        yield server


@pytest.fixture
def connection(project, vercel):
    project.vercel_project_id = PROJECT_ID
    project.save(update_fields=["vercel_project_id"])
    return VercelConnection.objects.create(
        project=project, team_id=TEAM_ID, token=vercel.token, api_url=vercel.url
    )


def post(client, payload, *, secret: str = SECRET, signature: str | None = None, signed: bool = True):
    """Send a delivery as Vercel does: ``payload`` is a fixture name, a dict or raw bytes;
    ``signature`` replaces the real one, ``signed=False`` leaves the header out."""
    body, headers = signed_webhook(payload, secret)
    extra = {"HTTP_X_VERCEL_SIGNATURE": signature or headers["x-vercel-signature"]} if signed else {}
    return client.post(URL, data=body, content_type="application/json", **extra)


def test_vercel_deliveries_are_processed_by_the_vercel_handlers():
    assert handlers_for("vercel") == (vercel_webhooks.HANDLERS, {})


def test_the_signature_is_the_hex_hmac_sha1_of_the_raw_body_as_the_fake_signs_it():
    body = json.dumps(load_webhook_fixture("deployment.ready")).encode()
    assert signature_valid(SECRET, body, webhook_signature(body, SECRET))
    assert signature_valid(SECRET, body, webhook_signature(body, SECRET).upper())
    assert not signature_valid(SECRET, body + b" ", webhook_signature(body, SECRET))
    assert not signature_valid(SECRET, body, webhook_signature(body, "another secret"))
    assert not signature_valid("", body, webhook_signature(body, ""))


@pytest.mark.parametrize("how", ["missing", "wrong secret", "garbage"])
def test_a_missing_or_bad_signature_is_401_and_nothing_is_stored(client, connection, how):
    if how == "missing":
        response = post(client, "deployment.created", signed=False)
    elif how == "wrong secret":
        response = post(client, "deployment.created", secret="not the secret")
    else:
        response = post(client, "deployment.created", signature="sha1=0123")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthenticated"
    assert WebhookDelivery.objects.count() == 0
    assert Validation.objects.count() == 0


def test_a_body_changed_after_signing_is_refused(client, connection):
    body, headers = signed_webhook("deployment.created", SECRET)
    tampered = body.replace(b"wedsync-web-k3j9x2mq7", b"evil-k3j9x2mq7")
    response = client.post(
        URL,
        data=tampered,
        content_type="application/json",
        HTTP_X_VERCEL_SIGNATURE=headers["x-vercel-signature"],
    )
    assert response.status_code == 401
    assert WebhookDelivery.objects.count() == 0


def test_without_a_configured_secret_every_delivery_is_refused(client, connection, settings):
    settings.VERCEL_WEBHOOK_SECRET = ""
    response = post(client, "deployment.created", secret="")
    assert response.status_code == 401
    assert "VERCEL_WEBHOOK_SECRET" in response.json()["detail"]
    assert WebhookDelivery.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"[1, 2]", None),
        (b"{not json", None),
        (b'{"type": "deployment.created"}', "id"),
        (b'{"id": "whk_1"}', "type"),
    ],
)
def test_a_signed_body_that_is_no_envelope_is_400_and_not_stored(client, db, body, field):
    response = post(client, body)
    assert response.status_code == 400
    if field:
        assert field in response.json()["fields"]
    assert WebhookDelivery.objects.count() == 0


def test_a_body_larger_than_the_limit_is_413(client, db, settings):
    settings.PERFGATE_WEBHOOK_MAX_BYTES = 1000
    payload = load_webhook_fixture("deployment.created")
    payload["payload"]["padding"] = "x" * 2000
    response = post(client, payload)
    assert response.status_code == 413
    assert WebhookDelivery.objects.count() == 0


def test_a_delivery_is_answered_at_once_and_its_work_queued(client, connection):
    response = post(client, "deployment.created")
    assert (response.status_code, response.json()) == (
        202,
        {"delivery": "whk_Dc1r8N2xQ7pL4mZs", "status": "queued"},
    )
    stored = WebhookDelivery.objects.get()
    assert (stored.provider, stored.event, stored.state) == ("vercel", "deployment.created", "queued")
    assert Validation.objects.count() == 0, "no work was done while Vercel waited"


def test_a_redelivered_envelope_id_is_acknowledged_as_a_duplicate_and_processed_once(
    client, connection, vercel
):
    vercel.add_deployment(
        deployment_id="dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs", target=None, ready_state="BUILDING"
    )
    first = post(client, "deployment.preview.created")
    again = post(client, "deployment.preview.created")
    assert (first.json()["status"], again.json()["status"]) == ("queued", "duplicate")
    [stored] = WebhookDelivery.objects.all()
    webhook_process(stored.pk)
    assert webhook_process(stored.pk) == "already processed"
    assert Validation.objects.count() == 1


def test_the_same_deployment_announced_twice_under_two_ids_gets_one_validation(client, connection, vercel):
    vercel.add_deployment(
        deployment_id="dpl_8kQm3ZrT5vXn2LbW9cJd4HfY6pGs", target=None, ready_state="BUILDING"
    )
    payload = load_webhook_fixture("deployment.preview.created")
    post(client, payload)
    post(client, {**payload, "id": "whk_another_delivery"})
    results = [webhook_process(d.pk) for d in WebhookDelivery.objects.order_by("received_at")]
    assert Validation.objects.count() == 1
    assert "already has validation" in results[1]


def test_an_event_type_perfgate_does_not_use_is_acknowledged_and_recorded_as_ignored(
    client, admin_client, connection
):
    payload = {**load_webhook_fixture("deployment.ready"), "id": "whk_domain", "type": "domain.created"}
    response = post(client, payload)
    assert (response.status_code, response.json()["status"]) == (202, "ignored")
    stored = WebhookDelivery.objects.get()
    assert (stored.state, stored.result) == ("ignored", "event type 'domain.created' not used by perfgate")
    assert stored.processed_at is not None
    page = admin_client.get("/admin/integrations/webhookdelivery/")
    assert "not used by perfgate" in page.content.decode()


def test_a_deployment_of_a_project_perfgate_does_not_know_is_acknowledged_and_recorded_as_ignored(
    client, admin_client, connection
):
    payload = load_webhook_fixture("deployment.created")
    payload["payload"]["project"]["id"] = "prj_unknown"
    response = post(client, payload)
    assert (response.status_code, response.json()["status"]) == (202, "ignored")
    stored = WebhookDelivery.objects.get()
    assert stored.result == "no perfgate project has Vercel project id 'prj_unknown'"
    assert Validation.objects.count() == 0
    page = admin_client.get(f"/admin/integrations/webhookdelivery/{stored.pk}/change/")
    assert "prj_unknown" in page.content.decode()


def test_deployment_succeeded_is_recorded_and_changes_nothing(client, connection):
    post(client, "deployment.succeeded")
    stored = WebhookDelivery.objects.get()
    assert webhook_process(stored.pk) == "recorded; nothing to do"
    assert Validation.objects.count() == 0


def test_a_check_rerequest_for_a_check_that_is_not_perfgates_is_recorded_and_ignored(client, connection):
    post(client, "deployment.check-rerequested")
    stored = WebhookDelivery.objects.get()
    assert webhook_process(stored.pk) == "not a check of perfgate's"
    assert Validation.objects.count() == 0


# --- A monitoring token (Alertmanager's) may only post alerts ------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/ci-cd/performance/validate"),
        ("get", "/api/ci-cd/performance/status/b-1?project=wedsync-web&environment=staging"),
        ("get", "/api/ci-cd/performance/history"),
        ("get", "/api/ci-cd/performance/regression?project=wedsync-web&environment=staging&buildId=b-1"),
        ("post", "/api/ci-cd/performance/block"),
        ("post", "/api/ci-cd/performance/cancel"),
        ("post", "/api/ci-cd/performance/bypass"),
        ("post", "/api/ci-cd/performance/baseline"),
        ("post", "/api/ci-cd/performance/watch"),
    ],
)
def test_a_monitoring_token_is_refused_everywhere_but_alerts(project, method, path):
    api = Api(make_token(project, "monitoring")[1])
    response = getattr(api, method)(path)
    assert response.status_code == 403, response.content
    assert response.json()["error"] == "permission_denied"


def test_a_monitoring_token_is_told_what_it_may_do(project):
    api = Api(make_token(project, "monitoring")[1])
    response = api.get("/api/ci-cd/performance/history")
    assert response.json()["detail"] == "A monitoring token may only post alerts."
