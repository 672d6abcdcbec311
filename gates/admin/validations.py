"""Validations and bypass requests in the admin: read-only records, acted on through actions
that call the services."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime

from gates import selectors
from gates.admin.base import (
    ENVIRONMENT_FILTER,
    NONE,
    ProjectScopedMixin,
    ReadOnlyAdminMixin,
    ServiceFormMixin,
    badge,
    consequence,
    fields_table,
    label,
)
from gates.audit import Actor
from gates.charts import distribution_text, history_text
from gates.errors import ServiceError
from gates.models import BypassApproval, BypassRequest, CheckResult, Validation
from gates.permissions import may, projects_where
from gates.report import format_change, format_measure, format_p
from gates.services import bypass_approve, bypass_reject, bypass_request, validation_cancel
from gates.services.bypasses import bypass_refusal

NOTICE_COLOUR = "#bc4c00"


class CheckResultInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CheckResult
    extra = 0
    fields = (
        "verdict_badge",
        "label",
        "severity_shown",
        "observed_shown",
        "baseline_shown",
        "change",
        "limit_shown",
        "p_shown",
        "reason",
    )
    readonly_fields = fields
    ordering = ("position",)

    @admin.display(description="verdict")
    def verdict_badge(self, obj):
        return badge(obj.verdict)

    @admin.display(description="severity")
    def severity_shown(self, obj):
        return label(obj.severity)

    @admin.display(description="observed")
    def observed_shown(self, obj):
        return format_measure(obj.observed, obj.metric, obj.aggregation)

    @admin.display(description="baseline")
    def baseline_shown(self, obj):
        return format_measure(obj.baseline_value, obj.metric, obj.aggregation)

    @admin.display(description="change")
    def change(self, obj):
        return format_change(obj.change_pct)

    @admin.display(description="limit")
    def limit_shown(self, obj):
        return format_measure(obj.limit, obj.metric, obj.aggregation)

    @admin.display(description="p value")
    def p_shown(self, obj):
        """Only a relative check that ran a test has one."""
        return format_p(obj.p_value).removeprefix("p=") or NONE


@admin.register(Validation)
class ValidationAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    """Read-only: a decision is made by the gate, never typed into a form. Ops act on validations
    through actions, which call the services."""

    actions = ["cancel"]

    def has_cancel_permission(self, request):
        return projects_where(request.user, "block_deployment").exists()

    @admin.action(description="Cancel the selected queued or running validations", permissions=["cancel"])
    def cancel(self, request, queryset):
        """Needs ``block_deployment`` on each validation's project: stopping a test ends the
        validation as an error, which blocks it in a fail-closed environment."""
        for validation in queryset.select_related("project"):
            if not may(request.user, "block_deployment", validation.project):
                self.message_user(
                    request, f"You may not cancel validations of {validation.project}.", messages.ERROR
                )
                continue
            try:
                validation_cancel(
                    validation=validation, reason="cancelled in the admin", actor=Actor.for_user(request.user)
                )
            except ServiceError as exc:
                self.message_user(request, f"{validation}: {exc.detail}", messages.WARNING)
                continue
            self.message_user(request, f"{validation}: cancel requested.")

    # Few, narrow columns: the "why" must read at 1,280 px beside the menu and the filters (the git
    # hash is on the validation's page, and searchable here).
    list_display = (
        "build_id",
        "where",
        "status_badge",
        "verdict_badge",
        "deployment",
        "short_reason",
        "created",
    )
    list_filter = ("status", "verdict", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment")
    search_fields = ("build_id", "git_hash", "branch")
    date_hierarchy = "created_at"
    inlines = [CheckResultInline]
    fields = (
        "project",
        "environment",
        "scenario",
        "build_id",
        "git_hash",
        "branch",
        "status_badge",
        "verdict_badge",
        "notices",
        "deployment",
        "enforcement",
        "status_reason",
        "reasons",
        "chart",
        "bypasses",
        "baseline",
        "requested_by",
        "test_config_shown",
        "deployment_context_shown",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields
    change_list_template = "admin/gates/validation/change_list.html"

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return date_format(localtime(obj.created_at), "DATETIME_FORMAT")

    @admin.display(description="where", ordering="project__slug")
    def where(self, obj):
        return f"{obj.project.slug} / {obj.environment.name}"

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status)

    @admin.display(description="verdict", ordering="verdict")
    def verdict_badge(self, obj):
        return badge(obj.verdict)

    @admin.display(description="deploy", ordering="deployment_allowed")
    def deployment(self, obj):
        """What CI acts on, in words: a green tick on a pending row would say more than is known."""
        if obj.deployment_allowed is None or obj.status in Validation.PENDING_STATUSES:
            return NONE
        return badge("allowed") if obj.deployment_allowed else badge("blocked")

    @admin.display(description="enforcement")
    def enforcement(self, obj):
        """Whether enforcement blocks this verdict (in shadow mode: would have blocked)."""
        return consequence(obj.would_block, "block")

    @admin.display(description="test config")
    def test_config_shown(self, obj):
        return fields_table(obj.test_config)

    @admin.display(description="deployment context")
    def deployment_context_shown(self, obj):
        return fields_table(obj.deployment_context)

    @admin.display(description="why")
    def short_reason(self, obj):
        reason = obj.status_reason
        if not reason:
            return NONE
        shown = reason if len(reason) <= 160 else reason[:159] + "…"
        return format_html('<span class="perfgate-why" title="{}">{}</span>', reason, shown)

    @admin.display(description="charts")
    def chart(self, obj):
        """The history with the baseline's runs and the decision's band, and the latency
        distribution against the baseline; under each, its numbers in words (an image's
        ``<desc>`` reaches no screen reader)."""

        def figure(url, alt, caption, lines):
            return format_html(
                '<figure class="perfgate-chart" style="margin:0 0 1em">'
                '<img src="{}" alt="{}" width="720" height="340" style="max-width:100%;height:auto">'
                "<figcaption>{}<details><summary>The numbers</summary><ul>{}</ul></details></figcaption>"
                "</figure>",
                url,
                alt,
                caption,
                format_html_join("", "<li>{}</li>", ((line,) for line in lines)),
            )

        return figure(
            reverse("validation-chart", args=[obj.pk]),
            f"p(95) history of {obj.scenario}",
            "",
            history_text(**selectors.chart_of(obj)),
        ) + figure(
            reverse("validation-distribution-chart", args=[obj.pk]),
            f"Latency distribution of {obj.build_id} against the baseline",
            "Drawn from the stored percentiles (perfgate keeps no raw samples). ",
            distribution_text(**selectors.distribution_of(obj)),
        )

    @admin.display(description="bypass requests")
    def bypasses(self, obj):
        rows = [
            (reverse("admin:gates_bypassrequest_change", args=[b.pk]), label(b.status), b.requested_by)
            for b in obj.bypass_requests.all()
        ]
        if not rows:
            return NONE
        return format_html(
            "<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a>, asked by {}</li>', rows)
        )

    @admin.display(description="notices")
    def notices(self, obj):
        """What the gate could not check, shown before everything else that was decided
        (e.g. "relative rules are not active: no baseline since …")."""
        notices = (obj.report or {}).get("notices") or []
        if not notices:
            return NONE
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join(
                "", '<li><strong style="color:{}">⚠ {}</strong></li>', ((NOTICE_COLOUR, n) for n in notices)
            ),
        )

    @admin.display(description="blocking reasons")
    def reasons(self, obj):
        if not obj.blocking_reasons:
            return NONE
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((r,) for r in obj.blocking_reasons))
        )


class BypassApprovalInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = BypassApproval
    extra = 0
    fields = ("approver", "created_at")
    readonly_fields = fields


ASKING_RIGHT = "block_deployment"


def askable_validations(user):
    """The validations ``user`` may ask a bypass for, by the service's rule (``bypass_request``):
    blocked, of a project where they hold ``block_deployment``, with no request already waiting."""
    return (
        Validation.objects.filter(
            status=Validation.Status.BLOCKED, project__in=projects_where(user, ASKING_RIGHT)
        )
        .exclude(bypass_requests__status=BypassRequest.Status.PENDING)
        .select_related("project", "environment")
    )


class BypassRequestForm(forms.ModelForm):
    """Asking for a bypass in the admin: the request goes through the same service as the API."""

    ticket_url = forms.URLField(required=False, assume_scheme="https", max_length=500)
    expires_in_minutes = forms.IntegerField(
        min_value=1,
        max_value=24 * 60,
        initial=4 * 60,
        help_text="How long approvers have to decide (at most 24 h).",
    )

    class Meta:
        model = BypassRequest
        fields = ("validation", "justification", "ticket_url")


@admin.register(BypassRequest)
class BypassRequestAdmin(ServiceFormMixin, ProjectScopedMixin, admin.ModelAdmin):
    """Bypass requests: ops with ``approve_bypass`` on the project approve or reject them with
    the actions; nobody edits a request or its decision. The actions are offered, and each row
    says whether you may decide it, by asking the services' own ``bypass_refusal``."""

    change_right = "approve_bypass"
    change_list_template = "admin/gates/bypassrequest/change_list.html"
    list_display = (
        "build_id",
        "project",
        "environment",
        "status_badge",
        "approvals_count",
        "requested_by",
        "expires_at",
        "created_at",
    )
    list_filter = ("status", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment")
    search_fields = ("build_id", "justification", "requested_by")
    inlines = [BypassApprovalInline]
    actions = ["approve", "reject"]
    readonly_fields = (
        "project",
        "environment",
        "validation_link",
        "build_id",
        "status_badge",
        "justification",
        "ticket_url",
        "requested_by",
        "requester_names_shown",
        "required_approvals",
        "expires_at",
        "decided_at",
        "decided_by",
        "decision_reason",
        "created_at",
    )

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status)

    @admin.display(description="people who may not approve it")
    def requester_names_shown(self, obj):
        """Everyone behind the request (``requester_names``)."""
        return ", ".join(obj.requester_names or ()) or NONE

    @admin.display(description="approvals")
    def approvals_count(self, obj):
        return f"{obj.approvals.count()} of {obj.required_approvals}"

    @admin.display(description="validation")
    def validation_link(self, obj):
        url = reverse("admin:gates_validation_change", args=[obj.validation_id])
        return format_html('<a href="{}">{}</a>', url, obj.validation)

    def get_list_display(self, request):
        @admin.display(description="your decision")
        def your_decision(bypass):
            if bypass.status != BypassRequest.Status.PENDING:
                return NONE
            refusal = bypass_refusal(bypass=bypass, user=request.user)
            return "you may approve" if refusal is None else refusal.detail

        return (*super().get_list_display(request), your_decision)

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = BypassRequestForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("validation", "justification", "ticket_url", "expires_in_minutes")
        return self.readonly_fields

    def get_inline_instances(self, request, obj=None):
        return super().get_inline_instances(request, obj) if obj is not None else []

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj is not None else ()

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "validation":
            kwargs["queryset"] = askable_validations(request.user)
            kwargs["help_text"] = (
                "Blocked builds of the projects where you hold block_deployment, without a request "
                "already waiting for approval."
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def changelist_view(self, request, extra_context=None):
        extra_context = {**(extra_context or {}), "asking_note": self._asking_note(request)}
        return super().changelist_view(request, extra_context)

    def _asking_note(self, request) -> str:
        """Why the user sees no way to ask for a bypass, when they may approve one: asking takes
        ``block_deployment`` on the project (the service's rule), approving ``approve_bypass``."""
        if projects_where(request.user, ASKING_RIGHT).exists():
            return ""
        if not projects_where(request.user, "approve_bypass").exists():
            return ""
        return (
            "You may approve or reject bypass requests; asking for one needs the block_deployment "
            "right on the project."
        )

    def has_change_permission(self, request, obj=None):
        # Opening a request to read it is viewing; it is never edited.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        asking = projects_where(request.user, ASKING_RIGHT)
        return super().has_add_permission(request) and asking.exists()

    def _open_requests_decidable(self, request, *, approving: bool) -> bool:
        """Whether the user may decide at least one open request, by the services' own rule."""
        candidates = BypassRequest.objects.filter(
            status=BypassRequest.Status.PENDING,
            expires_at__gt=timezone.now(),
            project__in=projects_where(request.user, "approve_bypass"),
        ).select_related("project")
        return any(
            bypass_refusal(bypass=bypass, user=request.user, approving=approving) is None
            for bypass in candidates
        )

    def has_approve_permission(self, request):
        return self._open_requests_decidable(request, approving=True)

    def has_reject_permission(self, request):
        return self._open_requests_decidable(request, approving=False)

    def save_model(self, request, obj, form, change):
        if change:
            raise PermissionDenied
        bypass = bypass_request(
            validation=form.cleaned_data["validation"],
            justification=form.cleaned_data["justification"],
            ticket_url=form.cleaned_data["ticket_url"],
            expires_in_minutes=form.cleaned_data["expires_in_minutes"],
            actor=Actor.for_user(request.user),
        )
        # The admin goes on with `obj` (its message, its redirect): make it the row just created.
        for field in BypassRequest._meta.concrete_fields:
            setattr(obj, field.attname, getattr(bypass, field.attname))
        obj._state.adding = False

    @admin.action(description="Approve the selected bypass requests", permissions=["approve"])
    def approve(self, request, queryset):
        for bypass in queryset.select_related("project"):
            try:
                bypass = bypass_approve(bypass=bypass, approver=request.user)
            except ServiceError as exc:
                self.message_user(request, f"{bypass}: {exc.detail}", messages.ERROR)
                continue
            if bypass.status == BypassRequest.Status.APPROVED:
                self.message_user(request, f"{bypass}: approved; the build may deploy.")
            else:
                self.message_user(
                    request,
                    f"{bypass}: approval recorded; it needs {bypass.required_approvals} distinct approvers.",
                    messages.WARNING,
                )

    @admin.action(description="Reject the selected bypass requests", permissions=["reject"])
    def reject(self, request, queryset):
        for bypass in queryset.select_related("project"):
            try:
                bypass_reject(bypass=bypass, user=request.user, reason="rejected in the admin")
            except ServiceError as exc:
                self.message_user(request, f"{bypass}: {exc.detail}", messages.ERROR)
                continue
            self.message_user(request, f"{bypass}: rejected; the build stays blocked.")
