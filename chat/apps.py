from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Conversations"

    def ready(self) -> None:
        from chat import checks  # noqa: F401 - registers the system checks
        from chat.operators import revocation  # noqa: F401 - connects the receivers closing revoked sockets
