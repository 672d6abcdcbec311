"""Benchmark the CI API under gunicorn (2 workers) on PostgreSQL, with k6 as the load.

Side by side in one run, so the machine's noise hits every case alike:

- ``bare``: a Django view that returns a small JsonResponse (same server, same middleware);
- ``status``: ``GET /api/ci-cd/performance/status/{buildId}`` with a token;
- ``validate``: ``POST /api/ci-cd/performance/validate`` with an uploaded k6 summary, a new
  build every request (each is parsed, evaluated, stored and audited).

Rounds alternate bare/status so slow drift affects both; the figures are medians over rounds.
Three yardsticks between bare and status show where the cost goes: a plain DRF view, one with
perfgate's token authentication and rate limit, and that plus one ``SELECT 1`` (see bench/urls.py).
Targets (the CI API issue): status ≥ 60% of bare's requests/s; validate p95 < 100 ms at 20
concurrent clients.

    .venv/bin/python bench/api.py [--database-url postgres://postgres@127.0.0.1:5432/perfgate_bench]
                                  [--vus 20] [--seconds 15] [--rounds 3] [--redis-url redis://…]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gates.loadtest.k6 import K6Spec, run_k6  # noqa: E402
from gates.results import parse_results  # noqa: E402

GET_SCRIPT = """
import http from 'k6/http';
import { check } from 'k6';
const headers = %(headers)s;
export default function () {
  const r = http.get(`${__ENV.TARGET_URL}%(path)s`, { headers });
  check(r, { 'status 200': (x) => x.status === 200 });
}
"""

VALIDATE_SCRIPT = """
import http from 'k6/http';
import { check } from 'k6';
const headers = { 'Authorization': 'Bearer %(token)s', 'Content-Type': 'application/json' };
const summary = %(summary)s;
export default function () {
  const body = JSON.stringify({
    project: 'wedsync-web', environment: 'staging', gitHash: '3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e',
    buildId: `bench-${__VU}-${__ITER}-${Date.now()}`, results: summary,
  });
  const r = http.post(`${__ENV.TARGET_URL}/api/ci-cd/performance/validate`, body, { headers });
  check(r, { 'status 200': (x) => x.status === 200 });
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict, *args: str, capture: bool = False) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=capture, text=True
    )
    return result.stdout if capture else ""


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def prepared_environment(database_url: str, redis_url: str, **settings: str) -> dict:
    """The environment of a benchmark's server processes, on a new database with the demo's
    configuration, migrated; rate limits out of the way, ``settings`` on top."""
    recreate_database(database_url)
    env = {
        **{k: v for k, v in os.environ.items() if k != "REDIS_URL"},
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECRET_KEY": "bench-" + "x" * 50,
        "PERFGATE_SECRETS_KEYS": "YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI=",
        "PERFGATE_API_RATE": "100000000/min",
        "LOG_LEVEL": "WARNING",
        **settings,
    }
    if redis_url:
        env["REDIS_URL"] = redis_url
    print("==> preparing the database", flush=True)
    manage(env, "migrate", "--verbosity", "0")
    manage(env, "createcachetable")
    manage(env, "apply_config", str(ROOT / "gates" / "demo" / "perfgate.yaml"))
    return env


def k6_summary(workdir: Path) -> dict:
    """A real k6 summary export to upload, from a short run against the sample target."""
    from gates.loadtest.sample_target import start_in_thread

    script = (ROOT / "gates" / "demo" / "guest-list.js").read_text()
    target = start_in_thread(latency_ms=5.0)
    try:
        outcome = run_k6(K6Spec(script, target.url, vus=4, duration_seconds=3), workdir, timeout_seconds=60)
    finally:
        target.shutdown()
    return json.loads(outcome.summary_path.read_text())


