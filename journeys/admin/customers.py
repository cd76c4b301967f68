"""Customers (Customer 360 on their page), merges and lifecycle stages."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.shortcuts import redirect
from django.urls import reverse
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import HistoryReasonMixin, LargeTableMixin, ReadOnlyAdmin
from journeys.api.fields import MAX_ID
from journeys.console.selectors import customer_360
from journeys.selectors import customers_named
from journeys.errors import JourneyError
from journeys.forms.fields import RuleInput
from journeys.timezones import traits_zone_checked, zone_check
from journeys.services.customers_api import CustomerNotFound, customer_edit, customer_get
from journeys.services.event_parsing import MAX_DEPTH, check_depth, check_event_size
from journeys.models import (
    Customer,
    CustomerMerge,
    LifecycleStage,
    MergeRefusal,
)


def _survivor_of(object_id: str) -> Customer | None:
    """The profile an absorbed one was merged into (None: no such id, or not merged)."""
    if not (object_id.isascii() and object_id.isdigit() and int(object_id) <= MAX_ID):
        return None
    try:
        survivor = customer_get(pk=int(object_id))
    except CustomerNotFound:
        return None
    return survivor if survivor.pk != int(object_id) else None


class CustomerForm(forms.ModelForm):
    """Traits are checked as the API checks them: saved through an identify (`customer_edit`)."""

    def clean_traits(self):
        traits = self.cleaned_data.get("traits")
        if not isinstance(traits, dict):
            raise forms.ValidationError('must be a JSON object of trait -> value, e.g. {"plan": "pro"}')
        try:
            check_event_size(traits, max_bytes=settings.EVENT_API["MAX_EVENT_BYTES"], prefix="traits")
            check_depth(traits, field="traits", limit=MAX_DEPTH - 1)  # saved inside an identify: one level more
            traits = traits_zone_checked(traits, stored=self.instance.traits if self.instance.pk else None)
        except JourneyError as exc:
            raise forms.ValidationError(str(exc)) from None
        return traits

    def clean_phone(self):
        """Stored as messages and inbound SMS match it (without spaces, dashes, dots, parentheses,
        an extension or `tel:`), read as the API reads a phone trait: what is no number is refused."""
        from journeys.services.identity import phone_number

        typed = (self.cleaned_data.get("phone") or "").strip()
        number = phone_number(typed)
        if typed and not number:
            raise forms.ValidationError(f"{typed!r} is not a phone number: type digits, e.g. +44 20 7946 0958")
        return number

    def clean_timezone(self):
        """Checked and spelled as the API does (journeys.timezones): `asia/kolkata` is Asia/Kolkata."""
        zone = (self.cleaned_data.get("timezone") or "").strip()
        try:
            return zone_check(zone, field="timezone") if zone else ""
        except JourneyError as exc:
            raise forms.ValidationError(exc.message) from None

    def clean(self):
        if self.instance.pk and self.instance.erased_at is not None:
            raise forms.ValidationError(f"This customer was erased on {self.instance.erased_at:%Y-%m-%d}; "
                                        "it takes no new data.")
        return super().clean()


@admin.register(Customer)
class CustomerAdmin(LargeTableMixin, admin.ModelAdmin):
    form = CustomerForm
    list_display = ("__str__", "email", "phone", "stage", "timezone", "first_seen", "last_seen")
    list_filter = ("stage", "timezone")
    search_fields = ("external_id",)  # see get_search_results: exact, through indexes
    search_help_text = "Exact match: a user id, anonymous id, email or phone number (any spelling), or #<number>."
    readonly_fields = ("stage", "first_seen", "last_seen", "last_engaged_at", "merged_into", "created_at", "updated_at")
    # Customer 360: identities, merges, consents, events, messages, runs and cases above the form.
    change_form_template = "admin/journeys/customer/change_form.html"

    def change_view(self, request, object_id, form_url="", extra_context=None):
        customer = self.get_object(request, unquote(object_id))
        if customer is None and self.has_view_permission(request) and (
                survivor := _survivor_of(unquote(object_id))) is not None:
            # an absorbed profile's page (an old link, an id in a log): the profile it became
            messages.info(request, f"Customer #{object_id} was merged into #{survivor.pk}; this is that profile.")
            return redirect(reverse("admin:journeys_customer_change", args=[survivor.pk]))
        extra = dict(extra_context or {})
        if customer is not None and self.has_view_permission(request, customer):
            extra["c360"] = customer_360(customer=customer, user=request.user)
        return super().change_view(request, object_id, form_url, extra)

    def save_model(self, request, obj, form, change):
        """An edit is saved as an identify (attribute-change triggers fire), as the API saves traits."""
        if not change:
            return super().save_model(request, obj, form, change)
        customer_edit(customer=obj, changed=form.changed_data, actor=f"admin:{request.user.get_username()}")

    def get_queryset(self, request):
        return super().get_queryset(request).filter(merged_into__isnull=True)

    def has_delete_permission(self, request, obj=None):
        """A customer leaves through erasure (Data subjects -> "Erase selected customers…",
        `manage.py erase_customer` or the API; docs/PRIVACY.md): it records who erased whom and why
        and keeps the suppressions that make an opt-out outlive the profile. A plain delete would
        keep neither, so no one deletes a customer here; retention removes anonymous leftovers."""
        return False

    def get_search_results(self, request, queryset, search_term):
        """The customers a term names exactly (any identity value, user id, email, phone written
        any way, row id), found through indexes: a substring search reads every customer."""
        if not search_term.strip():
            return queryset, False
        return queryset.filter(pk__in=customers_named(search_term)), False


@admin.register(CustomerMerge)
class CustomerMergeAdmin(admin.ModelAdmin):
    list_display = ("merged_at", "merged", "target", "reason", "actor")
    readonly_fields = ("merged_at", "merged", "target", "reason", "actor", "details")
    list_select_related = ("merged", "target")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class LifecycleStageForm(forms.ModelForm):
    class Meta:
        model = LifecycleStage
        fields = ("key", "name", "order", "rule", "description")
        widgets = {"rule": RuleInput(profile_only=True)}

    def clean_rule(self):
        from journeys.rules import validate_profile_rule

        rule = self.cleaned_data.get("rule", "")
        if rule and (errors := validate_profile_rule(rule)):
            raise forms.ValidationError(errors)
        return rule


@admin.register(MergeRefusal)
class MergeRefusalAdmin(ReadOnlyAdmin):
    """Aliases that would have merged two known users and did not (issue #15): facts to look at."""

    list_display = ("refused_at", "previous_id", "user_id", "other", "customer", "source", "reason")
    list_filter = ("source",)
    search_fields = ("previous_id", "user_id", "message_id")
    list_select_related = ("other", "customer", "source")


@admin.register(LifecycleStage)
class LifecycleStageAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = LifecycleStageForm

    class Media:  # the rule is checked as it is typed, as in the workflow forms
        css = {"all": ("console/console.css",)}
        js = ("console/editor.js",)
    list_display = ("order", "key", "name", "rule", "customers")
    list_display_links = ("key",)
    ordering = ("order",)

    @admin.display(description="customers now")
    def customers(self, obj):
        return Customer.objects.filter(stage=obj.key, merged_into__isnull=True).count()
