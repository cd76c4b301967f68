"""Admin for customers, events and sources (thin: services do the work)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.shortcuts import render
from django.urls import path
from django.db.models import Q
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin_base import HistoryReasonMixin, ReadOnlyAdmin, ReasonForm
from journeys.models import (
    Customer,
    CustomerMerge,
    Event,
    EventDefinition,
    Identity,
    LifecycleStage,
    Source,
)
from journeys.selectors_console import customer_360
from journeys.services.sources import source_create, source_rotate_key, source_set_enabled


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("__str__", "email", "phone", "stage", "timezone", "first_seen", "last_seen")
    list_filter = ("stage", "timezone")
    search_fields = ("external_id", "email", "phone")
    readonly_fields = ("stage", "first_seen", "last_seen", "last_engaged_at", "merged_into", "created_at", "updated_at")
    # Customer 360: identities, merges, consents, events, messages, runs and cases above the form.
    change_form_template = "admin/journeys/customer/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        customer = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if customer is not None and self.has_view_permission(request, customer):
            extra["c360"] = customer_360(customer=customer, user=request.user)
        return super().change_view(request, object_id, form_url, extra)

    def get_queryset(self, request):
        return super().get_queryset(request).filter(merged_into__isnull=True)

    def get_search_results(self, request, queryset, search_term):
        """Search by any identity value (anonymous id, user id, email, phone) too."""
        queryset, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term:
            ids = Identity.objects.filter(Q(value=term) | Q(value=term.lower())).values("customer_id")
            queryset = queryset | self.model.objects.filter(pk__in=ids, merged_into__isnull=True)
        return queryset, may_have_duplicates


@admin.register(CustomerMerge)
class CustomerMergeAdmin(admin.ModelAdmin):
    list_display = ("merged_at", "merged", "target", "reason", "actor")
    readonly_fields = ("merged_at", "merged", "target", "reason", "actor", "details")
    list_select_related = ("merged", "target")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


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
    list_display = ("name", "enabled", "strict", "key_prefix", "rate_limit", "retention_days", "key_rotated_at", "created_at")
    list_filter = ("enabled",)
    search_fields = ("name",)
    readonly_fields = ("key_prefix", "key_rotated_at", "created_at", "updated_at")
    fields = ("name", "description", "enabled", "strict", "rate_limit", "schema_policy", "retention_days", "key_prefix",
              "key_rotated_at", "change_reason")
    actions = ["rotate_keys", "disable_sources", "enable_sources"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        source, key = source_create(
            name=obj.name, description=obj.description, rate_limit=obj.rate_limit, enabled=obj.enabled,
            schema_policy=obj.schema_policy, strict=obj.strict, retention_days=obj.retention_days,
            actor=request.user, reason=self._reason(request, form),
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


class LifecycleStageForm(forms.ModelForm):
    class Meta:
        model = LifecycleStage
        fields = ("key", "name", "order", "rule", "description")

    def clean_rule(self):
        from journeys.rules import validate_rule

        rule = self.cleaned_data.get("rule", "")
        if rule and (errors := validate_rule(rule)):
            raise forms.ValidationError(errors)
        return rule


@admin.register(LifecycleStage)
class LifecycleStageAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = LifecycleStageForm
    list_display = ("order", "key", "name", "rule", "customers")
    list_display_links = ("key",)
    ordering = ("order",)

    @admin.display(description="customers now")
    def customers(self, obj):
        return Customer.objects.filter(stage=obj.key, merged_into__isnull=True).count()


from journeys import admin_quarantine, admin_workflows  # noqa: E402,F401
from journeys import admin_api  # noqa: E402,F401
