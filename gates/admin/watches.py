"""Watching production in the admin: watches with their probes, charted against the probe
baseline; rollbacks (the history, and the proposed ones that someone with ``trigger_rollback``
approves or rejects); notices. All are records of what the gate decided, so nothing here is edited
in a form: people act through actions and buttons that call the services, which check the right
again and audit the decision."""

from statistics import median

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, Value, When
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime

from gates.admin.base import (
    ENVIRONMENT_FILTER,
    NONE,
    ProjectScopedMixin,
    ReadOnlyAdminMixin,
    consequence,
    label,
)
from gates.audit import Actor
from gates.charts import ProbeBand, ProbePoint, probe_svg, probe_text
from gates.errors import ServiceError
from gates.models import Notice, Probe, Rollback, Watch
from gates.permissions import may, projects_where
from gates.services.rollbacks import rollback_approve, rollback_reject
from gates.services.watches import watch_stop

RIGHT = "trigger_rollback"

STATE_COLOURS = {
    # watches
    "waiting": "#57606a",
    "watching": "#0969da",
    "healthy": "#1a7f37",
    "degraded": "#cf222e",
    "inconclusive": "#8250df",
    "errored": "#bc4c00",
    "stopped": "#57606a",
    # rollbacks
    "proposed": "#9a6700",
    "approved": "#0969da",
    "running": "#0969da",
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "rejected": "#57606a",
    "refused": "#cf222e",
    "dry_run": "#8250df",
    # probes and notices
    "success": "#1a7f37",
    "failure": "#cf222e",
    "error": "#bc4c00",
    "info": "#57606a",
    "warning": "#9a6700",
}


def state_badge(value: str, text: str = ""):
    if not value:
        return NONE
    colour = STATE_COLOURS.get(value, "#57606a")
    return format_html('<strong style="color:{}">{}</strong>', colour, label(text or value))


def _when(moment) -> str:
    return date_format(localtime(moment), "DATETIME_FORMAT") if moment else NONE


def _link(model_name: str, obj, text=None):
    if obj is None:
        return NONE
    url = reverse(f"admin:gates_{model_name}_change", args=[obj.pk])
    return format_html('<a href="{}">{}</a>', url, text if text is not None else obj)


def _unit(key: str) -> str:
    """The unit of a probe value keyed "<series>|<aggregation>", as the history chart says it."""
    series, _, aggregation = key.partition("|")
    name = series.split("{", 1)[0]
    return "ms" if name.endswith("duration") and aggregation not in ("count", "rate") else ""


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80}),
        max_length=2000,
        help_text="Recorded with the decision in the audit log.",
    )


class ReasonPageMixin:
    """The page that asks why before a decision is made (rejecting a rollback, stopping a watch),
    for one object (its own URL) or for the rows an action selected (posted back to the list,
    like Django's delete confirmation)."""

    def reason_page(self, request, *, title: str, intro: str, objects, submit: str, form, action=""):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": title,
            "intro": intro,
            "objects": objects,
            "form": form,
            "submit": submit,
            "action": action,
            "cancel_url": (
                reverse(f"admin:gates_{self.model._meta.model_name}_change", args=[objects[0].pk])
                if not action
                else reverse(f"admin:gates_{self.model._meta.model_name}_changelist")
            ),
        }
        return TemplateResponse(request, "admin/gates/reason_form.html", context)

    def reason_from(self, request):
        """The bound form when the reason page was submitted; an empty one when it is to be shown."""
        return ReasonForm(request.POST) if request.POST.get("confirm") == "yes" else ReasonForm()

    def visible_object(self, request, object_id, *, right_to: str):
        """The object, if the user may see it (404 otherwise, as for another project's rows) and
        holds ``trigger_rollback`` on its project (403 otherwise: a forged request is refused
        here, and again by the service)."""
        obj = self.get_object(request, object_id)
        if obj is None or not self.has_view_permission(request, obj):
            raise Http404(f"No {self.model._meta.verbose_name} {object_id} that you may see.")
        if not may(request.user, RIGHT, obj.project):
            raise PermissionDenied(f"You may not {right_to}: that needs {RIGHT} on {obj.project}.")
        return obj

    def back_to(self, obj):
        return HttpResponseRedirect(
            reverse(f"admin:gates_{self.model._meta.model_name}_change", args=[obj.pk])
        )


