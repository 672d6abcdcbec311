"""Benchmark notifications in a burst: do 1,000 blocked builds reach Slack, each once, without
tripping Slack's rate limit, and how fast?

Ten projects, each with one Slack channel on the local fake of Slack's incoming webhooks
(tests/fake_slack.py), which accepts one message per second per webhook and answers 429 beyond
it, as Slack does. Before the clock starts, every project gets its blocked builds the ordinary way
(``validation_request`` then ``validation_evaluate`` on results over the limit) while no channel
exists yet, so nothing is recorded then. The burst then records each build's notification the
way the gate does when a validation finishes (``notify_listen(validation, Change.FINISHED)`` in a
transaction of its own), round-robin over the projects, spread evenly over ``--burst`` seconds.

Delivery runs meanwhile in one thread, as one worker would: ``outbox.deliver_due()`` every 0.2 s
(the ORM broker's poll), until every message is delivered or given up. The same builds go through
twice: with the default coalescing window and with the window at 0.

    .venv/bin/python bench/notify.py [--events 1000] [--channels 10] [--burst 5] [--window 10]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_slack import FakeSlack  # noqa: E402

BUILD = re.compile(r"bench-\d{2}-\d{4}")
POLL_SECONDS = 0.2


@dataclass
class Run:
    label: str
    window: float
    max_events: int
    recorded: int = 0
    recording_failures: int = 0
    burst_seconds: float = 0.0
    messages: int = 0
    carried: int = 0
    lost: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    other_refusals: int = 0
    largest: int = 0
    calls_not_delivered: int = 0
    first_to_last: float = 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="blocked builds, over all channels")
    parser.add_argument("--channels", type=int, default=10, help="projects, one Slack channel each")
    parser.add_argument("--burst", type=float, default=5.0, help="seconds the events are spread over")
    parser.add_argument("--window", type=float, default=10.0, help="the coalescing window of the first run")
    parser.add_argument("--recorders", type=int, default=4, help="threads recording events, as workers")
    parser.add_argument("--max-events", type=int, default=50, help="events per message at most")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="perfgate-bench-notify-")
    print(f"==> database in {workdir}", flush=True)
    os.environ.update(
        DATABASE_URL=f"sqlite:///{workdir}/bench.sqlite3",
        DJANGO_SETTINGS_MODULE="perfgate_site.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 50,
        PERFGATE_SECRETS_KEYS="YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI=",
        PERFGATE_BASE_URL="https://perfgate.example.com",
        PERFGATE_SLACK_MESSAGES_PER_SECOND="1",
        SLACK_TIMEOUT_SECONDS="5",
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="WARNING",
        Q_CLUSTER_NAME="perfgate-bench-notify",
        PERFGATE_AUDIT_DIGEST_DIR=f"{workdir}/digests",
    )
    os.environ.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, check=True)

    import django

    django.setup()
    started = time.monotonic()
    validations = _blocked_builds(args.channels, args.events)
    print(
        f"==> {len(validations)} blocked builds made in {time.monotonic() - started:.1f} s "
        f"(before any channel exists: nothing recorded yet)",
        flush=True,
    )
    runs = [
        Run(f"window {args.window:g} s", args.window, args.max_events),
        Run("window 0 s", 0.0, args.max_events),
    ]
    for run in runs:
        _burst(run, validations, args)
    _print(runs, args)


def _blocked_builds(channels: int, events: int) -> list:
    """``events`` blocked validations over ``channels`` projects, in the order the burst sends them
    (round-robin over the projects)."""
    from gates.audit import Actor
    from gates.models import Environment, Project, Scenario, ThresholdRule
    from gates.services import validation_evaluate
    from tests.factories import make_results, make_validation

    actor = Actor("token", "bench")
    projects = []
    for number in range(channels):
        project = Project.objects.create(
            slug=f"bench-{number:02d}", name=f"Bench {number}", allowed_hosts=["127.0.0.1"]
        )
        staging = Environment.objects.create(project=project, name="staging", fail_closed=False)
        scenario = Scenario.objects.create(
            project=project,
            name="guest-list",
            script_text="export default function () {}",
            target_url="http://127.0.0.1:8001",
            is_default=True,
        )
        ThresholdRule.objects.create(
            project=project, scenario=scenario, metric="http_req_duration", threshold="p(95)<400"
        )
        projects.append((project, staging))
    validations = []
    for index in range(events):
        project, staging = projects[index % channels]
        validation, _ = make_validation(
            project=project,
            environment=staging,
            build_id=f"{project.slug}-{index:04d}",
            git_hash=f"{index:040x}",
            actor=actor,
        )
        validation = validation_evaluate(validation=validation, results=make_results(p95=900.0), actor=actor)
        assert validation.status == "blocked", validation.status
        validations.append(validation)
    return validations


def _burst(run: Run, validations: list, args) -> None:
    from django.conf import settings
    from django.db import connection

    from gates.models import Project
    from integrations.models import Notification, NotificationChannel, OutboundCall

    settings.PERFGATE_NOTIFY_WINDOW_SECONDS = run.window
    settings.PERFGATE_NOTIFY_MAX_EVENTS = run.max_events
    Notification.objects.all().delete()
    OutboundCall.objects.all().delete()
    NotificationChannel.objects.all().delete()
    slack = FakeSlack().start()
    slack.rate_limit(1)
    for project in Project.objects.order_by("slug"):
        NotificationChannel.objects.create(
            project=project,
            name=f"#perf-{project.slug}",
            kind="slack",
            slack_webhook_url=slack.webhook_url(project.slug),
        )

    failures: list[str] = []
    print(f"==> {run.label}: recording {len(validations)} events over {args.burst:g} s", flush=True)
    recording = threading.Event()
    recording.set()
    worker = threading.Thread(target=_deliver_until_done, args=(recording,), daemon=True)
    worker.start()
    first_event = time.time()
    spacing = args.burst / len(validations)
    recorders = [
        threading.Thread(
            target=_record_events,
            args=(list(enumerate(validations))[number :: args.recorders], first_event, spacing, failures),
        )
        for number in range(args.recorders)
    ]
    for recorder in recorders:
        recorder.start()
    for recorder in recorders:
        recorder.join()
    run.burst_seconds = time.time() - first_event
    recording.clear()
    worker.join(timeout=150)
    if worker.is_alive():
        raise RuntimeError("delivery did not finish within 150 s")
    slack.stop()

    run.recorded = Notification.objects.count()
    run.recording_failures = len(failures)
    for failure in failures[:5]:
        print(f"    recording failed: {failure}", flush=True)
    run.messages = len(slack.messages)
    seen: Counter[str] = Counter()
    for message in slack.messages:
        builds = set(BUILD.findall(json.dumps(message.payload)))
        run.largest = max(run.largest, len(builds))
        seen.update(builds)
    expected = {validation.build_id for validation in validations}
    run.carried = sum(seen.values())
    run.lost = len(expected - set(seen))
    run.duplicates = sum(count - 1 for count in seen.values() if count > 1)
    run.rate_limited = len(slack.rejected(429))
    run.other_refusals = len(slack.rejected()) - run.rate_limited
    run.calls_not_delivered = OutboundCall.objects.exclude(state=OutboundCall.State.DELIVERED).count()
    run.first_to_last = max(message.at for message in slack.messages) - first_event if slack.messages else 0.0
    connection.close()


def _record_events(events: list, first_event: float, spacing: float, failures: list[str]) -> None:
    """One of the workers finishing validations: each event at its time in the burst, recorded as
    the gate records it (in the transaction of the change)."""
    from django.db import connection, transaction

    from gates.registry import Change
    from integrations.notify.events import notify_listen

    try:
        for index, validation in events:
            pause = first_event + index * spacing - time.time()
            if pause > 0:
                time.sleep(pause)
            try:
                with transaction.atomic():
                    notify_listen(validation, Change.FINISHED)
            except Exception as exc:  # counted and shown: a lost recording is a finding
                failures.append(f"{validation.build_id}: {type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _deliver_until_done(recording: threading.Event) -> None:
    """One worker: a delivery pass every poll, until the burst is over and nothing is open."""
    from django.db import connection

    from integrations import outbox
    from integrations.models import OutboundCall

    try:
        while True:
            outbox.deliver_due()
            open_calls = OutboundCall.objects.filter(
                state__in=[OutboundCall.State.PENDING, OutboundCall.State.SENDING]
            ).exists()
            if not recording.is_set() and not open_calls:
                return
            time.sleep(POLL_SECONDS)
    finally:
        connection.close()


def _print(runs: list[Run], args) -> None:
    rows = [
        ("events recorded", lambda r: f"{r.recorded}"),
        ("recordings that failed", lambda r: f"{r.recording_failures}"),
        ("burst took (s)", lambda r: f"{r.burst_seconds:.1f}"),
        ("messages sent", lambda r: f"{r.messages}"),
        ("events carried", lambda r: f"{r.carried}"),
        ("most events in one message", lambda r: f"{r.largest}"),
        ("lost", lambda r: f"{r.lost}"),
        ("duplicates", lambda r: f"{r.duplicates}"),
        ("429s received", lambda r: f"{r.rate_limited}"),
        ("other refusals", lambda r: f"{r.other_refusals}"),
        ("calls not delivered", lambda r: f"{r.calls_not_delivered}"),
        ("first event → last delivery (s)", lambda r: f"{r.first_to_last:.1f}"),
        ("last event → last delivery (s)", lambda r: f"{r.first_to_last - r.burst_seconds:.1f}"),
    ]
    print()
    print(
        f"{args.events} blocked builds over {args.channels} Slack channels (one per project), "
        f"fake Slack at 1 message/s per webhook, PERFGATE_SLACK_MESSAGES_PER_SECOND=1, "
        f"max {args.max_events} events per message"
    )
    print(f"{'':34}" + "".join(f"{run.label:>16}" for run in runs))
    for name, value in rows:
        print(f"{name:34}" + "".join(f"{value(run):>16}" for run in runs))


if __name__ == "__main__":
    main()
