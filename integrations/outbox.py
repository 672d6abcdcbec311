"""Delivering the outbox: recorded calls go out in order per ordering key, each at most once at a
time, retried with backoff that honours ``Retry-After`` and rate-limit resets.

A call is claimed with a conditional update (``PENDING`` → ``SENDING``), so two delivery tasks
never send the same call; a claim that outlives its worker (``claimed_until``) is taken back.
Only the oldest undelivered call of a key is eligible, so an outage holds a key's later calls
back until the earlier one went through: statuses arrive in the order they were decided.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone
from django_q.tasks import async_task

from integrations import http
from integrations.models import OutboundCall

logger = logging.getLogger(__name__)
CLAIM_SECONDS = 120
WAITER_KEY = "perfgate:outbox:waiter"
WAITER_SECONDS = 20


@dataclass
class Delivered:
    sent: int = 0
    retrying: int = 0
    failed: int = 0


def backoff_seconds(attempts: int) -> float:
    return min(settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS, 2 ** max(0, attempts - 1))


def _heads(now) -> tuple[list[int], object]:
    """Ids of the oldest undelivered call of every key that is due now, and when the next of
    those oldest calls falls due (None: nothing waits)."""
    open_calls = OutboundCall.objects.filter(
        state__in=[OutboundCall.State.PENDING, OutboundCall.State.SENDING]
    )
    heads = list(open_calls.values("ordering_key").annotate(first=Min("id")).values_list("first", flat=True))
    due = Q(state=OutboundCall.State.PENDING, next_attempt_at__lte=now) | Q(
        state=OutboundCall.State.SENDING, claimed_until__lt=now
    )
    ready = list(
        OutboundCall.objects.filter(due, id__in=heads).order_by("id").values_list("id", flat=True)[:200]
    )
    upcoming = (
        OutboundCall.objects.filter(id__in=heads, state=OutboundCall.State.PENDING, next_attempt_at__gt=now)
        .order_by("next_attempt_at")
        .values_list("next_attempt_at", flat=True)
        .first()
    )
    return ready, upcoming


def _claim(call_id: int, now) -> OutboundCall | None:
    claimed = (
        OutboundCall.objects.filter(pk=call_id)
        .filter(
            Q(state=OutboundCall.State.PENDING, next_attempt_at__lte=now)
            | Q(state=OutboundCall.State.SENDING, claimed_until__lt=now)
        )
        .update(state=OutboundCall.State.SENDING, claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )
    return OutboundCall.objects.get(pk=call_id) if claimed else None


@dataclass(frozen=True)
class Deliverer:
    deliver: Callable[[OutboundCall], None]
    # A wait the other side asks for (429 with Retry-After) holds every call of the project to
    # that provider (GitHub limits a whole installation), or only the call's own key (Slack
    # limits each webhook).
    rate_limit_holds_project: bool = True
    given_up: Callable[[OutboundCall, str], None] | None = None


_deliverers: dict[str, Deliverer] = {}


def register_deliverer(
    provider: str,
    deliver: Callable[[OutboundCall], None],
    *,
    rate_limit_holds_project: bool = True,
    given_up: Callable[[OutboundCall, str], None] | None = None,
) -> None:
    """How the calls recorded for ``provider`` are sent (each integration registers its own in
    ``IntegrationsConfig.ready``). ``deliver`` raises ``http.TryLater`` or ``http.Refused``;
    ``given_up`` hears of a call that will never be sent (refused, or out of time)."""
    _deliverers[provider] = Deliverer(deliver, rate_limit_holds_project, given_up)


def deliverers() -> dict[str, Deliverer]:
    return dict(_deliverers)


def _deliverer(provider: str) -> Deliverer:
    deliverer = _deliverers.get(provider)
    if deliverer is None:
        raise http.Refused(f"No deliverer for provider {provider!r}.")
    return deliverer


def deliver_one(call: OutboundCall) -> str:
    """Send one claimed call and record what happened: "sent", "retrying" or "failed"."""
    now = timezone.now()
    deliverer = _deliverers.get(call.provider)
    try:
        _deliverer(call.provider).deliver(call)
    except http.Pending as exc:
        wait = exc.retry_after or 1.0
        OutboundCall.objects.filter(pk=call.pk).update(
            state=OutboundCall.State.PENDING,
            next_attempt_at=now + timedelta(seconds=wait),
            claimed_until=None,
            last_error="",
        )
        logger.info(
            "outbox: %s #%s is under way; looked at again in %.1f s: %s", call.kind, call.pk, wait, exc
        )
        return "retrying"
    except http.TryLater as exc:
        attempts = call.attempts + 1
        give_up_at = call.created_at + timedelta(hours=settings.PERFGATE_OUTBOX_GIVE_UP_HOURS)
        wait = max(exc.retry_after or 0.0, backoff_seconds(attempts))
        next_attempt = now + timedelta(seconds=wait)
        if next_attempt > give_up_at:
            _finish(call, OutboundCall.State.FAILED, attempts, f"Given up: {exc}")
            return "failed"
        OutboundCall.objects.filter(pk=call.pk).update(
            state=OutboundCall.State.PENDING,
            attempts=attempts,
            next_attempt_at=next_attempt,
            claimed_until=None,
            last_error=str(exc)[:2000],
        )
        if exc.retry_after and deliverer is not None and deliverer.rate_limit_holds_project:
            # GitHub asked this connection to wait: every call of the project to it waits with it.
            OutboundCall.objects.filter(
                project_id=call.project_id,
                provider=call.provider,
                state=OutboundCall.State.PENDING,
                next_attempt_at__lt=next_attempt,
            ).update(next_attempt_at=next_attempt)
        logger.info("outbox: %s #%s will be retried in %.0f s: %s", call.kind, call.pk, wait, exc)
        return "retrying"
    except http.Refused as exc:
        logger.warning("outbox: %s #%s refused, not retried: %s", call.kind, call.pk, exc)
        _finish(call, OutboundCall.State.FAILED, call.attempts + 1, str(exc))
        return "failed"
    _finish(call, OutboundCall.State.DELIVERED, call.attempts + 1, "")
    return "sent"


def _finish(call: OutboundCall, state: str, attempts: int, error: str) -> None:
    with transaction.atomic():
        OutboundCall.objects.filter(pk=call.pk).update(
            state=state,
            attempts=attempts,
            claimed_until=None,
            last_error=error[:2000],
            delivered_at=timezone.now() if state == OutboundCall.State.DELIVERED else None,
        )
        deliverer = _deliverers.get(call.provider)
        if state == OutboundCall.State.FAILED and deliverer is not None and deliverer.given_up is not None:
            # Told in the same transaction: a give-up nobody hears of would be a silent loss. A
            # hook that breaks must not keep the call from finishing (it would be sent forever).
            try:
                with transaction.atomic():
                    deliverer.given_up(call, error)
            except Exception:
                logger.exception("outbox: telling of given-up %s #%s failed", call.kind, call.pk)


def deliver_due(*, wait_seconds: float = 0.0) -> Delivered:
    """Deliver every due call, key by key in order. With ``wait_seconds``, keep going while a
    retry falls due within that time (a task that sees a short ``Retry-After`` through)."""
    report = Delivered()
    deadline = time.monotonic() + wait_seconds
    while True:
        now = timezone.now()
        finished = 0
        ready, upcoming = _heads(now)
        for call_id in ready:
            with transaction.atomic():
                call = _claim(call_id, now)
            if call is None:
                continue
            outcome = deliver_one(call)
            finished += outcome != "retrying"
            report.sent += outcome == "sent"
            report.retrying += outcome == "retrying"
            report.failed += outcome == "failed"
        if finished:
            continue  # the next call of those keys may go now; a retry waits for its time
        if ready:
            continue  # some were claimed elsewhere or failed for now: look again
        if upcoming is None:
            return report
        pause = (upcoming - timezone.now()).total_seconds()
        if time.monotonic() + pause > deadline:
            return report
        time.sleep(max(0.05, pause))


def deliver_queued() -> Delivered:
    """What a delivery task does. During a GitHub outage every status change queues one; if
    each stayed to retry they would hold every worker and load tests would wait. So one task at
    a time (a cache lock) stays up to WAITER_SECONDS for short retries; the others make one pass
    and leave, and the schedule catches the rest."""
    waiting = cache.add(WAITER_KEY, 1, timeout=WAITER_SECONDS + 30)
    try:
        return deliver_due(wait_seconds=WAITER_SECONDS if waiting else 0)
    finally:
        if waiting:
            cache.delete(WAITER_KEY)


def queue_delivery() -> None:
    """After commit: a task delivers what was just recorded (the schedule catches the rest, and
    catches up when the task broker was unreachable: the request that recorded it still succeeds)."""
    try:
        async_task("integrations.tasks.outbox_deliver", task_name="deliver outbox", group="outbox")
    except Exception as exc:
        logger.warning(
            "The task broker is unreachable (%s): the outbox schedule delivers later.", exc.__class__.__name__
        )
