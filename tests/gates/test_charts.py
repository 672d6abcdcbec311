"""The charts: drawn on the server, with the numbers the decision used, no text cut off, the
numbers in words, and shown only to those who may see the project."""

import math
import re
import xml.etree.ElementTree as ET

import pytest
from django.contrib.auth.models import Group
from django.urls import reverse
from guardian.shortcuts import assign_perm

from baselines import stats
from gates import selectors
from gates.audit import Actor
from gates.charts import (
    ABInterval,
    BaselineRuns,
    Point,
    PredictionBand,
    ProbeBand,
    ProbePoint,
    Quantile,
    QuantileRange,
    distribution_svg,
    distribution_text,
    fit,
    history_svg,
    history_text,
    probe_svg,
)
from gates.loadtest.ab import ABCheck, ABDecision
from gates.models import Validation
from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation

SVG = "{http://www.w3.org/2000/svg}"
ACTOR = Actor("user", "x")

# The test's own estimate of a glyph box, independent of the chart code's: 0.6 em a character
# (0.65 bold), rising 0.8 em above the baseline and 0.25 em below it.
CHAR_EM, BOLD_EM, ASCENT, DESCENT = 0.6, 0.65, 0.8, 0.25


def text_boxes(root: ET.Element):
    """Every ``<text>`` with the corners of its estimated box, rotation applied."""
    font_size = float(root.get("font-size", "16"))
    for element in root.iter(f"{SVG}text"):
        content = element.text or ""
        size = float(element.get("font-size", font_size))
        width = len(content) * size * (BOLD_EM if element.get("font-weight") else CHAR_EM)
        x, y = float(element.get("x")), float(element.get("y"))
        anchor = element.get("text-anchor", "start")
        left = x - {"start": 0, "middle": width / 2, "end": width}[anchor]
        corners = [(cx, cy) for cx in (left, left + width) for cy in (y - ASCENT * size, y + DESCENT * size)]
        rotation = re.fullmatch(r"rotate\(([-\d.]+) ([-\d.]+) ([-\d.]+)\)", element.get("transform") or "")
        if rotation:
            angle, ox, oy = (float(value) for value in rotation.groups())
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            corners = [
                (ox + (cx - ox) * cos - (cy - oy) * sin, oy + (cx - ox) * sin + (cy - oy) * cos)
                for cx, cy in corners
            ]
        yield content, corners


def parsed(svg: str) -> ET.Element:
    """The chart, parsed, after checking what every chart must be: an image with a title and a
    description, and every text inside the picture."""
    root = ET.fromstring(svg)
    assert root.get("role") == "img"
    assert [child.tag for child in root][:2] == [f"{SVG}title", f"{SVG}desc"]
    _, _, width, height = (float(value) for value in root.get("viewBox").split())
    for content, corners in text_boxes(root):
        for cx, cy in corners:
            assert 0 <= cx <= width and 0 <= cy <= height, (
                f"{content!r} leaves the picture at ({cx:.0f}, {cy:.0f})"
            )
    return root


def desc(root: ET.Element) -> str:
    return root.find(f"{SVG}desc").text


def y_of(root: ET.Element):
    """The value axis read back from the picture: value → y, from the grid's tick labels."""
    ticks = []
    for element in root.iter(f"{SVG}text"):
        if element.get("text-anchor") == "end" and not element.get("transform"):
            try:
                ticks.append((float(element.text.replace(",", "")), float(element.get("y")) - 4))
            except ValueError:
                continue
    (v0, y0), (v1, y1) = ticks[0], ticks[-1]
    return lambda value: y0 + (value - v0) * (y1 - y0) / (v1 - v0)


def classes(root: ET.Element, tag: str) -> list[str]:
    return [element.get("class") for element in root.iter(f"{SVG}{tag}") if element.get("class")]


LONG = "build-" + "x" * 190 + "-tail"  # 200 characters
NOISE = (200.0, 204.0, 197.0, 210.0, 199.0, 202.0, 195.0, 206.0)


def noise_band(values=NOISE) -> PredictionBand:
    return PredictionBand(low=185.0, high=222.0, false_block_rate=0.02, runs=len(values))


