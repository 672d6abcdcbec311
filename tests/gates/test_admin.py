"""The admin: configuration is editable and validated; decisions and the audit log are not."""

import re
from html import unescape

import pytest
from django.contrib import admin
from django.test import RequestFactory
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
    assert "450.0 ms" in page and "above" in page and ">Blocked<" in page
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


def blocked_in(project, staging, actor, *, build_id="b-1", context=None, test_config=None, **results):
    validation, _ = make_validation(
        project=project,
        environment=staging,
        build_id=build_id,
        git_hash="c" * 40,
        actor=actor,
        deployment_context=context,
        test_config=test_config,
    )
    return validation_evaluate(validation=validation, results=make_results(**results), actor=actor)


def field(page: str, name: str) -> str:
    """The text of one read-only field of an admin page (its div.field-<name>)."""
    match = re.search(rf'<div class="[^"]*field-{name}[^"]*">(.*?)</div>\s*</div>', page, re.S)
    assert match, f"no field {name}"
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", match.group(1))).split())


def test_the_checks_show_rounded_values_with_units_and_one_dash_for_none(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    add_rule("http_req_failed", threshold="rate<0.01")
    validation = blocked_in(project, staging, actor, p95=450.123456, failed_rate=0.0234)
    page = admin_client_logged_in.get(reverse("admin:gates_validation_change", args=[validation.pk]))
    html = page.content.decode()
    assert "450.1 ms" in html and "400.0 ms" in html  # observed and limit of the latency rule
    assert "2.3 %" in html and "1.0 %" in html  # an error rate is a percentage
    assert ">1,000<" in html and ">100<" in html  # the load check counts requests
    assert "450.123456" not in html and "0.0234<" not in html
    assert "\u2014" not in html.split('id="content-main"', 1)[1]  # the en dash is the one "none"


def test_a_p_value_is_shown_where_a_test_ran():
    from gates.admin.validations import CheckResultInline
    from gates.models import CheckResult

    inline = CheckResultInline(Validation, admin.site)
    assert inline.p_shown(CheckResult(p_value=0.0312)) == "0.031"
    assert inline.p_shown(CheckResult(p_value=None)) == "\u2013"


def test_json_fields_read_as_labelled_fields_not_raw_json(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    validation = blocked_in(
        project,
        staging,
        actor,
        context={"provider": "github", "pullRequest": 42, "actor": "dev-dana"},
        test_config={"vus": 20, "thresholds": {"http_req_duration": ["p(95)<350", "p(99)<900"]}},
    )
    html = admin_client_logged_in.get(
        reverse("admin:gates_validation_change", args=[validation.pk])
    ).content.decode()
    context = field(html, "deployment_context_shown")
    assert "provider github" in context and "pullRequest 42" in context and "actor dev-dana" in context
    config = field(html, "test_config_shown")
    assert "http_req_duration p(95)<350, p(99)<900" in config
    assert "{" not in context + config and "&quot;" not in context + config


def test_would_block_reads_as_words_red_or_grey_never_a_tick(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    blocked = blocked_in(project, staging, actor, build_id="slow", p95=900.0)
    passed = blocked_in(project, staging, actor, build_id="fast", p95=100.0)
    for validation, shown in ((blocked, "would block"), (passed, "would not block")):
        html = admin_client_logged_in.get(
            reverse("admin:gates_validation_change", args=[validation.pk])
        ).content.decode()
        enforcement = re.search(r'<div class="[^"]*field-enforcement.*?</div>\s*</div>', html, re.S).group(0)
        assert f">{shown}<" in enforcement
        assert ("#cf222e" in enforcement) is (shown == "would block")
        assert "icon-yes" not in enforcement and "icon-no" not in enforcement


def test_statuses_and_verdicts_start_with_a_capital_as_the_filters_do(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    blocked_in(project, staging, actor, p95=900.0)
    html = admin_client_logged_in.get(reverse("admin:gates_validation_changelist")).content.decode()
    assert ">Blocked</strong>" in html and ">Fail</strong>" in html
    assert ">blocked</strong>" not in html and ">fail</strong>" not in html


def test_every_list_filter_is_named_after_what_it_filters(admin_user):
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    vague = []
    for model, model_admin in admin.site._registry.items():
        if model._meta.app_label not in ("gates", "baselines", "integrations"):
            continue
        changelist = model_admin.get_changelist_instance(request)
        for spec in changelist.filter_specs:
            if spec.title in ("name", "api"):
                vague.append(f"{model._meta.label}: {spec.title}")
    assert vague == []


def test_the_why_column_wraps_within_a_capped_width(
    admin_client_logged_in, project, staging, actor, add_rule
):
    add_rule("http_req_duration", threshold="p(95)<400")
    blocked_in(project, staging, actor, p95=900.0)
    html = admin_client_logged_in.get(reverse("admin:gates_validation_changelist")).content.decode()
    assert re.search(r"td\.field-short_reason \{[^}]*white-space: normal;[^}]*max-width: 24em", html)
    assert 'class="perfgate-why"' in html
