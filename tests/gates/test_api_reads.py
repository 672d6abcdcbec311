"""status (with long-polling), history (filters, cursor pages), regression."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from gates import selectors
from gates.api import ValidationSerializer
from gates.models import Validation
from gates.services import validation_evaluate
from tests.factories import make_results, make_validation


def evaluated(project, environment, actor, build, p95=200.0, branch=""):
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build,
        git_hash="e" * 40,
        actor=actor,
        branch=branch,
    )
    return validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)


def test_status_returns_the_latest_validation_of_a_build(ci_api, project, staging, actor):
    validation = evaluated(project, staging, actor, "b-1")
    response = ci_api.get(
        "/api/ci-cd/performance/status/b-1", {"project": "wedsync-web", "environment": "staging"}
    )
    assert response.status_code == 200
    data = response.json()
    assert data["validationId"] == str(validation.pk) and data["status"] == "passed"
    assert data["deploymentAllowed"] is True


def test_status_of_an_unknown_build_is_404(ci_api, project):
    response = ci_api.get("/api/ci-cd/performance/status/nope", {"environment": "staging"})
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def assert_forbidden(response):
    assert response.status_code == 403, response.content
    data = response.json()
    assert set(data) == {"error", "detail", "fields"} and data["error"] == "permission_denied"


def test_a_staging_token_asking_for_a_production_status_is_forbidden_not_missing(
    staging_api, project, staging, production, actor
):
    evaluated(project, staging, actor, "b-stg")  # the staging pass production requires
    evaluated(project, production, actor, "b-prod")
    url = "/api/ci-cd/performance/status/b-prod"
    assert_forbidden(staging_api.get(url, {"project": "wedsync-web", "environment": "production"}))
    assert_forbidden(staging_api.get(url, {"environment": "production"}))
    # Named or not: a build validated only where the token may not look is forbidden too.
    assert_forbidden(staging_api.get(url, {"project": "wedsync-web"}))
    assert_forbidden(staging_api.get(url))


def test_a_staging_token_sees_the_staging_validation_of_a_build_also_validated_in_production(
    staging_api, project, staging, production, actor
):
    in_staging = evaluated(project, staging, actor, "b-both")
    evaluated(project, production, actor, "b-both")
    response = staging_api.get("/api/ci-cd/performance/status/b-both")
    assert response.status_code == 200, response.content
    assert response.json()["validationId"] == str(in_staging.pk)


def test_a_staging_token_gets_404_for_a_build_never_validated(staging_api, project):
    response = staging_api.get("/api/ci-cd/performance/status/nope")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_another_projects_token_gets_404_whatever_the_environment(
    other_project_api, project, staging, production, actor
):
    evaluated(project, staging, actor, "b-stg")
    evaluated(project, production, actor, "b-prod")
    url = "/api/ci-cd/performance/status/b-prod"
    for params in (
        {},
        {"environment": "production"},
        {"project": "wedsync-web", "environment": "production"},
    ):
        response = other_project_api.get(url, params)
        assert response.status_code == 404 and response.json()["error"] == "not_found", params


def test_status_without_wait_answers_at_once_while_queued(ci_api, project, staging, actor):
    make_validation(project=project, environment=staging, build_id="b-1", git_hash="e" * 40, actor=actor)
    started = time.monotonic()
    data = ci_api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging"}).json()
    assert data["status"] == "queued" and data["deploymentAllowed"] is None
    assert time.monotonic() - started < 1


def test_wait_gives_up_after_the_seconds_asked_for(ci_api, project, staging, actor):
    make_validation(project=project, environment=staging, build_id="b-1", git_hash="e" * 40, actor=actor)
    started = time.monotonic()
    data = ci_api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging", "wait": 1}).json()
    assert data["status"] == "queued"
    assert 0.9 <= time.monotonic() - started < 3


@pytest.mark.django_db(transaction=True)
def test_wait_returns_as_soon_as_the_validation_finishes(project, staging, actor, ci_api):
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="e" * 40, actor=actor
    )

    def finish_later():
        time.sleep(1.0)
        validation_evaluate(validation=validation, results=make_results(), actor=actor)
        connection.close()

    worker = threading.Thread(target=finish_later)
    worker.start()
    started = time.monotonic()
    data = ci_api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging", "wait": 20}).json()
    elapsed = time.monotonic() - started
    worker.join()
    assert data["status"] == "passed"
    assert 0.9 <= elapsed < 5


def test_wait_beyond_30_seconds_is_refused(ci_api, project):
    response = ci_api.get("/api/ci-cd/performance/status/b-1", {"environment": "staging", "wait": 31})
    assert response.status_code == 400 and "wait" in response.json()["fields"]


def test_history_pages_with_a_cursor_without_gaps_or_repeats(ci_api, project, staging, actor):
    builds = [f"b-{i}" for i in range(7)]
    for build in builds:
        evaluated(project, staging, actor, build)
    seen, url, pages = [], "/api/ci-cd/performance/history", 0
    params = {"environment": "staging", "limit": 3}
    while url:
        data = ci_api.get(url, params).json()
        seen += [item["buildId"] for item in data["results"]]
        url, params, pages = data["next"], None, pages + 1
    assert pages == 3
    assert seen == list(reversed(builds))


def test_history_pages_of_a_staging_token_are_full_however_production_is_interleaved(
    staging_api, project, staging, production, actor
):
    for i in range(3):
        evaluated(project, staging, actor, f"stg-{i}")
        for j in range(3):
            evaluated(project, production, actor, f"prod-{i}-{j}")
    pages, url, params = [], "/api/ci-cd/performance/history", {"limit": 2}
    while url:
        data = staging_api.get(url, params).json()
        pages.append([item["buildId"] for item in data["results"]])
        url, params = data["next"], None
    assert pages == [["stg-2", "stg-1"], ["stg-0"]]


def test_history_items_carry_their_metrics_and_filter_by_metric(ci_api, project, staging, actor):
    evaluated(project, staging, actor, "b-1", p95=123.0)
    everything = ci_api.get("/api/ci-cd/performance/history").json()["results"][0]
    assert everything["metrics"]["http_req_duration"]["p(95)"] == 123.0
    assert set(everything["metrics"]) == {"http_req_duration", "http_req_failed", "http_reqs"}

    one = ci_api.get("/api/ci-cd/performance/history", {"metric": "http_req_duration"}).json()["results"][0]
    assert set(one["metrics"]) == {"http_req_duration"}
    assert one["metrics"]["http_req_duration"]["count"] == 1000.0


def test_history_filters_by_environment_branch_and_time(ci_api, project, staging, production, actor):
    evaluated(project, staging, actor, "b-main", branch="refs/heads/main")
    evaluated(project, staging, actor, "b-pr", branch="refs/pull/1/merge")
    evaluated(project, production, actor, "b-prod", branch="refs/heads/main")
    Validation.objects.filter(build_id="b-main").update(created_at=timezone.now() - timedelta(days=3))

    def builds(**params):
        return [i["buildId"] for i in ci_api.get("/api/ci-cd/performance/history", params).json()["results"]]

    assert builds(environment="staging") == ["b-pr", "b-main"]
    assert builds(branch="refs/heads/main") == ["b-prod", "b-main"]
    assert builds(since=(timezone.now() - timedelta(days=1)).isoformat()) == ["b-prod", "b-pr"]


def test_a_forged_cursor_is_a_400(ci_api, project):
    response = ci_api.get("/api/ci-cd/performance/history", {"cursor": "bm9wZQ"})
    assert response.status_code == 400 and "cursor" in response.json()["fields"]


def test_regression_compares_every_metric_with_the_baseline(ci_api, project, staging, actor, add_rule):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10, floor=5)
    evaluated(project, staging, actor, "good", p95=200.0)
    evaluated(project, staging, actor, "slow", p95=300.0)
    data = ci_api.get(
        "/api/ci-cd/performance/regression", {"environment": "staging", "buildId": "slow"}
    ).json()

    assert data["baseline"]["version"] == 1 and data["baseline"]["runs"] == 1
    p95 = next(
        c for c in data["comparisons"] if (c["metric"], c["aggregation"]) == ("http_req_duration", "p(95)")
    )
    assert (p95["observed"], p95["baseline"], p95["changePct"]) == (300.0, 200.0, 50.0)
    assert p95["worse"] is True and p95["worseWhen"] == "up" and p95["verdict"] == "fail"
    throughput = next(
        c for c in data["comparisons"] if (c["metric"], c["aggregation"]) == ("http_reqs", "rate")
    )
    assert throughput["worseWhen"] == "down"


def test_the_fast_read_of_a_build_renders_the_same_document_as_the_orm(project, staging, actor):
    finished = evaluated(project, staging, actor, "b-1", p95=321.0)
    queued, _ = make_validation(
        project=project, environment=staging, build_id="b-2", git_hash="f" * 40, actor=actor
    )
    Validation.objects.filter(pk=queued.pk).update(
        status="running", progress={"elapsedSeconds": 1.5, "requests": 10, "requestRate": 6.7}
    )
    for validation in (finished, queued):
        fast = selectors.validation_for_build(project, validation.build_id, "staging")
        orm = Validation.objects.select_related("project", "environment", "scenario").get(pk=validation.pk)
        assert ValidationSerializer(fast).data == ValidationSerializer(orm).data
        assert fast.environment.fail_closed == orm.environment.fail_closed  # the rest loads when read
