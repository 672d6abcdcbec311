"""The k6 threshold grammar and the evaluation of rules. Pure: no database, no Django."""

import json
import math
import re
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gates.loadtest.ab import ABCheck
from gates.results.base import COUNTER, GAUGE, RATE, TREND, ResultSet, Series, normalize_tags
from gates.rules import (
    KNOWN_METRICS,
    AbsoluteRule,
    BaselineValue,
    CheckOutcome,
    MetricSelector,
    RelativeRule,
    RuleSyntaxError,
    Severity,
    ThresholdExpression,
    Verdict,
    aggregate_verdict,
    check_aggregation,
    default_direction,
    evaluate_absolute,
    evaluate_load,
    evaluate_paired,
    evaluate_relative,
    evaluate_relatives,
    format_number,
    parse_aggregation,
    parse_go_float,
    parse_selector,
    parse_threshold,
    percentile_of,
    rule_from_fields,
    validate_absolute_rule,
)


def results(*series: Series) -> ResultSet:
    result_set = ResultSet(tool="k6", format="test")
    for item in series:
        result_set.add(item)
    return result_set


def duration(values: dict, tags=(), samples: int | None = 1000) -> Series:
    return Series("http_req_duration", TREND, "ms", tags=normalize_tags(tags), samples=samples, values=values)


def failed(rate: float, samples: int | None = 1000) -> Series:
    return Series("http_req_failed", RATE, "", samples=samples, values={"rate": rate})


def requests(count: float, rate: float = 100.0) -> Series:
    return Series("http_reqs", COUNTER, "", samples=int(count), values={"count": count, "rate": rate})


def absolute(metric: str, threshold: str, severity: Severity = Severity.KEY) -> AbsoluteRule:
    selector, expression = validate_absolute_rule(metric, threshold)
    return AbsoluteRule(
        label=f"{metric}: {threshold}", selector=selector, threshold=expression, severity=severity
    )


def relative(
    metric="http_req_duration",
    aggregation="p(95)",
    warn_pct=5.0,
    fail_pct=10.0,
    floor=5.0,
    direction="auto",
    severity=Severity.KEY,
) -> RelativeRule:
    return RelativeRule(
        label=f"{metric} {aggregation} relative",
        selector=parse_selector(metric),
        aggregation=aggregation,
        warn_pct=warn_pct,
        fail_pct=fail_pct,
        floor=floor,
        direction=direction,
        severity=severity,
    )


def outcome(verdict: Verdict, severity: Severity = Severity.KEY) -> CheckOutcome:
    return CheckOutcome(
        label="rule",
        kind="absolute",
        severity=severity,
        verdict=verdict,
        metric="m",
        aggregation="avg",
        observed=None,
        baseline=None,
        limit=None,
        change_pct=None,
        p_value=None,
        reason="",
    )


# Threshold grammar


@pytest.mark.parametrize("operator", ["<", "<=", ">", ">=", "==", "===", "!="])
def test_every_k6_operator_parses(operator):
    expression = parse_threshold(f"avg{operator}250")
    assert expression.operator == operator
    assert expression.limit == 250.0
    assert expression.aggregation == "avg"


def test_two_character_operators_are_not_split_into_one_character_ones():
    assert parse_threshold("p(95)<=400").operator == "<="
    assert parse_threshold("count>=300").operator == ">="
    assert parse_threshold("value===3").operator == "==="


@pytest.mark.parametrize(
    ("text", "aggregation", "method", "percentile"),
    [
        ("avg<1", "avg", "avg", None),
        ("min<1", "min", "min", None),
        ("max<1", "max", "max", None),
        ("med<1", "med", "med", None),
        ("p(95)<1", "p(95)", "p", 95.0),
        ("count<1", "count", "count", None),
        ("rate<1", "rate", "rate", None),
        ("value<1", "value", "value", None),
    ],
)
def test_every_k6_aggregation_parses(text, aggregation, method, percentile):
    expression = parse_threshold(text)
    parsed = (expression.aggregation, expression.method, expression.percentile)
    assert parsed == (aggregation, method, percentile)


@pytest.mark.parametrize(("text", "percentile"), [("p(0)<1", 0.0), ("p(100)<1", 100.0), ("p(99.9)<1", 99.9)])
def test_percentiles_from_zero_to_one_hundred_with_decimals_are_accepted(text, percentile):
    assert parse_threshold(text).percentile == percentile


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("p(101)<1", "between 0 and 100"),
        ("p(100.0001)<1", "between 0 and 100"),
        ("p(-1)<1", "between 0 and 100"),
        ("p(NaN)<1", "between 0 and 100"),
        ("p()<1", "has no percentile"),
        ("p(abc)<1", "'abc' is not a number"),
        ("p( 95 )<1", "no spaces inside the parentheses"),
        ("p(95<1", "is not a percentile"),
        ("p95<1", "write percentiles as p(N), like p(95)"),
    ],
)
def test_percentiles_outside_zero_to_one_hundred_or_malformed_are_rejected(text, message):
    with pytest.raises(RuleSyntaxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_threshold(text)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("p(95.0)<1", "p(95)"),
        ("p(99.90)<1", "p(99.9)"),
        ("p(1e1)<1", "p(10)"),
        ("p(9_5)<1", "p(95)"),
        ("p(0.00001)<1", "p(1e-05)"),
        ("p(-0)<1", "p(0)"),
        ("p(99.99)<1", "p(99.99)"),
    ],
)
def test_percentiles_are_named_the_way_k6_names_them(text, canonical):
    assert parse_threshold(text).aggregation == canonical


@pytest.mark.parametrize(
    ("limit", "value"),
    [
        ("1e3", 1000.0),
        ("1E+2", 100.0),
        (".5", 0.5),
        ("5.", 5.0),
        ("+5", 5.0),
        ("-5", -5.0),
        ("00.5", 0.5),
        ("1_000", 1000.0),
        ("1_000.5_5", 1000.55),
        ("0x1p4", 16.0),
        ("0x_1.8p1", 3.0),
        ("5e-400", 0.0),
    ],
)
def test_limits_are_read_as_go_parsefloat_reads_them(limit, value):
    assert parse_threshold(f"avg<{limit}").limit == value


