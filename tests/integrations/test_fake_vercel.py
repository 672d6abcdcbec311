"""The fake Vercel refuses what Vercel refuses, follows rollbacks to their end, and fails on purpose."""

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import requests

from tests.fake_vercel import (
    PROJECT_ID,
    TEAM_ID,
    FakeVercel,
    load_webhook_fixture,
    send_webhook,
    signed_webhook,
    webhook_signature,
)

SHA = "3f6c1e0d9b7a4c2e8f1a5b6c7d8e9f0a1b2c3d4e"


class Client:
    """A requests session on the fake's base URL that sends the token and, by default, the team."""

    def __init__(self, fake: FakeVercel, token: str | None = None, *, team: bool = True):
        self.base = fake.url
        self.params = dict(fake.team_query) if team else {}
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, path, *, params=None, **kwargs):
        kwargs.setdefault("timeout", 5)
        return self.session.request(
            method, self.base + path, params={**self.params, **(params or {})}, **kwargs
        )

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self.request("PATCH", path, **kwargs)


@pytest.fixture
def vercel():
    with FakeVercel(projects={PROJECT_ID: "wedsync-web", "prj_other": "other-site"}) as fake:
        yield fake


@pytest.fixture
def integration(vercel):
    return Client(vercel, vercel.token)


@pytest.fixture
def personal(vercel):
    return Client(vercel, vercel.personal_token)


@pytest.fixture
def deployment(vercel):
    return vercel.add_deployment(target=None, sha=SHA)


def a_check(**overrides):
    return {"name": "perfgate", "blocking": True, "rerequestable": True, **overrides}


def create_check(client, deployment_id, **overrides):
    response = client.post(f"/v1/deployments/{deployment_id}/checks", json=a_check(**overrides))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create_run(vercel, client, deployment_id, **check_fields):
    check = client.post(f"/v2/projects/{PROJECT_ID}/checks", json={"name": "perfgate", **check_fields})
    assert check.status_code == 200, check.text
    run = client.post(f"/v2/deployments/{deployment_id}/check-runs", json={"checkId": check.json()["id"]})
    assert run.status_code == 200, run.text
    return run.json()["id"]


