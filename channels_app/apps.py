from django.apps import AppConfig


class ChannelsAppConfig(AppConfig):
    name = "channels_app"
    verbose_name = "Channels and messaging"

    def ready(self) -> None:
        from channels_app import steps  # noqa: F401  (registers send_message, send_best_channel and webhook)
        from channels_app.services.merge import customer_merge_channels
        from journeys.services.identity import MERGE_HOOKS

        if customer_merge_channels not in MERGE_HOOKS:
            MERGE_HOOKS.append(customer_merge_channels)

        from channels_app.services.privacy import ERASERS
        from journeys.services.stream import stream_customer_erase

        if stream_customer_erase not in ERASERS:  # events not yet streamed lose the person's user id
            ERASERS.append(stream_customer_erase)
        from journeys.services.quarantine import quarantine_customer_erase

        if quarantine_customer_erase not in ERASERS:  # refused events that name the person go too
            ERASERS.append(quarantine_customer_erase)

        from channels_app.services.dispatch import deliveries_release_on_resume
        from journeys.services.governance import HOLD_RELEASE_HOOKS

        if deliveries_release_on_resume not in HOLD_RELEASE_HOOKS:
            HOLD_RELEASE_HOOKS.append(deliveries_release_on_resume)
        from channels_app.services.retention import (
            cap_window_floor,
            inbound_messages_prune,
            run_deliveries_delete,
            runs_with_unsent_messages,
            standalone_deliveries_prune,
        )
        from journeys.services.history_retention import HISTORY_FLOORS, HISTORY_PRUNERS, RUN_DEPENDENTS, RUN_HOLDS

        for hooks, hook in ((HISTORY_FLOORS, cap_window_floor), (RUN_DEPENDENTS, run_deliveries_delete),
                            (HISTORY_PRUNERS, standalone_deliveries_prune), (HISTORY_PRUNERS, inbound_messages_prune),
                            (RUN_HOLDS, runs_with_unsent_messages)):
            if hook not in hooks:  # the history retention: caps' windows, messages with their runs, unsent ones kept
                hooks.append(hook)
