"""A local fake of the GitHub REST API, strict where the real API is strict.

``FakeGitHub`` serves a small slice of ``api.github.com`` from a ``ThreadingHTTPServer`` on
127.0.0.1 (a free port, a daemon thread), so the GitHub integration can be tested end to end
without the internet. It refuses what GitHub refuses:

Authentication
    Every API request needs a ``User-Agent`` (else 403), an ``X-GitHub-Api-Version`` of
    ``2022-11-28`` if the header is sent (else 400) and ``Authorization: Bearer|token <credential>``
    (missing: 401 "Requires authentication"; unknown: 401 "Bad credentials"). Credentials:

    * the App JWT: RS256 signed by ``private_key_pem``, ``iss`` the app id, ``iat`` not in the
      future (60 s of clock skew allowed), ``exp`` in the future and at most 600 s after ``iat``.
      It may only call ``GET /app`` and ``POST /app/installations/{id}/access_tokens`` (403
      elsewhere); those two endpoints refuse anything but a JWT (401).
    * installation tokens (``ghs_...``), minted with the JWT, valid one hour (``expire_tokens()``
      ends them early); they act as ``<app_slug>[bot]`` (a Bot) and cannot call ``GET /user``.
    * the fine-grained personal access token ``pat`` acting as ``pat_login`` (a User); it cannot
      create or update check runs nor review deployment protection rules (403).

    Repositories other than ``repos`` answer 404.

Validation
    Statuses (40-hex sha, state, description <= 140, http(s) target_url, 1000 per sha and
    context), check runs (name, head_sha, status/conclusion enums, conclusion required when
    completed, output title and summary, summary and text <= 65535, at most 50 annotations per
    request, each complete), issue comments (body <= 65536, only the author edits), deployment
    protection reviews (approved|rejected, comment <= 1024, one review per run and environment),
    workflow dispatches (ref, at most 25 scalar inputs; for a workflow declared with
    ``declare_workflow``, only its inputs and every required one). Errors have GitHub's shape: 422
    "Validation Failed" with ``errors``, 400 "Problems parsing JSON".

Behaviour
    Issue comments paginate with GitHub's ``Link`` header; workflow dispatches create runs
    (``return_run_details`` answers 200 with the run id, else 204); artifact downloads redirect
    (302) to ``/blob/<key>?sig=...``, a storage URL on the same host that answers 400 when an
    ``Authorization`` header comes along, as Azure blob storage does.

Failure injection (``fail_next``, ``outage``, ``rate_limit``, ``slow``) applies to API requests,
never to ``/blob``. Every request, failed or not, is appended to ``requests`` with the status it got;
refused requests change no state.

Speed: generating the RSA key costs ~60 ms, so ``FakeGitHub(private_key_pem=...)`` reuses one (see
``generate_private_key_pem``); loading a PEM costs ~40 ms, so sign JWTs with ``load_private_key(pem)``.

Deviations: request bodies must come with ``Content-Length`` (no chunked uploads); 204 responses
carry no ``Content-Length`` (RFC 9110 forbids it), every other response does.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.fake_http import KeepAliveHandler, LoopbackFake, QuietServer

API_VERSION = "2022-11-28"
DOCS = "https://docs.github.com/rest"
HEX40 = re.compile(r"[0-9a-fA-F]{40}")
JWT_SKEW = 60
JWT_MAX_LIFETIME = 600
TOKEN_LIFETIME = 3600
BLOB_LIFETIME = 60

STATUS_STATES = ("error", "failure", "pending", "success")
CHECK_STATUSES = ("queued", "in_progress", "completed", "waiting", "requested", "pending")
CHECK_CONCLUSIONS = (
    "action_required",
    "cancelled",
    "failure",
    "neutral",
    "success",
    "skipped",
    "stale",
    "timed_out",
)
ANNOTATION_LEVELS = ("notice", "warning", "failure")
INSTALLATION_PERMISSIONS = {
    "actions": "write",
    "checks": "write",
    "deployments": "write",
    "issues": "write",
    "metadata": "read",
    "pull_requests": "write",
    "statuses": "write",
}

REPO = r"/repos/(?P<owner>[^/]+)/(?P<name>[^/]+)"
# (method, path pattern, handler method name); a path matched with another method is a 404.
ROUTES = [
    ("GET", r"/app", "get_app"),
    ("POST", r"/app/installations/(?P<installation_id>\d+)/access_tokens", "create_token"),
    ("GET", r"/user", "get_user"),
    ("POST", REPO + r"/statuses/(?P<sha>[^/]+)", "create_status"),
    ("POST", REPO + r"/check-runs", "create_check_run"),
    ("PATCH", REPO + r"/check-runs/(?P<check_run_id>\d+)", "update_check_run"),
    ("GET", REPO + r"/issues/(?P<number>\d+)/comments", "list_comments"),
    ("POST", REPO + r"/issues/(?P<number>\d+)/comments", "create_comment"),
    ("PATCH", REPO + r"/issues/comments/(?P<comment_id>\d+)", "update_comment"),
    ("POST", REPO + r"/actions/runs/(?P<run_id>\d+)/deployment_protection_rule", "review_protection"),
    ("POST", REPO + r"/actions/workflows/(?P<workflow>[^/]+)/dispatches", "dispatch"),
    ("GET", REPO + r"/actions/runs", "list_runs"),
    ("GET", REPO + r"/actions/runs/(?P<run_id>\d+)", "get_run"),
    ("GET", REPO + r"/actions/runs/(?P<run_id>\d+)/artifacts", "list_artifacts"),
    ("GET", REPO + r"/actions/artifacts/(?P<artifact_id>\d+)/zip", "download_artifact"),
]
APP_ROUTES = {"get_app", "create_token"}


def generate_private_key_pem() -> str:
    """A new RSA 2048 private key, PEM (PKCS8), like the one GitHub gives an App."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@functools.cache
def load_private_key(pem: str) -> rsa.RSAPrivateKey:
    """The key object for ``pem``, loaded once: loading a PEM checks the RSA key, ~40 ms each time."""
    return serialization.load_pem_private_key(pem.encode(), password=None)


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class Headers(dict):
    """Request headers, looked up case-insensitively (keys are stored lower-case)."""

    def __init__(self, items=()):
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes
    json: Any
    status: int = 0
    at: float = field(default_factory=time.time)  # when it arrived (epoch seconds)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-encodable, bytes, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json; charset=utf-8"


class Refused(Exception):
    """Raised by endpoint code to answer an error; the request changes no state."""

    def __init__(self, status: int, message: str, errors: list[dict] | None = None):
        super().__init__(message)
        self.response = Response(status, {"message": message, "documentation_url": DOCS})
        if errors is not None:
            self.response.body["errors"] = errors


def invalid(resource: str, field_name: str, code: str, message: str) -> Refused:
    error = {"resource": resource, "field": field_name, "code": code, "message": message}
    return Refused(422, "Validation Failed", [error])


@dataclass
class Actor:
    kind: str  # "jwt", "installation" or "pat"
    login: str = ""
    type: str = ""
    id: int = 0

    def user(self) -> dict:
        return {"login": self.login, "type": self.type, "id": self.id}


