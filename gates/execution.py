"""Running a validation's load test on a worker.

The worker claims the validation (a conditional update: a second claim does nothing), checks the
target again and pins its addresses, runs the scenario's tool in a temporary directory, renews
its lease and records progress while the test runs, stops it when ops cancel, and hands the
gate's own numbers to ``validation_evaluate``. Raw k6 output is parsed while k6 writes it, so the
verdict follows k6's exit at once. Anything that keeps a verdict from being produced ends the
validation as an error, which the environment's policy turns into blocked or failed.

A database that goes away for a moment (a restart, a failover) stops nothing: the test goes on
while the lease renewal is tried again, with growing pauses, until the lease would really have run
out; claiming and recording the outcome are tried again the same way for up to a lease, and the
tool's raw output stays on disk until the outcome is recorded (and is kept, with its place logged,
when it never could be).

Gate-run mode (docs/gate-run.md): when the validation has a reference URL, its tool is k6 and it
has key relative rules, the worker runs short interleaved repetitions against the reference and
the target instead of one run (``gates.loadtest.ab`` decides when to stop), and hands the A/B
decision to ``validation_evaluate`` next to the numbers of all the target's repetitions together.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from gates import plans, registry, rules
from gates.errors import InvalidState
from gates.loadtest import ab
from gates.loadtest.follow import FollowedFile
from gates.loadtest.k6 import WARMUP_TAG, K6NotFound, K6Spec, redacted, run_k6
from gates.loadtest.locust import LocustSpec, run_locust
from gates.models import Run, Scenario, Validation
from gates.results import parse_results
from gates.results.base import COUNTER, RATE, TREND, ParseError, ResultSet
from gates.results.common import BUILTIN_METRICS, UNITS
from gates.rules.grammar import DEFAULT_TIME_FLOOR_MS
from gates.services import (
    validation_claim,
    validation_evaluate,
    validation_record_error,
    validation_renew_lease,
    worker_actor,
)
from gates.targets import Target, TargetRefused, ports_of, resolve_target
from gates.units import parse_duration

logger = logging.getLogger(__name__)

UNREACHABLE_SERIES = "http_reqs{status:0}"
CONNECT_TIMEOUT_SECONDS = 5.0
PARSE_JOIN_SECONDS = 120.0
# What starting and stopping k6 adds to a repetition, for the estimated completion of an A/B loop.
REPETITION_OVERHEAD_SECONDS = 1.0
# How the reasons CI reads name the two sides of an A/B loop.
SIDE_NAMES = {ab.REFERENCE: "Reference", ab.CANDIDATE: "Target"}
NEWLINE = ord("\n")
# Pauses between tries while the database is unreachable: doubling from the first to the last.
FIRST_RETRY_PAUSE_SECONDS = 0.25
LAST_RETRY_PAUSE_SECONDS = 2.0


class RunFailed(Exception):
    """The test could not produce results; the message is the reason CI reads."""


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(validation_id) -> None:
    """Run the load test of a queued validation, if this worker gets it."""
    worker = worker_label()
    validation = retry_database(
        functools.partial(
            validation_claim,
            validation_id=validation_id,
            worker=worker,
            lease_seconds=settings.PERFGATE_LEASE_SECONDS,
        ),
        what=f"claiming validation {validation_id}",
    )
    if validation is None:
        logger.info("validation %s is not queued any more; another worker has it or it ended", validation_id)
        return
    workdir = Path(tempfile.mkdtemp(prefix="perfgate-run-"))
    settled = False  # the outcome recorded, or not this worker's to record (the lease was lost)
    try:
        _run_and_record(ScenarioRun(validation, worker, workdir))
        settled = True
    finally:
        if settled:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.error(
                "the outcome of validation %s could not be recorded; the test's raw output is kept in %s",
                validation_id,
                workdir,
            )


def _run_and_record(scenario_run: ScenarioRun) -> None:
    """Run the test and record its outcome: the verdict, or the error that kept it from one."""
    validation = scenario_run.validation
    actor = worker_actor(scenario_run.worker)
    record_error = functools.partial(validation_record_error, validation=validation, actor=actor)
    try:
        results = scenario_run.run()
    except RunFailed as failure:
        retry_database(
            functools.partial(record_error, reason=str(failure)),
            what=f"recording the error of validation {validation.pk}",
        )
        return
    except Stopped as stop:
        reason = stop.reason or scenario_run.stop_reason
        if reason:
            retry_database(
                functools.partial(record_error, reason=reason, action="validation.cancelled"),
                what=f"recording the cancel of validation {validation.pk}",
            )
        return
    except Exception:
        logger.exception("the load test of validation %s failed", validation.pk)
        reason = (
            "The load test could not run: an internal error occurred on the worker "
            f"{scenario_run.worker} (see its log)."
        )
        retry_database(
            functools.partial(record_error, reason=reason),
            what=f"recording the error of validation {validation.pk}",
        )
        return
    evaluate = functools.partial(
        validation_evaluate,
        validation=validation,
        results=results,
        actor=actor,
        source=Run.Source.EXECUTED,
        comparison=scenario_run.comparison,
    )
    try:
        retry_database(evaluate, what=f"recording the verdict of validation {validation.pk}")
    except InvalidState:
        # Also where a try whose commit succeeded lost its answer with the connection: the next
        # try finds the verdict recorded.
        logger.warning("validation %s ended while its test ran; its results are not used", validation.pk)


def database_errors() -> tuple[type[Exception], ...]:
    """What a broken or refused database connection raises: Django's wrappers, and the driver's own
    where code reaches past them (the COPY that stores a run's metrics on PostgreSQL)."""
    driver = connection.Database
    return (OperationalError, InterfaceError, driver.OperationalError, driver.InterfaceError)


def drop_connection() -> None:
    """Forget a connection the database broke off, so that the next query opens a new one."""
    with contextlib.suppress(*database_errors()):
        connection.close()


def retry_database(action, *, what: str):
    """``action()``, tried again while the database is unreachable, with growing pauses, for up to
    a lease (from then on the reaper may end the validation anyway). Each try runs in its own
    transaction, so a failed one left nothing behind; the last error is raised when the database
    stays away."""
    deadline = time.monotonic() + settings.PERFGATE_LEASE_SECONDS
    pause = FIRST_RETRY_PAUSE_SECONDS
    while True:
        try:
            return action()
        except database_errors() as exc:
            drop_connection()
            if time.monotonic() + pause > deadline:
                raise
            logger.warning(
                "%s failed, the database is unreachable (%s); again in %.2f s", what, _first_line(exc), pause
            )
            time.sleep(pause)
            pause = min(pause * 2, LAST_RETRY_PAUSE_SECONDS)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


class Stopped(Exception):
    """The test was stopped: cancelled by ops (reason given) or its lease lost (no reason). A
    runner that notices ``ScenarioRun.should_stop()`` raises it, with or without the reason."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class ScenarioRun:
    """One worker's run of a validation's scenario: what a runner (``gates.registry``) gets.

    A runner reads ``validation``, ``scenario`` and ``parser_needs``, writes its tool's output in
    ``workdir`` (kept until the outcome is recorded), calls ``tick(elapsed, requests)`` often while
    its tool runs (it renews the lease and notices a cancel; a database blip does not stop it), stops when
    ``should_stop()`` says so (raising ``Stopped``), and raises ``RunFailed`` with the reason CI
    reads when it produced nothing usable. It sets ``estimated_completion`` when it can tell, and
    ``comparison`` (the A/B decision) when it ran in gate-run mode.
    """

    def __init__(self, validation: Validation, worker: str, workdir: Path):
        self.validation = validation
        self.worker = worker
        self.workdir = workdir  # private to this run; the tool writes its output here
        self.scenario: Scenario = validation.scenario
        self.stop_reason: str | None = None  # "" when the lease was lost, a sentence when cancelled
        self.last_renewal = 0.0
        # The lease as this worker knows it, on its own clock: claimed just now, for a lease.
        self.lease_deadline = time.monotonic() + settings.PERFGATE_LEASE_SECONDS
        self.database_retry_at = 0.0
        self.database_pause = FIRST_RETRY_PAUSE_SECONDS
        self.last_requests = (0.0, 0)
        self.estimated_completion = None
        self.comparison: ab.ABDecision | None = None
        self.ab_progress: dict | None = None  # the A/B loop's progress, shown while it runs

    @functools.cached_property
    def applied_rules(self) -> list[plans.AppliedRule]:
        return plans.validation_rules(self.validation)

    @functools.cached_property
    def parser_needs(self) -> tuple[list[str], list[float]]:
        """The submetrics and percentiles the results parser must compute for the rules."""
        return plans.parser_needs(self.applied_rules)

    @functools.cached_property
    def paired_rules(self) -> list[tuple[ab.ABRule, rules.RelativeRule]]:
        """The rules gate-run mode decides on A/B repetitions: the key relative ones but rates
        (which compare with the history), each under the key ``validation_evaluate`` looks its
        check up by (``ab.rule_key``). Direction and floor are settled here, before any result
        exists, from k6's built-in metrics (a custom metric counts as a trend that is worse going
        up)."""
        paired = []
        for item in self.applied_rules:
            spec = item.spec
            if not isinstance(spec, rules.RelativeRule) or spec.severity != rules.Severity.KEY:
                continue
            kind, contains = BUILTIN_METRICS.get(spec.selector.name, (TREND, "default"))
            if kind == RATE:
                # An error rate is usually 0, and 0 has no ratio: it stays with the history.
                continue
            _, method, _ = rules.parse_aggregation(spec.aggregation)
            direction = spec.direction
            if direction == "auto":
                direction = rules.default_direction(spec.selector.name, kind, method)
            floor = spec.floor
            if floor is None:
                floor = DEFAULT_TIME_FLOOR_MS if UNITS[contains] == "ms" else 0.0
            rule = ab.ABRule(
                key=ab.rule_key(str(spec.selector), spec.aggregation),
                fail_pct=spec.fail_pct,
                direction=direction,
                floor=floor,
            )
            paired.append((rule, spec))
        return paired

    def run(self) -> ResultSet:
        if self.scenario is None:
            raise RunFailed("The validation has no scenario to run.")
        runner = registry.runner_for(self.scenario.tool)
        if runner is None:
            raise RunFailed(f"No runner is registered for the tool {self.scenario.tool!r} on this worker.")
        return runner(self)

    def load_test(self) -> ResultSet:
        """The gate's own runner for k6 and Locust: the tool runs here, against the target."""
        config = self.validation.test_config or {}
        target_url = config.get("targetUrl") or self.scenario.target_url
        if not target_url:
            raise RunFailed(
                f"No target URL: scenario {self.scenario.name} has none and the request gave none."
            )
        # A Vercel deployment's own URL is allowed for its validation only.
        allowed_hosts = [*self.validation.project.allowed_hosts, *config.get("extraHosts", [])]
        # A host listed without a port opens 80, 443 and the ports of the scenario's own URLs.
        own_ports = ports_of(self.scenario.target_url, self.scenario.reference_url)
        target = _checked_target(target_url, allowed_hosts, "Target", own_ports)
        vus = min(config.get("vus") or self.scenario.vus, self.scenario.max_vus)
        duration = int(
            min(
                parse_duration(config["duration"])
                if config.get("duration")
                else self.scenario.duration_seconds,
                self.scenario.max_duration_seconds,
            )
        )
        submetrics, percentiles = self.parser_needs
        submetrics = [*submetrics, UNREACHABLE_SERIES]
        reference_url = config.get("referenceUrl") or self.scenario.reference_url
        gate_run = bool(reference_url) and self.scenario.tool == Scenario.Tool.K6 and bool(self.paired_rules)
        if gate_run:
            reference = _checked_target(reference_url, allowed_hosts, "Reference", own_ports)
            loop = _GateRun(
                self,
                reference=reference,
                candidate=target,
                vus=vus,
                repetition_seconds=max(1, round(duration / settings.PERFGATE_AB_REPETITIONS_PER_RUN)),
                workdir=self.workdir,
                submetrics=submetrics,
                percentiles=percentiles,
            )
            self.comparison = loop.decide()
            return loop.candidate_results()
        total = self.scenario.warmup_seconds + duration
        self.estimated_completion = timezone.now() + timedelta(seconds=total + 3)
        self.total_seconds = total
        if self.scenario.tool == Scenario.Tool.LOCUST:
            return self._locust(target, vus, duration, self.workdir)
        spec = self._k6_spec(target, vus, duration, self.scenario.warmup_seconds)
        results = self._run_k6(spec, self.workdir, submetrics, percentiles, on_tick=self.tick)
        check_connected(results, target)
        return results

    def _k6_spec(self, target: Target, vus: int, duration: int, warmup_seconds: int) -> K6Spec:
        return K6Spec(
            script_text=self.scenario.script_text,
            target_url=target.url,
            vus=vus,
            duration_seconds=duration,
            arrival_rate=self.scenario.arrival_rate,
            max_vus=self.scenario.max_vus,
            warmup_seconds=warmup_seconds,
            hosts=address_pins(target),
            # Vercel's protection bypass and the like: secrets, carried in k6's environment only.
            headers=registry.headers_for(self.validation),
        )

    def _run_k6(
        self, spec: K6Spec, workdir: Path, submetrics, percentiles, *, on_tick, where: str = ""
    ) -> ResultSet:
        """Run k6 once in ``workdir`` and parse its raw output as it is written; ``on_tick(elapsed,
        requests so far)`` about twice a second. ``where`` (" in repetition 2 against the reference")
        completes the reasons CI reads."""
        raw = FollowedFile(workdir / "raw.ndjson")
        parsed: dict = {}

        def parse():
            try:
                parsed["results"] = parse_results(
                    raw,
                    format="k6-ndjson",
                    name="the raw k6 output",
                    submetrics=submetrics,
                    percentiles=percentiles,
                    warmup_tag=spec.warmup_tag,
                )
            except ParseError as exc:
                parsed["error"] = exc

        parser = threading.Thread(target=parse, name="perfgate-parse", daemon=True)
        parser.start()
        try:
            outcome = run_k6(
                spec,
                workdir,
                timeout_seconds=spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS,
                binary=settings.PERFGATE_K6_BINARY,
                should_cancel=self.should_stop,
                on_tick=lambda elapsed: on_tick(elapsed, raw.requests),
            )
        except K6NotFound as exc:
            raise RunFailed(f"The load test could not start: {exc}.") from None
        finally:
            raw.finish()
            parser.join(PARSE_JOIN_SECONDS)
            raw.close()
        self._raise_if_stopped(outcome.cancelled)
        if outcome.timed_out:
            raise RunFailed(
                f"k6 did not finish{where} within "
                f"{spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS} s and was stopped."
            )
        if "results" not in parsed:
            detail = (
                parsed.get("error") or _last_line(outcome.stderr_tail) or f"exit code {outcome.exit_code}"
            )
            raise RunFailed(redacted(f"k6 produced no usable results{where} ({detail}).", spec.headers))
        results = parsed["results"]
        if results.warmup is not None:
            # k6 ran the warm-up this long; its samples start later, as its ramp starts at 0 VUs.
            results.warmup.seconds = float(spec.warmup_seconds)
        return results

    def _locust(self, target: Target, users: int, duration: int, workdir: Path) -> ResultSet:
        spec = LocustSpec(
            locustfile_text=self.scenario.script_text,
            target_url=target.url,
            users=users,
            duration_seconds=duration,
            warmup_seconds=self.scenario.warmup_seconds,
        )
        outcome = run_locust(
            spec,
            workdir,
            timeout_seconds=spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS,
            should_cancel=self.should_stop,
            on_tick=lambda elapsed, requests: self.tick(elapsed, requests or 0),
        )
        self._raise_if_stopped(outcome.cancelled)
        if not outcome.completed:
            detail = _last_line(outcome.stderr_tail) or f"exit code {outcome.exit_code}"
            raise RunFailed(f"Locust produced no usable results ({detail}).")
        try:
            results = parse_results(outcome.stats_path, format="locust-csv", name="the Locust stats")
        except ParseError as exc:
            raise RunFailed(f"Locust produced no usable results ({exc}).") from None
        results.warmup = outcome.warmup
        check_connected(results, target)
        return results

    def tick(self, elapsed: float, requests: int) -> None:
        """Every half second while the test runs: look for a cancel, renew the lease now and then."""

        def check_in():
            due = time.monotonic() - self.last_renewal >= settings.PERFGATE_LEASE_RENEW_SECONDS
            if self._still_ours() and due:
                self._record_progress(elapsed, requests)

        self._while_database_answers(check_in)

    def _while_database_answers(self, call) -> None:
        """``call()``, unless the database broke off a moment ago and the pause before the next
        try is not over. A broken connection does not end the test (see ``_database_lost``)."""
        if time.monotonic() < self.database_retry_at:
            return
        try:
            call()
        except database_errors() as exc:
            self._database_lost(exc)
        else:
            self.database_pause = FIRST_RETRY_PAUSE_SECONDS

    def _database_lost(self, exc: Exception) -> None:
        """The database broke off (a restart, a failover): the test goes on, and the lease is
        renewed again as soon as the database answers, tried with growing pauses. Only once the
        lease would have run out unrenewed is the test given up as a lost lease: from then on the
        reaper may end the validation, and its results could not be used."""
        drop_connection()
        now = time.monotonic()
        if now >= self.lease_deadline:
            logger.warning(
                "validation %s: the database was unreachable for the whole lease (%s); the test stops",
                self.validation.pk,
                _first_line(exc),
            )
            self.stop_reason = ""
            return
        # A last try when the lease runs out, however long the pause has grown.
        self.database_retry_at = min(now + self.database_pause, self.lease_deadline)
        self.database_pause = min(self.database_pause * 2, LAST_RETRY_PAUSE_SECONDS)
        logger.warning(
            "validation %s: the database is unreachable (%s); the test goes on, the lease is renewed "
            "again in %.2f s",
            self.validation.pk,
            _first_line(exc),
            self.database_retry_at - now,
        )

    def _still_ours(self) -> bool:
        """Whether the test may go on; when ops cancelled or the lease was lost, ``stop_reason``
        says so and the answer is False."""
        state = (
            Validation.objects.filter(pk=self.validation.pk)
            .values_list("status", "worker", "cancel_reason")
            .first()
        )
        if state is None or state[0] != Validation.Status.RUNNING or state[1] != self.worker:
            self.stop_reason = ""
            return False
        if state[2]:
            self.stop_reason = state[2]
            return False
        return True

    def _stop_if_asked(self) -> None:
        """Between two tool runs: end here when ops cancelled or the lease was lost."""
        if self.stop_reason is None:
            self._while_database_answers(self._still_ours)
        if self.stop_reason is not None:
            raise Stopped(self.stop_reason)

    def _record_progress(self, elapsed: float, requests: int) -> None:
        """Renew the lease now, with the progress status shows (and the A/B loop's, when it runs)."""
        then, before = self.last_requests
        # A tool that restarts its count when the warm-up ends (Locust) counts from zero again.
        rate = (requests - before) / (elapsed - then) if elapsed > then and requests >= before else 0.0
        progress = {"elapsedSeconds": round(elapsed, 1), "requests": requests, "requestRate": round(rate, 1)}
        if self.ab_progress is not None:
            progress["abTest"] = self.ab_progress
        asked = time.monotonic()
        renewed = validation_renew_lease(
            validation_id=self.validation.pk,
            worker=self.worker,
            lease_seconds=settings.PERFGATE_LEASE_SECONDS,
            progress=progress,
            estimated_completion=self.estimated_completion,
        )
        if not renewed:
            self.stop_reason = ""
            return
        self.last_requests = (elapsed, requests)
        self.last_renewal = asked
        self.lease_deadline = asked + settings.PERFGATE_LEASE_SECONDS

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def _raise_if_stopped(self, cancelled: bool) -> None:
        if cancelled and self.stop_reason is not None:
            raise Stopped(self.stop_reason)