@pytest.mark.parametrize("limit", ["_1", "1_", "1__0", "0x10", "0b1", "1e", ".e5", "1 2", "<5", "+nan", "٣"])
def test_limits_go_parsefloat_rejects_are_rejected(limit):
    with pytest.raises(RuleSyntaxError):
        parse_threshold(f"avg<{limit}")


@pytest.mark.parametrize("limit", ["400ms", "400 ms", "2s", "1.5m"])
def test_limits_with_units_are_rejected_with_an_explanation(limit):
    with pytest.raises(RuleSyntaxError) as error:
        parse_threshold(f"p(95)<{limit}")
    assert str(error.value) == (
        f"the limit '{limit}' is not a plain number; "
        "k6 thresholds take numbers in the metric's unit (ms for time)"
    )


def test_a_percent_sign_in_a_limit_explains_that_rates_are_fractions():
    with pytest.raises(RuleSyntaxError, match=re.escape("1% is written 0.01")):
        parse_threshold("rate<1%")


@pytest.mark.parametrize("limit", ["inf", "-Inf", "infinity", "NaN", "nan"])
def test_limits_that_are_not_finite_are_rejected_although_k6_accepts_them(limit):
    with pytest.raises(RuleSyntaxError, match="not a finite number"):
        parse_threshold(f"avg<{limit}")


def test_a_limit_beyond_the_float_range_is_rejected():
    with pytest.raises(RuleSyntaxError, match="out of range"):
        parse_threshold("avg<1e400")


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_an_empty_threshold_is_rejected(text):
    with pytest.raises(RuleSyntaxError, match="threshold is empty"):
        parse_threshold(text)


@pytest.mark.parametrize("text", ["avg", "p(95) 400", "rate"])
def test_a_threshold_without_an_operator_is_rejected(text):
    with pytest.raises(RuleSyntaxError, match="has no comparison operator"):
        parse_threshold(text)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("avg=<5", "did you mean <="),
        ("avg=>5", "did you mean >="),
        ("avg=5", "equality is =="),
        ("avg<>5", "inequality is !="),
        ("avg<<5", "not an operator"),
    ],
)
def test_operators_k6_does_not_know_are_rejected_with_the_fix(text, hint):
    with pytest.raises(RuleSyntaxError, match=hint):
        parse_threshold(text)


def test_a_threshold_with_two_operators_is_rejected():
    with pytest.raises(RuleSyntaxError, match="more than one operator"):
        parse_threshold("avg < = 5")


def test_a_threshold_without_an_aggregation_is_rejected():
    with pytest.raises(RuleSyntaxError, match="no aggregation before '<'"):
        parse_threshold("<400")


def test_a_threshold_without_a_limit_is_rejected():
    with pytest.raises(RuleSyntaxError, match="the limit after '<' is missing"):
        parse_threshold("p(95)<")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("AVG<5", "aggregations are lower case: avg"),
        ("mean<5", "'mean' is not known"),
        ("p<5", "'p' is not known"),
        ("avg 1<5", "'avg 1' is not known"),
    ],
)
def test_unknown_aggregations_are_rejected(text, message):
    with pytest.raises(RuleSyntaxError, match=message):
        parse_threshold(text)


def test_whitespace_around_the_operator_and_the_expression_is_allowed_as_in_k6():
    assert parse_threshold("  p(95) <\t400 ") == parse_threshold("p(95)<400")


def test_the_canonical_form_has_no_spaces_and_the_shortest_number():
    expression = parse_threshold(" p(95.0) <= 400.0 ")
    assert str(expression) == "p(95)<=400"
    assert expression.source == " p(95.0) <= 400.0 "
    assert str(parse_threshold("rate<0.010")) == "rate<0.01"
    assert str(parse_threshold("value===3")) == "value===3"


def test_two_spellings_of_one_threshold_are_equal():
    assert parse_threshold("p(95.0) < 4e2") == parse_threshold("p(95)<400")
    assert parse_threshold("p(95)<400") != parse_threshold("p(95)<=400")


def test_text_that_is_not_a_string_is_a_rule_syntax_error():
    with pytest.raises(RuleSyntaxError):
        parse_threshold(None)
    with pytest.raises(RuleSyntaxError):
        parse_selector(42)


aggregations = st.one_of(
    st.sampled_from(["avg", "min", "max", "med", "count", "rate", "value"]),
    st.integers(min_value=0, max_value=100).map(lambda n: f"p({n})"),
    st.floats(min_value=0, max_value=100).map(lambda n: f"p({n!r})"),
    st.floats(min_value=0, max_value=100).map(lambda n: f"p({n:.3f})"),
)
limits = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda x: f"{x:e}"),
    st.integers(min_value=-(10**9), max_value=10**9).map(lambda n: f"{n:_}"),
)
spaces = st.sampled_from(["", " ", "  ", "\t"])


@given(
    spaces,
    aggregations,
    spaces,
    st.sampled_from(["<", "<=", ">", ">=", "==", "===", "!="]),
    spaces,
    limits,
    spaces,
)
def test_the_canonical_form_reads_back_to_the_same_threshold(s1, aggregation, s2, operator, s3, limit, s4):
    text = f"{s1}{aggregation}{s2}{operator}{s3}{limit}{s4}"
    expression = parse_threshold(text)
    assert parse_threshold(str(expression)) == expression
    assert expression.operator == operator
    assert expression.limit == float(limit.replace("_", ""))


@given(st.one_of(st.text(), st.text(alphabet="p()<>=!.0123456789eExX+-_ avgminxdcoutrlvfINna\t%ms")))
def test_parsing_arbitrary_text_raises_nothing_but_rule_syntax_error(text):
    try:
        expression = parse_threshold(text)
    except RuleSyntaxError:
        return
    assert math.isfinite(expression.limit)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_go_float_parsing_agrees_with_python_for_python_spellings(value):
    assert parse_go_float(repr(value)) == value
    assert parse_go_float(format_number(value)) == value


def test_parse_aggregation_returns_the_canonical_spelling():
    assert parse_aggregation("p(99.90)") == ("p(99.9)", "p", 99.9)
    assert parse_aggregation(" med ") == ("med", "med", None)


def test_percentile_of_reads_percentiles_and_ignores_everything_else():
    assert percentile_of("p(99.9)") == 99.9
    assert percentile_of("avg") is None
    assert percentile_of("p(abc)") is None


