"""manage.py audit_grants --app-role ROLE [--apply]: the PostgreSQL rights of the role the web and
worker processes connect as. Run it as the owner of the tables (the role that runs migrations),
after every migrate: the app role may read and write every table, but only INSERT and SELECT the
audit log, and as it owns nothing it can neither ALTER (DISABLE TRIGGER) nor DROP the trigger."""

from django.core.management.base import BaseCommand, CommandError
from django.db import connection

from gates.models import AuditEvent

USAGE_ERROR = 2


def grant_statements(app_role: str, database: str, audit_table: str) -> list[str]:
    """Normal rights on every table, now and in later migrations; the audit table's taken back."""
    quote = connection.ops.quote_name
    role, table = quote(app_role), quote(audit_table)
    return [
        f"GRANT CONNECT ON DATABASE {quote(database)} TO {role}",
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {role}",
        f"REVOKE ALL ON {table} FROM {role}",
        f"GRANT SELECT, INSERT ON {table} TO {role}",
    ]


class Command(BaseCommand):
    help = (
        "Print (or --apply) the GRANTs that let the web and worker role read and write perfgate's "
        "tables but only INSERT and SELECT the audit log. Run as the tables' owner after migrate."
    )

    def add_arguments(self, parser):
        parser.add_argument("--app-role", required=True, help="The role the web and worker processes use.")
        parser.add_argument(
            "--apply", action="store_true", help="Run the statements instead of printing them."
        )

    def handle(self, *args, app_role, apply, **options):
        if connection.vendor != "postgresql":
            raise CommandError(
                "Roles exist on PostgreSQL only; on SQLite the database file's permissions are the boundary.",
                returncode=USAGE_ERROR,
            )
        audit_table = AuditEvent._meta.db_table
        self._refuse_a_role_that_could_alter(app_role, audit_table)
        statements = grant_statements(app_role, connection.settings_dict["NAME"], audit_table)
        if not apply:
            self.stdout.write("".join(f"{statement};\n" for statement in statements))
            return
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        self.stdout.write(
            self.style.SUCCESS(f"{app_role} may now INSERT and SELECT {audit_table}, and nothing more on it.")
        )

    def _refuse_a_role_that_could_alter(self, app_role: str, audit_table: str) -> None:
        """A superuser, or a member of the owner, could still disable or drop the trigger."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.rolsuper, pg_has_role(r.oid, t.tableowner, 'MEMBER') "
                "FROM pg_roles r, pg_tables t WHERE r.rolname = %s AND t.tablename = %s",
                [app_role, audit_table],
            )
            row = cursor.fetchone()
        if row is None:
            raise CommandError(
                f"No role {app_role!r} (or no table {audit_table}: migrate first).", returncode=USAGE_ERROR
            )
        superuser, owns = row
        if superuser or owns:
            what = "a superuser" if superuser else "the owner of the tables, or a member of it"
            raise CommandError(
                f"{app_role} is {what}: "
                "it could disable or drop the audit trigger whatever is granted. Give the web and workers "
                "a role of their own.",
                returncode=USAGE_ERROR,
            )
