"""manage.py apply_config: configuration as code, idempotent, audited, all or nothing; and the
same rules for scenarios and thresholds when they are edited in the admin."""

import json
import textwrap
from io import StringIO
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from gates import rules
from gates.models import AuditEvent, Environment, Project, Scenario, ThresholdRule

ROOT = Path(__file__).resolve().parent.parent.parent

CONFIG = """
projects:
  - slug: wedsync-web
    name: WedSync web
    repository: acme/wedsync
    vercelProjectId: prj_123
    allowedHosts: ["127.0.0.1", "staging.wedsync.example", "*.vercel.app"]
    environments:
      staging:    {enforce: true, failClosed: false}
      production: {enforce: true, failClosed: true, requireStagingPass: true, bypassApprovals: 2}
    scenarios:
      - name: guest-list
        tool: k6
        script: perf/guest-list.js
        targetUrl: http://127.0.0.1:8001
        vus: 10
        duration: 30s
        maxVus: 50
        maxDuration: 5m
        minRequests: 100
        default: true
    rules:
      - {scenario: guest-list, metric: http_req_duration, threshold: "p(95)<500", severity: key}
      - {scenario: guest-list, metric: "http_req_duration{name:rsvp}", threshold: "p(99)<800", severity: info}
      - {scenario: guest-list, metric: http_req_failed, threshold: "rate<0.01", severity: key}
      - {scenario: guest-list, metric: http_req_duration, aggregation: "p(95)",
         relative: {warnPct: 5, failPct: 10, floor: 5}, severity: key}
"""


@pytest.fixture
def config_dir(tmp_path):
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "guest-list.js").write_text("export default function () {}\n")
    return tmp_path


