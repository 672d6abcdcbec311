"""Pages outside the admin and the API: the history chart of a validation, as SVG.

It is linked from API responses and pull-request comments, so it takes either an admin session
(with the project visible) or an API token of the validation's project.
"""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from rest_framework import serializers
from rest_framework.exceptions import AuthenticationFailed

from gates import selectors
from gates.charts import history_svg
from gates.models import Validation
from gates.permissions import visible_projects
from integrations.auth import ApiTokenAuthentication
from perfgate_site.api import invalid_body


def _unauthorized(detail: str) -> HttpResponse:
    response = HttpResponse(detail, status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="perfgate"'
    return response


class ChartQuery(serializers.Serializer):
    """Which series the chart draws, no longer than the columns it is looked up in; a NUL byte
    (which PostgreSQL cannot compare) is refused like any other invalid input."""

    metric = serializers.CharField(max_length=300, default="http_req_duration")
    aggregation = serializers.CharField(max_length=32, default="p(95)")


@require_GET
def validation_chart(request, pk):
    validation = get_object_or_404(
        Validation.objects.select_related("project", "environment", "scenario"), pk=pk
    )
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
            return HttpResponse("Not found.", status=404, content_type="text/plain")
    elif not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="admin:login")
    elif not visible_projects(request.user).filter(pk=validation.project_id).exists():
        return HttpResponse("Not found.", status=404, content_type="text/plain")
    query = ChartQuery(data=request.GET.dict())
    if not query.is_valid():
        return JsonResponse(invalid_body(query.errors), status=400)
    svg = history_svg(**selectors.chart_of(validation, **query.validated_data))
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=60"
    return response
