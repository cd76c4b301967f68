from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels and messaging"

    def ready(self) -> None:
        from channels_app import steps  # noqa: F401  (registers send_message and webhook)
        from channels_app.services.merge import customer_merge_channels
        from journeys.services.identity import MERGE_HOOKS

        if customer_merge_channels not in MERGE_HOOKS:
            MERGE_HOOKS.append(customer_merge_channels)
