"""Talking to Vercel's REST API for one project's connection.

Every call carries the connection's bearer token, and ``teamId`` when the project belongs to a
team (Vercel answers 403 to a team's project addressed without it). Calls go through
``integrations.http``: a 429 or a 5xx is ``TryLater`` (with the wait Vercel asked for), any other
4xx is ``Refused``. The token is sent only to the connection's API host and never logged.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode

from django.conf import settings

from integrations import http
from integrations.models import VercelConnection

CHECK_NAME = "perfgate"


class VercelClient:
    """Calls Vercel's REST API for one project's connection."""

    def __init__(self, connection: VercelConnection):
        self.connection = connection
        self.base = connection.base_url
        self.timeout = settings.VERCEL_TIMEOUT_SECONDS

    def request(self, method: str, path: str, *, json=None, query: dict | None = None) -> http.Reply:
        if not self.connection.token:
            raise http.Refused(f"The Vercel connection of {self.connection.project.slug} has no token.")
        query = dict(query or {})
        if self.connection.team_id:
            query["teamId"] = self.connection.team_id
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        return http.call(
            method,
            url,
            timeout=self.timeout,
            json=json,
            headers={"Authorization": f"Bearer {self.connection.token}", "Accept": "application/json"},
        )

    # project-level checks and their runs

    def project_checks(self, project_id: str) -> list[dict]:
        return self.request("GET", f"/v2/projects/{_part(project_id)}/checks").json().get("checks", [])

    def create_project_check(self, project_id: str) -> str:
        """perfgate's check on the project: blocks a deployment's aliasing (production
        included) until perfgate concludes it, and may be rerun from the dashboard."""
        body = {
            "name": CHECK_NAME,
            "requires": "deployment-url",
            "blocks": "deployment-alias",
            "targets": ["production", "preview"],
            "isRerequestable": True,
        }
        return self.request("POST", f"/v2/projects/{_part(project_id)}/checks", json=body).json()["id"]

    def create_check_run(self, deployment_id: str, check_id: str) -> str:
        reply = self.request(
            "POST", f"/v2/deployments/{_part(deployment_id)}/check-runs", json={"checkId": check_id}
        )
        return reply.json()["id"]

    def update_check_run(self, deployment_id: str, run_id: str, body: dict) -> None:
        self.request("PATCH", f"/v2/deployments/{_part(deployment_id)}/check-runs/{_part(run_id)}", json=body)

    # legacy per-deployment checks

    def create_legacy_check(self, deployment_id: str, body: dict) -> str:
        return self.request("POST", f"/v1/deployments/{_part(deployment_id)}/checks", json=body).json()["id"]

    def update_legacy_check(self, deployment_id: str, check_id: str, body: dict) -> None:
        self.request("PATCH", f"/v1/deployments/{_part(deployment_id)}/checks/{_part(check_id)}", json=body)

    # projects and rollbacks

    def project(self, project_id: str) -> dict:
        return self.request("GET", f"/v9/projects/{_part(project_id)}").json()

    def rollback(self, project_id: str, deployment_id: str, *, description: str = "") -> None:
        """Ask Vercel to point production back at ``deployment_id``; it answers at once and
        carries it out as the project's alias request (``project()["lastAliasRequest"]``)."""
        self.request(
            "POST",
            f"/v1/projects/{_part(project_id)}/rollback/{_part(deployment_id)}",
            query={"description": description[:200]} if description else None,
        )


def _part(value: str) -> str:
    """One path segment: an id from a webhook or the database never changes the path."""
    return quote(str(value), safe="")
