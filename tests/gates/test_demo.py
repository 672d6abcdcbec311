"""The README's first command: a real end-to-end run through the API, a worker and k6."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def processes_marked(marker: str) -> list[int]:
    """Processes whose environment carries ``marker`` (the demo's children inherit it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture
def stopped_afterwards():
    """Whatever a test's demo left running is killed when the test ends, passed or failed: the
    demo's own process group, and every process carrying the test's marker (its web server,
    worker and sample API run in sessions of their own)."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    for pid in processes_marked(f"perfgate-demo-test-{os.getpid()}"):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)


def launch(command, env, started, *, ignoring_sigint=False) -> subprocess.Popen:
    """The demo in a process group of its own (so that the clean-up can stop it whole).
    ``ignoring_sigint``: started the way a non-interactive shell starts a background job, with
    SIGINT ignored, which Python keeps ignored unless the program handles it."""
    if ignoring_sigint:
        command = [
            sys.executable,
            "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
            *command[1:],
        ]
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started.append(process)
    return process


def demo(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        DEBUG="true",
        Q_CLUSTER_NAME=f"perfgate-demo-test-{os.getpid()}",
    )
    web, target = free_port(), free_port()
    command = [
        sys.executable,
        "manage.py",
        "demo",
        "--addr",
        f"127.0.0.1:{web}",
        "--target-port",
        str(target),
        *args,
    ]
    return web, target, command, env


@pytest.mark.slow
def test_the_demo_passes_a_good_build_blocks_a_slow_one_and_rolls_a_degraded_release_back(tmp_path):
    web, target, command, env = demo(tmp_path, "--no-serve")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    staging, production = result.stdout.split("==> Production.")
    good, slow = staging.split("==> Build demo-")[1:]
    assert "status passed" in good and "deployment allowed" in good
    assert "is now the baseline" in good
    assert "running:" in good  # progress while the worker's k6 ran
    # On failure, show both check tables whole: the numbers say whether it was noise.
    assert "status blocked" in slow and "deployment BLOCKED" in slow, good + slow
    assert "above baseline" in slow and "p(95)" in slow, good + slow
    # The third act: the stand-in is named as such, release 2 degrades and is rolled back to 1.
    assert "LOCAL STAND-IN of its REST API" in production
    release_1, release_2 = production.split("==> Release ")[1:]
    assert "status passed" in release_1 and "probe 6: success" in release_1, production
    assert "status passed" in release_2 and "probe 2: success" in release_2, production
    slowed = release_2.split("The sample API slows down")[1]
    assert "failure" in slowed and "Watch: degraded" in slowed, production
    assert "release-1: succeeded" in slowed and "automatic production domain assignment" in slowed, production
    assert "received: POST /v1/projects/prj_123/rollback/dpl_demo" in slowed, production
    assert not listening(web) and not listening(target)


@pytest.mark.slow
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path, stopped_afterwards):
    web, target, command, env = demo(tmp_path, "--no-production")
    process = launch(command, env, stopped_afterwards)
    output = []
    deadline = time.monotonic() + 240
    for line in process.stdout:
        output.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    text = "".join(output)
    assert "Press Ctrl-C to stop." in text, text[-3000:]
    assert "password:" in text and f"http://127.0.0.1:{web}/admin/" in text
    assert listening(web) and listening(target)
    marker = f"perfgate-demo-test-{os.getpid()}"
    assert (
        len(processes_marked(marker)) >= 4
    )  # the demo, its web server, worker (sentinel and more), sample API

    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest[-2000:]
    assert "Stopping" in rest
    assert not listening(web) and not listening(target)
    assert processes_marked(marker) == []


def test_ctrl_c_stops_a_demo_started_as_a_background_job_even_while_it_migrates(tmp_path, stopped_afterwards):
    web, target, command, env = demo(tmp_path, "--no-serve", "--no-production")
    process = launch(command, env, stopped_afterwards, ignoring_sigint=True)
    output = []
    for line in process.stdout:
        output.append(line)
        if "==> Migrating the database" in line:
            break
    assert "==> Migrating the database" in "".join(output), "".join(output)[-3000:]

    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=60)
    assert process.returncode == 0, rest[-2000:]
    assert "Stopping" in rest and "==> Build demo-" not in rest, rest[-2000:]
    assert not listening(web) and not listening(target)
    assert processes_marked(f"perfgate-demo-test-{os.getpid()}") == []
