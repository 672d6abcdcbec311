"""The OpenAPI schema tells the truth: schemathesis generates requests for every operation from
the schema itself and checks every response against it (no 5xx, documented status codes,
bodies and headers that match, invalid input refused).

One check is left out: "a schema-valid request is accepted". The schema states shapes; whether
a scenario exists, a host is in the allowlist or a k6 expression means anything is decided by
the gate and answered with a documented 400, which is the right answer, not a schema lie."""

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings

from gates.services import validation_evaluate
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation


@pytest.fixture
def ops_token(project, ops, actor):
    # Something to find: a passed, a blocked and a queued validation.
    for build, p95 in (("gha-1", 200.0), ("gha-2", 9000.0)):
        validation, _ = make_validation(
            project=project,
            environment=project.environments.get(name="staging"),
            build_id=build,
            git_hash="a" * 40,
            actor=actor,
        )
        validation_evaluate(validation=validation, results=make_results(p95=p95), actor=actor)
    make_validation(
        project=project,
        environment=project.environments.get(name="production"),
        build_id="gha-3",
        git_hash="b" * 40,
        actor=actor,
    )
    return make_token(project, "ops", owner=ops)[1]


@pytest.fixture
def api_schema(db, ops_token):
    # As Django's test client does: the test's transaction must outlive each request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
# Derandomized: the same examples every run, so a finding is reproducible and CI never flakes on
# a query-string false positive (a string "0" and the integer 0 look alike in a URL).
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_schema(case, ops_token):
    case.call_and_validate(
        headers={"Authorization": f"Bearer {ops_token}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


# Alertmanager's body is parsed tolerantly on purpose (newer senders add fields): its schema lets
# unknown fields through, and that is the truth.
TOLERANT_PATHS = ("/api/ci-cd/performance/alerts",)


def request_bodies(schema: dict) -> dict[str, dict]:
    """Every request body of the CI API, and every object it nests, by component name (but the
    tolerant ones)."""
    components = schema["components"]["schemas"]
    pending = [
        media["schema"]["$ref"]
        for path, operations in schema["paths"].items()
        if path.startswith("/api/ci-cd/performance/") and path not in TOLERANT_PATHS
        for operation in operations.values()
        for media in operation.get("requestBody", {}).get("content", {}).values()
    ]
    found: dict[str, dict] = {}
    while pending:
        name = pending.pop().rsplit("/", 1)[1]
        if name in found or components[name].get("type") != "object":
            continue
        found[name] = components[name]
        for field in components[name]["properties"].values():
            pending.extend(
                option["$ref"]
                for option in [field, *field.get("allOf", []), *field.get("oneOf", [])]
                if "$ref" in option
            )
    return found


def test_the_schema_says_that_unknown_fields_are_refused(client, db):
    bodies = request_bodies(client.get("/api/schema/?format=json").json())
    assert {"ValidateRequestRequest", "TestConfigRequest", "DeploymentContextRequest"} <= set(bodies)
    assert {name: body.get("additionalProperties") for name, body in bodies.items()} == dict.fromkeys(
        bodies, False
    )


@pytest.mark.parametrize("operation", ["validate", "baseline", "block", "bypass", "cancel"])
def test_an_unknown_field_is_refused_as_the_schema_says(ops_token, operation):
    api = Api(ops_token)
    response = api.post(f"/api/ci-cd/performance/{operation}", {"unexpected": 1})
    assert response.status_code == 400
    assert response.json()["fields"]["unexpected"] == ["Unknown field."]
