"""Emergency bypasses: every rule, through the service, the API and the admin."""

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from baselines.models import Baseline
from baselines.services import baseline_promote
from gates.audit import Actor
from gates.errors import InvalidState, NotPermitted, ServiceError
from gates.models import AuditEvent, BypassApproval, BypassRequest, Validation
from gates.services import (
    bypass_approve,
    bypass_expire_due,
    bypass_reject,
    bypass_request,
    validation_evaluate,
)
from tests.conftest import Api, make_token
from tests.factories import make_results, make_validation


def blocked_validation(project, environment, build="b-1", actor=None, context=None):
    actor = actor or Actor("user", "someone")
    validation, _ = make_validation(
        project=project,
        environment=environment,
        build_id=build,
        git_hash="d" * 40,
        actor=actor,
        deployment_context=context or {"actor": "dev-dana"},
        staging_pass=environment.require_staging_pass,
    )
    return validation_evaluate(validation=validation, results=make_results(p95=900.0), actor=actor)


@pytest.fixture
def slow_rule(add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")


@pytest.fixture
def approvers(project, ops, second_ops):
    for user in (ops, second_ops):
        assign_perm("gates.approve_bypass", user, project)
    return ops, second_ops


@pytest.fixture
def blocked(project, staging, slow_rule):
    validation = blocked_validation(project, staging)
    assert validation.status == "blocked"
    return validation


def ask(validation, actor=None, **kwargs):
    kwargs.setdefault("justification", "Hotfix for the RSVP outage; the slowdown is known and accepted.")
    return bypass_request(validation=validation, actor=actor or Actor("user", "dev-dana"), **kwargs)


def test_an_approved_bypass_lets_the_build_through_and_keeps_its_verdict(blocked, approvers):
    bypass = ask(blocked, ticket_url="https://tickets.example/INC-42")
    bypass_approve(bypass=bypass, approver=approvers[0])

    blocked.refresh_from_db()
    assert (blocked.status, blocked.deployment_allowed, blocked.verdict) == ("bypassed", True, "fail")
    assert "olivia-ops" in blocked.status_reason and "INC-42" in blocked.status_reason
    bypass.refresh_from_db()
    assert bypass.status == "approved" and bypass.decided_by == "olivia-ops"
    actions = list(AuditEvent.objects.filter(action__startswith="bypass.").values_list("action", flat=True))
    assert sorted(actions) == ["bypass.approved", "bypass.requested", "bypass.used"]


def test_a_justification_is_required(blocked):
    with pytest.raises(ServiceError) as error:
        ask(blocked, justification="   ")
    assert "justification" in error.value.fields


@pytest.mark.parametrize(
    ("minutes", "ok"), [(None, True), (1, True), (24 * 60, True), (0, False), (24 * 60 + 1, False)]
)
def test_a_bypass_expires_after_four_hours_by_default_and_a_day_at_most(blocked, minutes, ok):
    if not ok:
        with pytest.raises(ServiceError):
            ask(blocked, expires_in_minutes=minutes)
        return
    bypass = ask(blocked, expires_in_minutes=minutes)
    expected = timedelta(minutes=minutes or 240)
    assert abs(bypass.expires_at - (timezone.now() + expected)) < timedelta(seconds=30)


def test_only_a_blocked_validation_can_be_bypassed(project, staging):
    passed, _ = make_validation(
        project=project, environment=staging, build_id="ok", git_hash="d" * 40, actor=Actor("user", "x")
    )
    validation_evaluate(validation=passed, results=make_results(), actor=Actor("user", "x"))
    with pytest.raises(InvalidState, match=r"(?i)only a blocked"):
        ask(passed)


def test_one_pending_request_per_validation(blocked):
    ask(blocked)
    with pytest.raises(InvalidState, match="already waiting"):
        ask(blocked)


def test_the_requester_cannot_approve_their_own_bypass_even_as_a_superuser(blocked, admin_user):
    bypass = ask(blocked, actor=Actor.for_user(admin_user))
    with pytest.raises(NotPermitted, match="someone else"):
        bypass_approve(bypass=bypass, approver=admin_user)
    assert not BypassApproval.objects.exists()


def test_neither_the_person_named_by_ci_nor_the_tokens_owner_may_approve(project, blocked, approvers):
    ops, second_ops = approvers
    token, _ = make_token(project, "ci", owner=second_ops)
    principal_actor = Actor("token", "ci test token", token.owner_id)
    bypass = ask(blocked, actor=principal_actor, requested_for="olivia-ops")
    for person in (ops, second_ops):
        with pytest.raises(NotPermitted):
            bypass_approve(bypass=bypass, approver=person)
    assert bypass.requester_names == ["dev-dana", "olivia-ops", "oscar-ops"]


def test_the_approver_needs_approve_bypass_on_that_project(blocked, ops, project):
    bypass = ask(blocked)
    with pytest.raises(NotPermitted, match="may not approve"):
        bypass_approve(bypass=bypass, approver=ops)
    assign_perm("gates.approve_bypass", ops, project)
    bypass_approve(bypass=bypass, approver=ops)


def test_approval_on_another_project_does_not_count(blocked, ops):
    from gates.models import Project

    other = Project.objects.create(slug="other", name="Other")
    assign_perm("gates.approve_bypass", ops, other)
    with pytest.raises(NotPermitted):
        bypass_approve(bypass=ask(blocked), approver=ops)


def test_an_expired_or_rejected_or_used_request_cannot_be_approved(project, staging, slow_rule, approvers):
    ops, second_ops = approvers
    expired = ask(blocked_validation(project, staging, "b-expired"), expires_in_minutes=1)
    BypassRequest.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(InvalidState, match="expired"):
        bypass_approve(bypass=expired, approver=ops)

    rejected = ask(blocked_validation(project, staging, "b-rejected"))
    bypass_reject(bypass=rejected, user=ops, reason="not an emergency")
    with pytest.raises(InvalidState, match="rejected"):
        bypass_approve(bypass=rejected, approver=second_ops)
    assert Validation.objects.get(build_id="b-rejected").status == "blocked"

    used = ask(blocked_validation(project, staging, "b-used"))
    bypass_approve(bypass=used, approver=ops)
    with pytest.raises(InvalidState, match="approved"):
        bypass_approve(bypass=used, approver=second_ops)


def test_pending_requests_expire_on_schedule(blocked):
    bypass = ask(blocked, expires_in_minutes=1)
    assert bypass_expire_due(now=timezone.now()) == 0
    assert bypass_expire_due(now=timezone.now() + timedelta(minutes=2)) == 1
    bypass.refresh_from_db()
    assert bypass.status == "expired"
    assert AuditEvent.objects.filter(action="bypass.expired").count() == 1


def test_production_can_require_two_distinct_approvers(project, production, slow_rule, approvers):
    ops, second_ops = approvers
    validation = blocked_validation(project, production, "prod-1")
    bypass = ask(validation)
    assert bypass.required_approvals == 2

    bypass_approve(bypass=bypass, approver=ops)
    validation.refresh_from_db()
    assert validation.status == "blocked"
    with pytest.raises(InvalidState, match="already approved"):
        bypass_approve(bypass=bypass, approver=ops)
    bypass_approve(bypass=bypass, approver=second_ops)
    validation.refresh_from_db()
    assert validation.status == "bypassed"
    assert "olivia-ops, oscar-ops" in validation.status_reason


def test_a_bypassed_build_never_enters_a_baseline(blocked, approvers):
    bypass_approve(bypass=ask(blocked), approver=approvers[0])
    with pytest.raises(InvalidState):
        baseline_promote(validation=blocked, actor=Actor("user", "x"))
    assert not Baseline.objects.exists()


def test_ci_asks_for_a_bypass_through_the_api(project, blocked, ops):
    _, plaintext = make_token(project, "ci", owner=ops)
    response = Api(plaintext).post(
        "/api/ci-cd/performance/bypass",
        {
            "project": "wedsync-web",
            "environment": "staging",
            "buildId": "b-1",
            "requestedBy": "octocat",
            "justification": "Known slowdown, shipping the fix for bookings",
            "ticketUrl": "https://t.example/1",
            "expiresInMinutes": 60,
        },
    )
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["status"], data["requiredApprovals"], data["approvals"]) == ("pending", 1, [])
    bypass = BypassRequest.objects.get()
    assert set(bypass.requester_names) == {"octocat", "dev-dana", "olivia-ops"}


