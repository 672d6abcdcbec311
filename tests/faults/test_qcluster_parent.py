"""Killing the top ``qcluster`` process (kill -9, an OOM kill) takes its whole family with it.

django-q2's top process forks a sentinel, which forks the pusher, the monitor and the workers.
Nothing in django-q2 watches the top process: without perfgate's hook (``gates.workers``) the
sentinel and its workers lived on alone after a SIGKILL, still taking tasks, out of sight of the
supervisor that restarts the cluster.
"""

import os
import signal
import sys

import psutil
import pytest

from tests.qcluster import qcluster, wait_for

# Sentinel, pusher, monitor and one worker (tests.qcluster starts Q_WORKERS=1).
FAMILY_SIZE = 4

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")


def family_of(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def alive(process: psutil.Process) -> bool:
    """Running, and not a zombie left for a reaper that may never come (PID 1 in a container)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@linux_only
@pytest.mark.django_db(transaction=True)
def test_killing_the_top_qcluster_process_kills_its_sentinel_and_workers():
    with qcluster() as top:
        family = wait_for(
            lambda: (found := family_of(top.pid)) and len(found) >= FAMILY_SIZE and found,
            timeout=30,
            what="the sentinel, pusher, monitor and worker to start",
        )
        os.kill(top.pid, signal.SIGKILL)
        top.wait(timeout=10)
        wait_for(
            lambda: not any(alive(process) for process in family),
            timeout=10,
            what="the sentinel, pusher, monitor and worker to die with the top process",
        )
