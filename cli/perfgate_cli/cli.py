"""The ``perfgate`` command: CI asks the gate whether a build may deploy, and fails the job if not.

It runs on CI runners that have no Django and no database: it is its own distribution
(``perfgate-cli``, in the ``cli/`` folder of the perfgate repository) and imports only the standard
library, ``requests`` and :mod:`perfgate_cli.table` (the check table the server's commands print too).

Exit codes, so a CI script never has to interpret statuses:

- 0: deployment allowed (``deploymentAllowed`` true: passed, bypassed, or failed open)
- 1: deployment blocked
- 2: still pending (at ``--timeout``, or ``validate`` without ``--wait``), or an inconclusive verdict
- 3: usage error, authentication or permission error, bad request, or the server stayed unreachable

``perfgate watch`` (after a deployment reached production) has its own meanings for 0 to 2:

- 0: the watch ended healthy, or was stopped (superseded by a newer deployment, or by a person);
  without ``--wait``, also: the watch started (or was already running)
- 1: the deployment degraded: its watch ended degraded, or it was rolled back
- 2: the watch ended errored (its probes could not run) or inconclusive (a person decides), or it
  was still running at ``--timeout``
- 3: as above
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import secrets
import socket
import sys
import time
import traceback
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from perfgate_cli.table import check_table, summary_line

EXIT_ALLOWED = 0
EXIT_BLOCKED = 1
EXIT_PENDING = 2
EXIT_ERROR = 3

PENDING_STATUSES = frozenset({"queued", "running"})
VALIDATE_PATH = "/api/ci-cd/performance/validate"
STATUS_PATH = "/api/ci-cd/performance/status/"
WATCH_PATH = "/api/ci-cd/performance/watch"
ACTIVE_WATCH_STATES = frozenset({"waiting", "watching"})
ROLLED_BACK_STATES = frozenset({"approved", "running", "succeeded"})
RESULTS_FORMATS = "k6-summary-export, k6-handle-summary, k6-ndjson, locust-csv, locust-json, jmeter-jtl"

# Retries: exponential backoff with jitter. The base comes from the environment so tests (and
# impatient people) can shrink it without patching a subprocess.
BACKOFF_BASE = float(os.environ.get("PERFGATE_CLI_BACKOFF_BASE", "1"))
BACKOFF_CAP = 30.0
MAX_ATTEMPTS = 6

# Seconds. urllib3 also uses the connect timeout for each send while a body streams out.
CONNECT_TIMEOUT = 15.0
REQUEST_TIMEOUT = 60.0
# The server evaluates uploaded results before it answers: parsing a 1 GB NDJSON file takes a while.
UPLOAD_TIMEOUT = 600.0
# A long poll answers after at most `wait` seconds; allow for the network on top of that.
POLL_TIMEOUT_MARGIN = 15.0
LONG_POLL_SECONDS = 25
# An older server (or a proxy) may answer a long poll at once: never poll faster than this.
MIN_POLL_INTERVAL = 1.0
# A watch changes once per probe interval (a minute by default); its status is read this often.
WATCH_POLL_SECONDS = 15.0
# `watch --wait` without --timeout waits until the window ends, plus this for the last probe and
# the clocks of two machines.
WATCH_GRACE_SECONDS = 300.0
DEFAULT_TIMEOUT = 900.0
UPLOAD_CHUNK = 1 << 20

TOKEN_PATTERN = re.compile(r"pg_[A-Za-z0-9_\-]{6,}")


class UsageError(Exception):
    """The command line is wrong; argparse's own exit code (2) would read as "pending"."""


class CommandError(Exception):
    """A problem that ends the command with exit code 3; the message is one human line."""


