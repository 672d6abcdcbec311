"""The admin: ops edit projects, environments, scenarios and rules; everyone reads validations
and the audit log, which nobody can change here."""

from django.contrib import admin, messages
from django.db import transaction
from django.utils.html import format_html, format_html_join

from gates.audit import Actor, audit_record
from gates.config import config_snapshot
from gates.errors import ServiceError
from gates.models import (
    AuditEvent,
    CheckResult,
    Environment,
    Project,
    Scenario,
    ThresholdRule,
    Validation,
)
from gates.services import validation_cancel

VERDICT_COLOURS = {
    "pass": "#1a7f37",
    "passed": "#1a7f37",
    "warn": "#9a6700",
    "no_baseline": "#9a6700",
    "fail": "#cf222e",
    "blocked": "#cf222e",
    "error": "#cf222e",
    "failed": "#bc4c00",
    "inconclusive": "#8250df",
    "bypassed": "#8250df",
    "queued": "#57606a",
    "running": "#0969da",
}


def badge(value: str):
    if not value:
        return "—"
    colour = VERDICT_COLOURS.get(value, "#57606a")
    return format_html('<strong style="color:{}">{}</strong>', colour, value.replace("_", " "))


class ReadOnlyAdminMixin:
    """Nobody adds, changes or deletes these rows in the admin, superusers included: they are
    decisions made by the gate, or records of them. Viewing follows the view permission."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ConfigSourceMixin:
    """Shows where a setting came from, and audits every edit with its before and after."""

    @admin.display(description="source")
    def source(self, obj):
        if obj.config_source:
            return format_html(
                '<span title="Managed by this file: apply_config overwrites edits made here">📄 {}</span>',
                obj.config_source,
            )
        return "admin"

    def get_readonly_fields(self, request, obj=None):
        return (*super().get_readonly_fields(request, obj), "config_source")

    def save_model(self, request, obj, form, change):
        obj._audit_before = config_snapshot(type(obj).objects.get(pk=obj.pk)) if change else None
        super().save_model(request, obj, form, change)

    def save_related(self, request, form, formsets, change):
        super().save_related(request, form, formsets, change)
        obj = form.instance
        after = config_snapshot(obj)
        before = getattr(obj, "_audit_before", None)
        if before == after:
            return
        kind = obj._meta.model_name
        audit_record(
            action=f"config.{kind}.{'updated' if change else 'created'}",
            actor=Actor.for_user(request.user),
            target=obj,
            project=_project_slug(obj),
            environment=getattr(obj, "name", "") if isinstance(obj, Environment) else "",
            reason="edited in the admin",
            data={"before": before, "after": after},
        )
        if obj.config_source:
            messages.warning(
                request,
                f"{obj} is managed by {obj.config_source}: the next apply_config of that "
                "file will overwrite this edit.",
            )

    def delete_model(self, request, obj):
        with transaction.atomic():
            self._audit_delete(request, obj)
            super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():
            for obj in queryset:
                self._audit_delete(request, obj)
            super().delete_queryset(request, queryset)

    def _audit_delete(self, request, obj):
        audit_record(
            action=f"config.{obj._meta.model_name}.deleted",
            actor=Actor.for_user(request.user),
            target=obj,
            project=_project_slug(obj),
            reason="deleted in the admin",
            data={"before": config_snapshot(obj)},
        )


def _project_slug(obj) -> str:
    return obj.slug if isinstance(obj, Project) else obj.project.slug


class EnvironmentInline(admin.TabularInline):
    model = Environment
    extra = 0
    fields = (
        "name",
        "mode",
        "fail_closed",
        "require_staging_pass",
        "bypass_approvals",
        "auto_baseline",
        "config_source",
    )
    readonly_fields = ("config_source",)


@admin.register(Project)
class ProjectAdmin(ConfigSourceMixin, admin.ModelAdmin):
    list_display = ("slug", "name", "repository", "source")
    search_fields = ("slug", "name", "repository")
    prepopulated_fields = {"slug": ("name",)}


@admin.register(Environment)
class EnvironmentAdmin(ConfigSourceMixin, admin.ModelAdmin):
    list_display = (
        "project",
        "name",
        "mode",
        "fail_closed",
        "require_staging_pass",
        "bypass_approvals",
        "source",
    )
    list_filter = ("name", "mode", "fail_closed")
    list_select_related = ("project",)


@admin.register(Scenario)
class ScenarioAdmin(ConfigSourceMixin, admin.ModelAdmin):
    list_display = (
        "project",
        "name",
        "tool",
        "vus",
        "duration_seconds",
        "min_requests",
        "is_default",
        "source",
    )
    list_filter = ("tool", "project")
    list_select_related = ("project",)
    search_fields = ("name", "project__slug")


@admin.register(ThresholdRule)
class ThresholdRuleAdmin(ConfigSourceMixin, admin.ModelAdmin):
    list_display = ("project", "scenario", "metric", "kind", "expression", "severity", "applies_to", "source")
    list_filter = ("kind", "severity", "project")
    list_select_related = ("project", "scenario")
    filter_horizontal = ("environments",)
    search_fields = ("metric", "threshold", "scenario__name", "project__slug")
    fieldsets = (
        (None, {"fields": ("project", "scenario", "environments", "metric", "kind", "severity")}),
        ("Absolute rule", {"fields": ("threshold",)}),
        ("Relative rule", {"fields": ("aggregation", "warn_pct", "fail_pct", "floor", "direction")}),
        ("Origin", {"fields": ("config_source",)}),
    )

    @admin.display(description="rule")
    def expression(self, obj):
        if obj.kind == ThresholdRule.Kind.RELATIVE:
            warn = f"warn +{obj.warn_pct:g}% / " if obj.warn_pct is not None else ""
            return (
                f"{obj.aggregation}: {warn}fail +{obj.fail_pct:g}%"
                if obj.fail_pct is not None
                else f"{obj.aggregation}: default limits"
            )
        return obj.threshold

    @admin.display(description="environments")
    def applies_to(self, obj):
        names = [e.name for e in obj.environments.all()]
        return ", ".join(names) or "all"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("environments")


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
class ValidationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: a decision is made by the gate, never typed into a form. Ops act on validations
    through actions, which call the services."""

    actions = ["cancel"]

    @admin.action(description="Cancel the selected queued or running validations", permissions=["view"])
    def cancel(self, request, queryset):
        for validation in queryset.select_related("project"):
            allowed = request.user.has_perm(
                "gates.block_deployment", validation.project
            ) or request.user.has_perm("gates.block_deployment")
            if not allowed:
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
    list_filter = ("status", "verdict", "environment__name", "project")
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
        "deployment_allowed",
        "would_block",
        "status_reason",
        "reasons",
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

    @admin.display(description="blocking reasons")
    def reasons(self, obj):
        if not obj.blocking_reasons:
            return "—"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((r,) for r in obj.blocking_reasons))
        )


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The audit log is view-only for everyone, superusers included."""

    list_display = ("id", "created_at", "action", "actor", "project", "environment", "target_repr", "reason")
    list_filter = ("action", "environment")
    search_fields = ("action", "actor", "project", "target_repr", "reason")
    readonly_fields = (
        "created_at",
        "action",
        "actor",
        "actor_user_id",
        "project",
        "environment",
        "target_type",
        "target_id",
        "target_repr",
        "reason",
        "data",
        "prev_hash",
        "hash",
    )
    fields = readonly_fields
