"""Every state change of the gate. Each service is atomic, takes keyword-only arguments including
the acting ``Actor``, and writes its audit event in the same transaction.

``validations``: asking (one way in: ``validation_request``), evaluating, blocking, errors.
``runs``: claiming, leases, cancelling, reaping. ``bypasses``: emergency bypasses and their
four-eyes approval. ``calibration``: storing a scenario's measured noise. ``watches``: watching
production after a deploy and its probes; ``rollbacks``: undoing a degraded deployment;
``notices``: what people must hear about them.
"""

from gates.services.bypasses import bypass_approve, bypass_expire_due, bypass_reject, bypass_request
from gates.services.calibration import scenario_calibrate
from gates.services.runs import (
    validation_cancel,
    validation_claim,
    validation_reap_expired,
    validation_renew_lease,
    worker_actor,
)
from gates.services.validations import (
    validation_block,
    validation_dispatch_pending,
    validation_evaluate,
    validation_record_error,
    validation_release,
    validation_request,
)

__all__ = [
    "bypass_approve",
    "bypass_expire_due",
    "bypass_reject",
    "bypass_request",
    "scenario_calibrate",
    "validation_block",
    "validation_cancel",
    "validation_claim",
    "validation_dispatch_pending",
    "validation_evaluate",
    "validation_reap_expired",
    "validation_record_error",
    "validation_release",
    "validation_renew_lease",
    "validation_request",
    "worker_actor",
]
