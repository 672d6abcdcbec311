"""Decision quality on this machine's real noise: perfgate's history and gate-run modes side by side
with the published algorithms (Bencher, Conbench, Horreum), on a dataset collected here.

    .venv/bin/python bench/decisions.py            # collect a full dataset (~35 min), print the tables
    .venv/bin/python bench/decisions.py --quick    # a smaller one (~12 min)
    .venv/bin/python bench/decisions.py --dataset bench/results/decisions.json    # tables only

Collection runs the real k6 against a local CPU-bound target (``bench/cpu_target.py``) that shares
the two cores with k6, at injected slowdowns of 0, +5, +10, +15, +20, +30 and +50% of server work.
History runs are interleaved (each round runs every level once, in a shuffled order) so machine
drift hits every level alike; each run is judged alone against the 30 unchanged runs before it.
Gate-run decisions alternate between unchanged code and the level whose p(95) shift is closest to
+15%, each one the product's own A/B loop (``gates.loadtest.ab``) over real k6 repetitions. The
dataset is saved after every run, so an interrupted collection keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from baselines import stats  # noqa: E402
from gates.loadtest import ab  # noqa: E402
from gates.loadtest.k6 import K6Spec, run_k6  # noqa: E402
from gates.results.base import TREND, ResultSet, Series  # noqa: E402
from gates.rules import BaselineValue, MetricSelector, RelativeRule, Verdict, evaluate_relative  # noqa: E402

LEVELS = (0, 5, 10, 15, 20, 30, 50)
HISTORY = 30
VUS = 4
SCRIPT = """import http from 'k6/http';
export default function () { http.get(__ENV.TARGET_URL); }
"""
# The demo's relative rule, with perfgate's default floor.
RULE = RelativeRule(
    label="http_req_duration p(95) relative",
    selector=MetricSelector("http_req_duration", ()),
    aggregation="p(95)",
    warn_pct=5.0,
    fail_pct=10.0,
    floor=1.0,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Target:
    """The CPU-bound target in its own process (its own GIL, competing with k6 for the cores)."""

    def __init__(self):
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cpu_target.py"), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        print("target:", self.process.stdout.readline().strip(), flush=True)

    def url(self, level: float) -> str:
        return f"http://127.0.0.1:{self.port}/work?work={1 + level / 100:.4f}"

    def close(self):
        self.process.terminate()
        self.process.wait(10)


def k6_run(url: str, seconds: float) -> dict:
    """One real k6 run: the numbers of http_req_duration from its summary export."""
    spec = K6Spec(script_text=SCRIPT, target_url=url, vus=VUS, duration_seconds=seconds)
    with tempfile.TemporaryDirectory(prefix="perfgate-bench-") as workdir:
        outcome = run_k6(spec, Path(workdir), timeout_seconds=seconds + 60)
        if not outcome.completed:
            raise RuntimeError(f"k6 failed: {outcome.stderr_tail[-500:]}")
        summary = json.loads(outcome.summary_path.read_text())["metrics"]
    duration = summary["http_req_duration"]
    return {
        "p95": duration["p(95)"],
        "p99": duration["p(99)"],
        "med": duration["med"],
        "avg": duration["avg"],
        "requests": summary["http_reqs"]["count"],
        "elapsed": outcome.elapsed_seconds,
    }


def save(dataset: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataset, indent=1))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Collection


def collect_history(dataset: dict, path: Path, target: Target, rounds: int, history: int, seconds: int):
    runs = dataset["history"]
    rng = random.Random(11)
    sequence = [0] * history + [level for _ in range(rounds) for level in rng.sample(LEVELS, len(LEVELS))]
    total = len(sequence)
    for level in sequence[len(runs) :]:
        row = {"seq": len(runs), "level": level, "at": time.time(), **k6_run(target.url(level), seconds)}
        runs.append(row)
        save(dataset, path)
        print(f"history {len(runs)}/{total}: +{level}% p95 {row['p95']:.2f} ms", flush=True)


def gate_run_rows(dataset: dict, fail_pct: float) -> list[dict]:
    return [row for row in dataset["gate_run"] if row.get("fail_pct", RULE.fail_pct) == fail_pct]


def collect_gate_run(
    dataset: dict, path: Path, target: Target, decisions: int, level: float, fail_pct: float
):
    """Decisions of the product's A/B loop for a rule failing at ``fail_pct``, alternating
    unchanged code and ``level``."""
    settings = dataset["gate_run_settings"]
    for index in range(len(gate_run_rows(dataset, fail_pct)), 2 * decisions):
        candidate = 0 if index % 2 == 0 else level
        loop = ab.ABLoop(
            rules=[ab.ABRule(key="http_req_duration p(95)", fail_pct=fail_pct, direction="up")],
            alpha=settings["alpha"],
            min_pairs=settings["min_pairs"],
            max_pairs=settings["max_pairs"],
        )
        started = time.monotonic()

        def repetition(side: str, candidate=candidate) -> dict:
            url = target.url(0 if side == ab.REFERENCE else candidate)
            return {"http_req_duration p(95)": k6_run(url, settings["repetition_seconds"])["p95"]}

        decision = loop.run(repetition)
        dataset["gate_run"].append(
            {
                "fail_pct": fail_pct,
                "level": candidate,
                "verdict": decision.verdict,
                "pairs": decision.pairs,
                "load_seconds": decision.pairs * 2 * settings["repetition_seconds"],
                "stopped_by": decision.stopped_by,
                "wall_seconds": time.monotonic() - started,
                "estimate_pct": decision.checks[0].estimate_pct,
                "interval_pct": [decision.checks[0].low_pct, decision.checks[0].high_pct],
            }
        )
        save(dataset, path)
        print(
            f"gate-run fail +{fail_pct:g}%, {index + 1}/{2 * decisions}: +{candidate}% → "
            f"{decision.verdict} after {decision.pairs} pairs ({decision.checks[0].describe()})",
            flush=True,
        )


# ---------------------------------------------------------------------------------------------
# Analysis: each algorithm judges one run against the unchanged runs before it.


def perfgate_history(observed: float, history: list[float], alpha: float) -> bool:
    results = ResultSet(tool="k6", format="k6-summary")
    results.series["http_req_duration"] = Series(
        metric="http_req_duration", kind=TREND, unit="ms", samples=1000, values={"p(95)": observed}
    )
    baseline = BaselineValue(value=stats.noise_model(history).centre, run_values=tuple(history))
    outcome = evaluate_relative(RULE, results, baseline, alpha=alpha)
    return outcome.verdict == Verdict.FAIL


def bencher_t_test(observed: float, history: list[float]) -> bool:
    """Bencher's t-test threshold: upper boundary 0.99, max sample size 64. The boundary limit is
    the 0.99 quantile of Student's t with n - 1 degrees of freedom around the sample mean."""
    sample = np.asarray(history[-64:])
    limit = sample.mean() + scipy_stats.t.ppf(0.99, len(sample) - 1) * sample.std(ddof=1)
    return observed > limit


def bencher_percentage(observed: float, history: list[float]) -> bool:
    """Bencher's percentage threshold: alert above the mean of the history plus 10%."""
    return observed > np.mean(history[-64:]) * 1.10


def conbench_z(observed: float, history: list[float]) -> bool:
    """Conbench's lookback z-score: (x - mean) / stdev of the baseline distribution, regression at z > 5."""
    sample = np.asarray(history)
    return (observed - sample.mean()) / sample.std(ddof=1) > 5


def horreum_relative(observed: float, history: list[float]) -> bool:
    """Horreum's relative difference: window 1, filter mean, 20% over the mean of the earlier runs."""
    return (observed - np.mean(history)) / np.mean(history) > 0.20


ALGORITHMS = {
    "Bencher t-test 0.99": bencher_t_test,
    "Bencher percentage 10%": bencher_percentage,
    "Conbench z > 5": conbench_z,
    "Horreum relative 20%": horreum_relative,
}


def measured_shift(dataset: dict) -> dict[int, float]:
    """The p(95) shift each level produced: the median p(95) of its interleaved runs against the
    median of the unchanged runs of the same rounds (the history's first runs left out)."""
    rounds = dataset["history"][dataset["settings"]["history"] :]
    base = {level: np.median([r["p95"] for r in rounds if r["level"] == level]) for level in LEVELS}
    return {level: (base[level] / base[0] - 1) * 100 for level in LEVELS}


