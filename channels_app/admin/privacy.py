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
from journeys.admin.base import HistoryReasonMixin


@admin.register(Topic)
class TopicAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "slug", "requires_opt_in", "transactional")


@admin.register(Consent)
class ConsentAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("customer", "channel_kind", "topic", "status", "source", "updated_at")
    list_filter = ("status", "channel_kind", "topic", "source")
    search_fields = ("customer__external_id", "customer__email")
    list_select_related = ("customer", "topic")
    raw_id_fields = ("customer",)


class ConsentInline(admin.TabularInline):
    model = Consent
    extra = 0
    fields = ("channel_kind", "topic", "status", "source", "updated_at")
    readonly_fields = ("source", "updated_at")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(DataSubject)
class DataSubjectAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """Consent per customer, export and erasure (data-subject requests)."""

    list_display = ("__str__", "email", "phone", "last_seen")
    search_fields = ("external_id", "email", "phone")
    fields = ("external_id", "email", "phone", "timezone", "locale", "last_seen")
    readonly_fields = fields
    inlines = (ConsentInline,)
    actions = ("export_selected", "erase_selected")

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Export selected customers (JSON)")
    def export_selected(self, request, queryset):
        data = [customer_export(customer=c) for c in queryset]
        response = HttpResponse(json.dumps(data[0] if len(data) == 1 else data, indent=2),
                                content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="customer-export.json"'
        return response

    @admin.action(description="Erase selected customers…")
    def erase_selected(self, request, queryset):
        if request.POST.get("confirm") and request.POST.get("reason"):
            for customer in queryset:
                customer_erase(customer=customer, actor=f"admin:{request.user.get_username()}",
                               reason=request.POST["reason"])
            self.message_user(request, f"Erased {queryset.count()} customer(s).", messages.SUCCESS)
            return None
        return TemplateResponse(request, "channels_app/erase_confirm.html", {
            **self.admin_site.each_context(request), "customers": list(queryset), "opts": self.model._meta,
            "title": "Erase customers"})


@admin.register(ErasureRecord)
class ErasureRecordAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("customer_id_erased", "erased_at", "actor", "reason")

    def has_delete_permission(self, request, obj=None):
        return False
