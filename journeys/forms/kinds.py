"""The forms of journeys' own step kinds (condition, split, delay, wait, update profile, goal,
exit, set stage, start workflow); each kind names its form in journeys.engine."""

from __future__ import annotations

import json
import math
import re

from django import forms
from django.core.exceptions import ValidationError

from journeys.engine.durations import duration_text
from journeys.forms.fields import (
    DURATION_HELP,
    DurationField,
    NamesInput,
    RuleInput,
    RuleTextInput,
    duration_clean,
    event_names,
    trait_names,
)
from journeys.forms.steps import StepConfigForm
from journeys.services.event_parsing import json_strict
from journeys.models import Workflow


class ConditionForm(StepConfigForm):
    kind = "condition"
    config_fields = ("rule",)
    rule = forms.CharField(help_text="true follows 'yes', false follows 'no'; e.g. profile.ltv >= 500 and "
                                     "event.properties.total > 100")

    def setup(self):
        self.fields["rule"].widget = RuleInput(version_id=self.version.pk)


class SplitForm(StepConfigForm):
    kind = "split"
    help = "Branches are tried in order; the first whose rule is true is followed, else 'default'."

    def setup(self):
        existing = (self.initial or {}).get("branches") or []
        self.rows = max(4, len(existing) + 2)
        for i in range(1, self.rows + 1):
            self.fields[f"branch_{i}_name"] = forms.CharField(
                required=False, label=f"Branch {i} name", help_text="the outcome name (letters, digits, - or _)",
                widget=forms.TextInput(attrs={"size": 16}))
            self.fields[f"branch_{i}_rule"] = forms.CharField(
                required=False, label=f"Branch {i} rule", widget=RuleInput(version_id=self.version.pk),
                help_text="followed when true (the first true branch wins)" if i == 1 else "")
        for i, branch in enumerate(existing, 1):
            self.initial[f"branch_{i}_name"] = branch.get("name", "")
            self.initial[f"branch_{i}_rule"] = branch.get("rule", "")

    def to_config(self, data):
        self.used = [i for i in range(1, self.rows + 1) if data.get(f"branch_{i}_name") or data.get(f"branch_{i}_rule")]
        return {"branches": [{"name": data[f"branch_{i}_name"], "rule": data[f"branch_{i}_rule"]} for i in self.used]}

    def field_for(self, key, message):
        used = getattr(self, "used", [])
        if match := re.match(r"branch (\d+)", message):  # 'branch 2: name must...' counts the branches given
            n = int(match.group(1))
            row = used[n - 1] if 0 < n <= len(used) else 1
            return f"branch_{row}_name" if "name" in message.split(":", 1)[-1][:12] else f"branch_{row}_rule"
        if match := re.match(r"branch (?:name )?'?([A-Za-z0-9_-]+)'?", message):
            row = next((i for i in used if self.cleaned_data.get(f"branch_{i}_name") == match.group(1)), None)
            if row is not None:
                return f"branch_{row}_name" if "used twice" in message else f"branch_{row}_rule"
        return "branch_1_name"


