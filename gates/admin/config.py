"""Configuration in the admin: projects (and who may do what on them), environments, scenarios,
rules. Every edit is audited with its before and after."""

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.timezone import localtime
from guardian.admin import GuardedModelAdmin

from baselines.selectors import blind_now, not_active_since
from gates.admin.base import NONE, ConfigSourceMixin, ProjectScopedMixin, titled_filter
from gates.calibration import rule_noise
from gates.models import Environment, Project, Scenario, ThresholdRule
from gates.permissions import projects_where, sees_every_project, visible_projects
from gates.selectors import shadow_figures


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


class EnvironmentForm(forms.ModelForm):
    """An environment's policy. Its watch scenario must be one of its own project's: a probe runs
    the scenario's script against this environment's deployments."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        scenario = self.fields.get("watch_scenario")
        if scenario is not None and self.instance.project_id:
            scenario.queryset = scenario.queryset.filter(project_id=self.instance.project_id)

    def clean(self):
        cleaned = super().clean()
        scenario, project = cleaned.get("watch_scenario"), cleaned.get("project")
        if scenario is not None and project is not None and scenario.project_id != project.pk:
            self.add_error("watch_scenario", f"Choose a scenario of {project.slug}.")
        return cleaned


@admin.register(Environment)
class EnvironmentAdmin(ConfigSourceMixin, ProjectScopedMixin, admin.ModelAdmin):
    """An environment's policy, with what the gate sees there: whether its relative rules have a
    baseline to compare with, and how often each rule would have blocked recently (to tune a
    rule in shadow mode before enforcing it)."""

    list_display = (
        "project",
        "name",
        "mode",
        "fail_closed",
        "require_staging_pass",
        "bypass_approvals",
        "relative_rules",
        "source",
    )
    list_filter = (titled_filter("name", "environment"), "mode", "fail_closed")
    list_select_related = ("project",)
    form = EnvironmentForm
    readonly_fields = ("relative_rules", "shadow_table")
    GATE_FIELDS = readonly_fields
    WATCH_FIELDS = (
        "watch_scenario",
        "watch_initial_delay_seconds",
        "watch_interval_seconds",
        "watch_window_seconds",
        "watch_failure_limit",
        "watch_consecutive",
        "watch_inconclusive_limit",
        "watch_consecutive_error_limit",
        "watch_dry_run",
        "auto_rollback",
        "rollback_workflow",
    )

    def get_fieldsets(self, request, obj=None):
        fieldsets = super().get_fieldsets(request, obj)
        own = set(self.GATE_FIELDS) | set(self.WATCH_FIELDS)
        fields = [field for field in fieldsets[0][1]["fields"] if field not in own]
        watching = (
            "Watching production",
            {
                "fields": self.WATCH_FIELDS,
                "description": "After a deployment reaches this environment, its watch scenario probes it "
                "gently for a window (Argo Rollouts' names: failureLimit, inconclusiveLimit, "
                "consecutiveErrorLimit). An error never rolls back.",
            },
        )
        if obj is None:
            return [(None, {"fields": fields}), watching]
        return [(None, {"fields": fields}), watching, ("What the gate sees", {"fields": self.GATE_FIELDS})]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "watch_scenario":
            kwargs["queryset"] = Scenario.objects.filter(
                project__in=projects_where(request.user, self.change_right)
            ).select_related("project")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="Relative rules")
    def relative_rules(self, obj):
        """Per scenario: "active", or "not active: no baseline since …" when its key relative
        rules have had no baseline for more than PERFGATE_BLIND_AFTER validations in a row."""
        states = []
        for scenario in obj.project.scenarios.order_by("name"):
            since = blind_now(obj, scenario)
            states.append((scenario.name, "active" if since is None else not_active_since(since)))
        if not states:
            return NONE
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join(
                "",
                '<li>{}: <strong style="color:{}">{}</strong></li>',
                ((name, "#1a7f37" if state == "active" else "#bc4c00", state) for name, state in states),
            ),
        )

    @admin.display(description="Shadow figures")
    def shadow_table(self, obj):
        """How often each rule would have blocked over the last PERFGATE_SHADOW_WINDOW validations."""
        figures = shadow_figures(obj)
        if not figures:
            return "No finished validation yet."
        rows = (
            (
                figure.label,
                figure.severity,
                figure.scenario or NONE,
                f"{'would have blocked' if figure.would_block else 'failed'} {figure.hits} of "
                f"{figure.checked}",
                date_format(localtime(figure.last_hit), "DATETIME_FORMAT") if figure.last_hit else NONE,
            )
            for figure in figures
        )
        return format_html(
            "<table><thead><tr><th>rule</th><th>severity</th><th>scenario</th><th>last {} validations</th>"
            "<th>last time</th></tr></thead><tbody>{}</tbody></table>",
            settings.PERFGATE_SHADOW_WINDOW,
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )


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
    # What `manage.py calibrate` measured: a record, never edited here.
    readonly_fields = ("calibration", "calibrated_noise")

    @admin.display(description="Noise of its relative rules")
    def calibrated_noise(self, obj):
        """Each relative rule with its calibrated noise, flagged when its fail % is below it."""
        if obj.pk is None:
            return NONE
        relative = obj.rules.filter(kind=ThresholdRule.Kind.RELATIVE).select_related("scenario")
        rows = [(rule.label, _noise_html(rule)) for rule in relative.order_by("id")]
        if not rows:
            return "No relative rule."
        return format_html(
            '<ul style="margin:0;padding:0;list-style:none">{}</ul>',
            format_html_join("", "<li>{}: {}</li>", rows),
        )


@admin.register(ThresholdRule)
class ThresholdRuleAdmin(ConfigSourceMixin, ProjectScopedMixin, admin.ModelAdmin):
    list_display = (
        "project",
        "scenario",
        "metric",
        "kind",
        "expression",
        "noise",
        "severity",
        "applies_to",
        "source",
    )
    list_filter = ("kind", "severity", ("project", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("project", "scenario")
    filter_horizontal = ("environments",)
    search_fields = ("metric", "threshold", "scenario__name", "project__slug")
    fieldsets = (
        (None, {"fields": ("project", "scenario", "environments", "metric", "kind", "severity")}),
        ("Absolute rule", {"fields": ("threshold",)}),
        ("Relative rule", {"fields": ("aggregation", "warn_pct", "fail_pct", "floor", "direction", "noise")}),
        ("Origin", {"fields": ("config_source",)}),
    )
    readonly_fields = ("noise",)

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

    @admin.display(description="calibrated noise")
    def noise(self, obj):
        return _noise_html(obj)

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


def _noise_html(rule: ThresholdRule):
    """``CV 6.8%, detects ≥ 23% (history) / ≥ 14% (gate-run), calibrated 2026-12-01 on staging``,
    with a red "below noise" when the rule fails from a smaller change than history mode sees."""
    noise = rule_noise(rule) if rule.pk is not None else None
    if noise is None:
        return NONE if rule.kind != ThresholdRule.Kind.RELATIVE else "not calibrated"
    if not noise.below_noise:
        return noise.describe()
    return format_html(
        '{} <strong style="color:#cf222e" title="Its fail % ({}%) is below what history mode can tell '
        'from noise: smaller regressions warn instead of blocking.">below noise</strong>',
        noise.describe(),
        f"{noise.fail_pct:g}",
    )