EDGE_CASES = {
    "no baseline run": {
        "points": [Point("b-1", 200.0, "passed"), Point("b-2", 230.0, "passed", current=True)]
    },
    "one baseline run": {
        "points": [Point("b-1", 200.0, "passed"), Point("b-2", 250.0, "blocked", current=True)],
        "baseline": BaselineRuns(1, 200.0, (200.0,)),
        "limit": 220.0,
    },
    "a bypassed point": {
        "points": [Point("b-1", 200.0, "passed"), Point("b-2", 330.0, "bypassed", current=True)],
        "baseline": BaselineRuns(3, 201.0, NOISE),
        "band": noise_band(),
        "limit": 221.1,
    },
    "very long build ids": {
        "points": [Point(f"{LONG}-{i}", 200.0 + i, "passed", current=i == 29) for i in range(30)],
        "baseline": BaselineRuns(3, 201.0, NOISE * 4),
        "band": noise_band(NOISE * 4),
        "limit": 221.1,
    },
    "all values equal": {
        "points": [Point(f"b-{i}", 100.0, "passed", current=i == 3) for i in range(4)],
        "baseline": BaselineRuns(2, 100.0, (100.0, 100.0, 100.0)),
        "band": PredictionBand(low=100.0, high=100.0, false_block_rate=0.02, runs=3),
        "limit": 110.0,
    },
    "a None value": {
        "points": [
            Point("b-1", 200.0, "passed"),
            Point("b-2", None, "failed"),
            Point("b-3", 201.0, "passed"),
        ],
        "baseline": BaselineRuns(1, 200.0, (200.0, 201.0)),
    },
    "huge values": {
        "points": [Point("b-1", 3.2e12, "passed"), Point("b-2", 4.1e12, "blocked", current=True)],
        "baseline": BaselineRuns(4, 3.1e12, (3.0e12, 3.1e12, 3.3e12)),
        "band": PredictionBand(low=2.5e12, high=3.9e12, false_block_rate=0.02, runs=3),
        "limit": 3.4e12,
    },
    "tiny values": {
        "points": [Point("b-1", 2.0e-7, "passed"), Point("b-2", 2.6e-7, "passed", current=True)],
        "baseline": BaselineRuns(2, 2.1e-7, (2.0e-7, 2.1e-7, 2.2e-7)),
        "band": PredictionBand(low=1.8e-7, high=2.4e-7, false_block_rate=0.02, runs=3),
    },
    "an A/B interval open above": {
        "points": [Point("b-1", 26.0, "passed"), Point("b-2", 54.0, "blocked", current=True)],
        "baseline": BaselineRuns(1, 26.5, (26.0, 27.0, 26.5)),
        "limit": 32.3,
        "interval": ABInterval(
            reference=26.9,
            estimate=53.5,
            low=45.3,
            high=None,
            level=0.9,
            pairs=5,
            change_pct=98.8,
            low_pct=68.5,
        ),
    },
}


