"""manage.py audit_digest: write the next signed digest of the audit log now (the scheduled task
does the same every PERFGATE_AUDIT_DIGEST_MINUTES); exit 1 when the events since the last digest
do not verify, as nothing is signed then."""

from django.core.management.base import BaseCommand

from gates.audit import ChainBroken, DigestInvalid, audit_digest_write, digest_dir


class Command(BaseCommand):
    help = (
        "Sign the audit log's count, last id and last hash into the next digest file in "
        "PERFGATE_AUDIT_DIGEST_DIR, after verifying the events since the last digest."
    )

    def handle(self, *args, **options):
        try:
            digest = audit_digest_write()
        except (ChainBroken, DigestInvalid) as refused:
            self.stderr.write(
                self.style.ERROR(f"No digest written: {refused}. Run manage.py verify_audit_log.")
            )
            raise SystemExit(1) from None
        if digest is None:
            self.stdout.write(f"No new audit event since the last digest in {digest_dir()}.")
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Wrote {digest.name} in {digest_dir()}: {digest.count} event(s) up to #{digest.last_id}."
            )
        )
