"""The GitHub integration on a real `manage.py qcluster` worker (the ORM broker, or Redis when
REDIS_URL is set): outbox deliveries and webhook processing run as queued tasks."""

import json

import pytest

from gates.audit import Actor
from integrations.models import OutboundCall, WebhookDelivery
from tests.factories import make_validation
from tests.integrations.conftest import fixture_payload, send_webhook
from tests.qcluster import qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SHA = "9" * 40


def test_a_worker_delivers_the_outbox_and_acts_on_a_webhook(client, project, staging, app_connection, fake):
    project.repository = "Codertocat/Hello-World"
    project.save(update_fields=["repository"])
    fake.outage(503)  # GitHub is down when the validation starts
    with qcluster():
        make_validation(
            project=project,
            environment=staging,
            build_id="w-1",
            git_hash=SHA,
            actor=Actor("user", "olivia-ops"),
        )
        wait_for(lambda: OutboundCall.objects.filter(attempts__gte=1).exists(), 30, what="a first attempt")
        assert not fake.statuses
        fake.recover()
        wait_for(
            lambda: fake.statuses.get(("Codertocat/Hello-World", SHA)),
            90,
            what="the status, after the outage",
        )

        payload = fixture_payload("deployment_protection_rule.requested.json")
        payload["deployment_callback_url"] = (
            f"{fake.url}/repos/Codertocat/Hello-World/actions/runs/7001/deployment_protection_rule"
        )
        response = send_webhook(client, "deployment_protection_rule", json.dumps(payload).encode())
        assert response.status_code == 202
        wait_for(lambda: fake.protection_reviews, 30, what="the protection-rule review")

    [review] = fake.protection_reviews
    assert review["state"] == "rejected" and "staging" in review["comment"]
    assert WebhookDelivery.objects.get().state == "processed"
    assert [s["state"] for s in fake.statuses[("Codertocat/Hello-World", SHA)]] == ["pending"]
