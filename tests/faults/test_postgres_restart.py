"""A PostgreSQL restart or a short outage while a real worker runs a real k6 test: the test goes on,
the lease and the verdict are recorded once the database is back, and nothing is lost or
recorded twice. The database is a private cluster (tests/faults/conftest.py), never the shared one."""

import time

import pytest
from django.db import connection

from gates.models import AuditEvent, CheckResult, Run, Validation
from tests.faults.conftest import k6_under, make_gate
from tests.qcluster import ROOT, qcluster, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="restarts a private PostgreSQL cluster"),
]

# Long enough that a blip of a few seconds is well inside it, short enough to renew every second.
WORKER = {"PERFGATE_LEASE_SECONDS": "10", "PERFGATE_LEASE_RENEW_SECONDS": "1"}


def worker_log_since(offset: int) -> str:
    return (ROOT / "test-qcluster.log").read_bytes()[offset:].decode("utf-8", "replace")


def log_size() -> int:
    log = ROOT / "test-qcluster.log"
    return log.stat().st_size if log.exists() else 0


def assert_one_complete_outcome(validation: Validation, seconds: float, outcome: dict) -> None:
    """Exactly one run with the whole test's numbers, one evaluation, and no error on the way."""
    run = Run.objects.get(validation=validation)
    assert run.duration_seconds >= seconds - 0.5, run.duration_seconds
    load = next(check for check in outcome["checks"] if check["kind"] == "load")
    assert load["observed"] == run.request_count > 100, load
    assert CheckResult.objects.filter(validation=validation).count() == len(outcome["checks"])
    actions = list(AuditEvent.objects.filter(target_id=str(validation.pk)).values_list("action", flat=True))
    assert sorted(actions) == ["validation.evaluated", "validation.requested", "validation.started"], actions


def test_a_restart_mid_run_loses_nothing_and_the_verdict_is_the_real_one(private_database, target):
    gate = make_gate(target.url)
    log_offset = log_size()
    with qcluster(**WORKER):
        gate.validate("restarted", duration="6s")
        before = wait_for(
            lambda: (s := gate.status("restarted"))["progress"] and s["progress"]["requests"] > 0 and s,
            timeout=30,
            what="k6 to send requests",
        )["progress"]
        restart_seconds = private_database.restart()
        connection.close()  # this process's connection was cut too, as a web server's would be
        after = wait_for(
            lambda: (
                (p := gate.status("restarted")["progress"])
                and p["elapsedSeconds"] > before["elapsedSeconds"] + restart_seconds + 1
                and p
            ),
            timeout=15,
            what="the lease to be renewed after the restart",
        )
        outcome = gate.finished("restarted")
    print(f"PostgreSQL restart took {restart_seconds:.2f} s")
    validation = Validation.objects.get(build_id="restarted")
    assert after["requests"] > before["requests"] and not after["leaseExpired"]
    assert (outcome["status"], outcome["verdict"], outcome["deploymentAllowed"]) == (
        "passed",
        "pass",
        True,
    ), outcome
    assert_one_complete_outcome(validation, 6, outcome)
    assert f"validation {validation.pk}: the database is unreachable" in worker_log_since(log_offset)


def test_a_database_down_when_k6_ends_delays_the_verdict_and_loses_nothing(private_database, target):
    gate = make_gate(target.url)
    log_offset = log_size()
    with qcluster(**WORKER) as cluster:
        gate.validate("outage", duration="4s")
        wait_for(
            lambda: (s := gate.status("outage"))["progress"] and s["progress"]["requests"] > 0,
            timeout=30,
            what="k6 to send requests",
        )
        private_database.stop()
        stopped = time.monotonic()
        wait_for(lambda: not k6_under(cluster), timeout=20, what="k6 to end while the database is down")
        time.sleep(1.0)  # the worker has the results and cannot record them
        private_database.start()
        outage_seconds = time.monotonic() - stopped
        connection.close()
        outcome = gate.finished("outage")
    print(f"PostgreSQL was down for {outage_seconds:.2f} s")
    validation = Validation.objects.get(build_id="outage")
    assert (outcome["status"], outcome["verdict"], outcome["deploymentAllowed"]) == (
        "passed",
        "pass",
        True,
    ), outcome
    assert_one_complete_outcome(validation, 4, outcome)
    assert f"recording the verdict of validation {validation.pk} failed" in worker_log_since(log_offset)