def error(response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


# -- authentication and the team -----------------------------------------------------------------


def test_a_request_without_a_token_is_forbidden(vercel, deployment):
    response = Client(vercel).get(f"/v13/deployments/{deployment}")

    assert response.status_code == 403
    assert response.json() == {"error": {"code": "forbidden", "message": "Not authorized"}}
    assert vercel.requests[-1].token is None


@pytest.mark.parametrize(
    "authorization", ["Bearer vca_madeup", "token {token}"], ids=["unknown", "not bearer"]
)
def test_an_unknown_token_or_scheme_is_forbidden_and_flagged_invalid(vercel, deployment, authorization):
    client = Client(vercel)
    client.session.headers["Authorization"] = authorization.format(token=vercel.token)

    response = client.get(f"/v13/deployments/{deployment}")

    assert error(response) == (403, "forbidden")
    assert response.json()["error"]["invalidToken"] is True


def test_every_call_must_name_the_team_and_only_this_team(vercel, integration, deployment):
    path = f"/v1/deployments/{deployment}/checks"
    without_team = Client(vercel, vercel.token, team=False)

    assert error(without_team.post(path, json=a_check())) == (403, "forbidden")
    assert error(integration.post(path, json=a_check(), params={"teamId": "team_someoneelse"})) == (
        403,
        "forbidden",
    )
    assert error(without_team.get(f"/v9/projects/{PROJECT_ID}", params={"slug": "not-acme"})) == (
        403,
        "forbidden",
    )
    assert vercel.checks == {}

    by_slug = without_team.post(path, json=a_check(), params={"slug": "acme"})
    assert by_slug.status_code == 200
    assert integration.post(path, json=a_check()).status_code == 200
    assert vercel.requests[-1].query == {"teamId": TEAM_ID}


def test_a_personal_account_refuses_a_team_id():
    with FakeVercel(team_id=None) as fake:
        deployment = fake.add_deployment()
        client = Client(fake, fake.token)

        assert client.get(f"/v13/deployments/{deployment}").status_code == 200
        refused = client.get(f"/v13/deployments/{deployment}", params={"teamId": TEAM_ID})
        assert error(refused) == (403, "forbidden")


def test_requests_are_recorded_without_the_token(vercel, integration, personal, deployment):
    integration.post(f"/v1/deployments/{deployment}/checks", json=a_check())
    personal.get(f"/v13/deployments/{deployment}")

    created, read = vercel.requests
    assert (created.method, created.path, created.status, created.token) == (
        "POST",
        f"/v1/deployments/{deployment}/checks",
        200,
        "integration",
    )
    assert created.json == a_check() and created.query == {"teamId": TEAM_ID}
    assert created.headers["authorization"] == "Bearer [redacted]"
    assert (read.token, read.status) == ("personal", 200)
    assert vercel.token not in repr(vercel.requests) and vercel.personal_token not in repr(vercel.requests)


def test_unknown_endpoints_are_not_found_and_other_methods_unknown(vercel, integration, deployment):
    assert error(integration.get("/v1/teams")) == (404, "not_found")
    wrong_method = integration.patch(f"/v13/deployments/{deployment}", json={})
    assert error(wrong_method) == (405, "method_unknown")
    assert wrong_method.json()["error"]["message"] == "This endpoint only responds to GET"


def test_malformed_json_is_a_bad_request(vercel, integration, deployment):
    response = integration.post(
        f"/v1/deployments/{deployment}/checks", data=b"{'name':", headers={"Content-Type": "application/json"}
    )

    assert error(response) == (400, "bad_request")
    assert vercel.checks == {} and vercel.requests[-1].json is None


# -- legacy checks -------------------------------------------------------------------------------


def test_a_legacy_check_is_registered_then_running_then_concluded(vercel, integration, deployment):
    created = integration.post(
        f"/v1/deployments/{deployment}/checks",
        json=a_check(detailsUrl="https://perfgate.example.com/v/1", externalId="v-1", path="/"),
    )
    assert created.status_code == 200
    check = created.json()
    assert (check["status"], check["conclusion"], check["blocking"]) == ("registered", None, True)
    assert check["id"].startswith("chk_") and check["deploymentId"] == deployment
    assert check["integrationId"] == vercel.integration_id and check["rerequestable"] is True
    path = f"/v1/deployments/{deployment}/checks/{check['id']}"
    assert integration.get(f"/v13/deployments/{deployment}").json()["checksState"] == "registered"

    running = integration.patch(path, json={"status": "running"})
    assert (running.status_code, running.json()["status"]) == (200, "running")
    assert running.json()["startedAt"] is not None
    concluded = integration.patch(
        path, json={"conclusion": "succeeded", "detailsUrl": "https://perfgate.example.com/v/2"}
    )

    assert concluded.status_code == 200
    body = concluded.json()
    assert (body["status"], body["conclusion"], body["detailsUrl"]) == (
        "completed",
        "succeeded",
        "https://perfgate.example.com/v/2",
    )
    assert body["completedAt"] >= body["startedAt"]
    assert integration.get(path).json() == body
    assert integration.get(f"/v1/deployments/{deployment}/checks").json() == {"checks": [body]}
    summary = integration.get(f"/v13/deployments/{deployment}").json()
    assert (summary["checksState"], summary["checksConclusion"]) == ("completed", "succeeded")
    assert len(vercel.checks[check["id"]]["history"]) == 3


def test_the_legacy_checks_api_refuses_a_personal_token_for_writes(vercel, integration, personal, deployment):
    refused = personal.post(f"/v1/deployments/{deployment}/checks", json=a_check())
    assert error(refused) == (400, "bad_request")
    assert "OAuth2" in refused.json()["error"]["message"]
    assert vercel.checks == {}

    check_id = create_check(integration, deployment)
    path = f"/v1/deployments/{deployment}/checks/{check_id}"
    assert error(personal.patch(path, json={"status": "running"})) == (400, "bad_request")
    assert vercel.checks[check_id]["status"] == "registered"
    assert personal.get(path).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"blocking": True}, "name"),
        ({"name": "perfgate"}, "blocking"),
        (a_check(blocking="true"), "blocking"),
        (a_check(name="x" * 101), "name"),
        (a_check(path="/" + "x" * 255), "path"),
        (a_check(detailsUrl="javascript:alert(1)"), "detailsUrl"),
        (a_check(rerequestable="yes"), "rerequestable"),
        (a_check(externalId=42), "externalId"),
    ],
    ids=[
        "no name",
        "no blocking",
        "blocking a string",
        "long name",
        "long path",
        "bad detailsUrl",
        "rerequestable a string",
        "externalId a number",
    ],
)
def test_an_invalid_legacy_check_is_refused(vercel, integration, deployment, body, field):
    response = integration.post(f"/v1/deployments/{deployment}/checks", json=body)

    assert error(response) == (400, "bad_request")
    assert f"`{field}`" in response.json()["error"]["message"]
    assert vercel.checks == {}


