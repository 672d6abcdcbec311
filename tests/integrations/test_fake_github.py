"""The fake GitHub refuses what GitHub refuses, and its failure injection works."""

import json
import time

import jwt
import pytest
import requests
from urllib3.util import SKIP_HEADER

from tests.fake_github import FakeGitHub, generate_private_key_pem, load_private_key

REPO = "acme/wedsync"
SHA = "0123456789abcdef0123456789abcdef01234567"


class Client:
    """A requests session on the fake's base URL, sending what a well-behaved client sends."""

    def __init__(self, fake: FakeGitHub, credential: str | None = None):
        self.base = fake.url
        self.session = requests.Session()
        self.session.headers.update(
            {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        )
        if credential:
            self.session.headers["Authorization"] = f"Bearer {credential}"

    def request(self, method, path, **kwargs):
        kwargs.setdefault("timeout", 5)
        return self.session.request(method, self.base + path, **kwargs)

    def get(self, path, **kwargs):
        return self.request("GET", path, **kwargs)

    def post(self, path, **kwargs):
        return self.request("POST", path, **kwargs)

    def patch(self, path, **kwargs):
        return self.request("PATCH", path, **kwargs)


def app_jwt(fake, *, iat_offset=-60, lifetime=600, iss=None, key_pem=None):
    now = int(time.time())
    claims = {"iat": now + iat_offset, "exp": now + iat_offset + lifetime, "iss": iss or str(fake.app_id)}
    return jwt.encode(claims, load_private_key(key_pem or fake.private_key_pem), algorithm="RS256")


def mint_token(fake) -> str:
    response = Client(fake, app_jwt(fake)).post(f"/app/installations/{fake.installation_id}/access_tokens")
    assert response.status_code == 201, response.text
    return response.json()["token"]


@pytest.fixture(scope="session")
def app_key_pem():
    return generate_private_key_pem()


@pytest.fixture
def github(app_key_pem):
    with FakeGitHub(private_key_pem=app_key_pem) as fake:
        yield fake


@pytest.fixture
def bot(github):
    return Client(github, mint_token(github))


@pytest.fixture
def user(github):
    return Client(github, github.pat)


def a_status(**overrides):
    return {"state": "success", "description": "p95 212 ms", "context": "perfgate/staging", **overrides}


def a_check_run(**overrides):
    return {"name": "perfgate", "head_sha": SHA, "status": "in_progress", **overrides}


def annotations(count):
    return [
        {
            "path": "k6/guests.js",
            "start_line": 1,
            "end_line": 1,
            "annotation_level": "warning",
            "message": str(i),
        }
        for i in range(count)
    ]


# -- authentication ------------------------------------------------------------------------------


def test_an_app_jwt_is_exchanged_for_an_installation_token(github):
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 540, "iss": str(github.app_id)}
    app = Client(github, jwt.encode(claims, github.private_key_pem, algorithm="RS256"))
    assert app.get("/app").json()["slug"] == "perfgate-test"

    response = app.post("/app/installations/777/access_tokens")

    assert response.status_code == 201
    body = response.json()
    assert body["token"].startswith("ghs_") and body["repository_selection"] == "selected"
    expires = time.mktime(time.strptime(body["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 3500 < expires - time.time() <= 3600
    assert github.tokens_issued == 1
    assert Client(github, body["token"]).post(f"/repos/{REPO}/statuses/{SHA}", json=a_status()).ok


def test_an_app_jwt_with_an_integer_issuer_is_accepted(github):
    now = int(time.time())
    claims = json.dumps({"iat": now - 60, "exp": now + 540, "iss": github.app_id}).encode()
    token = jwt.PyJWS().encode(claims, github.private_key_pem, algorithm="RS256")

    assert Client(github, token).get("/app").json()["id"] == 4242


def test_a_jwt_valid_for_eleven_minutes_is_refused(github):
    response = Client(github, app_jwt(github, iat_offset=0, lifetime=660)).post(
        "/app/installations/777/access_tokens"
    )

    assert response.status_code == 401
    assert "'Expiration time' claim ('exp') is too far in the future" in response.json()["message"]
    assert github.tokens_issued == 0


def test_each_fake_generates_its_own_key_unless_given_one():
    first, second = FakeGitHub(), FakeGitHub()

    assert first.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    assert first.private_key_pem != second.private_key_pem


def test_a_jwt_signed_by_another_key_is_refused(github):
    other_pem = generate_private_key_pem()

    response = Client(github, app_jwt(github, key_pem=other_pem)).post("/app/installations/777/access_tokens")

    assert response.status_code == 401
    assert github.tokens_issued == 0


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"iss": "999"}, "Integration not found"),
        ({"iat_offset": 120}, "'Issued at' claim ('iat')"),
        ({"iat_offset": -700}, "'Expiration time' claim ('exp') must be a numeric value"),
    ],
    ids=["another app", "issued in the future", "expired"],
)
def test_a_jwt_of_another_app_from_the_future_or_expired_is_refused(github, claims, message):
    response = Client(github, app_jwt(github, **claims)).post("/app/installations/777/access_tokens")

    assert response.status_code == 401
    assert message in response.json()["message"]