class _GateRun:
    """The A/B loop of one gate run: each repetition is a k6 run of ``repetition_seconds`` against
    the reference or the candidate (the target), with the scenario's warm-up before the first of
    each side only. The candidate's raw outputs are kept, so that its numbers for the absolute
    rules and the load check are computed over all its samples at the end."""

    def __init__(
        self,
        scenario_run: ScenarioRun,
        *,
        reference: Target,
        candidate: Target,
        vus: int,
        repetition_seconds: int,
        workdir: Path,
        submetrics: list[str],
        percentiles: list[float],
    ):
        self.scenario_run = scenario_run
        self.warmup_seconds = scenario_run.scenario.warmup_seconds
        self.targets = {ab.REFERENCE: reference, ab.CANDIDATE: candidate}
        self.vus = vus
        self.repetition_seconds = repetition_seconds
        self.workdir = workdir
        self.submetrics = submetrics
        self.percentiles = percentiles
        self.repetitions = {ab.REFERENCE: 0, ab.CANDIDATE: 0}
        self.candidate_outputs: list[tuple[Path, ResultSet]] = []
        self.load_seconds = 0.0
        self.requests = 0
        self.started = time.monotonic()

    def decide(self) -> ab.ABDecision:
        loop = ab.ABLoop(
            rules=[rule for rule, _ in self.scenario_run.paired_rules],
            alpha=settings.PERFGATE_AB_ALPHA,
            min_pairs=settings.PERFGATE_AB_MIN_PAIRS,
            max_pairs=settings.PERFGATE_AB_MAX_PAIRS,
            pair_seconds=2 * self.repetition_seconds,
            max_load_seconds=settings.PERFGATE_AB_MAX_LOAD_SECONDS,
        )
        self.scenario_run.ab_progress = loop.progress()
        self._estimate(loop)
        decision = loop.run(self.repetition, on_pair=self.on_pair)
        decision.load_seconds = self.load_seconds
        decision.repetition_seconds = float(self.repetition_seconds)
        return decision

    def repetition(self, side: str) -> dict[str, float]:
        """One k6 run against one side: its value for each paired rule."""
        run = self.scenario_run
        run._stop_if_asked()
        index = self.repetitions[side] + 1
        self.repetitions[side] = index
        target = self.targets[side]
        spec = run._k6_spec(
            target, self.vus, self.repetition_seconds, self.warmup_seconds if index == 1 else 0
        )
        workdir = self.workdir / f"{side}-{index}"
        workdir.mkdir()
        where = f" in repetition {index} against the {SIDE_NAMES[side].lower()}"
        before = self.requests
        results = run._run_k6(
            spec,
            workdir,
            self.submetrics,
            self.percentiles,
            on_tick=lambda _, requests: run.tick(self._elapsed(), before + requests),
            where=where,
        )
        self.load_seconds += spec.total_seconds
        warmup_requests = results.warmup.requests if results.warmup is not None else None
        self.requests = before + (results.request_count or 0) + (warmup_requests or 0)
        check_connected(results, target, SIDE_NAMES[side], where)
        values = _paired_values(results, run.paired_rules, where)
        if side == ab.CANDIDATE:
            self.candidate_outputs.append((workdir / "raw.ndjson", results))
        return values

    def on_pair(self, loop: ab.ABLoop) -> None:
        """Status shows every pair at once: the lease is renewed with the loop's progress."""
        run = self.scenario_run
        run.ab_progress = loop.progress()
        self._estimate(loop)
        run._while_database_answers(lambda: run._record_progress(self._elapsed(), self.requests))

    def candidate_results(self) -> ResultSet:
        """The candidate's numbers over all its repetitions, parsed as one stream: percentiles are
        exact over all its samples and counts add up; only the first repetition's warm-up is left
        out. Counter rates are per second of the candidate's own measured time."""
        warmup_tag = WARMUP_TAG if self.warmup_seconds else None
        with _Joined([path for path, _ in self.candidate_outputs]) as stream:
            try:
                results = parse_results(
                    stream,
                    format="k6-ndjson",
                    name="the raw k6 output of the target's repetitions",
                    submetrics=self.submetrics,
                    percentiles=self.percentiles,
                    warmup_tag=warmup_tag,
                )
            except ParseError as exc:
                raise RunFailed(f"k6 produced no usable results ({exc}).") from None
        # The first to the last point would take in the reference's repetitions in between.
        measured = sum(part.duration_seconds or 0.0 for _, part in self.candidate_outputs)
        results.duration_seconds = measured
        for series in results.series.values():
            if series.kind == COUNTER and measured and "count" in series.values:
                series.values["rate"] = series.values["count"] / measured
        if results.warmup is not None:
            results.warmup.seconds = float(self.warmup_seconds)
        check_connected(results, self.targets[ab.CANDIDATE])
        return results

    def _elapsed(self) -> float:
        return time.monotonic() - self.started

    def _estimate(self, loop: ab.ABLoop) -> None:
        """When the loop should end: at its minimum of pairs, or one pair later once past it."""
        done = len(loop.pairs)
        left = max(loop.min_pairs - done, 1)
        if done:
            seconds = self._elapsed() / done * left
        else:
            repetition = self.repetition_seconds + REPETITION_OVERHEAD_SECONDS
            seconds = 2 * repetition * left + 2 * self.warmup_seconds
        self.scenario_run.estimated_completion = timezone.now() + timedelta(seconds=seconds)


