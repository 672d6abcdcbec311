"""manage.py reap: end the running validations whose worker is lost, once, for cron where no
worker may be alive to run django-q2's scheduled reaper (docs/architecture.md, "Faults")."""

from django.core.management.base import BaseCommand

from gates.services import validation_dispatch_pending, validation_reap_expired


class Command(BaseCommand):
    help = (
        "End running validations whose lease expired (their worker stopped renewing it) as errors, "
        "blocked or failed by each environment's policy."
    )

    def handle(self, *args, **options):
        sent = validation_dispatch_pending()
        if sent:
            self.stdout.write(f"{sent} queued load test(s) sent to the task broker that could not take them.")
        reaped = validation_reap_expired()
        self.stdout.write(f"{reaped} validation(s) with an expired lease ended.")
