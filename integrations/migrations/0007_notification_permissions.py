"""Ops manage their projects' notification channels and see the notifications; auditors see both."""

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
        ("gates", "0019_notice_bypass"),
        ("integrations", "0006_notifications"),
    ]

    operations = [migrations.RunPython(update_groups, migrations.RunPython.noop)]
