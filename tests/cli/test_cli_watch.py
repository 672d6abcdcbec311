"""``perfgate watch`` and the watch block of ``perfgate status``, against the fake perfgate server
of ``test_cli`` taught the watch endpoint (``POST …/watch``, checked the way the real API checks it).

Exit codes of ``perfgate watch``: 0 healthy or stopped (without ``--wait``: the watch is on),
1 degraded or rolled back, 2 errored, inconclusive or still watching at ``--timeout``, 3 errors.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from perfgate_cli import cli

from tests.cli.test_cli import (
    BUILD_ID_PATTERN,
    TOKEN,
    FakePerfgate,
    _Handler,
    answer,
    api_error,
    perfgate,
    validation,
)

WATCH_FIELDS = {"project", "buildId", "environment", "deploymentUrl", "deploymentId", "baselineUrl"}
WATCH_ARGS = ["watch", "--project", "wedsync-web", "--build-id", "gha-9876543-1"]


class WatchingHandler(_Handler):
    """The fake perfgate, with ``POST …/watch`` as the real API takes it: JSON, known fields only."""

    def _check(self, received, body):
        if received.method == "POST" and received.path == cli.WATCH_PATH:
            if received.headers.get("content-type") != "application/json":
                raise ValueError(f"content type {received.headers.get('content-type')!r}")
            document = json.loads(body)
            if not isinstance(document, dict) or set(document) - WATCH_FIELDS:
                raise ValueError(f"unknown fields in {document}")
            if not BUILD_ID_PATTERN.match(document.get("buildId", "")) or not document.get("project"):
                raise ValueError("project and buildId are required")
            if document.get("environment") not in ("staging", "production"):
                raise ValueError("environment must be staging or production")
            received.document = document
            return
        super()._check(received, body)


@pytest.fixture
def server():
    fake = FakePerfgate()
    fake.httpd.RequestHandlerClass = type("Handler", (WatchingHandler,), {"fake": fake})
    yield fake
    fake.stop()
    assert fake.problems == []


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No GitHub or perfgate settings from whoever runs the tests, and short sleeps."""
    for name in list(os.environ):
        if name.startswith(("GITHUB_", "PERFGATE_")):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "BACKOFF_BASE", 0.01)
    monkeypatch.setattr(cli, "WATCH_POLL_SECONDS", 0.02)


def watch(state, **extra) -> dict:
    """A watch document in the API's shape."""
    document = {
        "watchId": 7,
        "validationId": "7b0f5a86-3c3e-4a51-9d7e-2c1b3a4d5e6f",
        "project": "wedsync-web",
        "environment": "production",
        "buildId": "gha-9876543-1",
        "state": state,
        "stateReason": "",
        "source": "ci",
        "deploymentId": "dpl_123",
        "targetUrl": "https://wedsync.example",
        "startedAt": "2026-12-01T09:00:00Z",
        "nextProbeAt": "2026-12-01T09:01:00Z" if state in ("waiting", "watching") else None,
        "endsAt": "2026-12-01T09:16:00Z",
        "finishedAt": None if state in ("waiting", "watching") else "2026-12-01T09:16:00Z",
        "dryRun": False,
        "wouldRollBack": False,
        "policy": {
            "scenario": "probe",
            "initialDelay": 60,
            "interval": 60,
            "window": 900,
            "failureLimit": 2,
            "consecutive": True,
            "inconclusiveLimit": 2,
            "consecutiveErrorLimit": 4,
            "dryRun": False,
            "autoRollback": True,
        },
        "probes": {
            "run": 0,
            "failures": 0,
            "consecutiveFailures": 0,
            "inconclusive": 0,
            "errors": 0,
            "consecutiveErrors": 0,
        },
        "baseline": "5 probes of build gha-99 (watch #6)",
        "lastProbe": None,
        "rollback": None,
        "notices": [],
    }
    document.update(extra)
    return document


def probed(run, failures=0, errors=0, outcome="success") -> dict:
    return {
        "probes": {
            "run": run,
            "failures": failures,
            "consecutiveFailures": failures,
            "inconclusive": 0,
            "errors": errors,
            "consecutiveErrors": errors,
        },
        "lastProbe": {
            "number": run,
            "trigger": "schedule",
            "outcome": outcome,
            "reason": f"probe {run}: p(95) 120 ms",
            "finishedAt": "2026-12-01T09:05:00Z",
        },
    }


def status_with(watch_document) -> tuple:
    return answer(200, validation("passed", "pass", True, environment="production", watch=watch_document))


def test_watch_starts_a_watch_of_production_and_exits_0_without_waiting(server, capsys):
    server.script(answer(201, watch("waiting")))

    code = cli.main(
        perfgate(
            server,
            *WATCH_ARGS,
            "--deployment-url",
            "https://wedsync-abc.vercel.app",
            "--deployment-id",
            "dpl_123",
        )
    )

    out, err = capsys.readouterr()
    assert code == 0
    [request] = server.received
    assert (request.method, request.path) == ("POST", cli.WATCH_PATH)
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.document == {
        "project": "wedsync-web",
        "buildId": "gha-9876543-1",
        "environment": "production",
        "deploymentUrl": "https://wedsync-abc.vercel.app",
        "deploymentId": "dpl_123",
    }
    assert out.splitlines()[0] == "Watch: waiting"
    assert "Probe baseline: 5 probes of build gha-99 (watch #6)" in out
    assert out.splitlines()[-1] == "wedsync-web/production build gha-9876543-1: watch waiting → watching"
    assert "perfgate watch --project wedsync-web --environment production --build gha-9876543-1 --wait" in err


