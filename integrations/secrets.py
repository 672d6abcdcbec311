"""Third-party secrets encrypted at rest with a rotatable key list (``cryptography``'s MultiFernet).

``PERFGATE_SECRETS_KEYS`` lists Fernet keys, newest first: the newest encrypts, any of them
decrypts. Rotating a key: put the new one first, run ``manage.py rotate_secrets`` (every stored
secret is re-encrypted with it), then drop the old one.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import models

PREFIX = "fernet:"


class SecretUnreadable(Exception):
    """A stored secret that none of the configured keys can decrypt."""


def _keys() -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.encode()) for key in settings.PERFGATE_SECRETS_KEYS])
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(
            f"PERFGATE_SECRETS_KEYS holds a key that is not a Fernet key: {exc}"
        ) from None


def encrypt(plaintext: str) -> str:
    return PREFIX + _keys().encrypt(plaintext.encode()).decode()


def decrypt(stored: str) -> str:
    if not stored.startswith(PREFIX):
        raise SecretUnreadable("The stored value is not an encrypted secret.")
    try:
        return _keys().decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "A stored secret cannot be decrypted with any key in PERFGATE_SECRETS_KEYS "
            "(was the key that encrypted it removed before `manage.py rotate_secrets` ran?)."
        ) from None


class EncryptedTextField(models.TextField):
    """Text kept encrypted in the database and plain in Python. Empty stays empty (no secret)."""

    is_secret = True  # never copied into an audit event or a diff (``gates.config.config_snapshot``)

    def from_db_value(self, value, expression, connection):
        if not value:
            return value
        return decrypt(value)

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if not value:
            return value
        return encrypt(value)
