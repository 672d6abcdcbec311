"""Reads that take more than one query: which rules apply to a validation, and what a results
parser must compute for them."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q

from gates import rules
from gates.models import Environment, Project, Scenario, ThresholdRule, Validation


@dataclass(frozen=True)
class AppliedRule:
    """A rule as evaluated: the pure spec, and the configured row it came from (None for a rule
    the request added)."""

    spec: rules.AbsoluteRule | rules.RelativeRule
    rule: ThresholdRule | None = None


def scenario_for(project: Project, name: str | None) -> Scenario | None:
    """The named scenario of a project, or its default one when no name is given."""
    scenarios = Scenario.objects.filter(project=project)
    if name:
        return scenarios.filter(name=name).first()
    return scenarios.filter(is_default=True).first()


def configured_rules(environment: Environment, scenario: Scenario) -> list[ThresholdRule]:
    """Rules of the scenario that apply to this environment (no environments listed: all of them)."""
    return list(
        ThresholdRule.objects.filter(scenario=scenario)
        .filter(Q(environments=environment) | Q(environments__isnull=True))
        .distinct()
        .order_by("id")
    )


def request_rules(test_config: dict) -> list[rules.AbsoluteRule]:
    """Absolute rules a request adds through ``testConfig.thresholds`` ({metric: [expression]}).

    They are always ``key`` and only ever add checks, so a request can tighten what ops
    configured but never loosen it. Raises RuleSyntaxError for a bad one.
    """
    extra = []
    for metric, expressions in (test_config.get("thresholds") or {}).items():
        for expression in expressions:
            selector, threshold = rules.validate_absolute_rule(metric, expression)
            extra.append(
                rules.AbsoluteRule(
                    label=f"{selector}: {threshold} (request)",
                    selector=selector,
                    threshold=threshold,
                    severity=rules.Severity.KEY,
                )
            )
    return extra


def validation_rules(validation: Validation) -> list[AppliedRule]:
    """Every rule that decides this validation: configured ones first, then the request's."""
    applied = []
    if validation.scenario_id:
        for rule in configured_rules(validation.environment, validation.scenario):
            applied.append(AppliedRule(spec=rule.to_spec(), rule=rule))
    applied.extend(AppliedRule(spec=spec) for spec in request_rules(validation.test_config))
    return applied


def parser_needs(applied: list[AppliedRule]) -> tuple[list[str], list[float]]:
    """The submetrics and extra percentiles a raw-results parser must compute for these rules."""
    submetrics: set[str] = set()
    percentiles: set[float] = set()
    for item in applied:
        spec = item.spec
        if spec.selector.tags:
            submetrics.add(str(spec.selector))
        aggregation = spec.threshold.aggregation if isinstance(spec, rules.AbsoluteRule) else spec.aggregation
        percentile = rules.percentile_of(aggregation)
        if percentile is not None:
            percentiles.add(percentile)
    return sorted(submetrics), sorted(percentiles)


SUMMARY_METRICS = {
    "http_req_duration": ("avg", "med", "p(95)", "p(99)"),
    "http_req_failed": ("rate",),
    "http_reqs": ("count", "rate"),
}


def validation_metrics(validation: Validation) -> dict[str, dict[str, float]]:
    """The headline numbers of the validation's latest run, plus every series a check looked at."""
    run = validation.runs.order_by("-created_at").first()
    if run is None:
        return {}
    checked = set(validation.checks.exclude(metric="").values_list("metric", flat=True))
    metrics: dict[str, dict[str, float]] = {}
    for series, aggregation, value in run.observations.filter(
        Q(series__in=list(SUMMARY_METRICS)) | Q(series__in=checked)
    ).values_list("series", "aggregation", "value"):
        wanted = SUMMARY_METRICS.get(series)
        if wanted is None or aggregation in wanted or series in checked:
            metrics.setdefault(series, {})[aggregation] = value
    return metrics


def validation_checks(validation: Validation) -> list[dict]:
    """Check results in the API's shape, in evaluation order."""
    return [
        {
            "rule": check.label,
            "kind": check.kind,
            "severity": check.severity,
            "metric": check.metric,
            "aggregation": check.aggregation,
            "verdict": check.verdict,
            "observed": check.observed,
            "baseline": check.baseline_value,
            "limit": check.limit,
            "changePct": None if check.change_pct is None else round(check.change_pct, 2),
            "pValue": check.p_value,
            "reason": check.reason,
        }
        for check in validation.checks.order_by("position")
    ]