def test_a_jwt_within_the_clock_skew_is_accepted(github):
    response = Client(github, app_jwt(github, iat_offset=30, lifetime=600)).get("/app")

    assert response.status_code == 200


def test_the_app_jwt_calls_only_the_app_endpoints_and_tokens_cannot_call_them(github, bot):
    response = Client(github, app_jwt(github)).post(f"/repos/{REPO}/statuses/{SHA}", json=a_status())
    assert response.status_code == 403
    assert github.statuses == {}

    assert bot.get("/app").status_code == 401
    assert bot.post("/app/installations/777/access_tokens").status_code == 401


def test_a_token_for_an_unknown_installation_is_not_found(github):
    response = Client(github, app_jwt(github)).post("/app/installations/778/access_tokens")

    assert response.status_code == 404
    assert github.tokens_issued == 0


def test_expired_installation_tokens_are_refused(github, bot):
    assert bot.post(f"/repos/{REPO}/statuses/{SHA}", json=a_status()).status_code == 201
    github.expire_tokens()

    response = bot.post(f"/repos/{REPO}/statuses/{SHA}", json=a_status())

    assert response.status_code == 401
    assert response.json()["message"] == "Bad credentials"
    assert len(github.statuses[(REPO, SHA)]) == 1


def test_credentials_user_agent_and_api_version_are_enforced(github, bot):
    path = f"/repos/{REPO}/statuses/{SHA}"
    anonymous = Client(github).post(path, json=a_status())
    assert (anonymous.status_code, anonymous.json()["message"]) == (401, "Requires authentication")
    unknown = Client(github, "ghs_madeup").post(path, json=a_status())
    assert (unknown.status_code, unknown.json()["message"]) == (401, "Bad credentials")
    assert unknown.json()["documentation_url"] == "https://docs.github.com/rest"

    no_agent = bot.post(path, json=a_status(), headers={"User-Agent": SKIP_HEADER})
    assert no_agent.status_code == 403 and "User-Agent" in no_agent.json()["message"]
    old_version = bot.post(path, json=a_status(), headers={"X-GitHub-Api-Version": "2021-01-01"})
    assert old_version.status_code == 400
    no_version = bot.post(path, json=a_status(), headers={"X-GitHub-Api-Version": None})
    assert no_version.status_code == 201

    assert [request.status for request in github.requests[1:]] == [401, 401, 403, 400, 201]
    assert len(github.statuses[(REPO, SHA)]) == 1


def test_a_token_accepts_the_token_scheme(github):
    client = Client(github)
    client.session.headers["Authorization"] = f"token {github.pat}"

    assert client.get("/user").json()["login"] == "octo-dev"