def test_a_check_name_of_100_characters_and_a_path_of_255_fit(integration, deployment):
    response = integration.post(
        f"/v1/deployments/{deployment}/checks", json=a_check(name="x" * 100, path="/" + "x" * 254)
    )

    assert response.status_code == 200


def test_a_legacy_check_needs_a_body_and_a_known_deployment(vercel, integration, deployment):
    assert error(integration.post(f"/v1/deployments/{deployment}/checks")) == (400, "bad_request")
    assert error(integration.post("/v1/deployments/dpl_missing/checks", json=a_check())) == (404, "not_found")
    check_id = create_check(integration, deployment)
    other = vercel.add_deployment(target=None)
    assert error(
        integration.patch(f"/v1/deployments/{other}/checks/{check_id}", json={"status": "running"})
    ) == (
        404,
        "not_found",
    )
    assert error(integration.get(f"/v1/deployments/{deployment}/checks/chk_missing")) == (404, "not_found")


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([{"status": "registered"}], "`status`"),
        ([{"conclusion": "stale"}], "`conclusion`"),
        ([{"conclusion": "passed"}], "`conclusion`"),
        ([{"status": "completed"}], "requires a `conclusion`"),
        ([{"status": "running", "conclusion": "failed"}], "only be set with status `completed`"),
        ([{"conclusion": "failed"}, {"status": "running"}], "already completed"),
        ([{"conclusion": "failed"}, {"conclusion": "succeeded"}], "already completed"),
        ([{"output": {"metrics": {"p95": {"value": 212, "source": "web-vitals"}}}}], "`output.metrics`"),
        (
            [{"output": {"metrics": {"LCP": {"value": "fast", "source": "web-vitals"}}}}],
            "`output.metrics.LCP.value`",
        ),
    ],
    ids=[
        "back to registered",
        "stale is Vercel's",
        "unknown conclusion",
        "completed without conclusion",
        "conclusion while running",
        "running after completed",
        "second conclusion",
        "unknown metric",
        "metric not a number",
    ],
)
def test_an_invalid_legacy_check_update_is_refused(vercel, integration, deployment, updates, message):
    check_id = create_check(integration, deployment)
    path = f"/v1/deployments/{deployment}/checks/{check_id}"
    *accepted, last = updates
    for update in accepted:
        assert integration.patch(path, json=update).status_code == 200
    before = dict(vercel.checks[check_id])

    response = integration.patch(path, json=last)

    assert error(response) == (400, "bad_request")
    assert message in response.json()["error"]["message"]
    assert vercel.checks[check_id] == before


def test_web_vitals_output_is_accepted(integration, deployment):
    check_id = create_check(integration, deployment)
    output = {"metrics": {"LCP": {"value": 1200, "previousValue": 1000, "source": "web-vitals"}}}

    response = integration.patch(f"/v1/deployments/{deployment}/checks/{check_id}", json={"output": output})

    assert response.json()["output"] == output and response.json()["status"] == "registered"


def test_a_completed_check_runs_again_only_after_a_rerequest(vercel, integration, deployment):
    check_id = create_check(integration, deployment)
    path = f"/v1/deployments/{deployment}/checks/{check_id}"
    assert integration.patch(path, json={"conclusion": "failed"}).status_code == 200

    vercel.rerequest_check(check_id)

    assert integration.get(path).json()["status"] == "registered"
    assert integration.patch(path, json={"status": "running"}).json()["status"] == "running"
    assert integration.patch(path, json={"conclusion": "succeeded"}).json()["conclusion"] == "succeeded"
    rerun = integration.post(f"{path}/rerequest", params={"autoUpdate": "true"})
    assert (rerun.status_code, integration.get(path).json()["status"]) == (200, "running")


def test_a_check_that_is_not_rerequestable_cannot_be_rerequested(vercel, integration, deployment):
    check_id = create_check(integration, deployment, rerequestable=False)
    path = f"/v1/deployments/{deployment}/checks/{check_id}"
    integration.patch(path, json={"conclusion": "failed"})

    assert error(integration.post(f"{path}/rerequest")) == (400, "bad_request")
    with pytest.raises(ValueError, match="not rerequestable"):
        vercel.rerequest_check(check_id)
    assert vercel.checks[check_id]["conclusion"] == "failed"


