"""The Locust driver on its own, against the sample target: the warm-up is run, then left out."""

import pytest

from gates.loadtest.locust import LocustSpec, run_locust
from gates.results import parse_results
from tests.gates.conftest import GUEST_LIST_LOCUSTFILE

pytestmark = pytest.mark.slow


def test_the_warm_up_is_run_and_then_left_out_of_the_locust_stats(tmp_path, quiet_target):
    spec = LocustSpec(GUEST_LIST_LOCUSTFILE, quiet_target.url, users=2, duration_seconds=3, warmup_seconds=2)
    outcome = run_locust(spec, tmp_path, timeout_seconds=60)
    assert outcome.completed, outcome.stderr_tail

    warmup = outcome.warmup
    # Not excluded: the warm-up's record was not written (Locust's stderr says why).
    assert warmup is not None and warmup.excluded, outcome.stderr_tail
    assert 1.9 <= warmup.seconds <= 3.0 and warmup.requests > 10
    results = parse_results(outcome.stats_path, format="locust-csv")
    assert results.request_count > 10
    # Locust's CSV is rewritten every second: the measured part shows 2 to 3 of its 3 seconds,
    # never the warm-up's 2 on top.
    assert 1.0 <= results.duration_seconds <= 3.5


def test_without_a_warm_up_locust_measures_the_whole_run(tmp_path, quiet_target):
    spec = LocustSpec(GUEST_LIST_LOCUSTFILE, quiet_target.url, users=2, duration_seconds=2)
    outcome = run_locust(spec, tmp_path, timeout_seconds=60)
    assert outcome.completed and outcome.warmup is None
    assert not (tmp_path / "perfgate_warmup.py").exists()
