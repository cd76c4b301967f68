"""What the admins of workflows, versions, steps, runs and governance share: errors said in
words, the action bar with a reason (and a canary share), history without revert, scope checks
and when a version's steps may change."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.http import Http404
from django.shortcuts import get_object_or_404

from journeys.admin.base import HistoryReasonMixin as SharedHistoryReasonMixin
from journeys.admin.base import ReasonActionForm as SharedReasonActionForm
from journeys.choices import VersionState
from journeys.models import (
    WorkflowVersion,
)
from journeys.selectors import (
    EDIT,
    user_can,
    user_has_any_scope,
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


class HistoryReasonMixin(SharedHistoryReasonMixin):
    """The shared change-reason mixin (journeys.admin.base), without revert from the history page."""

    history_revert = False  # reverting through history would skip review: make a new draft instead


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
