"""manage.py verify_audit_log: walk the hash chain; exit 1 at the first broken link."""

from django.core.management.base import BaseCommand

from gates.audit import verify_chain


class Command(BaseCommand):
    help = "Verify that the audit log has not been changed, reordered or cut."

    def handle(self, *args, **options):
        checked, broken = verify_chain()
        if broken is not None:
            self.stderr.write(
                self.style.ERROR(
                    f"Audit log BROKEN at event #{broken.event_id}: {broken.problem}. "
                    f"{checked} event(s) before it verified."
                )
            )
            raise SystemExit(1)
        self.stdout.write(self.style.SUCCESS(f"Audit log intact: {checked} event(s) verified."))
