"""Configuration as code: ``perfgate.yaml`` → projects, environments, scenarios and rules.

The whole file is read and checked before anything is written, in two steps. The pydantic models
below (``ConfigFile`` and its sections) check its shape: camelCase keys, unknown keys refused,
types and ranges; they are also its JSON Schema (``manage.py apply_config --schema``, committed as
``docs/perfgate.schema.json``). ``_Checker`` then checks what one field cannot say alone: the
scenario a rule names, a single default, k6 threshold syntax, targets against the allowlist,
script files, and runs that fit in a worker's task. Either step rejects the whole file with a
message naming its place (``projects[0].rules[2].threshold``) and nothing is applied. Applying is
idempotent: the same file twice changes nothing. Every change is audited with before and after.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from django.db import transaction
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticCustomError

from gates import registry, rules
from gates.audit import Actor, audit_record
from gates.calibration import noise_for
from gates.models import Environment, Project, Scenario, ThresholdRule
from gates.rules import Severity
from gates.targets import TargetRefused, check_target_url, ports_of
from gates.units import parse_duration

SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
REPOSITORY = re.compile(r"^[A-Za-z0-9-]+/[A-Za-z0-9._-]+$")
SCENARIO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


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
    if isinstance(value, Scenario):
        return repr(value.name)
    if isinstance(value, str) and "\n" in value:
        return f"<{len(value.splitlines())} lines>"
    return repr(value)


# The file's shape. Each key is checked here alone; what depends on several keys, or on files and
# hosts outside the document, is _Checker's.


def _matching(pattern: re.Pattern, what: str, *, required: bool = True) -> Any:
    """A string matching ``pattern`` (or empty, when not ``required``), refused with a message a
    person can act on; pydantic's would quote the regular expression. The schema still carries
    the pattern, for editors."""

    def check(value: str) -> str:
        if not value and not required:
            return value
        if not value:
            raise ValueError("is required")
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not a valid {what}")
        return value

    return Annotated[str, Field(json_schema_extra={"pattern": pattern.pattern}), AfterValidator(check)]


def _seconds(value) -> int:
    seconds = parse_duration(value)
    if seconds < 1 or seconds != int(seconds):
        raise ValueError(f"expected a whole number of seconds, at least 1s, got {value!r}")
    return int(seconds)


def _warmup_seconds(value) -> int:
    # 0 (or nothing) is no warm-up at all; any other value is a duration of at least a second.
    return 0 if value in (None, 0) else _seconds(value)


def _delay_seconds(value) -> int:
    # 0 (or "0s") is "at once"; any other value is a duration of whole seconds. Never null.
    return 0 if parse_duration(value) == 0 else _seconds(value)


_DURATION_SCHEMA = {
    "anyOf": [
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]+)?(ms|s|m|h))+\s*$"},
        {"type": "number", "minimum": 1},
    ],
    "description": 'A k6 duration ("30s", "5m", "1h30m") or a number of seconds; whole seconds.',
}


def _no_default(schema: dict) -> None:
    schema.pop("default", None)


def _optional(description: str, **constraints) -> Any:
    """A key whose absence means something a default value cannot say: worked out from other keys,
    or "the other key was given instead". Giving it as null is refused, as for any value."""
    return Field(
        default=None,
        validate_default=False,
        description=description,
        json_schema_extra=_no_default,
        **constraints,
    )


Slug = _matching(SLUG, "slug (lowercase letters, digits and dashes)")
ScenarioName = _matching(SCENARIO_NAME, "scenario name")
Repository = _matching(REPOSITORY, "GitHub repository (owner/name)", required=False)
Seconds = Annotated[int, PlainValidator(_seconds), WithJsonSchema(_DURATION_SCHEMA)]
WarmupSeconds = Annotated[
    int,
    PlainValidator(_warmup_seconds),
    WithJsonSchema({"anyOf": [*_DURATION_SCHEMA["anyOf"], {"const": 0}, {"type": "null"}]}),
]
DelaySeconds = Annotated[
    int,
    PlainValidator(_delay_seconds),
    WithJsonSchema({"anyOf": [*_DURATION_SCHEMA["anyOf"], {"const": 0}]}),
]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
WORKFLOW_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,195}\.ya?ml$")
WorkflowFile = _matching(WORKFLOW_FILE, "workflow file name (e.g. rollback.yml)", required=False)
EnvironmentName = Literal[tuple(Environment.Name.values)]
ToolName = Literal[tuple(Scenario.Tool.values)]
SeverityName = Literal[tuple(Severity.values)]
DirectionName = Literal[tuple(ThresholdRule.Direction.values)]


class _Section(BaseModel):
    """A mapping of perfgate.yaml: camelCase keys, nothing else; values of exactly their type
    ("10" is not a number, 1 is not true)."""

    model_config = ConfigDict(extra="forbid", strict=True, alias_generator=to_camel, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data):
        # pydantic says "Extra inputs are not permitted"; name the keys that are, to catch typos.
        if isinstance(data, dict):
            known = sorted(f.alias or name for name, f in cls.model_fields.items())
            for key in data:
                if key not in known:
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key; expected one of: {expected}",
                        {"expected": ", ".join(known), "at": str(key)},
                    )
        return data


class WatchConfig(_Section):
    """Watching a deployment after it reaches this environment: a gentle probe scenario runs every
    interval for a window (Argo Rollouts' analysis semantics). A probe that cannot run is an
    error, never a failure: errors tell people and never roll back."""

    scenario: str = Field(min_length=1, description="The probe scenario, a scenario of this project.")
    initial_delay: DelaySeconds = Field(default=60, description="From the promotion to the first probe.")
    interval: Seconds = Field(default=60, description="Between probes.")
    window: Seconds = Field(
        default=900, description="How long the deployment is watched, from the first probe."
    )
    failure_limit: int = Field(
        default=2,
        ge=0,
        le=1000,
        description="More failed probes than this: degraded (rolled back by policy).",
    )
    consecutive: bool = Field(default=True, description="Count only failures in a row towards failureLimit.")
    inconclusive_limit: int = Field(
        default=2, ge=0, le=1000, description="More inconclusive probes than this: a person decides."
    )
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=1000,
        description="More probes in a row that cannot run than this: the watch stops and people are told.",
    )
    dry_run: bool = Field(default=False, description="Watch and record what would be done; never roll back.")
    rollback_workflow: WorkflowFile = Field(
        default="",
        description="GitHub workflow file that rolls this environment back (workflow_dispatch), for "
        "projects not deployed by Vercel, e.g. rollback.yml.",
    )


# perfgate.yaml's watch keys and the Environment fields they set (the scenario is resolved apart).
WATCH_FIELDS = {
    "initial_delay": "watch_initial_delay_seconds",
    "interval": "watch_interval_seconds",
    "window": "watch_window_seconds",
    "failure_limit": "watch_failure_limit",
    "consecutive": "watch_consecutive",
    "inconclusive_limit": "watch_inconclusive_limit",
    "consecutive_error_limit": "watch_consecutive_error_limit",
    "dry_run": "watch_dry_run",
    "rollback_workflow": "rollback_workflow",
}


class EnvironmentConfig(_Section):
    """The gate's policy in one environment."""

    enforce: bool = Field(
        default=True, description="Block failing deployments; false: shadow mode, only record what would be."
    )
    fail_closed: bool = Field(default=False, description="Block when no verdict can be reached.")
    require_staging_pass: bool = Field(
        default=False, description="A passing staging validation of the same git hash is required first."
    )
    bypass_approvals: int = Field(
        default=1, ge=1, description="Distinct approvers an emergency bypass needs."
    )
    auto_baseline: bool = Field(default=True, description="A passing validation becomes the next baseline.")
    auto_rollback: bool = Field(
        default=False,
        description="A watched deployment found degraded is rolled back at once; false: the rollback is "
        "proposed and waits for someone with trigger_rollback.",
    )
    watch: WatchConfig = _optional(
        "Watch deployments after they reach this environment; absent: not watched."
    )


class ScenarioConfig(_Section):
    """A load test CI can ask for by name. Give script or scriptText."""

    name: ScenarioName
    tool: ToolName = Scenario.Tool.K6.value
    script: str = _optional("Path of the script, relative to this file.")
    script_text: str = _optional("The script itself, inline.")
    target_url: str = Field(default="", description="Default target; it must be on allowedHosts.")
    reference_url: str = Field(
        default="",
        description="Gate-run mode: the deployment to compare with side by side (production or "
        "staging); it must be on allowedHosts.",
    )
    vus: int = Field(default=10, ge=1, description="Default load in virtual users.")
    duration: Seconds = Field(default=30, description="Default duration.")
    max_vus: int = _optional("The most VUs a request may ask for; default: the larger of vus and 50.", ge=1)
    max_duration: Seconds = _optional(
        "The longest a request may ask for; default: the longer of duration and 5m. With the warm-up "
        "and the run margin it must fit in a worker task (PERFGATE_TASK_TIMEOUT)."
    )
    min_requests: int = Field(
        default=100, ge=0, description="Fewer requests than this is an error (insufficient load)."
    )
    arrival_rate: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Iterations per second (open model); absent: VUs loop."
    )
    warmup: WarmupSeconds = Field(default=0, description="Ramp-up before measuring.")
    default: bool = Field(default=False, description="Runs when a request names no scenario.")


