"""Top-level URLs: the admin (ops and auditors), the CI API, its schema, and health probes."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gates.admin.dashboard import dashboard_index
from gates.views import validation_chart, validation_distribution_chart
from perfgate_site.health import healthz, readyz

admin.site.site_header = "perfgate"
admin.site.site_title = "perfgate"
admin.site.index_title = "Performance gates"

urlpatterns = [
    # The admin's index is its dashboard; the rest of the admin follows.
    path("admin/", dashboard_index(admin.site), name="dashboard"),
    path("admin/", admin.site.urls),
    path("api/ci-cd/performance/", include("gates.urls")),
    path("api/ci-cd/webhooks/", include("integrations.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("charts/validations/<uuid:pk>.svg", validation_chart, name="validation-chart"),
    path(
        "charts/validations/<uuid:pk>/distribution.svg",
        validation_distribution_chart,
        name="validation-distribution-chart",
    ),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]

handler404 = "perfgate_site.api.json_not_found"
handler500 = "perfgate_site.api.json_server_error"