def load(script: str, url: str, vus: int, seconds: int) -> tuple[float, float, float]:
    """(requests/s, p95 ms, failed ratio) of one k6 run."""
    with tempfile.TemporaryDirectory(prefix="perfgate-bench-") as workdir:
        outcome = run_k6(
            K6Spec(script, url, vus=vus, duration_seconds=seconds),
            Path(workdir),
            timeout_seconds=seconds + 60,
        )
        if not outcome.completed:
            raise RuntimeError(f"k6 failed: {outcome.stderr_tail}")
        results = parse_results(outcome.summary_path)
    reqs = results.series["http_reqs"].values
    duration = results.series["http_req_duration"].values
    failed = results.series["http_req_failed"].values.get("rate", 0.0)
    return reqs["rate"], duration["p(95)"], failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/perfgate_bench")
    parser.add_argument(
        "--redis-url", default="", help="Use Redis for the cache (rate limits), as a team would."
    )
    parser.add_argument("--vus", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="gunicorn threads per worker (gthread when > 1)"
    )
    args = parser.parse_args()

    env = prepared_environment(args.database_url, args.redis_url, DJANGO_SETTINGS_MODULE="bench.settings")
    token = manage(env, "create_api_token", "--project", "wedsync-web", "--role", "ops", capture=True).strip()

    with tempfile.TemporaryDirectory(prefix="perfgate-bench-summary-") as workdir:
        summary = k6_summary(Path(workdir))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"==> gunicorn, 2 workers x {args.threads} threads, on {url}", flush=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.wsgi:application",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        for _ in range(100):
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        seed = requests.post(
            f"{url}/api/ci-cd/performance/validate",
            headers=headers,
            timeout=30,
            json={
                "project": "wedsync-web",
                "environment": "staging",
                "buildId": "bench-status",
                "gitHash": "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e",
                "results": summary,
            },
        )
        seed.raise_for_status()

        token_headers = json.dumps({"Authorization": f"Bearer {token}"})
        bare = GET_SCRIPT % {"headers": "{}", "path": "/bench/bare"}
        floors = {
            "drf": GET_SCRIPT % {"headers": "{}", "path": "/bench/drf"},
            "token": GET_SCRIPT % {"headers": token_headers, "path": "/bench/token"},
            "token+db": GET_SCRIPT % {"headers": token_headers, "path": "/bench/token-select1"},
        }
        status = GET_SCRIPT % {
            "headers": json.dumps({"Authorization": f"Bearer {token}"}),
            "path": "/api/ci-cd/performance/status/bench-status?environment=staging",
        }
        figures: dict[str, list[tuple[float, float, float]]] = {
            "bare": [],
            "status": [],
            "validate": [],
            **{name: [] for name in floors},
        }
        for round_number in range(1, args.rounds + 1):
            for name, script in (("bare", bare), ("status", status), *floors.items()):
                figures[name].append(load(script, url, args.vus, args.seconds))
                rps, p95, failed = figures[name][-1]
                print(
                    f"round {round_number} {name:8s} {rps:8.1f} req/s  p95 {p95:7.2f} ms  "
                    f"failed {failed:.2%}",
                    flush=True,
                )
        validate = VALIDATE_SCRIPT % {"token": token, "summary": json.dumps(summary)}
        for round_number in range(1, args.rounds + 1):
            figures["validate"].append(load(validate, url, args.vus, args.seconds))
            rps, p95, failed = figures["validate"][-1]
            print(
                f"round {round_number} validate {rps:8.1f} req/s  p95 {p95:7.2f} ms  failed {failed:.2%}",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    def median(name: str, index: int) -> float:
        return statistics.median(f[index] for f in figures[name])

    ratio = median("status", 0) / median("bare", 0)
    print(
        "\n==> medians over",
        args.rounds,
        "rounds,",
        args.vus,
        "VUs,",
        args.seconds,
        "s each,",
        "cache:",
        "redis" if args.redis_url else "database",
    )
    for name in ("bare", "drf", "token", "token+db", "status", "validate"):
        share = f"({median(name, 0) / median('bare', 0):4.0%} of bare)" if name != "validate" else ""
        print(
            f"{name:8s} {median(name, 0):8.1f} req/s  p95 {median(name, 1):7.2f} ms  "
            f"failed {median(name, 2):.2%}  {share}"
        )
    print(
        f"GET status throughput: {ratio:.0%} of the bare view (target ≥ 60%): "
        f"{'met' if ratio >= 0.6 else 'MISSED'}"
    )
    print(
        f"POST validate p95 at {args.vus} clients: {median('validate', 1):.1f} ms (target < 100 ms): "
        f"{'met' if median('validate', 1) < 100 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
