"""manage.py calibrate: A/A runs measure each checked metric's noise, which is stored on the
scenario, shown next to each rule in the admin and checked by apply_config."""

import itertools
import math
import socket
import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from baselines import stats
from gates import calibration
from gates.loadtest.sample_target import start_in_thread
from gates.models import AuditEvent, Scenario
from gates.services import scenario_calibrate
from gates.targets import Target
from tests.conftest import SCRIPT

# Ten A/A runs of a p(95) around 100 ms: a CV of about 7%.
NOISY = [100.0, 108.0, 95.0, 103.0, 91.0, 110.0, 99.0, 104.0, 93.0, 101.0]


@pytest.fixture
def admin_client_logged_in(client, admin_user):
    client.force_login(admin_user)
    return client


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stored_calibration(environment, scenario, values_by_key: dict[str, list[float]]) -> dict:
    """The document calibrate would store for these per-run values, without running anything."""
    plan = calibration.CalibrationPlan(
        scenario=scenario,
        environment=environment,
        target=Target(url="http://127.0.0.1:8001", host="127.0.0.1", port=8001, addresses=("127.0.0.1",)),
        metrics=tuple(calibration.checked_metrics(environment, scenario)),
        submetrics=(),
        percentiles=(),
    )
    count = len(next(iter(values_by_key.values())))
    runs = [
        calibration.RunNumbers(
            values={key: values[i] for key, values in values_by_key.items()},
            requests=1000,
            kinds=dict.fromkeys(values_by_key, ("trend", "ms")),
        )
        for i in range(count)
    ]
    return calibration.calibration_document(plan, runs, timezone.now())


def calibrate(*args) -> str:
    out = StringIO()
    call_command("calibrate", "--project", "wedsync-web", "--environment", "staging", *args, stdout=out)
    return out.getvalue()


def test_the_noise_of_given_values_matches_the_models_of_both_modes():
    noise = calibration.noise_of(NOISY, fail_pct=10)

    model = stats.noise_model(NOISY)
    window = stats.NoiseModel(centre=model.centre, spread=model.spread, n=30, log=True)
    assert noise.median == pytest.approx(100.5)
    assert noise.cv == pytest.approx(model.spread)
    assert 0.04 < noise.cv < 0.12
    assert noise.history_detectable == pytest.approx(
        window.detectable_change(settings.PERFGATE_FALSE_BLOCK_RATE, 0.8)
    )
    # A pair's log-ratio sd: 1.4826 x the median |log difference| of consecutive runs, for a
    # repetition of 1/5 of a run.
    steps = [abs(math.log(b / a)) for a, b in itertools.pairwise(NOISY)]
    expected_pair = sorted(steps)[len(steps) // 2] / 0.6744897501960817 * math.sqrt(5)
    assert noise.pair_noise == pytest.approx(expected_pair)
    assert noise.gate_run_detectable == pytest.approx(
        stats.paired_detectable_change(expected_pair, pairs=12, threshold=0.10, alpha=0.05)
    )
    assert noise.gate_run_detectable > 0.10


def test_runs_alternating_high_and_low_are_not_mistaken_for_no_pair_noise():
    noise = calibration.pair_noise([100.0, 110.0, 100.0, 110.0, 100.0], repetitions_per_run=1)
    assert noise == pytest.approx(math.log(1.1) / 0.6744897501960817)


def test_a_throughput_rule_detects_a_fall_smaller_than_the_same_rise():
    up = calibration.noise_of(NOISY, fail_pct=10, direction="up").history_detectable
    down = calibration.noise_of(NOISY, fail_pct=10, direction="down").history_detectable
    assert down == pytest.approx(up / (1 + up)) and down < up


def test_an_error_rate_of_zero_has_no_ratio_for_gate_run_mode():
    noise = calibration.noise_of([0.0, 0.01, 0.0, 0.02], fail_pct=10)
    assert noise.pair_noise is None and noise.gate_run_detectable is None


@override_settings(PERFGATE_BASELINE_WINDOW=2)
def test_a_baseline_window_too_short_for_a_noise_model_detects_nothing_in_history_mode():
    assert calibration.noise_of(NOISY, fail_pct=10).history_detectable is None


def test_short_scenarios_have_fewer_repetitions_per_run_as_a_repetition_lasts_a_second_at_least():
    assert calibration.repetitions_per_run(30) == 5
    assert calibration.repetitions_per_run(2) == 2
    assert calibration.repetitions_per_run(1) == 1


def test_a_rule_failing_below_the_noise_is_flagged_and_one_above_it_is_not(staging, scenario, add_rule):
    tight = add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10)
    loose = add_rule("http_req_duration", aggregation="p(95)", warn_pct=40, fail_pct=60)
    add_rule("http_req_duration", threshold="p(95)<400")  # absolute: not calibrated
    document = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY})
    scenario.calibration = document
    scenario.save(update_fields=["calibration"])

    stored = document["metrics"]["http_req_duration p(95)"]
    assert stored["values"] == NOISY and stored["failPct"] == 10
    assert 10 < stored["historyDetectablePct"] < 60
    tight_noise = calibration.rule_noise(tight)
    loose_noise = calibration.rule_noise(loose)
    assert tight_noise.below_noise and not loose_noise.below_noise
    # Gate-run mode's detectable change depends on the fail %: recomputed for the looser rule.
    assert tight_noise.gate_run_pct == stored["gateRunDetectablePct"]
    assert loose_noise.gate_run_pct > 60
    assert tight_noise.describe().startswith(f"CV {stored['cvPct']:.2g}%, detects ≥ ")
    assert tight_noise.describe().endswith(f"calibrated {document['at'][:10]} on staging")


