"""GitHub reporting through the outbox, against the fake GitHub: statuses, check runs, the sticky
comment, App authentication, outages, rate limits, and secrets at rest."""

from __future__ import annotations

import io
import time

import jwt
import pytest
from django.core.management import call_command
from django.db import connection as db_connection
from django.utils import timezone

from gates.audit import Actor
from gates.models import Validation
from gates.report import markdown_table
from gates.services import validation_block, validation_claim, validation_evaluate
from integrations import http, outbox
from integrations.github.client import GitHubClient, app_jwt
from integrations.github.report import comment_marker
from integrations.models import GitHubConnection, OutboundCall
from integrations.secrets import SecretUnreadable
from tests.factories import make_results, make_validation

ACTOR = Actor("user", "olivia-ops")
SHA = "3f4a1c2b9d8e7f60123456789abcdef012345678"


def start(project, environment, *, build="b-1", sha=SHA, pr=42):
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build,
        git_hash=sha,
        actor=ACTOR,
        deployment_context={"provider": "github", "pullRequest": pr} if pr else {},
    )
    return validation


def run_to_pass(validation, add_rule=None):
    claimed = validation_claim(validation_id=validation.pk, worker="w:1", lease_seconds=30)
    return validation_evaluate(validation=claimed, results=make_results(p95=120.0), actor=ACTOR)