class RelativeConfig(_Section):
    """How much worse than the baseline is too much. Without warnPct the rule never warns: it
    passes or fails."""

    warn_pct: NonNegative | None = Field(
        default=None, description="Warn from this change, in % of the baseline."
    )
    fail_pct: NonNegative = Field(description="Fail from this change, in % of the baseline.")
    floor: NonNegative | None = Field(
        default=None,
        description="Ignore changes smaller than this, in the metric's unit (default: 1 ms for a "
        "time metric, 0 for others).",
    )
    direction: DirectionName = Field(
        default=ThresholdRule.Direction.AUTO.value,
        description="Which change is worse: up, down, or auto (by the metric).",
    )

    @model_validator(mode="before")
    @classmethod
    def _fail_pct_goes_with_warn_pct(cls, data):
        # Say why, not just "is required": in the admin a warn % alone once meant the default
        # limits, silently; a file that gives one limit must give the one that fails.
        if isinstance(data, dict) and data.get("warnPct") is not None and data.get("failPct") is None:
            raise PydanticCustomError(
                "fail_pct_with_warn_pct",
                "a relative rule needs failPct when warnPct is given",
                {"at": "failPct"},
            )
        return data


class RuleConfig(_Section):
    """A check on one metric of one scenario: threshold (absolute, in k6's syntax) or relative
    (compared with the baseline, on aggregation)."""

    scenario: str = Field(min_length=1, description="A scenario of this project.")
    metric: str = Field(min_length=1, description="A k6 metric, with an optional tag filter.")
    threshold: str = _optional('An absolute rule: a k6 threshold, like "p(95)<500".')
    aggregation: str = Field(default="", description='A relative rule: what is compared, like "p(95)".')
    relative: RelativeConfig = _optional("A relative rule: its limits.")
    severity: SeverityName = Field(
        default=Severity.KEY.value, description="key rules can block, info rules can only warn."
    )
    environments: list[str] = Field(
        default_factory=list, description="Environments it applies to; empty: every one of the project."
    )


ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]{0,99}$")
EMAIL = re.compile(r"^[^@\s,;<>\"']{1,64}@[^@\s,;<>\"']+\.[^@\s,;<>\"']+$")
EnvVarName = _matching(ENV_VAR, "environment variable name (like SLACK_WEDSYNC_PERF)")
EmailAddress = Annotated[_matching(EMAIL, "email address"), Field(max_length=254)]
EventName = Literal[registry.NOTIFICATION_EVENTS]


