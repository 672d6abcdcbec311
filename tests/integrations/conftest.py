"""The fake GitHub, a project connected to it, and signed webhook deliveries of GitHub's own
example payloads (``../shared/fixtures/github``)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import uuid
import zipfile
from pathlib import Path

import pytest

from integrations.github.client import forget_installation_tokens
from integrations.models import GitHubConnection
from tests.fake_github import FakeGitHub, generate_private_key_pem

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"
WEBHOOK_SECRET = "It's a Secret to Everybody"
REPOSITORIES = ("acme/wedsync", "Codertocat/Hello-World", "octo-org/octo-repo", "github/hello-world")


@pytest.fixture(scope="session")
def app_key() -> str:
    return generate_private_key_pem()


@pytest.fixture
def fake(app_key):
    with FakeGitHub(repos=REPOSITORIES, private_key_pem=app_key) as server:
        yield server


@pytest.fixture(autouse=True)
def _github_settings(settings):
    settings.GITHUB_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.GITHUB_TIMEOUT_SECONDS = 2
    settings.PERFGATE_BASE_URL = "https://perfgate.example.com"
    settings.PERFGATE_WORKFLOW_POLL_SECONDS = 0.05
    forget_installation_tokens()
    yield
    forget_installation_tokens()


@pytest.fixture
def app_connection(project, fake):
    return GitHubConnection.objects.create(
        project=project,
        auth=GitHubConnection.Auth.APP,
        app_id=str(fake.app_id),
        installation_id=fake.installation_id,
        private_key=fake.private_key_pem,
        api_url=fake.url,
        performance_workflow="performance.yml",
    )


@pytest.fixture
def token_connection(project, fake):
    return GitHubConnection.objects.create(
        project=project, auth=GitHubConnection.Auth.TOKEN, token=fake.pat, api_url=fake.url
    )


def fixture_payload(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_webhook(client, event: str, body: bytes, *, delivery: str | None = None, sign: str | None = "good"):
    headers = {"HTTP_X_GITHUB_EVENT": event, "HTTP_X_GITHUB_DELIVERY": delivery or str(uuid.uuid4())}
    if sign == "good":
        headers["HTTP_X_HUB_SIGNATURE_256"] = signature(body)
    elif sign is not None:
        headers["HTTP_X_HUB_SIGNATURE_256"] = sign
    return client.post("/api/ci-cd/webhooks/github", data=body, content_type="application/json", **headers)


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()
