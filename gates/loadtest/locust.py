"""Drive Locust (headless, CSV output) and hand back plain data. No ORM.

The locustfile ops registered runs in a temporary directory with a clean environment; the target
is given as Locust's host (and as TARGET_URL). Locust rewrites its stats CSV every few seconds,
which is where progress comes from.
"""

from __future__ import annotations

import csv
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gates.loadtest import process

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
    # SIGTERM: Locust stops its users and still writes its stats.
    run = process.supervise(
        command,
        workdir,
        process.clean_environment(workdir, spec.target_url),
        stop_signal=signal.SIGTERM,
        grace_seconds=STOP_GRACE_SECONDS,
        timeout_seconds=timeout_seconds,
        should_cancel=should_cancel,
        on_tick=(lambda elapsed: on_tick(elapsed, requests_so_far(stats_path))) if on_tick else None,
        tick_seconds=tick_seconds,
    )
    return LocustOutcome(
        exit_code=run.exit_code,
        stats_path=stats_path,
        elapsed_seconds=run.elapsed_seconds,
        timed_out=run.timed_out,
        cancelled=run.cancelled,
        stderr_tail=run.stderr_tail,
    )
