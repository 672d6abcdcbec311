"""Benchmark the streamed k6 NDJSON parser on a large generated file.

    python bench/parse_ndjson.py                 # 1 GB, shapes from a 2-second real k6 run
    python bench/parse_ndjson.py --size-mb 200 --shapes points.ndjson --keep

The file is built from real k6 output: the Metric lines are copied verbatim and every Point line
is a real line of the same metric with its time, value and tags replaced. Requests have several
names, methods and statuses, about 2% fail, and timestamps are written the way k6 writes them
(RFC 3339 with nanoseconds, trailing zeros trimmed). The file is parsed in this process with
``parse_results``; the script prints size, time, throughput and peak RSS, and checks the counts.

Targets: peak RSS under 200 MB whatever the size, at least 50 MB/s.
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gates.results import parse_results

# name, method, url tag, typical latency (ms), bytes sent, bytes received
REQUESTS = [
    ("guests", "GET", "/api/guests", 18.0, 121, 1186),
    ("guest-detail", "GET", "/api/guests/${id}", 9.0, 126, 243),
    ("rsvp", "POST", "/api/rsvp", 25.0, 246, 164),
    ("photos", "POST", "/api/photos", 80.0, 20731, 161),
]
HTTP_TIMINGS = [
    "http_req_duration",
    "http_req_blocked",
    "http_req_connecting",
    "http_req_tls_handshaking",
    "http_req_sending",
    "http_req_waiting",
    "http_req_receiving",
]
FAILURE_RATE = 0.02
SUBMETRICS = [f"http_req_duration{{name:{name}}}" for name, *_ in REQUESTS] + [
    f"http_req_failed{{name:{name}}}" for name, *_ in REQUESTS
]


def rss_mb() -> float:
    """Current resident set size."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KB on Linux


def real_k6_output(workdir: Path) -> Path:
    from tests.k6_run import run_k6

    return run_k6(workdir, duration_seconds=2, vus=2).ndjson


def learn_shapes(path: Path) -> tuple[list[bytes], dict[str, str]]:
    """The Metric lines, and per metric a %-template of one of its real Point lines."""
    declarations: list[bytes] = []
    templates: dict[str, str] = {}
    with open(path, "rb") as lines:
        for line in lines:
            obj = orjson.loads(line)
            if obj["type"] == "Metric":
                declarations.append(line if line.endswith(b"\n") else line + b"\n")
            elif obj["type"] == "Point" and obj["metric"] not in templates:
                obj["data"]["time"] = "@TIME@"
                obj["data"]["value"] = "@VALUE@"
                obj["data"]["tags"] = "@TAGS@"
                text = orjson.dumps(obj).decode().replace("%", "%%")
                text = text.replace('"@TIME@"', '"%s"').replace('"@VALUE@"', "%s").replace('"@TAGS@"', "%s")
                templates[obj["metric"]] = text + "\n"
    needed = {
        *HTTP_TIMINGS,
        "http_reqs",
        "http_req_failed",
        "checks",
        "data_sent",
        "data_received",
        "iteration_duration",
        "iterations",
        "vus",
        "vus_max",
    }
    missing = needed - set(templates)
    if missing:
        raise SystemExit(f"the shapes file lacks points of {sorted(missing)}")
    return declarations, templates


