"""Storms: many clients blocking, baselining, bypassing and validating one build and one project
at the same moment, through the real API (one test client and one database connection per
thread). Each storm asserts that no answer is a 500, that every answer is a documented status in
the one error shape, that nothing is lost or duplicated, and that the build ends in the state the
audit log says it should.

The interesting run is on PostgreSQL, where the requests truly race and a transaction taking
its locks out of the global order deadlocks (docs/architecture.md, "Lock order"). On SQLite
every transaction takes the write lock at BEGIN (IMMEDIATE), so writers queue and cannot
deadlock: there the storms run a few rounds only, for the invariants.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass

import pytest
from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client
from django.urls import reverse
from guardian.shortcuts import assign_perm
from rest_framework.test import APIClient

from baselines.models import Baseline
from gates.audit import Actor, verify_chain
from gates.models import AuditEvent, BypassApproval, BypassRequest, IdempotencyKey, Validation
from gates.permissions import ensure_groups
from gates.services import validation_request
from gates.services.validations import atomic_retried
from tests.conftest import make_token
from tests.factories import PASSING_SUMMARY

# Rounds of each storm. PERFGATE_STORM_ROUNDS raises them for a long measurement.
ROUNDS = int(os.environ.get("PERFGATE_STORM_ROUNDS", "0")) or (25 if connection.vendor == "postgresql" else 3)
API = "/api/ci-cd/performance/"
SLOW_SUMMARY = json.dumps(
    {
        "metrics": {
            "http_req_duration": {
                "avg": 900.0,
                "med": 850.0,
                "p(90)": 1200.0,
                "p(95)": 1500.0,
                "max": 2000.0,
            },
            "http_req_failed": {"value": 0.0, "passes": 0, "fails": 1000},
            "http_reqs": {"count": 1000, "rate": 100.0},
        }
    }
).encode()

postgres_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="only PostgreSQL runs transactions concurrently enough to deadlock",
)


@dataclass
class Answer:
    """What one client of a storm got back: its label, the status code and the JSON body."""

    label: str
    status: int
    body: dict


def storm(calls: list[tuple[str, object]]) -> list[Answer]:
    """Run every ``(label, call)`` in its own thread, released together. A call returns
    ``(status, body)``; an exception is recorded as status 500, as the API would answer it."""
    barrier = threading.Barrier(len(calls))
    answers: list[Answer] = []
    lock = threading.Lock()

    def run(label, call):
        barrier.wait()
        try:
            status, body = call()
        except Exception as exc:  # any escape is what a client would see as a 500
            status, body = 500, {"exception": repr(exc)}
        finally:
            connection.close()
        with lock:
            answers.append(Answer(label, status, body))

    threads = [threading.Thread(target=run, args=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == len(calls), "a client of the storm never came back"
    return answers


def post(token: str, path: str, body: dict, **headers):
    """A call for ``storm``: POST ``body`` as ``token``, with a client of its own."""

    def call():
        client = APIClient()
        client.raise_request_exception = False
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}", **headers)
        response = client.post(API + path, body, format="json")
        return response.status_code, response.json()

    return call


def assert_documented(answers: list[Answer], documented: dict[str, set[int]]) -> None:
    """No 500, every status one the endpoint documents, every 4xx in the one error shape."""
    for answer in answers:
        assert answer.status in documented[answer.label], answer
        if 400 <= answer.status < 500:
            assert set(answer.body) == {"error", "detail", "fields"}, answer


def codes(answers: list[Answer], label: str) -> Counter:
    return Counter(answer.status for answer in answers if answer.label == label)


def upload(build_id: str, summary: bytes = PASSING_SUMMARY) -> dict:
    return {
        "project": "wedsync-web",
        "environment": "staging",
        "buildId": build_id,
        "gitHash": "c" * 40,
        "results": json.loads(summary),
    }


def uploaded(project, environment, build_id: str, summary: bytes) -> Validation:
    validation, _ = validation_request(
        project=project,
        environment=environment,
        build_id=build_id,
        git_hash="a" * 40,
        actor=Actor("cli", "tests"),
        results=io.BytesIO(summary),
        results_format="k6-summary-export",
    )
    return validation


def approve(request: BypassRequest, approver):
    """A call for ``storm``: one operator approving ``request`` with the admin's action."""

    def call():
        client = Client()
        client.raise_request_exception = False
        client.force_login(approver)
        response = client.post(
            reverse("admin:gates_bypassrequest_changelist"),
            {"action": "approve", "_selected_action": [str(request.pk)]},
        )
        return response.status_code, {}

    return call


