"""Sending notification messages: the outbox hands each recorded message (one call, one or more
coalesced events) to ``deliver`` (registered for the providers ``slack`` and ``email`` in
``IntegrationsConfig.ready``).

Slack's incoming webhooks answer 200 ``ok``; 429 with ``Retry-After`` (about one message per
second per webhook: perfgate keeps to that itself); 400 ``invalid_payload`` / ``invalid_blocks``
for a message Slack cannot take (a defect here: logged, never resent); 403 ``action_prohibited``,
404 ``channel_not_found`` / ``no_service``, 410 ``channel_is_archived`` when the channel is gone:
the channel is marked broken and nothing more is sent to it until someone gives it a new URL.
The webhook URL is a secret: errors name the channel, never the URL.

Mail goes through Django's mail (``EMAIL_URL``): a 4xx reply or a lost connection is tried again,
a 5xx reply (a refused recipient) is not.
"""

from __future__ import annotations

import logging
import smtplib
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.core.mail import BadHeaderError, EmailMultiAlternatives
from django.db import transaction
from django.utils import timezone

from gates.audit import SYSTEM, audit_record
from integrations import http
from integrations.models import Notification, NotificationChannel, OutboundCall
from integrations.notify.messages import email_message, slack_message

logger = logging.getLogger(__name__)
BROKEN_STATUSES = {403, 404, 410}
# Events about a decision: the audit log records that people were told (never what was said).
DECISIONS = {
    NotificationChannel.Event.BLOCKED,
    NotificationChannel.Event.BYPASS_REQUESTED,
    NotificationChannel.Event.BYPASS_APPROVED,
    NotificationChannel.Event.BYPASS_REJECTED,
    NotificationChannel.Event.ROLLBACK,
}


def deliver(call: OutboundCall) -> None:
    """Send one message. Raises ``http.TryLater``, ``http.Pending`` or ``http.Refused``."""
    notifications = list(Notification.objects.filter(call=call).order_by("id"))
    if not notifications:
        return  # its events went with their channel
    channel = (
        NotificationChannel.objects.select_related("project").filter(pk=call.payload.get("channel")).first()
    )
    if call.payload.get("channel") and channel is None:
        raise http.Refused("The channel was deleted.")
    items = [n.item for n in notifications]
    refused: list[str] = []
    if call.provider == NotificationChannel.Kind.SLACK:
        _send_slack(channel, items)
    else:
        recipients = channel.recipients if channel is not None else call.payload.get("recipients", [])
        refused = _send_email(call, list(recipients), items)
    _audit(call, channel, notifications, "notification.sent", refused=refused)


def given_up(call: OutboundCall, error: str) -> None:
    """A message that will never be sent: logged and audited (its events, not its text)."""
    notifications = list(Notification.objects.filter(call=call).order_by("id"))
    channel = NotificationChannel.objects.filter(pk=call.payload.get("channel")).first()
    logger.error(
        "notification to %s given up (%d event(s)): %s",
        _label(channel, call),
        len(notifications),
        error[:300],
    )
    _audit(call, channel, notifications, "notification.given_up", reason=error[:500])


def _label(channel: NotificationChannel | None, call: OutboundCall) -> str:
    if channel is not None:
        return f"{channel.name} ({channel.kind})"
    return ", ".join(call.payload.get("recipients", [])) or "nobody"


def _audit(call, channel, notifications, action: str, reason: str = "", refused=()) -> None:
    decisions = [n for n in notifications if n.event in DECISIONS]
    if not decisions:
        return
    first = decisions[0]
    with transaction.atomic():
        audit_record(
            action=action,
            actor=SYSTEM,
            target=first.validation,
            project=call.project.slug,
            environment=first.environment if len({n.environment for n in decisions}) == 1 else "",
            reason=reason,
            data={
                "to": _label(channel, call),
                "events": dict(Counter(n.event for n in decisions)),
                "builds": sorted({n.item.get("build", "") for n in decisions} - {""})[:50],
                "outbound_call": call.pk,
                **({"refused": list(refused)} if refused else {}),
            },
        )


# --- Slack --------------------------------------------------------------------------------------


