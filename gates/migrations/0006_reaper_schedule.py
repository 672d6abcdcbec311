"""The scheduled reaper: every PERFGATE_REAPER_MINUTES, running validations whose worker stopped
renewing its lease are ended as errors (see gates.tasks.reap_expired_leases)."""

from django.conf import settings
from django.db import migrations

NAME = "perfgate: reap expired leases"


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={
            "func": "gates.tasks.reap_expired_leases",
            "schedule_type": "I",  # MINUTES
            "minutes": settings.PERFGATE_REAPER_MINUTES,
            "repeats": -1,
        },
    )


def delete_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("gates", "0005_validation_lease_and_progress"),
        ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more"),
    ]

    operations = [migrations.RunPython(create_schedule, delete_schedule)]