def test_only_a_failed_or_canceled_blocking_check_concludes_the_deployments_checks(integration, deployment):
    blocking = create_check(integration, deployment)
    advisory = create_check(integration, deployment, name="lighthouse", blocking=False)
    integration.patch(f"/v1/deployments/{deployment}/checks/{advisory}", json={"conclusion": "failed"})
    assert integration.get(f"/v13/deployments/{deployment}").json()["checksState"] == "registered"
    integration.patch(f"/v1/deployments/{deployment}/checks/{blocking}", json={"conclusion": "succeeded"})
    assert integration.get(f"/v13/deployments/{deployment}").json()["checksConclusion"] == "succeeded"

    canceled = create_check(integration, deployment, name="perfgate-production")
    integration.patch(f"/v1/deployments/{deployment}/checks/{canceled}", json={"conclusion": "canceled"})

    assert integration.get(f"/v13/deployments/{deployment}").json()["checksConclusion"] == "canceled"


# -- project checks and check runs ---------------------------------------------------------------


def test_a_check_run_goes_from_queued_to_running_to_completed(vercel, integration, deployment):
    check = integration.post(
        "/v2/projects/wedsync-web/checks",
        json={
            "name": "perfgate",
            "requires": "deployment-url",
            "blocks": "deployment-promotion",
            "targets": ["production"],
            "isRerequestable": True,
            "timeout": 900,
        },
    )
    assert check.status_code == 200
    definition = check.json()
    assert definition["projectId"] == PROJECT_ID and definition["sourceKind"] == "integration"
    assert definition["source"] == {
        "kind": "integration",
        "integrationId": vercel.integration_id,
        "integrationConfigurationId": vercel.configuration_id,
    }
    assert integration.get(f"/v2/projects/{PROJECT_ID}/checks").json() == {"checks": [definition]}
    assert integration.get(f"/v2/projects/{PROJECT_ID}/checks/{definition['id']}").json() == definition

    created = integration.post(f"/v2/deployments/{deployment}/check-runs", json={"checkId": definition["id"]})
    assert created.status_code == 200
    run = created.json()
    assert (run["status"], run["checkId"], run["name"], run["timeout"]) == (
        "queued",
        definition["id"],
        "perfgate",
        900,
    )
    path = f"/v2/deployments/{deployment}/check-runs/{run['id']}"

    assert integration.patch(path, json={"status": "running"}).json()["status"] == "running"
    completed = integration.patch(
        path,
        json={
            "conclusion": "failed",
            "conclusionText": "p95 412 ms > 300 ms",
            "externalUrl": "https://perfgate.example.com/v/1",
            "externalId": "v-1",
            "output": {"p95": 412},
        },
    )

    assert completed.status_code == 200
    body = completed.json()
    assert (body["status"], body["conclusion"], body["conclusionText"]) == (
        "completed",
        "failed",
        "p95 412 ms > 300 ms",
    )
    assert body["completedAt"] >= body["createdAt"]
    assert integration.get(path).json() == body
    assert integration.get(f"/v2/deployments/{deployment}/check-runs").json() == {"runs": [body]}


def test_a_check_run_can_conclude_timeout_and_runs_again_after_a_rerequest(vercel, integration, deployment):
    run_id = create_run(vercel, integration, deployment)
    path = f"/v2/deployments/{deployment}/check-runs/{run_id}"
    assert integration.patch(path, json={"conclusion": "timeout"}).json()["status"] == "completed"
    assert error(integration.patch(path, json={"status": "running"})) == (400, "bad_request")

    vercel.rerequest_check(run_id)

    assert integration.get(path).json()["status"] == "queued"
    assert integration.patch(path, json={"status": "completed", "conclusion": "succeeded"}).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"requires": "deployment-url"}, "name"),
        ({"name": "perfgate", "requires": "deployment-ready"}, "requires"),
        ({"name": "perfgate", "blocks": "deployment"}, "blocks"),
        ({"name": "perfgate", "targets": "production"}, "targets"),
        ({"name": "perfgate", "timeout": 0}, "timeout"),
        ({"name": "perfgate", "isRerequestable": "yes"}, "isRerequestable"),
        (
            {"name": "perfgate", "source": {"kind": "git-provider", "provider": "github"}},
            "source.externalCheckName",
        ),
        (
            {
                "name": "perfgate",
                "source": {"kind": "git-provider", "provider": "svn", "externalCheckName": "x"},
            },
            "source.provider",
        ),
        ({"name": "perfgate", "source": {"kind": "integration"}}, "source.integrationId"),
        ({"name": "perfgate", "source": {"kind": "cron"}}, "source.kind"),
    ],
    ids=[
        "no name",
        "unknown requires",
        "unknown blocks",
        "targets a string",
        "zero timeout",
        "isRerequestable a string",
        "git check without name",
        "unknown git provider",
        "integration without ids",
        "unknown source",
    ],
)
def test_an_invalid_project_check_is_refused(vercel, integration, body, field):
    response = integration.post(f"/v2/projects/{PROJECT_ID}/checks", json=body)

    assert error(response) == (400, "bad_request")
    assert f"`{field}`" in response.json()["error"]["message"]
    assert vercel.project_checks == {}


