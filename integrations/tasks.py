"""django-q2 entry points for the integrations: thin, each claims its rows or does nothing."""

from django.core.cache import cache

from integrations import outbox, webhooks

WAITER_KEY = "perfgate:outbox:waiter"
WAIT_SECONDS = 20


def outbox_deliver() -> str:
    """Deliver every due outbound call. One task at a time also stays to see short retries
    (Retry-After) through; the others make one pass and free their worker for load tests."""
    waiting = cache.add(WAITER_KEY, 1, timeout=WAIT_SECONDS + 30)
    try:
        report = outbox.deliver_due(wait_seconds=WAIT_SECONDS if waiting else 0)
    finally:
        if waiting:
            cache.delete(WAITER_KEY)
    return f"sent {report.sent}, retrying {report.retrying}, failed {report.failed}"


def webhook_process(delivery_pk: int) -> str:
    return webhooks.webhook_process(delivery_pk)
