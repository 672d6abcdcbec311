"""What a validation will run and check, resolved once: its scenario, its effective test config
(load capped by the scenario's limits, target checked against the allowlist) and its rules (the
configured ones, then those the request adds). Reads only; the services act on a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Q

from gates import rules
from gates.errors import ServiceError
from gates.models import Environment, Project, Scenario, ThresholdRule, Validation
from gates.targets import TargetRefused, ports_of, resolve_target
from gates.units import parse_duration


@dataclass(frozen=True)
class AppliedRule:
    """A rule as evaluated: the pure spec, and the configured row it came from (None for a rule
    the request added)."""

    spec: rules.AbsoluteRule | rules.RelativeRule
    rule: ThresholdRule | None = None


@dataclass(frozen=True)
class Plan:
    """Everything a validation needs before it is written: resolved once, used by every path."""

    scenario: Scenario
    test_config: dict
    rules: list[AppliedRule] = field(default_factory=list)

    @property
    def parser_needs(self) -> tuple[list[str], list[float]]:
        return parser_needs(self.rules)


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


def rules_for(environment: Environment, scenario: Scenario | None, test_config: dict) -> list[AppliedRule]:
    """Every rule that decides a validation: configured ones first, then the request's. A bad
    request threshold is the request's fault: a ServiceError naming the field."""
    applied = [
        AppliedRule(spec=rule.to_spec(), rule=rule)
        for rule in (configured_rules(environment, scenario) if scenario is not None else [])
    ]
    try:
        applied.extend(AppliedRule(spec=spec) for spec in request_rules(test_config))
    except rules.RuleSyntaxError as exc:
        raise ServiceError(str(exc), fields={"testConfig.thresholds": [str(exc)]}) from exc
    return applied


def validation_rules(validation: Validation) -> list[AppliedRule]:
    """The rules of a validation that exists (its scenario and test config are recorded)."""
    return rules_for(validation.environment, validation.scenario, validation.test_config)


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


def plan_of(validation: Validation) -> Plan:
    """The plan a validation was created with (its scenario and effective config are recorded)."""
    return Plan(
        scenario=validation.scenario, test_config=validation.test_config, rules=validation_rules(validation)
    )


def validation_plan(
    *, project: Project, environment: Environment, test_config: dict | None, extra_hosts=()
) -> Plan:
    """Resolve a request once: the scenario it names (or the project's default), its effective
    test config, and every rule. Raises ServiceError naming the field at fault."""
    requested = dict(test_config or {})
    scenario = scenario_for(project, requested.get("scenario"))
    if scenario is None:
        name = requested.get("scenario")
        detail = (
            f"Project {project.slug} has no scenario {name!r}."
            if name
            else f"Project {project.slug} has no default scenario; name one in testConfig.scenario."
        )
        raise ServiceError(detail, fields={"testConfig.scenario": [detail]})
    effective = effective_test_config(project, scenario, requested, extra_hosts=extra_hosts)
    return Plan(scenario=scenario, test_config=effective, rules=rules_for(environment, scenario, effective))


# The least load a request may ask for. Less would let CI skip the gate: k6 with "0s" measures
# nothing, and (before insufficient load blocked everywhere) a fail-open environment let that pass.
# A request may shorten a scenario's test, but not below the scenario's own duration or
# MIN_DURATION_SECONDS, whichever is less; a scenario registered shorter than that keeps its length.
MIN_DURATION_SECONDS = 10
MIN_VUS = 1


def min_duration_seconds(scenario: Scenario) -> int:
    """The shortest test a request may ask of this scenario, in seconds."""
    return min(scenario.duration_seconds, MIN_DURATION_SECONDS)


def effective_test_config(project: Project, scenario: Scenario, requested: dict, extra_hosts=()) -> dict:
    """The request's testConfig with its load capped by the scenario's limits and its target
    checked against the project's allowlist. The caps are recorded, so nobody wonders later.
    Less load than the floor (MIN_VUS, min_duration_seconds) is refused, never raised: a
    ServiceError naming the field."""
    config = {key: value for key, value in requested.items() if key not in ("capped", "extraHosts")}
    config["scenario"] = scenario.name
    if extra_hosts:
        # Allowed for this validation only (a Vercel deployment's own URL): recorded with it.
        config["extraHosts"] = sorted(set(extra_hosts))
    capped = {}
    if config.get("vus") is not None and config["vus"] < MIN_VUS:
        detail = f"At least {MIN_VUS} VU is needed to measure anything; got {config['vus']}."
        raise ServiceError(detail, fields={"testConfig.vus": [detail]})
    if config.get("vus") is not None and config["vus"] > scenario.max_vus:
        capped["vus"] = {"requested": config["vus"], "allowed": scenario.max_vus}
        config["vus"] = scenario.max_vus
    if config.get("duration") is not None:
        try:
            seconds = parse_duration(config["duration"])
        except ValueError as exc:
            raise ServiceError(str(exc), fields={"testConfig.duration": [str(exc)]}) from exc
        shortest = min_duration_seconds(scenario)
        if seconds < shortest:
            detail = (
                f"A test of {config['duration']} is too short to gate on: scenario {scenario.name} "
                f"needs at least {shortest}s."
            )
            raise ServiceError(detail, fields={"testConfig.duration": [detail]})
        if seconds > scenario.max_duration_seconds:
            capped["duration"] = {
                "requested": config["duration"],
                "allowed": f"{scenario.max_duration_seconds}s",
            }
            config["duration"] = f"{scenario.max_duration_seconds}s"
    for key, name in (("targetUrl", "Target URL"), ("referenceUrl", "Reference URL")):
        if config.get(key):
            try:
                resolve_target(
                    config[key],
                    [*project.allowed_hosts, *config.get("extraHosts", [])],
                    configured_ports=ports_of(scenario.target_url, scenario.reference_url),
                )
            except TargetRefused as exc:
                raise ServiceError(
                    f"{name} refused: {exc}.", fields={f"testConfig.{key}": [str(exc)]}
                ) from exc
    if capped:
        config["capped"] = capped
    return config
