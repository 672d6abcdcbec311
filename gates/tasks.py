"""django-q2 entry points: thin. Each takes ids, and the code it calls claims its row or does
nothing; correctness never depends on the broker retrying or not."""

from gates import execution, watching
from gates.audit import audit_digest_write
from gates.services import bypass_expire_due, validation_dispatch_pending, validation_reap_expired
from gates.services.watches import watch_reap


def validation_run(validation_id: str) -> None:
    """Run the load test of a queued validation (no-op unless this worker claims it)."""
    execution.execute(validation_id)


def watch_run(watch_id: int) -> None:
    """Probe a watched production deployment on schedule (no-op unless this worker claims it)."""
    watching.watch_run(watch_id)


def watch_alert_probe(watch_id: int) -> None:
    """One probe now, to confirm an alert about a watched deployment."""
    watching.alert_probe(watch_id)


def reap_expired_leases() -> int:
    """Scheduled: end running validations whose worker stopped renewing its lease, send the load
    tests an unreachable broker could not take, and give every watch no task runs a new one."""
    validation_dispatch_pending()
    watch_reap()
    return validation_reap_expired()


def expire_bypass_requests() -> int:
    """Scheduled: close bypass requests nobody decided on in time."""
    return bypass_expire_due()


def write_audit_digest() -> int | None:
    """Scheduled: sign the audit log's count, last id and last hash into the next digest file
    (docs/audit.md). Returns the digest's number, None when nothing new was recorded."""
    digest = audit_digest_write()
    return digest.sequence if digest else None
