"""Journey runs and their step executions, as each user may see them."""

from __future__ import annotations

from django.contrib import admin, messages
from django.utils import timezone

from journeys.admin.base import LargeTableMixin, NewestRowsInline, RunScopeMixin, action_selection_within
from journeys.admin.common import VisibleWorkflowFilter
from journeys.choices import RunStatus
from journeys.engine.runner import RunFailed, run_retry
from journeys.models import (
    JourneyRun,
    StepExecution,
)
from journeys.selectors import runs_searched


class StepExecutionInline(NewestRowsInline, admin.TabularInline):
    model = StepExecution
    ordering = ("-started_at", "-pk")
    fields = ("step_key", "step_kind", "visit", "outcome", "error", "started_at", "finished_at", "detail")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return True


@admin.register(JourneyRun)
class JourneyRunAdmin(LargeTableMixin, RunScopeMixin, admin.ModelAdmin):
    list_display = ("id", "workflow", "version", "customer", "status", "current_step", "next_wake_at", "converted_at", "created_at")
    list_filter = ("status", ("workflow", VisibleWorkflowFilter))
    search_fields = ("customer__external_id",)  # see get_search_results: exact, through indexes
    search_help_text = ("Exact match: the customer's user id, anonymous id, email or phone number, a run's number, "
                        "or an event's trigger key (event:<event id>, inactivity:<event id>; date: and moved: keys "
                        "are not searched: filter by workflow and customer instead).")
    list_select_related = ("workflow", "version__workflow", "customer")  # a version names its workflow
    inlines = [StepExecutionInline]
    actions = ["retry_failed"]
    # Each retried run runs on at once inside the request (its steps, its sends): this many fit well
    # inside the web server's timeout. More were half retried when the worker was killed, unreported.
    retry_limit = 100
    retry_instead = ("Filter the list further (by workflow, or search a customer) and retry them in parts, "
                     "after fixing what made them fail.")
    delete_selected_instead = ("Filter the list further and delete in parts; finished runs older than "
                               "HISTORY_RETENTION_DAYS are deleted by the history housekeeping "
                               "(docs/SCALING.md, \"Retention of finished history\").")

    def get_search_results(self, request, queryset, search_term):
        """Exact, through indexes (journeys.selectors.runs_searched)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(runs_searched(term)), False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Retry the selected failed runs", permissions=["change"])
    def retry_failed(self, request, queryset):
        failed = queryset.filter(status=RunStatus.FAILED)
        if not action_selection_within(self, request, failed, limit=self.retry_limit, instead=self.retry_instead):
            return
        retried: dict[str, int] = {}
        for run in failed.select_related("customer").order_by("pk"):
            try:
                run_retry(run=run, now=timezone.now())
            except RunFailed as exc:
                self.message_user(request, str(exc), messages.ERROR)
            else:
                retried[run.status] = retried.get(run.status, 0) + 1
        if retried:
            now = ", ".join(f"{n} {status}" for status, n in sorted(retried.items()))
            self.message_user(request, f"{sum(retried.values())} failed run(s) retried; now {now}.", messages.SUCCESS)
        elif not failed.exists():
            self.message_user(request, "Nothing retried: none of the selected runs has failed.", messages.WARNING)
