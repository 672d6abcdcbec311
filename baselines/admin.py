"""Baselines in the admin: read-only versions; ops pin or unpin one through the services."""

from django.contrib import admin, messages

from baselines.models import Baseline, BaselineMetric
from baselines.services import baseline_pin, baseline_unpin
from gates.admin.base import ProjectScopedMixin, ReadOnlyAdminMixin
from gates.audit import Actor


class BaselineMetricInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = BaselineMetric
    extra = 0
    fields = ("series", "aggregation", "value", "stdev", "minimum", "maximum", "unit", "run_values")
    readonly_fields = fields


@admin.register(Baseline)
class BaselineAdmin(ReadOnlyAdminMixin, ProjectScopedMixin, admin.ModelAdmin):
    list_display = (
        "project",
        "environment",
        "scenario",
        "version",
        "pinned",
        "run_count",
        "created_by",
        "created_at",
    )
    list_filter = ("pinned", "environment__name", ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "environment", "scenario")
    fields = (
        "project",
        "environment",
        "scenario",
        "version",
        "pinned",
        "source_validation",
        "runs",
        "created_by",
        "note",
        "created_at",
    )
    readonly_fields = fields
    inlines = [BaselineMetricInline]
    actions = ["pin", "unpin"]

    @admin.display(description="runs")
    def run_count(self, obj):
        return obj.runs.count()

    @admin.action(description="Pin the selected version (it stays active)", permissions=["view"])
    def pin(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Pin exactly one version.", messages.ERROR)
            return
        baseline = queryset.get()
        if not request.user.has_perm(
            "gates.change_thresholds", baseline.project
        ) and not request.user.has_perm("gates.change_thresholds"):
            self.message_user(request, f"You may not change baselines of {baseline.project}.", messages.ERROR)
            return
        baseline_pin(baseline=baseline, actor=Actor.for_user(request.user), reason="pinned in the admin")
        self.message_user(request, f"{baseline} is pinned.")

    @admin.action(description="Unpin (follow the newest version again)", permissions=["view"])
    def unpin(self, request, queryset):
        for baseline in queryset.filter(pinned=True).select_related("project", "environment"):
            if not request.user.has_perm(
                "gates.change_thresholds", baseline.project
            ) and not request.user.has_perm("gates.change_thresholds"):
                self.message_user(
                    request, f"You may not change baselines of {baseline.project}.", messages.ERROR
                )
                continue
            baseline_unpin(
                baseline=baseline, actor=Actor.for_user(request.user), reason="unpinned in the admin"
            )
            self.message_user(request, f"{baseline} is unpinned.")
