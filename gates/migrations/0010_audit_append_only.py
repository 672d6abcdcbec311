"""On PostgreSQL the audit log is append-only in the database itself: UPDATE, DELETE and
TRUNCATE of gates_auditevent raise an error, whatever the application does.

Maintenance (and the test suite's table flushes) can lift this for one session, and only as a
database superuser, who could disable the triggers anyway: SET perfgate.audit_maintenance = 'on'.
"""

from django.db import migrations

INSTALL = """
CREATE OR REPLACE FUNCTION perfgate_audit_append_only() RETURNS trigger AS $$
BEGIN
    IF current_setting('perfgate.audit_maintenance', true) = 'on'
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = session_user) THEN
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
        RETURN NEW;  -- NULL for TRUNCATE, whose statement trigger ignores it
    END IF;
    RAISE EXCEPTION 'gates_auditevent is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER gates_auditevent_no_update_delete
    BEFORE UPDATE OR DELETE ON gates_auditevent
    FOR EACH ROW EXECUTE FUNCTION perfgate_audit_append_only();

CREATE TRIGGER gates_auditevent_no_truncate
    BEFORE TRUNCATE ON gates_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION perfgate_audit_append_only();
"""

REMOVE = """
DROP TRIGGER IF EXISTS gates_auditevent_no_update_delete ON gates_auditevent;
DROP TRIGGER IF EXISTS gates_auditevent_no_truncate ON gates_auditevent;
DROP FUNCTION IF EXISTS perfgate_audit_append_only();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REMOVE, params=None)


class Migration(migrations.Migration):
    dependencies = [("gates", "0009_groups_and_bypass_expiry")]

    operations = [migrations.RunPython(install, remove)]
