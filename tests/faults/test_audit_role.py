"""The web and worker processes run as a PostgreSQL role that may only INSERT and SELECT the audit
table, while migrations run as the owner (docs/audit.md). For real: a fresh database and two roles
of unique names on the shared server (dropped afterwards), migrated as the owner, granted with
`manage.py audit_grants --apply`; then the app role records and reads events and verifies the log,
and the database refuses it every way of changing, cutting or unguarding the audit table."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent.parent

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="roles and grants exist on PostgreSQL only"),
]

RECORD_AND_READ = """
from django.db import transaction
from gates.audit import SYSTEM, audit_record
from gates.models import AuditEvent
with transaction.atomic():
    for i in range(2):
        audit_record(action="test.event", actor=SYSTEM, reason=f"as the app role {i}")
print(AuditEvent.objects.count())
"""

REFUSED = [
    "UPDATE gates_auditevent SET reason = 'rewritten'",
    "DELETE FROM gates_auditevent",
    "TRUNCATE gates_auditevent",
    "ALTER TABLE gates_auditevent DISABLE TRIGGER gates_auditevent_no_update_delete",
    "DROP TRIGGER gates_auditevent_no_update_delete ON gates_auditevent",
]

NOT_ALLOWED = "permission denied|must be owner"


class Server:
    """The shared PostgreSQL server, as the superuser the suite connects as."""

    def __init__(self):
        db = connection.settings_dict
        self.host, self.port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
        self.superuser = db.get("USER") or "postgres"

    def url(self, role: str, database: str) -> str:
        return f"postgres://{role}@{self.host}:{self.port}/{database}"

    def connect(self, role: str, database: str) -> psycopg.Connection:
        return psycopg.connect(self.url(role, database), autocommit=True)

    def admin(self, *statements: str) -> None:
        with self.connect(self.superuser, "postgres") as admin:
            for statement in statements:
                admin.execute(statement)


@pytest.fixture(scope="module")
def roles(tmp_path_factory):
    """A database owned by a fresh owner role and migrated by it, and a fresh app role; all
    dropped afterwards."""
    server, suffix = Server(), uuid.uuid4().hex[:10]
    database, owner, app = f"perfgate_ha_roles_{suffix}", f"perfgate_owner_{suffix}", f"perfgate_app_{suffix}"
    digests = tmp_path_factory.mktemp("roles") / "audit-digests"
    server.admin(
        f"CREATE ROLE {owner} LOGIN NOSUPERUSER",
        f"CREATE ROLE {app} LOGIN NOSUPERUSER",
        f"CREATE DATABASE {database} OWNER {owner}",
    )
    try:
        migrated = manage(server, owner, database, "migrate", "--noinput", digests=digests)
        assert migrated.returncode == 0, migrated.stderr
        yield server, database, owner, app, digests
    finally:
        server.admin(
            f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", f"DROP ROLE {app}", f"DROP ROLE {owner}"
        )


def manage(
    server: Server, role: str, database: str, *args: str, digests: Path
) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DATABASE_URL": server.url(role, database),
        "DEBUG": "false",
        "SECRET_KEY": settings.SECRET_KEY,
        "PERFGATE_SECRETS_KEYS": ",".join(settings.PERFGATE_SECRETS_KEYS),
        "PERFGATE_AUDIT_DIGEST_DIR": str(digests),
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_app_role_may_only_insert_and_select_the_audit_log(roles):
    server, database, owner, app, digests = roles
    granted = manage(server, owner, database, "audit_grants", "--app-role", app, "--apply", digests=digests)
    assert granted.returncode == 0, granted.stderr

    recorded = manage(server, app, database, "shell", "--no-imports", "-c", RECORD_AND_READ, digests=digests)
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.strip() == "2"
    signed = manage(server, app, database, "audit_digest", digests=digests)
    assert signed.returncode == 0 and "2 event(s)" in signed.stdout, signed.stderr

    with server.connect(app, database) as as_app:
        # Refused by the grants and ownership, before the append-only trigger is even asked.
        for statement in REFUSED:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match=NOT_ALLOWED):
                as_app.execute(statement)
        # The trigger's maintenance switch is for superusers; the grant refuses the app role first.
        as_app.execute("SET perfgate.audit_maintenance = 'on'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=NOT_ALLOWED):
            as_app.execute("DELETE FROM gates_auditevent")
        # Every other table is the app's to change as usual.
        changed = as_app.execute("UPDATE django_q_schedule SET repeats = repeats").rowcount
        assert changed >= 1
        assert as_app.execute("SELECT count(*) FROM gates_auditevent").fetchone()[0] == 2

    verified = manage(server, app, database, "verify_audit_log", digests=digests)
    assert verified.returncode == 0, verified.stderr
    assert "intact: 2 event(s) verified" in verified.stdout and "digest #1" in verified.stdout


def test_audit_grants_refuses_a_role_that_could_drop_the_trigger(roles):
    server, database, owner, _, digests = roles
    refused = manage(server, owner, database, "audit_grants", "--app-role", owner, digests=digests)
    assert refused.returncode == 2
    assert "could disable or drop the audit trigger" in refused.stderr
