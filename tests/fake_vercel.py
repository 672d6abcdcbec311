"""A local fake of Vercel's REST API, strict where the real API is strict.

``FakeVercel`` serves a slice of ``api.vercel.com`` from a ``ThreadingHTTPServer`` on 127.0.0.1 (a
free port, a daemon thread), so the Vercel integration can be tested end to end without the
internet. Facts come from Vercel's REST API reference (vercel.com/docs/rest-api), its OpenAPI-generated
SDK (github.com/vercel/sdk) and its CLI; where the fake has to choose (a status code or message the
documents do not give) it says so in a comment.

Authentication
    ``Authorization: Bearer <token>``. Errors have Vercel's shape ``{"error": {"code", "message"}}``
    (vercel.com/docs/rest-api/errors): no token or an unknown one is 403 ``forbidden`` "Not
    authorized" (an unknown one adds ``invalidToken: true``). Tokens: ``token``, the integration's
    OAuth2 access token, and ``personal_token``, a personal access token, which the legacy checks
    endpoints refuse for POST and PATCH with 400 ("This endpoint must be called with an OAuth2 or it
    will produce a 400 error"). With a ``team_id`` every call must name the team (``teamId`` or
    ``slug`` in the query); a missing or different team is 403 ``forbidden``.

Checks
    The legacy per-deployment API (``/v1/deployments/{id}/checks``, deprecated): ``name`` (<= 100),
    ``blocking`` (required), ``path`` (<= 255), ``detailsUrl``, ``externalId``, ``rerequestable``;
    status ``registered`` -> ``running`` -> ``completed``; conclusions ``canceled``, ``failed``,
    ``neutral``, ``succeeded``, ``skipped`` (``stale`` is Vercel's own). The project-level checks
    (``/v2/projects/{idOrName}/checks``) with check runs (``/v2/deployments/{id}/check-runs``):
    status ``queued`` -> ``running`` -> ``completed``, conclusions as above plus ``timeout``.
    A conclusion completes a check; ``completed`` needs a conclusion; a completed check or run is final
    until it is rerequested (``rerequest_check``, as a user clicking "Rerun" would).

Deployments and projects
    ``GET /v13/deployments/{idOrUrl}``, ``GET /v6/deployments`` (and ``/v7``, the version the current
    SDK calls) with ``projectId``, ``target``, ``state``, ``limit`` and ``until`` pagination
    (``pagination.next`` is the ``createdAt`` to pass as ``until``), ``GET /v9/projects/{idOrName}``
    with ``lastAliasRequest`` and ``autoAssignCustomDomains``. ``add_deployment`` adds deployments.

Rollback and promote
    ``POST /v1/projects/{id}/rollback/{deploymentId}`` and ``POST /v10/projects/{id}/promote/{id}``
    answer 201 with no body and start an alias request that ``GET /v9/projects`` follows:
    ``jobStatus`` ``pending`` -> ``in-progress`` -> ``alias_outcome`` (``succeeded`` or ``failed``)
    over ``alias_polls`` reads. A rollback turns off ``autoAssignCustomDomains`` (new production
    deployments stop going live, vercel.com/docs/instant-rollback); a promote turns it back on
    (vercel.com/docs/cli/rollback, "Undo a rollback").

Failure injection (``fail_next``, ``outage``, ``rate_limit``, ``throttle``, ``slow``) applies to every
request. Every request, failed or not, is appended to ``requests`` with its status and which token
sent it; the token itself is never recorded. Refused requests change no state.

Webhooks: ``webhook_signature``, ``signed_webhook`` and ``send_webhook`` sign a payload as Vercel
does (``x-vercel-signature``, the hex HMAC-SHA1 of the raw body) and post it.

Deviations: request bodies must come with ``Content-Length``; the alias request advances on reads of
the project, not on a clock, so tests are deterministic.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import requests

from tests.fake_http import KeepAliveHandler, LoopbackFake, QuietServer

TEAM_ID = "team_Wq3x8PzN5bKd2LmR7tYv1cHe"
TEAM_SLUG = "acme"
PROJECT_ID = "prj_123"
PROJECT_NAME = "wedsync-web"
FIXTURE_DIRS = (
    Path(__file__).resolve().parent / "fixtures" / "vercel",
    Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "vercel",
)

LEGACY_STATUSES = ("registered", "running", "completed")
LEGACY_UPDATE_STATUSES = ("running", "completed")
LEGACY_CONCLUSIONS = ("canceled", "failed", "neutral", "succeeded", "skipped")
WEB_VITALS = ("FCP", "LCP", "CLS", "TBT", "virtualExperienceScore")
RUN_STATUSES = ("queued", "running", "completed")
RUN_CONCLUSIONS = ("canceled", "failed", "neutral", "skipped", "succeeded", "timeout")
CHECK_REQUIRES = ("build-ready", "deployment-url", "none")
CHECK_BLOCKS = ("build-start", "deployment-start", "deployment-alias", "deployment-promotion", "none")
GIT_PROVIDERS = ("github", "gitlab", "bitbucket")
READY_STATES = ("BLOCKED", "BUILDING", "CANCELED", "DELETED", "ERROR", "INITIALIZING", "QUEUED", "READY")
JOB_UNFINISHED = ("pending", "in-progress")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100  # not in the reference; Vercel's listings commonly cap at 100

# (method, path pattern, handler method name); a path matched with another method is a 405.
DEPLOYMENT = r"/(?P<deployment_id>[^/]+)"
PROJECT = r"/(?P<project>[^/]+)"
CHECK = r"/(?P<check_id>[^/]+)"
CHECK_RUN = r"/(?P<check_run_id>[^/]+)"
ROUTES = [
    ("GET", r"/v13/deployments/(?P<id_or_url>[^/]+)", "get_deployment"),
    ("GET", r"/v[67]/deployments", "list_deployments"),
    ("POST", r"/v1/deployments" + DEPLOYMENT + r"/checks", "create_check"),
    ("GET", r"/v1/deployments" + DEPLOYMENT + r"/checks", "list_checks"),
    ("GET", r"/v1/deployments" + DEPLOYMENT + r"/checks" + CHECK, "get_check"),
    ("PATCH", r"/v1/deployments" + DEPLOYMENT + r"/checks" + CHECK, "update_check"),
    ("POST", r"/v1/deployments" + DEPLOYMENT + r"/checks" + CHECK + r"/rerequest", "rerequest_check_api"),
    ("POST", r"/v2/projects" + PROJECT + r"/checks", "create_project_check"),
    ("GET", r"/v2/projects" + PROJECT + r"/checks", "list_project_checks"),
    ("GET", r"/v2/projects" + PROJECT + r"/checks" + CHECK, "get_project_check"),
    ("POST", r"/v2/deployments" + DEPLOYMENT + r"/check-runs", "create_check_run"),
    ("GET", r"/v2/deployments" + DEPLOYMENT + r"/check-runs", "list_check_runs"),
    ("GET", r"/v2/deployments" + DEPLOYMENT + r"/check-runs" + CHECK_RUN, "get_check_run"),
    ("PATCH", r"/v2/deployments" + DEPLOYMENT + r"/check-runs" + CHECK_RUN, "update_check_run"),
    ("GET", r"/v9/projects" + PROJECT, "get_project"),
    ("POST", r"/v1/projects" + PROJECT + r"/rollback" + DEPLOYMENT, "rollback"),
    ("POST", r"/v10/projects" + PROJECT + r"/promote" + DEPLOYMENT, "promote"),
]


def now_ms() -> int:
    return int(time.time() * 1000)


def webhook_signature(body: bytes, secret: str) -> str:
    """``x-vercel-signature``: the hex HMAC-SHA1 of the raw body, keyed with the webhook's secret."""
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def load_webhook_fixture(name: str) -> dict:
    """A payload from the Vercel webhook fixtures (``deployment.ready`` or ``deployment.ready.json``)."""
    file_name = name if name.endswith(".json") else f"{name}.json"
    for directory in FIXTURE_DIRS:
        if (directory / file_name).is_file():
            return json.loads((directory / file_name).read_text())
    raise FileNotFoundError(f"no Vercel webhook fixture {file_name} in {', '.join(map(str, FIXTURE_DIRS))}")


