from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and cases"

    def ready(self) -> None:
        from agents import steps  # noqa: F401  registers escalate_to_agent
        from agents.services.cases import cases_merge_customers
        from journeys.services.identity import MERGE_HOOKS

        if cases_merge_customers not in MERGE_HOOKS:
            MERGE_HOOKS.append(cases_merge_customers)