# --- Watches -------------------------------------------------------------------------------------

ACTIVE_FIRST = Case(When(state__in=Watch.ACTIVE_STATES, then=Value(0)), default=Value(1))


@admin.register(Watch)
class WatchAdmin(ReasonPageMixin, ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    """Watches, active ones first: each with its probes, the counters against the policy's limits,
    the probe baseline it compares with, a chart per probed value, and what it decided (its
    rollback, its notices). Someone with ``trigger_rollback`` may stop an active watch."""

    change_right = RIGHT
    list_display = (
        "build",
        "project",
        "environment_name",
        "state_badge",
        "probes_run",
        "failures_against_limit",
        "errors",
        "dry_run",
        "created_at",
        "ends_at",
    )
    list_filter = ("state", "source", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment", "validation")
    search_fields = ("validation__build_id", "deployment_id", "target_url")
    actions = ["stop"]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "validation_link",
                    "project",
                    "environment",
                    "state_badge",
                    "state_reason",
                    "source",
                    "deployment_id",
                    "target_url",
                    "started_by",
                    "created_at",
                    "next_probe_at",
                    "ends_at",
                    "finished_at",
                )
            },
        ),
        ("Counters and limits", {"fields": ("limits_table", "dry_run", "rollback_consequence")}),
        ("Policy", {"fields": ("policy_table", "scenario")}),
        ("Probe baseline", {"fields": ("baseline_source", "baseline_table", "baseline_url")}),
        ("Probes", {"fields": ("charts", "probes_table")}),
        ("What it decided", {"fields": ("rollback_link", "notices_list")}),
        ("Task", {"fields": ("worker", "lease_expires_at"), "classes": ("collapse",)}),
    )
    readonly_fields = [field for _, options in fieldsets for field in options["fields"]]

    def get_ordering(self, request):
        return [ACTIVE_FIRST.asc(), "-created_at"]

    def get_urls(self):
        stop = self.admin_site.admin_view(self.stop_view)
        return [path("<path:object_id>/stop/", stop, name="gates_watch_stop"), *super().get_urls()]

    # Columns

    @admin.display(description="build", ordering="validation__build_id")
    def build(self, obj):
        return obj.validation.build_id

    @admin.display(description="environment", ordering="environment__name")
    def environment_name(self, obj):
        return obj.environment.name

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return state_badge(obj.state, obj.get_state_display())

    @admin.display(description="enforcement")
    def rollback_consequence(self, obj):
        """Whether what the probes saw calls for a rollback (in a dry run: would have)."""
        return consequence(obj.would_roll_back, "roll back")

    @admin.display(description="failed / limit")
    def failures_against_limit(self, obj):
        counted = obj.consecutive_failures if obj.policy.get("consecutive") else obj.failures
        return f"{counted} / {obj.limit('failureLimit')}"

    # Detail

    @admin.display(description="validation")
    def validation_link(self, obj):
        return _link("validation", obj.validation)

    @admin.display(description="counters")
    def limits_table(self, obj):
        """Each counter beside the limit it is held against, and what crossing it does."""
        consecutive = obj.policy.get("consecutive")
        rows = [
            (
                "failed probes in a row" if consecutive else "failed probes",
                obj.consecutive_failures if consecutive else obj.failures,
                f"failureLimit {obj.limit('failureLimit')}",
                "degraded: rolled back, or a rollback proposed (dry run: only recorded)",
            ),
            (
                "inconclusive probes",
                obj.inconclusives,
                f"inconclusiveLimit {obj.limit('inconclusiveLimit')}",
                "a person decides; nothing is rolled back",
            ),
            (
                "errors in a row",
                obj.consecutive_errors,
                f"consecutiveErrorLimit {obj.limit('consecutiveErrorLimit')}",
                "the watch stops and people are told; an error never rolls back",
            ),
            ("probes run", obj.probes_run, NONE, f"{obj.failures} failed, {obj.errors} errors in all"),
        ]
        return format_html(
            '<table class="perfgate-limits"><thead><tr><th>counter</th><th>now</th><th>limit</th>'
            "<th>above the limit</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="policy when the watch began")
    def policy_table(self, obj):
        if not obj.policy:
            return NONE
        seconds = {"initialDelay", "interval", "window"}
        rows = [
            (name, f"{value} s" if name in seconds else (NONE if value is None else value))
            for name, value in obj.policy.items()
        ]
        return format_html(
            '<table class="perfgate-policy"><tbody>{}</tbody></table>',
            format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows),
        )

    @admin.display(description="values")
    def baseline_table(self, obj):
        baseline = {key: values for key, values in (obj.baseline or {}).items() if values}
        if not baseline:
            return "No probe baseline: relative rules do not decide; absolute rules still do."
        rows = []
        for key, values in sorted(baseline.items()):
            unit = _unit(key)
            rows.append(
                (
                    key.replace("|", " "),
                    f"{median(values):.1f} {unit}".strip(),
                    f"{min(values):.1f} to {max(values):.1f} {unit}".strip(),
                    len(values),
                )
            )
        return format_html(
            '<table class="perfgate-baseline"><thead><tr><th>value</th><th>median</th><th>range</th>'
            "<th>probes</th></tr></thead><tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    @admin.display(description="charts")
    def charts(self, obj):
        """One chart per probed value against its probe-baseline band, each with its numbers as
        text (in the SVG's description and in a list under it)."""
        probes = [p for p in self._probes(obj) if p.trigger != Probe.Trigger.BASELINE]
        baseline = {key: values for key, values in (obj.baseline or {}).items() if values}
        keys = sorted(set(baseline) | {key for probe in probes for key in (probe.values or {})})
        if not keys and not probes:
            return "No probe has run yet."
        parts = []
        for key in keys or [""]:
            unit = _unit(key)
            values = baseline.get(key)
            band = (
                ProbeBand(low=min(values), high=max(values), median=median(values), count=len(values))
                if values
                else None
            )
            points = [
                ProbePoint(
                    number=probe.number,
                    value=(probe.values or {}).get(key),
                    outcome=probe.outcome,
                    trigger=probe.trigger,
                )
                for probe in probes
            ]
            title = key.replace("|", " ") if key else "probes (none measured a value)"
            parts.append(
                format_html(
                    '<figure class="perfgate-probe-chart">{}<figcaption><details><summary>The numbers'
                    '</summary><ul class="probe-numbers">{}</ul></details></figcaption></figure>',
                    # Every text in the SVG is escaped by the chart code.
                    mark_safe(probe_svg(title, unit, points, band)),  # noqa: S308
                    format_html_join("", "<li>{}</li>", ((line,) for line in probe_text(unit, points, band))),
                )
            )
        return format_html_join("", "{}", ((part,) for part in parts))

    @admin.display(description="probes")
    def probes_table(self, obj):
        probes = self._probes(obj)
        if not probes:
            return "No probe has run yet."
        rows = (
            (
                probe.number,
                probe.get_trigger_display(),
                state_badge(probe.outcome),
                probe.verdict or NONE,
                ", ".join(
                    f"{key.replace('|', ' ')} {value:.1f}"
                    for key, value in sorted((probe.values or {}).items())
                )
                or NONE,
                f"{probe.duration_seconds:.1f} s",
                _when(probe.started_at),
                probe.target_url,
                probe.reason or NONE,
            )
            for probe in probes
        )
        return format_html(
            '<table class="perfgate-probes"><thead><tr><th>#</th><th>trigger</th><th>outcome</th>'
            "<th>verdict</th><th>values</th><th>took</th><th>started</th><th>target</th><th>why</th>"
            "</tr></thead><tbody>{}</tbody></table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
                "<td>{}</td><td>{}</td></tr>",
                rows,
            ),
        )

    @admin.display(description="rollback")
    def rollback_link(self, obj):
        rollback = Rollback.objects.filter(watch=obj).first()
        if rollback is None:
            return "None decided."
        return format_html(
            "{}: {}", _link("rollback", rollback, rollback.get_state_display()), rollback.detail or NONE
        )

    @admin.display(description="notices")
    def notices_list(self, obj):
        notices = list(obj.notices.order_by("-created_at")[:50])
        if not notices:
            return NONE
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join(
                "",
                "<li>{} {} ({})</li>",
                ((state_badge(n.level), _link("notice", n, n.title), _when(n.created_at)) for n in notices),
            ),
        )

    def _probes(self, obj) -> list[Probe]:
        # Both the chart and the table read them: once per page.
        if getattr(obj, "_probe_rows", None) is None:
            obj._probe_rows = list(obj.probes.order_by("number"))
        return obj._probe_rows

    # Stopping

    def has_stop_permission(self, request):
        return Watch.objects.filter(
            state__in=Watch.ACTIVE_STATES, project__in=projects_where(request.user, RIGHT)
        ).exists()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        watch = self.get_object(request, object_id)
        may_stop = watch is not None and watch.is_active and may(request.user, RIGHT, watch.project)
        context = {
            **(extra_context or {}),
            "may_stop": may_stop,
            "stop_url": reverse("admin:gates_watch_stop", args=[watch.pk]) if may_stop else "",
        }
        return super().change_view(request, object_id, form_url, context)

    @admin.action(description="Stop watching the selected active watches…", permissions=["stop"])
    def stop(self, request, queryset):
        watches = list(queryset.filter(state__in=Watch.ACTIVE_STATES).select_related("project", "validation"))
        if not watches:
            self.message_user(request, "None of the selected watches is active.", messages.WARNING)
            return None
        form = self.reason_from(request)
        if not form.is_bound or not form.is_valid():
            return self.reason_page(
                request,
                title="Stop watching",
                intro="No more probes will run for these deployments, and nothing will roll them back.",
                objects=watches,
                submit="Stop watching",
                form=form,
                action="stop",
            )
        for watch in watches:
            self._stop(request, watch, form.cleaned_data["reason"])
        return None

    def stop_view(self, request, object_id):
        watch = self.visible_object(request, object_id, right_to="stop this watch")
        form = self.reason_from(request) if request.method == "POST" else ReasonForm()
        if not form.is_bound or not form.is_valid():
            return self.reason_page(
                request,
                title="Stop watching",
                intro="No more probes will run for this deployment, and nothing will roll it back.",
                objects=[watch],
                submit="Stop watching",
                form=form,
            )
        self._stop(request, watch, form.cleaned_data["reason"])
        return self.back_to(watch)

    def _stop(self, request, watch, reason):
        if not may(request.user, RIGHT, watch.project):
            self.message_user(request, f"You may not stop watches of {watch.project}.", messages.ERROR)
            return
        try:
            watch_stop(watch=watch, actor=Actor.for_user(request.user), reason=reason)
        except ServiceError as exc:
            self.message_user(request, f"{watch}: {exc.detail}", messages.ERROR)
            return
        self.message_user(request, f"Stopped watching build {watch.validation.build_id}.")


# --- Rollbacks -----------------------------------------------------------------------------------

PROPOSED_FIRST = Case(When(state=Rollback.State.PROPOSED, then=Value(0)), default=Value(1))


@admin.register(Rollback)
class RollbackAdmin(ReasonPageMixin, ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    """The rollback history, proposed ones first. Someone with ``trigger_rollback`` on the project
    approves a proposed rollback (it is sent at once) or rejects it with a reason; the decision
    itself is never a form field."""

    change_right = RIGHT
    list_display = (
        "build",
        "project",
        "environment_name",
        "state_badge",
        "trigger",
        "target",
        "via",
        "decided_by",
        "created_at",
        "finished_at",
    )
    list_filter = ("state", "trigger", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment", "validation", "target_validation")
    search_fields = ("validation__build_id", "target_validation__build_id", "reason", "decided_by")
    actions = ["approve", "reject"]
    readonly_fields = (
        "validation_link",
        "watch_link",
        "project",
        "environment",
        "state_badge",
        "trigger",
        "target",
        "via",
        "reason",
        "detail",
        "decided_by",
        "decided_at",
        "created_at",
        "finished_at",
    )
    fields = readonly_fields

    def get_ordering(self, request):
        return [PROPOSED_FIRST.asc(), "-created_at"]

    def get_urls(self):
        approve = self.admin_site.admin_view(self.approve_view)
        reject = self.admin_site.admin_view(self.reject_view)
        return [
            path("<path:object_id>/approve/", approve, name="gates_rollback_approve"),
            path("<path:object_id>/reject/", reject, name="gates_rollback_reject"),
            *super().get_urls(),
        ]

    @admin.display(description="build", ordering="validation__build_id")
    def build(self, obj):
        return obj.validation.build_id

    @admin.display(description="environment", ordering="environment__name")
    def environment_name(self, obj):
        return obj.environment.name

    @admin.display(description="state", ordering="state")
    def state_badge(self, obj):
        return state_badge(obj.state, obj.get_state_display())

    @admin.display(description="back to build")
    def target(self, obj):
        if obj.target_validation is None:
            return "— (nothing safe to roll back to)"
        return _link("validation", obj.target_validation, obj.target_validation.build_id)

    @admin.display(description="validation")
    def validation_link(self, obj):
        return _link("validation", obj.validation)

    @admin.display(description="watch")
    def watch_link(self, obj):
        return _link("watch", obj.watch)

    def get_list_display(self, request):
        @admin.display(description="your decision")
        def your_decision(rollback):
            if rollback.state != Rollback.State.PROPOSED:
                return NONE
            if not may(request.user, RIGHT, rollback.project):
                return f"needs {RIGHT} on {rollback.project.slug}"
            # The list is one form already (its actions); this button posts it to the approve URL.
            return format_html(
                '<button type="submit" class="button" formaction="{}" formmethod="post">Approve</button> '
                '<a class="button" href="{}">Reject…</a>',
                reverse("admin:gates_rollback_approve", args=[rollback.pk]),
                reverse("admin:gates_rollback_reject", args=[rollback.pk]),
            )

        return (*super().get_list_display(request), your_decision)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        rollback = self.get_object(request, object_id)
        may_decide = (
            rollback is not None
            and rollback.state == Rollback.State.PROPOSED
            and may(request.user, RIGHT, rollback.project)
        )
        context = {**(extra_context or {}), "may_decide": may_decide}
        if may_decide:
            context["approve_url"] = reverse("admin:gates_rollback_approve", args=[rollback.pk])
            context["reject_url"] = reverse("admin:gates_rollback_reject", args=[rollback.pk])
        return super().change_view(request, object_id, form_url, context)

    def _proposed_decidable(self, request) -> bool:
        return Rollback.objects.filter(
            state=Rollback.State.PROPOSED, project__in=projects_where(request.user, RIGHT)
        ).exists()

    def has_approve_permission(self, request):
        return self._proposed_decidable(request)

    def has_reject_permission(self, request):
        return self._proposed_decidable(request)

    @admin.action(
        description="Approve the selected proposed rollbacks (they are sent at once)", permissions=["approve"]
    )
    def approve(self, request, queryset):
        for rollback in queryset.select_related("project", "validation"):
            self._approve(request, rollback)

    @admin.action(description="Reject the selected proposed rollbacks…", permissions=["reject"])
    def reject(self, request, queryset):
        rollbacks = list(
            queryset.filter(state=Rollback.State.PROPOSED).select_related(
                "project", "validation", "environment"
            )
        )
        if not rollbacks:
            self.message_user(request, "None of the selected rollbacks is proposed.", messages.WARNING)
            return None
        form = self.reason_from(request)
        if not form.is_bound or not form.is_valid():
            return self.reason_page(
                request,
                title="Reject rollbacks",
                intro="These deployments stay in production.",
                objects=rollbacks,
                submit="Reject",
                form=form,
                action="reject",
            )
        for rollback in rollbacks:
            self._reject(request, rollback, form.cleaned_data["reason"])
        return None

    def approve_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        rollback = self.visible_object(request, object_id, right_to="approve this rollback")
        self._approve(request, rollback)
        return self.back_to(rollback)

    def reject_view(self, request, object_id):
        rollback = self.visible_object(request, object_id, right_to="reject this rollback")
        form = self.reason_from(request) if request.method == "POST" else ReasonForm()
        if not form.is_bound or not form.is_valid():
            return self.reason_page(
                request,
                title="Reject the rollback",
                intro="This deployment stays in production.",
                objects=[rollback],
                submit="Reject",
                form=form,
            )
        self._reject(request, rollback, form.cleaned_data["reason"])
        return self.back_to(rollback)

    def _approve(self, request, rollback):
        if not may(request.user, RIGHT, rollback.project):
            self.message_user(request, f"You may not roll back {rollback.project}.", messages.ERROR)
            return
        try:
            rollback = rollback_approve(rollback=rollback, actor=Actor.for_user(request.user))
        except ServiceError as exc:
            self.message_user(request, f"{rollback}: {exc.detail}", messages.ERROR)
            return
        level = messages.ERROR if rollback.state == Rollback.State.FAILED else messages.SUCCESS
        self.message_user(request, f"{rollback}: {rollback.detail}", level)

    def _reject(self, request, rollback, reason):
        if not may(request.user, RIGHT, rollback.project):
            self.message_user(request, f"You may not decide rollbacks of {rollback.project}.", messages.ERROR)
            return
        try:
            rollback_reject(rollback=rollback, actor=Actor.for_user(request.user), reason=reason)
        except ServiceError as exc:
            self.message_user(request, f"{rollback}: {exc.detail}", messages.ERROR)
            return
        self.message_user(request, f"{rollback}: rejected; the deployment stays.")


# --- Notices -------------------------------------------------------------------------------------


@admin.register(Notice)
class NoticeAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    """What people were told about production (probes that keep erroring, rollbacks proposed,
    done or failed, alerts no probe confirmed): read-only."""

    list_display = ("created_at", "level_badge", "title", "project", "environment_name", "kind")
    list_filter = ("level", "kind", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment")
    search_fields = ("title", "text", "kind")
    date_hierarchy = "created_at"
    readonly_fields = (
        "created_at",
        "level_badge",
        "kind",
        "title",
        "text",
        "project",
        "environment",
        "validation_link",
        "watch_link",
    )
    fields = readonly_fields

    @admin.display(description="level", ordering="level")
    def level_badge(self, obj):
        return state_badge(obj.level)

    @admin.display(description="environment", ordering="environment__name")
    def environment_name(self, obj):
        return obj.environment.name

    @admin.display(description="validation")
    def validation_link(self, obj):
        return _link("validation", obj.validation)

    @admin.display(description="watch")
    def watch_link(self, obj):
        return _link("watch", obj.watch)
