"""manage.py apply_config: configuration as code, idempotent, audited, all or nothing."""

import textwrap
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from gates.models import AuditEvent, Environment, Project, Scenario, ThresholdRule

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
    ],
)
@pytest.mark.django_db
def test_an_invalid_file_is_rejected_whole_with_its_place_named(config_dir, change, place, message):
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