def test_an_auditor_token_cannot_ask_for_a_bypass(auditor_api, blocked):
    response = auditor_api.post(
        "/api/ci-cd/performance/bypass",
        {"project": "wedsync-web", "environment": "staging", "buildId": "b-1", "justification": "x"},
    )
    assert response.status_code == 403


def test_ops_approve_in_the_admin_and_a_superuser_cannot_approve_their_own(
    client, blocked, approvers, admin_user
):
    ops, _ = approvers
    own = ask(blocked, actor=Actor.for_user(admin_user))
    client.force_login(admin_user)
    changelist = reverse("admin:gates_bypassrequest_changelist")
    listing = client.get(changelist).content.decode()
    assert 'value="approve"' not in listing and "someone else must decide" in listing
    client.post(changelist, {"action": "approve", "_selected_action": [str(own.pk)]}, follow=True)
    own.refresh_from_db()
    assert own.status == "pending"

    ops.groups.add(_group("ops"))
    client.force_login(ops)
    response = client.post(changelist, {"action": "approve", "_selected_action": [str(own.pk)]}, follow=True)
    assert "approved; the build may deploy" in response.content.decode()
    blocked.refresh_from_db()
    assert blocked.status == "bypassed"


def approve_bypass_everywhere(user):
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="gates", codename="approve_bypass")
    )


def test_a_model_wide_approve_bypass_right_counts_on_every_project(blocked, ops):
    approve_bypass_everywhere(ops)
    bypass_approve(bypass=ask(blocked), approver=ops)
    blocked.refresh_from_db()
    assert blocked.status == "bypassed"


