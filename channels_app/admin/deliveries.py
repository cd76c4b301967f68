"""The deliveries log: filters, attempts, requeue."""

from __future__ import annotations

from django.contrib import admin

from channels_app.admin.base import ReadOnlyMixin
from channels_app.models import Delivery, DeliveryAttempt
from channels_app.services import delivery_requeue
from journeys.admin.base import LargeTableMixin


class AttemptInline(ReadOnlyMixin, admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    fields = ("at", "ok", "transient", "status_code", "latency_ms", "error")
    readonly_fields = fields

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Delivery)
class DeliveryAdmin(LargeTableMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "customer", "channel", "to", "subject", "status", "reason", "attempts",
                    "latency_ms", "choice_reason")
    list_filter = ("status", "reason", "channel", "channel__kind", "topic", ("created_at", admin.DateFieldListFilter))
    search_fields = ("to", "customer__external_id", "idempotency_key", "provider_message_id", "choice_reason")
    list_select_related = ("customer", "channel")
    inlines = (AttemptInline,)
    actions = ("requeue",)

    @admin.action(description="Send failed or deferred deliveries again now")
    def requeue(self, request, queryset):
        for delivery in queryset:
            delivery_requeue(delivery=delivery, actor=f"admin:{request.user.get_username()}")
