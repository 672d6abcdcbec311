"""Benchmark the history endpoint's cursor pagination on a million validations (PostgreSQL).

Fills a fresh database with N validations of one project (COPY, a few seconds), then times the
history selector fetching a page at the start, in the middle and at the end of the history by
following cursors, and, for comparison, the same pages with OFFSET. A keyset page costs the same
wherever it is; an offset page grows with its depth.

    .venv/bin/python bench/history.py [--rows 1000000] [--database-url postgres://…/perfgate_history]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def recreate_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    with psycopg.connect(parts._replace(path="/postgres").geturl(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/perfgate_history")
    parser.add_argument("--page", type=int, default=50)
    args = parser.parse_args()

    recreate_database(args.database_url)
    os.environ.update(
        DATABASE_URL=args.database_url,
        DJANGO_SETTINGS_MODULE="perfgate_site.settings",
        DEBUG="false",
        SECRET_KEY="bench-" + "x" * 50,
        PERFGATE_SECRETS_KEYS="YmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtYmVuY2gtMzI=",
    )
    os.environ.pop("REDIS_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=ROOT, check=True)
    subprocess.run(
        [sys.executable, "manage.py", "apply_config", str(ROOT / "gates" / "demo" / "perfgate.yaml")],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )

    import django

    django.setup()
    from django.db import connection

    from gates.models import Project, Validation
    from gates.selectors import history_page

    project = Project.objects.get(slug="wedsync-web")
    environments = list(project.environments.values_list("pk", flat=True))
    scenario = project.scenarios.get().pk

    print(f"==> inserting {args.rows:,} validations", flush=True)
    started = time.perf_counter()
    start = datetime(2024, 1, 1, tzinfo=UTC)
    columns = (
        "id",
        "project_id",
        "environment_id",
        "scenario_id",
        "build_id",
        "git_hash",
        "branch",
        "status",
        "verdict",
        "deployment_allowed",
        "would_block",
        "status_reason",
        "manual_block_reason",
        "blocking_reasons",
        "report",
        "test_config",
        "deployment_context",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
    )
    with connection.cursor() as cursor:
        with cursor.cursor.copy(
            f"COPY {Validation._meta.db_table} ({', '.join(columns)}) FROM STDIN"
        ) as copy:
            for i in range(args.rows):
                created = start + timedelta(seconds=30 * i)
                copy.write_row(
                    (
                        uuid.uuid4(),
                        project.pk,
                        environments[i % len(environments)],
                        scenario,
                        f"gha-{i}",
                        f"{i:040x}",
                        "refs/heads/main",
                        "passed",
                        "pass",
                        True,
                        False,
                        "",
                        "",
                        "[]",
                        "{}",
                        "{}",
                        "{}",
                        "bench",
                        created,
                        created,
                        created,
                    )
                )
        cursor.execute(f"ANALYZE {Validation._meta.db_table}")
    print(f"    {time.perf_counter() - started:.1f} s", flush=True)

    def timed(fn, repeat=5) -> float:
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            fn()
            times.append(time.perf_counter() - began)
        return statistics.median(times) * 1000

    # Walk to the cursors at 0%, 50% and the end, the way a client would (one page at a time
    # would take a million/page requests, so jump by building the cursor of the row there).
    from gates.selectors import _encode_cursor

    ordered = Validation.objects.filter(project=project).order_by("-created_at", "-pk")
    print(f"==> one page of {args.page}, median of 5 (ms)")
    print(f"{'depth':>10s}  {'cursor':>8s}  {'offset':>8s}")
    for fraction in (0.0, 0.5, 0.999):
        depth = int(args.rows * fraction)
        cursor = None
        if depth:
            row = ordered.values_list("created_at", "pk")[depth - 1]
            cursor = _encode_cursor(*row)
        keyset = timed(lambda cursor=cursor: history_page(project=project, cursor=cursor, limit=args.page))
        offset = timed(
            lambda depth=depth: list(
                ordered.select_related("environment", "scenario")[depth : depth + args.page]
            )
        )
        print(f"{depth:>10,}  {keyset:8.2f}  {offset:8.2f}")


if __name__ == "__main__":
    main()
