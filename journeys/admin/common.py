"""What the admins of workflows, versions, steps, runs and governance share: errors said in
words, the action bar with a reason (and a canary share), history without revert, scope checks
and when a version's steps may change."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404

from journeys.admin.base import HistoryReasonMixin as SharedHistoryReasonMixin
from journeys.admin.base import ReasonActionForm as SharedReasonActionForm
from journeys.admin.base import scoped_list_filter
from journeys.choices import VersionState
from journeys.models import (
    WorkflowVersion,
)
from journeys.selectors import (
    EDIT,
    VIEW,
    business_units_visible_to,
    user_can,
    user_has_any_scope,
    workflows_for_user,
)


def error_messages(exc: ValidationError) -> list[str]:
    if hasattr(exc, "message_dict"):
        return [f"{k}: {m}" if k != "__all__" else m for k, msgs in exc.message_dict.items() for m in msgs]
    return exc.messages


def error_text(exc: Exception) -> str:
    return "; ".join(error_messages(exc)) if isinstance(exc, ValidationError) else str(exc)


def object_or_404(queryset, pk):
    """The row with id `pk` (from a URL) or a 404 naming what was asked for: an id that is not a
    number is a page that does not exist, not a server error."""
    if not str(pk).isdigit():
        raise Http404(f"no {queryset.model._meta.verbose_name} with id {pk!r}")
    return get_object_or_404(queryset, pk=pk)


class ReasonActionForm(SharedReasonActionForm):
    # Text, not an IntegerField: a bad value would make Django drop the whole action ("No action
    # selected"); the canary action says what is wrong with it instead.
    percent = forms.CharField(required=False, label="Canary %",
                              widget=forms.NumberInput(attrs={"style": "width:4em", "min": 1, "max": 99}))


class RefusedActionMixin:
    """An action posted by someone it is not offered to (another role's habit, a page kept open
    after a role change, a scripted POST): Django drops it with "No action selected."; here the
    person is told it is refused and who may take it. `action_refusals`: the action's permission
    (as in `@admin.action(permissions=...)`) -> who may."""

    action_refusals: dict[str, str] = {}

    def response_action(self, request, queryset):
        name = request.POST.get("action", "")
        known = {n: (func, description) for func, n, description in self._get_base_actions()}
        if name in known and name not in self.get_actions(request):
            func, description = known[name]
            what = str(description).split(" (")[0].lower()
            who = "; ".join(self.action_refusals[p] for p in getattr(func, "allowed_permissions", ())
                            if p in self.action_refusals) or "your role does not include it"
            self.message_user(request, f"You may not {what}: {who}. Nothing was changed.", messages.ERROR)
            return None
        return super().response_action(request, queryset)


class HistoryReasonMixin(SharedHistoryReasonMixin):
    """The shared change-reason mixin (journeys.admin.base), without revert from the history page."""

    history_revert = False  # reverting through history would skip review: make a new draft instead


# The workflows the viewer may see (an editor never learns other units' workflow names), read from
# the workflow table: listing the workflows that have runs (or audit entries) would read all of them.
VisibleWorkflowFilter = scoped_list_filter(lambda user: workflows_for_user(user, VIEW).order_by("name"))
# The units whose workflows the viewer may see.
VisibleUnitFilter = scoped_list_filter(lambda user: business_units_visible_to(user).order_by("name"))


class ScopedAdminMixin:
    """Model-level answers from the user's scope (guardian object permissions included)."""

    def has_module_permission(self, request):
        return user_has_any_scope(request.user)


def version_editable(user, version: WorkflowVersion) -> bool:
    """Steps, edges and settings of a version may change: not frozen (never live), not a canary,
    not retired, and the user may edit the workflow."""
    return (not version.is_frozen and version.state in (VersionState.DRAFT, VersionState.IN_REVIEW,
                                                        VersionState.APPROVED)
            and not version.is_canary and user_can(user, EDIT, version.workflow))
