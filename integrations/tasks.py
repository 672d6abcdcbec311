"""django-q2 entry points for the integrations: thin, each claims its rows or does nothing."""

from integrations import outbox, webhooks


def outbox_deliver() -> str:
    report = outbox.deliver_queued()
    return f"sent {report.sent}, retrying {report.retrying}, failed {report.failed}"


def webhook_process(delivery_pk: int) -> str:
    return webhooks.webhook_process(delivery_pk)


def webhook_process_abandoned() -> int:
    """Scheduled: process webhook deliveries whose worker died or whose task was lost."""
    return webhooks.webhook_process_abandoned()