def test_watch_wait_follows_the_watch_until_it_ends_healthy(server, capsys):
    server.script(
        answer(201, watch("waiting")),
        status_with(watch("watching", **probed(1))),
        status_with(watch("watching", **probed(1))),
        status_with(watch("watching", **probed(2))),
        status_with(watch("healthy", stateReason="Window over: 15 probes, 0 failed.", **probed(15))),
    )

    code = cli.main(perfgate(server, *WATCH_ARGS, "--wait"))

    out, err = capsys.readouterr()
    assert code == 0
    progress = [line for line in err.splitlines() if line.startswith("perfgate: watch")]
    assert progress == [
        "perfgate: watch waiting, 0 probes (0 failed, 0 errors), next probe 09:01:00 UTC, "
        "window ends 09:16:00 UTC",
        "perfgate: watch watching, 1 probes (0 failed, 0 errors), probe 1: success, next probe 09:01:00 UTC, "
        "window ends 09:16:00 UTC",
        "perfgate: watch watching, 2 probes (0 failed, 0 errors), probe 2: success, next probe 09:01:00 UTC, "
        "window ends 09:16:00 UTC",
        "perfgate: watch healthy, 15 probes (0 failed, 0 errors), probe 15: success",
    ]
    assert "  Window over: 15 probes, 0 failed." in out.splitlines()
    assert out.splitlines()[-1] == "wedsync-web/production build gha-9876543-1: watch healthy → ok"
    polls = server.received[1:]
    assert {(r.method, r.path) for r in polls} == {("GET", cli.STATUS_PATH + "gha-9876543-1")}
    assert all(r.query == {"project": "wedsync-web", "environment": "production"} for r in polls)


def test_a_degraded_watch_that_rolled_back_exits_1_and_says_where_to(server, capsys):
    rolled_back = watch(
        "degraded",
        stateReason="3 failed probes in a row (failureLimit 2)",
        rollback={
            "state": "succeeded",
            "trigger": "watch",
            "via": "vercel",
            "targetBuildId": "gha-99",
            "reason": "3 failed probes in a row",
            "detail": "Rolled back; automatic production domain assignment is now off.",
            "decidedBy": "perfgate (autoRollback)",
            "finishedAt": "2026-12-01T09:05:30Z",
        },
        notices=[
            {
                "level": "warning",
                "title": "wedsync-web/production is degraded",
                "createdAt": "2026-12-01T09:05:00Z",
            }
        ],
        **probed(3, failures=3, outcome="failure"),
    )
    server.script(answer(200, watch("watching")), status_with(rolled_back))

    code = cli.main(perfgate(server, *WATCH_ARGS, "--wait"))

    out, _ = capsys.readouterr()
    assert code == 1
    assert "  Rollback: succeeded via vercel to build gha-99 (watch)" in out
    assert "    Rolled back; automatic production domain assignment is now off." in out
    assert "  ! [warning] wedsync-web/production is degraded (09:05:00 UTC)" in out
    assert out.splitlines()[-1].endswith("watch degraded → ROLLED BACK (succeeded)")


@pytest.mark.parametrize(
    ("state", "rollback", "code"),
    [
        ("degraded", {"state": "proposed"}, 1),
        ("degraded", {"state": "refused"}, 1),
        ("stopped", None, 0),
        ("errored", None, 2),
        ("inconclusive", None, 2),
    ],
)
def test_each_way_a_watch_ends_has_its_exit_code(server, capsys, state, rollback, code):
    server.script(answer(200, watch(state, rollback=rollback)))
    assert cli.main(perfgate(server, *WATCH_ARGS, "--wait")) == code


def test_a_watch_still_running_at_the_timeout_exits_2(server, capsys):
    server.script(answer(201, watch("waiting")), status_with(watch("watching", **probed(1))))

    code = cli.main(perfgate(server, *WATCH_ARGS, "--wait", "--timeout", "0.3"))

    _, err = capsys.readouterr()
    assert code == 2
    assert "still watching at --timeout" in err


def test_a_build_that_may_not_be_watched_exits_3_with_the_servers_reason(server, capsys):
    server.script(
        api_error(
            409,
            "invalid_state",
            "Build gha-9876543-1 is blocked: only a deployment perfgate let out is watched.",
        )
    )

    code = cli.main(perfgate(server, *WATCH_ARGS, "--environment", "staging"))

    _, err = capsys.readouterr()
    assert code == 3
    assert "409 invalid_state: Build gha-9876543-1 is blocked" in err
    assert server.received[0].document["environment"] == "staging"


def test_json_prints_the_watch_document(server, capsys):
    document = watch("healthy", **probed(15))
    server.script(answer(200, document))

    assert cli.main(perfgate(server, *WATCH_ARGS, "--json")) == 0
    assert json.loads(capsys.readouterr().out) == document


def test_status_shows_the_watch_of_a_watched_deployment(server, capsys):
    server.script(status_with(watch("watching", **probed(4, failures=1, outcome="failure"))))

    code = cli.main(
        perfgate(
            server,
            "status",
            "--project",
            "wedsync-web",
            "--environment",
            "production",
            "--build",
            "gha-9876543-1",
        )
    )

    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert "Watch: watching" in lines
    assert "  Probes: 4 run, 1 failed (1 in a row), 0 inconclusive, 0 could not run" in lines
    assert "  Last probe: 4 (schedule) failure at 09:05:00 UTC: probe 4: p(95) 120 ms" in lines
    assert any(
        re.fullmatch(
            r"  Policy: probe probe every 1 min 00 s for 15 min 00 s; .*rolls back automatically", line
        )
        for line in lines
    )
    assert lines[-1].endswith("status passed, verdict pass → deployment allowed")


def test_watch_needs_a_project_and_a_build(server, capsys):
    assert cli.main(perfgate(server, "watch", "--project", "wedsync-web")) == 3
    assert "the following arguments are required: --build" in capsys.readouterr().err
    assert server.received == []
