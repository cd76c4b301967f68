"""Channels with health (circuit, error rate, p95 latency), pause and breaker actions; caps."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from simple_history.admin import SimpleHistoryAdmin

from channels_app.models import Channel, FrequencyCap
from channels_app.providers import PROVIDERS
from channels_app.services.breaker import breaker_reset
from channels_app.services.caps import frequency_cap_delete, frequency_cap_save
from channels_app.services.channel_settings import channel_settings_problems
from channels_app.services.channels import channel_pause_set, channel_save, channel_token
from channels_app.services.health import channel_health, channels_health
from channels_app.admin.base import InUseDeleteMixin
from journeys.admin.base import HistoryReasonMixin, ReasonActionForm, StalePageMixin, action_reason, form_rename_check
from journeys.errors import PermissionDenied


class ChannelForm(forms.ModelForm):
    class Meta:
        model = Channel
        fields = "__all__"

    def clean_settings(self):
        settings = self.cleaned_data.get("settings") or {}
        if not isinstance(settings, dict):
            raise forms.ValidationError("settings must be a JSON object")
        return settings

    def clean(self):
        cleaned = super().clean()
        if "settings" in cleaned and cleaned.get("provider"):
            problems = channel_settings_problems(provider=cleaned["provider"], settings=cleaned["settings"])
            if problems:
                self.add_error("settings", problems)
        return cleaned

    def clean_name(self):
        return form_rename_check(self, what="channel")

    def clean_provider(self):
        provider = self.cleaned_data["provider"]
        if provider not in PROVIDERS:
            raise forms.ValidationError(f"unknown provider; choose one of {', '.join(sorted(PROVIDERS))}")
        return provider


@admin.register(Channel)
class ChannelAdmin(InUseDeleteMixin, StalePageMixin, HistoryReasonMixin, SimpleHistoryAdmin):
    in_use_as = "channel"
    form = ChannelForm
    action_form = ReasonActionForm
    list_display = ("name", "kind", "provider", "enabled", "paused", "fallback", "circuit", "error_rate",
                    "p95_latency")
    list_filter = ("kind", "enabled", "paused")
    actions = ("pause", "resume", "reset_breaker")
    # Paused and resumed with the list's Pause and Resume actions (with a reason, in the audit log),
    # never by a save of this page, which may have been opened before the pause.
    readonly_fields = ("paused", "health", "settings_check")
    fieldsets = (
        (None, {"fields": ("name", "kind", "provider", "settings", "settings_check", "enabled", "paused", "fallback",
                           "health")}),
        ("Delivery policy", {"fields": ("quiet_start", "quiet_end", "rate_limit_per_minute", "max_attempts",
                                        "retry_base_s", "retry_max_s", "breaker_threshold", "breaker_cooldown_s")}),
    )

    list_select_related = ("fallback",)

    def save_model(self, request, obj, form, change):
        channel_save(channel=obj, actor=request.user, reason=self._reason(request, form), loaded=self.loaded(form))

    def page_token(self, obj) -> str:
        return channel_token(channel=obj)

    def get_changelist_instance(self, request):
        """The health of the page's channels, read together (three queries for the page, not two a row)."""
        changelist = super().get_changelist_instance(request)
        healths = channels_health(channels=changelist.result_list)
        for channel in changelist.result_list:
            channel._health_now = healths[channel.pk]
        return changelist

    @staticmethod
    def _health(obj):
        """Read once per row and page (kept on the row's instance, which lives for one request)."""
        if not hasattr(obj, "_health_now"):
            obj._health_now = channel_health(channel=obj)
        return obj._health_now

    @admin.display(description="circuit")
    def circuit(self, obj):
        return self._health(obj).state

    @admin.display(description="errors (1h)")
    def error_rate(self, obj):
        return self._health(obj).errors_text

    @admin.display(description="p95 latency (1h)")
    def p95_latency(self, obj):
        return self._health(obj).p95_text

    @admin.display(description="settings check")
    def settings_check(self, obj):
        """Stored settings that today's rules refuse (e.g. saved before secrets needed the prefix)."""
        if obj is None or obj.pk is None:
            return "-"
        problems = channel_settings_problems(provider=obj.provider, settings=obj.settings)
        return "; ".join(problems) if problems else "ok"

    @admin.display(description="health (last hour)")
    def health(self, obj):
        if obj is None or obj.pk is None:
            return "-"
        return self._health(obj).summary

    def _set_paused(self, request, queryset, paused: bool):
        if not (reason := action_reason(self, request)):
            return
        try:
            for channel in queryset.filter(paused=not paused):
                channel_pause_set(channel=channel, paused=paused, actor=request.user, reason=reason)
        except PermissionDenied as exc:
            self.message_user(request, f"Nothing more changed: {exc}", messages.ERROR)
            return
        self.message_user(request, f"{'paused' if paused else 'resumed'}: {', '.join(c.name for c in queryset)}")

    @admin.action(description="Pause (hold sends without losing them; reason required)", permissions=["change"])
    def pause(self, request, queryset):
        self._set_paused(request, queryset, True)

    @admin.action(description="Resume (reason required)", permissions=["change"])
    def resume(self, request, queryset):
        self._set_paused(request, queryset, False)

    @admin.action(description="Close the circuit breaker", permissions=["change"])
    def reset_breaker(self, request, queryset):
        for channel in queryset:
            breaker_reset(channel=channel)


@admin.register(FrequencyCap)
class FrequencyCapAdmin(HistoryReasonMixin, SimpleHistoryAdmin):
    list_display = ("name", "channel", "topic", "limit", "window_s", "action", "enabled")
    list_filter = ("action", "enabled")

    def save_model(self, request, obj, form, change):
        frequency_cap_save(cap=obj, actor=request.user, reason=self._reason(request, form))

    def delete_model(self, request, obj):
        frequency_cap_delete(cap=obj, actor=request.user, reason=self._delete_reason(request) or "deleted in the admin")
