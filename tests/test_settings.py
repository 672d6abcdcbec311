"""Settings fail loudly on unsafe production values."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_settings(**env):
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "PERFGATE_SECRETS_KEYS")
    }
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "from django.conf import settings; settings.DATABASES; print(settings.DEBUG)"],
        cwd=ROOT,
        env={**environment, "DJANGO_SETTINGS_MODULE": "perfgate_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_secret_key_is_required_when_debug_is_off():
    result = load_settings(DEBUG="false", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


FERNET_KEY = "0Y7m6j1n3QO2bRZ0v6p8dC0l9kq8Gm9Yk2xJ2a3wT4E="


def test_a_secret_key_and_a_secrets_key_from_the_environment_are_enough_in_production():
    result = load_settings(DEBUG="false", SECRET_KEY="x" * 50, PERFGATE_SECRETS_KEYS=FERNET_KEY)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_the_key_that_encrypts_stored_secrets_is_required_when_debug_is_off():
    result = load_settings(DEBUG="false", SECRET_KEY="x" * 50, PERFGATE_SECRETS_KEYS="")
    assert result.returncode != 0
    assert "PERFGATE_SECRETS_KEYS is required" in result.stderr


def test_a_secrets_key_that_is_not_a_fernet_key_is_refused_at_startup():
    result = load_settings(DEBUG="true", PERFGATE_SECRETS_KEYS=f"{FERNET_KEY},not-a-key")
    assert result.returncode != 0
    assert "key 2 is not a Fernet key" in result.stderr


def test_a_load_test_task_is_never_run_twice_by_the_broker():
    from django.conf import settings

    cluster = settings.Q_CLUSTER
    assert cluster["max_attempts"] == 1
    assert cluster["retry"] > cluster["timeout"]


def test_cookies_are_secure_and_http_only_when_debug_is_off():
    probe = (
        "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SESSION_COOKIE_HTTPONLY, s.SECURE_HSTS_SECONDS > 0, s.X_FRAME_OPTIONS)"
    )
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "PERFGATE_SECRETS_KEYS")
    }
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **environment,
            "DEBUG": "false",
            "SECRET_KEY": "x" * 50,
            "PERFGATE_SECRETS_KEYS": FERNET_KEY,
            "DJANGO_SETTINGS_MODULE": "perfgate_site.settings",
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True", "True", "True", "DENY"]
