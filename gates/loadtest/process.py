"""Running a load tool as a child process: what k6 and Locust share. No ORM.

The tool runs in its own directory with a clean environment, dies with the worker that started
it, and is watched: stopped at its hard timeout or when the caller cancels, with a callback at a
steady pace in between (progress, lease renewal).
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """In the child before exec: if the worker that started the tool dies (even by kill -9), the
    tool gets SIGKILL instead of loading a target nobody is watching any more. (Only a system
    call here: the child of a threaded process must not take locks before exec.)"""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def clean_environment(workdir: Path, target_url: str, **extra: str) -> dict[str, str]:
    """The only variables the tool sees: nothing of the control plane's environment leaks in."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "TARGET_URL": target_url,
        **extra,
    }


@dataclass
class Supervised:
    exit_code: int | None
    elapsed_seconds: float
    timed_out: bool
    cancelled: bool
    stderr_tail: str


def supervise(
    command: list[str],
    workdir: Path,
    env: dict[str, str],
    *,
    stop_signal: int,
    grace_seconds: float,
    timeout_seconds: float,
    should_cancel: Callable[[], bool] | None = None,
    on_tick: Callable[[float], None] | None = None,
    tick_seconds: float = 0.5,
) -> Supervised:
    """Run ``command`` to its end, its hard timeout or a cancel. ``stop_signal`` is the signal on
    which the tool stops early but still writes its outputs; after ``grace_seconds`` it is killed."""
    stderr_path = workdir / "tool.stderr"
    started = time.monotonic()
    timed_out = cancelled = False
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=die_with_parent,
        )
        try:
            while process.poll() is None:
                elapsed = time.monotonic() - started
                if elapsed > timeout_seconds:
                    timed_out = True
                    break
                if should_cancel is not None and should_cancel():
                    cancelled = True
                    break
                if on_tick is not None:
                    on_tick(elapsed)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=tick_seconds)
        finally:
            _stop(process, stop_signal, grace_seconds)
    return Supervised(
        exit_code=process.returncode,
        elapsed_seconds=time.monotonic() - started,
        timed_out=timed_out,
        cancelled=cancelled,
        stderr_tail=stderr_path.read_bytes()[-4000:].decode("utf-8", "replace"),
    )


def _stop(process: subprocess.Popen, stop_signal: int, grace_seconds: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
