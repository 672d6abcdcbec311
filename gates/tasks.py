"""django-q2 entry points: thin. Each takes ids, and the code it calls claims its row or does
nothing; correctness never depends on the broker retrying or not."""

from gates import execution
from gates.services import bypass_expire_due, validation_reap_expired


def validation_run(validation_id: str) -> None:
    """Run the load test of a queued validation (no-op unless this worker claims it)."""
    execution.execute(validation_id)


def reap_expired_leases() -> int:
    """Scheduled: end running validations whose worker stopped renewing its lease."""
    return validation_reap_expired()


def expire_bypass_requests() -> int:
    """Scheduled: close bypass requests nobody decided on in time."""
    return bypass_expire_due()