def test_the_rule_list_shows_the_calibrated_noise_and_flags_rules_below_it(
    admin_client_logged_in, staging, scenario, add_rule
):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=5, fail_pct=10)
    scenario.calibration = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY})
    scenario.save(update_fields=["calibration"])

    page = admin_client_logged_in.get(reverse("admin:gates_thresholdrule_changelist")).content.decode()
    assert "below noise" in page and "(history)" in page and "on staging" in page

    scenario_page = admin_client_logged_in.get(
        reverse("admin:gates_scenario_change", args=[scenario.pk])
    ).content.decode()
    assert "below noise" in scenario_page and "http_req_duration p(95) relative" in scenario_page


def test_the_rule_list_flags_nothing_for_a_rule_above_the_noise_or_before_calibration(
    admin_client_logged_in, staging, scenario, add_rule
):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=40, fail_pct=60)
    changelist = reverse("admin:gates_thresholdrule_changelist")
    assert "not calibrated" in admin_client_logged_in.get(changelist).content.decode()

    scenario.calibration = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY})
    scenario.save(update_fields=["calibration"])
    page = admin_client_logged_in.get(changelist).content.decode()
    assert "(history)" in page and "below noise" not in page


CONFIG = """
projects:
  - slug: wedsync-web
    name: WedSync web
    allowedHosts: ["127.0.0.1"]
    environments:
      staging: {{enforce: true, failClosed: false}}
    scenarios:
      - name: guest-list
        script: guest-list.js
        targetUrl: http://127.0.0.1:8001
        default: true
    rules:
      - {{scenario: guest-list, metric: http_req_duration, aggregation: "p(95)",
         relative: {{warnPct: 5, failPct: {fail_pct}}}}}
"""


def apply_config(tmp_path, fail_pct) -> str:
    (tmp_path / "guest-list.js").write_text(SCRIPT)
    path = tmp_path / "perfgate.yaml"
    path.write_text(textwrap.dedent(CONFIG.format(fail_pct=fail_pct)))
    out = StringIO()
    call_command("apply_config", str(path), stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_apply_config_warns_about_a_rule_below_the_calibrated_noise_without_failing(tmp_path, actor):
    assert "below the noise" not in apply_config(tmp_path, fail_pct=10)  # not calibrated yet
    scenario = Scenario.objects.get(name="guest-list")
    staging = scenario.project.environments.get(name="staging")
    document = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY})
    scenario_calibrate(scenario=scenario, environment=staging, calibration=document, actor=actor)

    output = apply_config(tmp_path, fail_pct=10)
    history = document["metrics"]["http_req_duration p(95)"]["historyDetectablePct"]
    assert (
        "Warning: wedsync-web/guest-list http_req_duration p(95) relative: fail +10% is below the noise"
        in output
    )
    assert f"regressions under {history:.0f}% will warn, not block" in output
    assert "below the noise" not in apply_config(tmp_path, fail_pct=60)
    # Applying a configuration leaves the measured calibration alone.
    assert Scenario.objects.get(pk=scenario.pk).calibration == document


