"""Re-encrypt every stored third-party secret with the newest key of PERFGATE_SECRETS_KEYS."""

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from integrations.secrets import EncryptedTextField, SecretUnreadable


def encrypted_fields() -> list[tuple[type, tuple[str, ...]]]:
    """(model, its encrypted fields) for every model: a new secret field is rotated without
    anyone remembering to list it here."""
    found = []
    for model in apps.get_models():
        names = tuple(f.name for f in model._meta.concrete_fields if isinstance(f, EncryptedTextField))
        if names:
            found.append((model, names))
    return found


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret with the first key of PERFGATE_SECRETS_KEYS. Put the new key "
        "first, run this, then remove the old key."
    )

    def handle(self, *args, **options):
        rotated = 0
        try:
            with transaction.atomic():
                for model, fields in encrypted_fields():
                    # Reading decrypts with whichever key fits; saving encrypts with the newest.
                    for row in model.objects.select_for_update().only("pk", *fields):
                        present = [name for name in fields if getattr(row, name)]
                        if present:
                            row.save(update_fields=present)
                            rotated += len(present)
        except SecretUnreadable as exc:
            raise CommandError(f"Nothing was changed: {exc}") from None
        self.stdout.write(f"Re-encrypted {rotated} secret(s) with the newest key.")
