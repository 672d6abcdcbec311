"""Pages outside the admin and the API: the charts of a validation, as SVG (its history against
the baseline and the band the decision used, and its latency distribution against the baseline).

They are linked from API responses, pull-request comments and the admin, so they take either an
admin session (with the project visible) or an API token of the validation's project.
"""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed

from gates import selectors
from gates.charts import distribution_svg, history_svg
from gates.models import Validation
from gates.permissions import visible_projects
from integrations.auth import ApiTokenAuthentication
from perfgate_site.api import invalid_body


def _unauthorized(detail: str) -> HttpResponse:
    response = HttpResponse(detail, status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="perfgate"'
    return response


def _not_found() -> HttpResponse:
    return HttpResponse("Not found.", status=404, content_type="text/plain")


def _refusal(request, validation: Validation) -> HttpResponse | None:
    """Why the request may not see the validation's charts (a response), or None when it may: a
    token of another project, or one limited to other environments, sees nothing (404)."""
    if request.headers.get("Authorization"):
        try:
            authenticated = ApiTokenAuthentication().authenticate(request)
        except AuthenticationFailed as exc:
            return _unauthorized(str(exc.detail))
        token = authenticated[1] if authenticated else None
        if (
            token is None
            or token.is_monitoring  # it may only post alerts
            or token.project_id != validation.project_id
            or not token.allows_environment(validation.environment.name)
        ):
            return _not_found()
        return None
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="admin:login")
    if not visible_projects(request.user).filter(pk=validation.project_id).exists():
        return _not_found()
    return None


def _svg(svg: str) -> HttpResponse:
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=60"
    return response


class ChartQuery(serializers.Serializer):
    """Which series the chart draws, no longer than the columns it is looked up in; a NUL byte
    (which PostgreSQL cannot compare) is refused like any other invalid input."""

    metric = serializers.CharField(max_length=300, default="http_req_duration")
    aggregation = serializers.CharField(max_length=32, default="p(95)")


class DistributionQuery(serializers.Serializer):
    """Which trend series the distribution chart draws."""

    metric = serializers.CharField(max_length=300, default="http_req_duration")


def _validation(pk) -> Validation:
    return get_object_or_404(Validation.objects.select_related("project", "environment", "scenario"), pk=pk)


@require_GET
def validation_chart(request, pk):
    validation = _validation(pk)
    refused = _refusal(request, validation)
    if refused is not None:
        return refused
    query = ChartQuery(data=request.GET.dict())
    if not query.is_valid():
        return JsonResponse(invalid_body(query.errors), status=400)
    return _svg(history_svg(**selectors.chart_of(validation, **query.validated_data)))


@require_GET
def validation_distribution_chart(request, pk):
    validation = _validation(pk)
    refused = _refusal(request, validation)
    if refused is not None:
        return refused
    query = DistributionQuery(data=request.GET.dict())
    if not query.is_valid():
        return JsonResponse(invalid_body(query.errors), status=400)
    return _svg(distribution_svg(**selectors.distribution_of(validation, **query.validated_data)))
