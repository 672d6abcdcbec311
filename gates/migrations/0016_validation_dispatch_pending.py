"""A validation the task broker could not take is marked, and sent again when it answers."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gates", "0015_status_notify"),
    ]

    operations = [
        migrations.AddField(
            model_name="validation",
            name="dispatch_pending",
            field=models.BooleanField(
                default=False,
                help_text="Queued, but the task broker was unreachable when its load test was sent: it is sent again as soon as the broker answers.",
            ),
        ),
    ]