@pytest.fixture
def in_lock_order(caplog):
    """Fails the storm if any transaction had to be retried: the storms' transactions all follow
    the lock order, so on PostgreSQL none of them may deadlock, even if a retry would hide it."""
    with caplog.at_level(logging.WARNING, logger="gates.services.validations"):
        yield
    retried = [
        record.message for record in caplog.get_records("call") if "lost a lock conflict" in record.message
    ]
    assert not retried


def events_of(target, action: str):
    return AuditEvent.objects.filter(target_id=str(target.pk), action=action).order_by("id")


@pytest.mark.django_db(transaction=True)
def test_a_block_racing_baselines_bypasses_and_uploads_wins_and_nothing_is_lost_or_doubled(
    project, staging, in_lock_order
):
    """Per round: a passed build X is blocked three times, made a baseline three times and asked
    to be bypassed twice, while the results of a new build Y are uploaded twice with one
    Idempotency-Key (one validation, evaluated once, baselined automatically once)."""
    for round_ in range(ROUNDS):
        build = uploaded(project, staging, f"x-{round_}", PASSING_SUMMARY)
        assert build.status == Validation.Status.PASSED
        # Each round is a CI job of its own: one token per round keeps under the rate limit.
        _, ops = make_token(project, "ops")
        target = {"project": "wedsync-web", "environment": "staging", "buildId": build.build_id}
        twin = upload(f"y-{round_}")
        answers = storm(
            [("block", post(ops, "block", {**target, "reason": "incident 42"}))] * 3
            + [("baseline", post(ops, "baseline", target))] * 3
            + [("bypass", post(ops, "bypass", {**target, "justification": "hotfix"}))] * 2
            + [("validate", post(ops, "validate", twin, HTTP_IDEMPOTENCY_KEY=f"key-{round_}"))] * 2
        )
        assert_documented(
            answers, {"block": {200}, "baseline": {201, 409}, "bypass": {201, 409}, "validate": {200}}
        )

        build.refresh_from_db()
        assert build.status == Validation.Status.BLOCKED and build.deployment_allowed is False
        blocked = events_of(build, "validation.blocked")
        assert blocked.count() == 1
        made_by_ops = Baseline.objects.filter(source_validation=build).exclude(created_by="system:perfgate")
        assert made_by_ops.count() == codes(answers, "baseline")[201]
        # A baseline is made before the block or refused after it: never from a blocked build.
        for baseline in made_by_ops:
            assert events_of(baseline, "baseline.promoted").get().pk < blocked.get().pk
        assert build.bypass_requests.count() == codes(answers, "bypass")[201] <= 1

        twin_validation = Validation.objects.get(build_id=twin["buildId"])
        assert {answer.body["validationId"] for answer in answers if answer.label == "validate"} == {
            str(twin_validation.pk)
        }
        assert IdempotencyKey.objects.get(key=f"key-{round_}").validation == twin_validation
        assert events_of(twin_validation, "validation.evaluated").count() == 1
        assert Baseline.objects.filter(source_validation=twin_validation).count() == 1  # automatic

    versions = list(
        Baseline.objects.filter(environment=staging).order_by("version").values_list("version", flat=True)
    )
    assert versions == list(range(1, len(versions) + 1))
    assert AuditEvent.objects.filter(action="baseline.promoted").count() == len(versions)
    checked, broken = verify_chain()
    assert broken is None and checked == AuditEvent.objects.count()