def test_a_personal_token_must_say_where_a_project_check_comes_from(vercel, personal):
    refused = personal.post(f"/v2/projects/{PROJECT_ID}/checks", json={"name": "perfgate"})
    assert error(refused) == (400, "bad_request") and vercel.project_checks == {}

    webhook = personal.post(
        f"/v2/projects/{PROJECT_ID}/checks", json={"name": "perfgate", "source": {"kind": "webhook"}}
    )

    assert webhook.status_code == 200 and webhook.json()["sourceKind"] == "webhook"
    assert error(personal.post("/v2/projects/prj_missing/checks", json={"name": "x"})) == (404, "not_found")


def test_a_check_run_needs_a_check_of_the_deployments_project(vercel, integration, deployment):
    foreign = integration.post("/v2/projects/prj_other/checks", json={"name": "perfgate"}).json()["id"]
    path = f"/v2/deployments/{deployment}/check-runs"

    assert error(integration.post(path, json={})) == (400, "bad_request")
    assert error(integration.post(path, json={"checkId": "chk_missing"})) == (404, "not_found")
    assert error(integration.post(path, json={"checkId": foreign})) == (404, "not_found")
    assert error(integration.post("/v2/deployments/dpl_missing/check-runs", json={"checkId": foreign})) == (
        404,
        "not_found",
    )
    assert vercel.check_runs == {}


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([{"status": "done"}], "`status`"),
        ([{"conclusion": "stale"}], "`conclusion`"),
        ([{"status": "completed"}], "requires a `conclusion`"),
        ([{"status": "running"}, {"status": "queued"}], "cannot go back"),
        ([{"conclusion": "succeeded"}, {"conclusion": "failed"}], "already completed"),
        ([{"externalUrl": "ftp://perfgate.example.com/v/1"}], "`externalUrl`"),
        ([{"conclusionText": 42}], "`conclusionText`"),
        ([{"output": ["p95"]}], "`output`"),
        ([{"completedAt": "now"}], "`completedAt`"),
    ],
    ids=[
        "unknown status",
        "unknown conclusion",
        "completed without conclusion",
        "back to queued",
        "second conclusion",
        "bad externalUrl",
        "conclusionText a number",
        "output a list",
        "completedAt a string",
    ],
)
def test_an_invalid_check_run_update_is_refused(vercel, integration, deployment, updates, message):
    run_id = create_run(vercel, integration, deployment)
    path = f"/v2/deployments/{deployment}/check-runs/{run_id}"
    *accepted, last = updates
    for update in accepted:
        assert integration.patch(path, json=update).status_code == 200
    before = dict(vercel.check_runs[run_id])

    response = integration.patch(path, json=last)

    assert error(response) == (400, "bad_request")
    assert message in response.json()["error"]["message"]
    assert vercel.check_runs[run_id] == before


# -- deployments ---------------------------------------------------------------------------------


def test_a_deployment_is_found_by_id_or_by_url(vercel, integration):
    preview = vercel.add_deployment(target=None, sha=SHA, url="wedsync-web-k3j9x2mq7-acme.vercel.app")

    by_id = integration.get(f"/v13/deployments/{preview}").json()
    by_url = integration.get("/v13/deployments/wedsync-web-k3j9x2mq7-acme.vercel.app").json()
    by_https = integration.get("/v13/deployments/https%3A%2F%2Fwedsync-web-k3j9x2mq7-acme.vercel.app").json()

    assert by_id == by_url == by_https
    assert (by_id["id"], by_id["target"], by_id["readyState"]) == (preview, None, "READY")
    assert by_id["meta"]["githubCommitSha"] == SHA and by_id["projectId"] == PROJECT_ID
    assert isinstance(by_id["createdAt"], int) and by_id["team"]["id"] == TEAM_ID
    assert error(integration.get("/v13/deployments/dpl_missing")) == (404, "not_found")


def test_deployments_are_listed_newest_first_and_filtered(vercel, integration):
    old = vercel.add_deployment(created_at=1_000)
    preview = vercel.add_deployment(target=None, created_at=2_000)
    building = vercel.add_deployment(ready_state="BUILDING", created_at=3_000)
    vercel.add_deployment("prj_other", created_at=4_000)

    listed = integration.get("/v6/deployments", params={"projectId": PROJECT_ID}).json()

    assert [d["uid"] for d in listed["deployments"]] == [building, preview, old]
    assert listed["pagination"] == {"count": 3, "next": None, "prev": 3_000}
    first = listed["deployments"][0]
    assert (first["state"], first["readyState"], first["created"], first["target"]) == (
        "BUILDING",
        "BUILDING",
        3_000,
        "production",
    )
    production = integration.get(
        "/v6/deployments", params={"projectId": "wedsync-web", "target": "production"}
    )
    assert [d["uid"] for d in production.json()["deployments"]] == [building, old]
    previews = integration.get("/v6/deployments", params={"projectId": PROJECT_ID, "target": "preview"})
    assert [d["uid"] for d in previews.json()["deployments"]] == [preview]
    ready = integration.get("/v7/deployments", params={"projectId": PROJECT_ID, "state": "READY,ERROR"})
    assert [d["uid"] for d in ready.json()["deployments"]] == [preview, old]
    candidates = integration.get(
        "/v6/deployments", params={"projectId": PROJECT_ID, "rollbackCandidate": "true"}
    )
    assert [d["uid"] for d in candidates.json()["deployments"]] == [old]


def test_deployments_paginate_with_until_the_next_timestamp(vercel, integration):
    created = [vercel.add_deployment(created_at=1_000 * n) for n in range(1, 6)]
    seen, until, pages = [], None, 0

    for _ in range(10):  # a bug that never ends the pages fails the test instead of hanging it
        params = {"projectId": PROJECT_ID, "limit": 2} | ({"until": until} if until else {})
        page = integration.get("/v6/deployments", params=params).json()
        pages += 1
        seen += [d["uid"] for d in page["deployments"]]
        until = page["pagination"]["next"]
        if until is None:
            break

    assert seen == list(reversed(created)) and pages == 3


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"target": "staging"},
        {"state": "DONE"},
        {"until": "yesterday"},
    ],
    ids=["limit 0", "limit 101", "limit a word", "unknown target", "unknown state", "until a word"],
)
def test_an_invalid_deployment_listing_is_refused(integration, params):
    response = integration.get("/v6/deployments", params=params)

    assert error(response) == (400, "bad_request")


# -- rollback and promote ------------------------------------------------------------------------


def project(client) -> dict:
    response = client.get(f"/v9/projects/{PROJECT_ID}")
    assert response.status_code == 200, response.text
    return response.json()


def test_a_rollback_is_followed_through_the_alias_request_and_turns_off_auto_assignment(vercel, integration):
    good = vercel.add_deployment()
    bad = vercel.add_deployment()
    assert vercel.production_deployment() == bad

    response = integration.post(
        f"/v1/projects/{PROJECT_ID}/rollback/{good}", params={"description": "p95 doubled after deploy"}
    )

    assert (response.status_code, response.content) == (201, b"")
    states = [project(integration) for _ in range(3)]
    assert [state["lastAliasRequest"]["jobStatus"] for state in states] == [
        "pending",
        "in-progress",
        "succeeded",
    ]
    alias_request = states[-1]["lastAliasRequest"]
    assert alias_request | {"requestedAt": 0} == {
        "fromDeploymentId": bad,
        "toDeploymentId": good,
        "jobStatus": "succeeded",
        "requestedAt": 0,
        "type": "rollback",
    }
    assert states[0]["autoAssignCustomDomains"] is False and states[-1]["autoAssignCustomDomains"] is False
    assert states[-1]["targets"]["production"]["id"] == good
    assert states[-1]["rollbackDescription"]["description"] == "p95 doubled after deploy"
    assert vercel.production_deployment() == good

    staged = vercel.add_deployment()
    assert vercel.production_deployment() == good
    assert integration.get(f"/v13/deployments/{staged}").json()["aliasAssigned"] is None


def test_a_promote_undoes_a_rollback_and_turns_auto_assignment_back_on(vercel, integration):
    good = vercel.add_deployment()
    vercel.add_deployment()
    integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{good}")
    vercel.finish_alias_request()
    fix = vercel.add_deployment()

    response = integration.post(f"/v10/projects/{PROJECT_ID}/promote/{fix}")

    assert (response.status_code, response.content) == (201, b"")
    final = [project(integration) for _ in range(3)][-1]
    assert (final["lastAliasRequest"]["type"], final["lastAliasRequest"]["jobStatus"]) == (
        "promote",
        "succeeded",
    )
    assert final["autoAssignCustomDomains"] is True and final["targets"]["production"]["id"] == fix
    newest = vercel.add_deployment()
    assert vercel.production_deployment() == newest


