"""Per-project rights in the admin: ops see and act on their projects only; auditors see
everything and change nothing; every action says which right it needs; the audit log filters,
pages and exports."""

import csv
import io
import json

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import RequestFactory
from django.urls import reverse
from guardian.shortcuts import assign_perm

from baselines.models import Baseline
from baselines.services import baseline_pin, baseline_promote
from gates.audit import SYSTEM, Actor
from gates.errors import NotPermitted
from gates.models import AuditEvent, Environment, Project, Scenario, ThresholdRule, Validation
from gates.permissions import may
from gates.services import validation_evaluate
from tests.factories import make_results, make_validation

SCRIPT = "export default function () {}"


@pytest.fixture
def other(db):
    project = Project.objects.create(slug="other-shop", name="Other shop", allowed_hosts=["127.0.0.1"])
    env = Environment.objects.create(project=project, name="staging")
    scenario = Scenario.objects.create(project=project, name="browse", script_text=SCRIPT, is_default=True)
    ThresholdRule.objects.create(project=project, scenario=scenario, metric="http_reqs", threshold="count>=1")
    validation, _ = make_validation(
        project=project, environment=env, build_id="other-1", git_hash="e" * 40, actor=Actor("user", "x")
    )
    validation_evaluate(validation=validation, results=make_results(), actor=Actor("user", "x"))
    return project


@pytest.fixture
def mine(project, staging, add_rule):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation, _ = make_validation(
        project=project, environment=staging, build_id="mine-1", git_hash="f" * 40, actor=Actor("user", "x")
    )
    validation_evaluate(validation=validation, results=make_results(), actor=Actor("user", "x"))
    return project


@pytest.fixture
def ops_client(client, ops, mine):
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.change_thresholds", ops, mine)
    client.force_login(ops)
    return client


def page(client, name, *args, **params):
    return client.get(reverse(name, args=args), params)


@pytest.mark.parametrize("model", ["validation", "thresholdrule", "scenario", "environment", "project"])
def test_ops_of_one_project_do_not_see_another_projects_rows(ops_client, other, model):
    listing = page(ops_client, f"admin:gates_{model}_changelist").content.decode()
    assert "other-shop" not in listing and "other-1" not in listing
    assert "wedsync-web" in listing or "mine-1" in listing


def test_ops_cannot_open_or_change_another_projects_rule(ops_client, other):
    rule = ThresholdRule.objects.get(project=other)
    assert page(ops_client, "admin:gates_thresholdrule_change", rule.pk).status_code in (302, 404)
    mine = ThresholdRule.objects.get(project__slug="wedsync-web")
    assert page(ops_client, "admin:gates_thresholdrule_change", mine.pk).status_code == 200


def test_ops_without_change_thresholds_on_a_project_only_view_its_rules(client, ops, mine):
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", ops, mine)  # sees the project, may not change its rules
    client.force_login(ops)
    rule = ThresholdRule.objects.get(project=mine)
    response = page(client, "admin:gates_thresholdrule_change", rule.pk)
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    posted = client.post(
        reverse("admin:gates_thresholdrule_change", args=[rule.pk]), {"threshold": "p(95)<9999"}
    )
    assert posted.status_code == 403
    rule.refresh_from_db()
    assert rule.threshold == "p(95)<400"


def test_auditors_see_every_project_and_change_nothing(auditor_client, mine, other):
    listing = page(auditor_client, "admin:gates_validation_changelist").content.decode()
    assert "other-1" in listing and "mine-1" in listing
    rule = ThresholdRule.objects.get(project=other)
    response = page(auditor_client, "admin:gates_thresholdrule_change", rule.pk)
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    assert (
        auditor_client.post(reverse("admin:gates_thresholdrule_change", args=[rule.pk]), {}).status_code
        == 403
    )
    assert page(auditor_client, "admin:gates_thresholdrule_add").status_code == 403
    bypasses = page(auditor_client, "admin:gates_bypassrequest_changelist").content.decode()
    assert 'value="approve"' not in bypasses and 'value="reject"' not in bypasses


OUR_APPS = ("gates", "baselines", "integrations", "django_q")


def test_every_admin_action_declares_the_right_it_needs():
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in OUR_APPS:
            continue
        for action, name, _ in model_admin._get_base_actions():
            declared = getattr(action, "allowed_permissions", ())
            where = f"{model._meta.label}: {name}"
            assert declared and "view" not in declared, f"{where} declares no right beyond viewing"
            for permission in declared:
                assert callable(getattr(model_admin, f"has_{permission}_permission", None)), where


def test_auditors_are_offered_no_action_on_any_page(auditor, mine, other):
    auditor.groups.add(Group.objects.get(name="auditors"))
    request = RequestFactory().get("/admin/")
    request.user = auditor
    viewed, offered = set(), set()
    for model, model_admin in admin.site._registry.items():
        if model_admin.has_view_permission(request):
            viewed.add(model._meta.label)
            offered.update(f"{model._meta.label}: {name}" for name in model_admin.get_actions(request))
    assert {"gates.Validation", "baselines.Baseline", "integrations.ApiToken", "django_q.Failure"} <= viewed
    assert offered == set()


