"""Gate-run mode's A/B loop: short interleaved repetitions against the reference (A) and the
candidate (B), decided on paired ratios with adaptive stopping. Pure code, no ORM, no tool: the
caller runs a repetition (``repetition(side) -> {rule key: value}``), this decides what comes next.

Order is ABBA (pair 0 runs A then B, pair 1 B then A, …) so that drift on the machine hits both
sides alike. After ``min_pairs`` pairs, and after every pair from then on, each key rule is tested
on its paired log ratios (``baselines.stats.paired_change``): the loop stops with ``fail`` as soon
as one rule's interval is wholly above its fail threshold (Holm across the rules), with ``pass``
as soon as every rule's interval is wholly below it, and otherwise runs another pair, up to
``max_pairs`` or the load-time limit; still undecided then is ``inconclusive``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from baselines import stats

REFERENCE = "reference"
CANDIDATE = "candidate"
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_PAIRS = 5
DEFAULT_MAX_PAIRS = 12

PASS = "pass"  # noqa: S105 - a verdict, not a password
WARN = "warn"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class ABRule:
    """What one key relative rule needs here: the key its values come under, its fail percentage,
    its floor (in the metric's unit; the threshold is never closer than that to the reference)
    and which way is worse."""

    key: str
    fail_pct: float
    direction: str = "up"
    floor: float = 0.0


@dataclass(frozen=True)
class ABCheck:
    """One rule's state after some pairs: its verdict so far (``None`` while undecided) and the
    estimate of the change with its interval, in percent of the reference (worse is positive)."""

    key: str
    verdict: str | None
    pairs: int
    estimate_pct: float
    low_pct: float
    high_pct: float
    threshold_pct: float
    p_value: float
    reference: float
    candidate: float

    def describe(self) -> str:
        interval = f"{_pct(self.low_pct)} to {_pct(self.high_pct)}"
        return (
            f"{_pct(self.estimate_pct)} over the reference in {self.pairs} ABBA pairs "
            f"(interval {interval}; fail above {_pct(self.threshold_pct)})"
        )


def _pct(value: float) -> str:
    if math.isinf(value):
        return "+∞%" if value > 0 else "-∞%"
    return f"{value:+.1f}%"


@dataclass
class ABDecision:
    """The loop's outcome: its verdict, how many pairs it ran, and each rule's check."""

    verdict: str
    pairs: int
    checks: list[ABCheck]
    stopped_by: str = ""  # "", "max pairs" or "load-time limit"
    load_seconds: float = 0.0  # seconds of load on both sides, warm-ups included (the runner sets it)
    repetition_seconds: float = 0.0

    def check_for(self, key: str) -> ABCheck | None:
        return next((check for check in self.checks if check.key == key), None)


def rule_key(series: str, aggregation: str) -> str:
    """How a rule's values are keyed in a repetition: "http_req_duration{name:rsvp} p(95)"."""
    return f"{series} {aggregation}"


def order(pair_index: int) -> tuple[str, str]:
    """ABBA: even pairs run the reference first, odd pairs the candidate first."""
    return (REFERENCE, CANDIDATE) if pair_index % 2 == 0 else (CANDIDATE, REFERENCE)


@dataclass
class ABLoop:
    rules: list[ABRule]
    alpha: float = DEFAULT_ALPHA
    min_pairs: int = DEFAULT_MIN_PAIRS
    max_pairs: int = DEFAULT_MAX_PAIRS
    # Seconds of load one pair costs and the most a decision may spend (None: no limit but max_pairs).
    pair_seconds: float = 0.0
    max_load_seconds: float | None = None
    pairs: list[dict[str, dict[str, float]]] = field(default_factory=list)

    def __post_init__(self):
        if not self.rules:
            raise ValueError("an A/B loop needs at least one rule to decide on")
        if not 1 <= self.min_pairs <= self.max_pairs:
            raise ValueError("need 1 <= min_pairs <= max_pairs")

    def add_pair(self, reference: dict[str, float], candidate: dict[str, float]) -> None:
        """Record one pair's values (each ``{rule key: value}``)."""
        for rule in self.rules:
            for side, values in ((REFERENCE, reference), (CANDIDATE, candidate)):
                if rule.key not in values:
                    raise KeyError(f"the {side} repetition has no value for {rule.key}")
        self.pairs.append({REFERENCE: dict(reference), CANDIDATE: dict(candidate)})

    def checks(self) -> list[ABCheck]:
        """Every rule's state on the pairs so far (Holm across the rules for blocking)."""
        changes = [self._change(rule) for rule in self.rules]
        adjusted = stats.holm([change.p_worse for change, _, _ in changes])
        checks = []
        for rule, (change, reference, candidate), p_worse in zip(self.rules, changes, adjusted, strict=True):
            if p_worse <= self.alpha:
                verdict, p_value = FAIL, p_worse
            elif change.p_better <= self.alpha:
                # Wholly below the threshold; a slowdown that is itself certain still warns.
                verdict = WARN if change.low > 0 else PASS
                p_value = change.p_better
            else:
                verdict, p_value = None, min(p_worse, change.p_better)
            checks.append(
                ABCheck(
                    key=rule.key,
                    verdict=verdict,
                    pairs=change.n,
                    estimate_pct=change.estimate * 100,
                    low_pct=change.low * 100,
                    high_pct=change.high * 100,
                    threshold_pct=change.threshold * 100,
                    p_value=p_value,
                    reference=reference,
                    candidate=candidate,
                )
            )
        return checks

    def _change(self, rule: ABRule) -> tuple[stats.PairedChange, float, float]:
        reference = [pair[REFERENCE][rule.key] for pair in self.pairs]
        candidate = [pair[CANDIDATE][rule.key] for pair in self.pairs]
        middle_a = sorted(reference)[len(reference) // 2]
        middle_b = sorted(candidate)[len(candidate) // 2]
        # The threshold as a worsening fraction: fail_pct, but never closer than the floor.
        if rule.direction == "down":
            fraction = max(rule.fail_pct / 100, rule.floor / middle_a if middle_a else 0.0)
            threshold = 1 / (1 - fraction) - 1 if fraction < 1 else math.inf
        else:
            threshold = max(rule.fail_pct / 100, rule.floor / middle_a if middle_a else 0.0)
        change = stats.paired_change(
            reference, candidate, threshold=threshold, alpha=self.alpha, direction=rule.direction
        )
        return change, middle_a, middle_b

    def decision(self) -> ABDecision | None:
        """The decision after the pairs so far, or None when another pair is needed."""
        count = len(self.pairs)
        if count < self.min_pairs:
            return None
        checks = self.checks()
        verdicts = [check.verdict for check in checks]
        if FAIL in verdicts:
            return ABDecision(FAIL, count, checks)
        if all(verdict in (PASS, WARN) for verdict in verdicts):
            return ABDecision(WARN if WARN in verdicts else PASS, count, checks)
        if count >= self.max_pairs:
            return ABDecision(INCONCLUSIVE, count, checks, stopped_by="max pairs")
        if self.max_load_seconds is not None and (count + 1) * self.pair_seconds > self.max_load_seconds:
            return ABDecision(INCONCLUSIVE, count, checks, stopped_by="load-time limit")
        return None

    def run(
        self,
        repetition: Callable[[str], dict[str, float]],
        on_pair: Callable[[ABLoop], None] | None = None,
    ) -> ABDecision:
        """Run pairs in ABBA order until a decision; ``on_pair(loop)`` after each pair (progress)."""
        while True:
            values = {}
            for side in order(len(self.pairs)):
                values[side] = repetition(side)
            self.add_pair(values[REFERENCE], values[CANDIDATE])
            if on_pair is not None:
                on_pair(self)
            decision = self.decision()
            if decision is not None:
                return decision

    def progress(self) -> dict:
        """What status shows while the loop runs: pairs done and, per rule, the current estimate."""
        document = {"pairs": len(self.pairs), "maxPairs": self.max_pairs, "checks": []}
        if len(self.pairs) >= 2:
            for check in self.checks():
                document["checks"].append(
                    {
                        "metric": check.key,
                        "estimatePct": round(check.estimate_pct, 2),
                        "intervalPct": [_finite_or_none(check.low_pct), _finite_or_none(check.high_pct)],
                    }
                )
        return document


def _finite_or_none(value: float) -> float | None:
    return round(value, 2) if math.isfinite(value) else None