def test_promoting_a_preview_builds_a_new_production_deployment(vercel, integration):
    vercel.add_deployment()
    preview = vercel.add_deployment(target=None, sha=SHA)
    vercel.alias_polls = 0

    response = integration.post(f"/v10/projects/{PROJECT_ID}/promote/{preview}")

    assert response.status_code == 202
    alias_request = project(integration)["lastAliasRequest"]
    rebuilt = integration.get(f"/v13/deployments/{alias_request['toDeploymentId']}").json()
    assert rebuilt["id"] != preview and rebuilt["target"] == "production"
    assert rebuilt["meta"]["githubCommitSha"] == SHA
    assert (alias_request["jobStatus"], vercel.production_deployment()) == ("succeeded", rebuilt["id"])


def test_a_failed_alias_request_leaves_production_where_it_was(vercel, integration):
    good = vercel.add_deployment()
    bad = vercel.add_deployment()
    vercel.alias_outcome = "failed"

    assert integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{good}").status_code == 201

    final = [project(integration) for _ in range(3)][-1]
    assert final["lastAliasRequest"]["jobStatus"] == "failed"
    assert final["targets"]["production"]["id"] == bad and vercel.production_deployment() == bad


def test_a_second_alias_request_while_one_is_unfinished_conflicts(vercel, integration):
    first = vercel.add_deployment()
    second = vercel.add_deployment()
    vercel.add_deployment()
    assert integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{second}").status_code == 201
    assert project(integration)["lastAliasRequest"]["jobStatus"] == "pending"

    response = integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{first}")

    assert error(response) == (409, "conflict")
    assert project(integration)["lastAliasRequest"]["toDeploymentId"] == second


def test_rollbacks_the_api_would_refuse_are_refused(vercel, integration):
    served = vercel.add_deployment()
    failed_build = vercel.add_deployment(ready_state="ERROR")
    preview = vercel.add_deployment(target=None)
    other_project = vercel.add_deployment("prj_other")
    current = vercel.add_deployment()
    never_served = vercel.add_deployment(ready_state="BUILDING")
    vercel.set_ready_state(served, "CANCELED")
    rollback = f"/v1/projects/{PROJECT_ID}/rollback/"

    assert error(integration.post(rollback + preview)) == (422, "not_rollback_candidate")
    assert error(integration.post(rollback + failed_build)) == (422, "deployment_not_ready")
    assert error(integration.post(rollback + served)) == (422, "deployment_not_ready")
    assert error(integration.post(rollback + never_served)) == (422, "deployment_not_ready")
    assert error(integration.post(rollback + current)) == (409, "conflict")
    assert error(integration.post(rollback + other_project)) == (404, "not_found")
    assert error(integration.post(rollback + "dpl_missing")) == (404, "not_found")
    assert error(integration.post(f"/v1/projects/prj_missing/rollback/{current}")) == (404, "not_found")
    final = project(integration)
    assert final["lastAliasRequest"] is None and final["autoAssignCustomDomains"] is True


def test_a_production_deployment_that_never_served_is_not_a_rollback_target(vercel, integration):
    good = vercel.add_deployment()
    vercel.add_deployment()
    integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{good}")
    vercel.finish_alias_request()
    staged = vercel.add_deployment()

    response = integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{staged}")

    assert error(response) == (422, "not_rollback_candidate")


def test_a_hobby_plan_rolls_back_only_to_the_previous_production_deployment():
    with FakeVercel(plan="hobby") as fake:
        older, previous, _current = fake.add_deployment(), fake.add_deployment(), fake.add_deployment()
        client = Client(fake, fake.token)

        refused = client.post(f"/v1/projects/{PROJECT_ID}/rollback/{older}")
        assert error(refused) == (402, "payment_required")
        assert "upgrade to pro" in refused.json()["error"]["message"]
        assert client.post(f"/v1/projects/{PROJECT_ID}/rollback/{previous}").status_code == 201


def test_an_alias_request_can_be_finished_at_once(vercel, integration):
    good = vercel.add_deployment()
    vercel.add_deployment()
    integration.post(f"/v1/projects/{PROJECT_ID}/rollback/{good}")

    vercel.finish_alias_request(outcome="failed")

    assert project(integration)["lastAliasRequest"]["jobStatus"] == "failed"


# -- failure injection ---------------------------------------------------------------------------


