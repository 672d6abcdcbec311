"""What people must hear that is not a validation's verdict: a watch whose probes keep erroring,
a rollback proposed, done or failed, an alert a probe did not confirm. Recorded as a ``Notice`` in
the transaction of the change that caused it, logged, and announced to the registered notifiers
(``gates.registry``)."""

from __future__ import annotations

import logging

from gates.models import Notice, Watch
from gates.registry import notify

logger = logging.getLogger(__name__)


def notice_title(watch: Watch, what: str) -> str:
    """ "wedsync-web/production build 42 <what>", at most 300 characters."""
    return f"{watch.project.slug}/{watch.environment.name} build {watch.validation.build_id} {what}"[:300]


def notice_record(*, watch: Watch, kind: str, level: str, title: str, text: str) -> Notice:
    """Record something people must hear (in the caller's transaction) and announce it to the
    notifiers."""
    notice = Notice.objects.create(
        project=watch.project,
        environment=watch.environment,
        validation=watch.validation,
        watch=watch,
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
