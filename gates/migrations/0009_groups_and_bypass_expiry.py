"""The two groups the admin is organised around, and the schedule that expires bypass requests.

- ops: edit scenarios, rules and environments, see validations and baselines, ask for bypasses.
  What they may do on which project (approve bypasses, block, change thresholds, roll back) is
  given per project with object permissions, in the project's admin page.
- auditors: view everything, change nothing.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

from gates.permissions import ensure_groups

SCHEDULE = "perfgate: expire bypass requests"


def create_groups(apps, schema_editor):
    # Permissions are made after the last migration; these groups need them now.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0)
        app_config.models_module = None
    ensure_groups(apps)
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(name=SCHEDULE, defaults={
        "func": "gates.tasks.expire_bypass_requests", "schedule_type": "I", "minutes": 1, "repeats": -1})


def remove_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=["ops", "auditors"]).delete()
    apps.get_model("django_q", "Schedule").objects.filter(name=SCHEDULE).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("gates", "0008_project_view_every_project"),
        ("baselines", "0002_initial"),
        ("integrations", "0002_create_cache_table"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_groups, remove_groups)]