class FakeGitHub(LoopbackFake):
    def __init__(
        self,
        *,
        app_id: int = 4242,
        app_slug: str = "perfgate-test",
        installation_id: int = 777,
        repos=("acme/wedsync",),
        pat_login: str = "octo-dev",
        private_key_pem: str | None = None,
    ):
        """``private_key_pem`` reuses an RSA key (generating one costs ~60 ms); by default each
        fake generates its own."""
        self.app_id = app_id
        self.app_slug = app_slug
        self.installation_id = installation_id
        self.repos = {repo.lower(): repo for repo in repos}
        self.pat_login = pat_login
        if private_key_pem is None:
            private_key_pem = generate_private_key_pem()
        self.private_key_pem = private_key_pem
        self._public_key = load_private_key(private_key_pem).public_key()
        self.pat = "github_pat_" + secrets.token_urlsafe(60)
        self.url = ""

        self.requests: list[Recorded] = []
        self.statuses: dict[tuple[str, str], list[dict]] = {}
        self.check_runs: dict[int, dict] = {}
        self.comments: dict[int, dict] = {}
        self.protection_reviews: list[dict] = []
        self.dispatches: list[dict] = []
        self.runs: dict[int, dict] = {}
        self.artifacts: dict[int, dict] = {}  # id -> {id, name, run_id, repo, data, created_at}
        self.workflows: dict[str, int] = {"performance.yml": 161335}  # file name -> workflow id
        # file name -> {input name: required}, for workflows whose inputs are declared
        self.workflow_inputs: dict[str, dict[str, bool]] = {}
        self.tokens_issued = 0
        # False: answer return_run_details like an older GitHub Enterprise Server (422).
        self.run_details_supported = True

        self._tokens: dict[str, float] = {}  # installation token -> expiry (epoch seconds)
        self._blobs: dict[str, tuple[int, str, float]] = {}  # key -> (artifact id, sig, expiry)
        self._ids = itertools.count(1001)
        self._lock = threading.RLock()
        self._failures: list[tuple[int, int | None]] = []
        self._outage: int | None = None
        self._rate_limited_until = 0.0
        self._delay: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeGitHub:
        return self._serve(_Server, _Handler, "fake-github")

    # -- test setup -----------------------------------------------------------------------------

    def add_comment(self, repo, issue_number, body, *, login="someone", type="User") -> int:  # noqa: A002
        with self._lock:
            return self._new_comment(
                self._repo(repo), int(issue_number), body, {"login": login, "type": type}
            )

    def add_run(
        self,
        repo,
        *,
        head_sha,
        path=".github/workflows/performance.yml",
        name="Performance",
        display_title=None,
        status="completed",
        conclusion="success",
        event="workflow_dispatch",
        head_branch="main",
    ) -> int:
        with self._lock:
            return self._new_run(
                self._repo(repo),
                head_sha=head_sha,
                head_branch=head_branch,
                path=path,
                name=name,
                display_title=display_title or name,
                event=event,
                status=status,
                conclusion=conclusion if status == "completed" else None,
                inputs={},
            )

    def declare_workflow(self, file_name: str, inputs: dict[str, bool]) -> None:
        """A workflow whose ``on.workflow_dispatch.inputs`` are ``inputs`` (name → required): a
        dispatch with another input, or without a required one, is refused as GitHub does."""
        with self._lock:
            self.workflows.setdefault(file_name, 160000 + len(self.workflows))
            self.workflow_inputs[file_name] = dict(inputs)

    def complete_run(self, run_id, *, conclusion="success", artifacts: dict[str, bytes] | None = None):
        with self._lock:
            run = self.runs[run_id]
            run.update(status="completed", conclusion=conclusion, updated_at=iso(time.time()))
            for name, data in (artifacts or {}).items():
                artifact_id = next(self._ids)
                self.artifacts[artifact_id] = {
                    "id": artifact_id,
                    "name": name,
                    "run_id": run_id,
                    "repo": run["repo"],
                    "data": bytes(data),
                    "created_at": iso(time.time()),
                }

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self._tokens:
                self._tokens[token] = time.time() - 1

    # -- failure injection ----------------------------------------------------------------------

    def fail_next(self, count: int, *, status: int = 503, retry_after: int | None = None) -> None:
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def outage(self, status: int = 503) -> None:
        with self._lock:
            self._outage = status

    def recover(self) -> None:
        """End an outage; also drops pending ``fail_next`` failures and any rate limiting."""
        with self._lock:
            self._outage = None
            self._failures.clear()
            self._rate_limited_until = 0.0

    def rate_limit(self, reset_in_seconds: float) -> None:
        with self._lock:
            self._rate_limited_until = time.time() + reset_in_seconds

    def slow(self, seconds: float | None) -> None:
        with self._lock:
            self._delay = seconds

    # -- request handling -----------------------------------------------------------------------

    def handle(self, recorded: Recorded) -> Response:
        if recorded.path.startswith("/blob/"):
            with self._lock:
                response = self._blob(recorded)
                recorded.status = response.status
                self.requests.append(recorded)
            return response
        with self._lock:
            delay = self._delay
        if delay:
            time.sleep(delay)
        with self._lock:
            response = self._injected_failure()
            if response is None:
                try:
                    response = self._api(recorded)
                except Refused as refused:
                    response = refused.response
            recorded.status = response.status
            self.requests.append(recorded)
        return response

    def _injected_failure(self) -> Response | None:
        now = time.time()
        if now < self._rate_limited_until:
            message = f"API rate limit exceeded for installation ID {self.installation_id}."
            headers = {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-used": "5000",
                "x-ratelimit-reset": str(math.ceil(self._rate_limited_until)),
                "x-ratelimit-resource": "core",
            }
            return Response(403, {"message": message, "documentation_url": DOCS}, headers)
        if self._outage is not None:
            return Response(
                self._outage, {"message": HTTPStatus(self._outage).phrase, "documentation_url": DOCS}
            )
        if self._failures:
            status, retry_after = self._failures.pop(0)
            if status in (403, 429):
                message = (
                    "You have exceeded a secondary rate limit. "
                    "Please wait a few minutes before you try again."
                )
            else:
                message = HTTPStatus(status).phrase
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            return Response(status, {"message": message, "documentation_url": DOCS}, headers)
        return None

    def _api(self, request: Recorded) -> Response:
        if not request.headers.get("user-agent"):
            raise Refused(
                403,
                "Request forbidden by administrative rules. "
                "Please make sure your request has a User-Agent header (https://docs.github.com/en/rest).",
            )
        version = request.headers.get("x-github-api-version")
        if version is not None and version != API_VERSION:
            raise Refused(400, f"API version '{version}' is not supported.")
        actor = self._authenticate(request.headers.get("authorization"))

        handler_name, params = _route(request.method, request.path)
        if handler_name in APP_ROUTES and actor.kind != "jwt":
            raise Refused(401, "A JSON web token could not be decoded")
        if handler_name not in APP_ROUTES and actor.kind == "jwt":
            raise Refused(403, "Resource not accessible by integration")
        if "owner" in params:
            params["repo"] = self._repo(f"{params.pop('owner')}/{params.pop('name')}")
        return getattr(self, "_" + handler_name)(request, actor, **params)

    def _repo(self, full_name: str) -> str:
        try:
            return self.repos[full_name.lower()]
        except KeyError:
            raise Refused(404, "Not Found") from None

    def _authenticate(self, authorization: str | None) -> Actor:
        if not authorization:
            raise Refused(401, "Requires authentication")
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() not in ("bearer", "token") or not credential:
            raise Refused(401, "Bad credentials")
        if credential == self.pat:
            return Actor("pat", self.pat_login, "User", 583231)
        if credential.startswith("ghs_"):
            expires = self._tokens.get(credential)
            if expires is None or expires <= time.time():
                raise Refused(401, "Bad credentials")
            return Actor("installation", f"{self.app_slug}[bot]", "Bot", 41898282)
        if credential.count(".") == 2:
            self._verify_jwt(credential)
            return Actor("jwt", self.app_slug, "Bot", self.app_id)
        raise Refused(401, "Bad credentials")

    def _verify_jwt(self, token: str) -> None:
        undecodable = Refused(401, "A JSON web token could not be decoded")
        try:  # the signature only: GitHub's own messages for the claims follow
            claims = jwt.decode(
                token,
                self._public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_iss": False,
                    "verify_aud": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidTokenError:
            raise undecodable from None
        iat, exp, iss = claims.get("iat"), claims.get("exp"), claims.get("iss")
        now = time.time()
        if not _is_number(iat) or iat > now + JWT_SKEW:
            raise Refused(
                401,
                "'Issued at' claim ('iat') must be an Integer representing the time that the assertion "
                "was issued.",
            )
        if not _is_number(exp) or exp <= now:
            raise Refused(
                401,
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at "
                "which the assertion expires.",
            )
        if exp - iat > JWT_MAX_LIFETIME:
            raise Refused(401, "'Expiration time' claim ('exp') is too far in the future.")
        if isinstance(iss, bool) or not isinstance(iss, int | str) or str(iss) != str(self.app_id):
            raise Refused(401, "Integration not found.")

    # -- endpoints: app and user ----------------------------------------------------------------

    def _get_app(self, request, actor):
        return Response(
            200,
            {
                "id": self.app_id,
                "slug": self.app_slug,
                "name": self.app_slug.replace("-", " ").title(),
                "html_url": f"https://github.com/apps/{self.app_slug}",
                "permissions": INSTALLATION_PERMISSIONS,
            },
        )

    def _create_token(self, request, actor, installation_id):
        if int(installation_id) != self.installation_id:
            raise Refused(404, "Not Found")
        body = _json_object(request)
        token = "ghs_" + secrets.token_urlsafe(27)
        expires = time.time() + TOKEN_LIFETIME
        self._tokens[token] = expires
        self.tokens_issued += 1
        return Response(
            201,
            {
                "token": token,
                "expires_at": iso(expires),
                "permissions": body.get("permissions") or INSTALLATION_PERMISSIONS,
                "repository_selection": "selected",
            },
        )

    def _get_user(self, request, actor):
        if actor.kind != "pat":
            raise Refused(403, "Resource not accessible by integration")
        return Response(
            200, {**actor.user(), "html_url": f"https://github.com/{actor.login}", "name": actor.login}
        )

    # -- endpoints: commit statuses and check runs ----------------------------------------------

    def _create_status(self, request, actor, repo, sha):
        body = _json_object(request)
        if not HEX40.fullmatch(sha):
            raise invalid("Status", "sha", "invalid", f"No commit found for SHA: {sha}")
        state = body.get("state")
        if state is None:
            raise invalid("Status", "state", "missing_field", "state is missing")
        if state not in STATUS_STATES:
            raise invalid("Status", "state", "invalid", f"state must be one of {', '.join(STATUS_STATES)}")
        description = body.get("description")
        if description is not None:
            if not isinstance(description, str):
                raise invalid("Status", "description", "invalid", "description must be a string")
            if len(description) > 140:
                raise invalid(
                    "Status", "description", "custom", "description is too long (maximum is 140 characters)"
                )
        target_url = body.get("target_url")
        if target_url is not None and not _is_http_url(target_url):
            raise invalid("Status", "target_url", "invalid", "target_url must be an http(s) URL")
        context = body.get("context", "default")
        if not isinstance(context, str) or not context:
            raise invalid("Status", "context", "invalid", "context must be a non-empty string")
        created = self.statuses.setdefault((repo, sha.lower()), [])
        if sum(1 for status in created if status["context"] == context) >= 1000:
            raise invalid(
                "Status",
                "context",
                "custom",
                "This SHA and context has reached the maximum number of statuses.",
            )
        status_id = next(self._ids)
        now = iso(time.time())
        status = {
            "id": status_id,
            "url": f"{self.url}/repos/{repo}/statuses/{sha.lower()}",
            "state": state,
            "description": description,
            "target_url": target_url,
            "context": context,
            "created_at": now,
            "updated_at": now,
            "creator": actor.user(),
        }
        created.append(status)
        return Response(201, status)

    def _create_check_run(self, request, actor, repo):
        self._check_app_only(actor)
        body = _json_object(request)
        for name in ("name", "head_sha"):
            if not body.get(name):
                raise invalid("CheckRun", name, "missing_field", f"{name} is missing")
            if not isinstance(body[name], str):
                raise invalid("CheckRun", name, "invalid", f"{name} must be a string")
        if not HEX40.fullmatch(body["head_sha"]):
            raise invalid("CheckRun", "head_sha", "invalid", f"No commit found for SHA: {body['head_sha']}")
        status, conclusion = self._check_status(body)
        output, annotations = self._check_output(body)
        self._check_links(body)
        check_run_id = next(self._ids)
        now = iso(time.time())
        check_run = {
            "id": check_run_id,
            "repo": repo,
            "name": body["name"],
            "head_sha": body["head_sha"].lower(),
            "status": status,
            "conclusion": conclusion,
            "output": output or {"title": None, "summary": None, "text": None},
            "annotations": annotations,
            "external_id": body.get("external_id", ""),
            "details_url": body.get("details_url"),
            "started_at": body.get("started_at", now),
            "completed_at": body.get("completed_at", now) if status == "completed" else None,
            "history": [body],
        }
        self.check_runs[check_run_id] = check_run
        return Response(201, self._check_run_json(check_run))

    def _update_check_run(self, request, actor, repo, check_run_id):
        self._check_app_only(actor)
        body = _json_object(request)
        check_run = self.check_runs.get(int(check_run_id))
        if check_run is None or check_run["repo"] != repo:
            raise Refused(404, "Not Found")
        if "name" in body and (not isinstance(body["name"], str) or not body["name"]):
            raise invalid("CheckRun", "name", "invalid", "name must be a non-empty string")
        status, conclusion = self._check_status(body, check_run["status"], check_run["conclusion"])
        output, annotations = self._check_output(body)
        self._check_links(body)
        check_run.update(status=status, conclusion=conclusion)
        for key in ("name", "external_id", "details_url", "started_at", "completed_at"):
            if key in body:
                check_run[key] = body[key]
        if status == "completed" and check_run["completed_at"] is None:
            check_run["completed_at"] = iso(time.time())
        if output:
            check_run["output"] = output
        check_run["annotations"].extend(annotations)
        check_run["history"].append(body)
        return Response(200, self._check_run_json(check_run))

    def _check_app_only(self, actor):
        if actor.kind != "installation":
            raise Refused(403, "You must authenticate via a GitHub App.")

    def _check_status(self, body, current_status="queued", current_conclusion=None):
        status = body.get("status", current_status)
        if status not in CHECK_STATUSES:
            raise invalid(
                "CheckRun", "status", "invalid", f"status must be one of {', '.join(CHECK_STATUSES)}"
            )
        conclusion = body.get("conclusion")
        if conclusion is not None:
            if conclusion not in CHECK_CONCLUSIONS:
                raise invalid(
                    "CheckRun",
                    "conclusion",
                    "invalid",
                    f"conclusion must be one of {', '.join(CHECK_CONCLUSIONS)}",
                )
            return "completed", conclusion  # providing a conclusion completes the run
        if status == "completed":
            if current_conclusion is None:
                raise invalid(
                    "CheckRun",
                    "conclusion",
                    "missing_field",
                    "conclusion is required when status is completed",
                )
            return status, current_conclusion
        return status, None

    def _check_output(self, body) -> tuple[dict | None, list[dict]]:
        if "output" not in body:
            return None, []
        output = body["output"]
        if not isinstance(output, dict):
            raise invalid("CheckRun", "output", "invalid", "output must be an object")
        for name in ("title", "summary"):
            if not isinstance(output.get(name), str) or not output[name]:
                raise invalid("CheckRun", f"output.{name}", "missing_field", f"output.{name} is missing")
        for name in ("summary", "text"):
            value = output.get(name)
            if value is not None and not isinstance(value, str):
                raise invalid("CheckRun", f"output.{name}", "invalid", f"output.{name} must be a string")
            if value is not None and len(value) > 65535:
                raise invalid(
                    "CheckRun",
                    f"output.{name}",
                    "custom",
                    f"output.{name} is too long (maximum is 65535 characters)",
                )
        annotations = output.get("annotations", [])
        if not isinstance(annotations, list):
            raise invalid("CheckRun", "output.annotations", "invalid", "output.annotations must be an array")
        if len(annotations) > 50:
            raise invalid(
                "CheckRun",
                "output.annotations",
                "custom",
                "Only 50 annotations are allowed per request; update the check run to add more.",
            )
        for index, annotation in enumerate(annotations):
            where = f"output.annotations[{index}]"
            if not isinstance(annotation, dict):
                raise invalid("CheckRun", where, "invalid", f"{where} must be an object")
            for name in ("path", "message"):
                if not isinstance(annotation.get(name), str) or not annotation[name]:
                    raise invalid(
                        "CheckRun", f"{where}.{name}", "missing_field", f"{where}.{name} is missing"
                    )
            for name in ("start_line", "end_line"):
                value = annotation.get(name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise invalid(
                        "CheckRun",
                        f"{where}.{name}",
                        "missing_field",
                        f"{where}.{name} must be a positive integer",
                    )
            if annotation["end_line"] < annotation["start_line"]:
                raise invalid("CheckRun", f"{where}.end_line", "invalid", "end_line is before start_line")
            if annotation.get("annotation_level") not in ANNOTATION_LEVELS:
                raise invalid(
                    "CheckRun",
                    f"{where}.annotation_level",
                    "invalid",
                    f"annotation_level must be one of {', '.join(ANNOTATION_LEVELS)}",
                )
        kept = {name: output.get(name) for name in ("title", "summary", "text")}
        return kept, [dict(annotation) for annotation in annotations]

    def _check_links(self, body):
        details_url = body.get("details_url")
        if details_url is not None and not _is_http_url(details_url):
            raise invalid("CheckRun", "details_url", "invalid", "details_url must be an http(s) URL")
        external_id = body.get("external_id")
        if external_id is not None and not isinstance(external_id, str):
            raise invalid("CheckRun", "external_id", "invalid", "external_id must be a string")

    def _check_run_json(self, check_run) -> dict:
        repo, check_run_id = check_run["repo"], check_run["id"]
        return {
            "id": check_run_id,
            "name": check_run["name"],
            "head_sha": check_run["head_sha"],
            "status": check_run["status"],
            "conclusion": check_run["conclusion"],
            "external_id": check_run["external_id"],
            "details_url": check_run["details_url"],
            "html_url": f"https://github.com/{repo}/runs/{check_run_id}",
            "url": f"{self.url}/repos/{repo}/check-runs/{check_run_id}",
            "started_at": check_run["started_at"],
            "completed_at": check_run["completed_at"],
            "output": {
                **check_run["output"],
                "annotations_count": len(check_run["annotations"]),
                "annotations_url": f"{self.url}/repos/{repo}/check-runs/{check_run_id}/annotations",
            },
            "app": {"id": self.app_id, "slug": self.app_slug},
        }

    # -- endpoints: issue comments --------------------------------------------------------------

    def _list_comments(self, request, actor, repo, number):
        per_page = _int_param(request.query, "per_page", 30, 1, 100)
        page = _int_param(request.query, "page", 1, 1, None)
        comments = [
            comment
            for comment in self.comments.values()
            if comment["repo"] == repo and comment["issue_number"] == int(number)
        ]
        last = max(1, math.ceil(len(comments) / per_page))
        shown = comments[(page - 1) * per_page : page * per_page]
        base = f"{self.url}{request.path}?per_page={per_page}&page="
        links = []
        if page > 1:
            links += [f'<{base}{page - 1}>; rel="prev"']
        if page < last:
            links += [f'<{base}{page + 1}>; rel="next"', f'<{base}{last}>; rel="last"']
        if page > 1:
            links += [f'<{base}1>; rel="first"']
        headers = {"link": ", ".join(links)} if links else {}
        return Response(200, [self._comment_json(comment) for comment in shown], headers)

    def _create_comment(self, request, actor, repo, number):
        body = self._comment_body(_json_object(request))
        comment_id = self._new_comment(repo, int(number), body, {"login": actor.login, "type": actor.type})
        return Response(201, self._comment_json(self.comments[comment_id]))

    def _update_comment(self, request, actor, repo, comment_id):
        body = self._comment_body(_json_object(request))
        comment = self.comments.get(int(comment_id))
        if comment is None or comment["repo"] != repo:
            raise Refused(404, "Not Found")
        if comment["user"] != {"login": actor.login, "type": actor.type}:
            raise Refused(403, "Resource not accessible by integration")
        comment.update(body=body, updated_at=iso(time.time()))
        comment["history"].append(body)
        return Response(200, self._comment_json(comment))

    def _comment_body(self, body) -> str:
        text = body.get("body")
        if text is None or text == "":
            raise invalid("IssueComment", "body", "missing_field", "body is missing")
        if not isinstance(text, str):
            raise invalid("IssueComment", "body", "invalid", "body must be a string")
        if len(text) > 65536:
            raise invalid("IssueComment", "body", "custom", "body is too long (maximum is 65536 characters)")
        return text

    def _new_comment(self, repo, issue_number, body, user) -> int:
        comment_id = next(self._ids)
        now = iso(time.time())
        self.comments[comment_id] = {
            "id": comment_id,
            "repo": repo,
            "issue_number": issue_number,
            "body": body,
            "user": user,
            "created_at": now,
            "updated_at": now,
            "history": [body],
        }
        return comment_id

    def _comment_json(self, comment) -> dict:
        repo, comment_id = comment["repo"], comment["id"]
        return {
            "id": comment_id,
            "body": comment["body"],
            "user": dict(comment["user"]),
            "html_url": f"https://github.com/{repo}/pull/{comment['issue_number']}#issuecomment-{comment_id}",
            "url": f"{self.url}/repos/{repo}/issues/comments/{comment_id}",
            "created_at": comment["created_at"],
            "updated_at": comment["updated_at"],
        }

    # -- endpoints: deployment protection rules -------------------------------------------------

    def _review_protection(self, request, actor, repo, run_id):
        self._check_app_only(actor)
        body = _json_object(request)
        environment = body.get("environment_name")
        if not environment:
            raise invalid("DeploymentProtectionRule", "environment_name", "missing_field", "is missing")
        if not isinstance(environment, str):
            raise invalid("DeploymentProtectionRule", "environment_name", "invalid", "must be a string")
        state = body.get("state")
        if state is None:
            raise invalid("DeploymentProtectionRule", "state", "missing_field", "state is missing")
        if state not in ("approved", "rejected"):
            raise invalid(
                "DeploymentProtectionRule", "state", "invalid", "state must be approved or rejected"
            )
        comment = body.get("comment")
        if comment is not None and (not isinstance(comment, str) or len(comment) > 1024):
            raise invalid(
                "DeploymentProtectionRule",
                "comment",
                "invalid",
                "comment must be a string of at most 1024 characters",
            )
        reviewed = {(r["repo"], r["run_id"], r["environment_name"]) for r in self.protection_reviews}
        if (repo, int(run_id), environment) in reviewed:
            raise invalid(
                "DeploymentProtectionRule",
                "environment_name",
                "custom",
                f"The deployment to {environment} has already been reviewed.",
            )
        self.protection_reviews.append(
            {
                "repo": repo,
                "run_id": int(run_id),
                "environment_name": environment,
                "state": state,
                "comment": comment,
            }
        )
        return Response(204)

    # -- endpoints: workflow runs and artifacts -------------------------------------------------

    def _dispatch(self, request, actor, repo, workflow):
        body = _json_object(request)
        if workflow.isdigit():
            file_name = next(
                (name for name, number in self.workflows.items() if number == int(workflow)), None
            )
            if file_name is None:
                raise Refused(404, "Not Found")
        elif re.fullmatch(r"[\w.-]+\.ya?ml", workflow):
            file_name = workflow
            self.workflows.setdefault(file_name, 160000 + len(self.workflows))
        else:
            raise Refused(404, "Not Found")
        ref = body.get("ref")
        if not ref:
            raise invalid("WorkflowDispatch", "ref", "missing_field", "ref is missing")
        if not isinstance(ref, str):
            raise invalid("WorkflowDispatch", "ref", "invalid", "ref must be a string")
        inputs = body.get("inputs", {})
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            raise invalid("WorkflowDispatch", "inputs", "invalid", "inputs must be an object")
        if len(inputs) > 25:
            raise invalid(
                "WorkflowDispatch", "inputs", "custom", "inputs are too large: at most 25 properties"
            )
        for key, value in inputs.items():
            if not isinstance(value, str | int | float | bool):
                raise invalid("WorkflowDispatch", f"inputs.{key}", "invalid", "input values must be scalars")
        declared = self.workflow_inputs.get(file_name)
        if declared is not None:
            unexpected = sorted(set(inputs) - set(declared))
            if unexpected:
                raise Refused(422, f"Unexpected inputs provided: {json.dumps(unexpected)}")
            missing = [name for name, required in declared.items() if required and name not in inputs]
            if missing:
                raise Refused(422, f"Required input '{missing[0]}' not provided")
        if "return_run_details" in body and not self.run_details_supported:
            # Like a GitHub Enterprise Server that predates the parameter.
            raise Refused(422, 'Invalid request.\n\n"return_run_details" is not a permitted key.')
        details = body.get("return_run_details", False)
        if not isinstance(details, bool):
            raise invalid("WorkflowDispatch", "return_run_details", "invalid", "must be a boolean")
        if HEX40.fullmatch(ref):
            head_sha, head_branch = ref.lower(), None
        else:
            head_sha = hashlib.sha1(ref.encode(), usedforsecurity=False).hexdigest()
            head_branch = ref.removeprefix("refs/heads/")
        name = "Performance"
        display_title = f"perfgate {inputs['correlation_id']}" if "correlation_id" in inputs else name
        run_id = self._new_run(
            repo,
            head_sha=head_sha,
            head_branch=head_branch,
            path=f".github/workflows/{file_name}",
            name=name,
            display_title=display_title,
            event="workflow_dispatch",
            status="queued",
            conclusion=None,
            inputs=dict(inputs),
        )
        self.dispatches.append(
            {"repo": repo, "workflow": workflow, "ref": ref, "inputs": dict(inputs), "run_id": run_id}
        )
        if not details:
            return Response(204)
        run = self._run_json(self.runs[run_id])
        return Response(200, {"workflow_run_id": run_id, "run_url": run["url"], "html_url": run["html_url"]})

    def _new_run(
        self, repo, *, head_sha, head_branch, path, name, display_title, event, status, conclusion, inputs
    ):
        run_id = next(self._ids)
        now = iso(time.time())
        self.runs[run_id] = {
            "id": run_id,
            "repo": repo,
            "name": name,
            "display_title": display_title,
            "path": path,
            "head_sha": head_sha,
            "head_branch": head_branch,
            "event": event,
            "status": status,
            "conclusion": conclusion,
            "inputs": inputs,
            "created_at": now,
            "updated_at": now,
        }
        return run_id

    def _run_json(self, run) -> dict:
        public = {key: value for key, value in run.items() if key not in ("repo", "inputs")}
        api = f"{self.url}/repos/{run['repo']}/actions/runs/{run['id']}"
        public.update(
            url=api,
            html_url=f"https://github.com/{run['repo']}/actions/runs/{run['id']}",
            artifacts_url=f"{api}/artifacts",
            run_attempt=1,
        )
        return public

    def _find_run(self, repo, run_id) -> dict:
        run = self.runs.get(int(run_id))
        if run is None or run["repo"] != repo:
            raise Refused(404, "Not Found")
        return run

    def _get_run(self, request, actor, repo, run_id):
        return Response(200, self._run_json(self._find_run(repo, run_id)))

    def _list_runs(self, request, actor, repo):
        query = request.query
        per_page = _int_param(query, "per_page", 30, 1, 100)
        page = _int_param(query, "page", 1, 1, None)
        runs = [run for run in self.runs.values() if run["repo"] == repo]
        if query.get("event"):
            runs = [run for run in runs if run["event"] == query["event"]]
        if query.get("head_sha"):
            runs = [run for run in runs if run["head_sha"] == query["head_sha"].lower()]
        if query.get("status"):  # GitHub's status filter takes a status or a conclusion
            runs = [run for run in runs if query["status"] in (run["status"], run["conclusion"])]
        runs.sort(key=lambda run: run["id"], reverse=True)
        shown = runs[(page - 1) * per_page : page * per_page]
        return Response(
            200, {"total_count": len(runs), "workflow_runs": [self._run_json(run) for run in shown]}
        )

    def _list_artifacts(self, request, actor, repo, run_id):
        run = self._find_run(repo, run_id)
        artifacts = [self._artifact_json(a) for a in self.artifacts.values() if a["run_id"] == run["id"]]
        return Response(200, {"total_count": len(artifacts), "artifacts": artifacts})

    def _artifact_json(self, artifact) -> dict:
        api = f"{self.url}/repos/{artifact['repo']}/actions/artifacts/{artifact['id']}"
        return {
            "id": artifact["id"],
            "name": artifact["name"],
            "size_in_bytes": len(artifact["data"]),
            "url": api,
            "archive_download_url": f"{api}/zip",
            "expired": False,
            "created_at": artifact["created_at"],
            "workflow_run": {"id": artifact["run_id"], "head_sha": self.runs[artifact["run_id"]]["head_sha"]},
        }

    def _download_artifact(self, request, actor, repo, artifact_id):
        artifact = self.artifacts.get(int(artifact_id))
        if artifact is None or artifact["repo"] != repo:
            raise Refused(404, "Not Found")
        key, sig = secrets.token_urlsafe(16), secrets.token_urlsafe(24)
        self._blobs[key] = (artifact["id"], sig, time.time() + BLOB_LIFETIME)
        return Response(302, None, {"location": f"{self.url}/blob/{key}?sig={sig}"})

    # -- blob storage (not the API) -------------------------------------------------------------

    def _blob(self, request: Recorded) -> Response:
        def error(status, code, message):
            body = (
                '<?xml version="1.0" encoding="utf-8"?>'
                f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ).encode()
            return Response(status, body, content_type="application/xml")

        if request.method != "GET":
            return error(405, "UnsupportedHttpVerb", "The resource doesn't support specified Http Verb.")
        if "authorization" in request.headers:
            return error(
                400,
                "InvalidAuthenticationInfo",
                "Authentication information is not given in the correct format. "
                "Check the value of Authorization header.",
            )
        entry = self._blobs.get(request.path.removeprefix("/blob/"))
        if entry is None:
            return error(404, "BlobNotFound", "The specified blob does not exist.")
        artifact_id, sig, expires = entry
        if request.query.get("sig") != sig or time.time() > expires:
            return error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of Authorization "
                "header is formed correctly including the signature.",
            )
        return Response(200, self.artifacts[artifact_id]["data"], content_type="application/zip")


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    for route_method, pattern, handler_name in ROUTES:
        match = re.fullmatch(pattern, path)
        if match and route_method == method:
            return handler_name, match.groupdict()
    raise Refused(404, "Not Found")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_http_url(value) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _int_param(query, name, default, minimum, maximum) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        value = default
    value = max(minimum, value)
    return min(maximum, value) if maximum is not None else value


def _json_object(request: Recorded) -> dict:
    """The request's JSON object; an empty body counts as ``{}``."""
    if not request.body.strip():
        return {}
    if not isinstance(request.json, dict):
        raise Refused(400, "Problems parsing JSON")
    return request.json


class _Server(QuietServer):
    fake: FakeGitHub


class _Handler(KeepAliveHandler):
    def version_string(self):
        return "GitHub.com"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _handle(self):
        body = self.read_body()
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            parsed = None
        parts = urlsplit(self.path)
        recorded = Recorded(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=Headers(self.headers.items()),
            body=body,
            json=parsed,
        )
        response = self.server.fake.handle(recorded)
        if isinstance(response.body, bytes):
            payload = response.body
        elif response.body is None:
            payload = b""
        else:
            payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("X-GitHub-Request-Id", secrets.token_hex(8).upper())
        if response.status != 204:
            if payload:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if response.status != 204:
            self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle
