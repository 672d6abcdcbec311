"""perfgate.yaml's watch policy: ``autoRollback`` and ``watch: {…}`` on an environment, applied
by ``manage.py apply_config`` like every other key (idempotent, audited, in the dry-run diff,
refused whole with its place named)."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml
from django.core.management.base import CommandError

from gates.models import AuditEvent, Environment, Project
from tests.gates.test_apply_config import apply, write

ROOT = Path(__file__).resolve().parent.parent.parent

CONFIG = """
projects:
  - slug: wedsync-web
    allowedHosts: ["127.0.0.1", "*.vercel.app"]
    environments:
      staging:    {enforce: true}
      production: {enforce: true, failClosed: true, autoRollback: true,
                   watch: {scenario: probe, initialDelay: 30s, interval: 1m, window: 15m,
                           failureLimit: 3, consecutive: false, inconclusiveLimit: 1,
                           consecutiveErrorLimit: 5, dryRun: true, rollbackWorkflow: rollback.yml}}
    scenarios:
      - name: guest-list
        scriptText: "export default function () {}"
        targetUrl: http://127.0.0.1:8001
        default: true
      - name: probe
        scriptText: "export default function () {}"
        targetUrl: http://127.0.0.1:8001
        vus: 2
        duration: 10s
"""


@pytest.fixture
def config_dir(tmp_path):
    return tmp_path


def production() -> Environment:
    return Environment.objects.select_related("watch_scenario").get(
        project__slug="wedsync-web", name="production"
    )


@pytest.mark.django_db
def test_a_watch_policy_sets_every_watch_field_of_the_environment(config_dir):
    apply(write(config_dir, CONFIG))

    environment = production()
    assert environment.auto_rollback is True
    assert environment.watch_scenario.name == "probe"
    assert (
        environment.watch_initial_delay_seconds,
        environment.watch_interval_seconds,
        environment.watch_window_seconds,
        environment.watch_failure_limit,
        environment.watch_consecutive,
        environment.watch_inconclusive_limit,
        environment.watch_consecutive_error_limit,
        environment.watch_dry_run,
        environment.rollback_workflow,
    ) == (30, 60, 900, 3, False, 1, 5, True, "rollback.yml")
    staging = Environment.objects.select_related("watch_scenario").get(name="staging")
    assert (staging.auto_rollback, staging.watch_scenario) == (False, None)
    created = AuditEvent.objects.get(action="config.environment.created", environment="production")
    assert created.data["after"]["watch_scenario"] == "probe"


@pytest.mark.django_db
def test_applying_a_watch_policy_twice_changes_nothing(config_dir):
    path = write(config_dir, CONFIG)
    apply(path)
    events = AuditEvent.objects.count()

    assert "No changes" in apply(path)
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_a_changed_watch_policy_prints_and_audits_the_difference(config_dir):
    apply(write(config_dir, CONFIG))
    changed = CONFIG.replace("failureLimit: 3", "failureLimit: 1").replace(
        "scenario: probe,", "scenario: guest-list,"
    )

    lines = apply(write(config_dir, changed)).strip().splitlines()

    assert (
        "~ environment wedsync-web/production: watch_scenario 'probe' → 'guest-list', "
        "watch_failure_limit 3 → 1" in lines
    )
    update = AuditEvent.objects.get(action="config.environment.updated")
    assert (update.data["before"]["watch_scenario"], update.data["after"]["watch_scenario"]) == (
        "probe",
        "guest-list",
    )
    assert update.data["after"]["watch_failure_limit"] == 1
    assert production().watch_scenario.name == "guest-list"


@pytest.mark.django_db
def test_removing_the_watch_block_stops_watching_and_restores_the_defaults(config_dir):
    apply(write(config_dir, CONFIG))
    start = CONFIG.index("autoRollback: true,")
    end = CONFIG.index("rollback.yml}}") + len("rollback.yml}}")
    unwatched = CONFIG[:start] + "autoRollback: false}" + CONFIG[end:]

    apply(write(config_dir, unwatched))

    environment = production()
    assert (environment.watch_scenario, environment.auto_rollback, environment.watch_dry_run) == (
        None,
        False,
        False,
    )
    assert (
        environment.watch_failure_limit,
        environment.watch_window_seconds,
        environment.rollback_workflow,
    ) == (
        2,
        900,
        "",
    )


@pytest.mark.django_db
def test_a_dry_run_shows_the_watch_policy_and_writes_nothing(config_dir):
    apply(write(config_dir, CONFIG))
    changed = CONFIG.replace("interval: 1m", "interval: 2m")

    output = apply(write(config_dir, changed), "--dry-run")

    assert "~ environment wedsync-web/production: watch_interval_seconds 60 → 120" in output
    assert "nothing was written" in output
    assert production().watch_interval_seconds == 60


@pytest.mark.parametrize(
    ("change", "place", "message"),
    [
        (
            ("scenario: probe,", "scenario: canary,"),
            "projects[0].environments.production.watch.scenario",
            "no scenario named 'canary' in this project (scenarios: guest-list, probe)",
        ),
        (
            ("interval: 1m", "interval: 0s"),
            "projects[0].environments.production.watch.interval",
            "expected a whole number of seconds, at least 1s",
        ),
        (
            ("window: 15m", "window: soon"),
            "projects[0].environments.production.watch.window",
            "expected a duration like",
        ),
        (
            ("failureLimit: 3", "failureLimit: -1"),
            "projects[0].environments.production.watch.failureLimit",
            "must be at least 0",
        ),
        (
            ("rollbackWorkflow: rollback.yml", "rollbackWorkflow: ../rollback.sh"),
            "projects[0].environments.production.watch.rollbackWorkflow",
            "'../rollback.sh' is not a valid workflow file name",
        ),
        (
            ("dryRun: true", "dryRun: true, dryrun: false"),
            "projects[0].environments.production.watch.dryrun",
            "unknown key",
        ),
        (
            ("autoRollback: true", "autoRollback: yes please"),
            "projects[0].environments.production.autoRollback",
            "",
        ),
    ],
)
@pytest.mark.django_db
def test_an_invalid_watch_policy_is_rejected_whole_naming_its_place(config_dir, change, place, message):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace(*change)))
    assert f"{place}: {message}" in str(error.value)
    assert not Project.objects.exists()


@pytest.mark.django_db
def test_a_watch_without_a_scenario_is_rejected(config_dir):
    with pytest.raises(CommandError) as error:
        apply(write(config_dir, CONFIG.replace("scenario: probe, ", "")))
    assert "projects[0].environments.production.watch.scenario: is required" in str(error.value)


@pytest.mark.parametrize("zero", ["0", "0s"])
@pytest.mark.django_db
def test_an_initial_delay_of_zero_probes_at_once(config_dir, zero):
    apply(write(config_dir, CONFIG.replace("initialDelay: 30s", f"initialDelay: {zero}")))
    assert production().watch_initial_delay_seconds == 0


def test_the_published_schema_describes_the_watch_policy():
    schema = json.loads((ROOT / "docs" / "perfgate.schema.json").read_text())
    jsonschema.validate(yaml.safe_load(CONFIG), schema)
    for typo in (
        ("failureLimit:", "failurelimit:"),
        ("interval: 1m", "interval: -5"),
        ("scenario: probe, ", ""),
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(yaml.safe_load(CONFIG.replace(*typo)), schema)
