"""Admin for customers, events and sources (thin: services do the work)."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Q
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.models import Customer, CustomerMerge, Event, Identity, Source
from journeys.services.sources import source_create, source_rotate_key, source_set_enabled


class IdentityInline(admin.TabularInline):
    model = Identity
    extra = 0
    fields = ("kind", "value", "created_at")
    readonly_fields = ("kind", "value", "created_at")
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class RecentEventInline(admin.TabularInline):
    """The customer's timeline: newest events first."""

    model = Event
    extra = 0
    fields = ("timestamp", "type", "name", "properties", "source", "status")
    readonly_fields = fields
    can_delete = False
    ordering = ("-timestamp",)
    show_change_link = True
    verbose_name_plural = "timeline (latest 50 events)"

    def has_add_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        qs = super().get_queryset(request).select_related("source")
        ids = list(qs.order_by("-timestamp").values_list("id", flat=True)[:50])
        return qs.filter(id__in=ids)


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ("__str__", "email", "phone", "timezone", "first_seen", "last_seen")
    list_filter = ("timezone",)
    search_fields = ("external_id", "email", "phone")
    readonly_fields = ("first_seen", "last_seen", "last_engaged_at", "merged_into", "created_at", "updated_at")
    inlines = [IdentityInline, RecentEventInline]

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
class EventAdmin(admin.ModelAdmin):
    """Read-only: events are facts."""

    list_display = ("timestamp", "type", "name", "customer", "source", "status")
    list_filter = ("type", "status", "source", ("timestamp", admin.DateFieldListFilter), "name")
    search_fields = ("name", "message_id", "user_id", "anonymous_id")
    date_hierarchy = "timestamp"
    list_select_related = ("customer", "source")
    show_full_result_count = False

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("journeys.view_event")


@admin.register(Source)
class SourceAdmin(SimpleHistoryAdmin):
    list_display = ("name", "enabled", "key_prefix", "rate_limit", "key_rotated_at", "created_at")
    list_filter = ("enabled",)
    search_fields = ("name",)
    readonly_fields = ("key_prefix", "key_rotated_at", "created_at", "updated_at")
    fields = ("name", "description", "enabled", "rate_limit", "key_prefix", "key_rotated_at")
    actions = ["rotate_keys", "disable_sources", "enable_sources"]

    def save_model(self, request, obj, form, change):
        if change:
            obj._change_reason = "edited in admin"
            obj.save()
            return
        source, key = source_create(
            name=obj.name, description=obj.description, rate_limit=obj.rate_limit, enabled=obj.enabled
        )
        obj.pk, obj.key_prefix, obj.key_hash = source.pk, source.key_prefix, source.key_hash
        messages.warning(request, format_html("Write key for {}: <code>{}</code> — copy it now, it is not shown again.", source.name, key))

    @admin.action(description="Rotate the write key (the old key stops working)", permissions=["change"])
    def rotate_keys(self, request, queryset):
        for source in queryset:
            key = source_rotate_key(source=source)
            messages.warning(request, format_html("New write key for {}: <code>{}</code> — copy it now.", source.name, key))

    @admin.action(description="Disable the selected sources", permissions=["change"])
    def disable_sources(self, request, queryset):
        for source in queryset:
            source_set_enabled(source=source, enabled=False, reason="disabled in admin")

    @admin.action(description="Enable the selected sources", permissions=["change"])
    def enable_sources(self, request, queryset):
        for source in queryset:
            source_set_enabled(source=source, enabled=True, reason="enabled in admin")
from journeys import admin_workflows  # noqa: E402,F401
