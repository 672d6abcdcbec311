"""Notification mail through Django's SMTP backend to a real SMTP server on 127.0.0.1
(tests/fake_smtp.py): what arrives, header injection, outages, refused recipients, and the mail
password kept out of logs, errors and the audit log."""

from __future__ import annotations

import logging

import environ
import pytest
from django.utils import timezone

from gates.audit import Actor
from gates.models import AuditEvent
from gates.services import validation_evaluate
from integrations import outbox
from integrations.models import Notification, NotificationChannel, OutboundCall
from tests.factories import make_results, make_validation
from tests.fake_smtp import LocalSMTP

FROM = "perfgate <perfgate@example.com>"
RECIPIENTS = ["perf-oncall@example.com", "dana@example.com"]
PASSWORD = "s3cret-pass"


@pytest.fixture
def smtp():
    with LocalSMTP() as server:
        yield server


@pytest.fixture(autouse=True)
def _mail_settings(settings, smtp):
    settings.PERFGATE_NOTIFY_WINDOW_SECONDS = 0
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = smtp.host
    settings.EMAIL_PORT = smtp.port
    settings.EMAIL_TIMEOUT = 2
    settings.EMAIL_HOST_USER = ""
    settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.DEFAULT_FROM_EMAIL = FROM


@pytest.fixture
def with_password(settings, smtp):
    """EMAIL_URL with a login, read the way settings.py reads it."""
    for name, value in environ.Env.email_url_config(f"smtp://user:{PASSWORD}@127.0.0.1:{smtp.port}").items():
        setattr(settings, name, value)
    assert settings.EMAIL_HOST_PASSWORD == PASSWORD


@pytest.fixture
def slow_rule(add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")


@pytest.fixture
def channel(project):
    return NotificationChannel.objects.create(
        project=project, name="perf-oncall mail", kind="email", recipients=RECIPIENTS
    )


def blocked(project, environment, build="b-1", p95=900.0):
    actor = Actor("user", "someone")
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build, git_hash="d" * 40, actor=actor
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)


def due_now():
    """The coalescing window (or a backoff) is over."""
    OutboundCall.objects.filter(state=OutboundCall.State.PENDING).update(next_attempt_at=timezone.now())


def deliver():
    due_now()
    return outbox.deliver_due()


def subject_of(message) -> str:
    """The unfolded subject. Django folds a non-ASCII subject right after ``Subject:``, and the
    parser keeps the space of that fold."""
    return str(message["Subject"]).strip()


def build_in(message) -> str:
    return subject_of(message).rsplit(" · ", 1)[1]


def test_a_blocked_build_is_mailed_as_text_and_html_with_the_same_facts(
    project, staging, slow_rule, channel, smtp
):
    validation = blocked(project, staging)

    assert deliver().sent == 1

    # One mail per recipient: a server refusing one address cannot lose it silently.
    received = smtp.received()
    assert [r.rcpt_tos for r in received] == [[address] for address in RECIPIENTS]
    message = received[0].message
    assert received[0].mail_from == "perfgate@example.com"
    assert message["From"] == FROM
    assert [address.addr_spec for address in message["To"].addresses] == RECIPIENTS[:1]
    assert subject_of(message) == "[perfgate] Blocked (fail) · wedsync-web/staging · b-1"
    assert message.get_content_type() == "multipart/alternative"
    parts = {part.get_content_type(): part.get_content() for part in message.iter_parts()}
    assert sorted(parts) == ["text/html", "text/plain"]
    link = f"https://perfgate.example.com/admin/gates/validation/{validation.pk}/change/"
    for content in parts.values():
        assert "b-1" in content
        assert "900.0 ms" in content and "400.0 ms" in content  # observed and limit, with units
        assert link in content
    assert f'href="{link}"' in parts["text/html"]
    assert OutboundCall.objects.get(provider="email").state == OutboundCall.State.DELIVERED


def test_a_title_carrying_a_header_stays_in_one_subject_line_and_adds_no_recipient(project, channel, smtp):
    title = "nightly\r\nBcc: evil@example.com\r\n\r\nforged body"
    call = OutboundCall.objects.create(
        project=project,
        provider="email",
        kind="message",
        ordering_key=channel.ordering_key,
        payload={"channel": channel.pk, "recipients": []},
    )
    # No project, environment or build: the subject is made of the title itself.
    Notification.objects.create(
        channel=channel,
        project=project,
        event="blocked",
        title=title,
        item={"event": "blocked", "level": "error", "title": title, "reason": "", "checks": [], "links": []},
        call=call,
    )

    assert deliver().sent == 1

    received = smtp.received()
    assert [r.rcpt_tos for r in received] == [[address] for address in RECIPIENTS]
    message = received[0].message
    assert "evil@example.com" not in smtp.rcpt_attempts
    assert message["Bcc"] is None
    assert len(message.get_all("Subject")) == 1
    subject = subject_of(message)
    assert "\r" not in subject and "\n" not in subject
    assert subject == "[perfgate] Blocked · nightly Bcc: evil@example.com forged body"


