"""The trigger and entry settings of a version as labelled fields (the canvas's start node):
which trigger, with the settings of that kind of trigger, who may enter and how often, and
which event ends the run as a conversion. Saved by `journeys.services.drafts.version_settings_save`,
which validates them as every other path does (`trigger_clean`)."""

from __future__ import annotations

import json

from django import forms
from django.core.exceptions import ValidationError

from journeys.choices import ReentryPolicy, TriggerKind
from journeys.engine.durations import duration_text, parse_duration
from journeys.forms.fields import DurationField, NamesInput, RuleInput, event_names, trait_names
from journeys.models import WorkflowVersion
from journeys.services.event_parsing import json_strict

# The settings each kind of trigger reads from trigger_config, as form fields.
TRIGGER_FIELDS = {
    TriggerKind.EVENT: ("filter",),
    TriggerKind.INACTIVITY: ("followed_by", "within", "filter"),
    TriggerKind.ATTRIBUTE_CHANGE: ("attribute",),
    TriggerKind.SEGMENT_ENTRY: ("rule",),
    TriggerKind.DATE_ATTRIBUTE: ("attribute", "at", "offset_days", "yearly"),
    TriggerKind.SCHEDULE: ("cron", "timezone", "segment"),
}
CONFIG_FIELDS = ("filter", "followed_by", "within", "attribute", "rule", "at", "offset_days", "yearly", "cron", "timezone",
                 "segment")


