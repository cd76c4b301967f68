from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels and messaging"

    def ready(self) -> None:
        from channels_app import steps  # noqa: F401  (registers send_message)
