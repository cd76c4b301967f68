"""Events (read-only facts), event sources with their write keys, and the event catalog."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.shortcuts import render
from django.urls import path
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import HistoryReasonMixin, ReadOnlyAdmin, ReasonForm
from journeys.models import (
    Event,
    EventDefinition,
    Source,
)
from journeys.services.sources import source_create, source_rotate_key, source_set_enabled


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    """Read-only: events are facts."""

    list_display = ("timestamp", "type", "name", "customer", "source", "status")
    list_filter = ("type", "status", "source", ("timestamp", admin.DateFieldListFilter), "name")
    search_fields = ("name", "message_id", "user_id", "anonymous_id")
    date_hierarchy = "timestamp"
    list_select_related = ("customer", "source")
    show_full_result_count = False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("journeys.view_event")


class SourceForm(ReasonForm):
    class Meta:
        model = Source
        fields = "__all__"


@admin.register(Source)
class SourceAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = SourceForm
    list_display = ("name", "enabled", "key_prefix", "rate_limit", "key_rotated_at", "created_at")
    list_filter = ("enabled",)
    search_fields = ("name",)
    readonly_fields = ("key_prefix", "key_rotated_at", "created_at", "updated_at")
    fields = ("name", "description", "enabled", "rate_limit", "schema_policy", "allow_known_merges", "key_prefix",
              "key_rotated_at", "change_reason")
    actions = ["rotate_keys", "disable_sources", "enable_sources"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        source, key = source_create(
            name=obj.name, description=obj.description, rate_limit=obj.rate_limit, enabled=obj.enabled,
            schema_policy=obj.schema_policy, allow_known_merges=obj.allow_known_merges, actor=request.user,
            reason=self._reason(request, form),
        )
        obj.pk, obj.key_prefix, obj.key_hash = source.pk, source.key_prefix, source.key_hash
        messages.warning(request, format_html("Write key for {}: <code>{}</code> — copy it now, it is not shown again.", source.name, key))

    @admin.action(description="Rotate the write key (the old key stops working)", permissions=["change"])
    def rotate_keys(self, request, queryset):
        for source in queryset:
            key = source_rotate_key(source=source, actor=request.user)
            messages.warning(request, format_html("New write key for {}: <code>{}</code> — copy it now.", source.name, key))

    @admin.action(description="Disable the selected sources", permissions=["change"])
    def disable_sources(self, request, queryset):
        for source in queryset:
            source_set_enabled(source=source, enabled=False, actor=request.user, reason="disabled in the admin")

    @admin.action(description="Enable the selected sources", permissions=["change"])
    def enable_sources(self, request, queryset):
        for source in queryset:
            source_set_enabled(source=source, enabled=True, actor=request.user, reason="enabled in the admin")


class EventDefinitionForm(forms.ModelForm):
    class Meta:
        model = EventDefinition
        fields = ("name", "description", "owner", "schema")

    def clean_schema(self):
        from journeys.services.catalog import schema_check

        schema = self.cleaned_data.get("schema") or {}
        if not isinstance(schema, dict):
            raise forms.ValidationError("must be a JSON Schema object")
        if error := schema_check(schema):
            raise forms.ValidationError(f"not a valid JSON Schema: {error}")
        return schema


@admin.register(EventDefinition)
class EventDefinitionAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    """The tracking plan; its changelist links to the unknown/drifting events report."""

    form = EventDefinitionForm
    list_display = ("name", "owner", "properties_list", "updated_at")
    search_fields = ("name", "description", "owner")
    change_list_template = "admin/journeys/eventdefinition/change_list.html"

    @admin.display(description="properties")
    def properties_list(self, obj):
        return ", ".join(obj.property_names) or "-"

    def get_urls(self):
        return [path("report/", self.admin_site.admin_view(self.report_view), name="journeys_eventdefinition_report")] + super().get_urls()

    def report_view(self, request):
        from journeys.services.catalog import catalog_report

        try:
            days = max(1, min(int(request.GET.get("days", 7)), 365))
        except ValueError:
            days = 7
        context = {**self.admin_site.each_context(request), "rows": catalog_report(days=days), "days": days,
                   "title": f"Unknown and drifting events (last {days} days)", "opts": self.model._meta}
        return render(request, "admin/journeys/catalog_report.html", context)