def history_table(dataset: dict, alpha: float) -> tuple[list[str], dict]:
    runs = dataset["history"]
    history_size = dataset["settings"]["history"]
    judged = []
    for index, run in enumerate(runs):
        earlier = [r["p95"] for r in runs[:index] if r["level"] == 0][-history_size:]
        if len(earlier) < history_size:
            continue
        judged.append((run, earlier))
    shift = measured_shift(dataset)
    # perfgate at its default false-block rate, and at its neighbours to show what the default buys.
    rates = sorted({alpha / 4, alpha, alpha * 2.5})
    algorithms = {
        f"perfgate alpha={rate:g}{' (default)' if rate == alpha else ''}": (
            lambda x, h, rate=rate: perfgate_history(x, h, rate)
        )
        for rate in rates
    }
    algorithms.update(ALGORITHMS)
    table = {}
    for name, judge in algorithms.items():
        table[name] = {}
        for level in LEVELS:
            cases = [judge(run["p95"], earlier) for run, earlier in judged if run["level"] == level]
            table[name][level] = (sum(cases), len(cases))
    lines = [
        "History mode: share of runs blocked, each judged alone against the 30 unchanged runs before it",
        f"{'work added':<30}" + "".join(f"{f'+{lv}%':>9}" for lv in LEVELS),
        f"{'p(95) shift measured':<30}" + "".join(f"{f'{shift[lv]:+.1f}%':>9}" for lv in LEVELS),
    ]
    for name, row in table.items():
        cells = "".join(f"{f'{b}/{n}':>9}" for b, n in (row[lv] for lv in LEVELS))
        lines.append(f"{name:<30}{cells}")
    return lines, {"shift": shift, "table": table}


def gate_run_table(dataset: dict) -> list[str]:
    rows = dataset["gate_run"]
    shift = measured_shift(dataset)
    run_seconds = dataset["settings"]["run_seconds"]
    lines = [
        "Gate-run mode: the product's A/B loop, decisions per level "
        f"(one run of the scenario = {run_seconds} s of load)",
        f"{'rule fails':<12}{'work':<8}{'p(95)':>8}{'decisions':>10}{'blocked':>9}{'passed':>8}"
        f"{'inconcl.':>9}"
        f"{'mean pairs':>11}{'mean load':>11}{'max load':>10}",
    ]
    for fail_pct, level in sorted({(r.get("fail_pct", RULE.fail_pct), r["level"]) for r in rows}):
        mine = [r for r in rows if r.get("fail_pct", RULE.fail_pct) == fail_pct and r["level"] == level]
        count = {v: sum(r["verdict"] == v for r in mine) for v in ("fail", "pass", "warn", "inconclusive")}
        count["pass"] += count.pop("warn")  # warn lets the deployment through, like pass
        loads = [r["load_seconds"] / run_seconds for r in mine]
        pairs = np.mean([r["pairs"] for r in mine])
        lines.append(
            f"{f'+{fail_pct:g}%':<12}{f'+{level}%':<8}{f'{shift[level]:+.1f}%':>8}{len(mine):>10}{count['fail']:>9}{count['pass']:>8}{count['inconclusive']:>9}"
            f"{pairs:>11.1f}{f'{np.mean(loads):.2f}x':>11}{f'{max(loads):.2f}x':>10}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller dataset (~12 min)")
    parser.add_argument("--dataset", type=Path, help="recompute the tables from a saved dataset")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "decisions.json")
    parser.add_argument("--resume", type=Path, help="go on collecting into a saved dataset")
    parser.add_argument("--skip-gate-run", action="store_true")
    parser.add_argument(
        "--gate-run-fail-pct",
        type=float,
        nargs="+",
        default=[10.0, 5.0],
        help="the fail %% of the rule gate-run decisions are made for (default: 10 and 5)",
    )
    args = parser.parse_args()

    alpha = stats.DEFAULT_FALSE_BLOCK_RATE
    rounds, decisions = (4, 5) if args.quick else (20, 20)
    if args.dataset:
        dataset = json.loads(args.dataset.read_text())
    else:
        history = 20 if args.quick else HISTORY
        dataset = (
            json.loads(args.resume.read_text())
            if args.resume
            else {
                "settings": {"history": history, "run_seconds": 5, "vus": VUS, "rounds": rounds},
                "gate_run_settings": {
                    "alpha": ab.DEFAULT_ALPHA,
                    "min_pairs": ab.DEFAULT_MIN_PAIRS,
                    "max_pairs": ab.DEFAULT_MAX_PAIRS,
                    "repetition_seconds": 1,
                },
                "machine": {"cpus": os.cpu_count()},
                "history": [],
                "gate_run": [],
            }
        )
        out = args.resume or args.out
        settings = dataset["settings"]
        target = Target()
        try:
            collect_history(
                dataset, out, target, settings["rounds"], settings["history"], settings["run_seconds"]
            )
            if not args.skip_gate_run:
                shift = measured_shift(dataset)
                level = min(LEVELS[1:], key=lambda lv: abs(shift[lv] - 15))
                for fail_pct in args.gate_run_fail_pct:
                    collect_gate_run(dataset, out, target, decisions, level, fail_pct)
        finally:
            target.close()
    lines, _ = history_table(dataset, alpha)
    print("\n".join(lines))
    if dataset["gate_run"]:
        print()
        print("\n".join(gate_run_table(dataset)))


if __name__ == "__main__":
    main()
