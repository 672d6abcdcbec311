"""Fixtures for the results parsers: real k6 and Locust output, produced once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gates.loadtest.sample_target import start_in_thread
from tests.k6_run import K6Outputs, run_k6

RESULTS_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "results"

LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Guest(FastHttpUser):
    wait_time = constant(0.05)

    @task(2)
    def guests(self):
        self.client.get("/api/guests", name="guests")

    @task
    def rsvp(self):
        self.client.post("/api/rsvp", json={"guest": 1, "attending": True}, name="rsvp")
"""


# One guest-list user for tests that drive Locust through perfgate or its driver.
GUEST_LIST_LOCUSTFILE = """
from locust import FastHttpUser, constant, task


class Guest(FastHttpUser):
    wait_time = constant(0.01)

    @task
    def guests(self):
        self.client.get("/api/guests", name="guest-list")
"""


def pytest_collection_modifyitems(items):
    # A test that needs a real load tool run is slow, whichever module it is in.
    for item in items:
        if {"k6_outputs", "locust_outputs"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def quiet_target():
    """The sample target at a steady 5 ms, for tests about the drivers rather than the numbers."""
    server = start_in_thread(latency_ms=5.0, jitter_ms=0.0)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def results_fixtures() -> Path:
    """Committed samples: a real Locust CSV and JSON, and a JMeter JTL written by hand."""
    return RESULTS_FIXTURES


@pytest.fixture(scope="session")
def k6_outputs(tmp_path_factory) -> K6Outputs:
    """One real k6 run (3 s, 3 VUs) against the sample target: summary export, handleSummary
    JSON and NDJSON points of the same run."""
    return run_k6(tmp_path_factory.mktemp("k6-run"))


@pytest.fixture(scope="session")
def locust_outputs(tmp_path_factory) -> tuple[Path, Path]:
    """A real headless Locust run: (``PREFIX_stats.csv``, the ``--json`` stats it printed).

    Two short runs, because ``--json`` resets the stats Locust would otherwise write to the CSV.
    """
    workdir = tmp_path_factory.mktemp("locust-run")
    locustfile = workdir / "locustfile.py"
    locustfile.write_text(LOCUSTFILE)
    target = start_in_thread(latency_ms=10.0, jitter_ms=2.0, error_rate=0.05)
    try:
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--headless",
            "-u",
            "3",
            "-r",
            "3",
            "-t",
            "3s",
            "--host",
            target.url,
            "--skip-log",
            "--only-summary",
        ]
        # Both runs at once: the session waits 3 s, not 6.
        csv_run = subprocess.Popen(
            [*command, "--csv", str(workdir / "run")],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        json_run = subprocess.Popen(
            [*command, "--json"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _, csv_errors = csv_run.communicate(timeout=120)
        json_output, json_errors = json_run.communicate(timeout=120)
    finally:
        target.shutdown()
        target.server_close()
    stats_csv = workdir / "run_stats.csv"
    stats_json = workdir / "stats.json"
    stats_json.write_text(json_output)
    # Locust exits 1 when any request failed, which the error rate makes certain.
    if not stats_csv.exists() or not json_output.strip().startswith("["):
        raise RuntimeError(f"locust failed:\n{csv_errors[-2000:]}\n{json_errors[-2000:]}")
    return stats_csv, stats_json