class VersionSettingsForm(forms.Form):
    """What starts a run and what ends it; the fields of other trigger kinds are ignored."""

    trigger_kind = forms.ChoiceField(label="Trigger", choices=TriggerKind.choices)
    trigger_event = forms.CharField(required=False, max_length=255, label="Event",
                                    help_text="the event that starts it (event and inactivity triggers)")
    filter = forms.CharField(required=False, label="Event filter",
                             help_text="only events for which this rule is true start a run (optional)")
    followed_by = forms.CharField(required=False, label="Not followed by",
                                  help_text="inactivity: the event that, arriving in time, means nothing to do")
    within = forms.CharField(required=False, label="Within", help_text="inactivity: e.g. 1h, 30m, 2d",
                             widget=forms.TextInput(attrs={"size": 8}))
    attribute = forms.CharField(required=False, label="Profile attribute",
                                help_text="attribute change: the trait watched; date: the trait holding the date")
    rule = forms.CharField(required=False, label="Segment rule", help_text="segment entry: e.g. profile.ltv >= 500")
    at = forms.RegexField(r"^([01][0-9]|2[0-3]):[0-5][0-9]$", required=False, label="At (local time)", help_text="date trigger: HH:MM",
                          error_messages={"invalid": "must be HH:MM (24-hour, 00:00 to 23:59), e.g. 09:00"},
                          widget=forms.TextInput(attrs={"size": 6, "placeholder": "09:00"}))
    offset_days = forms.IntegerField(required=False, label="Days before (-) or after", min_value=-365, max_value=365)
    yearly = forms.BooleanField(required=False, label="Every year", help_text="date trigger: an anniversary")
    cron = forms.CharField(required=False, label="Cron schedule",
                           help_text="schedule: e.g. 0 9 * * 1 (Mondays 09:00 in the time zone below; UTC if none)")
    timezone = forms.CharField(required=False, max_length=64, label="Schedule time zone",
                               help_text="schedule: the clock the cron reads, e.g. Europe/Paris (empty: UTC); "
                                         "a time skipped by a DST change runs at the jump, a repeated one once")
    segment = forms.CharField(required=False, label="Over the segment", help_text="schedule: a rule over the profile")
    more = forms.CharField(required=False, label="More trigger settings (JSON)",
                           help_text="settings this form does not show, kept as they are",
                           widget=forms.Textarea(attrs={"rows": 2, "cols": 50}))
    entry_rule = forms.CharField(required=False, label="Entry rule",
                                 help_text="must be true for a customer to enter (optional)")
    reentry_policy = forms.ChoiceField(label="Re-entry", choices=ReentryPolicy.choices)
    reentry_cooldown = DurationField(required=False, label="Cooldown",
                                     help_text="with 'again after a cooldown': e.g. 1d")
    allow_concurrent_runs = forms.BooleanField(required=False, label="Several runs at once",
                                               help_text="a customer may be in several runs of this workflow")
    goal_event = forms.CharField(required=False, max_length=255, label="Goal event",
                                 help_text="ends the run and counts a conversion (optional), e.g. Order Completed")
    goal_filter = forms.CharField(required=False, label="Goal filter",
                                  help_text="the goal event counts only when this rule is true (optional)")
    entry_step = forms.ChoiceField(required=False, label="Entry step", help_text="the first step of a run")

    def __init__(self, *args, version: WorkflowVersion, **kwargs):
        self.version = version
        if "initial" not in kwargs:
            kwargs["initial"] = self.initial_from(version)
        super().__init__(*args, **kwargs)
        events = event_names()
        for name in ("trigger_event", "followed_by", "goal_event"):
            self.fields[name].widget = NamesInput(events, attrs={"id": f"id_{name}"})
        self.fields["attribute"].widget = NamesInput(trait_names())
        for name, event in (("filter", version.trigger_event), ("entry_rule", version.trigger_event),
                            ("goal_filter", version.goal_event)):
            self.fields[name].widget = RuleInput(version_id=version.pk, event=event)
        for name in ("rule", "segment"):  # segment entry and a schedule's audience: read from profiles
            self.fields[name].widget = RuleInput(version_id=version.pk, profile_only=True)
        self.fields["entry_step"].choices = [("", "-")] + [
            (key, key) for key in version.steps.order_by("y", "x", "id").values_list("key", flat=True)]

    def trigger_fields(self) -> list:
        return [self[name] for name in ("trigger_kind", "trigger_event", *CONFIG_FIELDS, "more")]

    def entry_fields(self) -> list:
        return [self[name] for name in ("entry_step", "entry_rule", "reentry_policy", "reentry_cooldown",
                                        "allow_concurrent_runs", "goal_event", "goal_filter")]

    @staticmethod
    def initial_from(version: WorkflowVersion) -> dict:
        config = dict(version.trigger_settings)
        known = {k: config.pop(k) for k in CONFIG_FIELDS if k in config}
        return {
            "trigger_kind": version.trigger_kind, "trigger_event": version.trigger_event, **known,
            "more": json.dumps(config, sort_keys=True) if config else "", "entry_rule": version.entry_rule,
            "reentry_policy": version.reentry_policy, "reentry_cooldown": duration_text(version.reentry_cooldown_s),
            "allow_concurrent_runs": version.allow_concurrent_runs, "goal_event": version.goal_event,
            "goal_filter": version.goal_filter, "entry_step": version.entry_step,
        }

    def clean_more(self) -> dict:
        text = (self.cleaned_data.get("more") or "").strip()
        if not text:
            return {}
        try:
            value = json_strict(text, finite=True)
        except ValueError as exc:
            raise ValidationError(f"not valid JSON: {getattr(exc, 'msg', exc)}") from None
        if not isinstance(value, dict):
            raise ValidationError('must be a JSON object, e.g. {"note": "spring campaign"}')
        return value

    def values(self) -> dict:
        """The settings as the version stores them (for `version_settings_save`)."""
        data = self.cleaned_data
        kind = data["trigger_kind"]
        config = dict(data.get("more") or {})
        for name in TRIGGER_FIELDS.get(kind, ()):
            value = data.get(name)
            if value not in (None, "", False):
                config[name] = value
        if kind == TriggerKind.DATE_ATTRIBUTE:
            config["yearly"] = bool(data.get("yearly"))
        cooldown = data.get("reentry_cooldown") or ""
        return {
            "trigger_kind": kind, "trigger_event": data.get("trigger_event", "").strip(), "trigger_config": config,
            "entry_rule": data.get("entry_rule", ""), "reentry_policy": data["reentry_policy"],
            "reentry_cooldown_s": int(parse_duration(cooldown).total_seconds()) if cooldown else 0,
            "allow_concurrent_runs": bool(data.get("allow_concurrent_runs")), "goal_event": data.get("goal_event", ""),
            "goal_filter": data.get("goal_filter", ""), "entry_step": data.get("entry_step", ""),
        }

    def field_for(self, key: str, message: str) -> str | None:
        """The field a service error (`{key: message}`) belongs to: trigger_config errors name
        their setting first ("within: ..."), cooldown is typed as a duration."""
        if key == "trigger_config":  # a setting this kind does not show as a field was typed in "more"
            name = message.split(":", 1)[0].strip()
            if name in TRIGGER_FIELDS.get(self.cleaned_data.get("trigger_kind"), ()):
                return name
            return "more" if name in (self.cleaned_data.get("more") or {}) else "trigger_kind"
        return {"reentry_cooldown_s": "reentry_cooldown"}.get(key, key if key in self.fields else None)

