from django.apps import AppConfig


class GatesConfig(AppConfig):
    verbose_name = "Gates"
    default_auto_field = "django.db.models.BigAutoField"
    name = "gates"

    def ready(self):
        from django.db.models.signals import post_migrate

        from gates import registry
        from gates.audit import ensure_digest_schedule
        from gates.execution import ScenarioRun
        from gates.models import Scenario
        from gates.workers import die_with_parents

        # A qcluster's sentinel and workers die with it, even when it is SIGKILLed.
        die_with_parents()

        # The gate's own runners: the tool runs on the worker, against the target.
        registry.register_runner(Scenario.Tool.K6, ScenarioRun.load_test)
        registry.register_runner(Scenario.Tool.LOCUST, ScenarioRun.load_test)

        # The audit digest's schedule follows PERFGATE_AUDIT_DIGEST_MINUTES at every migrate.
        post_migrate.connect(ensure_digest_schedule, sender=self)