class DelayForm(StepConfigForm):
    kind = "delay"
    durations = ("duration",)
    signed_durations = ("offset",)  # before (-3d) or after (2h) a profile date
    MODES = {"duration": ("duration",), "until_local_time": ("until_local_time",),
             "until_attribute": ("until_attribute", "offset")}
    mode = forms.ChoiceField(label="Wait", widget=forms.RadioSelect, choices=[
        ("duration", "for a duration"), ("until_local_time", "until a time of day (customer's timezone)"),
        ("until_attribute", "until a date in the profile")])
    duration = DurationField(required=False, help_text=f"with 'for a duration': {DURATION_HELP}")
    until_local_time = forms.RegexField(
        r"^\d{1,2}:\d{2}$", required=False, label="Until local time", help_text="HH:MM, 24-hour, e.g. 09:00",
        error_messages={"invalid": "must be HH:MM (24-hour), e.g. 09:00"},
        widget=forms.TextInput(attrs={"size": 6, "placeholder": "09:00"}))
    until_attribute = forms.CharField(required=False, label="Until profile date",
                                      help_text="a profile trait holding a date, e.g. renewal_date")
    offset = forms.CharField(required=False, help_text="with a profile date: before (-3d) or after (2h) it",
                             widget=forms.TextInput(attrs={"size": 8, "placeholder": "-3d"}))

    def setup(self):
        self.fields["until_attribute"].widget = NamesInput(trait_names())
        config = self.step.config if self.step else {}
        if config:
            self.initial["mode"] = next((m for m in ("duration", "until_local_time", "until_attribute") if m in config),
                                        "duration")
            if "offset" in config:
                offset = int(config["offset"] or 0)
                self.initial["offset"] = ("-" if offset < 0 else "") + duration_text(abs(offset)) if offset else ""
        else:
            self.initial.setdefault("mode", "duration")

    def clean_offset(self):
        offset = self.cleaned_data.get("offset", "")
        return duration_clean(offset, signed=True) if offset else offset

    def clean(self):
        mode = self.cleaned_data.get("mode")
        if mode in self.MODES:  # the other modes' fields are ignored, and so are their mistakes
            for name in (n for n in (*self.MODES, "offset") if n not in self.MODES[mode]):
                self.errors.pop(name, None)
        return super().clean()

    def to_config(self, data):
        mode = data["mode"]
        if not data.get(mode):
            raise ValidationError({mode: "is required for this kind of wait"})
        config = {mode: data[mode]}
        if mode == "until_attribute" and data.get("offset"):
            config["offset"] = data["offset"]
        return config

    def field_for(self, key, message):
        if key == "duration" and "exactly one" in message:
            return self.cleaned_data.get("mode") or "mode"
        return super().field_for(key, message)


class WaitForEventForm(StepConfigForm):
    kind = "wait_for_event"
    config_fields = ("event", "filter", "timeout")
    durations = ("timeout",)
    event = forms.CharField(help_text="the event that ends the wait ('event' outcome), e.g. Order Completed")
    filter = forms.CharField(required=False, help_text="only an event for which this rule is true counts (optional)")
    timeout = DurationField(help_text=f"give up after this long ('timeout' outcome): {DURATION_HELP}")

    def setup(self):
        self.fields["event"].widget = NamesInput(event_names())
        self.fields["filter"].widget = RuleInput(version_id=self.version.pk)


VALUE_KINDS = [("text", "text"), ("number", "number"), ("bool", "yes / no"), ("rule", "rule (computed)"),
               ("json", "JSON")]


class UpdateProfileForm(StepConfigForm):
    kind = "update_profile"
    help = ("Each row sets a profile trait or a journey variable. A 'rule' value is computed when the step runs; "
            'in a JSON value, {"rule": "..."} is computed too, at any depth. JSON null sets the trait to null.')

    def setup(self):
        config = self.step.config if self.step else {}
        existing = [("traits", k, v) for k, v in (config.get("traits") or {}).items()] + \
                   [("variables", k, v) for k, v in (config.get("variables") or {}).items()]
        self.rows = max(3, len(existing) + 2)
        for i in range(1, self.rows + 1):
            self.fields[f"set_{i}"] = forms.ChoiceField(
                label=f"Row {i}: set", choices=[("traits", "profile trait"), ("variables", "journey variable")],
                required=False)
            self.fields[f"name_{i}"] = forms.CharField(required=False, label=f"Row {i}: name",
                                                       widget=forms.TextInput(attrs={"size": 18}))
            self.fields[f"as_{i}"] = forms.ChoiceField(label=f"Row {i}: value is", choices=VALUE_KINDS, required=False)
            self.fields[f"value_{i}"] = forms.CharField(
                required=False, label=f"Row {i}: value",
                widget=RuleTextInput(attrs={"size": 40}, version_id=self.version.pk, when=f"id_as_{i}"),
                help_text="for a rule: e.g. coalesce(profile.orders, 0) + 1" if i == 1 else "")
        for i, (where, name, value) in enumerate(existing, 1):
            kind, text = self._describe(value)
            self.initial.update({f"set_{i}": where, f"name_{i}": name, f"as_{i}": kind, f"value_{i}": text})

    @staticmethod
    def _describe(value):
        if isinstance(value, dict) and "rule" in value:
            return "rule", value["rule"]
        if isinstance(value, bool):
            return "bool", "yes" if value else "no"
        if isinstance(value, int | float):
            return "number", str(value)
        if isinstance(value, str):
            return "text", value
        return "json", json.dumps(value)

    def _value(self, i: int, kind: str, text: str):
        if kind == "rule":
            return {"rule": text}
        if kind == "bool":
            if text.strip().lower() not in ("yes", "no", "true", "false", "1", "0"):
                raise ValidationError({f"value_{i}": "write yes or no"})
            return text.strip().lower() in ("yes", "true", "1")
        if kind == "number":
            try:
                number = int(text) if re.fullmatch(r"-?\d+", text.strip()) else float(text)
            except ValueError:
                raise ValidationError({f"value_{i}": f"{text!r} is not a number"}) from None
            if not math.isfinite(number):  # nan / inf: JSON (and the database) cannot hold them
                raise ValidationError({f"value_{i}": f"{text!r} is not a finite number; write e.g. 10 or 2.5"})
            return number
        if kind == "json":
            try:
                return json_strict(text, finite=True)
            except ValueError as exc:
                raise ValidationError({f"value_{i}": f"not valid JSON: {getattr(exc, 'msg', exc)}"}) from None
        return text

    def to_config(self, data):
        config: dict = {"traits": {}, "variables": {}}
        for i in range(1, self.rows + 1):
            name, text = data.get(f"name_{i}", "").strip(), data.get(f"value_{i}", "")
            if not name and not text:
                continue
            if not name:
                raise ValidationError({f"name_{i}": "give the trait or variable a name"})
            config[data.get(f"set_{i}") or "traits"][name] = self._value(i, data.get(f"as_{i}") or "text", text)
        return config

    def field_for(self, key, message):
        if key in self.fields:
            return key
        where = message.split(":", 1)[0]  # the row's name, or a path inside its value (address.city)

        def names_row(name: str) -> bool:
            return bool(name) and (where == name or where.startswith(name) and where[len(name)] in ".[")

        row = next((i for i in range(1, self.rows + 1) if names_row(self.cleaned_data.get(f"name_{i}") or "")
                    and (self.cleaned_data.get(f"set_{i}") or "traits") == key), None)
        return f"value_{row}" if row else "name_1"


class GoalForm(StepConfigForm):
    kind = "goal"
    config_labels = {"name": "goal"}  # the config's "name" is the goal, not the step's display name

    goal = forms.CharField(required=False, help_text="what was achieved, e.g. purchased")

    def initial_from(self, config):  # the config's "name" is the goal, not the step's display name
        return {"goal": config.get("name", "")}

    def to_config(self, data):
        return {"name": data.get("goal") or "goal"}


class ExitForm(StepConfigForm):
    kind = "exit"
    config_fields = ("reason",)
    reason = forms.CharField(required=False, help_text="shown in the run log, e.g. unsubscribed")


class SetStageForm(StepConfigForm):
    kind = "set_stage"
    config_fields = ("stage",)
    stage = forms.ChoiceField(help_text="the lifecycle stage the customer moves to")

    def setup(self):
        from journeys.models import LifecycleStage

        self.fields["stage"].choices = [("", "-")] + list(LifecycleStage.objects.values_list("key", "name"))


class StartWorkflowForm(StepConfigForm):
    kind = "start_workflow"
    config_fields = ("workflow", "exit_current", "exit_workflows")
    workflow = forms.ChoiceField(help_text="the workflow whose live version the customer enters")
    exit_current = forms.BooleanField(required=False, label="End this run (a move)")
    exit_workflows = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple,
                                               help_text="open runs of these workflows end too")

    def setup(self):
        names = [(n, n) for n in Workflow.objects.order_by("name").values_list("name", flat=True)]
        self.fields["workflow"].choices = [("", "-"), *names]
        self.fields["exit_workflows"].choices = names
