from django.apps import AppConfig


class GatesConfig(AppConfig):
    verbose_name = "Gates"
    default_auto_field = "django.db.models.BigAutoField"
    name = "gates"