class Clock:
    """k6's timestamps: RFC 3339, nanoseconds, trailing zeros of the fraction trimmed."""

    def __init__(self, start_seconds: int):
        self.ns = start_seconds * 1_000_000_000
        self._second = -1
        self._prefix = ""

    def advance(self, ns: int) -> str:
        self.ns += ns
        second, fraction = divmod(self.ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        digits = f"{fraction:09d}".rstrip("0")
        return f"{self._prefix}.{digits}Z" if digits else f"{self._prefix}Z"


def generate(
    path: Path, size_bytes: int, declarations: list[bytes], templates: dict[str, str], seed: int = 1
) -> Counter:
    """Write about ``size_bytes`` of NDJSON; return what was written, for the checks."""
    rng = random.Random(seed)
    expected: Counter = Counter()
    clock = Clock(int(time.time()) - 86_400)
    request_tags = {}
    for name, method, url, *_ in REQUESTS:
        for status, ok in (("200" if method == "GET" else "201", True), ("503", False)):
            request_tags[name, ok] = orjson.dumps(
                {
                    "expected_response": "true" if ok else "false",
                    "group": "",
                    "method": method,
                    "name": name,
                    "proto": "HTTP/1.1",
                    "scenario": "default",
                    "status": status,
                    "url": url,
                }
            ).decode()
    plain_tags = orjson.dumps({"group": "", "scenario": "default"}).decode()
    check_tags = {
        name: orjson.dumps({"check": f"{name} is ok", "group": "", "scenario": "default"}).decode()
        for name, *_ in REQUESTS
    }
    written = 0
    last_vus_second = -1
    buffer: list[str] = []
    with open(path, "wb") as out:
        for line in declarations:
            out.write(line)
            written += len(line)
        while written < size_bytes:
            name, method, url, typical, sent, received = REQUESTS[rng.randrange(len(REQUESTS))]
            ok = rng.random() >= FAILURE_RATE
            now = clock.advance(rng.randrange(200_000, 3_000_000))
            if clock.ns // 1_000_000_000 != last_vus_second:
                last_vus_second = clock.ns // 1_000_000_000
                buffer.append(templates["vus"] % (now, 10, plain_tags))
                buffer.append(templates["vus_max"] % (now, 10, plain_tags))
                expected["vus"] += 1
            tags = request_tags[name, ok]
            duration = round(typical * rng.lognormvariate(0.0, 0.35), 6)
            if duration > expected["max_duration"]:
                expected["max_duration"] = duration
            waiting = round(duration * 0.93, 6)
            blocked = round(rng.expovariate(200.0), 6)
            connecting = round(blocked * 0.6, 6) if rng.random() < 0.01 else 0
            sending = round(rng.uniform(0.005, 0.05), 6)
            receiving = round(duration - waiting - sending, 6)
            buffer.append(templates["http_reqs"] % (now, 1, tags))
            for metric, value in (
                ("http_req_duration", duration),
                ("http_req_blocked", blocked),
                ("http_req_connecting", connecting),
                ("http_req_tls_handshaking", 0),
                ("http_req_sending", sending),
                ("http_req_waiting", waiting),
                ("http_req_receiving", receiving),
            ):
                buffer.append(templates[metric] % (now, value, tags))
            buffer.append(templates["http_req_failed"] % (now, 0 if ok else 1, tags))
            # One iteration per request, like a script that makes one call per iteration.
            buffer.append(templates["checks"] % (now, 1 if ok else 0, check_tags[name]))
            buffer.append(templates["data_sent"] % (now, sent, plain_tags))
            buffer.append(templates["data_received"] % (now, received, plain_tags))
            buffer.append(templates["iteration_duration"] % (now, round(duration + 0.4, 6), plain_tags))
            buffer.append(templates["iterations"] % (now, 1, plain_tags))
            expected["requests"] += 1
            expected[f"requests:{name}"] += 1
            expected["failures"] += not ok
            expected[f"failures:{name}"] += not ok
            if len(buffer) >= 4096:
                chunk = "".join(buffer).encode()
                out.write(chunk)
                written += len(chunk)
                buffer.clear()
        if buffer:
            chunk = "".join(buffer).encode()
            out.write(chunk)
            written += len(chunk)
    expected["bytes"] = written
    return expected


def check(result, expected: Counter) -> list[str]:
    problems = []

    def same(label: str, got, wanted) -> None:
        if got != wanted:
            problems.append(f"{label}: got {got}, expected {wanted}")

    same("http_reqs count", result.series["http_reqs"].values["count"], expected["requests"])
    same("http_req_duration count", result.series["http_req_duration"].samples, expected["requests"])
    same("http_req_duration max", result.series["http_req_duration"].values["max"], expected["max_duration"])
    same("http_req_failed passes", result.series["http_req_failed"].values["passes"], expected["failures"])
    same("iterations count", result.series["iterations"].values["count"], expected["requests"])
    same("vus samples", result.series["vus"].samples, expected["vus"])
    for name, *_ in REQUESTS:
        duration = result.series[f"http_req_duration{{name:{name}}}"]
        failed = result.series[f"http_req_failed{{name:{name}}}"]
        same(f"{name} requests", duration.samples, expected[f"requests:{name}"])
        same(f"{name} failures", failed.values["passes"], expected[f"failures:{name}"])
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size-mb", type=float, default=1024.0, help="size of the generated file (default 1024)"
    )
    parser.add_argument(
        "--shapes",
        type=Path,
        help="a real k6 NDJSON file to take line shapes from "
        "(default: run k6 for 2 s against the sample target)",
    )
    parser.add_argument("--dir", type=Path, help="where to write the file (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="perfgate-bench-", dir=args.dir))
    try:
        shapes = args.shapes or real_k6_output(workdir / "k6")
        declarations, templates = learn_shapes(shapes)
        path = workdir / "points.ndjson"
        started = time.perf_counter()
        expected = generate(path, int(args.size_mb * 2**20), declarations, templates)
        print(
            f"generated {expected['bytes'] / 2**20:,.0f} MB ({expected['requests']:,} requests) "
            f"in {time.perf_counter() - started:.1f} s: {path}"
        )

        rss_before, peak_before = rss_mb(), peak_rss_mb()
        started = time.perf_counter()
        result = parse_results(path, submetrics=SUBMETRICS)
        seconds = time.perf_counter() - started
        peak_after = peak_rss_mb()
        size_mb = expected["bytes"] / 2**20

        print(f"file size      {size_mb:,.1f} MB")
        print(f"parse time     {seconds:.2f} s")
        print(f"throughput     {size_mb / seconds:.1f} MB/s")
        print(f"RSS before     {rss_before:.1f} MB (peak so far {peak_before:.1f} MB)")
        print(
            f"peak RSS       {peak_after:.1f} MB (the parser added at most {peak_after - rss_before:.1f} MB)"
        )
        duration = result.series["http_req_duration"].values
        print(
            f"http_req_duration p(95) {duration['p(95)']:.3f} ms over {math.floor(duration['count']):,} "
            f"requests; run of {result.duration_seconds:,.1f} s"
        )
        problems = check(result, expected)
        for problem in problems:
            print(f"WRONG: {problem}")
        targets_met = peak_after < 200 and size_mb / seconds >= 50
        print("counts check: " + ("ok" if not problems else "FAILED"))
        print("targets (peak RSS < 200 MB, >= 50 MB/s): " + ("met" if targets_met else "MISSED"))
        return 0 if not problems and targets_met else 1
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
