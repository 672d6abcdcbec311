"""perfgate.yaml's ``notify`` section (registered with ``gates.registry.register_config_section``):
one channel per entry, created or updated by name, audited; channels a file made and no longer
lists are deleted, those made in the admin are left alone.

A Slack webhook URL never comes from the file: the file names an environment variable, read
when the file is applied. When the variable is not set the stored URL stays (the admin may have
set it); the URL is never printed, diffed or audited, only that it changed.
"""

from __future__ import annotations

import logging
import os

from gates.config import Change, config_snapshot
from integrations.models import NotificationChannel

logger = logging.getLogger(__name__)
KIND = "channel"


def notify_apply(*, project, specs: list[dict], applier) -> None:
    leftover = {
        c.name: c for c in NotificationChannel.objects.filter(project=project).exclude(config_source="")
    }
    for spec in specs:
        leftover.pop(spec["name"], None)
        label = f"{project.slug}/{spec['name']}"
        fields = {k: spec[k] for k in ("kind", "webhook_secret_env", "recipients", "events", "environments")}
        channel = applier.upsert(
            NotificationChannel, {"project": project, "name": spec["name"]}, fields, KIND, label, project.slug
        )
        if channel.kind == NotificationChannel.Kind.SLACK:
            _take_url(channel, applier, label)
    for name, channel in leftover.items():
        applier._audit(f"config.{KIND}.deleted", channel, project.slug, before=config_snapshot(channel))
        channel.delete()
        applier.changes.append(Change("-", KIND, f"{project.slug}/{name}"))


def _take_url(channel: NotificationChannel, applier, label: str) -> None:
    variable = channel.webhook_secret_env
    url = os.environ.get(variable, "").strip()
    if not url:
        if not channel.slack_webhook_url:
            logger.warning(
                "%s: %s is not set, so the channel has no webhook URL: set the variable and apply again, "
                "or set the URL in the admin.",
                label,
                variable,
            )
        return
    if not url.startswith(("https://", "http://")):
        logger.warning(
            "%s: %s does not hold a webhook URL (https://…); the channel keeps its own.", label, variable
        )
        return
    if url == channel.slack_webhook_url:
        return
    channel.slack_webhook_url = url
    channel.broken_at = None
    channel.broken_reason = ""
    channel.save(update_fields=["slack_webhook_url", "broken_at", "broken_reason", "updated_at"])
    applier.changes.append(Change("~", KIND, label, {"webhook URL": ("(stored)", f"(from ${variable})")}))
    applier._audit(f"config.{KIND}.secret_set", channel, channel.project.slug, after={"from": variable})