def test_a_repository_outside_the_installation_is_not_found(github, bot):
    response = bot.post(f"/repos/acme/other/statuses/{SHA}", json=a_status())

    assert (response.status_code, response.json()["message"]) == (404, "Not Found")


def test_the_pat_acts_as_its_user_and_an_installation_token_cannot_get_the_user(github, user, bot):
    assert user.get("/user").json() | {"id": 0} == {
        "login": "octo-dev",
        "type": "User",
        "id": 0,
        "html_url": "https://github.com/octo-dev",
        "name": "octo-dev",
    }

    response = bot.get("/user")

    assert response.status_code == 403
    assert response.json()["message"] == "Resource not accessible by integration"


def test_unknown_endpoints_are_not_found(bot):
    assert bot.get(f"/repos/{REPO}/pulls").status_code == 404
    assert bot.get(f"/repos/{REPO}/check-runs").status_code == 404


# -- commit statuses -----------------------------------------------------------------------------


def test_a_commit_status_is_recorded_with_its_creator(github, bot):
    response = bot.post(
        f"/repos/{REPO}/statuses/{SHA}", json=a_status(target_url="https://perfgate.test/r/1")
    )

    assert response.status_code == 201
    body = response.json()
    assert body["creator"]["login"] == "perfgate-test[bot]"
    assert (body["state"], body["context"]) == ("success", "perfgate/staging")
    assert github.statuses[(REPO, SHA)] == [body]
    request = github.requests[-1]
    assert request.json == a_status(target_url="https://perfgate.test/r/1")
    assert request.headers["x-github-api-version"] == "2022-11-28"


def test_a_status_description_of_141_characters_is_refused(github, bot):
    assert bot.post(f"/repos/{REPO}/statuses/{SHA}", json=a_status(description="x" * 140)).status_code == 201

    response = bot.post(f"/repos/{REPO}/statuses/{SHA}", json=a_status(description="x" * 141))

    assert response.status_code == 422
    assert response.json()["message"] == "Validation Failed"
    assert response.json()["errors"][0]["field"] == "description"
    assert len(github.statuses[(REPO, SHA)]) == 1


@pytest.mark.parametrize(
    ("sha", "status", "field"),
    [
        (SHA, a_status(state="passed"), "state"),
        (SHA, {"description": "no state"}, "state"),
        (SHA, a_status(target_url="ftp://perfgate.test/r/1"), "target_url"),
        ("abc123", a_status(), "sha"),
    ],
    ids=["unknown state", "missing state", "not an http url", "short sha"],
)
def test_an_invalid_status_is_refused(github, bot, sha, status, field):
    response = bot.post(f"/repos/{REPO}/statuses/{sha}", json=status)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field
    assert github.statuses == {}


def test_a_status_context_defaults_to_default(bot):
    response = bot.post(f"/repos/{REPO}/statuses/{SHA}", json={"state": "pending"})

    assert response.json()["context"] == "default"


def test_malformed_json_is_refused(github, bot):
    response = bot.post(
        f"/repos/{REPO}/statuses/{SHA}", data=b"{'state':", headers={"Content-Type": "application/json"}
    )

    assert (response.status_code, response.json()["message"]) == (400, "Problems parsing JSON")
    assert github.requests[-1].json is None and github.requests[-1].body == b"{'state':"


# -- check runs ----------------------------------------------------------------------------------


def test_the_pat_cannot_create_a_check_run(github, user):
    response = user.post(f"/repos/{REPO}/check-runs", json=a_check_run())

    assert response.status_code == 403
    assert response.json()["message"] == "You must authenticate via a GitHub App."
    assert github.check_runs == {}


def test_a_check_run_completed_without_a_conclusion_is_refused(github, bot):
    response = bot.post(f"/repos/{REPO}/check-runs", json=a_check_run(status="completed"))

    assert response.status_code == 422
    assert response.json()["errors"][0] | {"message": ""} == {
        "resource": "CheckRun",
        "field": "conclusion",
        "code": "missing_field",
        "message": "",
    }
    assert github.check_runs == {}