def test_a_pull_request_gets_a_status_a_check_run_and_one_comment_updated_twice(
    project, staging, app_connection, fake, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = start(project, staging)
    run_to_pass(validation)

    report = outbox.deliver_due()

    assert (report.sent, report.retrying, report.failed) == (9, 0, 0)
    statuses = fake.statuses[("acme/wedsync", SHA)]
    assert [s["state"] for s in statuses] == ["pending", "pending", "success"]
    assert {s["context"] for s in statuses} == {"perfgate/wedsync-web/staging"}
    assert all(len(s["description"]) <= 140 for s in statuses)
    assert statuses[-1]["target_url"].startswith("https://perfgate.example.com/admin/gates/validation/")
    [check] = fake.check_runs.values()
    assert [body.get("status") for body in check["history"]] == ["queued", "in_progress", "completed"]
    assert (check["conclusion"], check["external_id"]) == ("success", str(validation.pk))
    assert "| rule | observed |" in check["output"]["summary"]
    assert "/charts/validations/" in check["output"]["summary"]
    [comment] = fake.comments.values()
    assert len(comment["history"]) == 3, "one comment, created once and edited twice"
    assert comment["user"]["login"] == "perfgate-test[bot]"
    assert comment["body"].startswith(comment_marker(validation))
    assert "Passed" in comment["body"]


def test_a_blocked_build_fails_its_status_and_check_with_the_reason(
    project, staging, app_connection, fake, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<100")
    validation = start(project, staging)
    run_to_pass(validation)  # p95 120 ms against a limit of 100 ms
    outbox.deliver_due()
    final = fake.statuses[("acme/wedsync", SHA)][-1]
    validation.refresh_from_db()
    assert (validation.status, validation.deployment_allowed) == ("blocked", False)
    assert final["state"] == "failure"
    assert final["description"].startswith("Blocked")
    [check] = fake.check_runs.values()
    assert check["conclusion"] == "failure"
    assert any(a["annotation_level"] == "failure" for a in check["annotations"])
    assert "p(95)<100" in check["output"]["summary"]


def test_a_token_connection_reports_statuses_and_comments_but_no_check_runs(
    project, staging, token_connection, fake
):
    validation = start(project, staging)
    validation_block(validation=validation, reason="release freeze", actor=ACTOR)
    report = outbox.deliver_due()
    assert report.failed == 0
    assert [s["state"] for s in fake.statuses[("acme/wedsync", SHA)]] == ["pending", "failure"]
    assert "release freeze" in fake.statuses[("acme/wedsync", SHA)][-1]["description"]
    assert fake.check_runs == {}
    [comment] = fake.comments.values()
    assert comment["user"]["login"] == fake.pat_login


def test_the_sticky_comment_is_found_by_its_marker_among_many_pages_and_only_the_bots_own(
    project, staging, app_connection, fake
):
    marker = f"<!-- perfgate:{project.slug}/staging -->"
    for n in range(130):
        fake.add_comment("acme/wedsync", 42, f"review comment {n}")
    impostor = fake.add_comment("acme/wedsync", 42, f"{marker} copied by a human", login="mallory")
    for n in range(20):
        fake.add_comment("acme/wedsync", 42, f"more discussion {n}")
    own = fake.add_comment(
        "acme/wedsync", 42, f"{marker}\nold report", login="perfgate-test[bot]", type="Bot"
    )

    start(project, staging)
    outbox.deliver_due()

    assert len(fake.comments) == 152, "no new comment was posted"
    assert fake.comments[own]["body"].startswith(marker) and "old report" not in fake.comments[own]["body"]
    assert fake.comments[impostor]["body"].endswith("copied by a human")
    pages = [r for r in fake.requests if r.method == "GET" and r.path.endswith("/issues/42/comments")]
    assert len(pages) == 2, "followed the Link header to the second page"


def test_an_outage_delays_statuses_but_all_arrive_in_order_and_none_twice(
    project, staging, production, app_connection, fake, settings
):
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 1
    fake.outage(503)
    first = start(project, staging, build="b-1")
    other_sha = "b" * 40
    second = start(project, staging, build="b-2", sha=other_sha, pr=None)
    run_to_pass(first)
    validation_block(validation=second, reason="manual stop", actor=ACTOR)

    report = outbox.deliver_due()
    assert report.sent == 0 and report.retrying > 0
    assert OutboundCall.objects.filter(state="pending").count() == OutboundCall.objects.count()
    for _ in range(3):  # minutes of outage: several rounds of retries, all refused
        time.sleep(1.1)
        outbox.deliver_due()
    assert OutboundCall.objects.filter(state="delivered").count() == 0
    fake.recover()

    report = outbox.deliver_due(wait_seconds=10)

    assert OutboundCall.objects.exclude(state="delivered").count() == 0
    assert [s["state"] for s in fake.statuses[("acme/wedsync", SHA)]] == ["pending", "pending", "success"]
    assert [s["state"] for s in fake.statuses[("acme/wedsync", other_sha)]] == ["pending", "failure"]
    [comment] = [c for c in fake.comments.values() if c["issue_number"] == 42]
    assert len(comment["history"]) == 3
    assert len(fake.check_runs) == 2, "one check run per validation, none created twice"


def test_retry_after_and_rate_limit_resets_are_honoured(project, staging, token_connection, fake):
    fake.fail_next(1, status=429, retry_after=2)
    start(project, staging, pr=None)
    before = timezone.now()
    outbox.deliver_due()
    call = OutboundCall.objects.get()
    assert call.state == "pending" and call.attempts == 1
    assert (call.next_attempt_at - before).total_seconds() >= 1.9
    assert outbox.deliver_due().sent == 0, "not before the time GitHub asked for"
    assert outbox.deliver_due(wait_seconds=5).sent == 1
    assert OutboundCall.objects.get().state == "delivered"

    fake.rate_limit(reset_in_seconds=2)
    validation = Validation.objects.get()
    validation_block(validation=validation, reason="hold", actor=ACTOR)
    report = outbox.deliver_due(wait_seconds=8)
    assert OutboundCall.objects.exclude(state="delivered").count() == 0, report
    assert [s["state"] for s in fake.statuses[("acme/wedsync", SHA)]] == ["pending", "failure"]
    refused = [r for r in fake.requests if r.status == 403]
    assert refused, "the rate limit was hit"
    resumed = [r for r in fake.requests if r.status == 201]
    assert resumed[-1].at >= refused[0].at + 1.5


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:30 -0000"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:27:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Wed, 99 Oct 2015 07:28:30 GMT"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "soon", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1445412520"}, 40.0),
        ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "later"}, None),
    ],
)
def test_a_retry_after_that_is_no_number_or_date_is_ignored(headers, wait):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert http.wait_asked_for(headers, now=now) == wait