def _send_slack(channel: NotificationChannel | None, items: list[dict]) -> None:
    if channel is None:
        raise http.Refused("A Slack message without a channel.")
    name = f"Slack channel {channel.name!r} of {channel.project.slug}"
    if channel.is_broken:
        raise http.Refused(
            f"{name} is broken ({channel.broken_reason}); give it a new webhook URL in the admin."
        )
    if not channel.slack_webhook_url:
        raise http.Refused(f"{name} has no webhook URL; set it in the admin or in the environment variable.")
    now = timezone.now()
    if channel.next_send_at and channel.next_send_at > now:
        raise http.Pending(
            f"{name}: one message per second", retry_after=(channel.next_send_at - now).total_seconds()
        )
    try:
        http.call(
            "POST",
            channel.slack_webhook_url,
            json=slack_message(items),
            timeout=settings.SLACK_TIMEOUT_SECONDS,
            max_bytes=64 * 1024,
            label=f"POST to {name}",
        )
    except http.TryLater as exc:
        if exc.status == 429:
            wait = exc.retry_after if exc.retry_after is not None else 1.0
            _pace(channel, timezone.now() + timedelta(seconds=wait))
        raise
    except http.Refused as exc:
        if exc.status in BROKEN_STATUSES:
            _break(channel, f"Slack answered {exc.status} {exc.detail}".strip())
        elif exc.status == 400:
            logger.error("Slack refused a message perfgate built (a defect): %s", exc)
        raise
    _pace(channel, timezone.now() + timedelta(seconds=1 / settings.PERFGATE_SLACK_MESSAGES_PER_SECOND))


def _pace(channel: NotificationChannel, not_before) -> None:
    NotificationChannel.objects.filter(pk=channel.pk).update(next_send_at=not_before)


def _break(channel: NotificationChannel, reason: str) -> None:
    """Slack says the channel is gone or closed to us: stop sending to it, say so."""
    with transaction.atomic():
        marked = NotificationChannel.objects.filter(pk=channel.pk, broken_at__isnull=True).update(
            broken_at=timezone.now(), broken_reason=reason[:300]
        )
        if marked:
            audit_record(
                action="notification.channel_broken",
                actor=SYSTEM,
                target=channel,
                project=channel.project.slug,
                reason=reason[:300],
            )
    logger.error("Slack channel %r of %s is broken: %s", channel.name, channel.project.slug, reason)


# --- email --------------------------------------------------------------------------------------


def _send_email(call: OutboundCall, recipients: list[str], items: list[dict]) -> list[str]:
    """One mail per recipient, so a server that refuses one address (and accepts the others)
    cannot lose it silently: who has the mail is kept on the call, so a retry sends only to the
    rest. Returns the addresses refused for good (logged); raises when nobody could be reached."""
    if not recipients:
        raise http.Refused("An email without recipients.")
    content = email_message(items)
    done = dict(call.progress.get("recipients", {}))
    reasons = []
    for address in recipients:
        if address in done:
            continue
        try:
            _send_one(content, address)
            done[address] = "sent"
        except http.Refused as exc:
            logger.error("notification mail to %s refused for good: %s", address, exc)
            done[address] = "refused"
            reasons.append(str(exc))
        finally:
            call.progress = {**call.progress, "recipients": done}
            OutboundCall.objects.filter(pk=call.pk).update(progress=call.progress)
    refused = [address for address in recipients if done.get(address) == "refused"]
    if len(refused) == len(recipients):
        raise http.Refused(f"Email: every recipient was refused; {'; '.join(reasons) or 'earlier'}")
    return refused


def _send_one(content, address: str) -> None:
    message = EmailMultiAlternatives(
        subject=content.subject,
        body=content.text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[address],
        alternatives=[(content.html, "text/html")],
    )
    try:
        message.send(fail_silently=False)
    except BadHeaderError as exc:
        raise http.Refused(f"Email: a header perfgate built is invalid: {exc}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = {code for code, _ in exc.recipients.values()}
        error = http.Refused if all(code >= 500 for code in codes) else http.TryLater
        raise error(f"Email: the server refused the recipient ({sorted(codes)})") from None
    except smtplib.SMTPAuthenticationError as exc:
        # A wrong or rotated password is fixed by people; the mail waits for them (with backoff).
        raise http.TryLater(f"Email: the server refused the login ({exc.smtp_code})") from None
    except smtplib.SMTPResponseException as exc:
        error = http.Refused if exc.smtp_code >= 500 else http.TryLater
        raise error(f"Email: the server answered {exc.smtp_code}", status=exc.smtp_code) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise http.TryLater(f"Email: {type(exc).__name__}") from None