@pytest.mark.parametrize(
    ("check_run", "field"),
    [
        ({"head_sha": SHA}, "name"),
        ({"name": "perfgate"}, "head_sha"),
        (a_check_run(status="done"), "status"),
        (a_check_run(conclusion="passed"), "conclusion"),
        (a_check_run(output={"title": "p95"}), "output.summary"),
        (a_check_run(details_url="javascript:alert(1)"), "details_url"),
    ],
    ids=["no name", "no head_sha", "unknown status", "unknown conclusion", "no summary", "bad details_url"],
)
def test_an_invalid_check_run_is_refused(github, bot, check_run, field):
    response = bot.post(f"/repos/{REPO}/check-runs", json=check_run)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field
    assert github.check_runs == {}


def test_a_conclusion_completes_a_check_run_and_annotations_accumulate(github, bot):
    output = {"title": "p95 regression", "summary": "p95 +12%", "annotations": annotations(50)}
    created = bot.post(f"/repos/{REPO}/check-runs", json=a_check_run(output=output, external_id="gate-1"))
    assert created.status_code == 201
    check_run_id = created.json()["id"]

    more = {"title": "p95 regression", "summary": "p95 +12%", "annotations": annotations(3)}
    updated = bot.patch(
        f"/repos/{REPO}/check-runs/{check_run_id}", json={"conclusion": "failure", "output": more}
    )

    assert updated.status_code == 200
    assert (updated.json()["status"], updated.json()["conclusion"]) == ("completed", "failure")
    assert updated.json()["output"]["annotations_count"] == 53
    state = github.check_runs[check_run_id]
    assert (state["status"], state["conclusion"], state["external_id"]) == ("completed", "failure", "gate-1")
    assert len(state["annotations"]) == 53 and len(state["history"]) == 2
    assert state["history"][1] == {"conclusion": "failure", "output": more}


def test_fifty_one_annotations_in_one_request_are_refused(github, bot):
    output = {"title": "p95", "summary": "many", "annotations": annotations(51)}

    response = bot.post(f"/repos/{REPO}/check-runs", json=a_check_run(output=output))

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "output.annotations"
    assert github.check_runs == {}


def test_an_incomplete_annotation_is_refused(github, bot):
    incomplete = annotations(1)[0] | {"annotation_level": "error"}
    output = {"title": "p95", "summary": "s", "annotations": [incomplete]}

    response = bot.post(f"/repos/{REPO}/check-runs", json=a_check_run(output=output))

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "output.annotations[0].annotation_level"


