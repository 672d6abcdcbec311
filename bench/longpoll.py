"""Benchmark long-polls under the recommended server: gunicorn with uvicorn workers on PostgreSQL.

200 concurrent ``status?wait=30`` long-polls (spread over many CI tokens and pending validations)
wait while a steady load runs beside them: 20 validate uploads/s (a real k6 summary, a new build
each), 50 status reads/s (wait=0) and 10 ``/healthz`` probes/s. Then the pending validations are
decided (``POST cancel``, one every 100 ms) while the load goes on, and every waiter's answer is
timed from the moment its validation's cancel was sent.

Printed: p50/p95/max of the non-waiting calls and of /healthz (target: p95 under 50 ms), the time
from a verdict to its waiters' answers (target: p95 under 200 ms, also per validation: until
*every* waiter of it was answered), and memory per waiter (RSS growth of the worker processes
when the waiters arrive, divided by their number), with the workers' thread counts.

    .venv/bin/python bench/longpoll.py [--database-url postgres://postgres@127.0.0.1:5432/perfgate_longpoll]
                                       [--workers 2] [--waiters 200] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psycopg
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api import free_port, k6_summary, manage, prepared_environment  # noqa: E402

PENDING = ("queued", "running")
UPLOADS = itertools.count()
GIT_HASH = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"
TOKENS_SCRIPT = """
from gates.audit import Actor
from gates.models import Project
from integrations.services import token_create

project = Project.objects.get(slug="wedsync-web")
for role, count in (("ops", 1), ("ci", {count})):
    for number in range(count):
        print(token_create(project=project, role=role, name=f"longpoll-{{role}}-{{number}}",
                           actor=Actor("cli", "bench"))[1])
"""


def worker_pids(master: int) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()]


def proc_status(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1))


def workers_rss_kib(master: int) -> int:
    return sum(proc_status(pid, "VmRSS") for pid in worker_pids(master))


def p95_of(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    median, p95, worst = statistics.median(values), p95_of(values), max(values)
    return f"p50 {median:7.1f} ms  p95 {p95:7.1f} ms  max {worst:7.1f} ms  (n={len(values)})"


class Load:
    """The steady, open-loop load beside the waiters: each call starts on schedule, however long
    the ones before it take. Latencies in ms per kind; failures counted by status."""

    def __init__(self, session: aiohttp.ClientSession, url: str, ci_token: str, summary: dict):
        self.session = session
        self.url = url
        self.headers = {"Authorization": f"Bearer {ci_token}"}
        self.summary = summary
        self.latencies: dict[str, list[float]] = {"validate": [], "status": [], "healthz": []}
        self.failures: dict[str, int] = dict.fromkeys(self.latencies, 0)

    async def _timed(self, kind: str, request) -> None:
        started = time.perf_counter()
        async with request as response:
            await response.read()
            ok = response.status == 200
        self.latencies[kind].append((time.perf_counter() - started) * 1000)
        self.failures[kind] += not ok

    def validate(self):
        body = {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": f"longpoll-upload-{next(UPLOADS)}",
            "gitHash": GIT_HASH,
            "results": self.summary,
        }
        url = f"{self.url}/api/ci-cd/performance/validate"
        return self._timed("validate", self.session.post(url, json=body, headers=self.headers))

    def status(self):
        url = f"{self.url}/api/ci-cd/performance/status/longpoll-read?environment=staging"
        return self._timed("status", self.session.get(url, headers=self.headers))

    def healthz(self):
        return self._timed("healthz", self.session.get(f"{self.url}/healthz"))

    async def run(self, stop: asyncio.Event, rates: dict[str, float]) -> None:
        await asyncio.gather(
            *(self._at_rate(getattr(self, kind), rate, stop) for kind, rate in rates.items())
        )

    async def _at_rate(self, call, rate: float, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        started, sent, calls = loop.time(), 0, set()
        while not stop.is_set():
            task = asyncio.create_task(call())
            calls.add(task)
            task.add_done_callback(calls.discard)
            sent += 1
            await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
        await asyncio.gather(*calls)


async def long_poll(session, url: str, token: str, build_id: str, problems: list[str]) -> tuple[float, str]:
    """Wait for a build's verdict as CI does (again after each 30 s): (answered at, status)."""
    status_url = f"{url}/api/ci-cd/performance/status/{build_id}?environment=staging&wait=30"
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        async with session.get(status_url, headers=headers) as response:
            body = await response.json()
            if response.status == 200 and body["status"] not in PENDING:
                return time.monotonic(), body["status"]
            if response.status != 200:
                problems.append(f"{response.status} {body.get('error')}")
                await asyncio.sleep(1)