def write(config_dir, text, name="perfgate.yaml"):
    path = config_dir / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def apply(path, *args):
    out = StringIO()
    call_command("apply_config", path, *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_applying_the_product_example_creates_everything_it_describes(config_dir):
    output = apply(write(config_dir, CONFIG))

    project = Project.objects.get(slug="wedsync-web")
    assert project.allowed_hosts == ["127.0.0.1", "staging.wedsync.example", "*.vercel.app"]
    production = project.environments.get(name="production")
    assert (
        production.mode,
        production.fail_closed,
        production.require_staging_pass,
        production.bypass_approvals,
    ) == ("enforce", True, True, 2)
    scenario = Scenario.objects.get(project=project, name="guest-list")
    assert scenario.script_text == "export default function () {}\n"
    assert (scenario.vus, scenario.duration_seconds, scenario.max_duration_seconds, scenario.is_default) == (
        10,
        30,
        300,
        True,
    )
    rules = ThresholdRule.objects.filter(project=project).order_by("id")
    assert [r.label for r in rules] == [
        "http_req_duration: p(95)<500",
        "http_req_duration{name:rsvp}: p(99)<800",
        "http_req_failed: rate<0.01",
        "http_req_duration p(95) relative",
    ]
    relative = rules.get(kind="relative")
    assert (relative.warn_pct, relative.fail_pct, relative.floor) == (5.0, 10.0, 5.0)
    assert all(r.config_source.endswith("perfgate.yaml") for r in rules)
    assert "+ project wedsync-web" in output and output.count("+ rule") == 4
    assert AuditEvent.objects.filter(action="config.rule.created").count() == 4


@pytest.mark.django_db
def test_applying_the_same_file_twice_changes_nothing(config_dir):
    path = write(config_dir, CONFIG)
    apply(path)
    events = AuditEvent.objects.count()

    output = apply(path)
    assert "No changes" in output
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_a_changed_file_prints_and_audits_exactly_the_difference(config_dir):
    path = write(config_dir, CONFIG)
    apply(path)
    changed = CONFIG.replace("vus: 10", "vus: 20").replace(
        '"p(95)<500", severity: key', '"p(95)<450", severity: key'
    )
    changed = changed.replace('"rate<0.01", severity: key', '"rate<0.01", severity: info')
    output = apply(write(config_dir, changed))

    lines = output.strip().splitlines()
    assert "~ scenario wedsync-web/guest-list: vus 10 → 20" in lines
    assert "- rule wedsync-web/guest-list http_req_duration p(95)<500" in lines
    assert "+ rule wedsync-web/guest-list http_req_duration p(95)<450" in lines
    assert "~ rule wedsync-web/guest-list http_req_failed rate<0.01: severity 'key' → 'info'" in lines
    update = AuditEvent.objects.get(action="config.scenario.updated")
    assert update.data["before"]["vus"] == 10 and update.data["after"]["vus"] == 20
    assert ThresholdRule.objects.get(metric="http_req_failed").severity == "info"


@pytest.mark.django_db
def test_dry_run_prints_the_diff_and_writes_nothing(config_dir):
    output = apply(write(config_dir, CONFIG), "--dry-run")
    assert "+ project wedsync-web" in output and "nothing was written" in output
    assert not Project.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_rules_made_in_the_admin_survive_an_apply(config_dir, admin_user):
    path = write(config_dir, CONFIG)
    apply(path)
    project = Project.objects.get()
    manual = ThresholdRule.objects.create(
        project=project, scenario=project.scenarios.get(), metric="http_reqs", threshold="count>=300"
    )
    apply(path)
    assert ThresholdRule.objects.filter(pk=manual.pk).exists()


@pytest.mark.parametrize(
    ("change", "place", "message"),
    [
        (('"p(99)<800"', '"p(101)<800"'), "projects[0].rules[1].threshold", "p(101)"),
        (('"rate<0.01"', '"rate<1%"'), "projects[0].rules[2].threshold", "1%"),
        (('"p(95)<500"', '"p95<500"'), "projects[0].rules[0].threshold", "p95"),
        (
            ("scenario: guest-list, metric: http_req_failed", "scenario: checkout, metric: http_req_failed"),
            "projects[0].rules[2].scenario",
            "checkout",
        ),
        (
            ("script: perf/guest-list.js", "script: perf/missing.js"),
            "projects[0].scenarios[0].script",
            "missing.js",
        ),
        (
            ("targetUrl: http://127.0.0.1:8001", "targetUrl: http://169.254.169.254/"),
            "projects[0].scenarios[0].targetUrl",
            "allowlist",
        ),
        (
            ("targetUrl: http://127.0.0.1:8001", "targetUrl: ftp://127.0.0.1/"),
            "projects[0].scenarios[0].targetUrl",
            "http",
        ),
        (("vus: 10", "vus: 100"), "projects[0].scenarios[0].vus", "maxVus"),
        (("duration: 30s", "duration: soon"), "projects[0].scenarios[0].duration", "soon"),
        (
            ("bypassApprovals: 2", "bypassApprovals: 0"),
            "projects[0].environments.production.bypassApprovals",
            "at least 1",
        ),
        (
            ("vercelProjectId: prj_123", "vercelProjectID: prj_123"),
            "projects[0].vercelProjectID",
            "unknown key",
        ),
        (("production:", "preview:"), "projects[0].environments.preview", "unknown key"),
        (("failPct: 10", "failPct: ten"), "projects[0].rules[3].relative.failPct", "number"),
        (
            ("warnPct: 5, failPct: 10", "warnPct: 5"),
            "projects[0].rules[3].relative.failPct",
            "needs failPct when warnPct is given",
        ),
        (("failPct: 10", "failPct: 10, x: 1"), "projects[0].rules[3].relative.x", "unknown key"),
        (
            ("maxDuration: 5m", "maxDuration: 1h"),
            "projects[0].scenarios[0].maxDuration",
            "PERFGATE_TASK_TIMEOUT",
        ),
        (
            ("maxDuration: 5m", "maxDuration: 25m\n        warmup: 5m"),
            "projects[0].scenarios[0].maxDuration",
            "warm-up of 300s",
        ),
        (
            ("duration: 30s\n        maxVus: 50\n        maxDuration: 5m\n", "duration: 40m\n"),
            "projects[0].scenarios[0].duration",
            "do not fit in a worker task",
        ),
    ],
)
@pytest.mark.django_db
def test_an_invalid_file_is_rejected_whole_with_its_place_named(config_dir, settings, change, place, message):
    settings.PERFGATE_LONGEST_RUN_SECONDS = 1620  # the default settings' budget
    path = write(config_dir, CONFIG.replace(*change))
    with pytest.raises(CommandError) as error:
        apply(path)
    text = str(error.value)
    assert place in text and message in text and "Nothing was applied" in text
    assert not Project.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_broken_yaml_names_the_line(config_dir):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, "projects:\n  - slug: [unclosed\n"))
    assert "line" in str(error.value) and "YAML" in str(error.value)