def test_a_summary_of_65536_characters_is_refused(github, bot):
    fits = bot.post(
        f"/repos/{REPO}/check-runs", json=a_check_run(output={"title": "t", "summary": "x" * 65535})
    )
    assert fits.status_code == 201

    response = bot.post(
        f"/repos/{REPO}/check-runs", json=a_check_run(output={"title": "t", "summary": "x" * 65536})
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "output.summary"
    assert list(github.check_runs) == [fits.json()["id"]]


def test_updating_a_check_run_follows_the_same_rules(github, bot, user):
    check_run_id = bot.post(f"/repos/{REPO}/check-runs", json=a_check_run()).json()["id"]

    assert (
        bot.patch(f"/repos/{REPO}/check-runs/{check_run_id}", json={"status": "completed"}).status_code == 422
    )
    assert (
        user.patch(f"/repos/{REPO}/check-runs/{check_run_id}", json={"conclusion": "success"}).status_code
        == 403
    )
    assert bot.patch(f"/repos/{REPO}/check-runs/99999", json={"conclusion": "success"}).status_code == 404
    assert github.check_runs[check_run_id]["status"] == "in_progress"
    assert len(github.check_runs[check_run_id]["history"]) == 1


# -- issue comments ------------------------------------------------------------------------------


def test_comments_paginate_with_a_link_header_across_three_pages(github, bot):
    ids = [github.add_comment(REPO, 12, f"comment {i}") for i in range(5)]
    url = f"{github.url}/repos/{REPO}/issues/12/comments"

    first = bot.get(f"/repos/{REPO}/issues/12/comments", params={"per_page": 2})
    second = requests.get(first.links["next"]["url"], headers=bot.session.headers, timeout=5)
    third = requests.get(second.links["next"]["url"], headers=bot.session.headers, timeout=5)

    assert (
        first.headers["Link"]
        == f'<{url}?per_page=2&page=2>; rel="next", <{url}?per_page=2&page=3>; rel="last"'
    )
    assert second.headers["Link"] == (
        f'<{url}?per_page=2&page=1>; rel="prev", <{url}?per_page=2&page=3>; rel="next", '
        f'<{url}?per_page=2&page=3>; rel="last", <{url}?per_page=2&page=1>; rel="first"'
    )
    assert set(third.links) == {"prev", "first"}
    pages = [[comment["id"] for comment in page.json()] for page in (first, second, third)]
    assert pages == [ids[0:2], ids[2:4], ids[4:]]
    assert first.json()[0]["user"] == {"login": "someone", "type": "User"}


def test_comments_default_to_30_per_page_and_at_most_100(github, bot):
    for i in range(101):
        github.add_comment(REPO, 3, f"comment {i}")

    assert len(bot.get(f"/repos/{REPO}/issues/3/comments").json()) == 30
    assert len(bot.get(f"/repos/{REPO}/issues/3/comments", params={"per_page": 500}).json()) == 100
    assert bot.get(f"/repos/{REPO}/issues/4/comments").json() == []


def test_a_comment_is_written_by_the_token_actor_and_only_the_author_edits_it(github, bot, user):
    created = bot.post(f"/repos/{REPO}/issues/12/comments", json={"body": "perfgate: p95 +12%"})
    assert created.status_code == 201
    comment_id = created.json()["id"]
    assert created.json()["user"] == {"login": "perfgate-test[bot]", "type": "Bot"}

    edited = bot.patch(f"/repos/{REPO}/issues/comments/{comment_id}", json={"body": "perfgate: p95 +3%"})
    assert edited.status_code == 200
    assert github.comments[comment_id]["history"] == ["perfgate: p95 +12%", "perfgate: p95 +3%"]

    not_mine = github.add_comment(REPO, 12, "LGTM", login="reviewer")
    assert bot.patch(f"/repos/{REPO}/issues/comments/{not_mine}", json={"body": "x"}).status_code == 403
    assert user.patch(f"/repos/{REPO}/issues/comments/{comment_id}", json={"body": "x"}).status_code == 403
    assert bot.patch(f"/repos/{REPO}/issues/comments/99999", json={"body": "x"}).status_code == 404
    assert github.comments[not_mine]["body"] == "LGTM"
    assert github.comments[comment_id]["body"] == "perfgate: p95 +3%"


def test_a_comment_body_is_required_and_at_most_65536_characters(github, bot):
    assert bot.post(f"/repos/{REPO}/issues/12/comments", json={"body": "x" * 65536}).status_code == 201
    assert bot.post(f"/repos/{REPO}/issues/12/comments", json={"body": "x" * 65537}).status_code == 422
    assert bot.post(f"/repos/{REPO}/issues/12/comments", json={}).status_code == 422
    assert len(github.comments) == 1


# -- deployment protection rules -----------------------------------------------------------------


def test_a_protection_review_needs_an_installation_token_and_is_recorded_once(github, bot, user):
    path = f"/repos/{REPO}/actions/runs/4321/deployment_protection_rule"
    review = {"environment_name": "production", "state": "approved", "comment": "p95 within budget"}

    refused = user.post(path, json=review)
    assert refused.status_code == 403
    assert refused.json()["message"] == "You must authenticate via a GitHub App."
    assert github.protection_reviews == []

    accepted = bot.post(path, json=review)
    assert (accepted.status_code, accepted.content) == (204, b"")
    assert github.protection_reviews == [{"repo": REPO, "run_id": 4321, **review}]

    again = bot.post(path, json=review | {"state": "rejected"})
    assert again.status_code == 422
    assert len(github.protection_reviews) == 1


@pytest.mark.parametrize(
    ("review", "field"),
    [
        ({"state": "approved"}, "environment_name"),
        ({"environment_name": "production", "state": "waiting"}, "state"),
        ({"environment_name": "production", "state": "rejected", "comment": "x" * 1025}, "comment"),
    ],
    ids=["no environment", "unknown state", "long comment"],
)
def test_an_invalid_protection_review_is_refused(github, bot, review, field):
    response = bot.post(f"/repos/{REPO}/actions/runs/4321/deployment_protection_rule", json=review)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field
    assert github.protection_reviews == []


# -- workflow runs and artifacts -----------------------------------------------------------------


def test_a_dispatch_with_return_run_details_answers_the_run_id(github, bot):
    response = bot.post(
        f"/repos/{REPO}/actions/workflows/performance.yml/dispatches",
        json={"ref": "main", "inputs": {"correlation_id": "c-42", "vus": 10}, "return_run_details": True},
    )

    assert response.status_code == 200
    run_id = response.json()["workflow_run_id"]
    assert response.json()["run_url"] == f"{github.url}/repos/{REPO}/actions/runs/{run_id}"
    run = bot.get(f"/repos/{REPO}/actions/runs/{run_id}").json()
    assert run["display_title"] == "perfgate c-42"
    assert (run["status"], run["conclusion"], run["event"]) == ("queued", None, "workflow_dispatch")
    assert run["path"] == ".github/workflows/performance.yml" and len(run["head_sha"]) == 40
    assert run["artifacts_url"] == f"{github.url}/repos/{REPO}/actions/runs/{run_id}/artifacts"
    assert github.runs[run_id]["inputs"] == {"correlation_id": "c-42", "vus": 10}


def test_a_dispatch_without_return_run_details_answers_204(github, bot):
    response = bot.post(f"/repos/{REPO}/actions/workflows/performance.yml/dispatches", json={"ref": SHA})

    assert (response.status_code, response.content) == (204, b"")
    (dispatch,) = github.dispatches
    assert github.runs[dispatch["run_id"]]["head_sha"] == SHA
    assert github.runs[dispatch["run_id"]]["display_title"] == "Performance"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"inputs": {}}, "ref"),
        ({"ref": "main", "inputs": {f"k{i}": "v" for i in range(26)}}, "inputs"),
        ({"ref": "main", "inputs": {"nested": {"a": 1}}}, "inputs.nested"),
    ],
    ids=["no ref", "26 inputs", "nested input"],
)
def test_an_invalid_dispatch_is_refused(github, bot, body, field):
    response = bot.post(f"/repos/{REPO}/actions/workflows/performance.yml/dispatches", json=body)

    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field
    assert github.runs == {} and github.dispatches == []