def test_only_ops_who_change_thresholds_pin_baselines(client, ops, auditor, mine):
    baseline = baseline_promote(validation=Validation.objects.get(build_id="mine-1"), actor=SYSTEM)
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", ops, mine)  # sees the project, may not change its baselines
    auditor.groups.add(Group.objects.get(name="auditors"))
    for person in (ops, auditor):
        with pytest.raises(NotPermitted, match="may not pin baselines of wedsync-web"):
            baseline_pin(baseline=baseline, actor=Actor.for_user(person))
    changelist = reverse("admin:baselines_baseline_changelist")
    pin = {"action": "pin", "_selected_action": [str(baseline.pk)]}
    client.force_login(ops)
    assert 'value="pin"' not in client.get(changelist).content.decode()
    client.post(changelist, pin, follow=True)
    baseline.refresh_from_db()
    assert not baseline.pinned

    assign_perm("gates.change_thresholds", ops, mine)
    assert 'value="pin"' in client.get(changelist).content.decode()
    response = client.post(changelist, pin, follow=True)
    assert "is pinned" in response.content.decode()
    assert Baseline.objects.get(pk=baseline.pk).pinned
    assert AuditEvent.objects.get(action="baseline.pinned").actor == "user:olivia-ops"


def test_only_superusers_give_rights_on_a_project(client, ops, mine, admin_user):
    ops.groups.add(Group.objects.get(name="ops"))
    ops.user_permissions.add(
        Permission.objects.get(content_type__app_label="gates", codename="change_project")
    )
    assign_perm("gates.change_thresholds", ops, mine)
    change_page = reverse("admin:gates_project_change", args=[mine.pk])
    give_rights = reverse("admin:gates_project_permissions_manage_user", args=[mine.pk, ops.pk])
    client.force_login(ops)
    assert "Object permissions" not in client.get(change_page).content.decode()
    assert client.post(give_rights, {"permissions": ["approve_bypass"]}).status_code == 403
    assert not may(get_user_model().objects.get(pk=ops.pk), "approve_bypass", mine)

    client.force_login(admin_user)
    assert "Object permissions" in client.get(change_page).content.decode()
    assert client.post(give_rights, {"permissions": ["approve_bypass"]}).status_code == 302
    assert may(get_user_model().objects.get(pk=ops.pk), "approve_bypass", mine)


def test_the_audit_log_filters_by_action_project_actor_and_dates(auditor_client, mine, other):
    def rows(**params):
        changelist = page(auditor_client, "admin:gates_auditevent_changelist", **params)
        return list(changelist.context["cl"].result_list)

    assert {e.action for e in rows(action="validation.evaluated")} == {"validation.evaluated"}
    assert {e.project for e in rows(project="other-shop")} == {"other-shop"}
    assert {e.actor for e in rows(actor_kind="user")} == {"user:x"}
    assert rows(created_at__from="2000-01-01", created_at__to="2000-01-02") == []
    today = AuditEvent.objects.latest("id").created_at.date().isoformat()
    assert len(rows(created_at__from=today, created_at__to=today)) == AuditEvent.objects.count()
    assert {e.project for e in rows(q="mine-1")} == {"wedsync-web"}


def test_the_audit_log_never_counts_more_than_it_needs(auditor_client, mine, django_assert_max_num_queries):
    from gates.admin.audit import COUNT_CAP, CappedCountPaginator

    paginator = CappedCountPaginator(AuditEvent.objects.all(), 50)
    assert paginator.count == AuditEvent.objects.count() <= COUNT_CAP
    listing = page(auditor_client, "admin:gates_auditevent_changelist").content.decode()
    assert "Export CSV" in listing and "Export JSON" in listing


def test_the_audit_log_exports_the_filtered_rows_as_csv_and_json(auditor_client, mine, other):
    response = auditor_client.get(
        reverse("admin:gates_auditevent_export", args=["csv"]), {"project": "other-shop"}
    )
    assert response.status_code == 200 and response.streaming
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows and {row["project"] for row in rows} == {"other-shop"}
    assert json.loads(rows[0]["data"]) is not None

    response = auditor_client.get(
        reverse("admin:gates_auditevent_export", args=["json"]), {"action": "validation.evaluated"}
    )
    events = json.loads(b"".join(response.streaming_content))
    assert len(events) == 2 and all(e["action"] == "validation.evaluated" for e in events)
    assert all(len(e["hash"]) == 64 for e in events)


def test_ops_export_only_their_projects_events(ops_client, other):
    response = ops_client.get(reverse("admin:gates_auditevent_export", args=["json"]))
    events = json.loads(b"".join(response.streaming_content))
    assert events and {e["project"] for e in events} <= {"wedsync-web", ""}


def test_the_validation_page_shows_its_chart(auditor_client, mine):
    validation = Validation.objects.get(build_id="mine-1")
    page_html = page(auditor_client, "admin:gates_validation_change", validation.pk).content.decode()
    chart_url = reverse("validation-chart", args=[validation.pk])
    assert chart_url in page_html
    chart = auditor_client.get(chart_url)
    assert chart.status_code == 200 and chart["Content-Type"] == "image/svg+xml"
    assert b"<svg" in chart.content and b"mine-1" in chart.content
