"""Builders for tests that need numbers without running a tool (parsers are tested on real output)."""

import io
import json
from unittest import mock

from gates.results.base import COUNTER, RATE, TREND, ResultSet, Series
from gates.services import validation_request


def make_results(
    *, p95=200.0, avg=None, failed_rate=0.0, requests=1000, duration=10.0, extra=()
) -> ResultSet:
    """A k6-shaped result set with the headline numbers a test cares about."""
    results = ResultSet(tool="k6", format="k6-summary-export", duration_seconds=duration)
    avg = p95 * 0.7 if avg is None else avg
    results.add(
        Series(
            "http_req_duration",
            TREND,
            "ms",
            (),
            requests,
            {
                "avg": avg,
                "min": avg * 0.5,
                "med": avg,
                "max": p95 * 1.5,
                "p(90)": p95 * 0.95,
                "p(95)": p95,
                "p(99)": p95 * 1.2,
                "count": float(requests),
            },
        )
    )
    failed = round(failed_rate * requests)
    results.add(
        Series(
            "http_req_failed",
            RATE,
            "",
            (),
            requests,
            {"rate": failed_rate, "passes": float(failed), "fails": float(requests - failed)},
        )
    )
    results.add(
        Series(
            "http_reqs", COUNTER, "", (), requests, {"count": float(requests), "rate": requests / duration}
        )
    )
    for series in extra:
        results.add(series)
    return results


def make_validation(
    *,
    project,
    environment,
    build_id,
    git_hash,
    actor,
    scenario=None,
    test_config=None,
    deployment_context=None,
    branch="",
    staging_pass=False,
):
    """A queued validation, asked for the way CI asks (``validation_request``), without queueing
    its test run on the broker: (validation, created). ``staging_pass`` first makes the passing
    staging validation of the same git hash that production can require."""
    if staging_pass:
        staging = environment.project.environments.filter(name="staging").first()
        if staging is not None:
            validation_request(
                project=project,
                environment=staging,
                build_id=f"{build_id}~staging",
                git_hash=git_hash,
                actor=actor,
                results=io.BytesIO(PASSING_SUMMARY),
                results_format="k6-summary-export",
            )
    config = dict(test_config or {})
    if scenario is not None:
        config["scenario"] = scenario.name
    context = dict(deployment_context or {})
    if branch:
        context.setdefault("ref", branch)
    with mock.patch("gates.services.validations._queue_run"):
        return validation_request(
            project=project,
            environment=environment,
            build_id=build_id,
            git_hash=git_hash,
            actor=actor,
            test_config=config,
            deployment_context=context,
        )


PASSING_SUMMARY = json.dumps(
    {
        "metrics": {
            "http_req_duration": {"avg": 50.0, "med": 45.0, "p(90)": 80.0, "p(95)": 90.0, "max": 150.0},
            "http_req_failed": {"value": 0.0, "passes": 0, "fails": 1000},
            "http_reqs": {"count": 1000, "rate": 100.0},
        }
    }
).encode()
