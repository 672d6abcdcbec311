"""The history chart: drawn on the server, shown to those who may see the project."""

import xml.etree.ElementTree as ET

import pytest
from django.urls import reverse

from gates.audit import Actor
from gates.charts import Band, Point, history_svg
from gates.models import Validation
from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation

SVG = "{http://www.w3.org/2000/svg}"


def test_the_chart_marks_verdicts_bypasses_the_baseline_band_and_the_limit():
    points = [
        Point("b-1", 200.0, "passed"),
        Point("b-2", 320.0, "blocked"),
        Point("b-3", 330.0, "bypassed"),
        Point("b-4", None, "failed"),
        Point("b-5", 205.0, "passed", current=True),
    ]
    svg = history_svg("http_req_duration p(95)", "ms", points, Band(190.0, 210.0, 200.0, 3), limit=220.0)
    root = ET.fromstring(svg)
    circles = root.findall(f"{SVG}circle")
    assert {c.get("class") for c in circles if c.get("class")} == {
        "point passed",
        "point blocked",
        "point bypassed",
        "bypass-marker",
    }
    assert len([c for c in circles if (c.get("class") or "").startswith("point")]) == 4  # b-4 has no value
    assert root.find(f"{SVG}rect[@class='baseline-band']") is not None
    assert root.find(f"{SVG}line[@class='limit']") is not None
    assert "baseline v3" in svg and "fail above 220.0" in svg


def test_an_empty_history_says_so():
    assert "No measurements yet" in history_svg("x", "ms", [Point("b-1", None, "queued")])


def test_text_in_the_chart_is_escaped():
    svg = history_svg("<script>", "ms", [Point("<b>&", 1.0, "passed")])
    assert "<script>" not in svg and "&lt;b&gt;&amp;" in svg
    ET.fromstring(svg)


@pytest.fixture
def evaluated(project, staging):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="a" * 40, actor=Actor("user", "x")
    )
    return validation_evaluate(validation=validation, results=make_results(), actor=Actor("user", "x"))


def test_the_api_links_a_chart_its_token_can_open(evaluated, project):
    api = Api(make_token(project, "ci")[1])
    document = api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging"}).json()
    chart = api.get(document["links"]["chart"])
    assert chart.status_code == 200 and chart["Content-Type"] == "image/svg+xml"


def test_the_chart_is_not_for_strangers(evaluated, other_project_api, client):
    url = reverse("validation-chart", args=[evaluated.pk])
    assert other_project_api.get(url).status_code == 404
    bad = Api("pg_not-a-real-token").get(url)
    assert bad.status_code == 401
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    assert Validation.objects.count() == 1
