"""Change requests: the review page (diff, validation, replay, thread) and its decisions."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError
from django.http import HttpResponseRedirect
from django.shortcuts import render

from journeys.admin.common import (
    ScopedAdminMixin,
    VisibleUnitFilter,
    error_text,
    object_or_404,
)
from journeys.console.governance import change_request_review
from journeys.errors import PermissionDenied
from journeys.models import (
    ChangeRequest,
)
from journeys.selectors import (
    change_requests_for_user,
    user_has_any_scope,
)
from journeys.services.segments import trigger_audience
from journeys.services.workflows import (
    change_request_comment,
    change_request_refresh,
    version_approve,
    version_canary_start,
    version_publish,
    version_reject,
)


CANARY_SHARE = "a whole number from 1 to 99 (the share of new entries the canary takes)"


class DecisionForm(forms.Form):
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 80}))
    fingerprint = forms.CharField(required=False, widget=forms.HiddenInput)
    percent = forms.IntegerField(required=False, min_value=1, max_value=99, label="Canary %",
                                 error_messages={key: CANARY_SHARE for key in ("invalid", "min_value", "max_value")})


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ScopedAdminMixin, admin.ModelAdmin):
    list_display = ("__str__", "workflow", "status", "proposed_by", "created_at", "decided_by", "decided_at")
    list_filter = ("status", ("workflow__business_unit", VisibleUnitFilter))
    list_select_related = ("workflow", "version", "proposed_by", "decided_by")

    def get_queryset(self, request):
        return change_requests_for_user(request.user) & super().get_queryset(request)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return user_has_any_scope(request.user)
        return change_requests_for_user(request.user).filter(pk=obj.pk).exists()

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The review page: summary, diff, validation, dry-run replay, the thread, and the decisions."""
        change_request = object_or_404(
            ChangeRequest.objects.select_related("workflow", "version", "base_version", "proposed_by"), object_id)
        if not self.has_view_permission(request, change_request):
            raise DjangoPermissionDenied
        user, version = request.user, change_request.version
        form = DecisionForm(request.POST or None)
        if request.method == "POST" and not form.is_valid():
            messages.error(request, "Nothing was done: correct the errors below.")
        elif request.method == "POST":
            comment = form.cleaned_data["comment"]
            decision = request.POST.get("decision", "")
            handlers = {
                "comment": lambda: change_request_comment(change_request=change_request, actor=user, comment=comment),
                "approve": lambda: version_approve(version=version, actor=user, comment=comment,
                                                   expected_fingerprint=form.cleaned_data["fingerprint"] or None),
                "reject": lambda: version_reject(version=version, actor=user, comment=comment),
                "publish": lambda: version_publish(version=version, actor=user, reason=comment),
                "canary": lambda: version_canary_start(version=version, percent=form.cleaned_data["percent"] or 0,
                                                       actor=user, reason=comment),
                "refresh": lambda: change_request_refresh(change_request=change_request, actor=user),
            }
            if decision not in handlers:
                messages.error(request, "unknown decision")
            else:
                try:
                    handlers[decision]()
                except (ValidationError, PermissionDenied) as exc:
                    messages.error(request, f"{decision}: {error_text(exc)}")
                else:
                    messages.success(request, f"{decision}: done")
                    return HttpResponseRedirect(request.path)
        review = change_request_review(change_request=change_request, user=user)
        if review["base_moved"] and request.method == "GET":
            messages.warning(request, review["base_moved"])
        if not form.is_bound or form.is_valid():  # a refused form is shown again with its errors
            form = DecisionForm(initial={"fingerprint": review["fingerprint"]})
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, **review,
                   "title": f"Review: {review['workflow']} v{review['version'].number}", "form": form,
                   "audience": trigger_audience(version=review["version"])}
        return render(request, "admin/journeys/change_request.html", context)
