"""Notifications: what is recorded for whom, coalescing, delivery to a fake Slack that checks Block
Kit and answers like Slack, broken channels, secrets kept out of logs, the admin and the audit log."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.audit import SYSTEM, Actor
from gates.config import config_apply, load_config
from gates.models import AuditEvent
from gates.services import (
    bypass_approve,
    bypass_reject,
    bypass_request,
    validation_block,
    validation_evaluate,
)
from integrations import outbox
from integrations.github.report import summary_markdown
from integrations.models import Notification, NotificationChannel, OutboundCall
from tests.factories import make_results, make_validation
from tests.fake_slack import FakeSlack


@pytest.fixture
def slack():
    with FakeSlack() as server:
        yield server


@pytest.fixture(autouse=True)
def _notify_settings(settings):
    settings.PERFGATE_NOTIFY_WINDOW_SECONDS = 0
    settings.PERFGATE_SLACK_MESSAGES_PER_SECOND = 50
    settings.SLACK_TIMEOUT_SECONDS = 2
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture
def slow_rule(add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")


@pytest.fixture
def channel(project, slack):
    return NotificationChannel.objects.create(
        project=project,
        name="#perf-wedsync",
        kind="slack",
        slack_webhook_url=slack.webhook_url("perf-wedsync"),
    )


def blocked(project, environment, build="b-1", p95=900.0):
    actor = Actor("user", "someone")
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build,
        git_hash="d" * 40,
        actor=actor,
        deployment_context={"actor": "dev-dana"},
        staging_pass=environment.require_staging_pass,
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)


def due_now():
    """The coalescing window (or a backoff) is over."""
    OutboundCall.objects.filter(state=OutboundCall.State.PENDING).update(next_attempt_at=timezone.now())


def deliver():
    due_now()
    return outbox.deliver_due(wait_seconds=5)


def test_a_blocked_build_is_posted_to_slack_with_its_failed_checks_and_links(
    project, staging, slow_rule, channel, slack
):
    validation = blocked(project, staging)
    assert validation.status == "blocked"

    report = deliver()

    assert report.sent == 1
    [message] = slack.messages_for("perf-wedsync")
    payload = message.payload
    assert payload["blocks"][0]["type"] == "header"
    assert "wedsync-web/staging" in payload["blocks"][0]["text"]["text"]
    text = str(payload)
    assert "900.0 ms" in text and "400.0 ms" in text  # observed and limit, with units
    assert f"https://perfgate.example.com/admin/gates/validation/{validation.pk}/change/" in text
    assert payload["text"]
    notification = Notification.objects.get()
    assert notification.event == "blocked" and notification.call.state == OutboundCall.State.DELIVERED


def test_a_channel_hears_only_the_events_and_environments_it_asked_for(
    project, staging, production, slow_rule, slack
):
    NotificationChannel.objects.create(
        project=project,
        name="prod-rollbacks",
        kind="slack",
        slack_webhook_url=slack.webhook_url("prod"),
        events=["rollback"],
        environments=["production"],
    )
    NotificationChannel.objects.create(
        project=project,
        name="staging-blocks",
        kind="slack",
        slack_webhook_url=slack.webhook_url("staging"),
        events=["blocked"],
        environments=["staging"],
    )
    blocked(project, staging)

    assert list(Notification.objects.values_list("channel__name", flat=True)) == ["staging-blocks"]


def test_a_burst_of_blocks_becomes_one_message_with_the_count_and_the_list(
    project, staging, slow_rule, channel, slack, settings
):
    settings.PERFGATE_NOTIFY_WINDOW_SECONDS = 60
    for number in range(20):
        blocked(project, staging, build=f"matrix-{number}")

    assert OutboundCall.objects.filter(provider="slack").count() == 1
    deliver()

    [message] = slack.messages_for("perf-wedsync")
    text = str(message.payload)
    assert "20" in message.payload["blocks"][0]["text"]["text"]
    assert all(f"matrix-{number}" in text for number in range(20))


def test_a_message_carries_at_most_the_configured_number_of_events(
    project, staging, slow_rule, channel, slack, settings
):
    settings.PERFGATE_NOTIFY_WINDOW_SECONDS = 60
    settings.PERFGATE_NOTIFY_MAX_EVENTS = 7
    for number in range(10):
        blocked(project, staging, build=f"m-{number}")

    deliver()

    assert [len(str(m.payload).split("m-")) - 1 >= 1 for m in slack.messages] == [True, True]
    calls = OutboundCall.objects.filter(provider="slack").order_by("id")
    assert [c.notifications.count() for c in calls] == [7, 3]


def test_an_event_after_the_message_was_claimed_starts_the_next_message(project, staging, slow_rule, channel):
    blocked(project, staging, build="first")
    first = OutboundCall.objects.get(provider="slack")
    OutboundCall.objects.filter(pk=first.pk).update(state=OutboundCall.State.SENDING)

    blocked(project, staging, build="second")

    second = OutboundCall.objects.exclude(pk=first.pk).get(provider="slack")
    assert [n.item["build"] for n in Notification.objects.filter(call=second)] == ["second"]
    assert [n.item["build"] for n in Notification.objects.filter(call=first)] == ["first"]


def test_slack_rate_limits_are_honoured_and_every_message_arrives_once(
    project, staging, slow_rule, channel, slack
):
    slack.fail_next(1, status=429, retry_after=1)
    blocked(project, staging)

    started = timezone.now()
    report = outbox.deliver_due(wait_seconds=5)

    assert report.sent == 1
    [rejected] = slack.rejected(429)
    [accepted] = slack.messages_for("perf-wedsync")
    assert accepted.at - rejected.at >= 1.0
    assert timezone.now() - started >= timedelta(seconds=1)


def test_perfgate_keeps_to_one_message_per_second_per_webhook(
    project, staging, slow_rule, channel, slack, settings
):
    settings.PERFGATE_SLACK_MESSAGES_PER_SECOND = 1
    settings.PERFGATE_NOTIFY_MAX_EVENTS = 1  # three messages
    slack.rate_limit(1)
    for number in range(3):
        blocked(project, staging, build=f"r-{number}")

    due_now()
    outbox.deliver_due(wait_seconds=10)

    assert len(slack.messages_for("perf-wedsync")) == 3
    assert slack.rejected(429) == []


def test_a_slack_outage_loses_nothing_and_delivers_each_event_once_in_order(
    project, staging, slow_rule, channel, slack, settings
):
    settings.PERFGATE_NOTIFY_MAX_EVENTS = 2
    slack.outage(503)
    for number in range(5):
        blocked(project, staging, build=f"o-{number}")
        deliver()
    assert slack.messages == []
    # Waiting for Slack, the events gather: five events, three messages of at most two.
    assert OutboundCall.objects.filter(provider="slack", state="pending").count() == 3

    slack.recover()
    for _ in range(5):
        deliver()

    builds = [n.item["build"] for m in slack.messages for n in _notifications_in(m)]
    assert builds == [f"o-{number}" for number in range(5)]
    assert len(slack.messages) == 3
    assert OutboundCall.objects.filter(provider="slack").exclude(state="delivered").count() == 0


def _notifications_in(message):
    text = str(message.payload)
    return [n for n in Notification.objects.order_by("id") if n.item["build"] in text]


@pytest.mark.parametrize(
    ("code", "status"), [("channel_not_found", 404), ("channel_is_archived", 410), ("action_prohibited", 403)]
)
def test_a_channel_slack_closed_is_marked_broken_and_sent_nothing_more(
    project, staging, slow_rule, channel, slack, code, status
):
    slack.break_webhook("perf-wedsync", code)
    blocked(project, staging, build="one")
    deliver()

    channel.refresh_from_db()
    assert channel.is_broken and code in channel.broken_reason
    assert OutboundCall.objects.get(provider="slack").state == OutboundCall.State.FAILED
    assert AuditEvent.objects.filter(action="notification.channel_broken").count() == 1

    requests_before = len(slack.requests)
    validation = blocked(project, staging, build="two")
    deliver()
    assert len(slack.requests) == requests_before  # not sent again
    assert "is broken" in summary_markdown(validation, max_bytes=60000)


def test_a_message_slack_cannot_take_is_a_defect_logged_and_not_retried(
    project, staging, slow_rule, channel, slack, caplog
):
    slack.fail_next(1, status=400)
    blocked(project, staging)
    with caplog.at_level(logging.ERROR):
        deliver()

    call = OutboundCall.objects.get(provider="slack")
    assert call.state == OutboundCall.State.FAILED and call.attempts == 1
    assert "a defect" in caplog.text
    channel.refresh_from_db()
    assert not channel.is_broken
    assert AuditEvent.objects.filter(action="notification.given_up").count() == 1


def test_the_webhook_url_appears_in_no_log_error_audit_event_or_page(
    project, staging, slow_rule, channel, slack, caplog, admin_client
):
    url = channel.slack_webhook_url
    secret = url.rsplit("/", 1)[1]
    with caplog.at_level(logging.DEBUG):
        slack.fail_next(1, status=500)
        blocked(project, staging, build="a")
        deliver()
        deliver()
        slack.break_webhook("perf-wedsync", "channel_not_found")
        blocked(project, staging, build="b")
        deliver()
    assert len(slack.requests) == 3

    assert secret not in caplog.text
    errors = " ".join(OutboundCall.objects.values_list("last_error", flat=True))
    assert "perf-wedsync" in errors and secret not in errors
    assert secret not in str(list(AuditEvent.objects.values_list("data", "reason")))
    page = admin_client.get(reverse("admin:integrations_notificationchannel_change", args=[channel.pk]))
    assert page.status_code == 200 and secret not in page.content.decode()
    with connection.cursor() as cursor:
        cursor.execute("SELECT slack_webhook_url FROM integrations_notificationchannel")
        [(stored,)] = cursor.fetchall()
    assert secret not in stored  # encrypted at rest


def test_approvers_are_named_and_linked_and_the_requester_hears_the_decision(
    project, staging, slow_rule, channel, slack, ops, second_ops, django_user_model
):
    dana = django_user_model.objects.create_user("dev-dana", email="dana@example.com", password="x")
    assign_perm("gates.block_deployment", dana, project)
    for user in (ops, second_ops, dana):
        assign_perm("gates.approve_bypass", user, project)
    validation = blocked(project, staging)
    deliver()

    bypass = bypass_request(
        validation=validation, actor=Actor.for_user(dana), justification="RSVP outage fix"
    )
    deliver()

    request_message = str(slack.messages[-1].payload)
    assert "olivia-ops" in request_message and "oscar-ops" in request_message
    assert "May approve" in request_message and "dev-dana, " not in request_message.split("May approve")[1]
    assert reverse("admin:gates_bypassrequest_change", args=[bypass.pk]) in request_message

    bypass_approve(bypass=bypass, approver=ops)
    deliver()

    assert "approved" in str(slack.messages[-1].payload)
    [email] = mail.outbox
    assert email.to == ["dana@example.com"] and "approved" in email.subject


def test_a_rejected_bypass_is_told_to_the_requester(project, staging, slow_rule, ops, django_user_model):
    dana = django_user_model.objects.create_user("dev-dana", email="dana@example.com", password="x")
    assign_perm("gates.block_deployment", dana, project)
    assign_perm("gates.approve_bypass", ops, project)
    bypass = bypass_request(
        validation=blocked(project, staging), actor=Actor.for_user(dana), justification="please"
    )

    bypass_reject(bypass=bypass, user=ops, reason="The slowdown hits the RSVP page; fix it first.")
    deliver()

    [email] = mail.outbox
    assert "rejected" in email.subject and "fix it first" in email.body


def test_a_build_blocked_by_hand_is_told(project, staging, channel, slack):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="hand", git_hash="e" * 40, actor=SYSTEM
    )
    validation_block(validation=validation, reason="Known memory leak", actor=Actor("user", "olivia-ops"))
    deliver()

    assert "blocked by hand by olivia-ops: known memory leak" in str(slack.messages[-1].payload).lower()


def test_relative_rules_without_a_baseline_make_the_gate_say_it_is_blind(project, staging, add_rule, channel):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10)
    blocked(project, staging, p95=100.0)

    assert Notification.objects.filter(event="blind").count() == 1


def test_the_audit_log_records_that_a_decision_was_told_but_not_what_was_said(
    project, staging, slow_rule, channel, slack
):
    blocked(project, staging)
    deliver()

    event = AuditEvent.objects.get(action="notification.sent")
    assert event.data["events"] == {"blocked": 1} and event.data["builds"] == ["b-1"]
    assert "900" not in str(event.data)


def test_the_outbox_giving_up_on_github_tells_the_channels(project, staging, slow_rule, channel):
    validation = blocked(project, staging)
    call = OutboundCall.objects.create(
        project=project, validation=validation, provider="github", kind="status", ordering_key="k", payload={}
    )
    outbox.deliver_one(OutboundCall.objects.get(pk=call.pk))  # no GitHub connection: refused at once

    assert Notification.objects.filter(event="blind", title__contains="github not told").count() == 1


def test_notify_in_perfgate_yaml_makes_channels_and_never_shows_the_url(
    project, tmp_path, monkeypatch, capsys
):
    url = "https://hooks.slack.com/services/T000/B000/abcdefghijklmnopqrstuvwx"
    monkeypatch.setenv("SLACK_WEDSYNC_PERF", url)
    path = tmp_path / "perfgate.yaml"
    path.write_text(
        """