@pytest.mark.parametrize("case", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_every_history_chart_keeps_its_text_inside_and_says_its_numbers(case):
    title = "http_req_duration p(95) — a-project-with-a-long-name/production/" + "checkout-" * 8
    root = parsed(history_svg(title, "ms", **case))
    assert root.find(f"{SVG}title").text == title
    words = desc(root)
    for point in case["points"]:
        assert point.label in words
    if case.get("limit") is not None:
        assert f"Fail threshold: {case['limit']:,.1f} ms." in words or "Fail threshold: 3.4e+12 ms." in words
    baseline = case.get("baseline")
    if baseline is None:
        assert "No baseline" in words and not classes(root, "circle").count("baseline-run")
    else:
        assert classes(root, "circle").count("baseline-run") == len(baseline.runs)
        assert f"over {len(baseline.runs)} runs" in words


def test_a_long_build_id_is_shortened_with_the_whole_id_in_its_tooltip():
    root = parsed(history_svg("t", "ms", **EDGE_CASES["very long build ids"]))
    labels = [g for g in root.iter(f"{SVG}g") if (g.findtext(f"{SVG}title") or "").startswith(LONG)]
    assert labels, "every shortened label carries its whole id"
    for group in labels:
        shown = group.find(f"{SVG}text").text
        assert "…" in shown and shown.endswith(group.findtext(f"{SVG}title")[-4:])
    # The current build is always labelled, in bold.
    current = [g.find(f"{SVG}text") for g in labels if g.findtext(f"{SVG}title") == f"{LONG}-29"]
    assert current and current[0].get("font-weight") == "600"


def test_the_history_marks_verdicts_bypasses_the_baseline_runs_and_the_band():
    root = parsed(history_svg("p95", "ms", **EDGE_CASES["a bypassed point"]))
    assert classes(root, "circle") == ["baseline-run"] * len(NOISE) + [
        "point passed",
        "point bypassed",
        "bypass-marker",
    ]
    y = y_of(root)
    band = root.find(f"{SVG}rect[@class='noise-band']")
    assert float(band.get("y")) == pytest.approx(y(222.0), abs=0.6)
    assert float(band.get("y")) + float(band.get("height")) == pytest.approx(y(185.0), abs=0.6)
    assert float(root.find(f"{SVG}line[@class='limit']").get("y1")) == pytest.approx(y(221.1), abs=0.6)
    assert (
        "Prediction band (history mode, false-block rate 0.02 a side, 8 runs): 185.0 ms to 222.0 ms"
        in desc(root)
    )
    assert "a run above 222.0 ms is beyond the run-to-run noise" in desc(root)


def test_one_baseline_run_has_no_band_and_says_the_threshold_alone_decided():
    root = parsed(history_svg("p95", "ms", **EDGE_CASES["one baseline run"]))
    assert root.find(f"{SVG}rect[@class='noise-band']") is None
    assert "no noise model, the fail threshold alone decided" in desc(root)


def test_a_point_without_a_value_is_a_cross_on_the_axis_not_a_point_at_zero():
    root = parsed(history_svg("p95", "ms", **EDGE_CASES["a None value"]))
    assert len(root.findall(f".//{SVG}path[@class='missing-marker']")) == 1
    assert classes(root, "circle").count("point failed") == 0
    assert "b-2: no value, failed." in desc(root)


def test_an_open_ended_ab_interval_reaches_the_top_of_the_plot():
    root = parsed(history_svg("p95", "ms", **EDGE_CASES["an A/B interval open above"]))
    bar = root.find(f"{SVG}rect[@class='ab-interval']")
    grid_top = min(
        float(line.get("y1")) for line in root.findall(f"{SVG}line") if line.get("stroke") == "#eaeef2"
    )
    assert float(bar.get("y")) == pytest.approx(grid_top, abs=0.6)
    assert "90% interval +68.5% to unbounded" in desc(root)
    assert root.find(f"{SVG}rect[@class='noise-band']") is None


def test_an_empty_history_says_so():
    root = parsed(history_svg("x", "ms", [Point("b-1", None, "queued")]))
    assert "No measurements yet" in ET.tostring(root, encoding="unicode")


def test_text_in_the_chart_is_escaped():
    svg = history_svg("<script>", "ms", [Point("<b>&", 1.0, "passed")])
    assert "<script>" not in svg and "&lt;b&gt;&amp;" in svg
    parsed(svg)


def test_fit_keeps_both_ends_and_never_exceeds_the_width():
    assert fit("short", 100) == "short"
    shown = fit("a" * 50 + "END", 60)
    assert shown.endswith("END") and "…" in shown and len(shown) * 11 * 0.62 <= 60


QUANTILES = [
    Quantile(0, "min", 12.0),
    Quantile(50, "p50", 40.0),
    Quantile(90, "p90", 80.0),
    Quantile(95, "p95", 95.0),
    Quantile(99, "p99", 140.0),
    Quantile(100, "max", 420.0),
]


@pytest.mark.parametrize(
    "baseline",
    [
        [],
        [QuantileRange(q.level, q.label, q.value * 0.9, q.value * 0.8, q.value * 1.05) for q in QUANTILES],
        [QuantileRange(q.level, q.label, 1e12, 1e12, 1e12) for q in QUANTILES],
    ],
    ids=["no baseline", "a baseline", "huge and equal"],
)
def test_the_distribution_chart_keeps_its_text_inside_and_says_it_is_drawn_from_percentiles(baseline):
    root = parsed(distribution_svg("latency — " + "x" * 150, "ms", LONG, QUANTILES, baseline, 3, 12))
    words = desc(root)
    assert "Drawn from the stored percentiles, not from raw samples" in words
    assert "p95 95.0 ms" in words and "max 420.0 ms" in words
    assert len(classes(root, "circle")) == len(QUANTILES)
    assert (root.find(f"{SVG}polygon[@class='baseline-range']") is not None) == bool(baseline)
    if baseline:
        assert "Baseline v3, median over 12 runs" in words


def test_a_run_without_percentiles_says_so():
    root = parsed(distribution_svg("latency", "ms", "b-1", []))
    assert "No percentiles stored for this run" in ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("count", [0, 1, 3, 120])
def test_the_probe_chart_shares_the_axis_and_keeps_its_text_inside(count):
    points = [ProbePoint(n, None if n % 7 == 0 else 100.0 + n, "inconclusive") for n in range(1, count + 1)]
    band = ProbeBand(low=90.0, high=130.0, median=110.0, count=3) if count else None
    root = parsed(probe_svg("http_req_duration{name:" + "x" * 120 + "} p(95)", "ms", points, band))
    assert (root.find(f"{SVG}rect[@class='baseline-band']") is not None) == bool(count)


# ---------------------------------------------------------------------------------------------
# The numbers come from the decision


@pytest.fixture
def history(project, staging, add_rule):
    """Eight passed runs of staging (each promoted: the baseline grows to eight runs), then a key
    relative rule on p(95): fail 10% above the baseline."""
    add_rule("http_req_duration", threshold="p(95)<100000")
    for index, p95 in enumerate(NOISE):
        validation, _ = make_validation(
            project=project, environment=staging, build_id=f"b-{index}", git_hash="a" * 40, actor=ACTOR
        )
        validation_evaluate(validation=validation, results=make_results(p95=p95), actor=ACTOR)
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10, floor=1)
    return staging


