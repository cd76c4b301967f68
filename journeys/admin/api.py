"""Admin for the management API's tokens and their access log (thin: services do the work)."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import (
    HistoryReasonMixin,
    LargeTableMixin,
    ReadOnlyAdmin,
    ReasonActionForm,
    ReasonForm,
    action_reason,
)
from journeys.choices import ApiScope
from journeys.models import ApiRequest, ApiToken
from journeys.services.api_tokens import scopes_clean, token_create, token_maker_deactivated, token_revoke


class ApiTokenForm(ReasonForm):
    scopes = forms.MultipleChoiceField(choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple,
                                       help_text="what the token may do; give each client only what it needs")

    class Meta:
        model = ApiToken
        fields = ("name", "description", "scopes", "source", "expires_at", "rate_limit")

    def clean_scopes(self):
        try:
            return scopes_clean(self.cleaned_data.get("scopes") or [])
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["scopes"]) from None

    def clean(self):
        data = super().clean()
        if ApiScope.TRACK in (data.get("scopes") or []) and not data.get("source"):
            self.add_error("source", "a token with the track scope needs the source its events belong to")
        expires = data.get("expires_at")
        if expires is not None and expires <= timezone.now() and not self.instance.pk:
            self.add_error("expires_at", "must be in the future")
        return data


@admin.register(ApiToken)
class ApiTokenAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    """Tokens are shown once, at creation; revoking one asks why (the Reason box)."""

    form = ApiTokenForm
    action_form = ReasonActionForm
    list_display = ("name", "key_prefix", "scope_list", "state", "expires_at", "last_used_at", "created_by")
    list_filter = ("revoked_at",)
    list_select_related = ("created_by",)
    search_fields = ("name", "key_prefix")
    readonly_fields = ("key_prefix", "created_by", "created_reason", "revoked_at", "revoked_by", "revoked_reason",
                       "last_used_at", "created_at")
    actions = ["revoke_tokens"]

    def get_fields(self, request, obj=None):
        fields = ["name", "description", "scopes", "source", "expires_at", "rate_limit"]
        if obj is not None:
            fields += list(self.readonly_fields)
        return fields

    @admin.display(description="scopes")
    def scope_list(self, obj):
        return ", ".join(obj.scopes or []) or "-"

    @admin.display(description="state")
    def state(self, obj):
        if obj.revoked_at:
            return "revoked"
        if not obj.active_at():
            return "expired"
        return "stopped: its maker's account is deactivated" if token_maker_deactivated(obj) else "active"

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        token, key = token_create(
            name=obj.name, description=obj.description, scopes=obj.scopes, source=obj.source,
            expires_at=obj.expires_at, rate_limit=obj.rate_limit, actor=request.user, reason=self._reason(request, form),
        )
        obj.pk, obj.key_prefix, obj.key_hash = token.pk, token.key_prefix, token.key_hash
        messages.warning(request, format_html(
            "API token {}: <code>{}</code> — copy it now, it is not shown again. "
            "Send it as <code>Authorization: Bearer &lt;token&gt;</code>.", token.name, key))

    @admin.action(description="Revoke the selected tokens (their calls are refused at once)", permissions=["change"])
    def revoke_tokens(self, request, queryset):
        reason = action_reason(self, request)
        if not reason:
            return
        for token in queryset:
            token_revoke(token=token, actor=request.user, reason=reason)
        self.message_user(request, f"Revoked {queryset.count()} token(s).", messages.SUCCESS)


@admin.register(ApiRequest)
class ApiRequestAdmin(LargeTableMixin, ReadOnlyAdmin):
    """The access log: every call made with a token."""

    list_display = ("at", "token", "method", "path", "status", "duration_ms", "ip")
    list_filter = ("status", "method", "token", ("at", admin.DateFieldListFilter))
    search_fields = ("path",)
    list_select_related = ("token",)


# --------------------------------------------------------------------------- outbound event stream

from journeys.choices import StreamEventType  # noqa: E402
from journeys.models import StreamAttempt, StreamBatch, StreamDestination  # noqa: E402
from journeys.engine.durations import duration_text  # noqa: E402
from journeys.services import stream as stream_service  # noqa: E402
from journeys.services import stream_destinations  # noqa: E402


class StreamDestinationForm(ReasonForm):
    event_types = forms.MultipleChoiceField(
        choices=StreamEventType.choices, widget=forms.CheckboxSelectMultiple, required=False,
        help_text="what it receives; none ticked = everything")

    class Meta:
        model = StreamDestination
        fields = ("name", "url", "event_types", "enabled", "batch_size", "max_failures")

    def _post_clean(self):
        """The service's own checks (URL through the outbound guard, event types, batch size,
        failures before a pause), so every refusal is a form error on its field, never a 500."""
        super()._post_clean()
        try:
            stream_service.destination_clean(self.instance)
        except ValidationError as exc:
            self.add_error(None, exc)


@admin.register(StreamDestination)
class StreamDestinationAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    """Where the event stream goes. The signing secret is shown when made or rotated; a paused
    destination keeps collecting its events and sends them, in order, once resumed."""

    form = StreamDestinationForm
    action_form = ReasonActionForm
    list_display = ("name", "url", "enabled", "state", "pending", "lag", "last_success_at", "consecutive_failures")
    list_filter = ("enabled",)
    search_fields = ("name", "url")
    readonly_fields = ("paused_at", "pause_reason", "consecutive_failures", "next_attempt_at", "last_success_at",
                       "last_error", "secret_rotated_at", "created_at")
    actions = ["resume_destinations", "pause_destinations", "rotate_secrets"]

    def get_fields(self, request, obj=None):
        fields = ["name", "url", "event_types", "enabled", "batch_size", "max_failures"]
        return fields + list(self.readonly_fields) if obj is not None else fields

    def _backlog(self, obj):
        if not hasattr(obj, "_backlog"):
            obj._backlog = stream_service.destination_backlog(destination=obj)
        return obj._backlog

    @admin.display(description="state")
    def state(self, obj):
        if obj.paused_at:
            return format_html("paused: {}", obj.pause_reason)
        if obj.consecutive_failures:
            return f"retrying ({obj.consecutive_failures} failed)"
        _, lag = self._backlog(obj)
        if lag is not None and lag > stream_service.LAG_BEHIND:
            return f"behind by {duration_text(max(1, int(lag.total_seconds())))}"
        return "ok"

    @admin.display(description="waiting events")
    def pending(self, obj):
        return self._backlog(obj)[0]

    @admin.display(description="oldest waiting")
    def lag(self, obj):
        _, lag = self._backlog(obj)
        return "-" if lag is None else duration_text(max(1, int(lag.total_seconds())))

    def save_model(self, request, obj, form, change):
        secret = stream_destinations.destination_save(destination=obj, actor=request.user, reason=self._reason(request, form))
        if secret:
            messages.warning(request, format_html(
                "Signing secret for {}: <code>{}</code> — copy it now, it is not shown again. Verify requests "
                "with any Standard Webhooks library.", obj.name, secret))

    @admin.action(description="Resume the selected destinations (send their backlog now)", permissions=["change"])
    def resume_destinations(self, request, queryset):
        if reason := action_reason(self, request):
            for destination in queryset:
                stream_destinations.destination_resume(destination=destination, actor=request.user, reason=reason)
            self.message_user(request, f"Resumed {queryset.count()} destination(s).", messages.SUCCESS)

    @admin.action(description="Pause the selected destinations (events keep being collected)", permissions=["change"])
    def pause_destinations(self, request, queryset):
        if reason := action_reason(self, request):
            for destination in queryset:
                stream_destinations.destination_pause(destination=destination, actor=request.user, reason=reason)
            self.message_user(request, f"Paused {queryset.count()} destination(s).", messages.SUCCESS)

    @admin.action(description="Rotate the signing secret", permissions=["change"])
    def rotate_secrets(self, request, queryset):
        if reason := action_reason(self, request):
            for destination in queryset:
                secret = stream_destinations.destination_rotate_secret(destination=destination, actor=request.user,
                                                                  reason=reason)
                messages.warning(request, format_html(
                    "New signing secret for {}: <code>{}</code> — copy it now. Requests are signed with the "
                    "old one too for {}, so the receiver can switch meanwhile.", destination.name, secret,
                    duration_text(settings.STREAM["ROTATION_OVERLAP_S"]) or "no time"))


class StreamAttemptInline(admin.TabularInline):
    model = StreamAttempt
    fields = readonly_fields = ("at", "ok", "status_code", "latency_ms", "error")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(StreamBatch)
class StreamBatchAdmin(LargeTableMixin, ReadOnlyAdmin):
    """The delivery log: each signed request, its attempts and answers."""

    list_display = ("created_at", "destination", "webhook_id", "events_count", "attempts", "last_status_code",
                    "delivered_at")
    list_filter = ("destination", ("delivered_at", admin.EmptyFieldListFilter))
    search_fields = ("webhook_id",)
    list_select_related = ("destination",)
    inlines = [StreamAttemptInline]

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("journeys.view_streamdestination")
