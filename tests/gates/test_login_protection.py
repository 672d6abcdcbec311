"""Admin login brute-force protection (django-axes)."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse


@pytest.mark.django_db
def test_repeated_failed_logins_lock_the_account_out_even_with_the_right_password(client, settings):
    get_user_model().objects.create_user("victim", password="correct horse battery", is_staff=True)
    login = reverse("admin:login")
    codes = [
        client.post(login, {"username": "victim", "password": "guess"}).status_code
        for _ in range(settings.AXES_FAILURE_LIMIT)
    ]
    assert codes == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]  # the form with an error, then locked
    response = client.post(login, {"username": "victim", "password": "correct horse battery"})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db
def test_a_right_password_logs_in_before_the_limit(client):
    get_user_model().objects.create_user("dana", password="correct horse battery", is_staff=True)
    response = client.post(reverse("admin:login"), {"username": "dana", "password": "correct horse battery"})
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_manage_py_commands_start_without_django_axes_start_up_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LOG_LEVEL")}
    env.update(DATABASE_URL=f"sqlite:///{tmp_path / 'quiet.sqlite3'}", DEBUG="true")
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "AXES" not in result.stderr + result.stdout, result.stderr


def test_django_axes_still_reports_lockouts():
    assert logging.getLogger("axes.handlers.database").isEnabledFor(logging.WARNING)
    assert not logging.getLogger("axes.apps").isEnabledFor(logging.INFO)