@pytest.mark.django_db(transaction=True)
def test_bypass_approvals_racing_a_manual_block_end_as_the_audit_log_says(
    project, staging, add_rule, in_lock_order
):
    """Per round: a build blocked by its verdict, with a bypass that needs two approvals. Two
    operators approve it in the admin while ops block the build by hand twice and CI
    asks for another bypass twice. The last of "blocked by hand" and "bypass used" in the audit
    chain decides the final status; each approval counts once; no second request is pending."""
    add_rule("http_req_duration", threshold="p(95)<400")
    staging.bypass_approvals = 2
    staging.save(update_fields=["bypass_approvals"])
    ensure_groups(apps)  # a transactional test before this one flushed the migration's groups
    approvers = [
        get_user_model().objects.create_user(name, password="x", is_staff=True) for name in ("ada", "bob")
    ]
    for approver in approvers:
        approver.groups.add(Group.objects.get(name="ops"))
        assign_perm("gates.approve_bypass", approver, project)

    for round_ in range(ROUNDS):
        build = uploaded(project, staging, f"w-{round_}", SLOW_SUMMARY)
        assert build.status == Validation.Status.BLOCKED
        _, ops = make_token(project, "ops")
        target = {"project": "wedsync-web", "environment": "staging", "buildId": build.build_id}
        status, asked = post(ops, "bypass", {**target, "justification": "launch"})()
        assert status == 201
        request = BypassRequest.objects.get(pk=asked["bypassId"])

        answers = storm(
            [("approve", approve(request, approver)) for approver in approvers]
            + [("block", post(ops, "block", {**target, "reason": "incident 43"}))] * 2
            + [("bypass", post(ops, "bypass", {**target, "justification": "again"}))] * 2
        )
        assert_documented(answers, {"approve": {302}, "block": {200}, "bypass": {201, 409}})

        request.refresh_from_db()
        assert request.status == BypassRequest.Status.APPROVED
        assert BypassApproval.objects.filter(bypass=request).count() == 2
        assert build.bypass_requests.count() == 1 + codes(answers, "bypass")[201]
        assert build.bypass_requests.filter(status=BypassRequest.Status.PENDING).count() <= 1
        assert events_of(build, "validation.blocked").count() == 1
        assert events_of(build, "bypass.used").count() == 1
        last = AuditEvent.objects.filter(
            target_id=str(build.pk), action__in=["validation.blocked", "bypass.used"]
        ).latest("id")
        build.refresh_from_db()
        expected = (
            Validation.Status.BLOCKED if last.action == "validation.blocked" else Validation.Status.BYPASSED
        )
        assert build.status == expected
        assert build.deployment_allowed is (expected == Validation.Status.BYPASSED)


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_a_deadlock_outside_the_lock_order_is_retried_not_turned_into_an_error(project, staging, caplog):
    """Two transactions that lock the same two validations in opposite orders deadlock for real;
    PostgreSQL aborts one, and ``atomic_retried`` runs it again, so both complete."""
    first = uploaded(project, staging, "d-1", PASSING_SUMMARY)
    second = uploaded(project, staging, "d-2", PASSING_SUMMARY)
    holding_one = threading.Barrier(2, timeout=10)
    first_attempts = {"ab", "ba"}

    @atomic_retried
    def lock_both(one, other, label):
        Validation.objects.select_for_update().get(pk=one.pk)
        if label in first_attempts:
            first_attempts.discard(label)
            holding_one.wait()  # both first attempts hold one row before asking for the other
        Validation.objects.select_for_update().get(pk=other.pk)
        return 200, {}

    with caplog.at_level(logging.WARNING, logger="gates.services.validations"):
        answers = storm(
            [("ab", lambda: lock_both(first, second, "ab")), ("ba", lambda: lock_both(second, first, "ba"))]
        )
    assert [answer.status for answer in answers] == [200, 200]
    retried = [
        record for record in caplog.records if "lost a lock conflict (SQLSTATE 40P01)" in record.message
    ]
    assert len(retried) == 1
