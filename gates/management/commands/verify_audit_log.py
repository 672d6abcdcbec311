"""manage.py verify_audit_log: check the signed digests, walk the hash chain, and hold the table
against the digests; exit 1 at the first problem, naming the event or digest file."""

from datetime import timedelta

from django.core.management.base import BaseCommand

from gates.audit import AuditReport, audit_log_verify, digest_dir


class Command(BaseCommand):
    help = (
        "Verify that the audit log has not been changed, reordered, cut, forged or re-chained: the "
        "keyed hash chain, then the table against the signed digests in PERFGATE_AUDIT_DIGEST_DIR."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--grace-minutes",
            type=float,
            help="How old an event may be and still lack a signed digest "
            "(default: twice PERFGATE_AUDIT_DIGEST_MINUTES).",
        )

    def handle(self, *args, grace_minutes=None, **options):
        grace = timedelta(minutes=grace_minutes) if grace_minutes is not None else None
        report = audit_log_verify(grace=grace)
        if report.problem is not None:
            self.stderr.write(
                self.style.ERROR(
                    f"Audit log BROKEN: {report.problem}. {report.checked} event(s) before it verified."
                )
            )
            raise SystemExit(1)
        self.stdout.write(
            self.style.SUCCESS(f"Audit log intact: {report.checked} event(s) verified; {_coverage(report)}")
        )


def _coverage(report: AuditReport) -> str:
    if report.latest is None:
        return f"no signed digest yet in {digest_dir()} ({report.uncovered} event(s) not yet covered)."
    latest = report.latest
    return (
        f"{latest.name} of {latest.created_at} covers {latest.count} up to #{latest.last_id}; "
        f"{report.uncovered} event(s) after it not yet covered by a signed digest."
    )
