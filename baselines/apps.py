from django.apps import AppConfig


class BaselinesConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "baselines"

    def ready(self):
        from baselines.services import baseline_follow
        from gates import registry

        registry.listen("baselines", baseline_follow)
