"""The forms of the channels app's step kinds (send_message, send_best_channel), registered with
their executors in channels_app/steps.py."""

from __future__ import annotations

from django import forms

from channels_app.choices import ChannelKind
from channels_app.models import Channel, MessageTemplate, TemplateVariant
from journeys.forms.fields import DurationField, NamesInput
from journeys.forms.steps import StepConfigForm, TemplatePreviewMixin


def _channels() -> list[tuple[str, str]]:
    return [(name, f"{name} ({kind})") for name, kind in Channel.objects.order_by("name").values_list("name", "kind")]


def _templates() -> list[tuple[str, str]]:
    return [(name, f"{name} ({kind})" if kind else name)
            for name, kind in MessageTemplate.objects.order_by("name").values_list("name", "channel_kind")]


def _locales() -> list[str]:
    return sorted(set(TemplateVariant.objects.values_list("locale", flat=True)))


class _MessagingFields(forms.Form):
    min_gap_other_channel = DurationField(required=False, label="Gap after other channels",
                                          help_text="optional, e.g. 4h: not within this long of the last contact "
                                                    "on another channel")
    recent_contact_action = forms.ChoiceField(required=False, choices=[("", "defer (default)"), ("defer", "defer"),
                                                                      ("suppress", "suppress")],
                                              help_text="what happens within that gap")


class SendMessageForm(TemplatePreviewMixin, StepConfigForm):
    kind = "send_message"
    config_fields = ("channel", "template", "min_gap_other_channel", "recent_contact_action")
    durations = ("min_gap_other_channel",)
    channel = forms.ChoiceField(help_text="where it goes (falls back along the channel's fallback chain)")
    template = forms.ChoiceField(help_text="what is sent; preview it below")
    min_gap_other_channel = _MessagingFields.base_fields["min_gap_other_channel"]
    recent_contact_action = _MessagingFields.base_fields["recent_contact_action"]

    def setup(self):
        self.fields["channel"].choices = [("", "-"), *_channels()]
        self.fields["template"].choices = [("", "-"), *_templates()]
        self.fields["preview_locale"].widget = NamesInput(_locales(), attrs={"size": 8})


class SendBestChannelForm(TemplatePreviewMixin, StepConfigForm):
    kind = "send_best_channel"
    config_fields = ("template", "templates", "channels", "urgency", "send_time", "min_engagements",
                     "min_gap_other_channel", "recent_contact_action")
    durations = ("min_gap_other_channel",)
    template = forms.ChoiceField(help_text="the template used on any channel without its own below")
    channels = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                         help_text="choose among these (none ticked: every enabled channel but webhooks)")
    urgency = forms.ChoiceField(choices=[("normal", "normal"), ("urgent", "urgent: push or SMS first"),
                                         ("triage", "triage: chat first"), ("event", "from event.properties.urgency")])
    send_time = forms.ChoiceField(choices=[("best_hour", "the customer's usual hour"), ("now", "now")],
                                  help_text="non-urgent messages can wait for the hour the customer engages")
    min_engagements = forms.IntegerField(min_value=1, initial=5,
                                         help_text="engagements needed before a best hour is trusted")
    min_gap_other_channel = _MessagingFields.base_fields["min_gap_other_channel"]
    recent_contact_action = _MessagingFields.base_fields["recent_contact_action"]

    def setup(self):
        templates = _templates()
        self.fields["template"].choices = [("", "-"), *templates]
        self.fields["channels"].choices = _channels()
        self.fields["preview_locale"].widget = NamesInput(_locales(), attrs={"size": 8})
        self.kinds = list(ChannelKind.values)
        for value, label in ChannelKind.choices:
            self.fields[f"template_{value}"] = forms.ChoiceField(
                required=False, label=f"Template for {label}", choices=[("", "(the main template)"), *templates])
        for value, name in ((self.step.config or {}).get("templates") or {}).items() if self.step else ():
            self.initial[f"template_{value}"] = name

    def to_config(self, data):
        config = super().to_config(data)
        templates = {k: data[f"template_{k}"] for k in self.kinds if data.get(f"template_{k}")}
        if templates:
            config["templates"] = templates
        return config

    def field_for(self, key, message):
        if key == "templates":
            kind = next((k for k in self.kinds if f"is {k}" in message or f"{k!r}" in message), None)
            return f"template_{kind}" if kind else "template"
        return super().field_for(key, message)