def test_listing_runs_filters_and_puts_the_newest_first(github, bot):
    older = github.add_run(REPO, head_sha=SHA)
    newer = github.add_run(REPO, head_sha=SHA, status="in_progress")
    github.add_run(REPO, head_sha="f" * 40)

    response = bot.get(f"/repos/{REPO}/actions/runs", params={"head_sha": SHA, "event": "workflow_dispatch"})

    assert response.json()["total_count"] == 2
    assert [run["id"] for run in response.json()["workflow_runs"]] == [newer, older]
    completed = bot.get(f"/repos/{REPO}/actions/runs", params={"head_sha": SHA, "status": "completed"}).json()
    assert [run["id"] for run in completed["workflow_runs"]] == [older]


def test_an_artifact_download_redirects_to_storage_that_refuses_the_authorization_header(github, bot):
    run_id = github.add_run(REPO, head_sha=SHA, status="in_progress")
    github.complete_run(run_id, artifacts={"perfgate-results": b"PK\x05\x06" + bytes(18)})
    (artifact,) = bot.get(f"/repos/{REPO}/actions/runs/{run_id}/artifacts").json()["artifacts"]
    assert (
        artifact["archive_download_url"]
        == f"{github.url}/repos/{REPO}/actions/artifacts/{artifact['id']}/zip"
    )
    assert artifact["size_in_bytes"] == 22

    followed = bot.session.get(artifact["archive_download_url"], timeout=5)

    # requests keeps Authorization on a same-host redirect, and the storage refuses it.
    assert [r.status_code for r in followed.history] == [302]
    assert followed.status_code == 400 and "<Code>InvalidAuthenticationInfo</Code>" in followed.text
    location = followed.history[0].headers["Location"]
    assert location.startswith(f"{github.url}/blob/")
    blob = requests.get(location, timeout=5)
    assert blob.status_code == 200 and blob.headers["Content-Type"] == "application/zip"
    assert blob.content == b"PK\x05\x06" + bytes(18)


