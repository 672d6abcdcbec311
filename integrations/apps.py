from django.apps import AppConfig


class IntegrationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "integrations"

    def ready(self):
        """Plug the integrations into the gate: one line per reporter, runner and deliverer.
        A new integration adds its own lines here and touches nothing in ``gates``."""
        from gates import registry
        from gates.models import Scenario
        from integrations import outbox
        from integrations.github import delivery, report, workflows

        registry.listen("github", report.github_listen)
        registry.register_runner(Scenario.Tool.GITHUB, workflows.workflow_runner)
        outbox.register_deliverer("github", delivery.deliver)
