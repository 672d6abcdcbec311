"""Gate-run mode's A/B loop (pure): ABBA order, early stops both ways, inconclusive at the limit."""

import math

import numpy as np
import pytest

from gates.loadtest import ab

P95 = "http_req_duration p(95)"
P99 = "http_req_duration p(99)"


class Scripted:
    """Repetitions with known values: the reference at ``base``, the candidate ``change`` higher,
    each with a little seeded noise; records the order the sides ran in."""

    def __init__(self, change: float, noise: float = 0.02, seed: int = 1, keys=(P95,)):
        self.change = change
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.keys = keys
        self.sides = []

    def __call__(self, side: str) -> dict:
        self.sides.append(side)
        factor = 1 + self.change if side == ab.CANDIDATE else 1.0
        return {key: 20.0 * factor * math.exp(self.rng.normal(0, self.noise)) for key in self.keys}


def loop(**overrides) -> ab.ABLoop:
    options = {"rules": [ab.ABRule(key=P95, fail_pct=10.0)], "alpha": 0.05, "min_pairs": 5, "max_pairs": 12}
    return ab.ABLoop(**{**options, **overrides})


def test_pairs_run_in_abba_order():
    run = Scripted(change=0.0)
    loop(max_pairs=5).run(run)
    assert run.sides[:8] == ["reference", "candidate", "candidate", "reference"] * 2


def test_a_clear_slowdown_blocks_at_the_first_look():
    run = Scripted(change=1.0)  # twice as slow
    decision = loop().run(run)
    assert (decision.verdict, decision.pairs) == (ab.FAIL, 5)
    check = decision.check_for(P95)
    assert check.low_pct > 10.0 and check.estimate_pct == pytest.approx(100.0, abs=5)
    assert len(run.sides) == 10


def test_unchanged_code_passes_at_the_first_look():
    decision = loop().run(Scripted(change=0.0))
    assert (decision.verdict, decision.pairs) == (ab.PASS, 5)
    assert decision.check_for(P95).high_pct < 10.0


def test_a_change_at_the_threshold_ends_inconclusive_with_its_interval():
    decision = loop(max_pairs=8).run(Scripted(change=0.10, noise=0.05, seed=4))
    assert (decision.verdict, decision.pairs, decision.stopped_by) == (ab.INCONCLUSIVE, 8, "max pairs")
    check = decision.check_for(P95)
    assert check.verdict is None
    assert check.low_pct < 10.0 < check.high_pct
    assert "8 ABBA pairs (interval" in check.describe()


def test_a_noisy_slowdown_needs_more_pairs_than_the_minimum_and_still_blocks():
    decision = loop(max_pairs=20).run(Scripted(change=0.25, noise=0.08, seed=3))
    assert decision.verdict == ab.FAIL
    assert 5 < decision.pairs < 20


def test_the_load_time_limit_stops_the_loop():
    decision = loop(pair_seconds=10.0, max_load_seconds=65.0).run(Scripted(change=0.10, noise=0.05, seed=4))
    assert (decision.verdict, decision.pairs, decision.stopped_by) == (ab.INCONCLUSIVE, 6, "load-time limit")


def test_a_certain_slowdown_under_the_threshold_warns():
    decision = loop().run(Scripted(change=0.04, noise=0.003))
    assert decision.verdict == ab.WARN
    check = decision.check_for(P95)
    assert check.low_pct > 0 and check.high_pct < 10.0


def test_several_rules_block_with_holm_and_pass_only_together():
    rules = [ab.ABRule(key=P95, fail_pct=10.0), ab.ABRule(key=P99, fail_pct=10.0)]
    decision = loop(rules=rules).run(Scripted(change=0.0, keys=(P95, P99)))
    assert decision.verdict == ab.PASS and {c.verdict for c in decision.checks} == {ab.PASS}
    # With two rules at 5 pairs the smallest p (1/32) times 2 is above 0.05: Holm needs a sixth pair.
    decision = loop(rules=rules).run(Scripted(change=1.0, keys=(P95, P99)))
    assert (decision.verdict, decision.pairs) == (ab.FAIL, 6)


def test_the_floor_raises_the_threshold_for_fast_endpoints():
    # +20% of 20 ms is 4 ms, under a 5 ms floor: not a block.
    rules = [ab.ABRule(key=P95, fail_pct=10.0, floor=5.0)]
    decision = loop(rules=rules).run(Scripted(change=0.20, noise=0.01))
    assert decision.verdict in (ab.PASS, ab.WARN)
    assert decision.check_for(P95).threshold_pct == pytest.approx(25.0, rel=0.05)


def test_progress_reports_pairs_and_the_current_estimate():
    runner = loop()
    assert runner.progress() == {"pairs": 0, "maxPairs": 12, "checks": []}
    runner.add_pair({P95: 20.0}, {P95: 24.0})
    runner.add_pair({P95: 21.0}, {P95: 25.0})
    progress = runner.progress()
    assert progress["pairs"] == 2
    assert progress["checks"][0]["metric"] == P95
    assert progress["checks"][0]["estimatePct"] == pytest.approx(19.5, abs=1)
    assert progress["checks"][0]["intervalPct"] == [-100.0, None]  # two pairs bound nothing yet


def test_a_repetition_without_the_rule_s_value_is_refused():
    with pytest.raises(KeyError, match="no value for"):
        loop().add_pair({}, {P95: 1.0})


def test_a_loop_needs_rules_and_sane_limits():
    with pytest.raises(ValueError, match="at least one rule"):
        ab.ABLoop(rules=[])
    with pytest.raises(ValueError, match="min_pairs"):
        loop(min_pairs=6, max_pairs=5)