# Aggregations per metric kind


VALID = [(TREND, a) for a in ("avg", "min", "max", "med", "p(95)")] + [
    (COUNTER, "count"),
    (COUNTER, "rate"),
    (RATE, "rate"),
    (GAUGE, "value"),
]
INVALID = [
    (TREND, "count", "aggregation 'count' is not valid for a trend metric; use avg, min, max, med or p(N)"),
    (TREND, "rate", "aggregation 'rate' is not valid for a trend metric; use avg, min, max, med or p(N)"),
    (TREND, "value", "aggregation 'value' is not valid for a trend metric; use avg, min, max, med or p(N)"),
    (COUNTER, "avg", "aggregation 'avg' is not valid for a counter metric; use count or rate"),
    (COUNTER, "p(95)", "aggregation 'p(N)' is not valid for a counter metric; use count or rate"),
    (COUNTER, "value", "aggregation 'value' is not valid for a counter metric; use count or rate"),
    (RATE, "count", "aggregation 'count' is not valid for a rate metric; use rate"),
    (RATE, "avg", "aggregation 'avg' is not valid for a rate metric; use rate"),
    (GAUGE, "rate", "aggregation 'rate' is not valid for a gauge metric; use value"),
    (GAUGE, "max", "aggregation 'max' is not valid for a gauge metric; use value"),
]


@pytest.mark.parametrize(("kind", "aggregation"), VALID)
def test_each_kind_accepts_its_aggregations(kind, aggregation):
    check_aggregation(kind, parse_threshold(f"{aggregation}<1"))
    check_aggregation(kind, aggregation)


@pytest.mark.parametrize(("kind", "aggregation", "message"), INVALID)
def test_each_kind_rejects_the_aggregations_of_other_kinds(kind, aggregation, message):
    with pytest.raises(RuleSyntaxError) as error:
        check_aggregation(kind, parse_threshold(f"{aggregation}<1"))
    assert str(error.value) == message


def test_an_unknown_metric_kind_is_rejected():
    with pytest.raises(RuleSyntaxError, match="metric kind 'histogram' is not known"):
        check_aggregation("histogram", "avg")


def test_k6_builtin_metrics_have_their_k6_kinds():
    assert KNOWN_METRICS["http_req_duration"] == TREND
    assert KNOWN_METRICS["http_req_failed"] == RATE
    assert KNOWN_METRICS["http_reqs"] == COUNTER
    assert KNOWN_METRICS["iterations"] == COUNTER
    assert KNOWN_METRICS["checks"] == RATE
    assert KNOWN_METRICS["vus"] == GAUGE
    assert KNOWN_METRICS["data_received"] == COUNTER
    assert KNOWN_METRICS["ws_session_duration"] == TREND
    assert KNOWN_METRICS["grpc_req_duration"] == TREND


def test_a_builtin_metric_is_checked_against_its_kind():
    with pytest.raises(RuleSyntaxError) as error:
        validate_absolute_rule("http_req_duration", "count<10")
    expected = "aggregation 'count' is not valid for a trend metric; use avg, min, max, med or p(N)"
    assert expected in str(error.value)
    with pytest.raises(RuleSyntaxError, match="not valid for a rate metric"):
        validate_absolute_rule("http_req_failed{name:rsvp}", "count<10")


def test_a_custom_metric_of_unknown_kind_is_checked_for_grammar_only():
    selector, expression = validate_absolute_rule("wedding_rsvps{kind:guest}", "count>=5")
    assert str(selector) == "wedding_rsvps{kind:guest}"
    assert str(expression) == "count>=5"
    with pytest.raises(RuleSyntaxError):
        validate_absolute_rule("wedding_rsvps", "count>=5ms")


def test_a_custom_metric_with_a_stated_kind_is_checked_against_it():
    validate_absolute_rule("checkout_time", "p(90)<800", kind=TREND)
    with pytest.raises(RuleSyntaxError, match="not valid for a gauge metric"):
        validate_absolute_rule("queue_depth", "avg<10", kind=GAUGE)


def test_a_stated_kind_that_contradicts_k6_is_rejected():
    with pytest.raises(RuleSyntaxError, match="http_req_duration is a k6 trend metric, not a counter"):
        validate_absolute_rule("http_req_duration", "count<10", kind=COUNTER)


# Metric selectors


def test_a_plain_metric_has_no_tags():
    assert parse_selector("http_req_duration") == MetricSelector("http_req_duration", ())


def test_a_tag_filter_with_one_tag():
    selector = parse_selector("http_req_duration{name:rsvp}")
    assert selector.tags == (("name", "rsvp"),)
    assert str(selector) == "http_req_duration{name:rsvp}"


def test_several_tags_are_sorted_into_the_canonical_form():
    selector = parse_selector("http_req_duration{status:200,name:rsvp,method:GET}")
    assert str(selector) == "http_req_duration{method:GET,name:rsvp,status:200}"


def test_spaces_and_quotes_around_keys_and_values_are_trimmed_like_k6():
    expected = parse_selector("http_req_duration{method:GET,name:rsvp}")
    assert parse_selector(' http_req_duration{ name : "rsvp" , method:GET} ') == expected
    assert parse_selector("http_req_duration{'name':'rsvp',method:\"GET\"}") == expected


