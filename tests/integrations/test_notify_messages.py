"""Notifications rendered for Slack and email: within every Block Kit limit, escaped, readable."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from integrations.notify.messages import (
    BUTTON_TEXT,
    FIELD_TEXT,
    HEADER_TEXT,
    MAX_BLOCKS,
    MAX_FIELDS,
    SECTION_TEXT,
    URL,
    email_message,
    format_change,
    format_value,
    safe_subject,
    slack_message,
)

DASH = "\u2013"  # what a missing value shows
ADMIN = "http://127.0.0.1:8000/admin/gates/validation/7b0f/change/"
APPROVE = "http://127.0.0.1:8000/admin/gates/bypassrequest/12/change/?next=a&b=c"


def blocked_item(**changes) -> dict:
    item = {
        "event": "blocked",
        "level": "error",
        "title": "wedsync-web/production build gha-9876543-1 blocked",
        "project": "wedsync-web",
        "environment": "production",
        "build": "gha-9876543-1",
        "verdict": "fail",
        "status": "blocked",
        "reason": "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%)",
        "checks": [
            {
                "rule": "http_req_duration p(95) relative",
                "verdict": "fail",
                "observed": 441.0,
                "baseline": 352.9,
                "changePct": 24.96,
                "limit": 388.2,
                "unit": "ms",
                "pValue": 0.0004,
            },
            {
                "rule": "http_req_failed rate<1",
                "verdict": "error",
                "observed": 0.2,
                "baseline": None,
                "changePct": None,
                "limit": 1.0,
                "unit": "%",
                "pValue": None,
            },
            {
                "rule": "http_reqs rate",
                "verdict": "fail",
                "observed": 101.8,
                "baseline": 120.0,
                "changePct": -15.17,
                "limit": 108.0,
                "unit": "req/s",
                "pValue": None,
            },
        ],
        "people": [],
        "links": [{"text": "Validation", "url": ADMIN}, {"text": "Chart", "url": ADMIN + "chart/"}],
        "at": "2026-12-02T10:15:00+00:00",
    }
    item.update(changes)
    return item


def bypass_item(**changes) -> dict:
    return blocked_item(
        event="bypass_requested",
        level="warning",
        title="Bypass requested for wedsync-web/production build gha-9876543-1",
        reason="Black Friday hotfix, the regression is in an admin page",
        checks=[],
        people=["alice", "bob"],
        links=[{"text": "Approve", "url": APPROVE}, {"text": "Validation", "url": ADMIN}],
        **changes,
    )


def units(text: str) -> int:
    """Lengths as the renderer counts them (UTF-16 code units, never fewer than characters)."""
    return len(text.encode("utf-16-le")) // 2


def mrkdwn_texts(payload: dict) -> list[str]:
    """Every text Slack reads as mrkdwn (where ``<!channel>`` would ping): the fallback and each
    mrkdwn text object. Headers and buttons are plain_text, which Slack shows as it is."""
    texts = [payload["text"]]
    for block in payload["blocks"]:
        objects = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        texts += [obj["text"] for obj in objects if obj and obj.get("type") == "mrkdwn"]
    return texts


def section_texts(payload: dict) -> list[str]:
    return [
        block["text"]["text"] for block in payload["blocks"] if block["type"] == "section" and "text" in block
    ]


def assert_within_slack_limits(payload: dict) -> None:
    assert set(payload) == {"text", "blocks"}
    blocks = payload["blocks"]
    assert 1 <= len(blocks) <= MAX_BLOCKS
    assert 0 < units(payload["text"]) <= 3000
    buttons = 0
    for block in blocks:
        kind = block["type"]
        assert kind in ("header", "section", "context", "actions")
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < units(block["text"]["text"]) <= HEADER_TEXT
            assert "\n" not in block["text"]["text"]
        elif kind == "section":
            assert ("text" in block) != ("fields" in block)
            if "text" in block:
                assert 0 < units(block["text"]["text"]) <= SECTION_TEXT
            else:
                assert 0 < len(block["fields"]) <= MAX_FIELDS
                assert all(0 < units(field["text"]) <= FIELD_TEXT for field in block["fields"])
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10
            assert all(0 < units(element["text"]) <= SECTION_TEXT for element in block["elements"])
        else:
            assert 0 < len(block["elements"]) <= 25
            for button in block["elements"]:
                assert 0 < units(button["text"]["text"]) <= BUTTON_TEXT
                assert units(button["url"]) <= URL
                assert button["url"].startswith(("http://", "https://"))
            buttons += len(block["elements"])
            ids = [button["action_id"] for button in block["elements"]]
            assert len(ids) == len(set(ids))
    assert buttons <= 25
    for text in mrkdwn_texts(payload):
        assert not re.search(r"&(?!amp;|lt;|gt;)", text), "a cut left half an entity"
    json.dumps(payload)


# --- one item -------------------------------------------------------------------------------------


def test_one_blocked_build_shows_its_checks_as_a_table_with_units_and_a_dash_for_missing_values():
    payload = slack_message([blocked_item()])

    assert_within_slack_limits(payload)
    header = payload["blocks"][0]["text"]["text"]
    assert header == "Blocked (fail) · wedsync-web/production · gha-9876543-1"
    table = next(text for text in section_texts(payload) if text.startswith("```"))
    rows = table.split("\n")
    assert rows[0] == rows[-1] == "```"
    duration = next(row for row in rows if row.startswith("http_req_duration"))
    assert re.search(r"441\.0 ms +352\.9 ms +\+25\.0 % +388\.2 ms +p=0\.0004$", duration)
    failed = next(row for row in rows if row.startswith("http_req_failed"))
    assert re.search(rf"0\.20 % +{DASH} +{DASH} +1\.0 %$", failed)
    assert "101.8 req/s" in table
    assert "-15.2 %" in table


def test_a_rollback_headline_does_not_repeat_the_verdict_of_the_build_it_undid():
    payload = slack_message([blocked_item(event="rollback", verdict="pass", status="passed")])

    assert payload["blocks"][0]["text"]["text"] == "Rollback · wedsync-web/production · gha-9876543-1"
    assert email_message([blocked_item(event="rollback", verdict="pass")]).subject == (
        "[perfgate] Rollback · wedsync-web/production · gha-9876543-1"
    )


def test_one_item_lists_its_facts_as_fields_and_its_reason():
    payload = slack_message([blocked_item()])

    fields = next(block["fields"] for block in payload["blocks"] if "fields" in block)
    assert [field["text"] for field in fields[:4]] == [
        "*Project*\nwedsync-web",
        "*Environment*\nproduction",
        "*Build*\ngha-9876543-1",
        "*Verdict / status*\nfail · blocked",
    ]
    reason = "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%)"
    assert f"*Reason*\n{reason}" in section_texts(payload)
    assert payload["text"].endswith(f"\n{reason}")


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (441.0, "ms", "441.0 ms"),
        (352.94, "ms", "352.9 ms"),
        (12345.67, "ms", "12,345.7 ms"),
        (0.2, "%", "0.20 %"),
        (0.004, "%", "0.004 %"),
        (101.8, "req/s", "101.8 req/s"),
        (6120, "", "6,120"),
        (0, "ms", "0 ms"),
        (None, "ms", DASH),
        (float("nan"), "ms", "NaN ms"),
        (1e300, "ms", "1e+300 ms"),
    ],
)
def test_values_are_rounded_with_their_unit(value, unit, shown):
    assert format_value(value, unit) == shown


@pytest.mark.parametrize(
    ("pct", "shown"),
    [(24.96, "+25.0 %"), (-3.04, "-3.0 %"), (0, "+0.0 %"), (None, DASH), (1e9, "+1e+09 %")],
)
def test_changes_are_signed_percentages(pct, shown):
    assert format_change(pct) == shown


def test_a_bypass_request_names_who_may_approve_and_the_approve_button_is_primary():
    payload = slack_message([bypass_item()])

    assert_within_slack_limits(payload)
    assert "May approve: alice, bob" in section_texts(payload)
    (actions,) = [block for block in payload["blocks"] if block["type"] == "actions"]
    approve, validation = actions["elements"]
    assert (approve["text"]["text"], approve["url"], approve["style"]) == ("Approve", APPROVE, "primary")
    assert (validation["text"]["text"], validation["url"]) == ("Validation", ADMIN)
    assert "style" not in validation


def test_links_that_are_not_absolute_http_urls_get_no_button():
    links = [
        {"text": "Evil", "url": "javascript:alert(1)"},
        {"text": "Relative", "url": "/admin/"},
        {"text": "Too long", "url": "https://perfgate.example/" + "a" * URL},
        {"text": "x" * 200, "url": ADMIN},
    ]
    payload = slack_message([blocked_item(links=links)])

    assert_within_slack_limits(payload)
    (actions,) = [block for block in payload["blocks"] if block["type"] == "actions"]
    (button,) = actions["elements"]
    assert button["url"] == ADMIN
    assert button["text"]["text"] == "x" * (BUTTON_TEXT - 1) + "…"


def test_a_reason_that_pings_the_channel_is_shown_as_text():
    reason = "<!channel> look: <https://evil.example|click> & <@U123>"
    items = [blocked_item(reason=reason, title="<!here> fix | > merge", build="<!everyone>")]

    for payload in (slack_message(items), slack_message(items * 3)):
        assert_within_slack_limits(payload)
        shown = "\n".join(mrkdwn_texts(payload))
        assert "<!" not in shown
        assert "<@" not in shown
        assert "<https://evil" not in shown
        assert "&lt;!channel&gt; look: &lt;https://evil.example|click&gt; &amp; &lt;@U123&gt;" in shown


def test_a_title_shown_as_a_link_loses_the_characters_that_would_end_the_link():
    payload = slack_message([blocked_item(title="fix | > <b> & co", reason="")] * 2)

    lines = section_texts(payload)[0].split("\n")
    assert lines[0] == f"• <{ADMIN}|fix &lt;b &amp; co>"


def test_a_rule_with_backticks_cannot_close_the_table():
    check = {"rule": "x```\n*bold* <!here>", "verdict": "fail", "observed": 1.0, "unit": "ms"}
    payload = slack_message([blocked_item(checks=[check])])

    (table,) = [text for text in section_texts(payload) if text.startswith("```")]
    assert table.count("```") == 2
    assert table.startswith("```\n") and table.endswith("\n```")
    assert "&lt;!here&gt;" in table


def test_a_long_check_list_is_cut_to_one_section_and_says_how_many_are_left_out():
    checks = [
        {"rule": f"rule number {n} " + "x" * 60, "verdict": "fail", "observed": 441.0 + n, "unit": "ms"}
        for n in range(200)
    ]
    payload = slack_message([blocked_item(checks=checks)])

    assert_within_slack_limits(payload)
    (table,) = [text for text in section_texts(payload) if text.startswith("```")]
    shown = sum(1 for line in table.split("\n") if line.startswith("rule number"))
    assert 0 < shown < 200
    assert table.endswith(f"\n…and {200 - shown} more checks")


def test_text_cut_to_a_limit_never_ends_in_half_an_escaped_character():
    payload = slack_message([blocked_item(reason="&" * 5000, build="<" * 600)])

    assert_within_slack_limits(payload)
    assert f"*Reason*\n{'&amp;' * 598}…" in section_texts(payload)
    fields = next(block["fields"] for block in payload["blocks"] if "fields" in block)
    assert fields[2]["text"] == f"*Build*\n{'&lt;' * 497}…"


def test_a_long_build_id_is_cut_in_the_header():
    payload = slack_message([blocked_item(build="b" * 200)])

    assert_within_slack_limits(payload)
    header = payload["blocks"][0]["text"]["text"]
    assert units(header) == HEADER_TEXT
    assert header.endswith("b…")


def test_no_items_is_a_mistake_of_the_caller():
    with pytest.raises(ValueError, match="at least one item"):
        slack_message([])
    with pytest.raises(ValueError, match="at least one item"):
        email_message([])


# --- several items --------------------------------------------------------------------------------


def test_a_burst_of_one_kind_says_how_many_builds_were_blocked_where():
    items = [blocked_item(build=f"gha-{n}", title=f"build gha-{n} blocked") for n in range(20)]
    payload = slack_message(items)

    assert_within_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"] == "20 builds blocked · wedsync-web/production"
    assert payload["blocks"][1]["elements"][0]["text"] == "20 blocked"
    lines = "\n".join(section_texts(payload)).split("\n")
    assert len(lines) == 20
    reason = "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%)"
    assert lines[0] == f"• <{ADMIN}|build gha-0 blocked> — {reason}"


def test_a_mixed_burst_counts_each_kind():
    items = [blocked_item()] * 3 + [bypass_item(environment="staging")] * 2 + [blocked_item(event="rollback")]
    payload = slack_message(items * 2)

    assert_within_slack_limits(payload)
    assert payload["blocks"][0]["text"]["text"] == "12 notifications · wedsync-web"
    assert payload["blocks"][1]["elements"][0]["text"] == "6 blocked · 4 bypass requested · 2 rollback"
    assert "(may approve: alice, bob)" in section_texts(payload)[0]


def test_items_that_do_not_fit_in_fifty_blocks_are_counted_in_the_last_section():
    items = [blocked_item(title=f"build {n} " + "t" * 140, reason="r" * 300) for n in range(3000)]
    payload = slack_message(items)

    assert_within_slack_limits(payload)
    assert len(payload["blocks"]) == MAX_BLOCKS
    lines = "\n".join(section_texts(payload)).split("\n")
    shown = sum(1 for line in lines if line.startswith("• "))
    assert 0 < shown < 3000
    assert lines[-1] == f"…and {3000 - shown} more notifications"


def test_the_last_section_always_has_room_to_say_how_many_were_left_out():
    for width in range(60, 200, 4):
        items = [blocked_item(title="t" * width, reason="r" * width, links=[])] * 1200
        payload = slack_message(items)

        assert_within_slack_limits(payload)
        assert section_texts(payload)[-1].endswith(" more notifications")


# --- any input ------------------------------------------------------------------------------------

EVENTS = [
    "blocked",
    "bypass_requested",
    "bypass_approved",
    "bypass_rejected",
    "degraded",
    "rollback",
    "blind",
]
LONG_URL = "https://perfgate.example/" + "u" * 2990
TOO_LONG_URL = "https://perfgate.example/" + "u" * 3100

any_text = st.text(alphabet=st.sampled_from("ab <>&|*_`~\n\r\t\x00é😀\u202e!@"), max_size=40).map(
    lambda text: text * 40
)
any_number = st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**20), 10**20)
any_check = st.fixed_dictionaries(
    {
        "rule": any_text,
        "verdict": st.sampled_from(["fail", "error", "inconclusive", "no_baseline"]),
        "observed": any_number,
        "baseline": any_number,
        "changePct": any_number,
        "limit": any_number,
        "unit": st.sampled_from(["ms", "%", "req/s", ""]),
        "pValue": st.none() | st.floats(0, 1),
    }
)
any_link = st.fixed_dictionaries(
    {
        "text": st.sampled_from(["Approve", "Validation", "Chart", "y" * 90]),
        "url": st.sampled_from([ADMIN, APPROVE, LONG_URL, TOO_LONG_URL, "/x"]),
    }
)
any_item = st.fixed_dictionaries(
    {
        "event": st.sampled_from(EVENTS),
        "level": st.sampled_from(["info", "warning", "error"]),
        "title": any_text,
        "project": st.sampled_from(["wedsync-web", "wedsync-api", "<!channel>"]),
        "environment": st.sampled_from(["staging", "production", ""]),
        "build": st.sampled_from(["", "gha-1", "b&" * 100]),
        "verdict": st.sampled_from(["", "fail", "error"]),
        "status": st.sampled_from(["", "blocked"]),
        "reason": any_text,
        "checks": st.tuples(st.lists(any_check, max_size=3), st.integers(0, 200)).map(
            lambda pair: (pair[0] * pair[1])[:200]
        ),
        "people": st.lists(st.sampled_from(["alice", "bob", "<!here>", "c" * 80]), max_size=4),
        "links": st.lists(any_link, max_size=5),
        "at": st.just("2026-12-02T10:15:00+00:00"),
    }
)
# A few distinct items repeated up to 300 times: large bursts stay cheap to generate, and the largest
# are drawn often enough that some do not fit in one message.
any_burst = st.tuples(st.lists(any_item, min_size=1, max_size=4), st.integers(1, 300) | st.just(300)).map(
    lambda pair: (pair[0] * pair[1])[: pair[1]]
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_burst)
def test_any_notification_fits_every_slack_limit_and_counts_what_it_leaves_out(items):
    payload = slack_message(items)

    assert_within_slack_limits(payload)
    shown_text = "\n".join(mrkdwn_texts(payload))
    assert "<!" not in shown_text
    texts = section_texts(payload)
    if len(items) == 1:
        checks = items[0]["checks"]
        tables = [text for text in texts if text.startswith("```")]
        if checks:
            (table,) = tables
            assert table.count("```") == 2
            rows = table.split("\n```")[0].split("\n")[2:]
            left_out = len(checks) - len(rows)
            assert left_out == 0 or table.endswith(f"\n…and {left_out} more checks")
        else:
            assert tables == []
    else:
        lines = "\n".join(texts).split("\n")
        shown = sum(1 for line in lines if line.startswith("• "))
        assert shown == len(items) or lines[-1] == f"…and {len(items) - shown} more notifications"


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_any_subject_is_one_short_line(text):
    subject = safe_subject(text)

    assert len(subject) <= 200
    assert subject == subject.strip()
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", subject)


# --- email ----------------------------------------------------------------------------------------


def test_a_subject_cannot_carry_another_header():
    assert safe_subject("blocked\r\nBcc: x@y") == "blocked Bcc: x@y"
    email = email_message([blocked_item(project="wedsync\r\nBcc: x@y", build="b" * 300)])
    assert email.subject.startswith("[perfgate] Blocked (fail) · wedsync Bcc: x@y/production · bbb")
    assert "\n" not in email.subject and "\r" not in email.subject
    assert len(email.subject) == 200 and email.subject.endswith("…")


def test_the_text_body_has_the_checks_the_reason_who_may_approve_and_every_link():
    links = [*bypass_item()["links"], {"text": "Odd", "url": "javascript:alert(1)"}]
    email = email_message([blocked_item(people=["alice", "bob"], links=links)])

    assert email.text.startswith("Blocked (fail) · wedsync-web/production · gha-9876543-1\n")
    assert "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%)" in email.text
    assert re.search(r"http_req_duration p\(95\) relative +fail +441\.0 ms +352\.9 ms +\+25\.0 %", email.text)
    assert "May approve: alice, bob" in email.text
    for line in (f"Approve: {APPROVE}", f"Validation: {ADMIN}", "Odd: javascript:alert(1)"):
        assert line in email.text.split("\n")


def test_the_html_body_escapes_user_text_and_links_only_to_web_addresses():
    item = blocked_item(
        reason='<script>alert("x")</script> & more',
        people=["alice", "bob"],
        links=[{"text": "Approve <b>", "url": APPROVE}, {"text": "Odd", "url": "javascript:alert(1)"}],
    )
    page = email_message([item]).html

    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in page
    assert f'<a href="{APPROVE.replace("&", "&amp;")}">Approve &lt;b&gt;</a>' in page
    assert "javascript:" not in re.findall(r'href="([^"]*)"', page)[0]
    assert 'href="javascript' not in page
    assert re.search(r"<table[^>]*>.*<td[^>]*>441\.0 ms</td>.*</table>", page, re.S)
    assert "May approve: alice, bob" in page
    assert not re.search(r"<(img|link|iframe|style)\b|\bsrc=|url\(", page)


def test_an_email_of_many_items_lists_at_most_five_hundred_and_counts_the_rest():
    items = [blocked_item(title=f"build {n} blocked") for n in range(520)]
    email = email_message(items)

    assert email.subject == "[perfgate] 520 builds blocked · wedsync-web/production"
    assert "1. build 0 blocked" in email.text
    assert "500. build 499 blocked" in email.text
    assert "build 500 blocked" not in email.text
    assert email.text.rstrip().endswith("…and 20 more notifications")
    assert email.html.count("<li>") == 500
    assert "…and 20 more notifications" in email.html
