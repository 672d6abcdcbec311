"""Validations and bypass requests in the admin: read-only records, acted on through actions
that call the services."""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from gates.admin.base import ProjectScopedMixin, ReadOnlyAdminMixin, ServiceFormMixin, badge
from gates.audit import Actor
from gates.errors import ServiceError
from gates.models import BypassApproval, BypassRequest, CheckResult, Validation
from gates.permissions import may, projects_where
from gates.services import bypass_approve, bypass_reject, bypass_request, validation_cancel
from gates.services.bypasses import bypass_refusal

NOTICE_COLOUR = "#bc4c00"


class CheckResultInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = CheckResult
    extra = 0
    fields = (
        "verdict_badge",
        "label",
        "severity",
        "observed",
        "baseline_value",
        "change",
        "limit",
        "p_value",
        "reason",
    )
    readonly_fields = fields
    ordering = ("position",)

    @admin.display(description="verdict")
    def verdict_badge(self, obj):
        return badge(obj.verdict)

    @admin.display(description="change")
    def change(self, obj):
        return "—" if obj.change_pct is None else f"{obj.change_pct:+.1f}%"


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

    list_display = (
        "build_id",
        "project",
        "environment_name",
        "status_badge",
        "verdict_badge",
        "deployment_allowed",
        "git_short",
        "short_reason",
        "created_at",
    )
    list_filter = ("status", "verdict", "environment__name", ("project", admin.RelatedOnlyFieldListFilter))
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
        "deployment_allowed",
        "would_block",
        "status_reason",
        "reasons",
        "chart",
        "bypasses",
        "baseline",
        "requested_by",
        "test_config",
        "deployment_context",
        "created_at",
        "started_at",
        "finished_at",
    )
    readonly_fields = fields

    @admin.display(description="environment", ordering="environment__name")
    def environment_name(self, obj):
        return obj.environment.name

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return badge(obj.status)

    @admin.display(description="verdict", ordering="verdict")
    def verdict_badge(self, obj):
        return badge(obj.verdict)

    @admin.display(description="git")
    def git_short(self, obj):
        return obj.git_hash[:10]

    @admin.display(description="why")
    def short_reason(self, obj):
        reason = obj.status_reason
        return reason if len(reason) <= 120 else reason[:119] + "…"

    @admin.display(description="history")
    def chart(self, obj):
        url = reverse("validation-chart", args=[obj.pk])
        return format_html(
            '<img src="{}" alt="p(95) history of {}" width="720" height="300">', url, obj.scenario
        )

    @admin.display(description="bypass requests")
    def bypasses(self, obj):
        rows = [
            (reverse("admin:gates_bypassrequest_change", args=[b.pk]), b.status, b.requested_by)
            for b in obj.bypass_requests.all()
        ]
        if not rows:
            return "—"
        return format_html(
            "<ul>{}</ul>", format_html_join("", '<li><a href="{}">{}</a> — asked by {}</li>', rows)
        )

    @admin.display(description="notices")
    def notices(self, obj):
        """What the gate could not check, shown before everything else that was decided
        (e.g. "relative rules are not active: no baseline since …")."""
        notices = (obj.report or {}).get("notices") or []
        if not notices:
            return "—"
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join(
                "", '<li><strong style="color:{}">⚠ {}</strong></li>', ((NOTICE_COLOUR, n) for n in notices)
            ),
        )

    @admin.display(description="blocking reasons")
    def reasons(self, obj):
        if not obj.blocking_reasons:
            return "—"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((r,) for r in obj.blocking_reasons))
        )


class BypassApprovalInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = BypassApproval
    extra = 0
    fields = ("approver", "created_at")
    readonly_fields = fields


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
    list_filter = ("status", "environment__name", ("project", admin.RelatedOnlyFieldListFilter))
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
        "requester_names",
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
                return "—"
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
            kwargs["queryset"] = Validation.objects.filter(
                status=Validation.Status.BLOCKED, project__in=projects_where(request.user, "block_deployment")
            ).select_related("project", "environment")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request, obj=None):
        # Opening a request to read it is viewing; it is never edited.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_add_permission(self, request):
        asking = projects_where(request.user, "block_deployment")
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