def test_a_value_may_contain_spaces_colons_and_braces_as_k6_allows():
    assert parse_selector("http_req_duration{name:guest list}").tags == (("name", "guest list"),)
    assert parse_selector("http_req_duration{group:::setup}").tags == (("group", "::setup"),)
    url = "http_req_duration{name:https://staging.wedsync.example/guests/${}}"
    assert parse_selector(url).tags == (("name", "https://staging.wedsync.example/guests/${}"),)
    assert str(parse_selector(url)) == url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http_req_duration{name:rsvp", "has a '{' without a closing '}'"),
        ("http_req_duration name:rsvp}", "has a '}' without an opening '{'"),
        ("http_req_duration}name:rsvp{", "closing '}' before the opening '{'"),
        ("http_req_duration{name:rsvp}x", "has text 'x' after the closing '}'"),
        ("http_req_duration{}", "has an empty tag filter"),
        ("http_req_duration{ }", "has an empty tag filter"),
        ("http_req_duration{name:rsvp,}", "empty tag filter between commas"),
        ("http_req_duration{name:rsvp,,method:GET}", "empty tag filter between commas"),
        ("http_req_duration{name}", "'name' has no value"),
        ("http_req_duration{name:}", "the tag 'name' has an empty value"),
        ("http_req_duration{name: }", "the tag 'name' has an empty value"),
        ('http_req_duration{name:""}', "the tag 'name' has an empty value"),
        ("http_req_duration{:rsvp}", "has no tag name"),
        ("http_req_duration{{name:rsvp}", "contains a brace"),
        ("http_req_duration{name:' rsvp'}", "spaces at the ends"),
        ("http_req_duration{name:a,name:b}", "filters the tag 'name' twice"),
        ("{name:rsvp}", "metric name is missing"),
        ("", "metric is empty"),
        ("http req duration", "is not a valid k6 metric name"),
        ("http_req_duration {name:rsvp}", "is not a valid k6 metric name"),
        ("http-req-duration", "is not a valid k6 metric name"),
        ("1http", "is not a valid k6 metric name"),
        ("métrique", "is not a valid k6 metric name"),
        ("x", "is not a valid k6 metric name"),
        ("a" * 130, "is not a valid k6 metric name"),
    ],
)
def test_malformed_selectors_are_rejected_with_a_message_that_starts_with_metric(text, message):
    with pytest.raises(RuleSyntaxError) as error:
        parse_selector(text)
    assert message in str(error.value)
    # The admin form puts errors that start with "metric" on the metric field.
    assert str(error.value).startswith("metric")


def test_metric_names_follow_k6s_own_rule_of_two_to_129_characters():
    assert parse_selector("ab").name == "ab"
    assert parse_selector("_" + "a" * 128).name == "_" + "a" * 128


def test_a_selector_built_by_hand_normalizes_its_tags():
    assert MetricSelector("http_reqs", {"b": "2", "a": "1"}).tags == (("a", "1"), ("b", "2"))


tag_keys = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
tag_values = st.from_regex(
    r"[A-Za-z0-9/:${}._-]([A-Za-z0-9/:${}._ -]{0,10}[A-Za-z0-9/:${}._-])?", fullmatch=True
)


@given(
    st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{1,20}", fullmatch=True),
    st.dictionaries(tag_keys, tag_values, max_size=4),
)
def test_a_selector_reads_back_from_its_canonical_form(name, tags):
    selector = MetricSelector(name, tags)
    assert parse_selector(str(selector)) == selector


# Absolute rules


def test_an_absolute_rule_below_its_limit_passes():
    check = evaluate_absolute(absolute("http_req_duration", "p(95)<400"), results(duration({"p(95)": 212.3})))
    assert check.verdict == Verdict.PASS
    assert check.reason == "p(95) 212.3 ms within p(95)<400"
    assert (check.kind, check.metric, check.aggregation, check.observed, check.limit) == (
        "absolute",
        "http_req_duration",
        "p(95)",
        212.3,
        400.0,
    )


def test_an_absolute_rule_above_its_limit_fails():
    check = evaluate_absolute(absolute("http_req_duration", "p(95)<400"), results(duration({"p(95)": 441.0})))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "p(95) 441.0 ms is above the limit 400 ms (p(95)<400)"


def test_strictly_below_fails_at_the_limit_and_at_most_passes():
    data = results(duration({"p(95)": 400.0}))
    at_limit = evaluate_absolute(absolute("http_req_duration", "p(95)<400"), data)
    assert at_limit.verdict == Verdict.FAIL
    assert at_limit.reason == "p(95) 400.0 ms equals the limit 400 ms (p(95)<400)"
    assert evaluate_absolute(absolute("http_req_duration", "p(95)<=400"), data).verdict == Verdict.PASS


@pytest.mark.parametrize(
    ("operator", "observed", "passes"),
    [
        ("<", 9, True),
        ("<", 10, False),
        ("<", 11, False),
        ("<=", 9, True),
        ("<=", 10, True),
        ("<=", 11, False),
        (">", 9, False),
        (">", 10, False),
        (">", 11, True),
        (">=", 9, False),
        (">=", 10, True),
        (">=", 11, True),
        ("==", 9, False),
        ("==", 10, True),
        ("==", 11, False),
        ("===", 9, False),
        ("===", 10, True),
        ("===", 11, False),
        ("!=", 9, True),
        ("!=", 10, False),
        ("!=", 11, True),
    ],
)
def test_every_operator_compares_like_k6(operator, observed, passes):
    data = results(Series("vus", GAUGE, "", samples=5, values={"value": float(observed)}))
    check = evaluate_absolute(absolute("vus", f"value{operator}10"), data)
    assert check.verdict == (Verdict.PASS if passes else Verdict.FAIL)


def test_a_failing_lower_bound_says_the_value_is_below_the_limit():
    check = evaluate_absolute(absolute("http_reqs", "count>=300"), results(requests(120)))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "count 120 is below the limit 300 (count>=300)"


def test_a_rate_is_shown_as_a_percentage():
    check = evaluate_absolute(absolute("http_req_failed", "rate<0.01"), results(failed(0.012)))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "rate 1.20% is above the limit 1% (rate<0.01)"


def test_a_tag_filter_picks_the_submetric():
    data = results(duration({"p(95)": 900.0}), duration({"p(95)": 120.0}, tags={"name": "rsvp"}))
    check = evaluate_absolute(absolute("http_req_duration{name:rsvp}", "p(95)<400"), data)
    assert check.verdict == Verdict.PASS
    assert check.observed == 120.0
    assert check.metric == "http_req_duration{name:rsvp}"


def test_a_tag_filter_matches_the_only_series_that_carries_those_tags():
    data = results(duration({"p(95)": 120.0}, tags={"name": "rsvp", "method": "POST"}))
    check = evaluate_absolute(absolute("http_req_duration{name:rsvp}", "p(95)<400"), data)
    assert check.verdict == Verdict.PASS


def test_a_missing_series_is_an_error_not_a_pass():
    check = evaluate_absolute(
        absolute("http_req_duration{name:rsvp}", "p(95)<400"), results(duration({"p(95)": 1.0}))
    )
    assert check.verdict == Verdict.ERROR
    assert check.reason == "http_req_duration{name:rsvp} is not in the results"
    assert check.observed is None