async def seed(session, url: str, ops_token: str, builds: list[str], summary: dict) -> dict[str, str]:
    """The decided build the status reads ask for, and the pending validations the waiters wait
    on: {validation id: build}. No worker runs, so those stay queued until cancelled."""
    headers = {"Authorization": f"Bearer {ops_token}"}
    pending = {}
    for build, results in [("longpoll-read", summary)] + [(build, None) for build in builds]:
        body = {"project": "wedsync-web", "environment": "staging", "buildId": build, "gitHash": GIT_HASH}
        if results is not None:
            body["results"] = results
        async with session.post(
            f"{url}/api/ci-cd/performance/validate", json=body, headers=headers
        ) as response:
            document = await response.json()
            assert response.status == (200 if results is not None else 202), document
        if results is None:
            pending[document["validationId"]] = build
    return pending


async def verdict_times(database_url: str, pending: dict[str, str], heard: dict[str, float], ready) -> None:
    """When each pending validation's verdict was committed, as a listener of the database's own
    notifications hears it: the reference the waiters' answers are timed from."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as listener:
        await listener.execute("LISTEN perfgate_validation_status")
        ready.set()
        async for notify in listener.notifies():
            validation_id, _, status = notify.payload.partition(":")
            if validation_id in pending and status not in PENDING:
                heard.setdefault(pending[validation_id], time.monotonic())
                if len(heard) == len(pending):
                    return


async def cancel_one_by_one(url: str, ops_token: str, builds: list[str]) -> None:
    """Decide the pending validations, one every 100 ms. A fresh connection each: an idle
    keep-alive one of the shared session may have been closed by the server meanwhile."""
    headers = {"Authorization": f"Bearer {ops_token}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for build in builds:
            body = {"project": "wedsync-web", "environment": "staging", "buildId": build, "reason": "bench"}
            async with session.post(
                f"{url}/api/ci-cd/performance/cancel", json=body, headers=headers
            ) as response:
                assert response.status == 200, await response.text()
            await asyncio.sleep(0.1)


async def steady(session, url: str, token: str, summary: dict, rates: dict, seconds: float) -> Load:
    load = Load(session, url, token, summary)
    stop = asyncio.Event()
    running = asyncio.create_task(load.run(stop, rates))
    await asyncio.sleep(seconds)
    stop.set()
    await running
    return load


async def bench(args, url: str, master: int, tokens: list[str], ops_token: str, summary: dict) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    rates = {"validate": args.uploads_per_second, "status": args.reads_per_second, "healthz": 10.0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        builds = [f"longpoll-{number}" for number in range(args.validations)]
        pending = await seed(session, url, ops_token, builds, summary)
        print("==> warming up the workers (5 s of the steady load)", flush=True)
        await steady(session, url, tokens[0], summary, rates, 5)
        print(f"==> {args.seconds} s of the steady load alone", flush=True)
        alone = await steady(session, url, tokens[0], summary, rates, args.seconds)
        await asyncio.sleep(1)
        rss_before = workers_rss_kib(master)
        threads_before = [proc_status(pid, "Threads") for pid in worker_pids(master)]

        print(
            f"==> {args.waiters} long-polls on {len(builds)} pending validations, {len(tokens)} tokens",
            flush=True,
        )
        problems: list[str] = []
        waiters = [
            (builds[number % len(builds)], tokens[number % len(tokens)]) for number in range(args.waiters)
        ]
        polls = [
            asyncio.create_task(long_poll(session, url, token, build, problems)) for build, token in waiters
        ]
        await asyncio.sleep(3)
        rss_waiting = workers_rss_kib(master)
        threads_waiting = [proc_status(pid, "Threads") for pid in worker_pids(master)]
        still_waiting = sum(not poll.done() for poll in polls)

        print(f"==> {args.seconds} s of the steady load beside them, then the verdicts", flush=True)
        beside = asyncio.create_task(steady(session, url, tokens[0], summary, rates, args.seconds + 6))
        heard: dict[str, float] = {}
        listening = asyncio.Event()
        hearing = asyncio.create_task(verdict_times(args.database_url, pending, heard, listening))
        await listening.wait()
        await asyncio.sleep(args.seconds)
        await cancel_one_by_one(url, ops_token, builds)
        answers = await asyncio.gather(*polls)
        await hearing
        with_waiters = await beside

    per_waiter = [(at - heard[build]) * 1000 for (build, _), (at, _) in zip(waiters, answers, strict=True)]
    per_validation: dict[str, float] = {}
    for (build, _), latency in zip(waiters, per_waiter, strict=True):
        per_validation[build] = max(per_validation.get(build, 0.0), latency)
    every_waiter = list(per_validation.values())

    print(
        f"\n==> gunicorn -k uvicorn_worker.UvicornWorker, {args.workers} workers, PostgreSQL; rates/s {rates}"
    )
    print(f"waiters pending after 3 s: {still_waiting} of {args.waiters}; failed polls: {len(problems)}")
    labels = {
        "validate": "POST validate (upload)",
        "status": "GET status (wait=0)",
        "healthz": "GET /healthz",
    }
    for phase, load in (("load alone", alone), (f"beside {args.waiters} waiters", with_waiters)):
        print(f"-- {phase}")
        for kind, label in labels.items():
            print(f"{label:24s} {percentiles(load.latencies[kind])}  non-200: {load.failures[kind]}")
    print("-- verdicts (from the commit, as a LISTEN connection hears it)")
    print(f"{'verdict -> waiter':24s} {percentiles(per_waiter)}")
    print(f"{'verdict -> all waiters':24s} {percentiles(every_waiter)}  (per validation)")
    per_waiter_kib = (rss_waiting - rss_before) / args.waiters
    print(
        f"memory: workers' RSS {rss_before / 1024:.1f} -> {rss_waiting / 1024:.1f} MiB with the waiters, "
        f"{per_waiter_kib:.1f} KiB per waiter; threads per worker {threads_before} -> {threads_waiting}"
    )
    for phase, load in (("alone", alone), ("beside the waiters", with_waiters)):
        non_waiting, probes = load.latencies["validate"] + load.latencies["status"], load.latencies["healthz"]
        verdict = "met" if max(p95_of(non_waiting), p95_of(probes)) < 50 else "MISSED"
        print(
            f"{phase}: non-waiting calls p95 {p95_of(non_waiting):.1f} ms, "
            f"/healthz p95 {p95_of(probes):.1f} ms (target < 50 ms): {verdict}"
        )
    print(
        f"verdict -> every waiter answered, p95 {p95_of(every_waiter):.1f} ms (target < 200 ms): "
        f"{'met' if p95_of(every_waiter) < 200 else 'MISSED'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/perfgate_longpoll")
    parser.add_argument(
        "--redis-url", default="", help="Redis for the cache (rate limits) and the broker, as a team would."
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--validations", type=int, default=50, help="pending validations the waiters share")
    parser.add_argument(
        "--tokens", type=int, default=20, help="CI tokens the waiters share (capped per token)"
    )
    parser.add_argument("--seconds", type=int, default=20, help="steady load with the waiters pending")
    parser.add_argument("--uploads-per-second", type=float, default=20.0)
    parser.add_argument("--reads-per-second", type=float, default=50.0)
    args = parser.parse_args()

    env = prepared_environment(args.database_url, args.redis_url, Q_CLUSTER_NAME="perfgate-longpoll-bench")
    ops_token, *tokens = manage(
        env, "shell", "--no-imports", "-c", TOKENS_SCRIPT.format(count=args.tokens), capture=True
    ).split()
    with tempfile.TemporaryDirectory(prefix="perfgate-bench-summary-") as workdir:
        summary = k6_summary(Path(workdir))

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"==> gunicorn -k uvicorn_worker.UvicornWorker --workers {args.workers} on {url}", flush=True)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "uvicorn_worker.UvicornWorker",
            "--workers",
            str(args.workers),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "perfgate_site.asgi",
        ],
        cwd=ROOT,
        env=env,
    )
    try:
        wait_until_up(url)
        asyncio.run(bench(args, url, server.pid, tokens, ops_token, summary))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def wait_until_up(url: str) -> None:
    for _ in range(150):
        try:
            if requests.get(f"{url}/healthz", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError("the server did not come up")


if __name__ == "__main__":
    main()
