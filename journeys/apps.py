from django.apps import AppConfig


class JourneysConfig(AppConfig):
    name = "journeys"
    verbose_name = "Journeys"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from config.pgloaders import timestamptz_loader_install

        # Core step kinds register themselves in the engine's registry.
        from journeys.engine import steps, steps_vocabulary  # noqa: F401
        from journeys import checks  # noqa: F401  (security system checks)
        from journeys.qcluster import install as qcluster_install
        from journeys.schedules import schedules_assign

        # q2 clusters come back by themselves from a worker killed while it waited (journeys.qcluster).
        qcluster_install()

        # After every migrate (when apps add their q2 schedules): put them on the schedules cluster.
        post_migrate.connect(schedules_assign, sender=self, dispatch_uid="journeys.schedules_assign")
        # PostgreSQL timestamps read with datetime.fromisoformat (config.pgloaders).
        connection_created.connect(timestamptz_loader_install, dispatch_uid="config.pgloaders")
