"""The fake Slack refuses what Slack's incoming webhooks refuse, answers as Slack does, and fails on
purpose."""

import re
import time

import pytest
import requests

from tests.fake_slack import FakeSlack


@pytest.fixture
def slack():
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def ops(slack):
    return slack.webhook_url("ops-alerts")


def post(url, payload=None, **kwargs):
    kwargs.setdefault("timeout", 5)
    if payload is not None:
        kwargs["json"] = payload
    return requests.post(url, **kwargs)


def section(text):
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def button(text="Open", **extra):
    return {"type": "button", "text": {"type": "plain_text", "text": text}, **extra}


def test_a_valid_message_is_answered_ok_and_recorded(slack, ops):
    payload = {
        "text": "perfgate: checkout p95 regressed",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": "Gate failed", "emoji": True}},
            section("*p95* 412 ms (limit 300 ms)"),
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "wedsync · production"}]},
            {
                "type": "actions",
                "elements": [button(url="https://perfgate.example.com/runs/1", style="primary")],
            },
            {"type": "divider"},
        ],
    }

    response = post(ops, payload)

    assert (response.status_code, response.text) == (200, "ok")
    assert response.headers["Content-Type"] == "text/html"
    [message] = slack.messages_for("ops-alerts")
    assert message.payload == payload
    assert not message.truncated
    assert [(r.webhook, r.status, r.body) for r in slack.requests] == [("ops-alerts", 200, "ok")]


def test_webhook_urls_look_like_slacks_and_the_secret_differs_per_webhook(slack, ops):
    assert re.fullmatch(re.escape(slack.base_url) + r"/services/T0PERFGATE/BOPSALERTS/[A-Za-z0-9]{24}", ops)
    assert slack.webhook_url("ops-alerts") == ops
    other = slack.webhook_url("ops_alerts")
    assert other != ops
    assert post(other, {"text": "hi"}).status_code == 200
    assert [m.webhook for m in slack.messages] == ["ops_alerts"]


def test_an_unknown_path_or_a_wrong_secret_is_no_service(slack, ops):
    wrong_secret = ops[:-24] + "A" * 24

    for url in (wrong_secret, slack.base_url + "/services/T0/B0/x", slack.base_url + "/"):
        response = post(url, {"text": "hi"})
        assert (response.status_code, response.text) == (404, "no_service")
    assert slack.messages == []
    assert {r.webhook for r in slack.requests} == {None}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": b'{"text": "unterminated', "headers": {"Content-Type": "application/json"}},
        {"data": b'"just a string"', "headers": {"Content-Type": "application/json"}},
        {"data": b'{"text": "hi"}', "headers": {"Content-Type": "text/plain"}},
        {"data": {"payload": '{"text": "hi"}'}},  # Slack's form encoding, not modelled
        {"json": {"text": ""}},
        {"json": {"text": "", "blocks": []}},
        {"json": {"username": "perfgate"}},
        {"json": {"text": 42}},
    ],
)
def test_a_body_that_is_not_a_message_is_invalid_payload(slack, ops, kwargs):
    response = post(ops, **kwargs)

    assert (response.status_code, response.text) == (400, "invalid_payload")
    assert slack.messages == []


def test_a_charset_on_the_json_content_type_is_accepted(slack, ops):
    response = post(ops, data=b'{"text": "hi"}', headers={"Content-Type": "application/json; charset=utf-8"})

    assert response.status_code == 200


INVALID_BLOCKS = {
    "51 blocks": ([section("x")] * 51, "51 blocks, at most 50"),
    "header of 151": ([{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}], "at most 150"),
    "mrkdwn header": ([{"type": "header", "text": {"type": "mrkdwn", "text": "h"}}], "plain_text"),
    "section text of 3001": ([section("s" * 3001)], "at most 3000"),
    "empty section text": ([section("")], "non-empty"),
    "section without text or fields": ([{"type": "section"}], "needs text or fields"),
    "11 fields": ([{"type": "section", "fields": [{"type": "mrkdwn", "text": "f"}] * 11}], "11 items"),
    "field of 2001": (
        [{"type": "section", "fields": [{"type": "mrkdwn", "text": "f" * 2001}]}],
        "at most 2000",
    ),
    "unknown text type": ([{"type": "section", "text": {"type": "markdown", "text": "x"}}], "text object"),
    "emoji on mrkdwn": (
        [{"type": "section", "text": {"type": "mrkdwn", "text": "x", "emoji": True}}],
        "emoji",
    ),
    "unknown block type": ([{"type": "table"}], "known type"),
    "11 context elements": (
        [{"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 11}],
        "11 items",
    ),
    "26 actions": ([{"type": "actions", "elements": [button()] * 26}], "26 items"),
    "button text of 76": ([{"type": "actions", "elements": [button("b" * 76)]}], "at most 75"),
    "button url of 3001": ([{"type": "actions", "elements": [button(url="u" * 3001)]}], "at most 3000"),
    "button style": ([{"type": "actions", "elements": [button(style="secondary")]}], "primary or danger"),
    "action_id of 256": ([{"type": "actions", "elements": [button(action_id="a" * 256)]}], "at most 255"),
    "repeated action_id": (
        [{"type": "actions", "elements": [button(action_id="open"), button(action_id="open")]}],
        "not unique in its block",
    ),
    "block_id of 256": ([{**section("x"), "block_id": "b" * 256}], "at most 255"),
    "repeated block_id": (
        [{**section("x"), "block_id": "b"}, {**section("y"), "block_id": "b"}],
        "not unique",
    ),
    "image without alt_text": ([{"type": "image", "image_url": "https://example.com/p.png"}], "alt_text"),
    "blocks not an array": ({"type": "section"}, "not an array"),
}


@pytest.mark.parametrize("blocks, reason", INVALID_BLOCKS.values(), ids=INVALID_BLOCKS.keys())
def test_invalid_blocks_are_refused_naming_nothing_but_logging_why(slack, ops, blocks, reason):
    response = post(ops, {"text": "fallback", "blocks": blocks})

    assert (response.status_code, response.text) == (400, "invalid_blocks")
    assert slack.messages == []
    [request] = slack.rejected(400)
    assert reason in request.reason


def test_every_limit_itself_is_accepted(slack, ops):
    at_the_limits = [
        {"type": "header", "text": {"type": "plain_text", "text": "h" * 150}},
        section("s" * 3000),
        {"type": "section", "fields": [{"type": "plain_text", "text": "f" * 2000}] * 10},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "c"}] * 10},
        {
            "type": "actions",
            "elements": [button("b" * 75, url="u" * 3000, action_id="a" * 255)]
            + [button(action_id=f"a{i}") for i in range(24)],
        },
        {"type": "actions", "elements": [button(action_id="a" * 255)]},  # only unique within its block
        {**section("x"), "block_id": "b" * 255},
    ]
    blocks = at_the_limits + [section("filler")] * (50 - len(at_the_limits))

    response = post(ops, {"blocks": blocks})

    assert (response.status_code, response.text) == (200, "ok")
    assert len(slack.messages_for("ops-alerts")[0].payload["blocks"]) == 50


