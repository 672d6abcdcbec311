"""POST /api/ci-cd/performance/validate: shapes, uploads, idempotency, errors."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings

from gates.models import AuditEvent, IdempotencyKey, Run, Validation

URL = "/api/ci-cd/performance/validate"
SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"


def body(**overrides):
    document = {
        "project": "wedsync-web",
        "buildId": "gha-9876543-1",
        "environment": "staging",
        "gitHash": SHA,
        "deploymentContext": {
            "provider": "github",
            "repository": "acme/wedsync",
            "ref": "refs/pull/42/merge",
            "pullRequest": 42,
            "deploymentId": None,
            "deploymentUrl": None,
            "actor": "octocat",
            "runUrl": "https://github.com/acme/wedsync/actions/runs/9876543",
        },
    }
    document.update(overrides)
    return document


def assert_error(response, status, code):
    assert response.status_code == status, response.content
    data = response.json()
    assert set(data) == {"error", "detail", "fields"}
    assert data["error"] == code and data["detail"]
    return data


def test_uploaded_k6_results_are_evaluated_at_once(ci_api, k6_outputs, add_rule):
    add_rule("http_req_duration", threshold="p(95)<2000")
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    summary = json.loads(k6_outputs.summary_export.read_text())
    response = ci_api.post(URL, body(results=summary))

    assert response.status_code == 200, response.content
    data = response.json()
    assert set(data) == {
        "watch",
        "validationId",
        "project",
        "buildId",
        "environment",
        "gitHash",
        "scenario",
        "status",
        "verdict",
        "deploymentAllowed",
        "wouldBlock",
        "statusReason",
        "metrics",
        "checks",
        "blockingReasons",
        "notices",
        "comparison",
        "progress",
        "estimatedCompletion",
        "createdAt",
        "startedAt",
        "finishedAt",
        "links",
    }
    assert (data["status"], data["verdict"], data["deploymentAllowed"]) == ("passed", "warn", True)
    assert data["metrics"]["http_req_duration"]["p(95)"] == pytest.approx(
        summary["metrics"]["http_req_duration"]["p(95)"]
    )
    assert set(data["metrics"]["http_req_failed"]) == {"rate"}
    assert data["metrics"]["http_reqs"]["count"] == summary["metrics"]["http_reqs"]["count"]
    assert [c["kind"] for c in data["checks"]] == ["load", "absolute", "relative"]
    check = data["checks"][1]
    assert set(check) == {
        "rule",
        "kind",
        "severity",
        "metric",
        "aggregation",
        "verdict",
        "observed",
        "baseline",
        "limit",
        "changePct",
        "pValue",
        "reason",
    }
    assert data["checks"][2]["verdict"] == "no_baseline"
    assert data["links"]["status"] == (
        "/api/ci-cd/performance/status/gha-9876543-1?project=wedsync-web&environment=staging"
    )
    assert data["links"]["admin"].endswith(f"/gates/validation/{data['validationId']}/change/")
    validation = Validation.objects.get()
    assert validation.branch == "refs/pull/42/merge"
    assert validation.deployment_context["pullRequest"] == 42


def test_a_build_over_its_limit_is_blocked_with_reasons(ci_api, k6_outputs, add_rule):
    add_rule("http_req_duration", threshold="p(95)<1")
    response = ci_api.post(URL, body(results=json.loads(k6_outputs.summary_export.read_text())))
    data = response.json()
    assert (data["status"], data["verdict"], data["deploymentAllowed"], data["wouldBlock"]) == (
        "blocked",
        "fail",
        False,
        True,
    )
    assert len(data["blockingReasons"]) == 1 and "above the limit 1 ms" in data["blockingReasons"][0]


def test_raw_k6_output_can_be_uploaded_as_a_file_part(ci_api, k6_outputs, add_rule):
    add_rule("http_req_duration{name:rsvp}", threshold="p(95)<2000")
    raw = k6_outputs.ndjson.read_bytes()
    response = ci_api.client.post(
        URL,
        {
            "request": json.dumps(body()),
            "results": SimpleUploadedFile("raw.ndjson", raw, content_type="application/octet-stream"),
        },
        format="multipart",
    )

    assert response.status_code == 200, response.content
    data = response.json()
    assert data["status"] == "passed"
    rsvp = next(c for c in data["checks"] if c["metric"] == "http_req_duration{name:rsvp}")
    assert rsvp["verdict"] == "pass" and rsvp["observed"] > 0
    assert Run.objects.get().results_format == "k6-ndjson"


def test_without_results_the_validation_is_queued(ci_api):
    response = ci_api.post(URL, body(testConfig={"scenario": "guest-list", "vus": 5, "duration": "20s"}))
    assert response.status_code == 202
    data = response.json()
    assert (data["status"], data["verdict"], data["deploymentAllowed"]) == ("queued", None, None)
    assert Validation.objects.get().test_config == {"scenario": "guest-list", "vus": 5, "duration": "20s"}


def test_repeating_a_build_returns_the_same_validation(ci_api):
    first = ci_api.post(URL, body())
    second = ci_api.post(URL, body(gitHash="a" * 40))
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["validationId"] == second.json()["validationId"]
    assert Validation.objects.count() == 1
    assert AuditEvent.objects.filter(action="validation.requested").count() == 1


def test_an_idempotency_key_reused_with_another_body_is_refused(ci_api):
    first = ci_api.post(URL, body(), HTTP_IDEMPOTENCY_KEY="key-1")
    again = ci_api.post(URL, body(), HTTP_IDEMPOTENCY_KEY="key-1")
    assert again.json()["validationId"] == first.json()["validationId"]

    changed = ci_api.post(URL, body(buildId="gha-other"), HTTP_IDEMPOTENCY_KEY="key-1")
    assert_error(changed, 422, "idempotency_key_reused")
    assert Validation.objects.count() == 1 and IdempotencyKey.objects.count() == 1


def test_load_beyond_the_scenario_limits_is_capped_and_says_so(ci_api, scenario):
    response = ci_api.post(URL, body(testConfig={"vus": 500, "duration": "2h"}))
    assert response.status_code == 202
    config = Validation.objects.get().test_config
    assert config["vus"] == scenario.max_vus and config["duration"] == f"{scenario.max_duration_seconds}s"
    assert config["capped"]["vus"] == {"requested": 500, "allowed": scenario.max_vus}


@pytest.mark.parametrize("duration", ["0s", "1s", "0", "4s"])
def test_a_test_shorter_than_the_scenario_minimum_is_refused_naming_the_duration(ci_api, scenario, duration):
    # The fixture's scenario runs 5 s: shorter than that would let CI skip the gate.
    response = ci_api.post(URL, body(testConfig={"duration": duration, "vus": 1}))
    data = assert_error(response, 400, "invalid")
    assert "testConfig.duration" in data["fields"], data
    assert not Validation.objects.exists()


def test_a_long_scenario_may_be_shortened_to_ten_seconds_and_no_further(ci_api, scenario):
    scenario.duration_seconds = 60
    scenario.save()
    refused = ci_api.post(URL, body(testConfig={"duration": "9s"}))
    assert "testConfig.duration" in assert_error(refused, 400, "invalid")["fields"]
    accepted = ci_api.post(URL, body(testConfig={"duration": "10s"}))
    assert accepted.status_code == 202, accepted.content
    assert Validation.objects.get().test_config["duration"] == "10s"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gitHash": "not-a-sha"}, "gitHash"),
        ({"buildId": "has spaces"}, "buildId"),
        ({"environment": "qa"}, "environment"),
        ({"buildIdd": "typo"}, "buildIdd"),
        ({"testConfig": {"scenario": "guest-list", "threshold": {}}}, "testConfig.threshold"),
        ({"testConfig": {"vus": 0}}, "testConfig.vus"),
        ({"testConfig": {"scenario": "checkout"}}, "testConfig.scenario"),
        ({"testConfig": {"thresholds": {"http_req_duration": ["p(95)<400ms"]}}}, "testConfig.thresholds"),
        ({"testConfig": {"targetUrl": "http://169.254.169.254/latest"}}, "testConfig.targetUrl"),
        ({"testConfig": {"targetUrl": "file:///etc/passwd"}}, "testConfig.targetUrl"),
        ({"testConfig": {"duration": "soon"}}, "testConfig.duration"),
        ({"deploymentContext": {"provider": "github", "sha": "x"}}, "deploymentContext.sha"),
        ({"results": {"metrics": {"http_reqs": {"count": "many"}}}}, "results"),
        ({"resultsFormat": "csv"}, "resultsFormat"),
    ],
)
def test_bad_input_gets_a_400_naming_the_field_and_writes_nothing(ci_api, overrides, field):
    response = ci_api.post(URL, body(**overrides))
    data = assert_error(response, 400, "invalid")
    assert field in data["fields"], data
    assert not Validation.objects.exists()
    assert not AuditEvent.objects.filter(action__startswith="validation").exists()


def test_a_body_that_is_not_json_is_malformed(ci_api):
    response = ci_api.client.post(URL, "{not json", content_type="application/json")
    assert_error(response, 400, "malformed")


def test_an_unsupported_media_type_is_415(ci_api):
    response = ci_api.client.post(URL, "project=wedsync-web", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=2048)
def test_a_json_body_over_the_limit_is_413(ci_api):
    response = ci_api.post(URL, body(results={"metrics": {"padding": "x" * 4096}}))
    data = assert_error(response, 413, "too_large")
    assert "multipart" in data["detail"]
    assert not Validation.objects.exists()


@override_settings(PERFGATE_UPLOAD_MAX_BYTES=10_000)
def test_an_upload_over_the_limit_is_413(ci_api, k6_outputs):
    response = ci_api.client.post(
        URL,
        {
            "request": json.dumps(body()),
            "results": SimpleUploadedFile("raw.ndjson", k6_outputs.ndjson.read_bytes()),
        },
        format="multipart",
    )
    assert_error(response, 413, "too_large")
    assert not Validation.objects.exists()


def test_a_multipart_request_with_unknown_parts_is_refused(ci_api):
    response = ci_api.client.post(URL, {"request": json.dumps(body()), "extra": "x"}, format="multipart")
    data = assert_error(response, 400, "invalid")
    assert "extra" in data["fields"]


def test_the_links_are_absolute_when_a_base_url_was_given(ci_api, settings):
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    settings.PERFGATE_BASE_URL_GIVEN = True

    data = ci_api.post(URL, body()).json()

    assert data["links"]["status"] == (
        "https://perfgate.example.com/api/ci-cd/performance/status/gha-9876543-1"
        "?project=wedsync-web&environment=staging"
    )
    assert all(link.startswith("https://perfgate.example.com/") for link in data["links"].values())