class Output:
    """stdout and stderr with every secret the command knows about masked.

    The token must never reach a CI log: not in an error, not echoed back by a server, not in a
    mistyped command line that argparse repeats.
    """

    def __init__(self, secrets_to_hide: list[str]):
        self._secrets = sorted({s for s in secrets_to_hide if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return TOKEN_PATTERN.sub("pg_***", text)

    def out(self, text: str = "") -> None:
        print(self.redact(text), file=sys.stdout, flush=True)

    def err(self, text: str) -> None:
        print(self.redact(text), file=sys.stderr, flush=True)


class _BearerAuth(requests.auth.AuthBase):
    """Sets the token as a session auth, so ``requests`` never swaps in credentials from ~/.netrc."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, prepared):
        prepared.headers["Authorization"] = f"Bearer {self._token}"
        return prepared

    def __repr__(self) -> str:
        return "<bearer token>"


class MultipartBody:
    """A ``multipart/form-data`` body read from disk as it is sent.

    ``requests`` sends a file-like body whose length it knows with a ``Content-Length`` header
    and no chunked encoding (Django needs the length), reading it block by block, so a 1 GB
    results file never sits in memory. A retry needs a fresh instance: the file is reopened.
    """

    def __init__(self, request_json: bytes, results_path: Path, boundary: str):
        filename = (
            results_path.name.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "")
        )
        self._preamble = (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="request"\r\n'
            "Content-Type: application/json\r\n\r\n"
        ).encode() + request_json
        self._preamble += (
            f"\r\n--{boundary}\r\n"
            f'Content-Disposition: form-data; name="results"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._closing = f"\r\n--{boundary}--\r\n".encode()
        self._file = results_path.open("rb")
        self._file_size = os.fstat(self._file.fileno()).st_size
        self._file_left = self._file_size
        self._parts = [self._preamble, None, self._closing]
        self._part = 0
        self._offset = 0

    def __len__(self) -> int:
        return len(self._preamble) + self._file_size + len(self._closing)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = UPLOAD_CHUNK
        while self._part < len(self._parts):
            part = self._parts[self._part]
            if part is None:
                if self._file_left > 0:
                    chunk = self._file.read(min(size, self._file_left))
                    if not chunk:
                        raise CommandError(f"results file {self._file.name} shrank while it was being sent")
                    self._file_left -= len(chunk)
                    return chunk
            elif self._offset < len(part):
                chunk = part[self._offset : self._offset + size]
                self._offset += len(chunk)
                return chunk
            self._part += 1
            self._offset = 0
        return b""

    def close(self) -> None:
        self._file.close()


class Client:
    """The CI API over ``requests``: bearer auth, timeouts, and retries with backoff."""

    def __init__(self, base_url: str, token: str, deadline: float, output: Output):
        self.base_url = base_url
        self.deadline = deadline
        self.output = output
        self.session = requests.Session()
        self.session.auth = _BearerAuth(token)
        self.session.headers.update({"Accept": "application/json", "User-Agent": "perfgate-cli"})

    def close(self) -> None:
        self.session.close()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def validate(self, request_json: bytes, idempotency_key: str, results: Path | None) -> dict:
        headers = {"Idempotency-Key": idempotency_key}
        if results is None:
            headers["Content-Type"] = "application/json"
            return self._call("POST", VALIDATE_PATH, headers=headers, body=lambda: request_json)
        boundary = f"perfgate-{secrets.token_hex(16)}"
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        return self._call(
            "POST",
            VALIDATE_PATH,
            headers=headers,
            body=lambda: MultipartBody(request_json, results, boundary),
            timeout=UPLOAD_TIMEOUT,
        )

    def watch(self, request_json: bytes) -> dict:
        # Starting a watch twice answers the same watch: a retry is harmless.
        return self._call(
            "POST", WATCH_PATH, headers={"Content-Type": "application/json"}, body=lambda: request_json
        )

    def status(self, project: str, environment: str, build_id: str, wait: int | None = None) -> dict:
        params = {"project": project, "environment": environment}
        timeout = REQUEST_TIMEOUT
        if wait is not None:
            params["wait"] = str(wait)
            timeout = wait + POLL_TIMEOUT_MARGIN
        return self._call("GET", STATUS_PATH + quote(build_id, safe=""), params=params, timeout=timeout)

    def _call(self, method, path, *, headers=None, params=None, body=None, timeout=None) -> dict:
        """One API call, retried on network errors, 5xx and 429 until it answers or time runs out.

        Every error code except 429 means the request itself is wrong: retrying cannot help.
        """
        url = self.base_url + path
        timeout = REQUEST_TIMEOUT if timeout is None else timeout
        for attempt in range(1, MAX_ATTEMPTS + 1):
            read_timeout = min(timeout, max(1.0, self.remaining()))
            data = body() if body is not None else None
            retry_after = None
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    data=data,
                    headers=headers,
                    timeout=(CONNECT_TIMEOUT, read_timeout),
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise CommandError(
                    f"TLS error talking to {_display(self.base_url)}: {_first_line(exc)}"
                ) from None
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                problem = f"cannot reach {_display(self.base_url)}: {_network_problem(exc, read_timeout)}"
            except requests.RequestException as exc:
                raise CommandError(
                    f"request to {_display(self.base_url)} failed: {_first_line(exc)}"
                ) from None
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    problem = _http_problem(response)
                    retry_after = _retry_after(response)
                else:
                    return _document(response, self.base_url)
            finally:
                if isinstance(data, MultipartBody):
                    data.close()
            if attempt == MAX_ATTEMPTS:
                raise CommandError(f"{problem} (gave up after {attempt} attempts)")
            delay = retry_after if retry_after is not None else _backoff(attempt)
            if delay >= self.remaining():
                raise CommandError(f"{problem} (gave up: --timeout reached after {attempt} attempts)")
            self.output.err(
                f"perfgate: {problem}; retrying in {delay:.1f} s (attempt {attempt + 1} of {MAX_ATTEMPTS})"
            )
            time.sleep(delay)
        raise AssertionError("unreachable")


def _backoff(attempt: int) -> float:
    """1, 2, 4, 8 … times the base, capped, with jitter so a fleet of CI jobs does not retry in step."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def _retry_after(response) -> float | None:
    """Seconds from a ``Retry-After`` header (429, 503): a number, or an HTTP date."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _document(response, base_url: str) -> dict:
    """The JSON document of a 2xx answer; any other answer becomes a one-line error."""
    if 300 <= response.status_code < 400:
        location = response.headers.get("Location", "?")
        raise CommandError(
            f"{response.status_code} redirect to {_display(location)}: set PERFGATE_URL to the final address"
        )
    if response.status_code >= 400:
        raise CommandError(_http_problem(response))
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise CommandError(
            f"{response.status_code} from {_display(base_url)} is not a perfgate answer (not a JSON object)"
        )
    return document


def _http_problem(response) -> str:
    """'401 unauthenticated: Invalid or expired token.' from the API's one error shape."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        return f"{response.status_code} {response.reason or 'error'} from {_display(response.url)}"
    line = f"{response.status_code} {body.get('error')}: {body.get('detail') or ''}".rstrip()
    fields = body.get("fields") or {}
    if isinstance(fields, dict):
        # The detail often quotes the first field already; name the others so one line says it all.
        named = [
            f"{name}: {' '.join(map(str, messages))}"
            for name, messages in fields.items()
            if name != "_" and " ".join(map(str, messages)) not in line
        ]
        if named:
            line += " (" + "; ".join(named) + ")"
    return " ".join(line.split())


def _network_problem(exc: BaseException, read_timeout: float) -> str:
    """The root cause under requests' and urllib3's wrappers, in a few words."""
    if isinstance(exc, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(exc, requests.ReadTimeout):
        return f"no answer within {read_timeout:g} s"
    pending, seen = [exc], set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, http.client.RemoteDisconnected):
            return "the server closed the connection without answering"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, ConnectionResetError):
            return "connection reset"
        if isinstance(current, BrokenPipeError):
            return "the server closed the connection while the request was being sent"
        if isinstance(current, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(current, TimeoutError):
            return "timed out"
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        pending.extend(
            linked
            for linked in (getattr(current, "reason", None), current.__cause__, current.__context__)
            if isinstance(linked, BaseException)
        )
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _display(url: str) -> str:
    """A URL fit for a log: without user:password@."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def github_deployment_context(environ) -> dict | None:
    """Where the build comes from, when running in GitHub Actions; None elsewhere."""
    if environ.get("GITHUB_ACTIONS") != "true" and not environ.get("GITHUB_REPOSITORY"):
        return None
    repository = environ.get("GITHUB_REPOSITORY") or None
    ref = environ.get("GITHUB_REF") or None
    pull = re.fullmatch(r"refs/pull/(\d+)/(?:merge|head)", ref or "")
    server, run_id = environ.get("GITHUB_SERVER_URL") or "https://github.com", environ.get("GITHUB_RUN_ID")
    return {
        "provider": "github",
        "repository": repository,
        "ref": ref,
        "pullRequest": int(pull.group(1)) if pull else None,
        "actor": environ.get("GITHUB_ACTOR") or None,
        "runUrl": f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}"
        if repository and run_id
        else None,
    }


def parse_thresholds(values: list[str]) -> dict[str, list[str]]:
    """``METRIC:EXPR`` options grouped by metric. The metric may carry tags with colons
    (``http_req_duration{name:rsvp}:p(95)<350``); k6 expressions never contain one."""
    thresholds: dict[str, list[str]] = {}
    for value in values:
        metric, _, expression = value.rpartition(":")
        metric, expression = metric.strip(), expression.strip()
        if not metric or not expression:
            raise UsageError(
                f"--threshold {value!r}: expected METRIC:EXPRESSION, e.g. 'http_req_duration:p(95)<350'"
            )
        thresholds.setdefault(metric, []).append(expression)
    return thresholds


def validate_request(args, environ) -> dict:
    """The JSON document of ``POST …/validate``, without the keys that were not given."""
    document = {
        "project": args.project,
        "buildId": args.build,
        "environment": args.environment,
        "gitHash": args.git_hash,
    }
    test_config = {
        "scenario": args.scenario,
        "targetUrl": args.target_url,
        "vus": args.vus,
        "duration": args.duration,
        "thresholds": parse_thresholds(args.threshold) if args.threshold else None,
    }
    test_config = {key: value for key, value in test_config.items() if value is not None}
    if test_config:
        document["testConfig"] = test_config
    if args.results_format:
        document["resultsFormat"] = args.results_format
    context = github_deployment_context(environ)
    if context:
        document["deploymentContext"] = context
    return document


def idempotency_key(project: str, environment: str, build_id: str, request_json: bytes) -> str:
    """The same for every retry of the same command, so the server recognises a repeat."""
    digest = hashlib.sha256()
    for part in (project, environment, build_id):
        digest.update(part.encode() + b"\n")
    digest.update(request_json)
    return digest.hexdigest()


def exit_code(validation: dict) -> int:
    allowed = validation.get("deploymentAllowed")
    if allowed is False:
        return EXIT_BLOCKED
    if allowed is None or validation.get("status") in PENDING_STATUSES:
        return EXIT_PENDING
    if validation.get("verdict") == "inconclusive":
        return EXIT_PENDING
    return EXIT_ALLOWED


MINUS = "\u2212"  # as typeset, so that +4.2% and -1.0% line up


def progress_line(validation: dict, elapsed: float) -> str:
    """One line per poll: status, time waited, and the load test's progress when the server knows it."""
    parts = [f"perfgate: {validation.get('status')}", f"{_duration(elapsed)} elapsed"]
    progress = validation.get("progress") or {}
    if progress.get("requests") is not None:
        parts.append(f"{progress['requests']:,} requests")
    if progress.get("requestRate") is not None:
        parts.append(f"{progress['requestRate']:,.1f} req/s")
    ab_test = progress.get("abTest")
    if ab_test:
        parts.append(f"A/B pair {ab_test.get('pairs', 0)}/{ab_test.get('maxPairs', '?')}")
        for check in ab_test.get("checks") or []:
            low, high = (check.get("intervalPct") or [None, None])[:2]
            parts.append(
                f"{check.get('metric')} {_signed_pct(check.get('estimatePct'))} "
                f"[{_signed_pct(low, -1)}, {_signed_pct(high, 1)}]"
            )
    eta = validation.get("estimatedCompletion")
    if eta:
        try:
            moment = datetime.fromisoformat(eta)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            left = (moment - datetime.now(UTC)).total_seconds()
            parts.append(f"ETA {moment.astimezone(UTC):%H:%M:%S} UTC (in {_duration(max(0.0, left))})")
        except ValueError:
            parts.append(f"ETA {eta}")
    return ", ".join(parts)


def _signed_pct(value: float | None, unbounded: int = 0) -> str:
    """+4.2% or, with a true minus sign, -1.0%; an interval's end that too few pairs bound
    (``unbounded`` -1 or 1) is minus or plus infinity."""
    if value is None:
        return {-1: f"{MINUS}\u221e%", 1: "+\u221e%"}.get(unbounded, "?")
    return f"{value:+.1f}%".replace("-", MINUS)


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def report(validation: dict, base_url: str, output: Output) -> None:
    """The check table, the blocking reasons, where to look next, and the summary line last."""
    checks = validation.get("checks") or []
    if checks:
        output.out(check_table(checks, validation.get("notices") or ()))
        output.out()
    reasons = validation.get("blockingReasons") or []
    if reasons:
        output.out("Blocking reasons:")
        for reason in reasons:
            output.out(f"  - {reason}")
    if validation.get("statusReason"):
        output.out(f"Status reason: {validation['statusReason']}")
    links = validation.get("links") or {}
    for name in ("admin", "regression", "chart"):
        if links.get(name):
            link = links[name]
            output.out(f"{name.capitalize()}: {link if '://' in link else base_url + link}")
    if validation.get("watch"):
        for line in watch_lines(validation["watch"]):
            output.out(line)
    output.out(summary_line(validation))


def follow_command(args) -> str:
    return (
        f"perfgate status --project {args.project} --environment {args.environment} "
        f"--build {args.build} --wait"
    )


def wait_for_outcome(client: Client, args, validation: dict, started: float, output: Output) -> dict:
    """Long-poll the status until the validation leaves queued/running or the deadline passes."""
    while validation.get("status") in PENDING_STATUSES:
        remaining = client.remaining()
        if remaining <= 0:
            break
        wait = int(min(LONG_POLL_SECONDS, remaining))
        asked = time.monotonic()
        validation = client.status(args.project, args.environment, args.build, wait=wait)
        output.err(progress_line(validation, time.monotonic() - started))
        answered_in = time.monotonic() - asked
        if validation.get("status") in PENDING_STATUSES and answered_in < MIN_POLL_INTERVAL:
            time.sleep(max(0.0, min(MIN_POLL_INTERVAL - answered_in, client.remaining())))
    return validation


def finish(validation: dict, args, client: Client, output: Output) -> int:
    """Print the outcome and turn it into the exit code."""
    if args.json:
        output.out(json.dumps(validation, indent=2, sort_keys=True))
    else:
        report(validation, client.base_url, output)
    code = exit_code(validation)
    status = validation.get("status")
    if status in PENDING_STATUSES:
        if args.wait:
            output.err(f"perfgate: still {status} after {_duration(args.timeout)} (--timeout).")
        else:
            output.err(f"perfgate: the validation is {status}.")
        output.err(f"perfgate: follow it with: {follow_command(args)}")
    elif code == EXIT_PENDING and validation.get("verdict") == "inconclusive":
        output.err(
            "perfgate: the verdict is inconclusive: the data could not decide; treating it as not passed."
        )
    elif status == "failed":
        output.err(
            "perfgate: WARNING: no verdict could be produced; this environment fails open, "
            "so the deployment may proceed."
        )
    return code


def run_validate(args, client: Client, output: Output, started: float) -> int:
    document = validate_request(args, os.environ)
    request_json = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    key = idempotency_key(args.project, args.environment, args.build, request_json)
    validation = client.validate(request_json, key, args.results)
    if args.wait and validation.get("status") in PENDING_STATUSES:
        output.err(progress_line(validation, time.monotonic() - started))
        validation = wait_for_outcome(client, args, validation, started, output)
    return finish(validation, args, client, output)


def run_status(args, client: Client, output: Output, started: float) -> int:
    if args.wait:
        wait = int(min(LONG_POLL_SECONDS, client.remaining()))
        validation = client.status(args.project, args.environment, args.build, wait=wait)
        if validation.get("status") in PENDING_STATUSES:
            output.err(progress_line(validation, time.monotonic() - started))
            validation = wait_for_outcome(client, args, validation, started, output)
    else:
        validation = client.status(args.project, args.environment, args.build)
    return finish(validation, args, client, output)


def watch_request(args) -> dict:
    """The JSON document of ``POST …/watch``, without the keys that were not given."""
    document = {"project": args.project, "buildId": args.build, "environment": args.environment}
    for key, value in (
        ("deploymentUrl", args.deployment_url),
        ("deploymentId", args.deployment_id),
        ("baselineUrl", args.baseline_url),
    ):
        if value:
            document[key] = value
    return document


def watch_is_active(watch: dict) -> bool:
    return watch.get("state") in ACTIVE_WATCH_STATES


def watch_exit_code(watch: dict) -> int:
    """0 healthy or stopped (or still watching, when not waiting), 1 degraded or rolled back,
    2 errored, inconclusive, or still watching at the timeout (``finish_watch`` says which)."""
    rollback = watch.get("rollback") or {}
    if watch.get("state") == "degraded" or rollback.get("state") in ROLLED_BACK_STATES:
        return EXIT_BLOCKED
    if watch.get("state") in ("errored", "inconclusive"):
        return EXIT_PENDING
    return EXIT_ALLOWED


def _clock(value: str | None) -> str:
    """An API timestamp as HH:MM:SS UTC (the whole value when it is not one)."""
    if not value:
        return "—"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return f"{moment.astimezone(UTC):%H:%M:%S} UTC"


def _seconds_text(seconds) -> str:
    return _duration(float(seconds)) if isinstance(seconds, int | float) else "?"


def watch_progress_line(watch: dict) -> str:
    """One line per change while waiting: state, probes, the last one, and what comes next."""
    probes = watch.get("probes") or {}
    parts = [
        f"perfgate: watch {watch.get('state')}",
        f"{probes.get('run', 0)} probes ({probes.get('failures', 0)} failed, "
        f"{probes.get('errors', 0)} errors)",
    ]
    last = watch.get("lastProbe")
    if last:
        parts.append(f"probe {last.get('number')}: {last.get('outcome')}")
    if watch_is_active(watch):
        parts.append(
            f"next probe {_clock(watch.get('nextProbeAt'))}, window ends {_clock(watch.get('endsAt'))}"
        )
    return ", ".join(parts)


def watch_lines(watch: dict) -> list[str]:
    """The watch as ``perfgate watch`` and ``perfgate status`` print it."""
    policy = watch.get("policy") or {}
    probes = watch.get("probes") or {}
    state = watch.get("state")
    headline = f"Watch: {state}"
    if watch.get("dryRun"):
        headline += " (dry run: nothing is rolled back)"
    lines = [headline]
    if watch.get("stateReason"):
        lines.append(f"  {watch['stateReason']}")
    deployment = f" (deployment {watch['deploymentId']})" if watch.get("deploymentId") else ""
    lines.append(f"  Target: {watch.get('targetUrl')}{deployment}, started by {watch.get('source')}")
    in_a_row = " in a row" if policy.get("consecutive") else ""
    lines.append(
        f"  Policy: probe {policy.get('scenario')} every {_seconds_text(policy.get('interval'))} for "
        f"{_seconds_text(policy.get('window'))}; degraded after more than {policy.get('failureLimit')} "
        f"failures{in_a_row}; "
        + ("rolls back automatically" if policy.get("autoRollback") else "a person approves a rollback")
    )
    lines.append(
        f"  Probes: {probes.get('run', 0)} run, {probes.get('failures', 0)} failed "
        f"({probes.get('consecutiveFailures', 0)} in a row), {probes.get('inconclusive', 0)} inconclusive, "
        f"{probes.get('errors', 0)} could not run"
    )
    last = watch.get("lastProbe")
    if last:
        lines.append(
            f"  Last probe: {last.get('number')} ({last.get('trigger')}) {last.get('outcome')} at "
            f"{_clock(last.get('finishedAt'))}: {last.get('reason') or '—'}"
        )
    if watch_is_active(watch):
        lines.append(
            f"  Next probe: {_clock(watch.get('nextProbeAt'))}; window ends {_clock(watch.get('endsAt'))}"
        )
    else:
        lines.append(f"  Ended: {_clock(watch.get('finishedAt'))}")
    lines.append(f"  Probe baseline: {watch.get('baseline') or '—'}")
    if watch.get("wouldRollBack"):
        lines.append("  Dry run: a real watch would have rolled this deployment back.")
    rollback = watch.get("rollback")
    if rollback:
        via = f" via {rollback['via']}" if rollback.get("via") else ""
        target = f" to build {rollback['targetBuildId']}" if rollback.get("targetBuildId") else ""
        lines.append(f"  Rollback: {rollback.get('state')}{via}{target} ({rollback.get('trigger')})")
        for key in ("reason", "detail"):
            for text in (rollback.get(key) or "").splitlines()[:3]:
                lines.append(f"    {text}")
    for notice in watch.get("notices") or []:
        lines.append(f"  ! [{notice.get('level')}] {notice.get('title')} ({_clock(notice.get('createdAt'))})")
    return lines


def watch_summary_line(watch: dict) -> str:
    """One line CI logs can be grepped for."""
    outcome = {
        EXIT_ALLOWED: "ok" if not watch_is_active(watch) else "watching",
        EXIT_BLOCKED: "DEGRADED",
        EXIT_PENDING: "needs a person",
    }[watch_exit_code(watch)]
    rollback = watch.get("rollback") or {}
    if rollback.get("state") in ROLLED_BACK_STATES:
        outcome = f"ROLLED BACK ({rollback['state']})"
    return (
        f"{watch.get('project')}/{watch.get('environment')} build {watch.get('buildId')}: "
        f"watch {watch.get('state')} → {outcome}"
    )


def _watch_deadline(watch: dict) -> float | None:
    """The monotonic time by which the watch must have ended: its window's end and a grace."""
    try:
        ends = datetime.fromisoformat(watch.get("endsAt") or "")
    except ValueError:
        return None
    if ends.tzinfo is None:
        ends = ends.replace(tzinfo=UTC)
    return time.monotonic() + (ends - datetime.now(UTC)).total_seconds() + WATCH_GRACE_SECONDS


def wait_for_watch(client: Client, args, watch: dict, output: Output) -> dict:
    """Read the build's status every WATCH_POLL_SECONDS until its watch ends or time runs out."""
    last_line = watch_progress_line(watch)
    output.err(last_line)
    while watch_is_active(watch) and client.remaining() > 0:
        time.sleep(max(0.0, min(WATCH_POLL_SECONDS, client.remaining())))
        validation = client.status(args.project, args.environment, args.build)
        found = validation.get("watch")
        if not isinstance(found, dict):
            raise CommandError(f"the status of build {args.build} shows no watch any more")
        watch = found
        line = watch_progress_line(watch)
        if line != last_line:
            output.err(line)
            last_line = line
    return watch


def finish_watch(watch: dict, args, output: Output) -> int:
    if args.json:
        output.out(json.dumps(watch, indent=2, sort_keys=True))
    else:
        for line in watch_lines(watch):
            output.out(line)
        output.out(watch_summary_line(watch))
    if watch_is_active(watch):
        if args.wait:
            output.err(
                "perfgate: still watching at --timeout; the watch goes on. "
                f"Follow it with: {_watch_command(args)}"
            )
            return EXIT_PENDING
        output.err(f"perfgate: watching; follow it with: {_watch_command(args)}")
        return EXIT_ALLOWED
    code = watch_exit_code(watch)
    if code == EXIT_PENDING:
        output.err(
            "perfgate: the watch could not decide (errored or inconclusive): a person should look at it."
        )
    return code


def _watch_command(args) -> str:
    return (
        f"perfgate watch --project {args.project} --environment {args.environment} "
        f"--build {args.build} --wait"
    )


def run_watch(args, client: Client, output: Output) -> int:
    request_json = json.dumps(watch_request(args), sort_keys=True, separators=(",", ":")).encode()
    watch = client.watch(request_json)
    if args.wait and watch_is_active(watch):
        if args.timeout is None:
            deadline = _watch_deadline(watch)
            if deadline is not None:
                client.deadline = max(client.deadline, deadline)
        watch = wait_for_watch(client, args, watch, output)
    return finish_watch(watch, args, output)


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}\n{self.format_usage().strip()}")


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="perfgate",
        description="Ask perfgate whether a build may deploy: start a performance validation or "
        "read its status, optionally wait for the verdict, and exit 0 (allowed), 1 (blocked), "
        "2 (pending or inconclusive) or 3 (usage, authentication, request or network error). "
        "After the deploy, `perfgate watch` has production watched (see `perfgate watch --help`).",
        epilog="The server and token come from PERFGATE_URL and PERFGATE_TOKEN (flags override). "
        "Prefer the environment variable for the token: command lines show up in process lists.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--project", required=True, help="project slug, e.g. wedsync-web")
    common.add_argument("--environment", required=True, help="staging or production")
    common.add_argument("--build", required=True, metavar="BUILD_ID", help="CI build id, e.g. gha-9876543-1")
    common.add_argument(
        "--wait", action="store_true", help="wait for the verdict, printing progress to stderr"
    )
    common.add_argument(
        "--timeout",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="give up waiting (and retrying) after this long; exit 2 if still pending (default 900)",
    )
    _connection_options(common)

    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="start (or repeat) the validation of a build",
        description="Start the validation of a build: the server runs the scenario, or evaluates the "
        "results file you upload. Repeating the same project, environment and build returns the "
        "existing validation.",
    )
    validate.add_argument("--git-hash", required=True, metavar="SHA", help="commit the build was made from")
    validate.add_argument("--scenario", help="registered scenario name (default: the environment's default)")
    validate.add_argument(
        "--target-url", metavar="URL", help="where the load test goes (must be allowlisted)"
    )
    validate.add_argument(
        "--vus", type=_positive_int, metavar="N", help="virtual users (capped by the scenario)"
    )
    validate.add_argument(
        "--duration", metavar="DURATION", help="k6 duration, e.g. 60s (capped by the scenario)"
    )
    validate.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="METRIC:EXPR",
        help="extra k6 threshold, e.g. 'http_req_duration:p(95)<350'; repeatable; can only tighten",
    )
    validate.add_argument(
        "--results",
        type=Path,
        metavar="FILE",
        help="upload results of a test CI ran itself (streamed from disk; any size) instead of a server run",
    )
    validate.add_argument(
        "--results-format", metavar="FORMAT", help=f"format of --results if not detected: {RESULTS_FORMATS}"
    )

    commands.add_parser(
        "status",
        parents=[common],
        help="show the latest validation of a build (and its watch, once it is watched)",
        description="Show the latest validation of a build; with --wait, follow it to its verdict. "
        "Once the deployment is watched in production, the watch is shown too.",
    )

    watch = commands.add_parser(
        "watch",
        help="watch a deployment after it reached production",
        description="Start watching a deployment once it serves production: perfgate probes it gently "
        "every interval for a window and rolls it back by the environment's policy when it degrades. "
        "The build's validation must have let it out. Asking again answers with the same watch. "
        "Exit codes: 0 healthy or stopped (without --wait: the watch is on), 1 degraded or rolled "
        "back, 2 errored, inconclusive, or still watching at --timeout, 3 usage, token, request or "
        "network error.",
    )
    watch.add_argument("--project", required=True, help="project slug, e.g. wedsync-web")
    watch.add_argument(
        "--build", "--build-id", dest="build", required=True, metavar="BUILD_ID", help="the build deployed"
    )
    watch.add_argument("--environment", default="production", help="default production")
    watch.add_argument(
        "--deployment-url",
        metavar="URL",
        help="what to probe (allowlisted); default: the validation's target URL",
    )
    watch.add_argument("--deployment-id", metavar="ID", help="the provider's deployment id")
    watch.add_argument(
        "--baseline-url",
        metavar="URL",
        help="the previous production deployment, probed for a baseline when no earlier watch gives one",
    )
    watch.add_argument(
        "--wait",
        action="store_true",
        help="wait until the watch ends, printing each change to stderr; exit by its outcome",
    )
    watch.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="give up waiting (and retrying) after this long; exit 2 if still watching "
        f"(default: the watch's window and {WATCH_GRACE_SECONDS / 60:g} min more)",
    )
    _connection_options(watch)
    return parser


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", help="perfgate server, e.g. https://perfgate.example (default $PERFGATE_URL)"
    )
    parser.add_argument("--token", help="API token (default $PERFGATE_TOKEN; the environment is safer)")
    parser.add_argument(
        "--json", action="store_true", help="print the final JSON response instead of a table"
    )


