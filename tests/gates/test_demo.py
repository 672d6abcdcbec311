"""The README's first command, minus the server it leaves running: a real end-to-end run."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_the_demo_passes_a_good_build_and_blocks_a_slow_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}", DEBUG="true")
    result = subprocess.run(
        [sys.executable, "manage.py", "demo", "--no-serve", "--target-port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    good, slow = out.split("==> Build demo-")[1:]
    assert "status passed" in good and "deployment allowed" in good
    assert "is now baseline v1" in good
    assert "status blocked" in slow and "deployment BLOCKED" in slow
    assert "above baseline" in slow and "p(95)" in slow
