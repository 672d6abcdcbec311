"""Processes forked here die with the process that forked them, even when it is SIGKILLed.

django-q2's ``qcluster`` forks a sentinel, which forks the pusher, the monitor and the workers,
and nothing in django-q2 watches the top process: after a ``kill -9`` (or an OOM kill) of the top
the sentinel and its workers lived on alone, still taking tasks, out of sight of the supervisor
that restarts the cluster. On Linux each forked child asks the kernel (``PR_SET_PDEATHSIG``) for
SIGKILL when its parent goes, so the whole family follows, level by level. A validation a killed
worker was running ends like any other whose worker died: its lease expires and the reaper ends it.

The kernel watches the forking *thread*: a child forked from a thread that exits is killed with
it. django-q2 forks from the main threads of the cluster and the sentinel, and so do web servers.
"""

from __future__ import annotations

import os
import signal
import sys

from gates.loadtest.process import die_with_parent

_forking_pid = 0
_registered = False


def _remember_forking_process() -> None:
    global _forking_pid
    _forking_pid = os.getpid()


def _die_with_forking_process() -> None:
    die_with_parent()
    if os.getppid() != _forking_pid:  # the parent died before the kernel was asked to tell us
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_parents() -> None:
    """From now on, every child this process (or a child of it) forks dies with its parent.
    Called once at start-up (``GatesConfig.ready``); nothing to do off Linux."""
    global _registered
    if sys.platform != "linux" or _registered:
        return
    os.register_at_fork(before=_remember_forking_process, after_in_child=_die_with_forking_process)
    _registered = True
