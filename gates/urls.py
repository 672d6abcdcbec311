"""The CI API under /api/ci-cd/performance/ (paths are part of the contract)."""

from django.urls import path

from gates import api

app_name = "api"

urlpatterns = [
    path("validate", api.ValidateView.as_view(), name="validate"),
    # Async: a long-poll waits on the event loop, not in a thread (gates/waiting.py).
    path("status/<str:buildId>", api.status_view, name="status"),
    path("block", api.BlockView.as_view(), name="block"),
    path("cancel", api.CancelView.as_view(), name="cancel"),
    path("bypass", api.BypassView.as_view(), name="bypass"),
    path("history", api.HistoryView.as_view(), name="history"),
    path("baseline", api.BaselineView.as_view(), name="baseline"),
    path("regression", api.RegressionView.as_view(), name="regression"),
    path("watch", api.WatchView.as_view(), name="watch"),
    path("alerts", api.AlertsView.as_view(), name="alerts"),
]
