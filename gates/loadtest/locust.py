"""Drive Locust (headless, CSV output) and hand back plain data. No ORM.

The locustfile ops registered runs in a temporary directory with a clean environment; the target
is given as Locust's host (and as TARGET_URL). Locust rewrites its stats CSV every few seconds,
which is where progress comes from.
"""

from __future__ import annotations

import contextlib
import csv
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gates.loadtest.k6 import die_with_parent

STOP_GRACE_SECONDS = 10


@dataclass(frozen=True)
class LocustSpec:
    locustfile_text: str
    target_url: str
    users: int
    duration_seconds: int
    spawn_rate: float | None = None


@dataclass
class LocustOutcome:
    exit_code: int | None
    stats_path: Path
    elapsed_seconds: float
    timed_out: bool = False
    cancelled: bool = False
    stderr_tail: str = ""

    @property
    def completed(self) -> bool:
        # Locust exits 1 when any request failed: for the gate that is a finished run.
        return (
            not (self.timed_out or self.cancelled) and self.exit_code in (0, 1) and self.stats_path.exists()
        )


def clean_environment(workdir: Path, target_url: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "TARGET_URL": target_url,
    }


def requests_so_far(stats_path: Path) -> int | None:
    """The Aggregated request count Locust last wrote, or None before it wrote one."""
    try:
        with open(stats_path, newline="") as stats:
            for row in csv.DictReader(stats):
                if row.get("Name") == "Aggregated":
                    return int(row.get("Request Count") or 0)
    except (OSError, ValueError):
        return None
    return None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)  # Locust stops the users and writes its stats
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_locust(
    spec: LocustSpec,
    workdir: Path,
    *,
    timeout_seconds: float,
    should_cancel: Callable[[], bool] | None = None,
    on_tick: Callable[[float, int | None], None] | None = None,
    tick_seconds: float = 0.5,
) -> LocustOutcome:
    workdir = Path(workdir)
    (workdir / "locustfile.py").write_text(spec.locustfile_text, encoding="utf-8")
    prefix = workdir / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(workdir / "locustfile.py"),
        "--headless",
        "-u",
        str(spec.users),
        "-r",
        str(spec.spawn_rate or spec.users),
        "-t",
        f"{spec.duration_seconds}s",
        "--host",
        spec.target_url,
        "--csv",
        str(prefix),
        "--only-summary",
        "--skip-log",
        "--stop-timeout",
        "2",
    ]
    stats_path = Path(f"{prefix}_stats.csv")
    started = time.monotonic()
    timed_out = cancelled = False
    stderr_path = workdir / "locust.stderr"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=clean_environment(workdir, spec.target_url),
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
                    on_tick(elapsed, requests_so_far(stats_path))
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=tick_seconds)
        finally:
            _stop(process)
    return LocustOutcome(
        exit_code=process.returncode,
        stats_path=stats_path,
        elapsed_seconds=time.monotonic() - started,
        timed_out=timed_out,
        cancelled=cancelled,
        stderr_tail=stderr_path.read_bytes()[-4000:].decode("utf-8", "replace"),
    )
