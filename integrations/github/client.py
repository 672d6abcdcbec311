"""Talking to GitHub's REST API for one project's connection.

``GitHubClient`` authenticates as a GitHub App installation (RS256 JWT → installation token,
cached until shortly before it expires) or with a fine-grained token. Credentials go only to the
connection's API host; anything else (blob storage behind a redirect) is fetched without.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime
from urllib.parse import urlsplit

import jwt
from django.conf import settings

from integrations import http
from integrations.models import GitHubConnection

API_VERSION = "2022-11-28"
# Installation tokens live an hour; one is used until this many seconds before it expires.
TOKEN_MARGIN_SECONDS = 300

_tokens: dict[tuple[str, int], tuple[str, float]] = {}
_tokens_lock = threading.Lock()


def app_jwt(app_id: str, private_key: str, *, now: float | None = None) -> str:
    """The App's own credential: RS256, issued 60 s in the past (clock drift), 10 minutes long."""
    issued = int(now if now is not None else time.time()) - 60
    return jwt.encode(
        {"iat": issued, "exp": issued + 600, "iss": str(app_id)}, private_key, algorithm="RS256"
    )


def forget_installation_tokens() -> None:
    with _tokens_lock:
        _tokens.clear()


class GitHubClient:
    """Calls GitHub's REST API for one project's connection. Credentials go only to the
    connection's API host; anything else (blob storage behind a redirect) is fetched without."""

    def __init__(self, connection: GitHubConnection):
        self.connection = connection
        self.base = connection.base_url
        self.timeout = settings.GITHUB_TIMEOUT_SECONDS

    # credentials

    def _installation_token(self, *, fresh: bool = False) -> str:
        key = (self.base, int(self.connection.installation_id or 0))
        with _tokens_lock:
            cached = _tokens.get(key)
            if cached and not fresh and cached[1] - TOKEN_MARGIN_SECONDS > time.time():
                return cached[0]
        reply = self._send(
            "POST",
            f"/app/installations/{self.connection.installation_id}/access_tokens",
            credential=self._jwt(),
        )
        body = reply.json()
        expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        with _tokens_lock:
            _tokens[key] = (body["token"], expires)
        return body["token"]

    def _jwt(self) -> str:
        connection = self.connection
        if not (connection.app_id and connection.private_key and connection.installation_id):
            raise http.Refused(
                "The GitHub App connection needs an app id, a private key and an installation id."
            )
        return app_jwt(connection.app_id, connection.private_key)

    def _credential(self, *, fresh: bool = False) -> str:
        if self.connection.is_app:
            return self._installation_token(fresh=fresh)
        if not self.connection.token:
            raise http.Refused("The GitHub connection has no token.")
        return self.connection.token

    # requests

    def _url(self, path_or_url: str) -> str:
        if path_or_url.startswith("/"):
            return self.base + path_or_url
        if _origin(path_or_url) != _origin(self.base):
            raise http.Refused(f"Refusing to send GitHub credentials to {_origin(path_or_url)}.")
        return path_or_url

    def _send(self, method: str, path_or_url: str, *, credential: str, json=None) -> http.Reply:
        return http.call(
            method,
            self._url(path_or_url),
            timeout=self.timeout,
            json=json,
            headers={
                "Authorization": f"Bearer {credential}",
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
            },
        )

    def request(self, method: str, path_or_url: str, json=None) -> http.Reply:
        self._url(path_or_url)  # refuse a foreign host before any credential is made
        try:
            return self._send(method, path_or_url, credential=self._credential(), json=json)
        except http.Refused as exc:
            if exc.status != 401 or not self.connection.is_app:
                raise
        # The cached installation token was revoked or expired early: mint another, once.
        return self._send(method, path_or_url, credential=self._credential(fresh=True), json=json)

    def pages(self, path: str):
        """Every item of a paginated list, following the ``Link: rel="next"`` header."""
        url = path + ("&" if "?" in path else "?") + "per_page=100"
        while url:
            reply = self.request("GET", url)
            yield from reply.json()
            url = _next_link(reply.headers.get("Link", ""))

    def whoami(self) -> str:
        """The login perfgate posts as: ``<app-slug>[bot]`` for an App, the token's user otherwise."""
        if self.connection.bot_login:
            return self.connection.bot_login
        if self.connection.is_app:
            login = self._send("GET", "/app", credential=self._jwt()).json()["slug"] + "[bot]"
        else:
            login = self.request("GET", "/user").json()["login"]
        self.connection.bot_login = login
        GitHubConnection.objects.filter(pk=self.connection.pk).update(bot_login=login)
        return login

    # workflows

    def dispatch_workflow(self, repository: str, workflow: str, *, ref: str, inputs: dict) -> int | None:
        """Start the workflow; the run's id when GitHub tells it (``return_run_details``)."""
        path = f"/repos/{repository}/actions/workflows/{workflow}/dispatches"
        try:
            reply = self.request(
                "POST", path, json={"ref": ref, "inputs": inputs, "return_run_details": True}
            )
        except http.Refused as exc:
            if exc.status != 422 or "return_run_details" not in str(exc):
                raise
            # An older GitHub Enterprise Server: dispatch without it, find the run by correlation id.
            reply = self.request("POST", path, json={"ref": ref, "inputs": inputs})
        body = reply.json() if reply.status == 200 else None
        return int(body["workflow_run_id"]) if body and body.get("workflow_run_id") else None

    def find_dispatched_run(self, repository: str, correlation_id: str) -> dict | None:
        """The run whose title carries our correlation id (the workflow's
        ``run-name: perfgate ${{ inputs.correlation_id }}``)."""
        reply = self.request("GET", f"/repos/{repository}/actions/runs?event=workflow_dispatch&per_page=50")
        for run in reply.json().get("workflow_runs", []):
            if correlation_id in (run.get("display_title") or "") or correlation_id in (
                run.get("name") or ""
            ):
                return run
        return None

    def run(self, repository: str, run_id: int) -> dict:
        return self.request("GET", f"/repos/{repository}/actions/runs/{run_id}").json()

    def download_artifact(self, repository: str, run_id: int, name: str, destination) -> int:
        """The run's artifact called ``name`` into ``destination``. GitHub answers the download
        with a redirect to blob storage, which is fetched without the Authorization header."""
        artifacts = self.request("GET", f"/repos/{repository}/actions/runs/{run_id}/artifacts").json()
        artifact = next((a for a in artifacts.get("artifacts", []) if a.get("name") == name), None)
        if artifact is None:
            raise http.Refused(f"Run {run_id} has no artifact named {name!r}.")
        if artifact.get("expired"):
            raise http.Refused(f"The artifact {name!r} of run {run_id} has expired.")
        if artifact.get("size_in_bytes", 0) > settings.PERFGATE_ARTIFACT_MAX_BYTES:
            raise http.Refused(f"The artifact {name!r} is larger than PERFGATE_ARTIFACT_MAX_BYTES.")
        reply = self.request("GET", f"/repos/{repository}/actions/artifacts/{artifact['id']}/zip")
        location = reply.headers.get("Location")
        if reply.status not in (301, 302, 303, 307, 308) or not location:
            raise http.Refused(f"Expected a redirect to the artifact's archive, got HTTP {reply.status}.")
        return http.download(
            location, destination, timeout=self.timeout * 6, max_bytes=settings.PERFGATE_ARTIFACT_MAX_BYTES
        )


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        match = re.match(r'\s*<([^>]+)>\s*;\s*rel="next"', part)
        if match:
            return match.group(1)
    return None
