"""What people must hear that is not a validation's verdict: a watch whose probes keep erroring,
a rollback proposed, done or failed, an alert a probe did not confirm, a bypass asked for or
decided. Recorded as a ``Notice`` in
the transaction of the change that caused it, logged, and announced to the registered notifiers
(``gates.registry``)."""

from __future__ import annotations

import logging

from gates.models import BypassRequest, Notice, Watch
from gates.registry import notify

logger = logging.getLogger(__name__)


def notice_title(watch: Watch, what: str) -> str:
    """ "wedsync-web/production build 42 <what>", at most 300 characters."""
    return f"{watch.project.slug}/{watch.environment.name} build {watch.validation.build_id} {what}"[:300]


def notice_record(
    *,
    kind: str,
    level: str,
    title: str,
    text: str,
    watch: Watch | None = None,
    bypass: BypassRequest | None = None,
) -> Notice:
    """Record something people must hear about a watch or a bypass request (in the caller's
    transaction) and announce it to the notifiers."""
    subject = watch if watch is not None else bypass
    if subject is None:
        raise ValueError("A notice is about a watch or a bypass request.")
    notice = Notice.objects.create(
        project=subject.project,
        environment=subject.environment,
        validation=subject.validation,
        watch=watch,
        bypass=bypass,
        kind=kind,
        level=level,
        title=title[:300],
        text=text[:10000],
    )
    log = (
        logger.error
        if level == Notice.Level.ERROR
        else logger.warning
        if level == Notice.Level.WARNING
        else logger.info
    )
    log("%s: %s", title, text.splitlines()[0] if text else "")
    notify(notice)
    return notice