def signed_webhook(payload: dict | bytes | str, secret: str) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a delivery as Vercel sends it. ``payload`` is a dict, raw bytes
    (signed as they are) or the name of a fixture."""
    if isinstance(payload, str):
        payload = load_webhook_fixture(payload)
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"content-type": "application/json", "x-vercel-signature": webhook_signature(body, secret)}
    return body, headers


def send_webhook(url: str, payload: dict | bytes | str, secret: str, *, session=None, timeout: float = 5):
    """Post a signed delivery to ``url`` (perfgate's webhook endpoint, or a test client's URL)."""
    body, headers = signed_webhook(payload, secret)
    return (session or requests).post(url, data=body, headers=headers, timeout=timeout)


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
    headers: Headers  # Authorization keeps its scheme only: "Bearer [redacted]"
    body: bytes
    json: Any
    status: int = 0
    token: str | None = None  # "integration", "personal", "unknown" or None (no credential)
    at: float = field(default_factory=time.time)  # when it arrived (epoch seconds)


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-encodable, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """Raised by endpoint code to answer an error; the request changes no state."""

    def __init__(self, status: int, code: str, message: str, **extra):
        super().__init__(message)
        self.response = Response(status, {"error": {"code": code, "message": message, **extra}})


def bad_request(message: str) -> Refused:
    return Refused(400, "bad_request", message)


def not_found(message: str) -> Refused:
    return Refused(404, "not_found", message)


class FakeVercel(LoopbackFake):
    def __init__(
        self,
        *,
        team_id: str | None = TEAM_ID,
        team_slug: str | None = TEAM_SLUG,
        projects: dict[str, str] | None = None,
        plan: str = "pro",
        integration_id: str = "oac_perfgate",
        configuration_id: str = "icfg_perfgate",
    ):
        """``projects`` maps project ids to names (by default the demo's ``prj_123``); ``team_id=None``
        is a personal account, where ``teamId`` must not be sent; ``plan="hobby"`` allows rolling
        back only to the previous production deployment."""
        self.team_id = team_id
        self.team_slug = team_slug if team_id else None
        self.plan = plan
        self.integration_id = integration_id
        self.configuration_id = configuration_id
        self.owner_id = team_id or "u7Lk2Qd9Xz4RmPb1Tc8VwNy3"
        self.token = "vca_" + secrets.token_urlsafe(24)
        self.personal_token = "vcp_" + secrets.token_urlsafe(24)
        self.url = ""

        self.projects: dict[str, dict] = {}
        for project_id, name in (projects or {PROJECT_ID: PROJECT_NAME}).items():
            self.projects[project_id] = {
                "id": project_id,
                "name": name,
                "accountId": self.owner_id,
                "autoAssignCustomDomains": True,
                "lastAliasRequest": None,
                "lastRollbackTarget": None,
                "rollbackDescription": None,
                "production": None,  # id of the deployment serving production
                "alias_reads": 0,
            }
        self.deployments: dict[str, dict] = {}
        self.checks: dict[str, dict] = {}  # legacy, per deployment
        self.project_checks: dict[str, dict] = {}
        self.check_runs: dict[str, dict] = {}
        self.requests: list[Recorded] = []
        # How the next alias requests end, and how many reads of the project see them unfinished.
        self.alias_outcome = "succeeded"
        self.alias_polls = 2

        self._ids = itertools.count(1)
        self._last_alias_at = 0
        self._lock = threading.RLock()
        self._failures: list[tuple[int, int | None]] = []
        self._outage: int | None = None
        self._throttled_until = 0.0
        self._rate_limit: tuple[int, float] | None = None  # (requests, window seconds) per token
        self._token_hits: dict[str, list[float]] = {}
        self._delay: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeVercel:
        return self._serve(_Server, _Handler, "fake-vercel")

    @property
    def team_query(self) -> dict[str, str]:
        """The query every call must carry (empty for a personal account)."""
        return {"teamId": self.team_id} if self.team_id else {}

    # -- test setup -----------------------------------------------------------------------------

    def add_deployment(
        self,
        project_id: str = PROJECT_ID,
        *,
        deployment_id: str | None = None,
        url: str | None = None,
        target: str | None = "production",
        sha: str | None = None,
        ready_state: str = "READY",
        created_at: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> str:
        """A deployment (``target=None`` is a preview). A READY production deployment goes live, as
        Vercel's automatic production domain assignment does, unless a rollback turned it off."""
        if target not in ("production", None):
            raise ValueError("target is 'production' or None (a preview)")
        if ready_state not in READY_STATES:
            raise ValueError(f"ready_state is one of {READY_STATES}")
        with self._lock:
            project = self.projects[project_id]
            meta = {"githubCommitSha": sha or secrets.token_hex(20), **(meta or {})}
            return self._new_deployment(
                project,
                deployment_id=deployment_id,
                url=url,
                target=target,
                ready_state=ready_state,
                created_at=created_at,
                meta=meta,
                go_live=True,
            )

    def _new_deployment(
        self,
        project,
        *,
        target,
        meta,
        go_live,
        deployment_id=None,
        url=None,
        ready_state="READY",
        created_at=None,
    ) -> str:
        number = next(self._ids)
        deployment_id = deployment_id or f"dpl_{secrets.token_hex(12)}"
        deployment = {
            "id": deployment_id,
            "name": project["name"],
            "projectId": project["id"],
            "url": url or f"{project['name']}-{secrets.token_hex(5)[:9]}-{self.team_slug or 'me'}.vercel.app",
            "target": target,
            "readyState": ready_state,
            "createdAt": created_at if created_at is not None else now_ms() + number,
            "meta": meta,
            "aliasAssigned": None,  # when it first served production (epoch ms)
        }
        self.deployments[deployment_id] = deployment
        if (
            go_live
            and target == "production"
            and ready_state == "READY"
            and project["autoAssignCustomDomains"]
        ):
            self._go_live(project, deployment)
        return deployment_id

    def set_ready_state(self, deployment_id: str, ready_state: str) -> None:
        if ready_state not in READY_STATES:
            raise ValueError(f"ready_state is one of {READY_STATES}")
        with self._lock:
            deployment = self.deployments[deployment_id]
            deployment["readyState"] = ready_state
            project = self.projects[deployment["projectId"]]
            if (
                ready_state == "READY"
                and deployment["target"] == "production"
                and deployment["aliasAssigned"] is None
                and project["autoAssignCustomDomains"]
            ):
                self._go_live(project, deployment)

    def production_deployment(self, project_id: str = PROJECT_ID) -> str | None:
        with self._lock:
            return self.projects[project_id]["production"]

    def rerequest_check(self, check_id: str) -> None:
        """A user asks to rerun a check from the dashboard: a legacy check (by its id) is registered
        again, a check run (by its id) is queued again; either can then be updated anew."""
        with self._lock:
            if check_id in self.checks:
                check = self.checks[check_id]
                if not check["rerequestable"]:
                    raise ValueError(f"check {check_id} is not rerequestable")
                check.update(status="registered", conclusion=None, completedAt=None, updatedAt=now_ms())
            else:
                run = self.check_runs[check_id]
                run.update(status="queued", conclusion=None, completedAt=None, updatedAt=now_ms())

    def finish_alias_request(self, project_id: str = PROJECT_ID, outcome: str | None = None) -> None:
        """End the project's alias request now (``outcome`` defaults to ``alias_outcome``)."""
        with self._lock:
            self._finish_alias(self.projects[project_id], outcome or self.alias_outcome)

    # -- failure injection ----------------------------------------------------------------------

    def fail_next(self, count: int, *, status: int = 503, retry_after: int | None = None) -> None:
        with self._lock:
            self._failures.extend([(status, retry_after)] * count)

    def outage(self, status: int = 503) -> None:
        with self._lock:
            self._outage = status

    def recover(self) -> None:
        """End an outage; also drops pending ``fail_next`` failures, throttling and the rate limit."""
        with self._lock:
            self._outage = None
            self._failures.clear()
            self._throttled_until = 0.0
            self._rate_limit = None
            self._token_hits.clear()

    def rate_limit(self, requests_per_window: int, window_seconds: float = 60.0) -> None:
        """Allow each token ``requests_per_window`` requests per sliding window, then answer 429."""
        with self._lock:
            self._rate_limit = (requests_per_window, window_seconds)
            self._token_hits.clear()

    def throttle(self, seconds: float) -> None:
        """Answer 429 to every request for ``seconds``."""
        with self._lock:
            self._throttled_until = time.time() + seconds

    def slow(self, seconds: float | None) -> None:
        with self._lock:
            self._delay = seconds

    # -- request handling -----------------------------------------------------------------------

    def handle(self, recorded: Recorded, authorization: str | None) -> Response:
        with self._lock:
            delay = self._delay
        if delay:
            time.sleep(delay)
        with self._lock:
            recorded.token = self._token_kind(authorization)
            response = self._injected_failure(recorded.token, authorization)
            if response is None:
                try:
                    response = self._api(recorded)
                except Refused as refused:
                    response = refused.response
            recorded.status = response.status
            self.requests.append(recorded)
        return response

    def _token_kind(self, authorization: str | None) -> str | None:
        if not authorization:
            return None
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return "unknown"
        credential = credential.strip()
        if credential == self.token:
            return "integration"
        if credential == self.personal_token:
            return "personal"
        return "unknown"

    def _injected_failure(self, token_kind: str | None, authorization: str | None) -> Response | None:
        now = time.time()
        if now < self._throttled_until:
            return self._rate_limited(self._throttled_until, 0)
        if self._rate_limit is not None and authorization:
            limit, window = self._rate_limit
            hits = [at for at in self._token_hits.get(authorization, []) if at > now - window]
            if len(hits) >= limit:
                self._token_hits[authorization] = hits
                return self._rate_limited(hits[0] + window, limit)
            self._token_hits[authorization] = [*hits, now]
        if self._outage is not None:
            return self._server_error(self._outage)
        if self._failures:
            status, retry_after = self._failures.pop(0)
            if status == 429:
                response = self._rate_limited(now + (retry_after or 1), 0)
            else:
                response = self._server_error(status)
            if retry_after is not None:
                response.headers["retry-after"] = str(retry_after)
            return response
        return None

    def _rate_limited(self, reset_at: float, total: int) -> Response:
        # Body from vercel.com/docs/rest-api/errors; the X-RateLimit-* headers and Retry-After are
        # what Vercel sends with it (not in that page's text).
        retry_after = max(1, math.ceil(reset_at - time.time()))
        body = {
            "error": {
                "code": "rate_limited",
                "message": f"Rate limit exceeded. Try again in {retry_after} seconds.",
                "limit": {
                    "remaining": 0,
                    "reset": math.ceil(reset_at),
                    "resetMs": int(reset_at * 1000),
                    "total": total,
                },
            }
        }
        headers = {
            "retry-after": str(retry_after),
            "x-ratelimit-limit": str(total),
            "x-ratelimit-remaining": "0",
            "x-ratelimit-reset": str(math.ceil(reset_at)),
        }
        return Response(429, body, headers)

    def _server_error(self, status: int) -> Response:
        code = (
            "internal_server_error" if status == 500 else HTTPStatus(status).phrase.lower().replace(" ", "_")
        )
        return Response(status, {"error": {"code": code, "message": "An unexpected internal error occurred"}})

    def _api(self, request: Recorded) -> Response:
        if request.token is None:
            raise Refused(403, "forbidden", "Not authorized")
        if request.token == "unknown":
            raise Refused(403, "forbidden", "Not authorized", invalidToken=True)
        team, slug = request.query.get("teamId"), request.query.get("slug")
        if self.team_id is None:
            if team or slug:
                raise Refused(403, "forbidden", "Not authorized")
        elif not ((team and team == self.team_id) or (not team and slug and slug == self.team_slug)):
            # Without the team the token addresses a scope it cannot reach, and another team is
            # another scope; the message is Vercel's generic one.
            raise Refused(403, "forbidden", "Not authorized")
        handler_name, params = _route(request.method, request.path)
        return getattr(self, "_" + handler_name)(request, **params)

    # -- lookups --------------------------------------------------------------------------------

    def _project(self, id_or_name: str) -> dict:
        for project in self.projects.values():
            if id_or_name in (project["id"], project["name"]):
                return project
        raise not_found("Project not found")

    def _deployment(self, deployment_id: str) -> dict:
        deployment = self.deployments.get(deployment_id)
        if deployment is None:
            raise not_found("The deployment was not found")
        return deployment

    # -- deployments ----------------------------------------------------------------------------

    def _get_deployment(self, request, id_or_url):
        key = unquote(id_or_url)
        key = re.sub(r"^https?://", "", key).rstrip("/")
        for deployment in self.deployments.values():
            if key in (deployment["id"], deployment["url"]):
                return Response(200, self._deployment_json(deployment))
        raise not_found("Deployment not found")

    def _list_deployments(self, request):
        query = request.query
        limit = query.get("limit", str(DEFAULT_LIMIT))
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_LIMIT:
            raise bad_request(f"Invalid request: `limit` must be an integer between 1 and {MAX_LIMIT}.")
        for name in ("until", "since"):
            if name in query and not query[name].isdigit():
                raise bad_request(f"Invalid request: `{name}` must be a timestamp in milliseconds.")
        deployments = list(self.deployments.values())
        if query.get("projectId"):
            project = self._project(query["projectId"])
            deployments = [d for d in deployments if d["projectId"] == project["id"]]
        if "target" in query:
            if query["target"] not in ("production", "preview"):
                raise bad_request("Invalid request: `target` must be production or preview.")
            wanted = query["target"] if query["target"] == "production" else None
            deployments = [d for d in deployments if d["target"] == wanted]
        if query.get("state"):
            states = query["state"].upper().split(",")
            if any(state not in READY_STATES for state in states):
                raise bad_request(f"Invalid request: `state` must be among {', '.join(READY_STATES)}.")
            deployments = [d for d in deployments if d["readyState"] in states]
        if query.get("sha"):
            deployments = [d for d in deployments if d["meta"].get("githubCommitSha") == query["sha"]]
        if query.get("rollbackCandidate") == "true":
            deployments = [d for d in deployments if self._is_rollback_candidate(d)]
        if "until" in query:
            deployments = [d for d in deployments if d["createdAt"] < int(query["until"])]
        if "since" in query:
            deployments = [d for d in deployments if d["createdAt"] > int(query["since"])]
        deployments.sort(key=lambda d: d["createdAt"], reverse=True)
        page = deployments[: int(limit)]
        more = len(deployments) > len(page)
        pagination = {
            "count": len(page),
            "next": page[-1]["createdAt"] if more else None,
            "prev": page[0]["createdAt"] if page else None,
        }
        return Response(200, {"deployments": [self._listed_json(d) for d in page], "pagination": pagination})

    def _is_rollback_candidate(self, deployment) -> bool:
        return (
            deployment["target"] == "production"
            and deployment["readyState"] == "READY"
            and deployment["aliasAssigned"] is not None
        )

    def _checks_summary(self, deployment_id) -> tuple[str | None, str | None]:
        checks = [c for c in self.checks.values() if c["deploymentId"] == deployment_id]
        if not checks:
            return None, None
        if any(c["status"] == "registered" for c in checks):
            return "registered", None
        if any(c["status"] == "running" for c in checks):
            return "running", None
        blocking = [c["conclusion"] for c in checks if c["blocking"]]
        for conclusion in ("failed", "canceled"):
            if conclusion in blocking:
                return "completed", conclusion
        return "completed", "succeeded"

    def _deployment_json(self, deployment) -> dict:
        project = self.projects[deployment["projectId"]]
        checks_state, checks_conclusion = self._checks_summary(deployment["id"])
        serving = project["production"] == deployment["id"]
        body = {
            "id": deployment["id"],
            "name": deployment["name"],
            "projectId": deployment["projectId"],
            "url": deployment["url"],
            "target": deployment["target"],
            "readyState": deployment["readyState"],
            "createdAt": deployment["createdAt"],
            "meta": dict(deployment["meta"]),
            "alias": [f"{project['name']}.vercel.app"] if serving else [],
            "aliasAssigned": deployment["aliasAssigned"],
            "isRollbackCandidate": self._is_rollback_candidate(deployment),
            "inspectorUrl": f"https://vercel.com/{self.team_slug or 'me'}/{project['name']}/"
            + deployment["id"].removeprefix("dpl_"),
            "type": "LAMBDAS",
            "creator": {"uid": self.owner_id},
        }
        if self.team_id:
            body["team"] = {"id": self.team_id, "slug": self.team_slug}
        if checks_state:
            body["checksState"] = checks_state
        if checks_conclusion:
            body["checksConclusion"] = checks_conclusion
        return body

    def _listed_json(self, deployment) -> dict:
        full = self._deployment_json(deployment)
        listed = {key: full[key] for key in full if key not in ("id", "alias", "team")}
        listed.update(uid=deployment["id"], created=deployment["createdAt"], state=deployment["readyState"])
        return listed

    # -- legacy checks --------------------------------------------------------------------------

    def _oauth_only(self, request):
        if request.token != "integration":
            raise bad_request("This endpoint must be called with an OAuth2 token.")

    def _create_check(self, request, deployment_id):
        self._oauth_only(request)
        body = _json_object(request, required=True)
        deployment = self._deployment(deployment_id)
        name = body.get("name")
        if name is None:
            raise bad_request("Invalid request: missing required property `name`.")
        self._check_string(body, "name", 100)
        if "blocking" not in body:
            raise bad_request("Invalid request: missing required property `blocking`.")
        if not isinstance(body["blocking"], bool):
            raise bad_request("Invalid request: `blocking` should be boolean.")
        self._check_common(body)
        if "rerequestable" in body and not isinstance(body["rerequestable"], bool):
            raise bad_request("Invalid request: `rerequestable` should be boolean.")
        check_id = f"chk_{secrets.token_hex(8)}"
        created = now_ms()
        check = {
            "id": check_id,
            "name": name,
            "path": body.get("path"),
            "status": "registered",
            "conclusion": None,
            "blocking": body["blocking"],
            "integrationId": self.integration_id,
            "deploymentId": deployment["id"],
            "createdAt": created,
            "updatedAt": created,
            "startedAt": None,
            "completedAt": None,
            "detailsUrl": body.get("detailsUrl"),
            "externalId": body.get("externalId"),
            "output": None,
            "rerequestable": body.get("rerequestable", False),
            "history": [body],
        }
        self.checks[check_id] = check
        return Response(200, self._check_json(check))

    def _check_string(self, body, name, max_length):
        value = body[name]
        if not isinstance(value, str) or not value:
            raise bad_request(f"Invalid request: `{name}` should be a non-empty string.")
        if len(value) > max_length:
            raise bad_request(f"Invalid request: `{name}` should NOT be longer than {max_length} characters.")

    def _check_common(self, body):
        if "path" in body:
            self._check_string(body, "path", 255)
        if "detailsUrl" in body and not _is_http_url(body["detailsUrl"]):
            raise bad_request("Invalid request: `detailsUrl` should be an http(s) URL.")
        if "externalId" in body and not isinstance(body["externalId"], str):
            raise bad_request("Invalid request: `externalId` should be string.")

    def _find_check(self, deployment_id, check_id) -> dict:
        self._deployment(deployment_id)
        check = self.checks.get(check_id)
        if check is None or check["deploymentId"] != deployment_id:
            raise not_found("Check not found")
        return check

    def _list_checks(self, request, deployment_id):
        self._deployment(deployment_id)
        checks = [self._check_json(c) for c in self.checks.values() if c["deploymentId"] == deployment_id]
        return Response(200, {"checks": checks})

    def _get_check(self, request, deployment_id, check_id):
        return Response(200, self._check_json(self._find_check(deployment_id, check_id)))

    def _update_check(self, request, deployment_id, check_id):
        self._oauth_only(request)
        body = _json_object(request, required=True)
        check = self._find_check(deployment_id, check_id)
        if "name" in body:
            self._check_string(body, "name", 100)
        self._check_common(body)
        status = body.get("status")
        if status is not None and status not in LEGACY_UPDATE_STATUSES:
            raise bad_request(
                "Invalid request: `status` should be equal to one of the allowed values: running, completed."
            )
        conclusion = body.get("conclusion")
        if conclusion is not None and conclusion not in LEGACY_CONCLUSIONS:
            raise bad_request(
                "Invalid request: `conclusion` should be equal to one of the allowed values: "
                + ", ".join(LEGACY_CONCLUSIONS)
                + "."
            )
        if "output" in body:
            _check_web_vitals(body["output"])
        new_status, new_conclusion = _transition(
            check["status"], check["conclusion"], status, conclusion, started="running"
        )
        updated = now_ms()
        for key in ("name", "path", "detailsUrl", "externalId", "output"):
            if key in body:
                check[key] = body[key]
        if new_status == "running" and check["startedAt"] is None:
            check["startedAt"] = updated
        if new_status == "completed" and check["status"] != "completed":
            check["completedAt"] = updated
        check.update(status=new_status, conclusion=new_conclusion, updatedAt=updated)
        check["history"].append(body)
        return Response(200, self._check_json(check))

    def _rerequest_check_api(self, request, deployment_id, check_id):
        check = self._find_check(deployment_id, check_id)
        if not check["rerequestable"]:
            raise bad_request("Check is not rerequestable")
        if check["status"] != "completed":
            raise bad_request("Only a completed check can be rerequested")
        auto_update = request.query.get("autoUpdate") == "true"
        check.update(
            status="running" if auto_update else "registered",
            conclusion=None,
            completedAt=None,
            updatedAt=now_ms(),
        )
        return Response(200, {})

    def _check_json(self, check) -> dict:
        return {key: value for key, value in check.items() if key != "history"}

    # -- project checks and check runs ----------------------------------------------------------

    def _create_project_check(self, request, project):
        project = self._project(project)
        body = _json_object(request, required=True)
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("Invalid request: missing required property `name`.")
        requires = body.get("requires", "deployment-url")
        if requires not in CHECK_REQUIRES:
            raise bad_request(f"Invalid request: `requires` should be one of {', '.join(CHECK_REQUIRES)}.")
        blocks = body.get("blocks", "deployment-alias")
        if blocks not in CHECK_BLOCKS:
            raise bad_request(f"Invalid request: `blocks` should be one of {', '.join(CHECK_BLOCKS)}.")
        targets = body.get("targets", ["production", "preview"])
        if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
            raise bad_request("Invalid request: `targets` should be an array of strings.")
        if "isRerequestable" in body and not isinstance(body["isRerequestable"], bool):
            raise bad_request("Invalid request: `isRerequestable` should be boolean.")
        timeout = body.get("timeout", 3600)
        if not _is_number(timeout) or timeout <= 0:
            raise bad_request("Invalid request: `timeout` should be a positive number.")
        source = self._check_source(body.get("source"), request)
        check_id = f"chk_{secrets.token_hex(8)}"
        created = now_ms()
        check = {
            "id": check_id,
            "name": name,
            "ownerId": self.owner_id,
            "projectId": project["id"],
            "isRerequestable": body.get("isRerequestable", False),
            "requires": requires,
            "blocks": blocks,
            "targets": list(targets),
            "source": source,
            "sourceKind": source["kind"],
            "timeout": timeout,
            "createdAt": created,
            "updatedAt": created,
        }
        self.project_checks[check_id] = check
        return Response(200, dict(check))

    def _check_source(self, source, request) -> dict:
        if source is None:
            if request.token != "integration":
                raise bad_request(
                    "Invalid request: `source` is required unless an integration creates the check."
                )
            return {
                "kind": "integration",
                "integrationId": self.integration_id,
                "integrationConfigurationId": self.configuration_id,
            }
        if not isinstance(source, dict):
            raise bad_request("Invalid request: `source` should be object.")
        kind = source.get("kind")
        if kind == "integration":
            for key in ("integrationId", "integrationConfigurationId"):
                if not isinstance(source.get(key), str) or not source[key]:
                    raise bad_request(f"Invalid request: `source.{key}` is required.")
        elif kind == "webhook":
            if "webhookId" in source and not isinstance(source["webhookId"], str):
                raise bad_request("Invalid request: `source.webhookId` should be string.")
        elif kind == "git-provider":
            if source.get("provider") not in GIT_PROVIDERS:
                raise bad_request(
                    f"Invalid request: `source.provider` should be one of {', '.join(GIT_PROVIDERS)}."
                )
            if not isinstance(source.get("externalCheckName"), str) or not source["externalCheckName"]:
                raise bad_request("Invalid request: `source.externalCheckName` is required.")
        else:
            raise bad_request(
                "Invalid request: `source.kind` should be integration, webhook or git-provider."
            )
        return dict(source)

    def _list_project_checks(self, request, project):
        project = self._project(project)
        checks = [dict(c) for c in self.project_checks.values() if c["projectId"] == project["id"]]
        if request.query.get("blocks"):
            checks = [c for c in checks if c["blocks"] == request.query["blocks"]]
        return Response(200, {"checks": checks})

    def _get_project_check(self, request, project, check_id):
        project = self._project(project)
        check = self.project_checks.get(check_id)
        if check is None or check["projectId"] != project["id"]:
            raise not_found("Check not found")
        return Response(200, dict(check))

    def _create_check_run(self, request, deployment_id):
        deployment = self._deployment(deployment_id)
        body = _json_object(request, required=True)
        check_id = body.get("checkId")
        if not isinstance(check_id, str) or not check_id:
            raise bad_request("Invalid request: missing required property `checkId`.")
        check = self.project_checks.get(check_id)
        if check is None or check["projectId"] != deployment["projectId"]:
            raise not_found("Check not found")
        run_id = f"ckr_{secrets.token_hex(8)}"
        created = now_ms()
        run = {
            "id": run_id,
            "name": check["name"],
            "checkId": check_id,
            "ownerId": self.owner_id,
            "deploymentId": deployment["id"],
            "projectId": deployment["projectId"],
            "requires": check["requires"],
            "blocks": check["blocks"],
            "targets": list(check["targets"]),
            "status": "queued",
            "conclusion": None,
            "conclusionText": None,
            "externalId": None,
            "externalUrl": None,
            "output": None,
            "timeout": check["timeout"],
            "createdAt": created,
            "updatedAt": created,
            "completedAt": None,
            "source": dict(check["source"]),
            "history": [body],
        }
        self.check_runs[run_id] = run
        return Response(200, self._run_json(run))

    def _find_run(self, deployment_id, check_run_id) -> dict:
        self._deployment(deployment_id)
        run = self.check_runs.get(check_run_id)
        if run is None or run["deploymentId"] != deployment_id:
            raise not_found("Check run not found")
        return run

    def _list_check_runs(self, request, deployment_id):
        self._deployment(deployment_id)
        runs = [self._run_json(r) for r in self.check_runs.values() if r["deploymentId"] == deployment_id]
        return Response(200, {"runs": runs})

    def _get_check_run(self, request, deployment_id, check_run_id):
        return Response(200, self._run_json(self._find_run(deployment_id, check_run_id)))

    def _update_check_run(self, request, deployment_id, check_run_id):
        body = _json_object(request, required=True)
        run = self._find_run(deployment_id, check_run_id)
        status = body.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise bad_request(f"Invalid request: `status` should be one of {', '.join(RUN_STATUSES)}.")
        conclusion = body.get("conclusion")
        if conclusion is not None and conclusion not in RUN_CONCLUSIONS:
            raise bad_request(f"Invalid request: `conclusion` should be one of {', '.join(RUN_CONCLUSIONS)}.")
        for key in ("externalId", "conclusionText"):
            if key in body and not isinstance(body[key], str):
                raise bad_request(f"Invalid request: `{key}` should be string.")
        if "externalUrl" in body and not _is_http_url(body["externalUrl"]):
            raise bad_request("Invalid request: `externalUrl` should be an http(s) URL.")
        if "output" in body and not isinstance(body["output"], dict):
            raise bad_request("Invalid request: `output` should be object.")
        if "completedAt" in body and not _is_number(body["completedAt"]):
            raise bad_request("Invalid request: `completedAt` should be a number (epoch milliseconds).")
        new_status, new_conclusion = _transition(
            run["status"], run["conclusion"], status, conclusion, started="running", initial="queued"
        )
        updated = now_ms()
        for key in ("externalId", "externalUrl", "conclusionText", "output"):
            if key in body:
                run[key] = body[key]
        if new_status == "completed" and run["status"] != "completed":
            run["completedAt"] = body.get("completedAt", updated)
        run.update(status=new_status, conclusion=new_conclusion, updatedAt=updated)
        run["history"].append(body)
        return Response(200, self._run_json(run))

    def _run_json(self, run) -> dict:
        return {key: value for key, value in run.items() if key != "history" and value is not None}

    # -- projects, rollback and promote ---------------------------------------------------------

    def _get_project(self, request, project):
        project = self._project(project)
        alias_request = project["lastAliasRequest"]
        if alias_request and alias_request["jobStatus"] in JOB_UNFINISHED:
            project["alias_reads"] += 1
            if project["alias_reads"] > self.alias_polls:
                self._finish_alias(project, self.alias_outcome)
            elif project["alias_reads"] > 1:
                alias_request["jobStatus"] = "in-progress"
        return Response(200, self._project_json(project))

    def _project_json(self, project) -> dict:
        production = self.deployments.get(project["production"]) if project["production"] else None
        targets = {}
        if production:
            targets["production"] = {
                "id": production["id"],
                "url": production["url"],
                "readyState": production["readyState"],
                "createdAt": production["createdAt"],
                "meta": dict(production["meta"]),
            }
        body = {
            "id": project["id"],
            "name": project["name"],
            "accountId": project["accountId"],
            "autoAssignCustomDomains": project["autoAssignCustomDomains"],
            "lastAliasRequest": dict(project["lastAliasRequest"]) if project["lastAliasRequest"] else None,
            "lastRollbackTarget": project["lastRollbackTarget"],
            "targets": targets,
        }
        if project["rollbackDescription"]:
            body["rollbackDescription"] = dict(project["rollbackDescription"])
        return body

    def _alias_target(self, project_id, deployment_id) -> tuple[dict, dict]:
        project = self._project(project_id)
        deployment = self.deployments.get(deployment_id)
        if deployment is None or deployment["projectId"] != project["id"]:
            raise not_found("The deployment was not found")
        alias_request = project["lastAliasRequest"]
        if alias_request and alias_request["jobStatus"] in JOB_UNFINISHED:
            # 409 is among the documented answers; the wording is the fake's.
            raise Refused(409, "conflict", "An alias request for this project is already in progress.")
        if project["production"] == deployment["id"]:
            raise Refused(409, "conflict", "The deployment is already serving production.")
        if deployment["readyState"] != "READY":
            raise Refused(422, "deployment_not_ready", "The deployment is not ready.")
        return project, deployment

    def _rollback(self, request, project, deployment_id):
        project, deployment = self._alias_target(project, deployment_id)
        if not self._is_rollback_candidate(deployment):
            # Only deployments that served production are eligible (vercel.com/docs/instant-rollback).
            raise Refused(
                422,
                "not_rollback_candidate",
                "Only deployments that served production can be rolled back to.",
            )
        if self.plan == "hobby":
            served = sorted(
                (
                    d
                    for d in self.deployments.values()
                    if d["projectId"] == project["id"]
                    and d["aliasAssigned"] is not None
                    and d["id"] != project["production"]
                ),
                key=lambda d: d["aliasAssigned"],
            )
            if served and served[-1]["id"] != deployment["id"]:
                raise Refused(
                    402,
                    "payment_required",
                    "To roll back further than the previous production deployment, upgrade to pro",
                )
        description = request.query.get("description")
        self._request_alias(project, deployment, "rollback")
        project["autoAssignCustomDomains"] = False
        project["lastRollbackTarget"] = {"toDeploymentId": deployment["id"]}
        if description:
            project["rollbackDescription"] = {
                "userId": self.owner_id,
                "username": "perfgate",
                "description": description,
                "createdAt": now_ms(),
            }
        return Response(201)

    def _promote(self, request, project, deployment_id):
        project, deployment = self._alias_target(project, deployment_id)
        if deployment["target"] is None:
            # A preview is rebuilt with the production environment into a new deployment
            # (Vercel CLI, `vercel promote` of a preview); 202 is among the documented answers.
            rebuilt = self._new_deployment(
                project, target="production", meta=dict(deployment["meta"]), go_live=False
            )
            self._request_alias(project, self.deployments[rebuilt], "promote")
            return Response(202)
        self._request_alias(project, deployment, "promote")
        return Response(201)

    def _request_alias(self, project, deployment, kind):
        project["lastAliasRequest"] = {
            "fromDeploymentId": project["production"],
            "toDeploymentId": deployment["id"],
            "jobStatus": "pending",
            "requestedAt": now_ms(),
            "type": kind,
        }
        project["alias_reads"] = 0

    def _finish_alias(self, project, outcome):
        if outcome not in ("succeeded", "failed"):
            raise ValueError("outcome is 'succeeded' or 'failed'")
        alias_request = project["lastAliasRequest"]
        if alias_request is None or alias_request["jobStatus"] not in JOB_UNFINISHED:
            return
        alias_request["jobStatus"] = outcome
        if outcome == "succeeded":
            self._go_live(project, self.deployments[alias_request["toDeploymentId"]])
            if alias_request["type"] == "promote":
                project["autoAssignCustomDomains"] = True
                project["lastRollbackTarget"] = None

    def _go_live(self, project, deployment):
        project["production"] = deployment["id"]
        if deployment["aliasAssigned"] is None:
            # Strictly increasing, so "the previous production deployment" is never a tie.
            self._last_alias_at = max(now_ms(), self._last_alias_at + 1)
            deployment["aliasAssigned"] = self._last_alias_at


def _transition(current_status, current_conclusion, status, conclusion, *, started, initial="registered"):
    """The status and conclusion after an update, or 400. A conclusion completes the check; a
    completed check is final until rerequested; a status never goes back."""
    order = (initial, started, "completed")
    if current_status == "completed" and (status is not None or conclusion is not None):
        raise bad_request("The check is already completed; it can only be rerequested.")
    if conclusion is not None:
        if status not in (None, "completed"):
            raise bad_request("Invalid request: a `conclusion` can only be set with status `completed`.")
        return "completed", conclusion
    if status is None:
        return current_status, current_conclusion
    if status == "completed":
        raise bad_request("Invalid request: status `completed` requires a `conclusion`.")
    if order.index(status) < order.index(current_status):
        raise bad_request(f"Invalid request: the status cannot go back from {current_status} to {status}.")
    return status, None


def _check_web_vitals(output):
    if not isinstance(output, dict):
        raise bad_request("Invalid request: `output` should be object.")
    metrics = output.get("metrics", {})
    if not isinstance(metrics, dict):
        raise bad_request("Invalid request: `output.metrics` should be object.")
    for name, metric in metrics.items():
        if name not in WEB_VITALS:
            raise bad_request(f"Invalid request: `output.metrics` should only have {', '.join(WEB_VITALS)}.")
        if not isinstance(metric, dict) or metric.get("source") != "web-vitals":
            raise bad_request(f"Invalid request: `output.metrics.{name}.source` should be web-vitals.")
        for key in ("value", "previousValue"):
            if key in metric and metric[key] is not None and not _is_number(metric[key]):
                raise bad_request(f"Invalid request: `output.metrics.{name}.{key}` should be number.")
        if "value" not in metric:
            raise bad_request(f"Invalid request: `output.metrics.{name}.value` is required.")


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    allowed = []
    for route_method, pattern, handler_name in ROUTES:
        match = re.fullmatch(pattern, path)
        if match and route_method == method:
            return handler_name, match.groupdict()
        if match:
            allowed.append(route_method)
    if allowed:
        raise Refused(
            405, "method_unknown", f"This endpoint only responds to {', '.join(sorted(set(allowed)))}"
        )
    raise not_found("The requested API endpoint was not found.")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_http_url(value) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _json_object(request: Recorded, *, required: bool = False) -> dict:
    if not request.body.strip():
        if required:
            raise bad_request("Invalid request: a JSON body is required.")
        return {}
    if not isinstance(request.json, dict):
        raise bad_request("Invalid JSON body.")
    return request.json


class _Server(QuietServer):
    fake: FakeVercel


class _Handler(KeepAliveHandler):
    def version_string(self):
        return "Vercel"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def _handle(self):
        body = self.read_body()
        try:
            parsed = json.loads(body) if body.strip() else None
        except ValueError:
            parsed = None
        parts = urlsplit(self.path)
        headers = Headers(self.headers.items())
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme = authorization.strip().partition(" ")[0]
            headers["authorization"] = f"{scheme} [redacted]"
        recorded = Recorded(
            method=self.command,
            path=parts.path,
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            json=parsed,
        )
        response = self.server.fake.handle(recorded, authorization)
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("x-vercel-id", f"iad1::{secrets.token_hex(6)}")
        if payload:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle
