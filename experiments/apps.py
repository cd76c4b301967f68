from django.apps import AppConfig


class ExperimentsConfig(AppConfig):
    name = "experiments"
    verbose_name = "Experiments"

    def ready(self) -> None:
        from experiments import steps  # noqa: F401  (registers experiment_split)
        from experiments.services.assignment import assignments_merge
        from journeys.services.identity import MERGE_HOOKS

        if assignments_merge not in MERGE_HOOKS:
            MERGE_HOOKS.append(assignments_merge)
        from channels_app.services.privacy import EVENTS_KEPT, EXPORTERS
        from experiments.services.analysis import goal_events_counted
        from experiments.services.assignment import assignments_export

        if goal_events_counted not in EVENTS_KEPT:  # an erasure keeps the conversions experiments count
            EVENTS_KEPT.append(goal_events_counted)
        if assignments_export not in EXPORTERS:  # the access export shows the arms, holdouts and scores
            EXPORTERS.append(assignments_export)
        from experiments.services.experiments import experiment_workflows_kept
        from journeys.services.history_retention import HISTORY_KEEPERS

        if experiment_workflows_kept not in HISTORY_KEEPERS:  # the retention keeps what open experiments read
            HISTORY_KEEPERS.append(experiment_workflows_kept)