class SlackConfig(_Section):
    """A Slack incoming webhook. Its URL is a secret: the file names the environment variable that
    holds it (or the admin sets it), and perfgate stores it encrypted."""

    webhook_secret: EnvVarName = Field(
        description="The environment variable holding the webhook URL (never the URL itself)."
    )


class NotifyConfig(_Section):
    """A notification channel: a Slack webhook or email addresses, the events it wants and the
    environments it covers."""

    name: str = _optional("How people recognise it; default: the variable's name or the addresses.")
    slack: SlackConfig = _optional("A Slack incoming webhook.")
    email: list[EmailAddress] = _optional("Email addresses.")
    events: list[EventName] = Field(default_factory=list, description="Events it wants; empty: every event.")
    environments: list[EnvironmentName] = Field(
        default_factory=list, description="Environments it covers; empty: every one of the project."
    )

    @model_validator(mode="after")
    def _slack_or_email(self):
        if (self.slack is None) == (not self.email):
            raise PydanticCustomError("notify_kind", "a channel has either slack or email (a non-empty list)")
        return self


class ProjectConfig(_Section):
    """A deployable service, its environments, scenarios and rules."""

    slug: Slug
    name: str = _optional("Display name; default: the slug.")
    repository: Repository | None = Field(default=None, description="GitHub owner/name.")
    vercel_project_id: str | None = None
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Hosts load tests may hit: names or wildcards like "*.vercel.app", optionally with '
        'a port ("staging.example:8443", "[::1]:8080"). A host without a port allows ports 80 and '
        "443 and the ports of the scenario's own targetUrl and referenceUrl.",
    )
    environments: dict[EnvironmentName, EnvironmentConfig | None] | None = None
    scenarios: list[ScenarioConfig] | None = None
    rules: list[RuleConfig] | None = None
    notify: list[NotifyConfig] | None = None


