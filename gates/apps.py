from django.apps import AppConfig


class GatesConfig(AppConfig):
    verbose_name = "Gates"
    default_auto_field = "django.db.models.BigAutoField"
    name = "gates"

    def ready(self):
        from gates import registry
        from gates.execution import ScenarioRun
        from gates.models import Scenario

        # The gate's own runners: the tool runs on the worker, against the target.
        registry.register_runner(Scenario.Tool.K6, ScenarioRun.load_test)
        registry.register_runner(Scenario.Tool.LOCUST, ScenarioRun.load_test)
