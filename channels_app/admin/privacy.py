"""Topics, consent per customer, data-subject export and erasure."""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.http import HttpResponse
from django.template.response import TemplateResponse
from simple_history.admin import SimpleHistoryAdmin

from channels_app.admin.base import ReadOnlyMixin
from channels_app.models import Consent, DataSubject, ErasureRecord, Topic
from channels_app.services import customer_erase, customer_export
from channels_app.services.consent import consent_record_by_operator
from channels_app.services.privacy import data_subjects
from journeys.admin.base import HistoryReasonMixin, LargeTableMixin, action_selection_within
from journeys.models import Event


@admin.register(Topic)
class TopicAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "slug", "requires_opt_in", "transactional")


@admin.register(Consent)
class ConsentAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    """Ops record a customer's choice with a reason; who and when are set by the service
    (`consent_record_by_operator`), not typed. A stored choice changes status only."""

    list_display = ("customer", "channel_kind", "topic", "status", "source", "updated_at")
    list_filter = ("status", "channel_kind", "topic", "source")
    search_fields = ("customer__external_id", "customer__email")
    list_select_related = ("customer", "topic")
    raw_id_fields = ("customer",)
    readonly_fields = ("source", "updated_at")

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, *(("customer", "channel_kind", "topic") if obj is not None else ()))

    def save_model(self, request, obj, form, change):
        saved = consent_record_by_operator(customer=obj.customer, channel_kind=obj.channel_kind, topic=obj.topic,
                                           status=obj.status, actor=request.user, reason=self._reason(request, form))
        obj.pk, obj.source, obj.updated_at = saved.pk, saved.source, saved.updated_at


class ConsentInline(admin.TabularInline):
    model = Consent
    extra = 0
    fields = ("channel_kind", "topic", "status", "source", "updated_at")
    readonly_fields = ("source", "updated_at")

    def has_add_permission(self, request, obj=None):
        return False


# Export and erasure of the selected customers run inside the web request: ~6 ms and ~12 ms per
# customer with a short history on SQLite, several times that for a long one on PostgreSQL, so a
# few hundred stay well inside the web server's 30 s timeout. More: the command or the API.
ACTION_LIMIT = 200
HISTORY_LIMIT = 20_000  # events of the selected customers together: one customer can have 150,000
CONFIRM_SHOWN = 50  # the erase confirmation names this many, then "and N more"
EXPORT_INSTEAD = ("Narrow the list with the search or a filter, or export each customer with "
                  "`manage.py export_customer <user id>` or the management API (POST /api/v1/customers/<id>/export, "
                  "a background job).")
ERASE_INSTEAD = ("Narrow the list with the search or a filter, or erase each customer with "
                 "`manage.py erase_customer <user id> --yes --reason ...` or the management API "
                 "(DELETE /api/v1/customers/<id>, a background job each); see docs/PRIVACY.md.")


@admin.register(DataSubject)
class DataSubjectAdmin(LargeTableMixin, ReadOnlyMixin, admin.ModelAdmin):
    """Consent per customer, export and erasure (data-subject requests)."""

    list_display = ("__str__", "email", "phone", "last_seen")
    search_fields = ("external_id", "email", "phone")
    fields = ("external_id", "email", "phone", "timezone", "locale", "last_seen")
    readonly_fields = fields
    inlines = (ConsentInline,)
    actions = ("export_selected", "erase_selected")

    def _history_within(self, request, queryset, instead: str) -> bool:
        """A long history is slow to export or erase whatever the number of customers: past
        HISTORY_LIMIT events (counted with a LIMIT) the action says so and does nothing."""
        events = Event.objects.filter(customer__in=queryset.values("pk"))[: HISTORY_LIMIT + 1].count()
        if events <= HISTORY_LIMIT:
            return True
        self.message_user(request, f"Nothing done: the selected customers have more than {HISTORY_LIMIT:,} events "
                                   f"between them, more than this page can handle before the web server's timeout. "
                                   f"{instead}", messages.ERROR)
        return False

    @admin.action(description="Export selected customers (JSON)")
    def export_selected(self, request, queryset):
        if not action_selection_within(self, request, queryset, limit=ACTION_LIMIT, instead=EXPORT_INSTEAD):
            return None
        if not self._history_within(request, queryset, EXPORT_INSTEAD):
            return None
        data = [customer_export(customer=c) for c in data_subjects(queryset)]
        response = HttpResponse(json.dumps(data[0] if len(data) == 1 else data, indent=2),
                                content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="customer-export.json"'
        return response

    @admin.action(description="Erase selected customers…")
    def erase_selected(self, request, queryset):
        if not action_selection_within(self, request, queryset, limit=ACTION_LIMIT, instead=ERASE_INSTEAD):
            return None
        if not self._history_within(request, queryset, ERASE_INSTEAD):
            return None
        people = data_subjects(queryset)  # a merged-away profile is erased as its survivor
        if request.POST.get("confirm") and request.POST.get("reason"):
            for customer in people:
                customer_erase(customer=customer, actor=f"admin:{request.user.get_username()}",
                               reason=request.POST["reason"])
            self.message_user(request, f"Erased {len(people)} customer(s).", messages.SUCCESS)
            return None
        ids = list(queryset.values_list("pk", flat=True))
        return TemplateResponse(request, "channels_app/erase_confirm.html", {
            **self.admin_site.each_context(request), "opts": self.model._meta, "title": "Erase customers",
            "ids": ids, "count": len(people), "shown": people[:CONFIRM_SHOWN],
            "more": max(0, len(people) - CONFIRM_SHOWN)})


@admin.register(ErasureRecord)
class ErasureRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("customer_id_erased", "erased_at", "actor", "reason")
