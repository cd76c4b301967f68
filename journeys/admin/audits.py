"""The audit log, operations switches (safe mode) and audit reports with the ops dashboard."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import path
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import HistoryRevertGuard, ReadOnlyAdmin
from journeys.admin.common import (
    ScopedAdminMixin,
    VisibleWorkflowFilter,
    error_text,
    object_or_404,
)
from journeys.console.governance import ops_switches
from journeys.errors import PermissionDenied
from journeys.models import (
    AuditEntry,
    AuditReport,
    OperationsSwitch,
)
from journeys.selectors import (
    audit_entries_for_user,
    user_can_view_dashboard,
    user_has_any_scope,
)
from journeys.services import governance as gov


@admin.register(AuditEntry)
class AuditEntryAdmin(ScopedAdminMixin, ReadOnlyAdmin):
    list_display = ("at", "actor", "action", "workflow", "version", "change_request", "reason")
    list_filter = ("action", ("workflow", VisibleWorkflowFilter))
    search_fields = ("reason", "action", "workflow__name")
    # The version and change request columns name their workflow (and the request its version).
    list_select_related = ("actor", "workflow", "version__workflow", "change_request__workflow",
                           "change_request__version")

    def get_queryset(self, request):
        return audit_entries_for_user(request.user) & super().get_queryset(request)

    def has_view_permission(self, request, obj=None):
        return user_has_any_scope(request.user) if obj is None else audit_entries_for_user(request.user).filter(pk=obj.pk).exists()


@admin.register(OperationsSwitch)
class OperationsSwitchAdmin(HistoryRevertGuard, SimpleHistoryAdmin, ReadOnlyAdmin):
    list_display = ("__str__", "scope", "key", "active", "reason", "changed_by", "changed_at")
    history_revert = False  # switches change through their services (who, why, release on commit)


class AuditForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=365, error_messages={
        "invalid": "write a whole number of days, e.g. 14", "required": "say how many days back the audit looks"})


class SwitchForm(forms.Form):
    active = forms.ChoiceField(choices=[("on", "on"), ("off", "off")], label="Global safe mode")
    reason = forms.CharField(widget=forms.TextInput(attrs={"size": 60}))


@admin.register(AuditReport)
class AuditReportAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "days", "trigger")
    change_form_template = "admin/journeys/audit_report.html"

    def has_module_permission(self, request):
        return user_can_view_dashboard(request.user)

    def has_view_permission(self, request, obj=None):
        return user_can_view_dashboard(request.user)

    def get_urls(self):
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="journeys_ops_dashboard"),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        report = object_or_404(AuditReport.objects.all(), object_id)
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "report": report})

    def dashboard_view(self, request):
        """Ops dashboard: switches, canaries, reviews waiting, and the latest audit."""
        if not user_can_view_dashboard(request.user):
            raise DjangoPermissionDenied
        form = SwitchForm(request.POST or None) if request.POST.get("form") == "switch" else SwitchForm()
        if request.method == "POST":
            try:
                if request.POST.get("form") == "audit":
                    audit_form = AuditForm(request.POST)
                    if not audit_form.is_valid():
                        raise ValidationError(audit_form.errors.as_data())
                    gov.audit_run(days=audit_form.cleaned_data["days"], trigger="admin")
                    messages.success(request, "audit finished")
                elif form.is_valid():
                    data = form.cleaned_data
                    gov.safe_mode_set(active=data["active"] == "on", actor=request.user, reason=data["reason"])
                    messages.success(request, f"safe mode {data['active']}")
                    return HttpResponseRedirect(request.path)
            except (ValidationError, PermissionDenied) as exc:
                messages.error(request, error_text(exc))
            else:
                if request.POST.get("form") == "audit":
                    return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Ops dashboard",
            **ops_switches(user=request.user),
            "form": form,
        }
        return render(request, "admin/journeys/dashboard.html", context)
