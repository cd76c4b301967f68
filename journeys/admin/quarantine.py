"""Admin for the event quarantine: list by source and reason, fix a payload, replay or discard.

Thin: the form asks the quarantine service whether a corrected payload would pass the API's
checks (the error names the field), and saves, replays and discards through the services,
which stamp who and why on the entry's history.
"""

from __future__ import annotations

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import (
    REASON_FIELD,
    HistoryRevertGuard,
    LargeTableMixin,
    ReasonActionForm,
    action_reason,
    action_selection_within,
    reason_field,
)
from journeys.choices import QuarantineStatus
from journeys.models import QuarantinedEvent
from journeys.services.quarantine import quarantine_check, quarantine_discard, quarantine_fix, quarantine_replay


class QuarantineFixForm(forms.ModelForm):
    """The payload, editable as JSON text while the event is quarantined; it must pass the API's checks."""

    change_reason = reason_field()

    class Meta:
        model = QuarantinedEvent
        fields = ("payload",)
        widgets = {"payload": forms.Textarea(attrs={"rows": 18, "cols": 100, "style": "font-family: monospace"})}

    def clean_payload(self) -> str:
        text = self.cleaned_data["payload"]
        try:
            quarantine_check(entry=self.instance, payload=text)
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict.get("payload", exc.messages)) from None
        return text

    def clean(self):
        # Someone else replayed or discarded it while this page was open: say so on the form.
        current = QuarantinedEvent.objects.filter(pk=self.instance.pk).values_list("status", flat=True).first()
        if current is not None and current != QuarantineStatus.QUARANTINED:
            raise forms.ValidationError(f"this event was already {QuarantineStatus(current).label.lower()}; "
                                        "reload the page")
        return super().clean()


# A replay stores its event in its own transaction: ~4 ms each on SQLite, about as much on
# PostgreSQL (13,333 ran past the web server's 30 s timeout half done), so 2,000 take ~10 s.
REPLAY_ACTION_LIMIT = 2_000
REPLAY_INSTEAD = ("Narrow the list with the filters (source, reason, date), or replay them all with "
                  "`manage.py quarantine_replay --reason ...` (the same filters; see its --help).")


@admin.register(QuarantinedEvent)
class QuarantinedEventAdmin(LargeTableMixin, HistoryRevertGuard, SimpleHistoryAdmin):
    history_revert = False  # an event is fixed, replayed or discarded through its actions
    form = QuarantineFixForm
    action_form = ReasonActionForm
    list_display = ("received_at", "source", "code", "field", "short_message", "status", "batch_index", "message_id")
    list_filter = ("status", "source", "code", ("received_at", admin.DateFieldListFilter))
    search_fields = ("message_id", "field", "message")
    list_select_related = ("source",)
    actions = ["replay_selected", "discard_selected"]
    readonly_fields = ("source", "status", "code", "field", "message", "defaults_shown", "endpoint_type", "message_id",
                       "batch_index", "received_at", "ip", "resolved_at", "resolved_by", "resolution", "event",
                       "payload_shown")
    change_form_template = "admin/journeys/quarantinedevent/change_form.html"

    @admin.display(description="message")
    def short_message(self, obj: QuarantinedEvent) -> str:
        return obj.message if len(obj.message) <= 100 else obj.message[:97] + "..."

    @admin.display(description="payload")
    def payload_shown(self, obj: QuarantinedEvent) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", _pretty(obj.payload))

    @admin.display(description="batch defaults")
    def defaults_shown(self, obj: QuarantinedEvent) -> str:
        return format_html("<pre style='white-space: pre-wrap'>{}</pre>", _pretty(obj.defaults)) if obj.defaults else "-"

    def _open(self, obj) -> bool:
        return obj is not None and obj.status == QuarantineStatus.QUARANTINED

    def get_fields(self, request, obj=None):
        if self.has_change_permission(request, obj) and obj is not None:
            return ["source", "code", "field", "message", "payload", REASON_FIELD, "defaults_shown", "endpoint_type",
                    "message_id", "batch_index", "received_at", "ip"]
        return ["source", "status", "code", "field", "message", "payload_shown", "defaults_shown", "endpoint_type",
                "message_id", "batch_index", "received_at", "ip", "resolved_at", "resolved_by", "resolution", "event"]

    def get_form(self, request, obj=None, **kwargs):
        if not (obj is not None and self.has_change_permission(request, obj)):
            kwargs["fields"] = []
            kwargs["form"] = forms.ModelForm
        return super().get_form(request, obj, **kwargs)

    def has_add_permission(self, request):
        return False  # entries come from the API only

    def has_change_permission(self, request, obj=None):
        # A replayed or discarded entry is shown, never changed (its page has no form to save).
        return super().has_change_permission(request, obj) and (obj is None or self._open(obj))

    def has_delete_permission(self, request, obj=None):
        return False  # discard (with a reason) instead

    def save_model(self, request, obj, form, change):
        reason = form.cleaned_data.get(REASON_FIELD, "")
        fixed = quarantine_fix(entry=obj, payload=form.cleaned_data["payload"], actor=request.user, reason=reason)
        if "_replay" in request.POST:
            self._replay(request, [fixed], reason)

    def _replay(self, request, entries, reason: str) -> None:
        result = quarantine_replay(entries=entries, actor=request.user, reason=reason)
        level = messages.ERROR if result.still_bad else messages.WARNING if result.skipped else messages.SUCCESS
        self.message_user(request, result.summary(), level)

    @admin.action(description="Replay the selected events (through the API's ingestion)", permissions=["change"])
    def replay_selected(self, request, queryset):
        if not action_selection_within(self, request, queryset, limit=REPLAY_ACTION_LIMIT, instead=REPLAY_INSTEAD):
            return
        reason = action_reason(self, request)
        if reason:
            self._replay(request, list(queryset.select_related(None).only("pk")), reason)

    @admin.action(description="Discard the selected events (say why in Reason)", permissions=["change"])
    def discard_selected(self, request, queryset):
        reason = action_reason(self, request)
        if reason:
            count = quarantine_discard(entries=list(queryset), actor=request.user, reason=reason)
            self.message_user(request, f"{count} event(s) discarded.")


def _pretty(text: str) -> str:
    """Indented JSON for reading; the text as stored if it cannot be read back (or nests too deeply)."""
    try:
        pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        pretty.encode("utf-8")  # a lone surrogate stays escaped (it cannot be sent as UTF-8)
        return pretty
    except (ValueError, RecursionError, UnicodeEncodeError):
        return text
