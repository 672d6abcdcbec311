"""Configuration in the admin: projects (and who may do what on them), environments, scenarios,
rules. Every edit is audited with its before and after."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from guardian.admin import GuardedModelAdmin

from gates.admin.base import ConfigSourceMixin, ProjectScopedMixin
from gates.models import Environment, Project, Scenario, ThresholdRule
from gates.permissions import projects_where, sees_every_project, visible_projects


class EnvironmentInline(admin.TabularInline):
    """Shown on the project; edited on its own page, where every change is audited."""

    model = Environment
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "name",
        "mode",
        "fail_closed",
        "require_staging_pass",
        "bypass_approvals",
        "auto_baseline",
        "config_source",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(ConfigSourceMixin, ProjectScopedMixin, GuardedModelAdmin):
    """Projects, and who may approve bypasses, block, change thresholds or roll back on each:
    the "Object permissions" button of a project (superusers)."""

    project_path = "pk"
    list_display = ("slug", "name", "repository", "source")
    search_fields = ("slug", "name", "repository")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [EnvironmentInline]

    def _project_of(self, obj):
        return obj

    def get_queryset(self, request):
        queryset = super(ProjectScopedMixin, self).get_queryset(request)
        if sees_every_project(request.user):
            return queryset
        return queryset.filter(pk__in=visible_projects(request.user))

    # Guardian lets anyone who may change projects give rights on them, themselves included:
    # whoever could edit a project could then approve its bypasses. Only superusers give rights.
    def _refuse_unless_superuser(self, request):
        if not (request.user.is_active and request.user.is_superuser):
            raise PermissionDenied

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        response = super().render_change_form(request, context, add, change, form_url, obj)
        if not request.user.is_superuser:
            response.template_name = "admin/change_form.html"  # without the "Object permissions" button
        return response

    def obj_perms_manage_view(self, request, object_pk):
        self._refuse_unless_superuser(request)
        return super().obj_perms_manage_view(request, object_pk)

    def obj_perms_manage_user_view(self, request, object_pk, user_id):
        self._refuse_unless_superuser(request)
        return super().obj_perms_manage_user_view(request, object_pk, user_id)

    def obj_perms_manage_group_view(self, request, object_pk, group_id):
        self._refuse_unless_superuser(request)
        return super().obj_perms_manage_group_view(request, object_pk, group_id)


@admin.register(Environment)
class EnvironmentAdmin(ConfigSourceMixin, ProjectScopedMixin, admin.ModelAdmin):
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
class ScenarioAdmin(ConfigSourceMixin, ProjectScopedMixin, admin.ModelAdmin):
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
    list_filter = ("tool", ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project",)
    search_fields = ("name", "project__slug")


@admin.register(ThresholdRule)
class ThresholdRuleAdmin(ConfigSourceMixin, ProjectScopedMixin, admin.ModelAdmin):
    list_display = ("project", "scenario", "metric", "kind", "expression", "severity", "applies_to", "source")
    list_filter = ("kind", "severity", ("project", admin.RelatedOnlyFieldListFilter))
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

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        if db_field.name == "environments":
            kwargs["queryset"] = Environment.objects.filter(
                project__in=projects_where(request.user, self.change_right)
            ).select_related("project")
        return super().formfield_for_manytomany(db_field, request, **kwargs)