def test_a_model_wide_approver_is_offered_approve_and_the_service_accepts(client, blocked, ops):
    ops.groups.add(_group("ops"))
    approve_bypass_everywhere(ops)
    bypass = ask(blocked)
    client.force_login(ops)
    changelist = reverse("admin:gates_bypassrequest_changelist")
    assert 'value="approve"' in client.get(changelist).content.decode()
    response = client.post(
        changelist, {"action": "approve", "_selected_action": [str(bypass.pk)]}, follow=True
    )
    assert "approved; the build may deploy" in response.content.decode()
    blocked.refresh_from_db()
    assert blocked.status == "bypassed"


def test_approve_and_reject_are_offered_exactly_when_the_service_would_accept(
    client, project, staging, slow_rule, approvers
):
    ops, second_ops = approvers
    staging.bypass_approvals = 2
    staging.save(update_fields=["bypass_approvals"])
    for user in approvers:
        user.groups.add(_group("ops"))
    changelist = reverse("admin:gates_bypassrequest_changelist")

    def offered(user):
        client.force_login(user)
        listing = client.get(changelist).content.decode()
        return {action for action in ("approve", "reject") if f'value="{action}"' in listing}

    assert offered(ops) == set()  # nothing to decide
    bypass = ask(
        blocked_validation(project, staging),
        actor=Actor("token", "ci"),
        requested_for="olivia-ops",
    )
    assert offered(ops) == set()  # asked on her behalf
    with pytest.raises(NotPermitted):
        bypass_reject(bypass=bypass, user=ops)
    assert offered(second_ops) == {"approve", "reject"}
    bypass_approve(bypass=bypass, approver=second_ops)  # a second approver is still needed
    assert offered(second_ops) == {"reject"}
    with pytest.raises(InvalidState, match="already approved"):
        bypass_approve(bypass=bypass, approver=second_ops)


def test_an_auditor_may_neither_approve_nor_reject(blocked, auditor):
    auditor.groups.add(_group("auditors"))
    bypass = ask(blocked)
    with pytest.raises(NotPermitted, match="may not approve"):
        bypass_approve(bypass=bypass, approver=auditor)
    with pytest.raises(NotPermitted, match="may not approve"):
        bypass_reject(bypass=bypass, user=auditor)


def test_a_person_asks_for_a_bypass_only_with_block_deployment_on_the_project(blocked, ops, project):
    with pytest.raises(NotPermitted, match="may not ask for bypasses of wedsync-web"):
        ask(blocked, actor=Actor.for_user(ops))
    assign_perm("gates.block_deployment", ops, project)
    assert ask(blocked, actor=Actor.for_user(ops)).status == "pending"


def test_a_refused_bypass_request_in_the_admin_is_a_message_not_a_server_error(client, blocked, ops, project):
    ops.groups.add(_group("ops"))
    assign_perm("gates.block_deployment", ops, project)
    ask(blocked)
    client.force_login(ops)
    response = client.post(
        reverse("admin:gates_bypassrequest_add"),
        {
            "validation": str(blocked.pk),
            "justification": "again",
            "ticket_url": "",
            "expires_in_minutes": "60",
        },
        follow=True,
    )
    assert response.status_code == 200 and "already waiting for approval" in response.content.decode()
    assert BypassRequest.objects.count() == 1


def test_a_bypass_can_be_asked_for_in_the_admin(client, blocked, ops, project):
    ops.groups.add(_group("ops"))
    assign_perm("gates.block_deployment", ops, project)
    client.force_login(ops)
    response = client.post(
        reverse("admin:gates_bypassrequest_add"),
        {
            "validation": str(blocked.pk),
            "justification": "Fix for the outage",
            "ticket_url": "",
            "expires_in_minutes": "120",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert "adminform" not in (response.context or {}) or not response.context["adminform"].form.errors, (
        response.context["adminform"].form.errors
    )
    bypass = BypassRequest.objects.get()
    assert bypass.requester_names == ["dev-dana", "olivia-ops"]
    assert bypass.requested_by == "user:olivia-ops"


def _group(name):
    from django.contrib.auth.models import Group

    return Group.objects.get(name=name)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the race needs PostgreSQL's row locks")
@pytest.mark.django_db(transaction=True)
def test_two_ops_approving_at_the_same_moment_make_one_approval(project, staging, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    users = [get_user_model().objects.create_user(f"ops-{i}", is_staff=True) for i in range(2)]
    for user in users:
        assign_perm("gates.approve_bypass", user, project)
    bypass = ask(blocked_validation(project, staging))
    barrier = threading.Barrier(2)
    outcomes = []

    def approve(user):
        barrier.wait()
        try:
            bypass_approve(bypass=bypass, approver=user)
            outcomes.append("approved")
        except InvalidState:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["approved", "refused"]
    assert BypassApproval.objects.count() == 1
    assert AuditEvent.objects.filter(action="bypass.used").count() == 1
