"""What the admin's pages share: verdict badges, read-only records, audited configuration edits,
and scoping to the projects a user may see."""

from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpResponseRedirect
from django.utils.html import format_html, format_html_join

from gates.audit import Actor, audit_record
from gates.config import config_snapshot
from gates.errors import ServiceError
from gates.models import Environment, Project
from gates.permissions import may, projects_where, sees_every_project, visible_projects

VERDICT_COLOURS = {
    "pass": "#1a7f37",
    "allowed": "#1a7f37",
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


NONE = "\u2013"  # one en dash for "none", everywhere a person reads the admin
BLOCKING_COLOUR = "#cf222e"
QUIET_COLOUR = "#57606a"


def label(value: str) -> str:
    """A status, verdict or state as the admin writes it: first letter capital ("No baseline"),
    as Django writes the same choices in the list filters."""
    if not value:
        return NONE
    text = value.replace("_", " ")
    return text[:1].upper() + text[1:]


def badge(value: str):
    if not value:
        return NONE
    colour = VERDICT_COLOURS.get(value, QUIET_COLOUR)
    return format_html('<strong style="color:{}">{}</strong>', colour, label(value))


def consequence(happens: bool, what: str):
    """What the gate would do, in words that cannot be misread: a red "would block" or a grey
    "would not block" (a green tick would read as good news)."""
    if happens:
        return format_html(
            '<strong class="perfgate-would" style="color:{}">would {}</strong>', BLOCKING_COLOUR, what
        )
    return format_html(
        '<span class="perfgate-would-not" style="color:{}">would not {}</span>', QUIET_COLOUR, what
    )


def fields_table(data):
    """A JSON field (a test config, a deployment context, a policy) as labelled rows a person
    reads: nested objects indented, lists joined, nothing as raw JSON; one en dash when empty."""
    if data in (None, "", [], {}):
        return NONE
    if not isinstance(data, dict):
        return _plain(data)
    return format_html(
        '<table class="perfgate-fields" style="margin:0"><tbody>{}</tbody></table>',
        format_html_join(
            "",
            '<tr><th scope="row" style="padding:2px 12px 2px 0;font-weight:600">{}</th>'
            '<td style="padding:2px 0">{}</td></tr>',
            (
                (key, fields_table(value) if isinstance(value, dict) else _plain(value))
                for key, value in data.items()
            ),
        ),
    )


def _plain(value) -> str:
    if value is None or value == "" or value == []:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_plain(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {_plain(item)}" for key, item in value.items())
    return str(value)


class _TitledFilter(admin.FieldListFilter):
    """The filter Django would choose for the field, under a title that says what it filters."""

    filter_title = ""

    def __new__(cls, field, request, params, model, model_admin, field_path):
        spec = admin.FieldListFilter.create(field, request, params, model, model_admin, field_path)
        spec.title = cls.filter_title
        return spec


def titled_filter(field_path: str, title: str) -> tuple:
    """A ``list_filter`` entry named after what it filters: ``titled_filter("environment__name",
    "environment")`` is "By environment", not Django's "By name"."""
    return field_path, type(
        f"{title.title().replace(' ', '')}Filter", (_TitledFilter,), {"filter_title": title}
    )


ENVIRONMENT_FILTER = titled_filter("environment__name", "environment")


class ReadOnlyAdminMixin:
    """Nobody adds, changes or deletes these rows in the admin, superusers included: they are
    decisions made by the gate, or records of them. Viewing follows the view permission."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ServiceFormMixin:
    """For admins whose form is saved by a service: a refusal (``ServiceError``: a missing right,
    a state that no longer allows it) comes back as a message on the form's page, not as a server
    error. The admin's transaction, and the service's with it, has rolled back."""

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ServiceError as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())


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


class ProjectScopedMixin:
    """Shows each user the rows of the projects they may see, and lets them change a row only
    with ``change_right`` on its project (``gates.permissions.may``). Choices of project (and of
    rows tied to a project) in forms are limited the same way (``projects_where``)."""

    project_path = "project"
    change_right = "change_thresholds"

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if sees_every_project(request.user):
            return queryset
        return queryset.filter(**{f"{self.project_path}__in": visible_projects(request.user)})

    def _project_of(self, obj):
        for part in self.project_path.split("__"):
            obj = getattr(obj, part)
        return obj

    def has_change_permission(self, request, obj=None):
        allowed = super().has_change_permission(request, obj)
        if not allowed or obj is None:
            return allowed
        return may(request.user, self.change_right, self._project_of(obj))

    def has_delete_permission(self, request, obj=None):
        # Without an object this decides whether "Delete selected" is offered at all.
        allowed = super().has_delete_permission(request, obj)
        if not allowed:
            return False
        if obj is None:
            return projects_where(request.user, self.change_right).exists()
        return may(request.user, self.change_right, self._project_of(obj))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        changeable = projects_where(request.user, self.change_right)
        if db_field.name == "project":
            kwargs["queryset"] = changeable
        elif db_field.name in ("scenario", "environment"):
            kwargs["queryset"] = db_field.related_model.objects.filter(project__in=changeable)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
