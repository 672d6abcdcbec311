"""Drive Locust (headless, CSV output) and hand back plain data. No ORM.

The locustfile ops registered runs in a temporary directory with a clean environment; the target
is given as Locust's host (and as TARGET_URL). Locust rewrites its stats CSV every few seconds,
which is where progress comes from.

A warm-up ramps the users up (spawn rate: users over the warm-up) and is then left out: a small
second locustfile perfgate adds resets Locust's statistics when the warm-up ends, after writing
down how long it ran and how many requests it made. The CSV then holds the measured part only.
"""

from __future__ import annotations

import csv
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gates.loadtest import process
from gates.results.base import Warmup

STOP_GRACE_SECONDS = 10
WARMUP_RECORD = "perfgate-warmup.json"
WARMUP_LOCUSTFILE = """# Written by perfgate: ends the warm-up by resetting the statistics.
import json
import time

import gevent
from locust import events


@events.test_start.add_listener
def _perfgate_warmup(environment, **kwargs):
    started = time.monotonic()

    def end_warmup():
        total = environment.stats.total
        record = {{"seconds": time.monotonic() - started, "requests": total.num_requests}}
        environment.stats.reset_all()
        with open({record!r}, "w") as out:
            json.dump(record, out)

    gevent.spawn_later({seconds}, end_warmup)
"""


@dataclass(frozen=True)
class LocustSpec:
    locustfile_text: str
    target_url: str
    users: int
    duration_seconds: int  # measured, after the warm-up
    spawn_rate: float | None = None
    warmup_seconds: int = 0

    @property
    def total_seconds(self) -> int:
        return self.warmup_seconds + self.duration_seconds


@dataclass
class LocustOutcome:
    exit_code: int | None
    stats_path: Path
    elapsed_seconds: float
    timed_out: bool = False
    cancelled: bool = False
    stderr_tail: str = ""
    warmup: Warmup | None = None  # None: the scenario had none

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


def read_warmup(workdir: Path, warmup_seconds: int) -> Warmup | None:
    """What the warm-up did, as the warm-up locustfile wrote it down; a run that ended before
    its warm-up did was measured whole, warm-up included."""
    if not warmup_seconds:
        return None
    try:
        record = json.loads((workdir / WARMUP_RECORD).read_text())
        return Warmup(seconds=float(record["seconds"]), requests=int(record["requests"]), excluded=True)
    except (OSError, ValueError, KeyError, TypeError):
        return Warmup(seconds=float(warmup_seconds), requests=None, excluded=False)


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
    locustfiles = str(workdir / "locustfile.py")
    spawn_rate = spec.spawn_rate or spec.users
    if spec.warmup_seconds:
        warmup_file = workdir / "perfgate_warmup.py"
        warmup_file.write_text(
            WARMUP_LOCUSTFILE.format(record=str(workdir / WARMUP_RECORD), seconds=spec.warmup_seconds),
            encoding="utf-8",
        )
        locustfiles += f",{warmup_file}"
        spawn_rate = spec.spawn_rate or spec.users / spec.warmup_seconds
    prefix = workdir / "locust"
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        locustfiles,
        "--headless",
        "-u",
        str(spec.users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{spec.total_seconds}s",
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
        warmup=read_warmup(workdir, spec.warmup_seconds),
    )
