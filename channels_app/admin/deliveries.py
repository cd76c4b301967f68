"""The deliveries log: filters (by workflow, by what holds a message now), attempts, requeue."""

from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.filters import ChoicesFieldListFilter
from django.contrib.admin.options import IncorrectLookupParameters
from django.template.response import TemplateResponse

from channels_app.admin.base import ReadOnlyMixin
from channels_app.choices import Reason
from channels_app.models import Delivery, DeliveryAttempt
from channels_app.selectors import (
    HOLD_LABELS, deliveries_held_by, deliveries_of_workflow, deliveries_requeue_preview, deliveries_searched,
    deliveries_with_hold,
    delivery_hold_text, delivery_workflow_choices,
)
from channels_app.services.dispatch import deliveries_requeue
from journeys.admin.base import LargeTableMixin, NewestRowsInline, action_selection_within
from journeys.engine.runtime import customer_zone

# Each message sent again may be rendered again first (a few queries): a web request takes this many.
REQUEUE_LIMIT = 1000
REQUEUE_INSTEAD = "Filter the list further (by workflow, status, channel or day) and send them again in parts."


class AttemptInline(NewestRowsInline, ReadOnlyMixin, admin.TabularInline):
    model = DeliveryAttempt
    ordering = ("-at", "-pk")
    extra = 0
    fields = ("at", "ok", "transient", "status_code", "latency_ms", "error")
    readonly_fields = fields


class WorkflowFilter(admin.SimpleListFilter):
    """By workflow: the choices come from the workflows table, the filter is the workflow's runs."""

    title = "workflow"
    parameter_name = "workflow"

    def lookups(self, request, model_admin):
        return delivery_workflow_choices(user=request.user, selected=self.value())

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if not value.isdigit():
            raise IncorrectLookupParameters(f"workflow must be a workflow id, not {value[:40]!r}")
        return deliveries_of_workflow(queryset, workflow_id=int(value))


class HoldFilter(admin.SimpleListFilter):
    """What holds a waiting message at this moment (not the reason it was last held with)."""

    title = "waiting for (now)"
    parameter_name = "hold"

    def lookups(self, request, model_admin):
        return list(HOLD_LABELS.items())

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value not in HOLD_LABELS:
            raise IncorrectLookupParameters(f"unknown hold {value[:40]!r}")
        return deliveries_held_by(queryset, hold=value)


class ReasonFilter(ChoicesFieldListFilter):
    """The stored reason. `paused` is recorded for a channel pause, a workflow pause and safe mode
    alike (the message's text says which), so it is not called "Channel paused" here."""

    def choices(self, changelist):
        for choice in super().choices(changelist):
            if choice["display"] == Reason.PAUSED.label:
                choice = {**choice, "display": "Paused (channel, workflow or safe mode)"}
            yield choice


@admin.register(Delivery)
class DeliveryAdmin(LargeTableMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "customer", "channel", "to", "subject", "status", "held_by", "attempts",
                    "latency_ms", "choice_reason")
    list_filter = (WorkflowFilter, "status", HoldFilter, ("reason", ReasonFilter), "channel", "channel__kind",
                   "topic", ("created_at", admin.DateFieldListFilter))
    search_fields = ("=idempotency_key",)  # see get_search_results: exact, through indexes
    search_help_text = ("Exact match: the customer's current user id, anonymous id, email or phone number (their "
                        "messages; an address the customer no longer has is not searched), a message's idempotency "
                        "key, or the provider's message id (a Twilio SID, an SES or SendGrid message id).")
    list_select_related = ("customer", "channel")
    readonly_fields = ("held_by", "customer_local_time")
    exclude = ("reason",)  # shown by held_by: the stored reason may be a hold that has ended
    inlines = (AttemptInline,)
    actions = ("requeue",)

    def page_queryset(self, request, queryset):
        """What holds each message now, worked out for the rows shown only: a per-row probe of the
        run's workflow over every row skipped to reach a deep page (or sorted) costs the table."""
        return deliveries_with_hold(queryset)

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        return None if obj is None else self.page_queryset(request, self.get_queryset(request)).get(pk=obj.pk)

    def get_search_results(self, request, queryset, search_term):
        """Exact, through indexes (channels_app.selectors.deliveries_searched)."""
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(deliveries_searched(term)), False

    @admin.display(description="sent at, the customer's time")
    def customer_local_time(self, obj):
        """Quiet hours and local-time sends are decided on the customer's clock; the page's other
        times are UTC (a 08:00 Tokyo send reads 11 p.m. there)."""
        if obj.sent_at is None or obj.customer is None:
            return "-"
        zone = customer_zone(obj.customer)
        return f"{obj.sent_at.astimezone(zone):%Y-%m-%d %H:%M} {zone.key}"

    @admin.display(description="reason / waiting for")
    def held_by(self, obj):
        return delivery_hold_text(obj)

    def has_resend_permission(self, request) -> bool:
        """Sending again is a change, though the rows are never edited by hand: who may change
        deliveries (ops admins), not everyone who may read them."""
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.action(description="Send failed or deferred deliveries again now…", permissions=["resend"])
    def requeue(self, request, queryset):
        """A confirmation page first (how many, on which channels, how many must be rendered again),
        as Django's delete action has; then the service, and what it did as messages."""
        if not action_selection_within(self, request, queryset, limit=REQUEUE_LIMIT, instead=REQUEUE_INSTEAD):
            return None
        ids = list(queryset.order_by("pk").values_list("pk", flat=True))
        if request.POST.get("post") != "yes":
            return TemplateResponse(request, "admin/channels_app/delivery/requeue_confirmation.html", {
                **self.admin_site.each_context(request), "opts": self.model._meta, "ids": ids,
                "title": "Send deliveries again?", "preview": deliveries_requeue_preview(ids=ids),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME})
        result = deliveries_requeue(ids=ids, actor=f"admin:{request.user.get_username()}")
        for level, text in result.report():
            self.message_user(request, text, getattr(messages, level.upper()))
        return None
