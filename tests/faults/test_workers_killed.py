"""Every worker killed (kill -9 of the whole qcluster process group, k6 with it) mid-run: with no
worker alive to run django-q2's scheduled reaper, status says that the lease expired, the web
process's own reaper ends the validation once, by policy, and a new worker given the same task
again runs nothing."""

import pytest
from django.core.management import call_command
from django_q.tasks import async_task, fetch

from gates.models import AuditEvent, Run, Validation
from tests.faults.conftest import k6_under, kill_every_worker, make_gate
from tests.qcluster import qcluster, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def lease_expired_events() -> int:
    return AuditEvent.objects.filter(action="validation.lease_expired").count()


def test_with_every_worker_killed_status_says_so_and_the_web_process_ends_it_once(target, settings, capsys):
    gate = make_gate(target.url)
    settings.PERFGATE_WEB_REAPER_SECONDS = 0  # off until status has shown the expired lease
    with qcluster() as cluster:
        validation_id = gate.validate("orphan", "production", duration="60s")["validationId"]
        wait_for(
            lambda: gate.status("orphan", "production")["status"] == "running" and k6_under(cluster),
            timeout=30,
            what="k6 to start",
        )
        kill_every_worker(cluster)

    lost = wait_for(
        lambda: (
            (s := gate.status("orphan", "production"))["progress"] and s["progress"]["leaseExpired"] and s
        ),
        timeout=4 + 10,  # the workers' lease, and a margin
        what="status to show the expired lease",
    )
    assert (lost["status"], lost["deploymentAllowed"]) == ("running", None)
    assert (
        "stopped renewing its lease" in lost["statusReason"]
        and "being ended as an error" in lost["statusReason"]
    )
    assert lease_expired_events() == 0  # nothing but the web process could have reaped it

    settings.PERFGATE_WEB_REAPER_SECONDS = 0.1
    outcome = gate.finished("orphan", "production", timeout=10)
    for _ in range(3):  # more requests, more reaper passes: it ended once
        assert gate.status("orphan", "production")["status"] == "blocked"
    assert (outcome["status"], outcome["verdict"], outcome["deploymentAllowed"]) == (
        "blocked",
        "error",
        False,
    )
    assert "stopped reporting" in outcome["statusReason"] and outcome["progress"] is None
    assert lease_expired_events() == 1
    call_command("reap")
    assert capsys.readouterr().out.strip() == "0 validation(s) with an expired lease ended."

    # The broker hands the run out again, to a new worker: the claim finds it ended.
    task_id = async_task("gates.tasks.validation_run", validation_id)
    with qcluster():
        task = wait_for(lambda: fetch(task_id), timeout=30, what="the new worker to take the task")
    assert task.success
    validation = Validation.objects.get(pk=validation_id)
    assert (validation.status, validation.verdict) == ("blocked", "error")
    assert not Run.objects.filter(validation=validation).exists()
    assert AuditEvent.objects.filter(action="validation.started").count() == 1
    assert lease_expired_events() == 1


def test_the_reap_command_ends_what_no_worker_will(target, capsys):
    gate = make_gate(target.url)
    with qcluster() as cluster:
        gate.validate("cron", duration="60s")
        wait_for(lambda: k6_under(cluster), timeout=30, what="k6 to start")
        kill_every_worker(cluster)
    wait_for(
        lambda: Validation.objects.get(build_id="cron").lease_expired,
        timeout=4 + 10,
        what="the lease to expire",
    )
    call_command("reap")
    assert capsys.readouterr().out.strip() == "1 validation(s) with an expired lease ended."
    validation = Validation.objects.get(build_id="cron")
    assert (validation.status, validation.verdict, validation.deployment_allowed) == ("failed", "error", True)
    assert lease_expired_events() == 1
