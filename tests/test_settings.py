"""Settings fail loudly on unsafe production values."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# Left out of the environment a test starts from, so it sees the defaults unless it sets them.
UNSET = (
    "DEBUG",
    "SECRET_KEY",
    "DATABASE_URL",
    "PERFGATE_SECRETS_KEYS",
    "PERFGATE_TASK_TIMEOUT",
    "PERFGATE_TASK_RETRY",
    "PERFGATE_WORKFLOW_TIMEOUT_MINUTES",
    "PERFGATE_RUN_MARGIN_SECONDS",
)


def load_settings(probe="settings.DATABASES; print(settings.DEBUG)", **env):
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", f"from django.conf import settings; {probe}"],
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


def test_the_default_timeouts_fit_a_workflow_and_a_default_scenario_in_one_worker_task():
    from gates.models import Scenario

    result = load_settings(
        "print(settings.PERFGATE_WORKFLOW_TIMEOUT_MINUTES, settings.PERFGATE_LONGEST_RUN_SECONDS, "
        "settings.PERFGATE_RUN_MARGIN_SECONDS, settings.PERFGATE_TASK_HEADROOM_SECONDS, "
        "settings.Q_CLUSTER['timeout'], settings.Q_CLUSTER['retry'])",
        DEBUG="true",
    )
    assert result.returncode == 0, result.stderr
    workflow_minutes, longest, margin, headroom, timeout, retry = (float(v) for v in result.stdout.split())
    assert workflow_minutes * 60 <= longest and longest + margin + headroom <= timeout < retry
    assert Scenario._meta.get_field("max_duration_seconds").default <= longest


def test_a_workflow_timeout_longer_than_a_worker_task_is_refused_at_startup():
    result = load_settings(DEBUG="true", PERFGATE_WORKFLOW_TIMEOUT_MINUTES="60")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "PERFGATE_WORKFLOW_TIMEOUT_MINUTES (60 min) does not fit in a worker task" in result.stderr


def test_a_workflow_timeout_fits_when_the_task_timeout_is_raised_with_it():
    result = load_settings(DEBUG="true", PERFGATE_WORKFLOW_TIMEOUT_MINUTES="60", PERFGATE_TASK_TIMEOUT="3800")
    assert result.returncode == 0, result.stderr


def test_a_run_margin_that_leaves_no_room_for_a_load_test_is_refused_at_startup():
    result = load_settings(DEBUG="true", PERFGATE_RUN_MARGIN_SECONDS="1500")
    assert result.returncode != 0
    assert "not even a scenario's default maxDuration (300s) fits" in result.stderr


def test_a_broker_retry_not_longer_than_the_task_timeout_is_refused_at_startup():
    result = load_settings(DEBUG="true", PERFGATE_TASK_RETRY="1800")
    assert result.returncode != 0
    assert "PERFGATE_TASK_RETRY (1800s) must be longer than PERFGATE_TASK_TIMEOUT (1800s)" in result.stderr


def test_cookies_are_secure_and_http_only_when_debug_is_off():
    probe = (
        "from django.conf import settings as s; print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, "
        "s.SESSION_COOKIE_HTTPONLY, s.SECURE_HSTS_SECONDS > 0, s.X_FRAME_OPTIONS)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in UNSET}
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