def _secrets_in(argv: list[str], environ) -> list[str]:
    """Every token the command line or environment holds, whether or not argparse accepts it."""
    found = [environ.get("PERFGATE_TOKEN", "")]
    for index, arg in enumerate(argv):
        if arg == "--token" and index + 1 < len(argv):
            found.append(argv[index + 1])
        elif arg.startswith("--token="):
            found.append(arg.split("=", 1)[1])
    return found


def _check_arguments(args) -> tuple[str, str]:
    """The server URL and the token, or a usage error naming what is missing."""
    url = (args.url or os.environ.get("PERFGATE_URL") or "").strip().rstrip("/")
    token = (args.token or os.environ.get("PERFGATE_TOKEN") or "").strip()
    if not url:
        raise UsageError("no server: set PERFGATE_URL or pass --url")
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
        raise UsageError(f"--url / PERFGATE_URL must be an http(s) address, not {_display(url)!r}")
    if not token:
        raise UsageError("no API token: set PERFGATE_TOKEN (or pass --token)")
    if not token.isprintable() or any(char.isspace() for char in token):
        raise UsageError("the API token contains spaces or control characters: check PERFGATE_TOKEN")
    if args.command == "validate":
        if args.results is not None and not args.results.is_file():
            raise UsageError(f"--results {args.results}: no such file")
        if args.results_format and args.results is None:
            raise UsageError("--results-format needs --results")
        if args.threshold:
            parse_thresholds(args.threshold)
    return url, token


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (the console script passes it to sys.exit)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    output = Output(_secrets_in(argv, os.environ))
    try:
        args = build_parser().parse_args(argv)
        url, token = _check_arguments(args)
    except UsageError as exc:
        output.err(f"perfgate: {exc}")
        return EXIT_ERROR
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    output = Output([*_secrets_in(argv, os.environ), token])
    started = time.monotonic()
    client = Client(url, token, started + (args.timeout or DEFAULT_TIMEOUT), output)
    try:
        if args.command == "validate":
            return run_validate(args, client, output, started)
        if args.command == "watch":
            return run_watch(args, client, output)
        return run_status(args, client, output, started)
    except CommandError as exc:
        output.err(f"perfgate: {exc}")
        return EXIT_ERROR
    except OSError as exc:
        output.err(f"perfgate: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        output.err("perfgate: interrupted")
        return 130
    except Exception:
        # A bug of ours: the traceback is worth having, but only through the redacting output.
        output.err(f"perfgate: unexpected error\n{traceback.format_exc()}")
        return EXIT_ERROR
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