def test_fewer_than_three_runs_are_refused(staging, add_rule):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10)
    with pytest.raises(CommandError, match="at least 3 runs") as refused:
        calibrate("--runs", "2")
    assert refused.value.returncode == 2


def test_a_scenario_without_relative_rules_has_nothing_to_calibrate(staging, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    with pytest.raises(CommandError, match="no relative rule in staging"):
        calibrate("--runs", "3")


def test_a_failing_run_is_reported_and_nothing_is_stored(staging, scenario, add_rule):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10)
    scenario.target_url = f"http://127.0.0.1:{closed_port()}"
    scenario.save(update_fields=["target_url"])

    with pytest.raises(
        CommandError, match=r"run 1/3 failed: Target unreachable.*Nothing was stored"
    ) as failed:
        calibrate("--runs", "3")

    assert failed.value.returncode == 1
    assert Scenario.objects.get(pk=scenario.pk).calibration == {}
    assert not AuditEvent.objects.filter(action="scenario.calibrated").exists()


def test_storing_a_calibration_audits_it_with_the_one_it_replaces(staging, scenario, add_rule, actor):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10)
    first = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY})
    second = stored_calibration(staging, scenario, {"http_req_duration p(95)": NOISY[::-1]})

    scenario_calibrate(scenario=scenario, environment=staging, calibration=first, actor=actor)
    scenario_calibrate(scenario=scenario, environment=staging, calibration=second, actor=actor)

    assert Scenario.objects.get(pk=scenario.pk).calibration == second
    events = AuditEvent.objects.filter(action="scenario.calibrated").order_by("id")
    assert [e.data["before"] for e in events] == [None, first]
    assert events.last().environment == "staging" and events.last().actor == "user:olivia-ops"


SCRIPT_FILE = Path(__file__).resolve().parents[2] / "gates" / "demo" / "guest-list.js"


@pytest.fixture
def target():
    server = start_in_thread(latency_ms=20.0, jitter_ms=2.0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_three_real_k6_runs_print_the_table_and_store_the_noise(staging, scenario, add_rule, target):
    add_rule("http_req_duration", aggregation="p(95)", warn_pct=1, fail_pct=2)
    add_rule("http_req_duration{name:guest-list}", aggregation="avg", fail_pct=50)
    Scenario.objects.filter(pk=scenario.pk).update(
        script_text=SCRIPT_FILE.read_text(),
        target_url=target.url,
        vus=3,
        duration_seconds=2,
        warmup_seconds=1,
        min_requests=20,
    )

    output = calibrate("--runs", "3")

    lines = output.splitlines()
    runs = [line for line in lines if line.startswith("run ")]
    assert [line.split(":")[0] for line in runs] == ["run 1/3", "run 2/3", "run 3/3"], output
    assert "http_req_duration p(95) " in runs[0] and " ms, " in runs[0] and runs[0].endswith(" requests")
    assert "rule" in output and "CV %" in output and "history ≥ %" in output and "gate-run ≥ %" in output
    stored = Scenario.objects.get(pk=scenario.pk).calibration
    assert (stored["runs"], stored["environment"], stored["load"]["durationSeconds"]) == (3, "staging", 2)
    assert set(stored["metrics"]) == {"http_req_duration p(95)", "http_req_duration{name:guest-list} avg"}
    p95 = stored["metrics"]["http_req_duration p(95)"]
    # The latency is 20 ms plus jitter: every run measured it, and none of the warm-up's numbers.
    assert len(p95["values"]) == 3 and all(15 < value < 200 for value in p95["values"]), p95
    assert p95["cvPct"] > 0 and p95["historyDetectablePct"] > p95["cvPct"]
    # A 2% fail threshold is below any real noise of three 2-second runs.
    below = next(line for line in lines if line.startswith("http_req_duration p(95) relative"))
    assert below.endswith("below noise"), output
    event = AuditEvent.objects.get(action="scenario.calibrated")
    assert event.data["after"] == stored and event.target_id == str(scenario.pk)


@pytest.mark.slow
def test_a_stop_request_ends_a_run_without_numbers(staging, scenario, add_rule, target):
    add_rule("http_req_duration", aggregation="p(95)", fail_pct=10)
    Scenario.objects.filter(pk=scenario.pk).update(target_url=target.url, duration_seconds=30)
    plan = calibration.calibration_plan(staging, Scenario.objects.get(pk=scenario.pk))

    with pytest.raises(calibration.Interrupted):
        calibration.run_once(plan, should_stop=lambda: True)