def test_an_artifact_download_needs_a_valid_token(github):
    run_id = github.add_run(REPO, head_sha=SHA)
    github.complete_run(run_id, artifacts={"results": b"zip"})
    (artifact_id,) = github.artifacts

    response = Client(github).get(f"/repos/{REPO}/actions/artifacts/{artifact_id}/zip", allow_redirects=False)

    assert response.status_code == 401 and "Location" not in response.headers


# -- failure injection ---------------------------------------------------------------------------


def test_fail_next_answers_the_injected_status_with_retry_after_and_changes_no_state(github, bot):
    github.fail_next(2, status=503, retry_after=7)
    path = f"/repos/{REPO}/statuses/{SHA}"

    failures = [bot.post(path, json=a_status()) for _ in range(2)]
    success = bot.post(path, json=a_status())

    assert [(r.status_code, r.headers.get("Retry-After")) for r in failures] == [(503, "7"), (503, "7")]
    assert success.status_code == 201
    assert len(github.statuses[(REPO, SHA)]) == 1
    assert [request.status for request in github.requests if request.path == path] == [503, 503, 201]


def test_a_rate_limit_answers_403_with_reset_headers_until_it_passes(github, bot):
    github.rate_limit(0.3)
    path = f"/repos/{REPO}/statuses/{SHA}"

    limited = bot.post(path, json=a_status())

    assert limited.status_code == 403
    assert limited.json()["message"].startswith("API rate limit exceeded")
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert 0 <= int(limited.headers["x-ratelimit-reset"]) - time.time() <= 1.3
    assert (REPO, SHA) not in github.statuses
    time.sleep(0.35)
    assert bot.post(path, json=a_status()).status_code == 201


def test_an_outage_lasts_until_recover_and_spares_blob_storage(github, bot):
    run_id = github.add_run(REPO, head_sha=SHA)
    github.complete_run(run_id, artifacts={"results": b"zip bytes"})
    (artifact_id,) = github.artifacts
    redirect = bot.get(f"/repos/{REPO}/actions/artifacts/{artifact_id}/zip", allow_redirects=False)
    github.outage(502)

    assert [bot.get(f"/repos/{REPO}/actions/runs/{run_id}").status_code for _ in range(3)] == [502] * 3
    assert requests.get(redirect.headers["Location"], timeout=5).content == b"zip bytes"
    github.recover()
    assert bot.get(f"/repos/{REPO}/actions/runs/{run_id}").status_code == 200


def test_a_slow_api_makes_the_client_time_out(github, bot):
    github.slow(0.5)

    with pytest.raises(requests.exceptions.ReadTimeout):
        bot.get("/repos/acme/wedsync/actions/runs", timeout=0.1)

    github.slow(None)
    started = time.monotonic()
    assert bot.get("/repos/acme/wedsync/actions/runs", timeout=0.5).status_code == 200
    assert time.monotonic() - started < 0.5