def test_a_tag_filter_matching_several_series_is_an_error():
    data = results(
        duration({"p(95)": 1.0}, tags={"name": "rsvp", "method": "GET"}),
        duration({"p(95)": 2.0}, tags={"name": "rsvp", "method": "POST"}),
    )
    check = evaluate_absolute(absolute("http_req_duration{name:rsvp}", "p(95)<400"), data)
    assert check.verdict == Verdict.ERROR
    assert "matches several series" in check.reason


def test_a_missing_percentile_is_an_error_that_says_how_to_get_it():
    check = evaluate_absolute(
        absolute("http_req_duration", "p(99.9)<800"), results(duration({"p(95)": 1.0, "p(99)": 2.0}))
    )
    assert check.verdict == Verdict.ERROR
    assert check.reason == (
        "p(99.9) of http_req_duration is not in the results (add it to --summary-trend-stats)"
    )


def test_a_missing_aggregation_of_a_counter_is_an_error():
    data = results(Series("iterations", COUNTER, "", samples=10, values={"count": 10.0}))
    check = evaluate_absolute(absolute("iterations", "rate>1"), data)
    assert check.verdict == Verdict.ERROR
    assert check.reason == "rate of iterations is not in the results"


def test_a_percentile_spelled_differently_by_the_parser_is_still_found():
    data = results(duration({"p(95.0)": 300.0}))
    check = evaluate_absolute(absolute("http_req_duration", "p(95)<400"), data)
    assert check.verdict == Verdict.PASS
    assert check.observed == 300.0


def test_a_series_with_zero_samples_is_an_error():
    check = evaluate_absolute(
        absolute("http_req_duration{name:rsvp}", "p(95)<400"),
        results(duration({"p(95)": 0.0}, tags={"name": "rsvp"}, samples=0)),
    )
    assert check.verdict == Verdict.ERROR
    assert check.reason == "http_req_duration{name:rsvp} has no samples"


@pytest.mark.parametrize(
    ("value", "word"), [(math.nan, "NaN"), (math.inf, "infinite"), (-math.inf, "infinite")]
)
def test_a_value_that_is_not_a_finite_number_is_an_error(value, word):
    check = evaluate_absolute(absolute("http_req_duration", "p(95)<400"), results(duration({"p(95)": value})))
    assert check.verdict == Verdict.ERROR
    assert word in check.reason
    assert check.observed is None


def test_a_rule_whose_aggregation_does_not_fit_the_series_kind_is_an_error():
    rule = AbsoluteRule(
        label="custom",
        selector=parse_selector("orders"),
        threshold=parse_threshold("avg<3"),
        severity=Severity.KEY,
    )
    data = results(Series("orders", COUNTER, "", samples=3, values={"count": 3.0, "rate": 0.1}))
    check = evaluate_absolute(rule, data)
    assert check.verdict == Verdict.ERROR
    assert "aggregation 'avg' is not valid for a counter metric" in check.reason


def test_an_info_rule_keeps_its_severity():
    check = evaluate_absolute(
        absolute("http_req_duration", "p(95)<400", Severity.INFO), results(duration({"p(95)": 500.0}))
    )
    assert (check.verdict, check.severity) == (Verdict.FAIL, Severity.INFO)


# Load


def test_enough_requests_pass_the_load_check():
    check = evaluate_load(results(requests(6120)), 100)
    assert (check.verdict, check.kind, check.observed, check.limit) == (Verdict.PASS, "load", 6120.0, 100.0)


def test_too_few_requests_are_insufficient_load():
    check = evaluate_load(results(requests(42)), 100)
    assert check.verdict == Verdict.ERROR
    assert check.reason.startswith("insufficient load: 42 requests, the scenario needs at least 100")


def test_an_unknown_request_count_is_an_error():
    check = evaluate_load(results(duration({"p(95)": 1.0})), 100)
    assert check.verdict == Verdict.ERROR
    assert check.reason.startswith("request count unknown")


def test_no_requests_at_all_is_insufficient_load_even_without_a_minimum():
    check = evaluate_load(results(requests(0)), 0)
    assert check.verdict == Verdict.ERROR
    assert check.reason.startswith("insufficient load")


# Relative rules


def test_without_a_baseline_a_relative_rule_says_no_baseline():
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), None)
    assert check.verdict == Verdict.NO_BASELINE
    assert check.reason == "no baseline yet for http_req_duration p(95); absolute rules still decide"
    assert check.observed == 441.0
    assert check.kind == "relative"


def test_missing_data_is_an_error_even_without_a_baseline():
    check = evaluate_relative(relative(), results(duration({"avg": 1.0})), None)
    assert check.verdict == Verdict.ERROR
    assert "p(95) of http_req_duration is not in the results" in check.reason


def test_a_large_increase_fails_with_the_product_s_reason():
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), BaselineValue(352.9))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%)"
    assert check.baseline == 352.9
    assert check.limit == pytest.approx(388.19)
    assert check.change_pct == pytest.approx(24.964579)
    assert check.p_value is None


def test_an_increase_at_exactly_fail_pct_fails():
    check = evaluate_relative(
        relative(fail_pct=25.0, warn_pct=None), results(duration({"p(95)": 500.0})), BaselineValue(400.0)
    )
    assert check.verdict == Verdict.FAIL


def test_a_moderate_increase_warns():
    check = evaluate_relative(relative(), results(duration({"p(95)": 372.0})), BaselineValue(352.9))
    assert check.verdict == Verdict.WARN
    assert check.reason == "p(95) 372.0 ms is 5.4% above baseline 352.9 ms (warn above +5%, fail above +10%)"


def test_a_small_increase_beyond_the_floor_passes():
    check = evaluate_relative(relative(), results(duration({"p(95)": 360.0})), BaselineValue(352.9))
    assert check.verdict == Verdict.PASS
    assert check.reason == "p(95) 360.0 ms is 2.0% above baseline 352.9 ms (warn above +5%)"


def test_a_large_percentage_within_the_floor_passes():
    check = evaluate_relative(relative(), results(duration({"p(95)": 14.0})), BaselineValue(10.0))
    assert check.verdict == Verdict.PASS
    assert check.reason == "p(95) 14.0 ms is 40.0% above baseline 10.0 ms, within the 5 ms floor"
    assert check.limit == 15.0  # the floor, not 10% of 10 ms, is where it starts to fail


