"""Top-level URLs: the admin (ops and auditors) and, under /api/, the CI API."""

from django.contrib import admin
from django.urls import path

admin.site.site_header = "perfgate"
admin.site.site_title = "perfgate"
admin.site.index_title = "Performance gates"

urlpatterns = [
    path("admin/", admin.site.urls),
]
