"""The admin: configuration is editable and validated; decisions and the audit log are not."""

import pytest
from django.urls import reverse

from gates.models import AuditEvent, ThresholdRule, Validation
from gates.services import validation_evaluate
from tests.factories import make_results, make_validation


@pytest.fixture
def admin_client_logged_in(client, admin_user):
    client.force_login(admin_user)
    return client


def rule_form(project, scenario, **overrides):
    data = {
        "project": project.pk,
        "scenario": scenario.pk,
        "metric": "http_req_duration",
        "kind": "absolute",
        "threshold": "p(95)<400",
        "aggregation": "",
        "warn_pct": "",
        "fail_pct": "",
        "floor": "0",
        "direction": "auto",
        "severity": "key",
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"threshold": "p(101)<400"}, "p(101)"),
        ({"threshold": "p(95)<400ms"}, "400ms"),
        ({"threshold": "count>10"}, "count"),
        ({"metric": "http_req_duration{name:}"}, "name"),
    ],
)
def test_a_rule_with_a_bad_expression_is_rejected_on_save(
    admin_client_logged_in, project, scenario, overrides, message
):
    response = admin_client_logged_in.post(
        reverse("admin:gates_thresholdrule_add"), rule_form(project, scenario, **overrides)
    )
    assert response.status_code == 200
    errors = str(response.context["adminform"].form.errors)
    assert message in errors
    assert not ThresholdRule.objects.exists()


def test_saving_a_rule_in_the_admin_audits_it_with_before_and_after(
    admin_client_logged_in, project, scenario
):
    response = admin_client_logged_in.post(
        reverse("admin:gates_thresholdrule_add"), rule_form(project, scenario)
    )
    assert response.status_code == 302
    rule = ThresholdRule.objects.get()
    response = admin_client_logged_in.post(
        reverse("admin:gates_thresholdrule_change", args=[rule.pk]),
        rule_form(project, scenario, threshold="p(95)<350"),
    )
    assert response.status_code == 302
    created, updated = AuditEvent.objects.filter(action__startswith="config.thresholdrule").order_by("id")
    assert created.action == "config.thresholdrule.created" and created.actor == "user:root"
    assert (
        updated.data["before"]["threshold"] == "p(95)<400"
        and updated.data["after"]["threshold"] == "p(95)<350"
    )


def test_the_rule_list_shows_where_each_rule_came_from(admin_client_logged_in, project, scenario):
    ThresholdRule.objects.create(
        project=project,
        scenario=scenario,
        metric="http_reqs",
        threshold="count>=300",
        config_source="perf/perfgate.yaml",
    )
    page = admin_client_logged_in.get(reverse("admin:gates_thresholdrule_changelist")).content.decode()
    assert "perf/perfgate.yaml" in page


def test_a_validation_is_read_only_with_its_checks_and_reasons(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="c" * 40, actor=actor
    )
    validation = validation_evaluate(validation=validation, results=make_results(p95=450.0), actor=actor)
    url = reverse("admin:gates_validation_change", args=[validation.pk])

    page = admin_client_logged_in.get(url).content.decode()
    assert "450" in page and "above" in page and "blocked" in page
    assert 'name="_save"' not in page

    response = admin_client_logged_in.post(url, {"status": "passed"})
    assert response.status_code == 403
    validation.refresh_from_db()
    assert validation.status == Validation.Status.BLOCKED
    assert admin_client_logged_in.get(reverse("admin:gates_validation_add")).status_code == 403


def test_the_audit_log_is_view_only_even_for_superusers(admin_client_logged_in, project, staging, actor):
    make_validation(project=project, environment=staging, build_id="b-1", git_hash="c" * 40, actor=actor)
    event = AuditEvent.objects.get()
    change_url = reverse("admin:gates_auditevent_change", args=[event.pk])
    assert admin_client_logged_in.get(change_url).status_code == 200
    assert admin_client_logged_in.post(change_url, {"reason": "x"}).status_code == 403
    assert (
        admin_client_logged_in.get(reverse("admin:gates_auditevent_delete", args=[event.pk])).status_code
        == 403
    )
    assert admin_client_logged_in.get(reverse("admin:gates_auditevent_add")).status_code == 403


def test_ops_with_the_right_on_the_project_cancel_from_the_admin(client, ops, project, staging, actor):
    from django.contrib.auth.models import Permission
    from guardian.shortcuts import assign_perm

    ops.user_permissions.add(Permission.objects.get(codename="view_validation"))
    validation, _ = make_validation(
        project=project, environment=staging, build_id="b-1", git_hash="c" * 40, actor=actor
    )
    client.force_login(ops)
    changelist = reverse("admin:gates_validation_changelist")
    action = {"action": "cancel", "_selected_action": [str(validation.pk)]}

    client.post(changelist, action, follow=True)
    validation.refresh_from_db()
    assert validation.status == "queued"  # no right on this project yet

    assign_perm("gates.block_deployment", ops, project)
    response = client.post(changelist, action, follow=True)
    validation.refresh_from_db()
    assert validation.status == "failed" and "cancelled in the admin" in validation.status_reason
    assert "cancel requested" in response.content.decode()
    assert AuditEvent.objects.filter(action="validation.cancelled", actor="user:olivia-ops").exists()
