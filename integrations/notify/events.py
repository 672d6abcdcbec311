"""Who hears what: the gate's changes and notices become notifications for the channels that want
them, recorded in the outbox in the transaction of the change itself, so a Slack or mail outage
loses nothing (``integrations.notify.delivery`` sends them).

Coalescing: a channel's events share one outbox call (one message) while that call waits for its
window (``PERFGATE_NOTIFY_WINDOW_SECONDS`` after the first event) or for Slack to come back, up to
``PERFGATE_NOTIFY_MAX_EVENTS``. Joining a call locks its row and needs it still ``pending``; the
outbox claims a call with a conditional update of the same row, so an event either joins before
the claim (and is in the message) or sees the call taken and starts the next one: never both,
never neither.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from gates.documents import validation_links
from gates.models import Notice, Validation
from gates.permissions import users_with_right
from gates.registry import Change
from gates.report import unit_of
from integrations.models import Notification, NotificationChannel, OutboundCall
from integrations.outbox import queue_delivery

logger = logging.getLogger(__name__)
Event = NotificationChannel.Event

EVENT_OF_NOTICE = {
    "bypass_requested": Event.BYPASS_REQUESTED,
    "bypass_approved": Event.BYPASS_APPROVED,
    "bypass_rejected": Event.BYPASS_REJECTED,
    "watch_inconclusive": Event.DEGRADED,
    "alert_unconfirmed": Event.DEGRADED,
    "watch_errored": Event.BLIND,
    "probe_error": Event.BLIND,
}
# What a notification about a blocked build lists: the checks that closed (or could close) the gate.
SHOWN_VERDICTS = {"fail", "error", "inconclusive"}


def absolute(path: str) -> str:
    return f"{settings.PERFGATE_BASE_URL}{path}"


# --- from the gate --------------------------------------------------------------------------------


def notify_listen(validation: Validation, change: Change) -> None:
    """A validation changed (registered listener): a blocked build, or a gate that could not
    decide (no verdict in a fail-open environment, or relative rules without a baseline)."""
    if change in (Change.FINISHED, Change.BLOCKED) and validation.status == Validation.Status.BLOCKED:
        by_hand = change == Change.BLOCKED
        what = "blocked by hand" if by_hand else "blocked"
        _record_validation(validation, Event.BLOCKED, what, level=Notice.Level.ERROR, verdicts=SHOWN_VERDICTS)
    if change != Change.FINISHED:
        return
    if validation.status == Validation.Status.FAILED:
        _record_validation(
            validation,
            Event.BLIND,
            "could not be validated (deploying anyway)",
            level=Notice.Level.ERROR,
            verdicts=SHOWN_VERDICTS,
        )
    blind = [c for c in (validation.report or {}).get("checks", []) if c.get("verdict") == "no_baseline"]
    if blind:
        _record_validation(
            validation,
            Event.BLIND,
            f"decided without a baseline ({len(blind)} relative rule{'s' if len(blind) != 1 else ''} blind)",
            level=Notice.Level.WARNING,
            verdicts={"no_baseline"},
            reason="Relative rules have no baseline to compare with, so only absolute rules decided. "
            "A passing build of this scenario becomes the baseline (or make one with POST …/baseline).",
        )


def notify_notice(notice: Notice) -> None:
    """A notice of the gate (registered notifier): bypasses asked for and decided, rollbacks,
    watches that degrade or go blind."""
    event = EVENT_OF_NOTICE.get(notice.kind) or (
        Event.ROLLBACK if notice.kind.startswith("rollback_") else None
    )
    if event is None:
        return
    validation = notice.validation
    item = _item(
        event=event,
        level=notice.level,
        title=notice.title,
        project=notice.project.slug,
        environment=notice.environment.name,
        validation=validation,
        reason=notice.text,
    )
    if notice.watch_id:
        item["links"].append(
            {"text": "Watch", "url": absolute(reverse("admin:gates_watch_change", args=[notice.watch_id]))}
        )
    if event == Event.BYPASS_REQUESTED and notice.bypass_id:
        bypass = notice.bypass
        item["people"] = [
            u.get_username()
            for u in users_with_right("approve_bypass", notice.project)
            if u.get_username().lower() not in bypass.requester_names
        ]
        item["links"].insert(
            0,
            {
                "text": "Approve",
                "url": absolute(reverse("admin:gates_bypassrequest_change", args=[bypass.pk])),
            },
        )
    _record(
        project=notice.project,
        environment=notice.environment.name,
        validation=validation,
        event=event,
        item=item,
    )
    if event in (Event.BYPASS_APPROVED, Event.BYPASS_REJECTED) and notice.bypass_id:
        _tell_requester(notice, item)


def _tell_requester(notice: Notice, item: dict) -> None:
    """The person who asked for a bypass hears the decision by email, channel or not."""
    names = notice.bypass.requester_names
    addresses = sorted(
        {
            u.email
            for u in get_user_model().objects.filter(username__in=names, is_active=True).exclude(email="")
        }
    )
    for address in addresses:
        _record_one(
            channel=None,
            recipients=[address],
            key=f"notify:email:{address.lower()}",
            project=notice.project,
            environment=notice.environment.name,
            validation=notice.validation,
            event=Event(EVENT_OF_NOTICE[notice.kind]),
            item=item,
        )


def outbox_gave_up(call: OutboundCall, error: str) -> None:
    """A call to GitHub or Vercel was given up: the gate's reports are not reaching them."""
    if call.provider not in ("github", "vercel") or call.project_id is None:
        return
    validation = call.validation
    environment = validation.environment.name if validation else ""
    build = f" build {validation.build_id}" if validation else ""
    title = f"{call.project.slug}{'/' + environment if environment else ''}{build}: {call.provider} not told"
    item = _item(
        event=Event.BLIND,
        level=Notice.Level.ERROR,
        title=title,
        project=call.project.slug,
        environment=environment,
        validation=validation,
        reason=f"perfgate gave up sending {call.kind} to {call.provider.capitalize()}: {error[:500]}",
    )
    item["links"].append(
        {
            "text": "Outbound call",
            "url": absolute(reverse("admin:integrations_outboundcall_change", args=[call.pk])),
        }
    )
    with transaction.atomic():
        _record(
            project=call.project, environment=environment, validation=validation, event=Event.BLIND, item=item
        )