def test_fail_next_answers_the_injected_status_and_changes_no_state(vercel, integration, deployment):
    vercel.fail_next(2, status=503, retry_after=7)
    path = f"/v1/deployments/{deployment}/checks"

    failures = [integration.post(path, json=a_check()) for _ in range(2)]
    success = integration.post(path, json=a_check())

    assert [(r.status_code, r.headers.get("Retry-After")) for r in failures] == [(503, "7"), (503, "7")]
    assert failures[0].json()["error"]["code"] == "service_unavailable"
    assert success.status_code == 200 and len(vercel.checks) == 1
    assert [request.status for request in vercel.requests] == [503, 503, 200]


def test_a_forced_429_carries_retry_after_and_vercels_limit_body(vercel, integration, deployment):
    vercel.fail_next(1, status=429, retry_after=3)

    limited = integration.get(f"/v13/deployments/{deployment}")

    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "3")
    assert limited.json()["error"]["code"] == "rate_limited"
    assert set(limited.json()["error"]["limit"]) == {"remaining", "reset", "resetMs", "total"}
    assert integration.get(f"/v13/deployments/{deployment}").status_code == 200


def test_the_rate_limit_counts_per_token_and_lifts_after_the_window(
    vercel, integration, personal, deployment
):
    vercel.rate_limit(2, window_seconds=0.4)
    path = f"/v13/deployments/{deployment}"

    assert [integration.get(path).status_code for _ in range(2)] == [200, 200]
    limited = integration.get(path)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "1" and limited.headers["X-RateLimit-Remaining"] == "0"
    assert limited.headers["X-RateLimit-Limit"] == "2" and limited.json()["error"]["limit"]["total"] == 2
    assert personal.get(path).status_code == 200
    time.sleep(0.45)
    assert integration.get(path).status_code == 200


def test_throttling_answers_429_until_it_passes_or_recover(vercel, integration, deployment):
    vercel.throttle(30)

    limited = integration.get(f"/v13/deployments/{deployment}")

    assert limited.status_code == 429 and 29 <= int(limited.headers["Retry-After"]) <= 30
    vercel.recover()
    assert integration.get(f"/v13/deployments/{deployment}").status_code == 200


def test_an_outage_lasts_until_recover(vercel, integration, deployment):
    vercel.outage(502)

    responses = [integration.get(f"/v13/deployments/{deployment}") for _ in range(3)]

    assert [error(r) for r in responses] == [(502, "bad_gateway")] * 3
    vercel.recover()
    assert integration.get(f"/v13/deployments/{deployment}").status_code == 200


def test_a_slow_api_makes_the_client_time_out(vercel, integration, deployment):
    vercel.slow(0.5)

    with pytest.raises(requests.exceptions.ReadTimeout):
        integration.get(f"/v13/deployments/{deployment}", timeout=0.1)

    vercel.slow(None)
    started = time.monotonic()
    assert integration.get(f"/v13/deployments/{deployment}", timeout=0.5).status_code == 200
    assert time.monotonic() - started < 0.5


# -- webhooks ------------------------------------------------------------------------------------


def test_a_fixture_is_signed_with_the_hex_hmac_sha1_of_its_raw_body():
    body, headers = signed_webhook("deployment.ready", "vercel-secret")

    expected = hmac.new(b"vercel-secret", body, hashlib.sha1).hexdigest()
    assert headers == {"content-type": "application/json", "x-vercel-signature": expected}
    assert len(expected) == 40 and json.loads(body) == load_webhook_fixture("deployment.ready.json")
    assert json.loads(body)["type"] == "deployment.ready"
    assert webhook_signature(body, "another-secret") != expected
    assert webhook_signature(body.replace(b"iad1", b"sfo1", 1), "vercel-secret") != expected
    raw = b'{"id": "whk_1",  "type": "deployment.created"}'
    assert signed_webhook(raw, "s") == (
        raw,
        {"content-type": "application/json", "x-vercel-signature": webhook_signature(raw, "s")},
    )


def test_send_webhook_posts_exactly_the_signed_bytes():
    received = {}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):
            received["body"] = self.rfile.read(int(self.headers["Content-Length"]))
            received["signature"] = self.headers["x-vercel-signature"]
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        response = send_webhook(
            f"http://127.0.0.1:{server.server_address[1]}/hook", "deployment.promoted", "s3cret"
        )
    finally:
        thread.join(5)
        server.server_close()

    assert response.status_code == 202
    assert received["signature"] == hmac.new(b"s3cret", received["body"], hashlib.sha1).hexdigest()
    assert json.loads(received["body"])["id"] == "whk_Pm9q2W5eR8tY3uIo"