def test_a_mail_outage_loses_nothing_and_delivers_each_event_once_in_order(
    project, staging, slow_rule, channel, smtp, settings, with_password
):
    settings.PERFGATE_NOTIFY_MAX_EVENTS = 1  # three messages
    smtp.stop()
    for number in range(3):
        blocked(project, staging, build=f"o-{number}")
    calls = list(OutboundCall.objects.filter(provider="email").order_by("id"))
    assert len(calls) == 3

    for _ in range(2):
        report = deliver()
        assert report.sent == 0 and report.retrying == 1  # the first holds the others back

    first = OutboundCall.objects.get(pk=calls[0].pk)
    assert first.state == OutboundCall.State.PENDING and first.attempts == 2
    assert "ConnectionRefusedError" in first.last_error and PASSWORD not in first.last_error
    assert OutboundCall.objects.filter(provider="email", state="pending").count() == 3

    smtp.start()  # the same port
    assert deliver().sent == 3
    assert deliver().sent == 0

    builds = [build_in(received.message) for received in smtp.received()]
    assert builds == ["o-0", "o-0", "o-1", "o-1", "o-2", "o-2"]  # once per recipient, in order
    assert OutboundCall.objects.filter(provider="email").exclude(state="delivered").count() == 0


def test_a_recipient_refused_for_good_is_given_up_audited_and_not_tried_again(
    project, staging, slow_rule, channel, smtp
):
    for address in RECIPIENTS:
        smtp.refuse(address, "550 5.1.1 No such user here")
    blocked(project, staging)

    report = deliver()

    assert report.failed == 1
    call = OutboundCall.objects.get(provider="email")
    assert call.state == OutboundCall.State.FAILED and call.attempts == 1
    assert "550" in call.last_error
    given_up = AuditEvent.objects.get(action="notification.given_up")
    assert given_up.data["builds"] == ["b-1"] and "550" in given_up.reason
    assert AuditEvent.objects.filter(action="notification.sent").count() == 0

    smtp.accept_all()
    OutboundCall.objects.update(next_attempt_at=timezone.now())
    assert outbox.deliver_due().sent == 0
    assert smtp.rcpt_attempts == RECIPIENTS  # asked once, never again
    assert smtp.received() == []


def test_a_recipient_refused_for_now_is_tried_again_and_delivered(project, staging, slow_rule, channel, smtp):
    for address in RECIPIENTS:
        smtp.refuse(address, "451 4.3.0 Mailbox busy, try again later")
    blocked(project, staging)

    assert deliver().retrying == 1

    call = OutboundCall.objects.get(provider="email")
    assert call.state == OutboundCall.State.PENDING and call.attempts == 1
    assert "451" in call.last_error
    assert AuditEvent.objects.filter(action="notification.given_up").count() == 0

    smtp.accept_all()
    assert deliver().sent == 1

    call.refresh_from_db()
    assert call.state == OutboundCall.State.DELIVERED and call.attempts == 2
    assert [r.rcpt_tos for r in smtp.received()] == [[address] for address in RECIPIENTS]
    # The first address was asked twice; the mail to the second waited behind it.
    assert smtp.rcpt_attempts == RECIPIENTS[:1] + RECIPIENTS


def test_an_address_refused_for_good_does_not_stop_the_others_and_is_not_lost_silently(
    project, staging, slow_rule, channel, smtp, caplog
):
    smtp.refuse(RECIPIENTS[0], "550 5.1.1 No such user here")
    blocked(project, staging)

    with caplog.at_level(logging.ERROR):
        assert deliver().sent == 1

    assert [r.rcpt_tos for r in smtp.received()] == [RECIPIENTS[1:]]
    assert f"mail to {RECIPIENTS[0]} refused for good" in caplog.text
    sent = AuditEvent.objects.get(action="notification.sent")
    assert sent.data["refused"] == RECIPIENTS[:1]
    call = OutboundCall.objects.get(provider="email")
    assert call.progress["recipients"] == {RECIPIENTS[0]: "refused", RECIPIENTS[1]: "sent"}


def test_the_mail_password_appears_in_no_log_error_or_audit_event(
    project, staging, slow_rule, channel, smtp, with_password, caplog
):
    with caplog.at_level(logging.DEBUG):
        smtp.refuse_logins()
        blocked(project, staging, build="login-refused")
        deliver()
        smtp.stop()
        blocked(project, staging, build="server-down")
        deliver()

    # The login was refused (535: a person fixes the password, the mail waits), then the server
    # was not there; both events wait in one message.
    [call] = OutboundCall.objects.filter(provider="email")
    assert call.state == OutboundCall.State.PENDING and call.attempts == 2
    assert "ConnectionRefusedError" in call.last_error
    assert "refused the login (535)" in caplog.text
    assert call.notifications.count() == 2

    assert PASSWORD not in caplog.text
    assert PASSWORD not in " ".join(OutboundCall.objects.values_list("last_error", flat=True))
    assert PASSWORD not in str(list(AuditEvent.objects.values_list("data", "reason")))
