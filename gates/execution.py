"""Running a validation's load test on a worker.

The worker claims the validation (a conditional update: a second claim does nothing), checks the
target again and pins its addresses, runs the scenario's tool in a temporary directory, renews
its lease and records progress while the test runs, stops it when ops cancel, and hands the
gate's own numbers to ``validation_evaluate``. Raw k6 output is parsed while k6 writes it, so the
verdict follows k6's exit at once. Anything that keeps a verdict from being produced ends the
validation as an error, which the environment's policy turns into blocked or failed.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from gates import plans, registry
from gates.errors import InvalidState
from gates.loadtest.follow import FollowedFile
from gates.loadtest.k6 import K6NotFound, K6Spec, run_k6
from gates.loadtest.locust import LocustSpec, run_locust
from gates.models import Run, Scenario, Validation
from gates.results import parse_results
from gates.results.base import ParseError, ResultSet
from gates.services import (
    validation_claim,
    validation_evaluate,
    validation_record_error,
    validation_renew_lease,
    worker_actor,
)
from gates.targets import Target, TargetRefused, resolve_target
from gates.units import parse_duration

logger = logging.getLogger(__name__)

UNREACHABLE_SERIES = "http_reqs{status:0}"
CONNECT_TIMEOUT_SECONDS = 5.0
PARSE_JOIN_SECONDS = 120.0


class RunFailed(Exception):
    """The test could not produce results; the message is the reason CI reads."""


def worker_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute(validation_id) -> None:
    """Run the load test of a queued validation, if this worker gets it."""
    worker = worker_label()
    validation = validation_claim(
        validation_id=validation_id, worker=worker, lease_seconds=settings.PERFGATE_LEASE_SECONDS
    )
    if validation is None:
        logger.info("validation %s is not queued any more; another worker has it or it ended", validation_id)
        return
    actor = worker_actor(worker)
    scenario_run = ScenarioRun(validation, worker)
    try:
        results = scenario_run.run()
    except RunFailed as failure:
        validation_record_error(validation=validation, reason=str(failure), actor=actor)
        return
    except Stopped as stop:
        reason = stop.reason or scenario_run.stop_reason
        if reason:
            validation_record_error(
                validation=validation, reason=reason, actor=actor, action="validation.cancelled"
            )
        return
    except Exception:
        logger.exception("the load test of validation %s failed", validation_id)
        validation_record_error(
            validation=validation,
            actor=actor,
            reason="The load test could not run: an internal error occurred on the worker "
            f"{worker} (see its log).",
        )
        return
    try:
        validation_evaluate(validation=validation, results=results, actor=actor, source=Run.Source.EXECUTED)
    except InvalidState:
        logger.warning("validation %s ended while its test ran; its results are not used", validation_id)


class Stopped(Exception):
    """The test was stopped: cancelled by ops (reason given) or its lease lost (no reason). A
    runner that notices ``ScenarioRun.should_stop()`` raises it, with or without the reason."""

    def __init__(self, reason: str = ""):
        super().__init__(reason)
        self.reason = reason


class ScenarioRun:
    """One worker's run of a validation's scenario: what a runner (``gates.registry``) gets.

    A runner reads ``validation``, ``scenario`` and ``parser_needs``, calls ``tick(elapsed,
    requests)`` often while its tool runs (it renews the lease and notices a cancel), stops when
    ``should_stop()`` says so (raising ``Stopped``), and raises ``RunFailed`` with the reason CI
    reads when it produced nothing usable. It sets ``estimated_completion`` when it can tell.
    """

    def __init__(self, validation: Validation, worker: str):
        self.validation = validation
        self.worker = worker
        self.scenario: Scenario = validation.scenario
        self.stop_reason: str | None = None  # "" when the lease was lost, a sentence when cancelled
        self.last_renewal = 0.0
        self.last_requests = (0.0, 0)
        self.estimated_completion = None

    @functools.cached_property
    def parser_needs(self) -> tuple[list[str], list[float]]:
        """The submetrics and percentiles the results parser must compute for the rules."""
        return plans.parser_needs(plans.validation_rules(self.validation))

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
        try:
            target = resolve_target(target_url, self.validation.project.allowed_hosts)
        except TargetRefused as exc:
            raise RunFailed(f"Target refused: {exc}.") from None
        _check_reachable(target)
        vus = min(config.get("vus") or self.scenario.vus, self.scenario.max_vus)
        duration = int(
            min(
                parse_duration(config["duration"])
                if config.get("duration")
                else self.scenario.duration_seconds,
                self.scenario.max_duration_seconds,
            )
        )
        total = self.scenario.warmup_seconds + duration
        self.estimated_completion = timezone.now() + timedelta(seconds=total + 3)
        self.total_seconds = total
        submetrics, percentiles = self.parser_needs
        with tempfile.TemporaryDirectory(prefix="perfgate-run-") as workdir:
            if self.scenario.tool == Scenario.Tool.LOCUST:
                return self._locust(target, vus, duration, Path(workdir))
            return self._k6(
                target, vus, duration, Path(workdir), [*submetrics, UNREACHABLE_SERIES], percentiles
            )

    def _k6(
        self, target: Target, vus: int, duration: int, workdir: Path, submetrics, percentiles
    ) -> ResultSet:
        spec = K6Spec(
            script_text=self.scenario.script_text,
            target_url=target.url,
            vus=vus,
            duration_seconds=duration,
            arrival_rate=self.scenario.arrival_rate,
            max_vus=self.scenario.max_vus,
            warmup_seconds=self.scenario.warmup_seconds,
            hosts=_pins(target),
        )
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
                on_tick=lambda elapsed: self.tick(elapsed, raw.requests),
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
                f"k6 did not finish within {spec.total_seconds + settings.PERFGATE_RUN_MARGIN_SECONDS} s "
                "and was stopped."
            )
        if "results" not in parsed:
            detail = (
                parsed.get("error") or _last_line(outcome.stderr_tail) or f"exit code {outcome.exit_code}"
            )
            raise RunFailed(f"k6 produced no usable results ({detail}).")
        results = parsed["results"]
        if results.warmup is not None:
            # k6 ran the warm-up this long; its samples start later, as its ramp starts at 0 VUs.
            results.warmup.seconds = float(spec.warmup_seconds)
        _check_connected(results, target)
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
        _check_connected(results, target)
        return results

    def tick(self, elapsed: float, requests: int) -> None:
        """Every half second while the test runs: look for a cancel, renew the lease now and then."""
        state = (
            Validation.objects.filter(pk=self.validation.pk)
            .values_list("status", "worker", "cancel_reason")
            .first()
        )
        if state is None or state[0] != Validation.Status.RUNNING or state[1] != self.worker:
            self.stop_reason = ""
            return
        if state[2]:
            self.stop_reason = state[2]
            return
        now = time.monotonic()
        if now - self.last_renewal < settings.PERFGATE_LEASE_RENEW_SECONDS:
            return
        then, before = self.last_requests
        # A tool that restarts its count when the warm-up ends (Locust) counts from zero again.
        rate = (requests - before) / (elapsed - then) if elapsed > then and requests >= before else 0.0
        self.last_requests = (elapsed, requests)
        self.last_renewal = now
        progress = {"elapsedSeconds": round(elapsed, 1), "requests": requests, "requestRate": round(rate, 1)}
        if not validation_renew_lease(
            validation_id=self.validation.pk,
            worker=self.worker,
            lease_seconds=settings.PERFGATE_LEASE_SECONDS,
            progress=progress,
            estimated_completion=self.estimated_completion,
        ):
            self.stop_reason = ""

    def should_stop(self) -> bool:
        return self.stop_reason is not None

    def _raise_if_stopped(self, cancelled: bool) -> None:
        if cancelled and self.stop_reason is not None:
            raise Stopped(self.stop_reason)


def _pins(target: Target) -> dict[str, str]:
    """The host → address map k6 connects by, so the name cannot resolve elsewhere mid-test."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in target.host else socket.AF_INET, target.host)
        return {}  # an address already
    except OSError:
        return {target.host: target.addresses[0]}


def _check_reachable(target: Target) -> None:
    """Fail fast, before a test of minutes, when nothing listens at the target."""
    address = target.addresses[0]
    try:
        with socket.create_connection((address, target.port), timeout=CONNECT_TIMEOUT_SECONDS):
            return
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise RunFailed(
            f"Target unreachable: cannot connect to {target.host}:{target.port} ({reason})."
        ) from None


def _check_connected(results: ResultSet, target: Target) -> None:
    """A test in which no request reached the target measured nothing: that is an error, not a
    (very fast, very failed) result."""
    total = results.request_count
    unreachable = results.series.get(UNREACHABLE_SERIES)
    if total and unreachable is not None and unreachable.values.get("count") == total:
        raise RunFailed(
            f"Target unreachable: none of the {total} requests reached {target.host}:{target.port}."
        )


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