@pytest.mark.django_db
def test_a_new_default_scenario_replaces_the_old_one(config_dir):
    apply(write(config_dir, CONFIG))
    rsvp = '      - {name: rsvp, scriptText: "export default function () {}", default: true}\n'
    moved = CONFIG.replace("default: true", "default: false").replace("    rules:\n", rsvp + "    rules:\n")
    apply(write(config_dir, moved))
    assert list(Scenario.objects.filter(is_default=True).values_list("name", flat=True)) == ["rsvp"]
    assert Environment.objects.count() == 2


def test_the_committed_json_schema_is_what_the_command_prints():
    out = StringIO()
    call_command("apply_config", "--schema", stdout=out)
    committed = (ROOT / "docs" / "perfgate.schema.json").read_text()
    assert committed == out.getvalue(), (
        "docs/perfgate.schema.json is stale: manage.py apply_config --schema > docs/perfgate.schema.json"
    )


def test_the_product_example_and_the_demo_match_the_published_schema():
    schema = json.loads((ROOT / "docs" / "perfgate.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CONFIG), schema)
    jsonschema.validate(yaml.safe_load((ROOT / "gates" / "demo" / "perfgate.yaml").read_text()), schema)
    for typo in (("maxVus:", "maxVUs:"), ("production:", "preview:")):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load(CONFIG.replace(*typo)), schema)


@pytest.mark.parametrize(
    ("change", "place", "expected"),
    [
        (("projects:", "version: 2\nprojects:"), "version", "projects"),
        (("    name: WedSync web", "    title: WedSync web"), "projects[0].title", "allowedHosts"),
        (
            ("failClosed: false}", "failClosed: false, failOpen: true}"),
            "projects[0].environments.staging.failOpen",
            "failClosed",
        ),
        (("        maxVus: 50", "        maxVUs: 50"), "projects[0].scenarios[0].maxVUs", "maxVus"),
        (
            ('"rate<0.01", severity: key', '"rate<0.01", severity: key, env: [staging]'),
            "projects[0].rules[2].env",
            "environments",
        ),
        (("floor: 5}", "floor: 5, ceiling: 9}"), "projects[0].rules[3].relative.ceiling", "warnPct"),
    ],
)
@pytest.mark.django_db
def test_a_file_with_an_unknown_key_is_rejected_naming_its_place(config_dir, change, place, expected):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace(*change)))
    assert f"{place}: unknown key; expected one of: " in str(error.value)
    assert expected in str(error.value).split("expected one of: ")[1]
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_a_snake_case_key_is_unknown_too(config_dir):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace("minRequests: 100", "min_requests: 100")))
    assert "projects[0].scenarios[0].min_requests: unknown key" in str(error.value)


@pytest.mark.django_db
def test_a_relative_rule_with_only_fail_pct_never_warns(config_dir):
    apply(write(config_dir, CONFIG.replace("warnPct: 5, failPct: 10", "failPct: 10")))

    rule = ThresholdRule.objects.get(kind="relative")
    spec = rule.to_spec()
    assert (rule.warn_pct, rule.fail_pct) == (None, 10.0)
    assert (spec.warn_pct, spec.fail_pct) == (None, 10.0)


@pytest.mark.django_db
def test_a_relative_rule_with_warn_pct_alone_is_rejected_before_anything_is_applied(config_dir):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace("warnPct: 5, failPct: 10, floor: 5", "warnPct: 3")))
    assert (
        "projects[0].rules[3].relative.failPct: a relative rule needs failPct when warnPct is given"
        in str(error.value)
    )
    assert not ThresholdRule.objects.exists() and not AuditEvent.objects.exists()


@pytest.mark.django_db
def test_the_longest_run_follows_the_task_timeout_setting(config_dir, settings):
    settings.PERFGATE_LONGEST_RUN_SECONDS = 600
    path = write(config_dir, CONFIG.replace("maxDuration: 5m", "maxDuration: 10m"))
    apply(path)
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace("maxDuration: 5m", "maxDuration: 10m\n        warmup: 1s")))
    assert "projects[0].scenarios[0].maxDuration" in str(error.value) and "at most 600s" in str(error.value)
    assert Scenario.objects.get().max_duration_seconds == 600


def test_apply_config_needs_a_file_unless_it_prints_the_schema():
    with pytest.raises(CommandError) as error:
        call_command("apply_config", stdout=StringIO())
    assert "perfgate.yaml" in str(error.value)