def evaluate(project, environment, build_id, p95, comparison=None) -> Validation:
    validation, _ = make_validation(
        project=project, environment=environment, build_id=build_id, git_hash="b" * 40, actor=ACTOR
    )
    return validation_evaluate(
        validation=validation, results=make_results(p95=p95), actor=ACTOR, comparison=comparison
    )


def test_the_history_chart_shows_the_limit_and_the_prediction_band_the_check_decided_with(project, history):
    validation = evaluate(project, history, "slow", 260.0)
    check = validation.checks.get(kind="relative")
    assert check.verdict == "fail"

    chart = selectors.chart_of(validation)

    assert chart["limit"] == check.limit
    assert chart["baseline"].runs == NOISE and chart["baseline"].centre == check.baseline_value
    model = stats.noise_model(NOISE)
    # The band's upper edge is where a run's p-value reaches the false-block rate.
    assert model.p_value(chart["band"].high) == pytest.approx(0.02)
    assert model.p_value(check.observed) < 0.02 and check.observed > chart["band"].high
    root = parsed(history_svg(**chart))
    y = y_of(root)
    assert float(root.find(f"{SVG}line[@class='limit']").get("y1")) == pytest.approx(y(check.limit), abs=0.6)
    assert float(root.find(f"{SVG}rect[@class='noise-band']").get("y")) == pytest.approx(
        y(chart["band"].high), abs=0.6
    )
    assert f"Fail threshold: {check.limit:,.1f} ms." in desc(root)
    # The same words for the page that shows the chart as an image.
    assert " ".join(history_text(**chart)) == desc(root)


def test_a_gate_run_shows_the_ab_interval_instead_of_the_prediction_band(project, history):
    decision = ABDecision(
        verdict="fail",
        pairs=6,
        checks=[
            ABCheck(
                key="http_req_duration p(95)",
                verdict="fail",
                pairs=6,
                estimate_pct=40.0,
                low_pct=25.0,
                high_pct=math.inf,
                threshold_pct=10.0,
                p_value=0.01,
                reference=200.0,
                candidate=280.0,
            )
        ],
    )
    validation = evaluate(project, history, "ab", 280.0, comparison=decision)

    chart = selectors.chart_of(validation)

    assert chart["band"] is None
    interval = chart["interval"]
    assert (interval.reference, interval.pairs, interval.high) == (200.0, 6, None)
    assert interval.low == pytest.approx(250.0) and interval.estimate == pytest.approx(280.0)
    assert chart["limit"] == pytest.approx(220.0)
    words = desc(parsed(history_svg(**chart)))
    assert "Decided side by side in 6 ABBA pairs: reference 200.0 ms, change +40.0%" in words


def test_the_distribution_of_a_run_is_its_stored_percentiles_against_the_baseline(project, history):
    validation = evaluate(project, history, "dist", 260.0)
    chart = selectors.distribution_of(validation)
    assert [q.label for q in chart["run"]] == ["min", "p50", "p90", "p95", "p99", "max"]
    assert {q.label: q.value for q in chart["run"]}["p95"] == 260.0
    p95 = next(q for q in chart["baseline"] if q.label == "p95")
    assert (p95.low, p95.high) == (min(NOISE), max(NOISE)) and chart["runs"] == len(NOISE)
    words = desc(parsed(distribution_svg(**chart)))
    assert "p95 260.0 ms" in words and " ".join(distribution_text(**chart)) == words


# ---------------------------------------------------------------------------------------------
# Who sees the charts


@pytest.fixture
def evaluated(project, staging):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=ACTOR
    )
    return validation_evaluate(validation=validation, results=make_results(), actor=ACTOR)


CHARTS = ["validation-chart", "validation-distribution-chart"]


def test_the_api_links_a_chart_its_token_can_open(evaluated, project):
    api = Api(make_token(project, "ci")[1])
    document = api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging"}).json()
    chart = api.get(document["links"]["chart"])
    assert chart.status_code == 200 and chart["Content-Type"] == "image/svg+xml"


@pytest.mark.parametrize("name", CHARTS)
def test_an_ops_session_of_the_project_gets_the_chart(evaluated, project, ops, client, name):
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.change_thresholds", ops, project)
    client.force_login(ops)
    response = client.get(reverse(name, args=[evaluated.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/svg+xml"
    parsed(response.content.decode())


@pytest.mark.parametrize("name", CHARTS)
def test_the_charts_are_not_for_strangers(evaluated, other_project_api, client, name):
    url = reverse(name, args=[evaluated.pk])
    assert other_project_api.get(url).status_code == 404
    assert Api("pg_not-a-real-token").get(url).status_code == 401
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
