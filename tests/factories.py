"""Builders for tests that need numbers without running a tool (parsers are tested on real output)."""

from gates.results.base import COUNTER, RATE, TREND, ResultSet, Series


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