class _Joined(io.RawIOBase):
    """Several files read as one stream, each one ending with a line break: the candidate's raw
    outputs parsed together without being copied."""

    def __init__(self, paths: list[Path]):
        self._paths = list(paths)
        self._file = None
        self._line_ended = True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self._file is None:
                if not self._paths:
                    return 0
                self._file = open(self._paths.pop(0), "rb", buffering=0)  # noqa: SIM115 - closed below
            size = self._file.readinto(buffer)
            if size:
                self._line_ended = buffer[size - 1] == NEWLINE
                return size
            self._file.close()
            self._file = None
            if not self._line_ended:
                self._line_ended = True
                buffer[0] = NEWLINE
                return 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()


def _paired_values(
    results: ResultSet, paired_rules: list[tuple[ab.ABRule, rules.RelativeRule]], where: str
) -> dict[str, float]:
    """A repetition's value of each paired rule; one missing is the end of the loop."""
    values = {}
    for rule, spec in paired_rules:
        value, _, problem = rules.measured_value(results, spec.selector, spec.aggregation)
        if value is None:
            raise RunFailed(f"The A/B comparison has nothing to compare{where}: {problem}.")
        if value <= 0:
            raise RunFailed(
                f"The A/B comparison cannot decide {rule.key}: it is {value:g}{where}, and a ratio "
                "needs positive values."
            )
        values[rule.key] = value
    return values