projects:
  - slug: wedsync-web
    notify:
      - {slack: {webhookSecret: SLACK_WEDSYNC_PERF}, events: [blocked, bypass_requested, rollback],
         environments: [production]}
      - {email: [perf-oncall@example.com], events: [rollback]}
"""
    )
    projects, source = load_config(path)
    changes = config_apply(projects=projects, source=source, actor=SYSTEM)

    slack_channel = NotificationChannel.objects.get(kind="slack")
    assert slack_channel.slack_webhook_url == url
    assert slack_channel.events == ["blocked", "bypass_requested", "rollback"]
    assert NotificationChannel.objects.get(kind="email").recipients == ["perf-oncall@example.com"]
    assert "abcdefghijklmnopqrstuvwx" not in " ".join(str(c) for c in changes)
    assert "abcdefghijklmnopqrstuvwx" not in str(list(AuditEvent.objects.values_list("data", flat=True)))

    assert config_apply(projects=projects, source=source, actor=SYSTEM) == []  # idempotent

    path.write_text("projects:\n  - slug: wedsync-web\n")
    projects, source = load_config(path)
    changes = config_apply(projects=projects, source=source, actor=SYSTEM)
    assert NotificationChannel.objects.count() == 0
    assert sorted(c.op for c in changes) == ["-", "-"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{slack: {webhookSecret: 'https://hooks.slack.com/x'}}", "environment variable"),
        ("{email: [not-an-address]}", "email address"),
        ("{email: [a@example.com], events: [everything]}", "events"),
        ("{events: [blocked]}", "either slack or email"),
    ],
)
def test_a_bad_notify_entry_rejects_the_file_naming_its_place(tmp_path, entry, message):
    from gates.config import ConfigError

    path = tmp_path / "perfgate.yaml"
    path.write_text(f"projects:\n  - slug: wedsync-web\n    notify:\n      - {entry}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "notify[0]" in str(error.value) and message in str(error.value)


def test_rotate_secrets_re_encrypts_slack_webhook_urls(channel, settings):
    from io import StringIO

    from cryptography.fernet import Fernet
    from django.core.management import call_command

    url = channel.slack_webhook_url
    with connection.cursor() as cursor:
        cursor.execute("SELECT slack_webhook_url FROM integrations_notificationchannel")
        [(before,)] = cursor.fetchall()
    new = Fernet.generate_key().decode()
    settings.PERFGATE_SECRETS_KEYS = [new, *settings.PERFGATE_SECRETS_KEYS]
    output = StringIO()
    call_command("rotate_secrets", stdout=output)
    assert "Re-encrypted 1 secret(s)" in output.getvalue()

    with connection.cursor() as cursor:
        cursor.execute("SELECT slack_webhook_url FROM integrations_notificationchannel")
        [(after,)] = cursor.fetchall()
    assert after != before
    assert Fernet(new.encode()).decrypt(after.removeprefix("fernet:").encode()).decode() == url


@pytest.mark.django_db(transaction=True)
def test_events_recorded_while_messages_are_being_sent_each_arrive_exactly_once(
    project, staging, slow_rule, channel, slack, settings
):
    """Joining a waiting message races the outbox claiming it: every event ends in exactly one
    delivered message, whichever wins."""
    settings.PERFGATE_NOTIFY_MAX_EVENTS = 4
    builds = [f"race-{number:02d}" for number in range(24)]
    done = threading.Event()
    errors = []

    def record():
        try:
            for build in builds:
                blocked(project, staging, build=build)
        except Exception as exc:
            errors.append(exc)
        finally:
            done.set()
            connection.close()

    recorder = threading.Thread(target=record)
    recorder.start()
    while not done.is_set():
        due_now()
        outbox.deliver_due(wait_seconds=0)
    recorder.join()
    for _ in range(10):
        deliver()

    assert errors == []
    received = [build for m in slack.messages for build in builds if build in str(m.payload)]
    assert sorted(received) == builds  # each once
    assert received == builds  # in order
    assert set(OutboundCall.objects.filter(provider="slack").values_list("state", flat=True)) == {"delivered"}
