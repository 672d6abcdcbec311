"""Ops and auditors see watches, probes, rollbacks and notices (approving a rollback still takes
trigger_rollback on its project); auditors also see the Vercel connections and checks."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from gates.permissions import ensure_groups


def update_groups(apps, schema_editor):
    # Permissions are made after the last migration; the groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    ensure_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("gates", "0017_watch_and_rollback"),
        ("integrations", "0005_vercel"),
    ]

    operations = [migrations.RunPython(update_groups, migrations.RunPython.noop)]
