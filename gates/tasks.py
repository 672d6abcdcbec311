"""django-q2 entry points: thin. Each takes ids, and the code it calls claims its row or does
nothing; correctness never depends on the broker retrying or not."""

from gates import execution
from gates.audit import audit_digest_write
from gates.services import bypass_expire_due, validation_dispatch_pending, validation_reap_expired


def validation_run(validation_id: str) -> None:
    """Run the load test of a queued validation (no-op unless this worker claims it)."""
    execution.execute(validation_id)


def reap_expired_leases() -> int:
    """Scheduled: end running validations whose worker stopped renewing its lease (and send the
    load tests an unreachable broker could not take)."""
    validation_dispatch_pending()
    return validation_reap_expired()


def expire_bypass_requests() -> int:
    """Scheduled: close bypass requests nobody decided on in time."""
    return bypass_expire_due()


def write_audit_digest() -> int | None:
    """Scheduled: sign the audit log's count, last id and last hash into the next digest file
    (docs/audit.md). Returns the digest's number, None when nothing new was recorded."""
    digest = audit_digest_write()
    return digest.sequence if digest else None
