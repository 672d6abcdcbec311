from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "integrations"

    def ready(self):
        """Plug the integrations into the gate: one line per reporter, runner and deliverer.
        A new integration adds its own lines here and touches nothing in ``gates``."""
        from gates import registry
        from gates.models import Scenario
        from integrations import dashboard, outbox, webhooks
        from integrations.github import delivery, report, workflows
        from integrations.notify import config as notify_config
        from integrations.notify import delivery as notify_delivery
        from integrations.notify import events as notify_events
        from integrations.vercel import delivery as vercel_delivery
        from integrations.vercel import report as vercel_report
        from integrations.vercel import webhooks as vercel_webhooks

        registry.listen("github", report.github_listen)
        registry.register_runner(Scenario.Tool.GITHUB, workflows.workflow_runner)
        outbox.register_deliverer("github", delivery.deliver, given_up=notify_events.outbox_gave_up)
        registry.listen("vercel", vercel_report.vercel_listen)
        registry.register_headers("vercel", vercel_report.protection_headers)
        outbox.register_deliverer("vercel", vercel_delivery.deliver, given_up=notify_events.outbox_gave_up)
        webhooks.register_handlers("vercel", vercel_webhooks.HANDLERS)
        registry.listen("notify", notify_events.notify_listen)
        registry.register_notifier("notify", notify_events.notify_notice)
        registry.register_config_section("notify", notify_config.notify_apply)
        registry.register_problem_source("integrations", dashboard.integration_problems)
        for provider in ("slack", "email"):
            outbox.register_deliverer(
                provider,
                notify_delivery.deliver,
                rate_limit_holds_project=False,
                given_up=notify_delivery.given_up,
            )
