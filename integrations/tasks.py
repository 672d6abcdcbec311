"""django-q2 entry points for the integrations: thin, each claims its rows or does nothing."""

from integrations import outbox, webhooks


def outbox_deliver() -> str:
    """Deliver every due outbound call; sees a short Retry-After through (up to a minute)."""
    report = outbox.deliver_due(wait_seconds=60)
    return f"sent {report.sent}, retrying {report.retrying}, failed {report.failed}"


def webhook_process(delivery_pk: int) -> str:
    return webhooks.webhook_process(delivery_pk)
