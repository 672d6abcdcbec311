"""What a validation keeps and links to: the report stored when it is decided (headline metrics
and the explained checks, in the API's shape) and the addresses of its pages. The API's
serializers (``gates.api``) are the one definition of the documents built from these.
"""

from __future__ import annotations

import functools
import math
from urllib.parse import urlencode

from django.urls import reverse

SUMMARY_METRICS = {
    "http_req_duration": ("avg", "med", "p(95)", "p(99)"),
    "http_req_failed": ("rate",),
    "http_reqs": ("count", "rate"),
}


def report_of(results, outcomes, notices=(), comparison=None) -> dict:
    """What a validation shows about its run, computed once when it is decided: the headline
    numbers plus every series a check looked at, the checks in the API's shape, the notices every
    check table shows above the checks (e.g. "relative rules are not active: …"), and in gate-run
    mode the A/B comparison (``comparison``: a document, or None)."""
    checked = {outcome.metric for outcome in outcomes if outcome.metric}
    metrics: dict[str, dict[str, float]] = {}
    for series in results.series.values():
        wanted = SUMMARY_METRICS.get(series.key)
        if wanted is None and series.key not in checked:
            continue
        values = {
            aggregation: value
            for aggregation, value in series.values.items()
            if (series.key in checked or aggregation in wanted) and math.isfinite(value)
        }
        if values:
            metrics[series.key] = values
    checks = [
        {
            "rule": outcome.label,
            "kind": outcome.kind,
            "severity": str(outcome.severity),
            "metric": outcome.metric,
            "aggregation": outcome.aggregation or "",
            "verdict": str(outcome.verdict),
            "observed": outcome.observed,
            "baseline": outcome.baseline,
            "limit": outcome.limit,
            "changePct": None if outcome.change_pct is None else round(outcome.change_pct, 2),
            "pValue": outcome.p_value,
            "reason": outcome.reason,
        }
        for outcome in outcomes
    ]
    report = {"metrics": metrics, "checks": checks, "notices": list(notices)}
    if comparison is not None:
        report["comparison"] = comparison
    return report


def summary_metrics(series_values) -> dict:
    """{series: {aggregation: value}} of the headline series, from (series, aggregation, value)."""
    metrics: dict = {}
    for series, aggregation, value in series_values:
        if series in SUMMARY_METRICS:
            metrics.setdefault(series, {})[aggregation] = value
    return metrics


def validation_links(validation) -> dict:
    """Where CI, ops and people reading a report find a validation (paths, not absolute URLs)."""
    return dict(
        _links(validation.project.slug, validation.environment.name, validation.build_id, str(validation.pk))
    )


@functools.lru_cache(maxsize=4096)
def _links(project: str, environment: str, build_id: str, validation_id: str) -> dict:
    scope = urlencode({"project": project, "environment": environment})
    return {
        "status": f"{reverse('api:status', args=[build_id])}?{scope}",
        "regression": f"{reverse('api:regression')}?{scope}&{urlencode({'buildId': build_id})}",
        "admin": reverse("admin:gates_validation_change", args=[validation_id]),
        "chart": reverse("validation-chart", args=[validation_id]),
    }