# --- items ----------------------------------------------------------------------------------------


def _check_item(check: dict) -> dict:
    unit, factor = unit_of(check.get("metric"), check.get("aggregation"))

    def scaled(key):
        value = check.get(key)
        return None if value is None else value * factor

    return {
        "rule": check.get("rule", ""),
        "verdict": check.get("verdict", ""),
        "observed": scaled("observed"),
        "baseline": scaled("baseline"),
        "limit": scaled("limit"),
        "changePct": check.get("changePct"),
        "pValue": check.get("pValue"),
        "unit": unit,
    }


def _item(*, event, level, title, project, environment, validation, reason, verdicts=()) -> dict:
    links = []
    checks = []
    if validation is not None:
        paths = validation_links(validation)
        links = [
            {"text": "Validation", "url": absolute(paths["admin"])},
            {"text": "Chart", "url": absolute(paths["chart"])},
        ]
        checks = [
            _check_item(c)
            for c in (validation.report or {}).get("checks", [])
            if c.get("verdict") in verdicts
        ]
    return {
        "event": str(event),
        "level": str(level),
        "title": title,
        "project": project,
        "environment": environment,
        "build": validation.build_id if validation else "",
        "verdict": (validation.verdict or "") if validation else "",
        "status": validation.status if validation else "",
        "reason": reason,
        "checks": checks,
        "people": [],
        "links": links,
        "at": timezone.now().isoformat(),
    }


def _record_validation(validation, event, what, *, level, verdicts, reason=None) -> None:
    where = f"{validation.project.slug}/{validation.environment.name}"
    item = _item(
        event=event,
        level=level,
        title=f"{where} build {validation.build_id} {what}",
        project=validation.project.slug,
        environment=validation.environment.name,
        validation=validation,
        reason=reason or validation.status_reason or "",
        verdicts=verdicts,
    )
    _record(
        project=validation.project,
        environment=validation.environment.name,
        validation=validation,
        event=event,
        item=item,
    )


# --- recording ------------------------------------------------------------------------------------


def _record(*, project, environment: str, validation, event, item: dict) -> None:
    for channel in NotificationChannel.objects.filter(project=project, enabled=True):
        if channel.wants(str(event), environment):
            _record_one(
                channel=channel,
                recipients=[],
                key=channel.ordering_key,
                project=project,
                environment=environment,
                validation=validation,
                event=event,
                item=item,
            )


def _record_one(*, channel, recipients, key, project, environment, validation, event, item) -> Notification:
    """One notification, joined to the channel's waiting message or starting a new one."""
    now = timezone.now()
    call = (
        OutboundCall.objects.select_for_update()
        .filter(ordering_key=key, state=OutboundCall.State.PENDING, kind="message")
        .order_by("-id")
        .first()
    )
    if call is None or call.notifications.count() >= settings.PERFGATE_NOTIFY_MAX_EVENTS:
        call = OutboundCall.objects.create(
            project=project,
            validation=validation,
            provider=channel.kind if channel is not None else NotificationChannel.Kind.EMAIL,
            kind="message",
            ordering_key=key,
            payload={"channel": channel.pk if channel is not None else None, "recipients": recipients},
            next_attempt_at=now + timedelta(seconds=settings.PERFGATE_NOTIFY_WINDOW_SECONDS),
        )
        # One delivery task per message, not per event: a burst of a thousand events would
        # otherwise queue a thousand tasks that find nothing to send.
        transaction.on_commit(queue_delivery)
    notification = Notification.objects.create(
        channel=channel,
        recipients=recipients,
        project=project,
        environment=environment,
        validation=validation,
        event=str(event),
        title=item["title"][:300],
        item=item,
        call=call,
    )
    return notification
