"""Prometheus Alertmanager's deliveries (``POST /api/ci-cd/performance/alerts``): each stored once
and acted on, alert by alert. A firing alert on a watched production deployment asks for a
confirming probe (``gates.services.watches.watch_alerted``); resolved ones are recorded with the
delivery. The view (``gates.api.AlertsView``) only reads the body and calls ``alerts_receive``."""

from __future__ import annotations

import hashlib
import logging

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from gates.audit import Actor
from gates.services.watches import watch_alerted, watch_for_alert
from integrations.models import ApiToken, WebhookDelivery

logger = logging.getLogger(__name__)

# What became of one alert of a delivery (AlertsView's response says it per alert).
ALERT_OUTCOMES = {
    "probe_queued": "a probe confirms the alert now",
    "rollback_decided": "a rollback of this deployment was already decided; nothing more is done",
    "recorded": "resolved; recorded",
    "not_watched": "no watched deployment",
    "ignored": "ignored",
}


def alert_delivery_id(body: dict) -> str:
    """The key of one Alertmanager delivery: its group, status and alerts. A retried send and a
    repeat of an unchanged group have the same key."""
    alerts = sorted(
        (alert.get("fingerprint", ""), alert.get("startsAt", ""), alert.get("endsAt", ""))
        for alert in body["alerts"]
    )
    key = orjson.dumps([body.get("groupKey", ""), body.get("status", ""), alerts])
    return hashlib.sha256(key).hexdigest()


def alerts_receive(*, token: ApiToken, actor: Actor, body: dict, payload: dict) -> dict:
    """Store an Alertmanager delivery once and act on each alert, in one transaction: a repeated
    delivery is answered "duplicate" with nothing done, and a failure leaves nothing stored (the
    sender retries). Each watched deployment gets one confirming probe per delivery, however many
    of its alerts fire (``watch_alerted`` queues it after the commit)."""
    delivery_id = alert_delivery_id(body)
    answer = {"delivery": delivery_id, "truncatedAlerts": body.get("truncatedAlerts", 0)}
    with transaction.atomic():
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    provider="alertmanager",
                    delivery_id=delivery_id,
                    event="alert",
                    action=body.get("status", "")[:100],
                    payload=payload,
                    state=WebhookDelivery.State.PROCESSED,
                    processed_at=timezone.now(),
                )
        except IntegrityError:
            return {**answer, "status": "duplicate", "alerts": []}
        alerted: dict[int, str] = {}
        outcomes = [_alert_outcome(token, actor, body, alert, alerted) for alert in body["alerts"]]
        acted = any(outcome["outcome"] != "ignored" for outcome in outcomes)
        delivery.state = WebhookDelivery.State.PROCESSED if acted else WebhookDelivery.State.IGNORED
        delivery.result = "\n".join(
            f"{o['alertname'] or '?'} {o['fingerprint'] or '?'} ({o['status']}): {o['outcome']}: "
            f"{o['detail']}"
            for o in outcomes
        )[:10_000]
        delivery.save(update_fields=["state", "result"])
    return {**answer, "status": "processed" if acted else "ignored", "alerts": outcomes}


def _alert_outcome(token: ApiToken, actor: Actor, body: dict, alert: dict, alerted: dict[int, str]) -> dict:
    """What one alert of a delivery does; ``alerted`` holds the watches this delivery has already
    asked for a probe ({watch id: outcome})."""
    labels = alert["labels"]
    project_slug = labels.get(settings.PERFGATE_ALERT_PROJECT_LABEL) or None
    environment_name = labels.get(settings.PERFGATE_ALERT_ENVIRONMENT_LABEL) or None
    outcome = {
        "fingerprint": alert["fingerprint"],
        "alertname": labels.get("alertname", ""),
        "status": alert["status"],
        "project": project_slug,
        "environment": environment_name,
        "watchId": None,
    }

    def said(kind: str, detail: str) -> dict:
        return {**outcome, "outcome": kind, "detail": detail}

    project = token.project
    if project_slug is None or environment_name is None:
        missing = (
            settings.PERFGATE_ALERT_PROJECT_LABEL
            if project_slug is None
            else settings.PERFGATE_ALERT_ENVIRONMENT_LABEL
        )
        return said("ignored", f"The alert has no {missing!r} label naming a project and an environment.")
    if project_slug != project.slug:
        logger.warning(
            "An alert names project %r, but the monitoring token %r belongs to %s: ignored.",
            project_slug[:100],
            token.name,
            project.slug,
        )
        return said("ignored", f"The alert names project {project_slug!r}; this token is {project.slug}'s.")
    environment = project.environments.filter(name=environment_name).first()
    if environment is None:
        return said("ignored", f"Project {project.slug} has no environment {environment_name!r}.")
    if not token.allows_environment(environment.name):
        return said("ignored", f"This token may not touch {project.slug}/{environment.name}.")
    watch = watch_for_alert(project=project, environment=environment)
    if alert["status"] == "resolved":
        if watch is not None:
            outcome["watchId"] = watch.pk
        return said("recorded", "Resolved; recorded with this delivery.")
    if watch is None:
        return said(
            "not_watched",
            f"No deployment of {project.slug}/{environment.name} is watched: nothing to confirm.",
        )
    outcome["watchId"] = watch.pk
    build = watch.validation.build_id
    if watch.pk in alerted:
        kind = alerted[watch.pk]
        return said(kind, f"Build {build}: this delivery already asked about it ({ALERT_OUTCOMES[kind]}).")
    probing = watch_alerted(
        watch=watch,
        actor=actor,
        alert={
            "alertname": outcome["alertname"][:200],
            "fingerprint": alert["fingerprint"][:100],
            "starts_at": alert["startsAt"][:40],
            "summary": alert["annotations"].get("summary", "")[:500],
            "group_key": body.get("groupKey", "")[:500],
            "receiver": body.get("receiver", "")[:200],
        },
    )
    kind = "probe_queued" if probing else "rollback_decided"
    alerted[watch.pk] = kind
    return said(kind, f"Build {build}: {ALERT_OUTCOMES[kind]}.")
