"""Ops manage their projects' CI tokens in the admin (PRODUCT.md): the ops group gets the token
admin's view and add permissions. Making or revoking a token still takes change_thresholds on
the token's project."""

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
        ("gates", "0011_github"),
        ("integrations", "0004_webhook_claim"),
    ]

    operations = [migrations.RunPython(update_groups, migrations.RunPython.noop)]
