"""What a validation keeps and links to: the report stored when it is decided (headline metrics
and the explained checks, in the API's shape) and the addresses of its pages. The API's
serializers (``gates.api``) are the one definition of the documents built from these.
"""

from __future__ import annotations

import functools
import math
from urllib.parse import urlencode

from django.conf import settings
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


def public_url(path: str) -> str:
    """``path`` under ``PERFGATE_BASE_URL`` when that was given (in the environment or .env), else
    the path itself: the setting's default only guesses where a development server listens, and an
    API client that called us knows better than that guess."""
    if not settings.PERFGATE_BASE_URL_GIVEN:
        return path
    return settings.PERFGATE_BASE_URL + path


def validation_links(validation, *, public: bool = False) -> dict:
    """Where CI, ops and people reading a report find a validation: paths, or with ``public`` the
    links the API answers with (absolute when ``PERFGATE_BASE_URL`` was given, ``public_url``)."""
    links = _links(
        validation.project.slug, validation.environment.name, validation.build_id, str(validation.pk)
    )
    return {name: public_url(path) if public else path for name, path in links.items()}


@functools.lru_cache(maxsize=4096)
def _links(project: str, environment: str, build_id: str, validation_id: str) -> dict:
    scope = urlencode({"project": project, "environment": environment})
    return {
        "status": f"{reverse('api:status', args=[build_id])}?{scope}",
        "regression": f"{reverse('api:regression')}?{scope}&{urlencode({'buildId': build_id})}",
        "admin": reverse("admin:gates_validation_change", args=[validation_id]),
        "chart": reverse("validation-chart", args=[validation_id]),
    }


# How many of a watch's notices its document shows, newest first: enough to see what happened
# lately; the admin lists them all.
WATCH_NOTICES_SHOWN = 5


def watch_document(watch) -> dict:
    """A watch as CI and ``status`` show it (``gates.api.WatchSerializer`` describes it): its
    state, policy, probe counters, the probe baseline's source, the last probe, the rollback
    and the latest notices. Reads the last probe and the notices (two queries); the rollback
    and the target it goes back to come with ``watch`` when it was fetched with them."""
    validation = watch.validation
    last_probe = watch.probes.order_by("-number").first()
    notices = watch.notices.order_by("-created_at", "-pk")[:WATCH_NOTICES_SHOWN]
    rollback = getattr(watch, "rollback", None)
    return {
        "watchId": watch.pk,
        "validationId": str(validation.pk),
        "project": watch.project.slug,
        "environment": watch.environment.name,
        "buildId": validation.build_id,
        "state": watch.state,
        "stateReason": watch.state_reason,
        "source": watch.source,
        "deploymentId": watch.deployment_id,
        "targetUrl": watch.target_url,
        "startedAt": watch.created_at,
        "nextProbeAt": watch.next_probe_at if watch.is_active else None,
        "endsAt": watch.ends_at,
        "finishedAt": watch.finished_at,
        "dryRun": watch.dry_run,
        "wouldRollBack": watch.would_roll_back,
        "policy": dict(watch.policy or {}),
        "probes": {
            "run": watch.probes_run,
            "failures": watch.failures,
            "consecutiveFailures": watch.consecutive_failures,
            "inconclusive": watch.inconclusives,
            "errors": watch.errors,
            "consecutiveErrors": watch.consecutive_errors,
        },
        "baseline": _baseline_source(watch),
        "lastProbe": None
        if last_probe is None
        else {
            "number": last_probe.number,
            "trigger": last_probe.trigger,
            "outcome": last_probe.outcome,
            "reason": last_probe.reason,
            "finishedAt": last_probe.finished_at,
        },
        "rollback": None
        if rollback is None
        else {
            "state": rollback.state,
            "trigger": rollback.trigger,
            "via": rollback.via,
            "targetBuildId": rollback.target_validation.build_id if rollback.target_validation_id else None,
            "reason": rollback.reason,
            "detail": rollback.detail,
            "decidedBy": rollback.decided_by,
            "finishedAt": rollback.finished_at,
        },
        "notices": [
            {"level": notice.level, "title": notice.title, "createdAt": notice.created_at}
            for notice in notices
        ],
    }


def _baseline_source(watch) -> str:
    """Where the watch's probe baseline comes from, in a sentence."""
    if watch.baseline_source:
        return watch.baseline_source
    if watch.baseline_url:
        return f"the previous deployment ({watch.baseline_url}), probed before the first probe"
    return "none: no earlier healthy watch and no previous deployment to probe"
