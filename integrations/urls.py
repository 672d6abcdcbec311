"""Webhooks under /api/ci-cd/webhooks/ (paths are part of the contract)."""

from django.urls import path

from integrations.webhooks import GitHubWebhookView

app_name = "webhooks"

urlpatterns = [
    path("github", GitHubWebhookView.as_view(), name="github"),
]
