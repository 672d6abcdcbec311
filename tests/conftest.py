"""Shared personas and a configured project for every test.

Personas: ``ops`` and ``second_ops`` (operators of the project), ``auditor`` (view-only;
``auditor_client`` is the admin as that auditor, in the auditors group) and ``admin``
(superuser). The ``project`` fixture is the sample wedding platform with staging and
production, one k6 scenario and the usual rules.
"""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from gates.audit import Actor
from gates.models import Environment, Project, Scenario, ThresholdRule

SCRIPT = """import http from 'k6/http';
export default function () { http.get(`${__ENV.TARGET_URL}/api/guests`, { tags: { name: 'guest-list' } }); }
"""


def pytest_configure(config):
    # Audit digests are per installation: the suite's (and its qcluster subprocesses') go to a
    # directory of this run, never to the checkout's audit-digests/ that the demo's log is checked
    # against.
    from django.conf import settings as django_settings

    digests = tempfile.mkdtemp(prefix="perfgate-test-audit-digests-")
    atexit.register(shutil.rmtree, digests, ignore_errors=True)
    os.environ["PERFGATE_AUDIT_DIGEST_DIR"] = digests
    django_settings.PERFGATE_AUDIT_DIGEST_DIR = Path(digests)

    # CI's second pass promises PostgreSQL and Redis: if they are not what the suite runs on,
    # that is a failure of the run, not a reason to skip the tests that need them.
    if os.environ.get("PERFGATE_REQUIRE_SERVICES") == "1":
        from django.conf import settings

        engine = settings.DATABASES["default"]["ENGINE"]
        if "postgresql" not in engine or not settings.REDIS_URL:
            raise pytest.UsageError(
                f"PERFGATE_REQUIRE_SERVICES=1 but the suite runs on {engine} "
                f"with REDIS_URL={settings.REDIS_URL!r}"
            )


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix):
    """On PostgreSQL the audit table refuses UPDATE, DELETE and TRUNCATE; the suite empties tables
    between transactional tests, as a superuser in maintenance mode (see migration 0010). Tests of
    the protection switch it off for their transaction."""
    from django.db import connections

    for settings_dict in (connections["default"].settings_dict,):
        if "postgresql" in settings_dict["ENGINE"]:
            settings_dict.setdefault("OPTIONS", {})["options"] = "-c perfgate.audit_maintenance=on"


@pytest.fixture
def ops(db):
    return get_user_model().objects.create_user("olivia-ops", password="x", is_staff=True)


@pytest.fixture
def second_ops(db):
    return get_user_model().objects.create_user("oscar-ops", password="x", is_staff=True)


@pytest.fixture
def auditor(db):
    return get_user_model().objects.create_user("audrey-auditor", password="x", is_staff=True)


@pytest.fixture
def auditor_client(client, auditor):
    """The admin, logged in as the auditor: in the auditors group, which views everything (every
    project included) and holds no right on any project."""
    from django.contrib.auth.models import Group

    auditor.groups.add(Group.objects.get(name="auditors"))
    client.force_login(auditor)
    return client


@pytest.fixture
def admin_user(db):
    return get_user_model().objects.create_superuser("root", "root@example.invalid", "x")


@pytest.fixture
def actor():
    return Actor("user", "olivia-ops")


@pytest.fixture
def project(db):
    project = Project.objects.create(
        slug="wedsync-web",
        name="WedSync web",
        repository="acme/wedsync",
        allowed_hosts=["127.0.0.1", "*.vercel.app"],
    )
    Environment.objects.create(project=project, name="staging", fail_closed=False)
    Environment.objects.create(
        project=project, name="production", fail_closed=True, require_staging_pass=True, bypass_approvals=2
    )
    Scenario.objects.create(
        project=project,
        name="guest-list",
        script_text=SCRIPT,
        target_url="http://127.0.0.1:8001",
        vus=5,
        duration_seconds=5,
        min_requests=100,
        is_default=True,
    )
    return project


@pytest.fixture
def staging(project):
    return project.environments.get(name="staging")


@pytest.fixture
def production(project):
    return project.environments.get(name="production")


@pytest.fixture
def scenario(project):
    return project.scenarios.get(name="guest-list")


@pytest.fixture
def add_rule(project, scenario):
    """Make a rule of the project's scenario: add_rule("http_req_duration", threshold="p(95)<400")."""

    def make(metric, *, threshold="", aggregation="", environments=(), **fields):
        kind = ThresholdRule.Kind.ABSOLUTE if threshold else ThresholdRule.Kind.RELATIVE
        rule = ThresholdRule(
            project=project,
            scenario=scenario,
            metric=metric,
            kind=kind,
            threshold=threshold,
            aggregation=aggregation,
            **fields,
        )
        rule.full_clean()
        rule.save()
        rule.environments.set(environments)
        return rule

    return make


class Api:
    """A DRF test client that speaks as one API token."""

    def __init__(self, token: str | None):
        from rest_framework.test import APIClient

        self.client = APIClient()
        if token:
            self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    def get(self, path, params=None, **extra):
        return self.client.get(path, params or {}, **extra)

    def post(self, path, body=None, **extra):
        return self.client.post(path, body or {}, format="json", **extra)


def make_token(project, role, **kwargs):
    from integrations.services import token_create

    return token_create(
        project=project, role=role, name=f"{role} test token", actor=Actor("cli", "tests"), **kwargs
    )


@pytest.fixture
def ci_api(project):
    """CI's token: role ci, every environment of the project."""
    return Api(make_token(project, "ci")[1])


@pytest.fixture
def staging_api(project):
    """A CI token limited to staging."""
    return Api(make_token(project, "ci", environments=["staging"])[1])


@pytest.fixture
def ops_api(project, ops):
    return Api(make_token(project, "ops", owner=ops)[1])


@pytest.fixture
def auditor_api(project, auditor):
    return Api(make_token(project, "auditor", owner=auditor)[1])


@pytest.fixture
def other_project_api(db):
    """A CI token of another project, which must not see wedsync-web at all."""
    other = Project.objects.create(slug="other-shop", name="Other shop", allowed_hosts=["127.0.0.1"])
    Environment.objects.create(project=other, name="staging")
    return Api(make_token(other, "ci")[1])


@pytest.fixture(autouse=True)
def _fresh_cache(settings):
    """Rate-limit counters live in the shared cache. The database cache rolls back with each
    test; Redis (CI's second pass) keeps them, so empty it. The per-process caches of verified
    tokens and rate-limit reservations start empty too."""
    from integrations.auth import forget_token
    from perfgate_site.limits import TokenRateThrottle

    forget_token()
    TokenRateThrottle.forget()
    if settings.REDIS_URL:
        from django.core.cache import cache

        cache.clear()