def test_an_improvement_passes():
    check = evaluate_relative(relative(), results(duration({"p(95)": 250.0})), BaselineValue(352.9))
    assert check.verdict == Verdict.PASS
    assert check.reason == "p(95) 250.0 ms is 29.2% below baseline 352.9 ms, an improvement"
    assert check.change_pct == pytest.approx(-29.158402)


def test_an_unchanged_value_passes():
    check = evaluate_relative(relative(), results(duration({"p(95)": 352.9})), BaselineValue(352.9))
    assert check.verdict == Verdict.PASS
    assert check.change_pct == 0.0


def test_a_throughput_drop_fails_because_down_is_worse_for_throughput():
    rule = relative(metric="http_reqs", aggregation="rate", warn_pct=None, fail_pct=10.0, floor=0.0)
    check = evaluate_relative(rule, results(requests(5400, rate=90.0)), BaselineValue(101.8))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "rate 90.0/s is 11.6% below baseline 101.8/s (fail below -10%)"
    assert check.limit == pytest.approx(91.62)


def test_a_throughput_increase_is_an_improvement():
    rule = relative(metric="http_reqs", aggregation="rate", warn_pct=None, fail_pct=10.0, floor=0.0)
    check = evaluate_relative(rule, results(requests(9000, rate=150.0)), BaselineValue(101.8))
    assert check.verdict == Verdict.PASS
    assert check.reason.endswith("an improvement")


def test_a_stated_direction_overrides_the_metric_s_default():
    rule = relative(direction="down")
    baseline = BaselineValue(352.9)
    assert evaluate_relative(rule, results(duration({"p(95)": 900.0})), baseline).verdict == Verdict.PASS
    assert evaluate_relative(rule, results(duration({"p(95)": 100.0})), baseline).verdict == Verdict.FAIL


def error_rate_rule() -> RelativeRule:
    return relative(metric="http_req_failed", aggregation="rate", warn_pct=None, fail_pct=100.0, floor=0.005)


def test_an_error_rate_that_doubles_by_more_than_half_a_point_fails():
    check = evaluate_relative(error_rate_rule(), results(failed(0.009)), BaselineValue(0.002))
    assert check.verdict == Verdict.FAIL
    assert check.reason == "rate 0.90% is 350.0% above baseline 0.20% (fail above +100%)"
    assert check.limit == pytest.approx(0.007)


def test_an_error_rate_that_doubles_by_less_than_half_a_point_passes():
    check = evaluate_relative(error_rate_rule(), results(failed(0.006)), BaselineValue(0.002))
    assert check.verdict == Verdict.PASS
    assert check.reason.endswith("within the 0.5-percentage-point floor")


def test_an_error_rate_that_grows_by_more_than_half_a_point_without_doubling_passes():
    check = evaluate_relative(error_rate_rule(), results(failed(0.03)), BaselineValue(0.02))
    assert check.verdict == Verdict.PASS


def test_a_worsening_beyond_the_floor_from_a_zero_baseline_fails_as_an_infinite_change():
    check = evaluate_relative(error_rate_rule(), results(failed(0.01)), BaselineValue(0.0))
    assert check.verdict == Verdict.FAIL
    assert check.change_pct is None
    assert "+inf%" in check.reason
    assert check.limit == 0.005
    json.dumps(asdict(check), allow_nan=False)


def test_a_change_within_the_floor_from_a_zero_baseline_passes():
    check = evaluate_relative(error_rate_rule(), results(failed(0.001)), BaselineValue(0.0))
    assert check.verdict == Verdict.PASS
    assert check.change_pct is None


def test_zero_against_a_zero_baseline_is_unchanged():
    check = evaluate_relative(error_rate_rule(), results(failed(0.0)), BaselineValue(0.0))
    assert check.verdict == Verdict.PASS
    assert "unchanged" in check.reason


def test_a_large_increase_within_the_noise_of_the_baseline_runs_warns_and_says_so():
    baseline = BaselineValue(352.9, run_values=(250.0, 450.0, 300.0, 411.6))
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), baseline)
    assert check.verdict == Verdict.WARN
    assert check.p_value > 0.05
    assert check.reason.startswith(
        "p(95) 441.0 ms is 25.0% above baseline 352.9 ms (fail above +10%) but within the run-to-run noise ±"
    )
    assert "of the 4 baseline runs (p=" in check.reason
    assert check.reason.endswith(": not blocked")


def test_a_significant_change_under_the_threshold_warns_and_says_so():
    runs = (350.0, 355.0, 352.0, 354.6, 353.1, 351.5, 354.0, 352.4, 353.6, 351.0, 354.3, 352.8)
    baseline = BaselineValue(352.9, run_values=runs)
    check = evaluate_relative(relative(), results(duration({"p(95)": 366.0})), baseline)
    assert check.verdict == Verdict.WARN
    assert check.p_value < 0.01
    assert "beyond the run-to-run noise" in check.reason
    assert "under the threshold (fail above +10%)" in check.reason


def test_a_significant_change_within_the_floor_warns_rather_than_passing_silently():
    baseline = BaselineValue(10.0, run_values=(10.0, 10.01, 9.99, 10.02, 9.98))
    check = evaluate_relative(relative(floor=5.0), results(duration({"p(95)": 11.0})), baseline)
    assert check.verdict == Verdict.WARN
    assert "beyond the run-to-run noise" in check.reason
    assert check.reason.endswith("but within the 5 ms floor")


def test_a_time_rule_without_a_floor_ignores_changes_under_one_millisecond():
    rule = relative(floor=None, warn_pct=None)
    assert (
        evaluate_relative(rule, results(duration({"p(95)": 1.9})), BaselineValue(1.0)).verdict == Verdict.PASS
    )
    assert (
        evaluate_relative(rule, results(duration({"p(95)": 2.1})), BaselineValue(1.0)).verdict == Verdict.FAIL
    )


def test_a_large_significant_increase_fails():
    baseline = BaselineValue(352.9, run_values=(350.0, 355.0, 352.0, 354.6))
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), baseline)
    assert check.verdict == Verdict.FAIL
    assert check.p_value < 0.01  # four runs give the spread about one degree of freedom


