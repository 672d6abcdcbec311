"""Watching production in the admin: watches with their probes charted against the probe
baseline, rollbacks that only someone with trigger_rollback approves or rejects (with a reason),
notices; auditors read everything and act on nothing; the environment's watch policy is edited
and audited like its other policy fields."""

import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.forms import BooleanField
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from gates.audit import SYSTEM, Actor
from gates.charts import ProbeBand, ProbePoint, probe_svg
from gates.models import AuditEvent, Notice, Probe, Project, Rollback, Scenario, Watch
from gates.services import validation_evaluate
from gates.services.rollbacks import rollback_decide
from gates.services.watches import watch_policy
from tests.factories import make_results, make_validation

SVG = "{http://www.w3.org/2000/svg}"
P95 = "http_req_duration|p(95)"
VIEWS = ("view_watch", "view_rollback", "view_notice")


def passed_production(project, production, build_id):
    validation, _ = make_validation(
        project=project,
        environment=production,
        build_id=build_id,
        git_hash=build_id[-1] * 40,
        actor=Actor("user", "ci"),
        staging_pass=True,
    )
    validation = validation_evaluate(validation=validation, results=make_results(), actor=Actor("user", "ci"))
    assert validation.deployment_allowed, validation.status_reason
    return validation


def make_watch(validation, *, state=Watch.State.WATCHING, baseline=None, **fields):
    environment = validation.environment
    now = timezone.now()
    return Watch.objects.create(
        validation=validation,
        project=validation.project,
        environment=environment,
        scenario=environment.project.scenarios.get(name="guest-list"),
        source=Watch.Source.CI,
        target_url="http://127.0.0.1:8001",
        state=state,
        policy=watch_policy(environment),
        baseline=baseline or {},
        baseline_source="3 probes of build b-1 (watch #1)" if baseline else "",
        started_by="token:ci",
        next_probe_at=now,
        ends_at=now + timedelta(minutes=15),
        **fields,
    )


def add_probe(watch, number, outcome, values=None, trigger=Probe.Trigger.SCHEDULE):
    return Probe.objects.create(
        watch=watch,
        number=number,
        trigger=trigger,
        target_url=watch.target_url,
        outcome=outcome,
        verdict={"success": "pass", "failure": "fail"}.get(outcome, ""),
        reason=f"probe {number} was {outcome}",
        values=values or {},
        duration_seconds=10.0,
        started_at=timezone.now(),
    )


@pytest.fixture
def proposed(project, production):
    """Build b-2 degraded in production; b-1, watched and healthy before it, is what a rollback
    goes back to. The environment does not roll back by itself, so the rollback is proposed."""
    healthy = make_watch(passed_production(project, production, "b-1"), state=Watch.State.HEALTHY)
    degraded = make_watch(passed_production(project, production, "b-2"), state=Watch.State.DEGRADED)
    rollback = rollback_decide(
        watch=degraded, trigger=Rollback.Trigger.WATCH, reason="3 failed probes in a row", actor=SYSTEM
    )
    assert rollback.state == Rollback.State.PROPOSED and rollback.target_validation == healthy.validation
    return rollback


@pytest.fixture
def rollback_ops_client(client, ops, project):
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.trigger_rollback", ops, project)
    client.force_login(ops)
    return client


@pytest.fixture
def bypass_ops_client(client, second_ops, project):
    """An operator of the project who may approve bypasses but not roll back."""
    second_ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.approve_bypass", second_ops, project)
    client.force_login(second_ops)
    return client


def url(name, *args):
    return reverse(f"admin:gates_{name}", args=args)


def test_the_ops_and_auditors_groups_may_view_watches_rollbacks_and_notices(db):
    for name in ("ops", "auditors"):
        granted = set(Group.objects.get(name=name).permissions.values_list("codename", flat=True))
        assert set(VIEWS) <= granted, name


def test_ops_with_trigger_rollback_approve_a_proposed_rollback_in_one_click(rollback_ops_client, proposed):
    page = rollback_ops_client.get(url("rollback_change", proposed.pk)).content.decode()
    assert "Approve rollback" in page and url("rollback_approve", proposed.pk) in page

    response = rollback_ops_client.post(url("rollback_approve", proposed.pk), follow=True)

    proposed.refresh_from_db()
    # The project has no Vercel or GitHub connection: the approved rollback cannot be carried out,
    # and the service records that loudly instead of leaving it approved.
    assert proposed.state == Rollback.State.FAILED
    assert "No integration can carry this rollback out" in proposed.detail
    assert proposed.decided_by == "user:olivia-ops" and proposed.decided_at is not None
    approved = AuditEvent.objects.get(action="rollback.approved")
    assert approved.actor == "user:olivia-ops" and approved.data["target_build_id"] == "b-1"
    assert AuditEvent.objects.filter(action="rollback.failed").exists()
    assert "No integration can carry this rollback out" in response.content.decode()
    assert "Approve rollback" not in response.content.decode()


def test_approving_from_the_list_goes_through_the_same_service(rollback_ops_client, proposed):
    listing = rollback_ops_client.get(url("rollback_changelist")).content.decode()
    assert 'value="approve"' in listing and 'value="reject"' in listing
    assert f'formaction="{url("rollback_approve", proposed.pk)}"' in listing

    rollback_ops_client.post(
        url("rollback_changelist"), {"action": "approve", "_selected_action": [proposed.pk]}, follow=True
    )

    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.FAILED and proposed.decided_by == "user:olivia-ops"


def test_rejecting_a_rollback_asks_for_a_reason_and_records_it(rollback_ops_client, proposed):
    reject = url("rollback_reject", proposed.pk)
    form = rollback_ops_client.get(reject)
    assert form.status_code == 200 and 'name="reason"' in form.content.decode()

    blank = rollback_ops_client.post(reject, {"confirm": "yes", "reason": "   "})
    assert blank.status_code == 200 and "This field is required" in blank.content.decode()
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.PROPOSED

    done = rollback_ops_client.post(reject, {"confirm": "yes", "reason": "the alert was a false alarm"})
    assert done.status_code == 302
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.REJECTED
    assert proposed.detail == "Rejected by olivia-ops: the alert was a false alarm"
    event = AuditEvent.objects.get(action="rollback.rejected")
    assert event.actor == "user:olivia-ops" and event.reason == "the alert was a false alarm"


def test_rejecting_from_the_list_asks_the_reason_on_a_page_of_its_own(rollback_ops_client, proposed):
    changelist = url("rollback_changelist")
    asked = rollback_ops_client.post(changelist, {"action": "reject", "_selected_action": [proposed.pk]})
    page = asked.content.decode()
    assert asked.status_code == 200 and 'name="reason"' in page and 'value="reject"' in page
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.PROPOSED

    rollback_ops_client.post(
        changelist,
        {"action": "reject", "_selected_action": [proposed.pk], "confirm": "yes", "reason": "fixing forward"},
    )
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.REJECTED and proposed.detail.endswith("fixing forward")


def test_a_decided_rollback_offers_no_decision(rollback_ops_client, proposed):
    rollback_ops_client.post(url("rollback_reject", proposed.pk), {"confirm": "yes", "reason": "no"})
    page = rollback_ops_client.get(url("rollback_change", proposed.pk)).content.decode()
    assert "Approve rollback" not in page and url("rollback_reject", proposed.pk) not in page
    again = rollback_ops_client.post(url("rollback_approve", proposed.pk), follow=True)
    assert "only a proposed one can be approved" in again.content.decode()
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.REJECTED


def test_ops_without_trigger_rollback_see_no_buttons_and_forged_posts_are_refused(
    bypass_ops_client, proposed
):
    listing = bypass_ops_client.get(url("rollback_changelist")).content.decode()
    assert "b-2" in listing
    assert 'value="approve"' not in listing and 'value="reject"' not in listing
    assert url("rollback_approve", proposed.pk) not in listing
    assert "needs trigger_rollback on wedsync-web" in listing
    page = bypass_ops_client.get(url("rollback_change", proposed.pk)).content.decode()
    assert "Approve rollback" not in page and url("rollback_reject", proposed.pk) not in page

    assert bypass_ops_client.post(url("rollback_approve", proposed.pk)).status_code == 403
    forged_reject = {"confirm": "yes", "reason": "mine"}
    assert bypass_ops_client.post(url("rollback_reject", proposed.pk), forged_reject).status_code == 403
    for action in ("approve", "reject"):
        bypass_ops_client.post(
            url("rollback_changelist"),
            {"action": action, "_selected_action": [proposed.pk], **forged_reject},
        )

    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.PROPOSED and proposed.decided_by == ""
    assert not AuditEvent.objects.filter(action__in=["rollback.approved", "rollback.rejected"]).exists()


def test_ops_of_another_project_do_not_see_its_rollbacks(client, ops, proposed):
    other = Project.objects.create(slug="other-shop", name="Other shop")
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.trigger_rollback", ops, other)
    client.force_login(ops)
    assert "b-2" not in client.get(url("rollback_changelist")).content.decode()
    assert client.post(url("rollback_approve", proposed.pk)).status_code == 404
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.PROPOSED


def test_auditors_see_every_page_and_no_button(auditor_client, proposed):
    watch = proposed.watch
    add_probe(watch, 1, Probe.Outcome.FAILURE, {P95: 300.0})
    pages = [
        url("watch_changelist"),
        url("watch_change", watch.pk),
        url("rollback_changelist"),
        url("rollback_change", proposed.pk),
        url("notice_changelist"),
        url("notice_change", Notice.objects.filter(watch=watch).first().pk),
    ]
    for page in pages:
        response = auditor_client.get(page)
        assert response.status_code == 200, page
        html = response.content.decode()
        assert 'name="_save"' not in html, page
        assert "Approve" not in html and "Reject…" not in html and "Stop watching" not in html, page
        assert 'name="action"' not in html, page

    assert auditor_client.post(url("rollback_approve", proposed.pk)).status_code == 403
    assert (
        auditor_client.post(
            url("rollback_reject", proposed.pk), {"confirm": "yes", "reason": "x"}
        ).status_code
        == 403
    )
    auditor_client.post(url("rollback_changelist"), {"action": "approve", "_selected_action": [proposed.pk]})
    proposed.refresh_from_db()
    assert proposed.state == Rollback.State.PROPOSED


def svg_of(html: str) -> list[ET.Element]:
    """The probe charts of an admin page, parsed (the admin's own icons are SVG too)."""
    charts = re.findall(r'<figure class="perfgate-probe-chart">(<svg .*?</svg>)', html, re.DOTALL)
    return [ET.fromstring(svg) for svg in charts]


def test_the_watch_page_charts_its_probes_against_the_probe_baseline(
    rollback_ops_client, project, production
):
    watch = make_watch(passed_production(project, production, "b-1"), baseline={P95: [100.0, 120.0, 110.0]})
    add_probe(watch, 1, Probe.Outcome.SUCCESS, {P95: 105.0})
    add_probe(watch, 2, Probe.Outcome.FAILURE, {P95: 180.5})
    add_probe(watch, 3, Probe.Outcome.ERROR)
    Watch.objects.filter(pk=watch.pk).update(
        probes_run=3, failures=1, consecutive_failures=1, errors=1, consecutive_errors=1
    )

    html = rollback_ops_client.get(url("watch_change", watch.pk)).content.decode()

    (chart,) = svg_of(html)
    assert chart.find(f"{SVG}title").text == "http_req_duration p(95)"
    assert chart.find(f"{SVG}desc").text == (
        "Probe baseline: median 110.0 ms, from 100.0 to 120.0 ms over 3 probes. "
        "Probe 1: 105.0 ms, success. Probe 2: 180.5 ms, failure. Probe 3: no value, error."
    )
    points = [c.get("class") for c in chart.iter(f"{SVG}circle") if c.get("class")]
    assert points == ["point success", "point failure", "failure-marker"]
    assert chart.find(f"{SVG}path[@class='error-marker']") is not None
    assert chart.find(f"{SVG}rect[@class='baseline-band']") is not None
    # The same numbers as text under the chart, and in the probes table.
    assert "<li>Probe 2: 180.5 ms, failure.</li>" in html
    assert "http_req_duration p(95) 180.5" in html and "probe 3 was error" in html
    # The counters against the policy's limits, and the policy and its baseline source.
    assert "failed probes in a row" in html and "failureLimit 2" in html and "consecutiveErrorLimit 4" in html
    assert "3 probes of build b-1 (watch #1)" in html
    assert "110.0 ms" in html and "100.0 to 120.0 ms" in html


def test_a_watch_with_no_probes_and_no_baseline_says_so(rollback_ops_client, project, production):
    watch = make_watch(passed_production(project, production, "b-1"), state=Watch.State.WAITING)
    html = rollback_ops_client.get(url("watch_change", watch.pk)).content.decode()
    assert svg_of(html) == []
    assert "No probe has run yet." in html
    assert "No probe baseline: relative rules do not decide" in html
    assert "None decided." in html


def test_a_watch_with_one_probe_and_no_baseline_charts_it_without_a_band(
    rollback_ops_client, project, production
):
    watch = make_watch(passed_production(project, production, "b-1"))
    add_probe(watch, 1, Probe.Outcome.SUCCESS, {P95: 42.0})
    (chart,) = svg_of(rollback_ops_client.get(url("watch_change", watch.pk)).content.decode())
    assert chart.find(f"{SVG}rect[@class='baseline-band']") is None
    assert chart.find(f"{SVG}desc").text == (
        "No probe baseline: relative rules did not decide. Probe 1: 42.0 ms, success."
    )


def test_a_watch_whose_probes_all_errored_shows_the_errors_on_the_axis(
    rollback_ops_client, project, production
):
    watch = make_watch(passed_production(project, production, "b-1"))
    add_probe(watch, 1, Probe.Outcome.ERROR)
    add_probe(watch, 2, Probe.Outcome.ERROR)
    (chart,) = svg_of(rollback_ops_client.get(url("watch_change", watch.pk)).content.decode())
    assert len(chart.findall(f"{SVG}path[@class='error-marker']")) == 2
    assert not [c for c in chart.iter(f"{SVG}circle") if (c.get("class") or "").startswith("point")]
    assert "No probe measured this" in ET.tostring(chart, encoding="unicode")


def test_baseline_probes_build_the_band_and_are_not_charted_as_the_deployments_own(
    rollback_ops_client, project, production
):
    watch = make_watch(passed_production(project, production, "b-1"), baseline={P95: [90.0]})
    add_probe(watch, 1, Probe.Outcome.SUCCESS, {P95: 90.0}, trigger=Probe.Trigger.BASELINE)
    add_probe(watch, 2, Probe.Outcome.SUCCESS, {P95: 95.0})
    (chart,) = svg_of(rollback_ops_client.get(url("watch_change", watch.pk)).content.decode())
    assert chart.find(f"{SVG}desc").text.endswith("over 1 probes. Probe 2: 95.0 ms, success.")


def test_active_watches_are_listed_first(rollback_ops_client, project, production, staging):
    active = make_watch(passed_production(project, production, "b-1"))
    finished = make_watch(passed_production(project, production, "b-2"), state=Watch.State.HEALTHY)
    assert finished.created_at > active.created_at
    listing = rollback_ops_client.get(url("watch_changelist"))
    assert list(listing.context["cl"].result_list) == [active, finished]


def test_stopping_a_watch_asks_a_reason_and_only_for_active_watches(rollback_ops_client, project, production):
    watch = make_watch(passed_production(project, production, "b-1"))
    page = rollback_ops_client.get(url("watch_change", watch.pk)).content.decode()
    assert url("watch_stop", watch.pk) in page

    rollback_ops_client.post(url("watch_stop", watch.pk), {"confirm": "yes", "reason": "maintenance window"})

    watch.refresh_from_db()
    assert watch.state == Watch.State.STOPPED and watch.state_reason.endswith("maintenance window")
    event = AuditEvent.objects.get(action="watch.stopped")
    assert event.actor == "user:olivia-ops" and event.reason == "maintenance window"
    page = rollback_ops_client.get(url("watch_change", watch.pk)).content.decode()
    assert url("watch_stop", watch.pk) not in page
    assert 'value="stop"' not in rollback_ops_client.get(url("watch_changelist")).content.decode()


def test_stopping_from_the_list_asks_the_reason_first(rollback_ops_client, project, production):
    watch = make_watch(passed_production(project, production, "b-1"))
    changelist = url("watch_changelist")
    assert 'value="stop"' in rollback_ops_client.get(changelist).content.decode()
    asked = rollback_ops_client.post(changelist, {"action": "stop", "_selected_action": [watch.pk]})
    assert asked.status_code == 200 and 'name="reason"' in asked.content.decode()
    watch.refresh_from_db()
    assert watch.is_active
    rollback_ops_client.post(
        changelist, {"action": "stop", "_selected_action": [watch.pk], "confirm": "yes", "reason": "done"}
    )
    watch.refresh_from_db()
    assert watch.state == Watch.State.STOPPED


def test_ops_without_trigger_rollback_cannot_stop_a_watch(bypass_ops_client, project, production):
    watch = make_watch(passed_production(project, production, "b-1"))
    assert (
        url("watch_stop", watch.pk)
        not in bypass_ops_client.get(url("watch_change", watch.pk)).content.decode()
    )
    assert (
        bypass_ops_client.post(url("watch_stop", watch.pk), {"confirm": "yes", "reason": "x"}).status_code
        == 403
    )
    bypass_ops_client.post(
        url("watch_changelist"),
        {"action": "stop", "_selected_action": [watch.pk], "confirm": "yes", "reason": "x"},
    )
    watch.refresh_from_db()
    assert watch.is_active


def test_notices_are_listed_and_never_edited(rollback_ops_client, proposed):
    notice = Notice.objects.get(watch=proposed.watch)
    listing = rollback_ops_client.get(url("notice_changelist")).content.decode()
    assert notice.title in listing and "is degraded: rollback proposed" in listing
    page = rollback_ops_client.get(url("notice_change", notice.pk))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert rollback_ops_client.post(url("notice_change", notice.pk), {"title": "edited"}).status_code == 403
    assert Notice.objects.get(pk=notice.pk).title == notice.title


def form_data(response) -> dict:
    """What the browser would post back from an admin form as it was rendered."""
    form = response.context["adminform"].form
    data = {}
    for name, field in form.fields.items():
        value = form[name].value()
        if isinstance(field, BooleanField):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = value
    return data


@pytest.fixture
def thresholds_ops_client(client, ops, project):
    ops.groups.add(Group.objects.get(name="ops"))
    assign_perm("gates.change_thresholds", ops, project)
    client.force_login(ops)
    return client


def test_the_environment_admin_edits_the_watch_policy_and_audits_it(thresholds_ops_client, production):
    probe = Scenario.objects.create(project=production.project, name="probe", script_text="x", vus=2)
    change = url("environment_change", production.pk)
    page = thresholds_ops_client.get(change)
    assert "Watching production" in page.content.decode()
    data = form_data(page)
    data.update(
        watch_scenario=probe.pk, watch_failure_limit=3, auto_rollback="on", rollback_workflow="rollback.yml"
    )

    assert thresholds_ops_client.post(change, data).status_code == 302

    production.refresh_from_db()
    assert production.watch_scenario == probe and production.watch_failure_limit == 3
    assert production.auto_rollback and production.rollback_workflow == "rollback.yml"
    event = AuditEvent.objects.get(action="config.environment.updated")
    assert event.actor == "user:olivia-ops"
    assert event.data["before"]["auto_rollback"] is False and event.data["after"]["auto_rollback"] is True
    assert event.data["before"]["watch_scenario"] is None and event.data["after"]["watch_scenario"] == "probe"


def test_a_watch_scenario_of_another_project_is_refused(thresholds_ops_client, production):
    other = Project.objects.create(slug="other-shop", name="Other shop")
    foreign = Scenario.objects.create(project=other, name="probe", script_text="x")
    change = url("environment_change", production.pk)
    data = {**form_data(thresholds_ops_client.get(change)), "watch_scenario": foreign.pk}
    response = thresholds_ops_client.post(change, data)
    assert response.status_code == 200 and "watch_scenario" in response.context["adminform"].form.errors
    production.refresh_from_db()
    assert production.watch_scenario is None


def test_the_probe_chart_escapes_its_text_and_draws_without_any_value():
    svg = probe_svg("<b>&", "ms", [ProbePoint(1, None, "error", trigger="alert")], None)
    root = ET.fromstring(svg)
    assert "<b>" not in svg and root.find(f"{SVG}title").text == "<b>&"
    assert root.find(f"{SVG}desc").text.endswith("Probe 1 (alert): no value, error.")
    band_only = ET.fromstring(probe_svg("x", "", [], ProbeBand(low=1.0, high=3.0, median=2.0, count=2)))
    assert band_only.find(f"{SVG}rect[@class='baseline-band']") is not None
    assert band_only.find(f"{SVG}desc").text.endswith("No probe has run yet.")


def test_a_new_environment_is_given_its_watch_policy_on_the_same_page(client, admin_user):
    client.force_login(admin_user)
    page = client.get(url("environment_add"))
    assert page.status_code == 200
    fieldsets = [name for name, _ in page.context["adminform"].fieldsets]
    assert fieldsets == [None, "Watching production"]
