from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    verbose_name = "Agents and cases"

    def ready(self) -> None:
        from agents import steps  # noqa: F401  registers escalate_to_agent
        from agents.services.cases import cases_erase_customer, cases_export, cases_merge_customers
        from agents.services.triage import conversations_erase, conversations_export, conversations_merge_customers
        from channels_app.services.privacy import ERASERS, EXPORTERS
        from journeys.services.identity import MERGE_HOOKS

        for hooks, hook in ((MERGE_HOOKS, cases_merge_customers), (MERGE_HOOKS, conversations_merge_customers),
                            (EXPORTERS, conversations_export), (ERASERS, conversations_erase),
                            (EXPORTERS, cases_export), (ERASERS, cases_erase_customer)):
            if hook not in hooks:
                hooks.append(hook)
        from agents.services.cases import cases_prune, cases_sms_answer, runs_of_open_cases
        from channels_app.services.consent import INBOUND_SMS_HOOKS
        from journeys.services.history_retention import HISTORY_PRUNERS, RUN_HOLDS

        # the history retention: closed cases by age; open cases keep their run. A customer's SMS
        # answers the case an agent texted them about.
        for hooks, hook in ((HISTORY_PRUNERS, cases_prune), (RUN_HOLDS, runs_of_open_cases),
                            (INBOUND_SMS_HOOKS, cases_sms_answer)):
            if hook not in hooks:
                hooks.append(hook)