def test_a_warning_stays_a_warning_when_it_is_not_significant():
    baseline = BaselineValue(352.9, run_values=(250.0, 450.0, 300.0, 411.6))
    check = evaluate_relative(relative(), results(duration({"p(95)": 372.0})), baseline)
    assert check.verdict == Verdict.WARN
    assert check.p_value > 0.05


def test_identical_baseline_runs_make_any_large_change_significant():
    baseline = BaselineValue(352.9, run_values=(352.9, 352.9, 352.9))
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), baseline)
    assert check.verdict == Verdict.FAIL
    assert 0 < check.p_value < 0.01  # the noise is never taken as zero: MIN_NOISE


def test_fewer_than_three_baseline_runs_decide_on_magnitude_alone():
    baseline = BaselineValue(352.9, run_values=(250.0, 450.0))
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), baseline)
    assert check.verdict == Verdict.FAIL
    assert check.p_value is None


def test_the_significance_level_is_a_parameter():
    baseline = BaselineValue(352.9, run_values=(250.0, 450.0, 300.0, 411.6))
    data = results(duration({"p(95)": 441.0}))
    p_value = evaluate_relative(relative(), data, baseline).p_value
    assert evaluate_relative(relative(), data, baseline, alpha=p_value + 0.01).verdict == Verdict.FAIL


@pytest.mark.parametrize(
    "baseline",
    [BaselineValue(math.nan), BaselineValue(math.inf), BaselineValue(352.9, run_values=(1.0, math.nan, 2.0))],
)
def test_a_baseline_that_is_not_a_finite_number_is_an_error(baseline):
    check = evaluate_relative(relative(), results(duration({"p(95)": 441.0})), baseline)
    assert check.verdict == Verdict.ERROR
    json.dumps(asdict(check), allow_nan=False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"direction": "sideways"}, "direction 'sideways' is not known"),
        ({"fail_pct": -1.0}, "fail_pct must be zero or a positive number"),
        ({"fail_pct": math.nan}, "fail_pct must be zero or a positive number"),
        ({"fail_pct": "10"}, "fail_pct must be zero or a positive number"),
        ({"warn_pct": 20.0, "fail_pct": 10.0}, "must not be larger than fail_pct"),
        ({"warn_pct": -1.0}, "warn_pct must be zero or a positive number"),
        ({"floor": -5.0}, "floor must be zero or a positive number"),
        ({"aggregation": "p(101)"}, "between 0 and 100"),
    ],
)
def test_an_invalid_relative_rule_cannot_be_built(fields, message):
    with pytest.raises(RuleSyntaxError, match=message):
        relative(**fields)


def test_a_relative_rule_stores_its_aggregation_in_canonical_spelling():
    assert relative(aggregation="p(95.0)").aggregation == "p(95)"


# Rules from configured fields


def test_an_absolute_rule_is_built_from_its_fields():
    rule = rule_from_fields(
        label="l",
        kind="absolute",
        metric="http_req_duration{name:rsvp}",
        threshold="p(99) < 800",
        severity="info",
    )
    assert isinstance(rule, AbsoluteRule)
    assert (str(rule.selector), str(rule.threshold), rule.severity) == (
        "http_req_duration{name:rsvp}",
        "p(99)<800",
        Severity.INFO,
    )


def test_a_relative_rule_is_built_from_its_fields():
    rule = rule_from_fields(
        label="l",
        kind="relative",
        metric="http_req_duration",
        aggregation="p(95)",
        warn_pct=5,
        fail_pct=10,
        floor=5,
        direction="auto",
        severity="key",
    )
    assert isinstance(rule, RelativeRule)
    assert (rule.aggregation, rule.warn_pct, rule.fail_pct, rule.floor, rule.direction) == (
        "p(95)",
        5.0,
        10.0,
        5.0,
        "auto",
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"kind": "absolute", "metric": "http_req_duration", "threshold": "count<5"},
            "not valid for a trend",
        ),
        (
            {"kind": "relative", "metric": "http_req_duration", "aggregation": "count", "fail_pct": 10},
            "aggregation 'count' is not valid for a trend metric",
        ),
        ({"kind": "relative", "metric": "http_req_duration", "aggregation": "p(95)"}, "fail_pct is required"),
        (
            {"kind": "relative", "metric": "http_req_duration", "aggregation": "p(95)", "fail_pct": "ten"},
            "fail_pct must be a number",
        ),
        (
            {"kind": "relative", "metric": "http_req_duration", "aggregation": "", "fail_pct": 10},
            "aggregation is missing",
        ),
        (
            {"kind": "relative", "metric": "http_req_duration{", "aggregation": "p(95)", "fail_pct": 10},
            "^metric",
        ),
        ({"kind": "percentile", "metric": "http_req_duration"}, "rule kind 'percentile' is not known"),
        (
            {"kind": "absolute", "metric": "http_reqs", "threshold": "count>1", "severity": "urgent"},
            "severity 'urgent' is not known",
        ),
    ],
)
def test_invalid_rule_fields_are_rejected(fields, message):
    with pytest.raises(RuleSyntaxError, match=message):
        rule_from_fields(label="l", **fields)


@pytest.mark.parametrize(
    ("metric", "kind", "aggregation", "direction"),
    [
        ("http_req_duration", TREND, "p(95)", "up"),
        ("iteration_duration", TREND, "avg", "up"),
        ("http_req_failed", RATE, "rate", "up"),
        ("login_failed", RATE, "rate", "up"),
        ("payment_errors", RATE, "rate", "up"),
        ("checks", RATE, "rate", "down"),
        ("http_reqs", COUNTER, "rate", "down"),
        ("http_reqs", COUNTER, "count", "down"),
        ("iterations", COUNTER, "count", "down"),
        ("dropped_iterations", COUNTER, "count", "up"),
        ("checkout_errors", COUNTER, "count", "up"),
        ("vus", GAUGE, "value", "up"),
    ],
)
def test_default_direction_knows_which_change_is_worse(metric, kind, aggregation, direction):
    assert default_direction(metric, kind, aggregation) == direction


# The validation's verdict


