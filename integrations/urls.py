"""Webhooks under /api/ci-cd/webhooks/ (paths are part of the contract)."""

from django.urls import path

from integrations.vercel.webhooks import VercelWebhookView
from integrations.webhooks import GitHubWebhookView

app_name = "webhooks"

urlpatterns = [
    path("github", GitHubWebhookView.as_view(), name="github"),
    path("vercel", VercelWebhookView.as_view(), name="vercel"),
]