def test_text_over_40000_characters_is_posted_but_marked_truncated(slack, ops):
    assert post(ops, {"text": "t" * 40_000}).status_code == 200
    assert post(ops, {"text": "t" * 40_001}).status_code == 200

    assert [m.truncated for m in slack.messages] == [False, True]


@pytest.mark.parametrize(
    "code, status",
    [
        ("channel_not_found", 404),
        ("channel_is_archived", 410),
        ("action_prohibited", 403),
        ("no_service", 404),
        ("invalid_token", 403),
    ],
)
def test_a_broken_webhook_keeps_answering_slacks_code(slack, ops, code, status):
    healthy = slack.webhook_url("releases")
    slack.break_webhook(ops, code)

    for _ in range(2):
        response = post(ops, {"text": "hi"})
        assert (response.status_code, response.text) == (status, code)
    assert post(healthy, {"text": "hi"}).status_code == 200
    assert [m.webhook for m in slack.messages] == ["releases"]


def test_fail_next_429_carries_retry_after_in_whole_seconds(slack, ops):
    slack.fail_next(1, status=429, retry_after=2.5)

    response = post(ops, {"text": "hi"})

    assert (response.status_code, response.text) == (429, "rate_limited")
    assert response.headers["Retry-After"] == "3"
    assert post(ops, {"text": "hi"}).status_code == 200


def test_fail_next_fails_the_next_requests_then_lets_them_through(slack, ops):
    slack.fail_next(2)

    answers = [(r.status_code, r.text) for r in (post(ops, {"text": "hi"}) for _ in range(3))]

    assert answers == [(500, "rollup_error"), (500, "rollup_error"), (200, "ok")]
    assert len(slack.messages) == 1
    assert [r.status for r in slack.rejected()] == [500, 500]


def test_fail_next_for_one_webhook_spares_the_others(slack, ops):
    releases = slack.webhook_url("releases")
    slack.fail_next(1, status=503, webhook=ops)

    assert post(releases, {"text": "hi"}).status_code == 200
    assert post(ops, {"text": "hi"}).status_code == 503
    assert post(ops, {"text": "hi"}).status_code == 200


def test_rate_limit_refuses_a_second_message_within_the_second_then_accepts(slack, ops):
    releases = slack.webhook_url("releases")
    slack.rate_limit(1)

    first = post(ops, {"text": "one"})
    too_soon = post(ops, {"text": "two"})
    other_webhook = post(releases, {"text": "elsewhere"})
    time.sleep(max(0.0, slack.messages[0].at + 1.02 - time.time()))
    later = post(ops, {"text": "three"})

    assert first.status_code == 200
    assert (too_soon.status_code, too_soon.text) == (429, "rate_limited")
    assert too_soon.headers["Retry-After"] == "1"
    assert other_webhook.status_code == 200
    assert later.status_code == 200
    assert [m.payload["text"] for m in slack.messages_for("ops-alerts")] == ["one", "three"]


def test_an_outage_fails_everything_until_recovered(slack, ops):
    slack.outage()

    assert post(ops, {"text": "hi"}).status_code == 503
    assert post(slack.base_url + "/services/T0/B0/x", {"text": "hi"}).status_code == 503
    slack.recover()
    assert post(ops, {"text": "hi"}).status_code == 200
    assert len(slack.messages) == 1


def test_slow_answers_time_a_client_out(slack, ops):
    slack.slow(0.5)
    with pytest.raises(requests.Timeout):
        post(ops, {"text": "hi"}, timeout=0.1)

    slack.slow(None)
    assert post(ops, {"text": "hi"}).status_code == 200
