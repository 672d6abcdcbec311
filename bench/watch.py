"""Benchmark watching production: does a watch roll back what it should, only that, and fast?

Real parts: a real ``qcluster`` (two workers) runs the watches, each probe is real k6 against the
local sample target, and rollbacks go through the outbox to the local fake of Vercel's API
(tests/fake_vercel.py), which records when the rollback call arrives. Healthy and slowed windows
alternate, so this machine's noise hits both alike:

- **healthy**: the target keeps its latency for the whole window. Target: no rollback.
- **slowed**: after two probes the target slows by 2x. Target: rolled back, and the time from
  the slowdown to Vercel's rollback call at most ``(failureLimit + 1) x interval`` plus one
  probe's duration plus 10 s.

Then the time from a signed ``deployment.ready`` webhook (a preview deployment perfgate holds a
validation for) to Vercel hearing the check is running. Target: < 1 s plus queueing (the ORM
broker polls every 0.2 s; two tasks are queued on the way: the webhook's and the outbox's).

    .venv/bin/python bench/watch.py [--windows 20] [--interval 3] [--window 15] [--ready-rounds 20]
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gates.loadtest.sample_target import start_in_thread  # noqa: E402
from tests.fake_vercel import PROJECT_ID, FakeVercel, load_webhook_fixture, signed_webhook  # noqa: E402

WEBHOOK_SECRET = "bench-vercel-secret"  # noqa: S105 - a benchmark value
PROBE_SCRIPT = """import http from 'k6/http';
export default function () {
  http.get(`${__ENV.TARGET_URL}/api/guests`, { tags: { name: 'guests' } });
}
"""
LATENCY_MS = 20.0
PROBE_SECONDS = 2
FAILURE_LIMIT = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="healthy windows, and as many slowed ones")
    parser.add_argument("--interval", type=int, default=3, help="seconds between probes")
    parser.add_argument("--window", type=int, default=15, help="seconds a deployment is watched")
    parser.add_argument("--ready-rounds", type=int, default=20, help="deployment.ready webhooks timed")
    args = parser.parse_args()

    fake = FakeVercel().start()
    target = start_in_thread(latency_ms=LATENCY_MS, jitter_ms=2.0)
    workdir = tempfile.mkdtemp(prefix="perfgate-bench-watch-")
    print(f"==> database and logs in {workdir}", flush=True)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir}/bench.sqlite3",
        DJANGO_SETTINGS_MODULE="perfgate_site.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 50,
        PERFGATE_SECRETS_KEYS="YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI=",
        VERCEL_API_URL=fake.url,
        VERCEL_WEBHOOK_SECRET=WEBHOOK_SECRET,
        PERFGATE_VERCEL_DEPLOYMENT_SCHEME="http",
        PERFGATE_ROLLBACK_POLL_SECONDS="0.5",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="WARNING",
        Q_CLUSTER_NAME="perfgate-bench-watch",
        Q_WORKERS="2",
        PERFGATE_AUDIT_DIGEST_DIR=f"{workdir}/digests",
    )
    os.environ.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, check=True)

    import django

    django.setup()
    project = _configure(fake, target.url, args)
    cluster = subprocess.Popen(
        [sys.executable, "manage.py", "qcluster"],
        cwd=ROOT,
        stdout=open(f"{workdir}/qcluster.log", "w"),  # noqa: SIM115 - open while the cluster runs
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(3)
        watches(fake, target, project, args)
        ready_to_running(fake, project, target.url, args.ready_rounds)
    finally:
        os.killpg(cluster.pid, signal.SIGTERM)
        try:
            cluster.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
        fake.stop()


def _configure(fake: FakeVercel, target_url: str, args):
    from gates.models import Environment, Project, Scenario, ThresholdRule
    from integrations.models import VercelConnection

    project = Project.objects.create(
        slug="wedsync-web", name="WedSync web", vercel_project_id=PROJECT_ID, allowed_hosts=["127.0.0.1"]
    )
    staging = Environment.objects.create(project=project, name="staging")
    probe = Scenario.objects.create(
        project=project,
        name="probe",
        script_text=PROBE_SCRIPT,
        target_url=target_url,
        vus=2,
        duration_seconds=PROBE_SECONDS,
        min_requests=20,
        is_default=True,
    )
    production = Environment.objects.create(
        project=project,
        name="production",
        fail_closed=True,
        auto_rollback=True,
        watch_scenario=probe,
        watch_initial_delay_seconds=0,
        watch_interval_seconds=args.interval,
        watch_window_seconds=args.window,
        watch_failure_limit=FAILURE_LIMIT,
        watch_consecutive=True,
    )
    relative = ThresholdRule.objects.create(
        project=project,
        scenario=probe,
        metric="http_req_duration",
        kind=ThresholdRule.Kind.RELATIVE,
        aggregation="p(95)",
        warn_pct=10,
        fail_pct=25,
    )
    absolute = ThresholdRule.objects.create(
        project=project, scenario=probe, metric="http_req_failed", threshold="rate<0.05"
    )
    for rule in (relative, absolute):
        rule.environments.set([production, staging])
    VercelConnection.objects.create(project=project, token=fake.token, team_id=fake.team_id, api_url=fake.url)
    return project


def _deploy(fake: FakeVercel, project, number: int, target_url: str):
    """A production deployment on the fake that serves production, and its passed validation."""
    from gates.audit import Actor
    from gates.services import validation_request
    from tests.factories import PASSING_SUMMARY

    deployment_id = f"dpl_bench{number:03d}"
    fake.add_deployment(deployment_id=deployment_id, url=f"bench-{number}.vercel.app")
    if fake.production_deployment() != deployment_id:
        # A rollback turned automatic domain assignment off: promote it as a person would.
        _promote(fake, deployment_id)
    validation, _ = validation_request(
        project=project,
        environment=project.environments.get(name="production"),
        build_id=f"build-{number:03d}",
        git_hash=f"{number:040x}",
        actor=Actor("token", "bench"),
        test_config={"targetUrl": target_url},
        deployment_context={"provider": "vercel", "deploymentId": deployment_id},
        results=io.BytesIO(PASSING_SUMMARY),
        results_format="k6-summary-export",
    )
    return validation


def _promote(fake: FakeVercel, deployment_id: str) -> None:
    auth = {"Authorization": f"Bearer {fake.token}"}
    response = requests.post(
        f"{fake.url}/v10/projects/{PROJECT_ID}/promote/{deployment_id}",
        params=fake.team_query,
        headers=auth,
        timeout=5,
    )
    response.raise_for_status()
    for _ in range(20):
        project = requests.get(
            f"{fake.url}/v9/projects/{PROJECT_ID}", params=fake.team_query, headers=auth, timeout=5
        ).json()
        if project["lastAliasRequest"]["jobStatus"] == "succeeded":
            return
    raise RuntimeError("the promote did not finish")


def _watch(validation, target_url: str):
    from gates.audit import Actor
    from gates.services.watches import watch_start

    return watch_start(
        validation=validation, actor=Actor("token", "bench"), source="ci", deployment_url=target_url
    )


def _rollback_calls(fake: FakeVercel) -> list:
    return [r for r in fake.requests if r.method == "POST" and "/rollback/" in r.path and r.status == 201]


def _wait_finished(watch, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch.refresh_from_db()
        if not watch.is_active:
            return watch
        time.sleep(0.2)
    raise RuntimeError(f"watch {watch.pk} still {watch.state} after {timeout:.0f} s")


def watches(fake: FakeVercel, target, project, args) -> None:
    from gates.models import Rollback

    knobs = f"{target.url}/_knobs"
    window_timeout = args.window + 4 * (args.interval + PROBE_SECONDS) + 60
    number = 0
    print("==> warm-up watch (its probes are the first probe baseline)", flush=True)
    _wait_finished(_watch(_deploy(fake, project, number, target.url), target.url), window_timeout)
    healthy_rollbacks, slowed = 0, []
    bound = (FAILURE_LIMIT + 1) * args.interval + PROBE_SECONDS + 10
    print(
        f"{'window':>6} {'kind':8} {'probes':>6} {'failed':>6} {'state':12} {'rollback':10} "
        f"{'s to rollback':>14}"
    )
    for index in range(args.windows):
        for kind in ("healthy", "slowed"):
            number += 1
            requests.post(knobs, json={"latency_ms": LATENCY_MS}, timeout=5).raise_for_status()
            calls_before = len(_rollback_calls(fake))
            watch = _watch(_deploy(fake, project, number, target.url), target.url)
            seconds = ""
            if kind == "slowed":
                deadline = time.monotonic() + window_timeout
                while watch.probes_run < 2 and time.monotonic() < deadline:
                    time.sleep(0.1)
                    watch.refresh_from_db()
                requests.post(knobs, json={"latency_ms": 2 * LATENCY_MS}, timeout=5).raise_for_status()
                slowed_at = time.time()
            watch = _wait_finished(watch, window_timeout)
            rollback = Rollback.objects.filter(watch=watch).first()
            if rollback is not None and rollback.state in Rollback.OPEN_STATES:
                deadline = time.monotonic() + 60
                while rollback.state in Rollback.OPEN_STATES and time.monotonic() < deadline:
                    time.sleep(0.2)
                    rollback.refresh_from_db()
            calls = _rollback_calls(fake)[calls_before:]
            if kind == "healthy":
                healthy_rollbacks += bool(calls or rollback)
            else:
                took = calls[0].at - slowed_at if calls else None
                slowed.append(took)
                seconds = f"{took:.1f}" if took is not None else "-"
            print(
                f"{index + 1:>6} {kind:8} {watch.probes_run:>6} {watch.failures:>6} {watch.state:12} "
                f"{rollback.state if rollback else '-':10} {seconds:>14}",
                flush=True,
            )
    rolled = [t for t in slowed if t is not None]
    print()
    print(f"healthy windows: {args.windows}, rolled back: {healthy_rollbacks} (target 0)")
    print(f"slowed windows:  {args.windows}, rolled back: {len(rolled)} (target {args.windows})")
    if rolled:
        print(
            f"slowdown → Vercel rollback call: median {statistics.median(rolled):.1f} s, "
            f"max {max(rolled):.1f} s (bound ({FAILURE_LIMIT} + 1) x {args.interval} s "
            f"+ {PROBE_SECONDS} s + 10 s "
            f"= {bound} s; {sum(t <= bound for t in rolled)}/{len(rolled)} within)"
        )


def ready_to_running(fake: FakeVercel, project, target_url: str, rounds: int) -> None:
    from django.test import Client

    from gates.models import Validation

    client = Client()
    host = target_url.removeprefix("http://")
    timings = []
    for number in range(rounds):
        deployment_id = f"dpl_preview{number:03d}"
        fake.add_deployment(deployment_id=deployment_id, url=host, target=None)
        for name in ("deployment.preview.created", "deployment.ready"):
            payload = load_webhook_fixture(name)
            payload["id"] = f"whk_bench_{name}_{number}"
            payload["payload"]["deployment"]["id"] = deployment_id
            payload["payload"]["deployment"]["url"] = host
            payload["payload"]["target"] = None
            if name == "deployment.ready":
                deadline = time.monotonic() + 30
                while not Validation.objects.filter(
                    deployment_context__deploymentId=deployment_id, held=True
                ).exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no held validation for {deployment_id}")
                    time.sleep(0.05)
                while not _check_run_of(fake, deployment_id):
                    time.sleep(0.05)
            body, headers = signed_webhook(payload, WEBHOOK_SECRET)
            sent = time.time()
            response = client.post(
                "/api/ci-cd/webhooks/vercel",
                data=body,
                content_type="application/json",
                **{f"HTTP_{key.upper().replace('-', '_')}": value for key, value in headers.items()},
            )
            assert response.status_code in (200, 202), response.content
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            running = [
                r
                for r in fake.requests
                if r.method == "PATCH"
                and deployment_id in r.path
                and (r.json or {}).get("status") == "running"
            ]
            if running:
                timings.append(running[0].at - sent)
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"the check of {deployment_id} was never marked running")
        _wait_validation(deployment_id)
    print()
    print(
        f"deployment.ready → check running ({rounds} rounds): median {statistics.median(timings):.2f} s, "
        f"p95 {sorted(timings)[int(0.95 * (len(timings) - 1))]:.2f} s, max {max(timings):.2f} s "
        "(target < 1 s plus queueing)"
    )


def _check_run_of(fake: FakeVercel, deployment_id: str) -> bool:
    return any(run["deploymentId"] == deployment_id for run in fake.check_runs.values())


def _wait_validation(deployment_id: str) -> None:
    from gates.models import Validation

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        validation = Validation.objects.filter(deployment_context__deploymentId=deployment_id).first()
        if validation is not None and not validation.is_pending:
            return
        time.sleep(0.2)


if __name__ == "__main__":
    main()
