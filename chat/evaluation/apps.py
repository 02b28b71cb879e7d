from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "chat.evaluation"
    label = "evaluation"
    verbose_name = "Evaluations"
    default_auto_field = "django.db.models.BigAutoField"