def test_nothing_checked_is_an_error_not_a_pass():
    assert aggregate_verdict([]) == Verdict.ERROR


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        ([(Verdict.PASS, Severity.KEY)], Verdict.PASS),
        ([(Verdict.PASS, Severity.KEY), (Verdict.PASS, Severity.INFO)], Verdict.PASS),
        (
            [
                (Verdict.FAIL, Severity.KEY),
                (Verdict.ERROR, Severity.KEY),
                (Verdict.INCONCLUSIVE, Severity.KEY),
                (Verdict.WARN, Severity.KEY),
                (Verdict.NO_BASELINE, Severity.KEY),
            ],
            Verdict.FAIL,
        ),
        ([(Verdict.ERROR, Severity.KEY), (Verdict.FAIL, Severity.KEY)], Verdict.FAIL),
        (
            [
                (Verdict.ERROR, Severity.KEY),
                (Verdict.INCONCLUSIVE, Severity.KEY),
                (Verdict.WARN, Severity.KEY),
            ],
            Verdict.ERROR,
        ),
        ([(Verdict.ERROR, Severity.KEY), (Verdict.FAIL, Severity.INFO)], Verdict.ERROR),
        ([(Verdict.INCONCLUSIVE, Severity.KEY), (Verdict.WARN, Severity.KEY)], Verdict.INCONCLUSIVE),
        ([(Verdict.INCONCLUSIVE, Severity.KEY), (Verdict.FAIL, Severity.INFO)], Verdict.INCONCLUSIVE),
        ([(Verdict.WARN, Severity.KEY), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
        ([(Verdict.WARN, Severity.INFO), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
        ([(Verdict.NO_BASELINE, Severity.KEY), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
        ([(Verdict.NO_BASELINE, Severity.INFO)], Verdict.WARN),
        ([(Verdict.FAIL, Severity.INFO), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
        ([(Verdict.ERROR, Severity.INFO), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
        ([(Verdict.INCONCLUSIVE, Severity.INFO), (Verdict.PASS, Severity.KEY)], Verdict.WARN),
    ],
)
def test_the_verdict_follows_the_product_s_precedence(checks, expected):
    assert aggregate_verdict([outcome(verdict, severity) for verdict, severity in checks]) == expected


def test_the_verdict_accepts_plain_strings_read_back_from_the_database():
    assert aggregate_verdict([outcome("fail", "key")]) == Verdict.FAIL
    assert aggregate_verdict([outcome("fail", "info")]) == Verdict.WARN


def test_threshold_expressions_are_plain_frozen_data():
    expression = parse_threshold("p(95)<400")
    assert isinstance(expression, ThresholdExpression)
    assert asdict(expression) == {
        "aggregation": "p(95)",
        "method": "p",
        "percentile": 95.0,
        "operator": "<",
        "limit": 400.0,
        "source": "p(95)<400",
    }
    with pytest.raises(AttributeError):
        expression.limit = 1.0


# Several key checks share one false-block rate (Holm)


def p95_and_p99(p95: float, p99: float) -> ResultSet:
    return results(duration({"p(95)": p95, "p(99)": p99}))


NOISY_RUNS = (100.0, 104.0, 97.0, 101.0, 99.0, 103.0, 96.0, 102.0, 98.0, 100.5)


def test_holm_keeps_a_change_that_is_significant_alone_from_blocking_in_a_family():
    p95 = relative(aggregation="p(95)", warn_pct=None, fail_pct=10.0, floor=0.0)
    p99 = relative(aggregation="p(99)", warn_pct=None, fail_pct=10.0, floor=0.0)
    baseline = BaselineValue(100.0, run_values=NOISY_RUNS)
    data = p95_and_p99(112.0, 100.0)
    alone = evaluate_relative(p95, data, baseline, alpha=0.01)
    # Pick the rate between the p-value alone and twice it: significant alone, not for two checks.
    alpha = alone.p_value * 1.5
    assert evaluate_relative(p95, data, baseline, alpha=alpha).verdict == Verdict.FAIL
    family = evaluate_relatives([(p95, baseline), (p99, baseline)], data, alpha=alpha)
    assert family[0].verdict == Verdict.WARN
    assert family[0].p_value == pytest.approx(2 * alone.p_value)
    assert f"after Holm over 2 key checks; {alone.p_value:.2g} alone" in family[0].reason
    assert family[1].verdict == Verdict.PASS


def test_holm_leaves_info_checks_alone_and_a_clear_change_still_blocks():
    p95 = relative(aggregation="p(95)", warn_pct=None, fail_pct=10.0, floor=0.0)
    p99 = relative(aggregation="p(99)", warn_pct=None, fail_pct=10.0, floor=0.0, severity=Severity.INFO)
    baseline = BaselineValue(100.0, run_values=NOISY_RUNS)
    family = evaluate_relatives([(p95, baseline), (p99, baseline)], p95_and_p99(160.0, 100.0), alpha=0.01)
    assert family[0].verdict == Verdict.FAIL
    assert "Holm" not in family[0].reason  # one key check: no family
    assert family[0].p_value == evaluate_relative(p95, p95_and_p99(160.0, 100.0), baseline).p_value


# Gate-run mode: a rule decided on paired A/B repetitions


def ab_check(verdict, estimate=14.0, low=11.0, high=17.0):
    return ABCheck(
        key="http_req_duration p(95)",
        verdict=verdict,
        pairs=6,
        estimate_pct=estimate,
        low_pct=low,
        high_pct=high,
        threshold_pct=10.0,
        p_value=0.015,
        reference=20.0,
        candidate=22.8,
    )


@pytest.mark.parametrize(
    ("verdict", "expected", "words"),
    [
        ("fail", Verdict.FAIL, "wholly above the threshold"),
        ("pass", Verdict.PASS, "wholly below the threshold"),
        ("warn", Verdict.WARN, "a certain slowdown"),
        (None, Verdict.INCONCLUSIVE, "still undecided"),
    ],
)
def test_a_paired_check_reports_the_estimate_and_interval(verdict, expected, words):
    check = evaluate_paired(relative(), results(duration({"p(95)": 22.8})), ab_check(verdict))
    assert check.verdict == expected
    assert words in check.reason
    assert (
        "+14.0% over the reference in 6 ABBA pairs (interval +11.0% to +17.0%; fail above +10.0%)"
        in check.reason
    )
    assert (check.observed, check.baseline, check.change_pct) == (22.8, 20.0, 14.0)
    assert check.limit == pytest.approx(22.0)
