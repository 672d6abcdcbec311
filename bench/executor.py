"""Benchmark the executor: the same k6 scenario run directly and through perfgate, side by side.

Through perfgate means the whole path: the API queues the validation, a `qcluster` worker (ORM
broker, SQLite: the embedded defaults) claims it, runs k6 with raw output, parses it while k6
writes, and records the verdict. Figures:

- achieved requests/s through perfgate ÷ directly (target ≥ 0.95), both computed the same way
  from each run's raw k6 output;
- time from k6's exit to the verdict being visible in GET status (target < 1 s, ORM broker);
- the worker's peak RSS during the test (and k6's, for scale).

    .venv/bin/python bench/executor.py [--seconds 60] [--vus 10] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRIPT = (ROOT / "gates" / "demo" / "guest-list.js").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process: the most memory it has held so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def k6_pids() -> list[int]:
    listing = subprocess.run(["pgrep", "-f", "perfgate-main.js"], capture_output=True, text=True).stdout
    return [int(pid) for pid in listing.split()]


def rate_of(raw: Path) -> float:
    from gates.results import parse_results

    results = parse_results(raw, format="k6-ndjson")
    return results.series["http_reqs"].values["rate"]


def direct_run(target_url: str, vus: int, seconds: int) -> float:
    """k6 alone, with perfgate's own wrapper and outputs: requests/s from its raw output."""
    from gates.loadtest.k6 import K6Spec, run_k6

    with tempfile.TemporaryDirectory(prefix="perfgate-bench-direct-") as workdir:
        outcome = run_k6(
            K6Spec(SCRIPT, target_url, vus=vus, duration_seconds=seconds),
            Path(workdir),
            timeout_seconds=seconds + 60,
        )
        assert outcome.completed, outcome.stderr_tail
        return rate_of(outcome.raw_path)


def start(command: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def through_perfgate(base_url: str, token: str, target_url: str, build: str, seconds: int) -> dict:
    """Validate a build through the API and watch the worker: figures of one run."""
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    response = api.post(
        f"{base_url}/api/ci-cd/performance/validate",
        timeout=30,
        json={
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": build,
            "gitHash": "a" * 40,
            "testConfig": {"targetUrl": target_url, "duration": f"{seconds}s"},
        },
    )
    response.raise_for_status()
    status_url = f"{base_url}/api/ci-cd/performance/status/{build}"
    params = {"project": "wedsync-web", "environment": "staging"}

    # Find the worker and k6 once the test runs; sample their memory while it runs.
    worker_pid = k6_pid = None
    peaks = {"worker": 0.0, "k6": 0.0}
    while worker_pid is None:
        document = api.get(status_url, params=params, timeout=10).json()
        if document["status"] == "running" and k6_pids():
            k6_pid = k6_pids()[0]
            worker_pid = int(
                subprocess.run(
                    ["ps", "-o", "ppid=", "-p", str(k6_pid)], capture_output=True, text=True
                ).stdout.strip()
            )
        time.sleep(0.2)
    while True:
        try:
            peaks["worker"] = max(peaks["worker"], peak_rss_mb(worker_pid))
            peaks["k6"] = max(peaks["k6"], peak_rss_mb(k6_pid))
        except FileNotFoundError:
            break  # k6 exited
        if not Path(f"/proc/{k6_pid}").exists():
            break
        time.sleep(0.02)
    k6_exit = time.monotonic()
    while True:
        document = api.get(status_url, params=params, timeout=10).json()
        if document["status"] not in ("queued", "running"):
            break
        time.sleep(0.02)
    verdict_after = time.monotonic() - k6_exit
    peaks["worker"] = max(peaks["worker"], peak_rss_mb(worker_pid))
    return {
        "rate": document["metrics"]["http_reqs"]["rate"],
        "verdict_after": verdict_after,
        "worker_rss": peaks["worker"],
        "k6_rss": peaks["k6"],
        "status": document["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--vus", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="perfgate-bench-executor-"))
    web_port, target_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        DATABASE_URL=f"sqlite:///{workdir / 'bench.sqlite3'}",
        DEBUG="true",
        LOG_LEVEL="WARNING",
        Q_CLUSTER_NAME="perfgate-bench",
        Q_WORKERS="1",
    )
    os.environ.update(env)
    os.environ.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    subprocess.run(
        [sys.executable, "manage.py", "apply_config", str(ROOT / "gates" / "demo" / "perfgate.yaml")],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import django; django.setup();"
                "from gates.models import Scenario;"
                f"Scenario.objects.update(vus={args.vus}, max_vus=max({args.vus}, 50),"
                " max_duration_seconds=3600)"
            ),
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "perfgate_site.settings"},
        check=True,
    )
    token = subprocess.run(
        [sys.executable, "manage.py", "create_api_token", "--project", "wedsync-web", "--role", "ci"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()

    target_url = f"http://127.0.0.1:{target_port}"
    base_url = f"http://127.0.0.1:{web_port}"
    processes = [
        start(
            [
                sys.executable,
                "-m",
                "gates.loadtest.sample_target",
                "--port",
                str(target_port),
                "--latency-ms",
                "20",
            ],
            env,
        ),
        start(
            [
                sys.executable,
                "manage.py",
                "runserver",
                f"127.0.0.1:{web_port}",
                "--noreload",
                "--skip-checks",
            ],
            env,
        ),
        start([sys.executable, "manage.py", "qcluster"], env),
    ]
    try:
        wait_ready(f"{target_url}/healthz")
        wait_ready(f"{base_url}/healthz")
        time.sleep(2)  # the worker starts polling
        direct, through = [], []
        for round_number in range(1, args.rounds + 1):
            direct.append(direct_run(target_url, args.vus, args.seconds))
            print(f"round {round_number} direct:       {direct[-1]:8.1f} req/s", flush=True)
            through.append(
                through_perfgate(
                    base_url, token, target_url, f"bench-{round_number}-{time.time():.0f}", args.seconds
                )
            )
            t = through[-1]
            print(
                f"round {round_number} via perfgate: {t['rate']:8.1f} req/s, verdict {t['status']} "
                f"{t['verdict_after'] * 1000:.0f} ms after k6 exited, "
                f"worker peak RSS {t['worker_rss']:.0f} MB (k6 {t['k6_rss']:.0f} MB)",
                flush=True,
            )
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    ratio = statistics.median(t["rate"] for t in through) / statistics.median(direct)
    verdict_after = statistics.median(t["verdict_after"] for t in through)
    worker_rss = max(t["worker_rss"] for t in through)
    print(f"\n==> {args.rounds} round(s) of {args.seconds} s at {args.vus} VUs, ORM broker, SQLite")
    print(
        f"requests/s through perfgate ÷ direct: {ratio:.3f} (target ≥ 0.95): "
        f"{'met' if ratio >= 0.95 else 'MISSED'}"
    )
    print(
        f"k6 exit → verdict in status: {verdict_after * 1000:.0f} ms (target < 1000 ms): "
        f"{'met' if verdict_after < 1 else 'MISSED'}"
    )
    print(f"worker peak RSS during the test: {worker_rss:.0f} MB (raw output on)")


if __name__ == "__main__":
    main()
