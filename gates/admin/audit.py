"""The audit log in the admin: view-only for everyone, filterable, searchable, exportable.

A log of millions of rows is paged without counting them all: the paginator counts at most a
few thousand (a LIMITed count is cheap; a full one is not) and says "more" beyond. Exports
stream the filtered log as CSV or JSON, row by row, whatever its size.
"""

import csv
import json
from datetime import datetime, time

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, StreamingHttpResponse
from django.urls import path
from django.utils import timezone
from django.utils.dateparse import parse_date
from django.utils.functional import cached_property

from gates.admin.base import ReadOnlyAdminMixin, fields_table
from gates.models import AuditEvent, Environment
from gates.permissions import sees_every_project, visible_projects

COUNT_CAP = 10_000
EXPORT_FIELDS = (
    "id",
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


class CappedCountPaginator(Paginator):
    """Counts up to COUNT_CAP rows, never the whole log."""

    @cached_property
    def count(self):
        return self.object_list.order_by().values("pk")[: COUNT_CAP + 1].count()


class ActorFilter(admin.SimpleListFilter):
    title = "actor kind"
    parameter_name = "actor_kind"

    def lookups(self, request, model_admin):
        return [
            ("user", "people"),
            ("token", "API tokens"),
            ("system", "perfgate"),
            ("worker", "workers"),
            ("cli", "commands"),
        ]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(actor__startswith=f"{self.value()}:")
        return queryset


class ProjectFilter(admin.SimpleListFilter):
    title = "project"
    parameter_name = "project"

    def lookups(self, request, model_admin):
        slugs = visible_projects(request.user).values_list("slug", flat=True)
        return [(slug, slug) for slug in slugs]

    def queryset(self, request, queryset):
        return queryset.filter(project=self.value()) if self.value() else queryset


class EnvironmentFilter(admin.SimpleListFilter):
    """Fixed choices: listing the distinct values would read the whole log."""

    title = "environment"
    parameter_name = "environment"

    def lookups(self, request, model_admin):
        return Environment.Name.choices

    def queryset(self, request, queryset):
        return queryset.filter(environment=self.value()) if self.value() else queryset


class DateRangeFilter(admin.FieldListFilter):
    """From and to dates (inclusive), as two query parameters: ?created_at__from=…&created_at__to=…"""

    template = "admin/gates/date_range_filter.html"

    def __init__(self, field, request, params, model, model_admin, field_path):
        self.from_key = f"{field_path}__from"
        self.to_key = f"{field_path}__to"
        super().__init__(field, request, params, model, model_admin, field_path)
        self.values = {key: _last(self.used_parameters.get(key)) for key in (self.from_key, self.to_key)}
        # The form keeps the other filters and the search as they are.
        self.kept = [
            (key, value)
            for key, values in request.GET.lists()
            for value in values
            if key not in (self.from_key, self.to_key, "p")
        ]

    def expected_parameters(self):
        return [self.from_key, self.to_key]

    def has_output(self):
        return True

    def choices(self, changelist):
        yield {
            "from_key": self.from_key,
            "to_key": self.to_key,
            "from_value": self.values[self.from_key],
            "to_value": self.values[self.to_key],
            "kept": self.kept,
        }

    def queryset(self, request, queryset):
        start, end = parse_date(self.values[self.from_key] or ""), parse_date(self.values[self.to_key] or "")
        if start:
            queryset = queryset.filter(created_at__gte=timezone.make_aware(datetime.combine(start, time.min)))
        if end:
            queryset = queryset.filter(created_at__lte=timezone.make_aware(datetime.combine(end, time.max)))
        return queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """The audit log is view-only for everyone, superusers included."""

    list_display = ("id", "created_at", "action", "actor", "project", "environment", "target_repr", "reason")
    list_filter = ("action", ProjectFilter, EnvironmentFilter, ActorFilter, ("created_at", DateRangeFilter))
    search_fields = ("action", "actor", "project", "target_repr", "target_id", "reason")
    paginator = CappedCountPaginator
    show_full_result_count = False
    list_per_page = 50
    change_list_template = "admin/gates/auditevent/change_list.html"
    # The event's data as labelled rows; the exports keep it as JSON.
    readonly_fields = tuple("data_shown" if name == "data" else name for name in EXPORT_FIELDS[1:])
    fields = readonly_fields

    @admin.display(description="data")
    def data_shown(self, obj):
        return fields_table(obj.data)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if sees_every_project(request.user):
            return queryset
        return queryset.filter(project__in=visible_projects(request.user).values_list("slug", flat=True))

    def get_urls(self):
        export = self.admin_site.admin_view(self.export)
        return [path("export.<str:kind>", export, name="gates_auditevent_export"), *super().get_urls()]

    def export(self, request, kind: str):
        """The log as the list shows it (same filters and search), streamed as CSV or JSON."""
        if kind not in ("csv", "json"):
            raise Http404("Exports are .csv or .json.")
        if not self.has_view_permission(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        events = changelist.get_queryset(request).order_by("id").values_list(*EXPORT_FIELDS)
        rows = events.iterator(chunk_size=2000)
        stream = _csv(rows) if kind == "csv" else _json(rows)
        response = StreamingHttpResponse(
            stream, content_type="text/csv" if kind == "csv" else "application/json"
        )
        response["Content-Disposition"] = f'attachment; filename="perfgate-audit-log.{kind}"'
        return response


def _last(value) -> str:
    if isinstance(value, (list, tuple)):
        return value[-1] if value else ""
    return value or ""


class _Echo:
    def write(self, value):
        return value


def _csv(rows):
    writer = csv.writer(_Echo())
    yield writer.writerow(EXPORT_FIELDS)
    for row in rows:
        yield writer.writerow(
            [json.dumps(v, cls=DjangoJSONEncoder) if isinstance(v, (dict, list)) else v for v in row]
        )


def _json(rows):
    yield "["
    first = True
    for row in rows:
        yield (
            ("" if first else ",")
            + "\n"
            + json.dumps(dict(zip(EXPORT_FIELDS, row, strict=True)), cls=DjangoJSONEncoder)
        )
        first = False
    yield "\n]\n"