def _checked_target(url: str, allowed_hosts: list[str], what: str, own_ports=()) -> Target:
    """A target (or reference) resolved, on the allowlist (``own_ports``: the scenario's URLs'
    ports, which a host listed without a port also opens) and listening."""
    try:
        target = resolve_target(url, allowed_hosts, configured_ports=own_ports)
    except TargetRefused as exc:
        raise RunFailed(f"{what} refused: {exc}.") from None
    check_reachable(target, what)
    return target


def address_pins(target: Target) -> dict[str, str]:
    """The host → address map k6 connects by, so the name cannot resolve elsewhere mid-test."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in target.host else socket.AF_INET, target.host)
        return {}  # an address already
    except OSError:
        return {target.host: target.addresses[0]}


def check_reachable(target: Target, what: str = "Target") -> None:
    """Fail fast, before a test of minutes, when nothing listens at the target."""
    address = target.addresses[0]
    try:
        with socket.create_connection((address, target.port), timeout=CONNECT_TIMEOUT_SECONDS):
            return
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise RunFailed(
            f"{what} unreachable: cannot connect to {target.host}:{target.port} ({reason})."
        ) from None


def check_connected(results: ResultSet, target: Target, what: str = "Target", where: str = "") -> None:
    """A test in which no request reached the target measured nothing: that is an error, not a
    (very fast, very failed) result."""
    total = results.request_count
    unreachable = results.series.get(UNREACHABLE_SERIES)
    if total and unreachable is not None and unreachable.values.get("count") == total:
        raise RunFailed(
            f"{what} unreachable: none of the {total} requests{where} reached {target.host}:{target.port}."
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