def test_a_garbled_retry_after_falls_back_to_backoff_and_delivery_goes_on(
    project, staging, token_connection, fake, settings
):
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 1
    fake.fail_next(1, status=503, retry_after="soon")
    start(project, staging, pr=None)
    before = timezone.now()
    report = outbox.deliver_due()
    call = OutboundCall.objects.get()
    assert report.retrying == 1 and (call.state, call.attempts) == ("pending", 1)
    assert (call.next_attempt_at - before).total_seconds() < 5, "the backoff, not a made-up wait"
    assert "503" in call.last_error
    assert outbox.deliver_due(wait_seconds=5).sent == 1
    assert OutboundCall.objects.get().state == "delivered"


def test_a_refused_call_is_given_up_without_holding_back_the_next(project, staging, token_connection, fake):
    start(project, staging, pr=None)
    call = OutboundCall.objects.get()
    call.payload["body"]["state"] = "not-a-state"
    call.save(update_fields=["payload"])
    validation_block(validation=Validation.objects.get(), reason="hold", actor=ACTOR)
    outbox.deliver_due()
    assert list(OutboundCall.objects.values_list("state", flat=True)) == ["failed", "delivered"]
    assert "422" in OutboundCall.objects.first().last_error


def test_check_run_annotations_are_sent_in_batches_of_fifty(project, staging, app_connection, fake):
    validation = start(project, staging, pr=None)
    OutboundCall.objects.all().delete()
    annotations = [
        {
            "path": "loadtests/x.js",
            "start_line": 1,
            "end_line": 1,
            "annotation_level": "warning",
            "message": f"n{n}",
        }
        for n in range(120)
    ]
    call = OutboundCall.objects.create(
        project=project,
        validation=validation,
        kind="check_run",
        ordering_key="k",
        payload={
            "repository": "acme/wedsync",
            "object_key": f"check_run:{validation.pk}",
            "body": {
                "name": "perfgate",
                "head_sha": SHA,
                "status": "completed",
                "conclusion": "failure",
                "output": {"title": "t", "summary": "s", "annotations": annotations},
            },
        },
    )
    assert outbox.deliver_due().sent == 1
    [check] = fake.check_runs.values()
    assert [a["message"] for a in check["annotations"]] == [f"n{n}" for n in range(120)]
    assert [len((b.get("output") or {}).get("annotations", [])) for b in check["history"]] == [50, 50, 20]
    call.refresh_from_db()
    assert call.progress == {"annotations_sent": 120}


def test_the_check_summary_stays_under_githubs_limit_however_many_checks():
    checks = [
        {
            "rule": f"http_req_duration{{name:page-{n}}} p(95)<{n}",
            "observed": 1.5 * n,
            "verdict": "fail",
            "reason": "x" * 300,
        }
        for n in range(2000)
    ]
    table = markdown_table(checks, max_bytes=65_000)
    assert len(table.encode()) <= 65_000
    assert "more checks" in table.splitlines()[-1]


def test_the_app_jwt_is_rs256_backdated_a_minute_and_ten_minutes_long(fake):
    now = time.time()
    token = app_jwt("4242", fake.private_key_pem, now=now)
    claims = jwt.decode(token, fake._public_key, algorithms=["RS256"], options={"verify_exp": False})
    assert claims["iss"] == "4242"
    assert claims["iat"] == int(now) - 60
    assert claims["exp"] - claims["iat"] == 600


