"""Events (read-only facts), event sources with their write keys, and the event catalog."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.shortcuts import render
from django.urls import path
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import HistoryReasonMixin, LargeTableMixin, ReadOnlyAdmin, ReasonForm
from journeys.choices import IdentityKind
from journeys.models import (
    Customer,
    Event,
    EventDefinition,
    EventKey,
    Identity,
    Source,
)
from journeys.services.sources import source_create, source_rotate_key, source_set_enabled


class CatalogNameFilter(admin.SimpleListFilter):
    """By event name, offering the names of the event catalog: the names actually stored would be
    a DISTINCT over every event. Any other name: type it in the search box."""

    title = "name"
    parameter_name = "name"

    def lookups(self, request, model_admin):
        names = list(EventDefinition.objects.values_list("name", flat=True))
        asked = request.GET.get(self.parameter_name)
        if asked and asked not in names:  # a name the catalog does not know still filters (a link, a bookmark)
            names.append(asked)
        return [(name, name) for name in names]

    def queryset(self, request, queryset):
        return queryset.filter(name=self.value()) if self.value() else queryset


def event_search(term: str) -> Q:
    """The events a search term names, found through indexes only: the events of the customer
    it identifies (user id, anonymous id, email or phone), of that name, with that message id
    (received within the dedup window, or internal), or with that id. The ids are looked up
    first, so the event query is index probes OR-ed together, never a scan of every event."""
    customers = set(Customer.objects.filter(Q(external_id=term) | Q(email=term)).values_list("pk", flat=True))
    customers.update(Identity.objects.filter(kind__in=IdentityKind.values, value=term).values_list("customer_id", flat=True))
    events = set(EventKey.objects.filter(source_id__in=list(Source.objects.values_list("pk", flat=True)),
                                         message_id=term).values_list("event_id", flat=True))
    if term.isascii() and term.isdigit() and len(term) < 19:
        events.add(int(term))
    return Q(name=term) | Q(customer_id__in=customers) | Q(pk__in=events)


@admin.register(Event)
class EventAdmin(LargeTableMixin, ReadOnlyAdmin):
    """Read-only: events are facts. Newest received first; the list reads one page of the table
    whatever its size (no date hierarchy, no DISTINCT of names, exact search through indexes)."""

    list_display = ("timestamp", "type", "name", "customer", "source", "status")
    list_filter = ("type", "status", "source", ("timestamp", admin.DateFieldListFilter), CatalogNameFilter)
    search_fields = ("=customer__external_id", "=name", "=message_id")  # see event_search
    search_help_text = ("Exact match: a user id, anonymous id or email (that customer's events), an event name, "
                        f"a message id (of the last {settings.EVENT_API['DEDUP_DAYS']} days) or an event number.")
    list_select_related = ("customer", "source")
    sortable_by = ()  # receipt order: sorting by another column would sort every event

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("journeys.view_event")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(event_search(term)) if term else queryset), False


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
    fields = ("name", "description", "enabled", "strict", "rate_limit", "schema_policy", "retention_days",
              "allow_known_merges", "key_prefix",
              "key_rotated_at", "change_reason")
    actions = ["rotate_keys", "disable_sources", "enable_sources"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        source, key = source_create(
            name=obj.name, description=obj.description, rate_limit=obj.rate_limit, enabled=obj.enabled,
            schema_policy=obj.schema_policy, strict=obj.strict, retention_days=obj.retention_days,
            allow_known_merges=obj.allow_known_merges, actor=request.user, reason=self._reason(request, form),
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
        from journeys.services.catalog import catalog_report, catalog_report_days

        try:
            days = catalog_report_days(request.GET.get("days", 7))
        except ValidationError as exc:
            days = 7
            messages.error(request, f"days {exc.message_dict['days'][0]}: showing the last {days} days instead.")
        context = {**self.admin_site.each_context(request), "rows": catalog_report(days=days), "days": days,
                   "title": f"Unknown and drifting events (last {days} days)", "opts": self.model._meta}
        return render(request, "admin/journeys/catalog_report.html", context)
