"""Pages outside the admin and the API: the history chart of a validation, as SVG.

It is linked from API responses and pull-request comments, so it takes either an admin session
(with the project visible) or an API token of the validation's project.
"""

from django.contrib.auth.views import redirect_to_login
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET
from rest_framework.exceptions import AuthenticationFailed

from gates import selectors
from gates.charts import history_svg
from gates.models import Validation
from gates.permissions import visible_projects
from integrations.auth import ApiTokenAuthentication


def _unauthorized(detail: str) -> HttpResponse:
    response = HttpResponse(detail, status=401, content_type="text/plain")
    response["WWW-Authenticate"] = 'Bearer realm="perfgate"'
    return response


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
            or token.project_id != validation.project_id
            or not token.allows_environment(validation.environment.name)
        ):
            return HttpResponse("Not found.", status=404, content_type="text/plain")
    elif not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path(), login_url="admin:login")
    elif not visible_projects(request.user).filter(pk=validation.project_id).exists():
        return HttpResponse("Not found.", status=404, content_type="text/plain")
    metric = request.GET.get("metric", "http_req_duration")[:300]
    aggregation = request.GET.get("aggregation", "p(95)")[:32]
    svg = history_svg(**selectors.chart_of(validation, metric, aggregation))
    response = HttpResponse(svg, content_type="image/svg+xml")
    response["Cache-Control"] = "private, max-age=60"
    return response
