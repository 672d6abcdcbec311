"""Numbers people read: one formatter, rounded values with their units, one en dash for none."""

import pytest
from perfgate_cli.numbers import NONE, format_change, format_measure, format_p, format_value, unit_of
from perfgate_cli.table import check_table


@pytest.mark.parametrize(
    ("value", "metric", "aggregation", "shown"),
    [
        (341.04999, "http_req_duration", "p(95)", "341.0 ms"),
        (341.0, "http_req_duration{name:rsvp}", "p(99)", "341.0 ms"),
        (0.0023, "http_req_failed", "rate", "0.23 %"),
        (0.01, "http_req_failed", "rate", "1.0 %"),
        (101.84, "http_reqs", "rate", "101.8 req/s"),
        (6120.0, "http_reqs", "count", "6,120"),
        (None, "http_req_duration", "p(95)", NONE),
    ],
)
def test_a_measured_value_is_rounded_and_carries_its_metrics_unit(value, metric, aggregation, shown):
    assert format_measure(value, metric, aggregation) == shown


def test_units_follow_k6s_metrics():
    assert unit_of("http_req_waiting", "avg") == ("ms", 1.0)
    assert unit_of("checks", "rate") == ("%", 100.0)
    assert unit_of("vus", "max") == ("", 1.0)


def test_one_dash_means_none_everywhere():
    assert NONE == "\u2013"
    assert format_value(None) == format_change(None) == NONE
    assert format_p(None) == ""  # no test ran: the p column is left out


def test_the_server_and_the_notifications_use_this_one_formatter():
    from gates import report
    from integrations.notify import messages

    assert report.format_value is messages.format_value is format_value
    assert report.format_change is messages.format_change is format_change


def test_the_check_table_shows_p_only_when_a_test_ran_and_dashes_for_none():
    check = {"rule": "p95", "metric": "http_req_duration", "aggregation": "p(95)", "observed": 200.0}
    header, _, row = check_table([check]).splitlines()
    assert header.split() == ["rule", "observed", "baseline", "change", "limit", "verdict", "reason"]
    assert row.split() == ["p95", "200.0", "ms", NONE, NONE, NONE, NONE, NONE]
    header, _, row = check_table([{**check, "pValue": 0.0312, "changePct": 12.345}]).splitlines()
    assert "p" in header.split()
    assert "0.031" in row.split() and "+12.3" in row.split()
