"""Run the real k6 binary against the sample wedding-platform API, for tests that need k6's own
output (summary export, handleSummary JSON and NDJSON points) rather than hand-written samples.

It goes through the gate's own k6 driver (``gates.loadtest.k6``), so these tests also run the
command line, the clean environment and the outputs the worker uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gates.loadtest.k6 import K6Spec
from gates.loadtest.k6 import run_k6 as run_k6_binary
from gates.loadtest.sample_target import start_in_thread

# A guest list read and an RSVP per iteration, with thresholds k6 evaluates itself: one on a
# submetric (``avg<1`` on guests) is meant to fail against a target that answers in ~10 ms.
SCRIPT = """
import http from 'k6/http';
import { check, sleep } from 'k6';

export const options = {
  thresholds: {
    http_req_duration: ['p(95)<2000'],
    'http_req_duration{name:guests}': ['p(90)<1500', 'avg<1'],
    'http_req_failed{name:rsvp}': ['rate<0.5'],
    http_req_failed: ['rate<0.5'],
  },
};

const BASE = __ENV.TARGET_URL;

export default function () {
  const guests = http.get(`${BASE}/api/guests`, { tags: { name: 'guests' } });
  check(guests, { 'guest list is 200': (r) => r.status === 200 });
  const rsvp = http.post(`${BASE}/api/rsvp`, JSON.stringify({ guest: 3, attending: true }), {
    headers: { 'Content-Type': 'application/json' },
    tags: { name: 'rsvp' },
  });
  check(rsvp, { 'rsvp is 201': (r) => r.status === 201 });
  sleep(0.02);
}

export function handleSummary(data) {
  return { 'handle-summary.json': JSON.stringify(data) };
}
"""


@dataclass(frozen=True)
class K6Outputs:
    summary_export: Path
    handle_summary: Path
    ndjson: Path
    exit_code: int


def run_k6(
    workdir: Path,
    *,
    duration_seconds: int = 3,
    vus: int = 3,
    latency_ms: float = 10.0,
    error_rate: float = 0.05,
    timeout: float = 120.0,
) -> K6Outputs:
    """Run k6 once against a fresh sample target and return the paths of its three outputs."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    target = start_in_thread(latency_ms=latency_ms, jitter_ms=2.0, error_rate=error_rate)
    try:
        outcome = run_k6_binary(
            K6Spec(script_text=SCRIPT, target_url=target.url, vus=vus, duration_seconds=duration_seconds),
            workdir,
            timeout_seconds=timeout,
        )
    finally:
        target.shutdown()
        target.server_close()
    # The script's `avg<1` threshold fails on purpose: k6 exits 99, which is a completed run.
    if not outcome.completed or not outcome.raw_path.exists():
        raise RuntimeError(f"k6 failed with exit code {outcome.exit_code}:\n{outcome.stderr_tail}")
    return K6Outputs(
        outcome.summary_path, workdir / "handle-summary.json", outcome.raw_path, outcome.exit_code
    )
