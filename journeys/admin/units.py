"""Business units and who edits their workflows (guardian object permissions)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import ReasonForm
from journeys.admin.common import (
    HistoryReasonMixin,
    error_text,
)
from journeys.errors import PermissionDenied
from journeys.models import (
    BusinessUnit,
)
from journeys.services import governance as gov


class EditorForm(forms.Form):
    username = forms.CharField(help_text="the user who edits (and proposes changes to) this unit's workflows")
    grant = forms.ChoiceField(choices=[("grant", "grant"), ("revoke", "revoke")])
    reason = forms.CharField(widget=forms.TextInput(attrs={"size": 60}))


@admin.register(BusinessUnit)
class BusinessUnitAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    form = ReasonForm
    list_display = ("name", "slug", "editors_link")
    prepopulated_fields = {"slug": ("name",)}

    @admin.display(description="editors")
    def editors_link(self, obj):
        return format_html('<a href="{}">editors</a>', reverse("admin:journeys_businessunit_editors", args=[obj.pk]))

    def save_model(self, request, obj, form, change):
        gov.business_unit_save(unit=obj, actor=request.user, reason=self._reason(request, form))

    def delete_model(self, request, obj):
        gov.business_unit_delete(unit=obj, actor=request.user, reason=self._delete_reason(request))

    def get_urls(self):
        return [
            path("<int:pk>/editors/", self.admin_site.admin_view(self.editors_view), name="journeys_businessunit_editors"),
        ] + super().get_urls()

    def editors_view(self, request, pk):
        """Who edits this unit's workflows (guardian object permission), granted and revoked with a reason."""
        from django.contrib.auth import get_user_model

        unit = get_object_or_404(BusinessUnit, pk=pk)
        if not self.has_view_permission(request, unit):
            raise DjangoPermissionDenied
        form = EditorForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            user = get_user_model().objects.filter(username=data["username"]).first()
            if user is None:
                form.add_error("username", "no such user")
            else:
                granting = data["grant"] == "grant"
                service = gov.business_unit_grant_editor if granting else gov.business_unit_revoke_editor
                try:
                    service(unit=unit, user=user, actor=request.user, reason=data["reason"])
                except (ValidationError, PermissionDenied) as exc:
                    form.add_error(None, error_text(exc))
                else:
                    said = "granted: now edits" if granting else "revoked: no longer edits"
                    messages.success(request, f"{user}: {said} the workflows of {unit}")
                    return HttpResponseRedirect(request.path)
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "unit": unit, "form": form,
                   "editors": gov.business_unit_editors(unit=unit),
                   "can_grant": gov.roles_can_manage(user=request.user),
                   "title": f"Editors of {unit}"}
        return render(request, "admin/journeys/unit_editors.html", context)