# The admin's door to the same settings: a form is validated by the model's clean().


@pytest.fixture
def admin_client_logged_in(client, admin_user):
    client.force_login(admin_user)
    return client


def relative_rule_form(project, scenario, **overrides):
    return {
        "project": project.pk,
        "scenario": scenario.pk,
        "metric": "http_req_duration",
        "kind": "relative",
        "threshold": "",
        "aggregation": "p(95)",
        "warn_pct": "",
        "fail_pct": "",
        "floor": "0",
        "direction": "auto",
        "severity": "key",
        **overrides,
    }


def test_a_relative_rule_with_warn_pct_and_no_fail_pct_is_refused_in_the_admin(
    admin_client_logged_in, project, scenario
):
    response = admin_client_logged_in.post(
        reverse("admin:gates_thresholdrule_add"), relative_rule_form(project, scenario, warn_pct="3")
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "needs fail % when warn % is given" in str(errors["fail_pct"])
    assert not ThresholdRule.objects.exists()


@pytest.mark.parametrize(
    ("warn_pct", "fail_pct", "limits"),
    [("", "", (5.0, 10.0)), ("", "20", (None, 20.0)), ("3", "20", (3.0, 20.0))],
)
def test_a_relative_rule_in_the_admin_takes_the_settings_only_with_no_limits_of_its_own(
    admin_client_logged_in, project, scenario, settings, warn_pct, fail_pct, limits
):
    settings.PERFGATE_RELATIVE_WARN_PCT, settings.PERFGATE_RELATIVE_FAIL_PCT = 5.0, 10.0
    response = admin_client_logged_in.post(
        reverse("admin:gates_thresholdrule_add"),
        relative_rule_form(project, scenario, warn_pct=warn_pct, fail_pct=fail_pct),
    )
    assert response.status_code == 302
    spec = ThresholdRule.objects.get().to_spec()
    assert (spec.warn_pct, spec.fail_pct) == limits


@pytest.mark.django_db
def test_a_stored_relative_rule_with_warn_pct_alone_is_not_given_the_default_fail_pct(project, scenario):
    # Saved without clean() (a shell, an old row): evaluating it must not quietly use the defaults.
    rule = ThresholdRule.objects.create(
        project=project,
        scenario=scenario,
        metric="http_req_duration",
        kind="relative",
        aggregation="p(95)",
        warn_pct=12.0,
    )
    with pytest.raises(rules.RuleSyntaxError, match="needs fail % when warn % is given"):
        rule.to_spec()


def scenario_form(project, **overrides):
    return {
        "project": project.pk,
        "name": "soak",
        "tool": "k6",
        "script_text": "export default function () {}",
        "script_path": "",
        "target_url": "",
        "vus": "10",
        "duration_seconds": "30",
        "max_vus": "50",
        "max_duration_seconds": "300",
        "arrival_rate": "",
        "warmup_seconds": "0",
        "min_requests": "100",
        **overrides,
    }


@pytest.mark.parametrize(
    ("overrides", "saved"),
    [
        ({"max_duration_seconds": "1620"}, True),
        ({"max_duration_seconds": "3600"}, False),
        ({"max_duration_seconds": "1600", "warmup_seconds": "30"}, False),
    ],
)
def test_a_scenario_whose_longest_run_outlasts_a_worker_task_is_refused_in_the_admin(
    admin_client_logged_in, project, settings, overrides, saved
):
    settings.PERFGATE_LONGEST_RUN_SECONDS = 1620
    response = admin_client_logged_in.post(
        reverse("admin:gates_scenario_add"), scenario_form(project, **overrides)
    )
    assert Scenario.objects.filter(name="soak").exists() == saved
    if not saved:
        errors = response.context["adminform"].form.errors
        assert "do not fit in a worker task" in str(errors["max_duration_seconds"])


def test_verdict_and_severity_are_defined_once_in_the_rule_grammar():
    from gates import models
    from gates.rules import grammar

    assert models.Verdict is grammar.Verdict and models.Severity is grammar.Severity
    assert ThresholdRule._meta.get_field("severity").choices == grammar.Severity.choices
    assert models.CheckResult._meta.get_field("verdict").choices == grammar.Verdict.choices
    assert dict(grammar.Verdict.choices)["no_baseline"] == "no baseline"
