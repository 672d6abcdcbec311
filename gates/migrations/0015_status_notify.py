"""On PostgreSQL every change of a validation's status is announced on the channel
``perfgate_validation_status`` as ``<validation id>:<new status>``, at commit, whoever made it (a
service, the reaper, a worker). Long-polls listen there (gates/waiting.py). Elsewhere nothing is
installed: the long-poll hub polls instead.
"""

from django.db import migrations

INSTALL = """
CREATE OR REPLACE FUNCTION perfgate_validation_status_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('perfgate_validation_status', NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER gates_validation_status_notify
    AFTER UPDATE OF status ON gates_validation
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION perfgate_validation_status_notify();
"""

REMOVE = """
DROP TRIGGER IF EXISTS gates_validation_status_notify ON gates_validation;
DROP FUNCTION IF EXISTS perfgate_validation_status_notify();
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(INSTALL, params=None)


def remove(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(REMOVE, params=None)


class Migration(migrations.Migration):
    dependencies = [("gates", "0014_idempotency_claim")]

    operations = [migrations.RunPython(install, remove)]