def test_installation_tokens_are_cached_and_replaced_when_github_stops_taking_them(app_connection, fake):
    client = GitHubClient(app_connection)
    for _ in range(3):
        client.request(
            "POST", f"/repos/acme/wedsync/statuses/{SHA}", json={"state": "pending", "context": "c"}
        )
    assert fake.tokens_issued == 1
    fake.expire_tokens()
    client.request("POST", f"/repos/acme/wedsync/statuses/{SHA}", json={"state": "success", "context": "c"})
    assert fake.tokens_issued == 2


def test_credentials_are_never_sent_to_another_host(app_connection, fake):
    client = GitHubClient(app_connection)
    with pytest.raises(http.Refused, match="Refusing to send GitHub credentials"):
        client.request("POST", "https://evil.example.com/repos/x/y/actions/runs/1/deployment_protection_rule")
    assert fake.tokens_issued == 0


def test_a_personal_token_cannot_create_check_runs_and_perfgate_says_why(project, token_connection, fake):
    client = GitHubClient(token_connection)
    with pytest.raises(http.Refused) as refused:
        client.request("POST", "/repos/acme/wedsync/check-runs", json={"name": "x", "head_sha": SHA})
    assert refused.value.status == 403
    assert fake.pat not in str(refused.value)


def test_secrets_are_encrypted_at_rest_and_rotate_to_the_newest_key(project, settings, fake):
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.PERFGATE_SECRETS_KEYS = [old]
    GitHubConnection.objects.create(project=project, auth="token", token=fake.pat, api_url=fake.url)

    def stored():
        with db_connection.cursor() as cursor:
            cursor.execute("SELECT token FROM integrations_githubconnection")
            return cursor.fetchone()[0]

    assert fake.pat not in stored() and stored().startswith("fernet:")
    assert Fernet(old.encode()).decrypt(stored()[7:].encode()).decode() == fake.pat

    settings.PERFGATE_SECRETS_KEYS = [new, old]
    output = io.StringIO()
    call_command("rotate_secrets", stdout=output)
    assert "Re-encrypted 1 secret(s)" in output.getvalue()
    settings.PERFGATE_SECRETS_KEYS = [new]
    assert GitHubConnection.objects.get().token == fake.pat
    assert Fernet(new.encode()).decrypt(stored()[7:].encode()).decode() == fake.pat

    settings.PERFGATE_SECRETS_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(SecretUnreadable, match="cannot be decrypted"):
        GitHubConnection.objects.get()


def test_a_status_that_failed_holds_back_the_later_ones_of_its_commit_and_context(
    project, staging, token_connection, fake, settings
):
    settings.PERFGATE_OUTBOX_MAX_BACKOFF_SECONDS = 1
    validation = start(project, staging, pr=None)
    validation_block(validation=validation, reason="hold", actor=ACTOR)
    fake.fail_next(1, status=502)

    outbox.deliver_due()

    assert ("acme/wedsync", SHA) not in fake.statuses, "the later status did not overtake the failed one"
    outbox.deliver_due(wait_seconds=5)
    assert [s["state"] for s in fake.statuses[("acme/wedsync", SHA)]] == ["pending", "failure"]


def test_the_summarys_check_table_shows_units_rounded_values_and_p_where_a_test_ran():
    checks = [
        {
            "rule": "http_req_duration p(95) relative",
            "metric": "http_req_duration",
            "aggregation": "p(95)",
            "observed": 441.04999,
            "baseline": 352.9123,
            "changePct": 24.97,
            "limit": 388.2,
            "pValue": 0.0123,
            "verdict": "fail",
            "reason": "above baseline",
        },
        {
            "rule": "http_req_failed rate<0.01",
            "metric": "http_req_failed",
            "aggregation": "rate",
            "observed": 0.002,
        },
    ]
    header, _, latency, errors = markdown_table(checks, max_bytes=65_000).splitlines()
    assert header == "| rule | observed | baseline | change | limit | p | verdict | reason |"
    assert "| 441.0 ms | 352.9 ms | +25.0 % | 388.2 ms | 0.012 | fail |" in latency
    assert "| 0.20 % | \u2013 | \u2013 | \u2013 | \u2013 |" in errors
