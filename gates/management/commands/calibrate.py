"""manage.py calibrate: measure a scenario's run-to-run noise and store it on the scenario.

Exit status: 0 when the calibration was stored, 1 when a run failed (nothing is stored), 2 on a
usage error, 130 when stopped with Ctrl-C (nothing is stored).
"""

import contextlib
import signal
import threading

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from gates import calibration, plans
from gates.errors import ServiceError
from gates.execution import RunFailed
from gates.management.commands._common import USAGE_ERROR, cli_actor, project_and_environment
from gates.services import scenario_calibrate

INTERRUPTED = 130


class Command(BaseCommand):
    help = (
        "Run a scenario N times against its target with the same code every time (A/A), print the "
        "noise of every metric its relative rules check and the smallest change the gate can detect "
        "at that noise, and store it on the scenario (the admin shows it next to each rule). "
        f"Needs at least {calibration.MIN_RUNS} runs; use {calibration.RECOMMENDED_RUNS} or more, "
        "as few runs say little about the noise."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True)
        parser.add_argument("--environment", required=True)
        parser.add_argument("--scenario", help="Scenario name (default: the project's default scenario).")
        parser.add_argument(
            "--runs",
            type=int,
            default=calibration.RECOMMENDED_RUNS,
            help=f"How many runs (at least {calibration.MIN_RUNS}; "
            f"default and recommended minimum {calibration.RECOMMENDED_RUNS}).",
        )

    def handle(self, *args, **options):
        count = options["runs"]
        if count < calibration.MIN_RUNS:
            raise CommandError(
                f"--runs {count}: calibration needs at least {calibration.MIN_RUNS} runs to measure any "
                f"noise ({calibration.RECOMMENDED_RUNS} or more are recommended).",
                returncode=USAGE_ERROR,
            )
        project, environment = project_and_environment(options["project"], options["environment"])
        scenario = plans.scenario_for(project, options["scenario"])
        if scenario is None:
            name = options["scenario"]
            raise CommandError(
                f"Project {project.slug} has no scenario {name!r}."
                if name
                else f"Project {project.slug} has no default scenario; name one with --scenario.",
                returncode=USAGE_ERROR,
            )
        try:
            plan = calibration.calibration_plan(environment, scenario)
        except calibration.CalibrationRefused as exc:
            raise CommandError(str(exc), returncode=USAGE_ERROR) from exc

        warmup = f" after a {scenario.warmup_seconds} s warm-up" if scenario.warmup_seconds else ""
        self.stdout.write(
            f"Calibrating {scenario} in {environment.name}: {count} runs of {scenario.duration_seconds} s"
            f"{warmup} against {plan.target.url}, {_about(count, plan.run_seconds)}. "
            "Ctrl-C stops; nothing is stored then."
        )
        runs = self._run(plan, count)
        document = calibration.calibration_document(plan, runs, timezone.now())
        self.stdout.write(render_tables(plan, document))
        try:
            scenario_calibrate(
                scenario=scenario, environment=environment, calibration=document, actor=cli_actor()
            )
        except ServiceError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Stored on scenario {scenario}; the admin shows it next to each rule.")
        )

    def _run(self, plan, count: int) -> list:
        runs = []
        with _stop_on_interrupt(self) as stop_requested:
            for number in range(1, count + 1):
                if stop_requested():
                    break
                try:
                    numbers = calibration.run_once(plan, should_stop=stop_requested)
                except calibration.Interrupted:
                    break
                except RunFailed as exc:
                    raise CommandError(
                        f"run {number}/{count} failed: {str(exc).rstrip('.')}. Nothing was stored.",
                        returncode=1,
                    ) from exc
                runs.append(numbers)
                self.stdout.write(f"run {number}/{count}: {progress_line(plan, numbers)}")
        if len(runs) < count:
            raise CommandError(
                f"Stopped after {len(runs)} of {count} runs. Nothing was stored.", returncode=INTERRUPTED
            )
        return runs


@contextlib.contextmanager
def _stop_on_interrupt(command):
    """While the runs go on, the first Ctrl-C asks the current run to stop (the tool is stopped
    cleanly and its temporary files removed); a second one interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop.is_set
        return
    previous = signal.getsignal(signal.SIGINT)

    def interrupt(signum, frame):
        stop.set()
        signal.signal(signal.SIGINT, previous)
        command.stderr.write("Stopping the current run (Ctrl-C again to abort at once)…")

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield stop.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def progress_line(plan, numbers) -> str:
    """``http_req_duration p(95) 14.2 ms, 2,431 requests``."""
    parts = []
    for metric in plan.metrics:
        kind, unit = numbers.kinds[metric.key]
        value = calibration.format_value(numbers.values[metric.key], kind, unit, metric.aggregation)
        parts.append(f"{metric.key} {value}")
    if numbers.requests is not None:
        parts.append(f"{numbers.requests:,} requests")
    return ", ".join(parts)


COLUMNS = ("rule", "runs", "median", "CV %", "history ≥ %", "gate-run ≥ %", "fail %", "")


def render_tables(plan, document: dict) -> str:
    """One table per checked metric: a row per rule, with the noise and what the gate detects."""
    blocks = []
    for metric in plan.metrics:
        stored = document["metrics"][metric.key]
        median = calibration.format_value(
            stored["median"], stored["kind"], stored["unit"], metric.aggregation
        )
        rows = []
        for spec in metric.specs:
            noise = calibration.noise_for(spec, document)
            rows.append(
                (
                    spec.label,
                    str(document["runs"]),
                    median,
                    _pct(noise.cv_pct),
                    _pct(noise.history_pct),
                    _pct(noise.gate_run_pct),
                    f"{spec.fail_pct:g}",
                    "below noise" if noise.below_noise else "",
                )
            )
        widths = [max(len(row[i]) for row in (COLUMNS, *rows)) for i in range(len(COLUMNS))]
        lines = [f"{metric.key} ({stored['direction']} is worse)"]
        for row in (COLUMNS, *rows):
            cells = [
                row[0].ljust(widths[0]),
                *(cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:-1], strict=True)),
            ]
            lines.append("  ".join([*cells, row[-1]]).rstrip())
        blocks.append("\n".join(lines))
    model = document["model"]
    notes = (
        f"history: one run against a baseline of {model['baselineWindow']} runs, false-block rate "
        f"{model['falseBlockRate']:g}, power {model['power']:g}. gate-run: {model['abMaxPairs']} pairs at "
        f"alpha {model['abAlpha']:g}, a repetition being 1/{model['abRepetitionsPerRun']:g} of a run "
        "(assumes noise ∝ 1/sqrt(duration)). below noise: the rule's fail % is under what history "
        "mode can tell from noise, so smaller regressions warn instead of blocking."
    )
    return "\n" + "\n\n".join([*blocks, notes])


def _about(count: int, run_seconds: int) -> str:
    # Each run also starts the tool and reads its output: a few seconds more.
    seconds = count * (run_seconds + 3)
    return f"about {seconds:.0f} s" if seconds < 120 else f"about {seconds / 60:.0f} min"


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1f}"