class ConfigFile(_Section):
    """perfgate.yaml: configuration as code for perfgate (manage.py apply_config)."""

    model_config = ConfigDict(title="perfgate.yaml")

    projects: list[ProjectConfig]


class _SchemaGenerator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema) -> bool:
        # A key is its own title; pydantic's would read "Failclosed".
        return False


def config_json_schema() -> dict:
    """The JSON Schema of perfgate.yaml, for editors and CI linters. It says what each key may
    be; what depends on several keys (a rule's scenario, k6 threshold syntax, the allowlist)
    only ``apply_config`` checks."""
    schema = ConfigFile.model_json_schema(by_alias=True, schema_generator=_SchemaGenerator)
    return {"$schema": SCHEMA_DIALECT, **schema}


def _place(error: dict) -> str:
    """pydantic's location ("projects", 0, "rules", 3, "threshold") as the file's place:
    projects[0].rules[3].threshold."""
    loc = [part for part in error["loc"] if part != "[key]"]
    at = (error.get("ctx") or {}).get("at")
    if at is not None:
        loc.append(at)
    place = ""
    for part in loc:
        if isinstance(part, int):
            place += f"[{part}]"
        else:
            place += f".{part}" if place else str(part)
    return place


def _message(error: dict) -> str:
    """What is wrong, in the words perfgate used before pydantic read its files."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if error["loc"] and error["loc"][-1] == "[key]":
        return f"unknown key; expected {ctx.get('expected', 'another')}"
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing" or (kind == "string_too_short" and ctx.get("min_length") == 1):
        return "is required"
    if kind == "string_type":
        return f"expected a string, got {type(value).__name__}"
    if kind in ("int_type", "int_from_float", "int_parsing"):
        return f"expected a whole number, got {value!r}"
    if kind in ("float_type", "float_parsing"):
        return f"expected a number, got {value!r}"
    if kind == "finite_number":
        return f"expected a finite number, got {value!r}"
    if kind == "bool_type":
        return f"expected true or false, got {value!r}"
    if kind == "list_type":
        return f"expected a list, got {type(value).__name__}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {type(value).__name__}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']:g}, got {value}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {value!r}"
    return error["msg"]


class _Checker:
    """Checks what the schema cannot, and turns the file into model fields. The first problem
    raises ConfigError; nothing is written before every project passed."""

    def __init__(self, source: str, base_dir: Path):
        self.source = source
        self.base_dir = base_dir

    def fail(self, place: str, message: str):
        raise ConfigError(self.source, place, message)

    def document(self, config: ConfigFile) -> list[dict]:
        projects = [self.project(p, f"projects[{i}]") for i, p in enumerate(config.projects)]
        slugs = [p["slug"] for p in projects]
        for i, slug in enumerate(slugs):
            if slug in slugs[:i]:
                self.fail(f"projects[{i}].slug", f"project {slug!r} appears twice")
        return projects

    def project(self, config: ProjectConfig, place: str) -> dict:
        project = {
            "slug": config.slug,
            "name": config.slug if config.name is None else config.name,
            "repository": config.repository or "",
            "vercel_project_id": config.vercel_project_id or "",
            "allowed_hosts": list(config.allowed_hosts),
        }
        project["environments"] = {
            name: self.environment(value if value is not None else EnvironmentConfig())
            for name, value in (config.environments or {}).items()
        }
        project["scenarios"] = [
            self.scenario(s, f"{place}.scenarios[{i}]", project["allowed_hosts"])
            for i, s in enumerate(config.scenarios or [])
        ]
        names = [s["name"] for s in project["scenarios"]]
        for i, name in enumerate(names):
            if name in names[:i]:
                self.fail(f"{place}.scenarios[{i}].name", f"scenario {name!r} appears twice")
        for name, environment in project["environments"].items():
            watched = environment["watch_scenario"]
            if watched is not None and watched not in names:
                self.fail(
                    f"{place}.environments.{name}.watch.scenario",
                    f"no scenario named {watched!r} in this project "
                    f"(scenarios: {', '.join(names) or 'none'})",
                )
        defaults = [i for i, s in enumerate(project["scenarios"]) if s["is_default"]]
        if len(defaults) > 1:
            self.fail(f"{place}.scenarios[{defaults[1]}].default", "only one scenario can be the default")
        project["rules"] = [
            self.rule(r, f"{place}.rules[{i}]", names, project["environments"])
            for i, r in enumerate(config.rules or [])
        ]
        keys = [rule_identity(r) for r in project["rules"]]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                self.fail(f"{place}.rules[{i}]", "the same rule appears twice")
        project["notify"] = [self.notify(n) for n in config.notify or []]
        channels = [n["name"] for n in project["notify"]]
        for i, name in enumerate(channels):
            if name in channels[:i]:
                self.fail(f"{place}.notify[{i}].name", f"channel {name!r} appears twice; give each a name")
        return project

    def notify(self, config: NotifyConfig) -> dict:
        if config.slack is not None:
            default_name = config.slack.webhook_secret.lower()
        else:
            default_name = ", ".join(config.email)
        return {
            "name": (config.name or default_name)[:100],
            "kind": "slack" if config.slack is not None else "email",
            "webhook_secret_env": config.slack.webhook_secret if config.slack is not None else "",
            "recipients": list(config.email or []),
            "events": list(config.events),
            "environments": list(config.environments),
        }

    def environment(self, config: EnvironmentConfig) -> dict:
        if config.watch is None:
            # No watch block: the model's defaults, and no watch scenario. The file is the truth,
            # as for every other key of an environment.
            watch = {
                field: Environment._meta.get_field(field).get_default() for field in WATCH_FIELDS.values()
            }
        else:
            watch = {field: getattr(config.watch, key) for key, field in WATCH_FIELDS.items()}
        return {
            "mode": Environment.Mode.ENFORCE if config.enforce else Environment.Mode.SHADOW,
            "fail_closed": config.fail_closed,
            "require_staging_pass": config.require_staging_pass,
            "bypass_approvals": config.bypass_approvals,
            "auto_baseline": config.auto_baseline,
            "auto_rollback": config.auto_rollback,
            # A scenario name until the project's scenarios are applied (_Applier.project).
            "watch_scenario": config.watch.scenario if config.watch is not None else None,
            **watch,
        }

    def scenario(self, config: ScenarioConfig, place: str, allowed_hosts: list[str]) -> dict:
        given = config.model_fields_set
        if ("script" in given) == ("script_text" in given):
            self.fail(place, "give exactly one of script (a file path) or scriptText (the script inline)")
        if "script" in given:
            script_path = config.script
            path = (self.base_dir / script_path).resolve()
            try:
                script_text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                self.fail(
                    f"{place}.script",
                    f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}",
                )
        else:
            script_path, script_text = "", config.script_text
        if not script_text.strip():
            self.fail(f"{place}.{'script' if script_path else 'scriptText'}", "the script is empty")
        # The scenario's own URLs open their ports on a host listed without one.
        own_ports = ports_of(config.target_url, config.reference_url)
        if config.target_url:
            try:
                check_target_url(config.target_url, allowed_hosts, own_ports)
            except TargetRefused as exc:
                self.fail(f"{place}.targetUrl", str(exc))
        if config.reference_url:
            try:
                check_target_url(config.reference_url, allowed_hosts, own_ports)
            except TargetRefused as exc:
                self.fail(f"{place}.referenceUrl", str(exc))
        max_vus = config.max_vus if "max_vus" in given else max(config.vus, 50)
        max_duration = config.max_duration if "max_duration" in given else max(config.duration, 300)
        if config.vus > max_vus:
            self.fail(f"{place}.vus", f"{config.vus} is more than maxVus ({max_vus})")
        if config.duration > max_duration:
            self.fail(f"{place}.duration", f"{config.duration}s is longer than maxDuration ({max_duration}s)")
        too_long = Scenario.longest_run_problem(config.warmup, max_duration)
        if too_long:
            self.fail(f"{place}.{'maxDuration' if 'max_duration' in given else 'duration'}", too_long)
        return {
            "name": config.name,
            "tool": config.tool,
            "script_text": script_text,
            "script_path": script_path,
            "target_url": config.target_url,
            "reference_url": config.reference_url,
            "vus": config.vus,
            "duration_seconds": config.duration,
            "max_vus": max_vus,
            "max_duration_seconds": max_duration,
            "min_requests": config.min_requests,
            "arrival_rate": config.arrival_rate,
            "warmup_seconds": config.warmup,
            "is_default": config.default,
        }

    def rule(self, config: RuleConfig, place: str, scenario_names: list[str], environments: dict) -> dict:
        if config.scenario not in scenario_names:
            self.fail(
                f"{place}.scenario",
                f"no scenario named {config.scenario!r} in this project "
                f"(scenarios: {', '.join(scenario_names) or 'none'})",
            )
        for i, name in enumerate(config.environments):
            if name not in environments:
                self.fail(
                    f"{place}.environments[{i}]",
                    f"no environment {name!r} in this project (environments: {', '.join(environments)})",
                )
        rule = {
            "scenario": config.scenario,
            "metric": config.metric,
            "severity": config.severity,
            "environments": sorted(set(config.environments)),
            "threshold": "",
            "aggregation": "",
            "warn_pct": None,
            "fail_pct": None,
            "floor": None,
            "direction": ThresholdRule.Direction.AUTO.value,
        }
        given = config.model_fields_set
        if ("threshold" in given) == ("relative" in given):
            self.fail(
                place, "give either threshold (an absolute rule) or relative (a comparison with the baseline)"
            )
        if "threshold" in given:
            if "aggregation" in given:
                self.fail(
                    f"{place}.aggregation",
                    "only relative rules take an aggregation; an absolute threshold names its own",
                )
            try:
                selector, expression = rules.validate_absolute_rule(config.metric, config.threshold)
            except rules.RuleSyntaxError as exc:
                self.fail(f"{place}.threshold", str(exc))
            rule.update(kind=ThresholdRule.Kind.ABSOLUTE, metric=str(selector), threshold=str(expression))
            return rule
        relative = config.relative
        if not config.aggregation:
            self.fail(f"{place}.aggregation", 'is required for a relative rule (e.g. "p(95)")')
        if relative.warn_pct is not None and relative.warn_pct > relative.fail_pct:
            self.fail(f"{place}.relative.warnPct", "must not be larger than failPct")
        rule.update(
            kind=ThresholdRule.Kind.RELATIVE,
            aggregation=config.aggregation,
            warn_pct=relative.warn_pct,
            fail_pct=relative.fail_pct,
            floor=relative.floor,
            direction=relative.direction,
        )
        try:
            spec = rules.rule_from_fields(
                label=config.metric,
                kind=rule["kind"],
                metric=config.metric,
                threshold="",
                aggregation=config.aggregation,
                warn_pct=rule["warn_pct"],
                fail_pct=rule["fail_pct"],
                floor=rule["floor"],
                direction=rule["direction"],
                severity=config.severity,
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
    if data is None:
        raise ConfigError(source, "", "the file is empty")
    try:
        config = ConfigFile.model_validate(data)
    except ValidationError as exc:
        # The first problem, as before: one message naming one place.
        first = exc.errors(include_url=False)[0]
        raise ConfigError(source, _place(first), _message(first)) from None
    return _Checker(source, path.parent).document(config), source


SNAPSHOT_EXCLUDE = {"id", "created_at", "updated_at", "project", "scenario"}


def config_snapshot(obj) -> dict:
    """The audited fields of a configuration object (before or after a change)."""
    data = {
        f.name: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if f.name not in SNAPSHOT_EXCLUDE and not getattr(f, "is_secret", False)
    }
    if isinstance(obj, ThresholdRule) and obj.pk:
        data["environments"] = sorted(obj.environments.values_list("name", flat=True))
    if isinstance(obj, Environment):
        # By name, as the file says it: an id means nothing to someone reading the audit log.
        data["watch_scenario"] = obj.watch_scenario.name if obj.watch_scenario_id else None
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
        # Scenarios first: an environment names its watch scenario, which must exist by then.
        scenarios = self.scenarios(project, spec["scenarios"])
        environments = {env.name: env for env in Environment.objects.filter(project=project)}
        for name, env_spec in spec["environments"].items():
            watched = env_spec["watch_scenario"]
            environments[name] = self.upsert(
                Environment,
                {"project": project, "name": name},
                {**env_spec, "watch_scenario": scenarios[watched] if watched is not None else None},
                "environment",
                f"{project.slug}/{name}",
                project.slug,
                name,
            )
        self.rules(project, spec["rules"], scenarios, environments)
        for key, apply in registry.config_sections().items():
            apply(project=project, specs=spec.get(key, []), applier=self)

    def scenarios(self, project: Project, specs: list[dict]) -> dict[str, Scenario]:
        if any(s["is_default"] for s in specs):
            # Clear the old default first: at most one default per project, checked by the database.
            new_default = next(s["name"] for s in specs if s["is_default"])
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
        for scenario_spec in specs:
            fields = {k: v for k, v in scenario_spec.items() if k != "name"}
            scenarios[scenario_spec["name"]] = self.upsert(
                Scenario,
                {"project": project, "name": scenario_spec["name"]},
                fields,
                "scenario",
                f"{project.slug}/{scenario_spec['name']}",
                project.slug,
            )
        return scenarios

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


def config_noise_warnings(projects: list[dict]) -> list[str]:
    """Relative rules of a checked configuration that fail from a smaller change than their
    scenario's stored calibration says history mode can tell from noise. Not an error: the rule
    works, but a regression between its fail % and the noise warns instead of blocking."""
    warnings = []
    for spec in projects:
        calibrations = dict(
            Scenario.objects.filter(project__slug=spec["slug"]).values_list("name", "calibration")
        )
        for rule in spec["rules"]:
            if rule["kind"] != ThresholdRule.Kind.RELATIVE or not calibrations.get(rule["scenario"]):
                continue
            relative = rules.rule_from_fields(
                label=f"{rule['metric']} {rule['aggregation']} relative",
                kind=rule["kind"],
                metric=rule["metric"],
                aggregation=rule["aggregation"],
                warn_pct=rule["warn_pct"],
                fail_pct=rule["fail_pct"],
                floor=rule["floor"],
                direction=rule["direction"],
            )
            noise = noise_for(relative, calibrations[rule["scenario"]])
            if noise is not None and noise.below_noise:
                warnings.append(
                    f"Warning: {spec['slug']}/{rule['scenario']} {relative.label}: "
                    f"fail +{relative.fail_pct:g}% is below the noise ({noise.describe()}); "
                    f"regressions under {noise.history_pct:.0f}% will warn, not block."
                )
    return warnings
