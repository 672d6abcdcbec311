"""Configuration as code: ``perfgate.yaml`` → projects, environments, scenarios and rules.

The whole file is read and checked before anything is written; an invalid file is rejected with
a message naming its place (``projects[0].rules[2].threshold``) and nothing is applied. Applying
is idempotent: the same file twice changes nothing. Every change is audited with before and after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.db import transaction

from gates import rules
from gates.audit import Actor, audit_record
from gates.models import Environment, Project, Scenario, Severity, ThresholdRule
from gates.targets import TargetRefused, check_target_url
from gates.units import parse_duration

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
REPOSITORY = re.compile(r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

PROJECT_KEYS = {
    "slug",
    "name",
    "repository",
    "vercelProjectId",
    "allowedHosts",
    "environments",
    "scenarios",
    "rules",
}
ENVIRONMENT_KEYS = {"enforce", "failClosed", "requireStagingPass", "bypassApprovals", "autoBaseline"}
SCENARIO_KEYS = {
    "name",
    "tool",
    "script",
    "scriptText",
    "targetUrl",
    "vus",
    "duration",
    "maxVus",
    "maxDuration",
    "minRequests",
    "arrivalRate",
    "warmup",
    "default",
}
RULE_KEYS = {"scenario", "metric", "threshold", "aggregation", "relative", "severity", "environments"}
RELATIVE_KEYS = {"warnPct", "failPct", "floor", "direction"}


class ConfigError(ValueError):
    """An invalid configuration file; the message names the file and the place in it."""

    def __init__(self, source: str, place: str, message: str):
        self.source, self.place, self.message = source, place, message
        super().__init__(f"{source}: {place}: {message}" if place else f"{source}: {message}")


@dataclass
class Change:
    """One line of the diff ``apply_config`` prints."""

    op: str  # "+", "~", "-"
    kind: str
    name: str
    details: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __str__(self) -> str:
        line = f"{self.op} {self.kind} {self.name}"
        if self.op == "~":
            line += ": " + ", ".join(f"{k} {_show(a)} → {_show(b)}" for k, (a, b) in self.details.items())
        return line


def _show(value) -> str:
    if isinstance(value, str) and "\n" in value:
        return f"<{len(value.splitlines())} lines>"
    return repr(value)


class _Reader:
    """Checks one document, collecting nothing half-way: the first problem raises ConfigError."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir

    def fail(self, place: str, message: str):
        raise ConfigError(self.source, place, message)

    def mapping(self, value, place: str, allowed: set[str], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(place, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                self.fail(
                    f"{place}.{key}" if place else str(key),
                    f"unknown key; expected one of: {', '.join(sorted(allowed))}",
                )
        for key in required:
            if key not in value or value[key] in (None, ""):
                self.fail(f"{place}.{key}" if place else key, "is required")
        return value

    def string(self, value, place: str, pattern: re.Pattern | None = None, what: str = "") -> str:
        if not isinstance(value, str):
            self.fail(place, f"expected a string, got {type(value).__name__}")
        if pattern is not None and not pattern.match(value):
            self.fail(place, f"{value!r} is not a valid {what}")
        return value

    def boolean(self, value, place: str) -> bool:
        if not isinstance(value, bool):
            self.fail(place, f"expected true or false, got {value!r}")
        return value

    def integer(self, value, place: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(place, f"expected a whole number, got {value!r}")
        if value < minimum:
            self.fail(place, f"must be at least {minimum}, got {value}")
        return value

    def number(self, value, place: str, minimum: float = 0.0) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(place, f"expected a number, got {value!r}")
        if not value >= minimum:
            self.fail(place, f"must be at least {minimum:g}, got {value}")
        return float(value)

    def seconds(self, value, place: str) -> int:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.fail(place, str(exc))
        if seconds < 1 or seconds != int(seconds):
            self.fail(place, f"expected a whole number of seconds, at least 1s, got {value!r}")
        return int(seconds)

    def string_list(self, value, place: str) -> list[str]:
        if not isinstance(value, list):
            self.fail(place, f"expected a list, got {type(value).__name__}")
        return [self.string(item, f"{place}[{i}]") for i, item in enumerate(value)]

    def document(self, data) -> list[dict]:
        if data is None:
            self.fail("", "the file is empty")
        data = self.mapping(data, "", {"projects"}, required=("projects",))
        if not isinstance(data["projects"], list):
            self.fail("projects", "expected a list of projects")
        projects = [self.project(p, f"projects[{i}]") for i, p in enumerate(data["projects"])]
        slugs = [p["slug"] for p in projects]
        for i, slug in enumerate(slugs):
            if slug in slugs[:i]:
                self.fail(f"projects[{i}].slug", f"project {slug!r} appears twice")
        return projects

    def project(self, data, place: str) -> dict:
        data = self.mapping(data, place, PROJECT_KEYS, required=("slug",))
        slug = self.string(data["slug"], f"{place}.slug", SLUG, "slug (lowercase letters, digits and dashes)")
        project = {
            "slug": slug,
            "name": self.string(data.get("name", slug), f"{place}.name"),
            "repository": self.string(
                data["repository"], f"{place}.repository", REPOSITORY, "GitHub repository (owner/name)"
            )
            if data.get("repository")
            else "",
            "vercel_project_id": self.string(data.get("vercelProjectId") or "", f"{place}.vercelProjectId"),
            "allowed_hosts": self.string_list(data.get("allowedHosts", []), f"{place}.allowedHosts"),
        }
        environments = self.mapping(
            data.get("environments") or {}, f"{place}.environments", set(Environment.Name.values)
        )
        project["environments"] = {
            name: self.environment(value or {}, f"{place}.environments.{name}")
            for name, value in environments.items()
        }
        scenarios = data.get("scenarios") or []
        if not isinstance(scenarios, list):
            self.fail(f"{place}.scenarios", "expected a list of scenarios")
        project["scenarios"] = [
            self.scenario(s, f"{place}.scenarios[{i}]", project["allowed_hosts"])
            for i, s in enumerate(scenarios)
        ]
        names = [s["name"] for s in project["scenarios"]]
        for i, name in enumerate(names):
            if name in names[:i]:
                self.fail(f"{place}.scenarios[{i}].name", f"scenario {name!r} appears twice")
        defaults = [i for i, s in enumerate(project["scenarios"]) if s["is_default"]]
        if len(defaults) > 1:
            self.fail(f"{place}.scenarios[{defaults[1]}].default", "only one scenario can be the default")
        rule_list = data.get("rules") or []
        if not isinstance(rule_list, list):
            self.fail(f"{place}.rules", "expected a list of rules")
        project["rules"] = [
            self.rule(r, f"{place}.rules[{i}]", names, project["environments"])
            for i, r in enumerate(rule_list)
        ]
        keys = [rule_identity(r) for r in project["rules"]]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                self.fail(f"{place}.rules[{i}]", "the same rule appears twice")
        return project

    def environment(self, data, place: str) -> dict:
        data = self.mapping(data, place, ENVIRONMENT_KEYS)
        return {
            "mode": Environment.Mode.ENFORCE
            if self.boolean(data.get("enforce", True), f"{place}.enforce")
            else Environment.Mode.SHADOW,
            "fail_closed": self.boolean(data.get("failClosed", False), f"{place}.failClosed"),
            "require_staging_pass": self.boolean(
                data.get("requireStagingPass", False), f"{place}.requireStagingPass"
            ),
            "bypass_approvals": self.integer(data.get("bypassApprovals", 1), f"{place}.bypassApprovals", 1),
            "auto_baseline": self.boolean(data.get("autoBaseline", True), f"{place}.autoBaseline"),
        }

    def scenario(self, data, place: str, allowed_hosts: list[str]) -> dict:
        data = self.mapping(data, place, SCENARIO_KEYS, required=("name",))
        name = self.string(data["name"], f"{place}.name", SCENARIO_NAME, "scenario name")
        tool = data.get("tool", Scenario.Tool.K6)
        if tool not in Scenario.Tool.values:
            self.fail(f"{place}.tool", f"expected one of {', '.join(Scenario.Tool.values)}, got {tool!r}")
        if ("script" in data) == ("scriptText" in data):
            self.fail(place, "give exactly one of script (a file path) or scriptText (the script inline)")
        if "script" in data:
            script_path = self.string(data["script"], f"{place}.script")
            path = (self.base_dir / script_path).resolve()
            try:
                script_text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(
                    f"{place}.script",
                    f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}",
                )
        else:
            script_path = ""
            script_text = self.string(data["scriptText"], f"{place}.scriptText")
        if not script_text.strip():
            self.fail(f"{place}.script", "the script is empty")
        target_url = self.string(data.get("targetUrl", ""), f"{place}.targetUrl")
        if target_url:
            try:
                check_target_url(target_url, allowed_hosts)
            except TargetRefused as exc:
                self.fail(f"{place}.targetUrl", str(exc))
        vus = self.integer(data.get("vus", 10), f"{place}.vus", 1)
        duration = self.seconds(data.get("duration", "30s"), f"{place}.duration")
        max_vus = self.integer(data.get("maxVus", max(vus, 50)), f"{place}.maxVus", 1)
        max_duration = self.seconds(data.get("maxDuration", max(duration, 300)), f"{place}.maxDuration")
        if vus > max_vus:
            self.fail(f"{place}.vus", f"{vus} is more than maxVus ({max_vus})")
        if duration > max_duration:
            self.fail(f"{place}.duration", f"{duration}s is longer than maxDuration ({max_duration}s)")
        arrival_rate = data.get("arrivalRate")
        return {
            "name": name,
            "tool": tool,
            "script_text": script_text,
            "script_path": script_path,
            "target_url": target_url,
            "vus": vus,
            "duration_seconds": duration,
            "max_vus": max_vus,
            "max_duration_seconds": max_duration,
            "min_requests": self.integer(data.get("minRequests", 100), f"{place}.minRequests", 0),
            "arrival_rate": None
            if arrival_rate is None
            else self.integer(arrival_rate, f"{place}.arrivalRate", 1),
            "warmup_seconds": 0
            if data.get("warmup") in (None, 0)
            else self.seconds(data["warmup"], f"{place}.warmup"),
            "is_default": self.boolean(data.get("default", False), f"{place}.default"),
        }

    def rule(self, data, place: str, scenario_names: list[str], environments: dict) -> dict:
        data = self.mapping(data, place, RULE_KEYS, required=("scenario", "metric"))
        scenario = self.string(data["scenario"], f"{place}.scenario")
        if scenario not in scenario_names:
            self.fail(
                f"{place}.scenario",
                f"no scenario named {scenario!r} in this project "
                f"(scenarios: {', '.join(scenario_names) or 'none'})",
            )
        severity = data.get("severity", Severity.KEY)
        if severity not in Severity.values:
            self.fail(f"{place}.severity", f"expected key or info, got {severity!r}")
        env_names = self.string_list(data.get("environments", []), f"{place}.environments")
        for i, name in enumerate(env_names):
            if name not in environments:
                self.fail(
                    f"{place}.environments[{i}]",
                    f"no environment {name!r} in this project (environments: {', '.join(environments)})",
                )
        metric = self.string(data["metric"], f"{place}.metric")
        rule = {
            "scenario": scenario,
            "metric": metric,
            "severity": severity,
            "environments": sorted(set(env_names)),
            "threshold": "",
            "aggregation": "",
            "warn_pct": None,
            "fail_pct": None,
            "floor": 0.0,
            "direction": ThresholdRule.Direction.AUTO,
        }
        if ("threshold" in data) == ("relative" in data):
            self.fail(
                place, "give either threshold (an absolute rule) or relative (a comparison with the baseline)"
            )
        if "threshold" in data:
            if "aggregation" in data:
                self.fail(
                    f"{place}.aggregation",
                    "only relative rules take an aggregation; an absolute threshold names its own",
                )
            threshold = self.string(data["threshold"], f"{place}.threshold")
            try:
                selector, expression = rules.validate_absolute_rule(metric, threshold)
            except rules.RuleSyntaxError as exc:
                self.fail(f"{place}.threshold", str(exc))
            rule.update(kind=ThresholdRule.Kind.ABSOLUTE, metric=str(selector), threshold=str(expression))
            return rule
        relative = self.mapping(data["relative"], f"{place}.relative", RELATIVE_KEYS, required=("failPct",))
        aggregation = self.string(data.get("aggregation", ""), f"{place}.aggregation")
        if not aggregation:
            self.fail(f"{place}.aggregation", 'is required for a relative rule (e.g. "p(95)")')
        rule.update(
            kind=ThresholdRule.Kind.RELATIVE,
            aggregation=aggregation,
            fail_pct=self.number(relative["failPct"], f"{place}.relative.failPct"),
            warn_pct=None
            if relative.get("warnPct") is None
            else self.number(relative["warnPct"], f"{place}.relative.warnPct"),
            floor=self.number(relative.get("floor", 0), f"{place}.relative.floor"),
            direction=relative.get("direction", ThresholdRule.Direction.AUTO),
        )
        if rule["direction"] not in ThresholdRule.Direction.values:
            self.fail(f"{place}.relative.direction", f"expected auto, up or down, got {rule['direction']!r}")
        if rule["warn_pct"] is not None and rule["warn_pct"] > rule["fail_pct"]:
            self.fail(f"{place}.relative.warnPct", "must not be larger than failPct")
        try:
            spec = rules.rule_from_fields(
                label=metric,
                kind=rule["kind"],
                metric=metric,
                threshold="",
                aggregation=aggregation,
                warn_pct=rule["warn_pct"],
                fail_pct=rule["fail_pct"],
                floor=rule["floor"],
                direction=rule["direction"],
                severity=severity,
            )
        except rules.RuleSyntaxError as exc:
            self.fail(f"{place}.aggregation" if "aggregation" in str(exc) else f"{place}.metric", str(exc))
        rule["metric"] = str(spec.selector)
        return rule


def rule_identity(rule: dict) -> tuple:
    """What makes two rules the same rule: a changed threshold is a different rule, a changed
    severity or percentage is the same rule edited."""
    return (
        rule["scenario"],
        rule["metric"],
        rule["kind"],
        rule["threshold"],
        rule["aggregation"],
        tuple(rule["environments"]),
    )


def load_config(path: str | Path) -> tuple[list[dict], str]:
    """Read and check a perfgate.yaml; (projects, source name). Raises ConfigError."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(source, where, f"not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    return _Reader(source, path.parent).document(data), source


SNAPSHOT_EXCLUDE = {"id", "created_at", "updated_at", "project", "scenario"}


def config_snapshot(obj) -> dict:
    """The audited fields of a configuration object (before or after a change)."""
    data = {
        f.name: getattr(obj, f.attname) for f in obj._meta.concrete_fields if f.name not in SNAPSHOT_EXCLUDE
    }
    if isinstance(obj, ThresholdRule) and obj.pk:
        data["environments"] = sorted(obj.environments.values_list("name", flat=True))
    return data


class _Applier:
    def __init__(self, source: str, actor: Actor):
        self.source, self.actor = source, actor
        self.changes: list[Change] = []

    def _audit(self, action: str, obj, project: str, environment: str = "", before=None, after=None):
        audit_record(
            action=action,
            actor=self.actor,
            target=obj,
            project=project,
            environment=environment,
            reason=f"apply_config {self.source}",
            data={"before": before, "after": after},
        )

    def upsert(
        self, model, lookup: dict, desired: dict, kind: str, name: str, project: str, environment: str = ""
    ):
        desired = {**desired, "config_source": self.source}
        obj = model.objects.filter(**lookup).first()
        if obj is None:
            obj = model(**lookup, **desired)
            obj.save()
            self.changes.append(Change("+", kind, name))
            self._audit(f"config.{kind}.created", obj, project, environment, after=config_snapshot(obj))
            return obj
        before = config_snapshot(obj)
        changed = {k: (getattr(obj, k), v) for k, v in desired.items() if getattr(obj, k) != v}
        if changed:
            for key, (_, value) in changed.items():
                setattr(obj, key, value)
            obj.save(update_fields=[*changed, "updated_at"] if hasattr(obj, "updated_at") else list(changed))
            self.changes.append(Change("~", kind, name, changed))
            self._audit(
                f"config.{kind}.updated", obj, project, environment, before=before, after=config_snapshot(obj)
            )
        return obj

    def project(self, spec: dict) -> None:
        fields = {k: spec[k] for k in ("name", "repository", "vercel_project_id", "allowed_hosts")}
        project = self.upsert(Project, {"slug": spec["slug"]}, fields, "project", spec["slug"], spec["slug"])
        environments = {env.name: env for env in Environment.objects.filter(project=project)}
        for name, env_spec in spec["environments"].items():
            environments[name] = self.upsert(
                Environment,
                {"project": project, "name": name},
                env_spec,
                "environment",
                f"{project.slug}/{name}",
                project.slug,
                name,
            )
        if any(s["is_default"] for s in spec["scenarios"]):
            # Clear the old default first: at most one default per project, checked by the database.
            new_default = next(s["name"] for s in spec["scenarios"] if s["is_default"])
            for old in Scenario.objects.filter(project=project, is_default=True).exclude(name=new_default):
                self.upsert(
                    Scenario,
                    {"project": project, "name": old.name},
                    {"is_default": False},
                    "scenario",
                    f"{project.slug}/{old.name}",
                    project.slug,
                )
        scenarios = {}
        for scenario_spec in spec["scenarios"]:
            fields = {k: v for k, v in scenario_spec.items() if k != "name"}
            scenarios[scenario_spec["name"]] = self.upsert(
                Scenario,
                {"project": project, "name": scenario_spec["name"]},
                fields,
                "scenario",
                f"{project.slug}/{scenario_spec['name']}",
                project.slug,
            )
        self.rules(project, spec["rules"], scenarios, environments)

    def rules(self, project: Project, specs: list[dict], scenarios: dict, environments: dict) -> None:
        existing = {}
        for rule in (
            ThresholdRule.objects.filter(project=project)
            .exclude(config_source="")
            .select_related("scenario")
            .prefetch_related("environments")
        ):
            identity = (
                rule.scenario.name,
                rule.metric,
                rule.kind,
                rule.threshold,
                rule.aggregation,
                tuple(sorted(e.name for e in rule.environments.all())),
            )
            existing[identity] = rule
        for spec in specs:
            identity = rule_identity(spec)
            label = f"{project.slug}/{spec['scenario']} {spec['metric']} " + (
                spec["threshold"] or f"{spec['aggregation']} relative"
            )
            mutable = {k: spec[k] for k in ("severity", "warn_pct", "fail_pct", "floor", "direction")}
            rule = existing.pop(identity, None)
            if rule is None:
                rule = ThresholdRule(
                    project=project,
                    scenario=scenarios[spec["scenario"]],
                    metric=spec["metric"],
                    kind=spec["kind"],
                    threshold=spec["threshold"],
                    aggregation=spec["aggregation"],
                    config_source=self.source,
                    **mutable,
                )
                rule.save()
                rule.environments.set([environments[name] for name in spec["environments"]])
                self.changes.append(Change("+", "rule", label))
                self._audit("config.rule.created", rule, project.slug, after=config_snapshot(rule))
                continue
            self.upsert(ThresholdRule, {"pk": rule.pk}, mutable, "rule", label, project.slug)
        for rule in existing.values():
            label = f"{project.slug}/{rule.scenario.name} {rule.metric} " + (
                rule.threshold or f"{rule.aggregation} relative"
            )
            before = config_snapshot(rule)
            self._audit("config.rule.deleted", rule, project.slug, before=before)
            rule.delete()
            self.changes.append(Change("-", "rule", label))


def config_apply(*, projects: list[dict], source: str, actor: Actor, dry_run: bool = False) -> list[Change]:
    """Create or update everything a checked configuration describes, in one transaction.

    Rules that came from a configuration file and are no longer in it are deleted; rules made
    in the admin are left alone. ``dry_run`` computes the same changes and rolls them back.
    """
    applier = _Applier(source, actor)
    with transaction.atomic():
        for spec in projects:
            applier.project(spec)
        if dry_run:
            transaction.set_rollback(True)
    return applier.changes
