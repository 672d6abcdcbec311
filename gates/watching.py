"""Running a watch: the task that probes a production deployment on schedule.

One task at a time holds a watch with a lease (``watch_claim``), renewed while it waits and probes.
It first probes the previous deployment when the watch has no probe baseline yet, then waits for
each probe's time, runs it (``gates.probes.run_probe``: gentle, capped, judged by the gate's own
decision code) and records it (``probe_record``, which applies the failure limits and decides a
rollback). The schedule is fixed-rate: a probe that took long does not push the later ones back.
After ``PERFGATE_WATCH_TASK_SECONDS`` the task hands the watch on to a fresh task, so no task
outlives django-q's timeout; a task that died is replaced by the reaper once its lease expired.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from gates import probes, registry
from gates.execution import retry_database, worker_label
from gates.models import Probe, Watch
from gates.rules.evaluation import BaselineValue
from gates.services.watches import (
    baseline_values,
    probe_record,
    queue_watch,
    watch_claim,
    watch_conclude,
    watch_release,
    watch_renew,
)

logger = logging.getLogger(__name__)

# Probes of the previous deployment taken before the first probe, when no healthy watch before
# this one gives a probe baseline (three allow the noise test of the history mode).
BASELINE_PROBES = 3
# The longest a waiting task sleeps between two looks at its watch (lease renewal, a stop).
WAIT_STEP_SECONDS = 2.0


def watch_run(watch_pk: int) -> None:
    """Run a watch until its window ends, it concludes, or it is handed on."""
    worker = worker_label()
    watch = retry_database(
        functools.partial(watch_claim, watch_pk=watch_pk, worker=worker), what=f"claiming watch {watch_pk}"
    )
    if watch is None:
        logger.info("watch %s is not active or another task runs it", watch_pk)
        return
    hand_on_at = time.monotonic() + settings.PERFGATE_WATCH_TASK_SECONDS
    while True:
        watch.refresh_from_db()
        if not watch.is_active or not watch_renew(watch=watch, worker=worker):
            return
        if watch.baseline_url and not watch.baseline and not _baseline_taken(watch):
            _take_baseline(watch, worker)
            continue
        now = timezone.now()
        if watch.next_probe_at > watch.ends_at:
            watch_conclude(watch=watch)
            return
        wait = (watch.next_probe_at - now).total_seconds()
        if wait > 0:
            if time.monotonic() + wait > hand_on_at:
                watch_release(watch=watch, worker=worker)
                queue_watch(watch.pk)
                return
            time.sleep(min(wait, WAIT_STEP_SECONDS))
            continue
        scheduled = watch.next_probe_at
        probe_once(watch, trigger=Probe.Trigger.SCHEDULE, worker=worker)
        interval = timedelta(seconds=watch.limit("interval"))
        following = max(scheduled + interval, timezone.now()) if interval else timezone.now()
        Watch.objects.filter(pk=watch.pk).update(next_probe_at=following)


def _baseline_taken(watch: Watch) -> bool:
    return watch.probes.filter(trigger=Probe.Trigger.BASELINE).count() >= BASELINE_PROBES


def _take_baseline(watch: Watch, worker: str) -> None:
    probe_once(watch, trigger=Probe.Trigger.BASELINE, worker=worker, target_url=watch.baseline_url)


def probe_once(watch: Watch, *, trigger: str, worker: str = "", target_url: str = "") -> Probe:
    """Run one probe of ``watch`` now and record it."""
    target_url = target_url or watch.target_url
    baseline = {
        key: BaselineValue(value=value, run_values=runs)
        for key, (value, runs) in baseline_values(watch).items()
    }
    workdir = Path(tempfile.mkdtemp(prefix="perfgate-probe-"))
    started_at = timezone.now()
    try:
        result = probes.run_probe(
            scenario=watch.scenario,
            environment=watch.environment,
            target_url=target_url,
            allowed_hosts=watch.project.allowed_hosts,
            extra_hosts=watch.extra_hosts,
            headers=registry.headers_for(watch.validation),
            workdir=workdir,
            should_stop=functools.partial(_stopped, watch, worker) if worker else (lambda: False),
            baseline=baseline or None,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return retry_database(
        functools.partial(
            probe_record,
            watch=watch,
            result=result,
            trigger=trigger,
            target_url=target_url,
            started_at=started_at,
        ),
        what=f"recording a probe of watch {watch.pk}",
    )


def _stopped(watch: Watch, worker: str) -> bool:
    """Polled while k6 runs: renew the lease now and then; stop when the watch was stopped or
    taken over."""
    now = time.monotonic()
    if now - _last_renewal.get(watch.pk, 0.0) < settings.PERFGATE_LEASE_RENEW_SECONDS:
        return False
    _last_renewal[watch.pk] = now
    return not watch_renew(watch=watch, worker=worker)


_last_renewal: dict[int, float] = {}


def alert_probe(watch_pk: int) -> None:
    """An alert named this watch's deployment: one probe now confirms it or not."""
    watch = (
        Watch.objects.select_related("project", "environment", "scenario", "validation")
        .filter(pk=watch_pk)
        .first()
    )
    if watch is None:
        return
    probe_once(watch, trigger=Probe.Trigger.ALERT)
