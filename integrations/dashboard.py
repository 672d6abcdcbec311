"""What the admin's dashboard shows of the integrations: notification channels marked broken (Slack
said the webhook is gone or forbidden) and outbox calls given up. The gate's admin does not import
the integrations: this source is registered in ``IntegrationsConfig.ready``."""

from __future__ import annotations

from django.db.models import Count, Max
from django.urls import reverse

from gates.admin.dashboard import Problem, admin_url
from integrations.models import NotificationChannel, OutboundCall


def integration_problems(*, user, projects) -> list[Problem]:
    """Broken channels, one problem each, and per project the outbox calls given up, counted, with
    the newest one's error: three queries whatever the outbox holds."""
    problems = [
        Problem(
            project_id=channel.project_id,
            what=f"Notification channel {channel.name} ({channel.get_kind_display()}) is broken",
            detail=f"{channel.broken_reason or 'refused by the provider'}; "
            "it sends nothing until it is given a new address",
            url=admin_url(user, "integrations", "notificationchannel", channel.pk),
            since=channel.broken_at,
        )
        for channel in NotificationChannel.objects.filter(
            project__in=projects, broken_at__isnull=False
        ).order_by("project_id", "name")
    ]
    failed = OutboundCall.objects.filter(project__in=projects, state=OutboundCall.State.FAILED)
    counts = {
        row["project_id"]: row
        for row in failed.values("project_id").annotate(count=Count("pk"), newest=Max("pk")).order_by()
    }
    newest = OutboundCall.objects.in_bulk([row["newest"] for row in counts.values()])
    for project_id, row in sorted(counts.items()):
        call = newest[row["newest"]]
        calls = f"{row['count']} outbox call{'s' * (row['count'] != 1)}"
        error = (call.last_error or "no error recorded").strip().splitlines()[0]
        problems.append(
            Problem(
                project_id=project_id,
                what=f"{calls} given up",
                detail=f"the newest, {call.provider} {call.kind}: {error}",
                url=_failed_calls_url(user, project_id),
                since=call.created_at,
            )
        )
    return problems


def _failed_calls_url(user, project_id: int) -> str:
    if not user.has_perm("integrations.view_outboundcall"):
        return ""
    changelist = reverse("admin:integrations_outboundcall_changelist")
    return f"{changelist}?state__exact={OutboundCall.State.FAILED}&project__id__exact={project_id}"
