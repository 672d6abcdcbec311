"""Baselines in the admin: read-only versions; ops pin or unpin one through the services."""

from django.contrib import admin, messages

from baselines.models import Baseline, BaselineMetric
from baselines.services import baseline_pin, baseline_unpin
from gates.admin.base import ENVIRONMENT_FILTER, ProjectScopedMixin, ReadOnlyAdminMixin
from gates.audit import Actor
from gates.errors import ServiceError
from gates.permissions import projects_where


class BaselineMetricInline(ReadOnlyAdminMixin, admin.TabularInline):
    """Each metric's centre (the median of the runs), its noise, and the per-run values, oldest first."""

    model = BaselineMetric
    extra = 0
    fields = (
        "series",
        "aggregation",
        "median",
        "noise_pct",
        "stdev",
        "minimum",
        "maximum",
        "unit",
        "run_values",
    )
    readonly_fields = fields

    @admin.display(description="median")
    def median(self, obj):
        return f"{obj.value:g}"

    @admin.display(description="noise")
    def noise_pct(self, obj):
        return "— (under 3 runs)" if obj.noise is None else f"±{obj.noise * 100:.1f}%"


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
    list_filter = ("pinned", ENVIRONMENT_FILTER, ("project", admin.RelatedOnlyFieldListFilter))
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

    def has_pin_permission(self, request):
        return projects_where(request.user, "change_thresholds").exists()

    @admin.action(description="Pin the selected version (it stays active)", permissions=["pin"])
    def pin(self, request, queryset):
        """Needs ``change_thresholds`` on the baseline's project, which the service checks."""
        if queryset.count() != 1:
            self.message_user(request, "Pin exactly one version.", messages.ERROR)
            return
        baseline = queryset.select_related("project", "environment").get()
        try:
            baseline_pin(baseline=baseline, actor=Actor.for_user(request.user), reason="pinned in the admin")
        except ServiceError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.message_user(request, f"{baseline} is pinned.")

    @admin.action(description="Unpin (follow the newest version again)", permissions=["pin"])
    def unpin(self, request, queryset):
        """Needs ``change_thresholds`` on each baseline's project, which the service checks."""
        for baseline in queryset.filter(pinned=True).select_related("project", "environment"):
            try:
                baseline_unpin(
                    baseline=baseline, actor=Actor.for_user(request.user), reason="unpinned in the admin"
                )
            except ServiceError as exc:
                self.message_user(request, exc.detail, messages.ERROR)
                continue
            self.message_user(request, f"{baseline} is unpinned.")
