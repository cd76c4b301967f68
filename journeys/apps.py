from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "journeys"
    verbose_name = "Journeys"

    def ready(self) -> None:
        # Core step kinds register themselves in the engine's registry.
        from journeys.engine import steps, steps_vocabulary  # noqa: F401
        from journeys import checks  # noqa: F401  (security system checks)
