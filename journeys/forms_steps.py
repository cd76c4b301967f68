"""Step forms, one per step kind: labelled fields and help text instead of a raw JSON config.

Each form turns its fields into the kind's config and runs the kind's own `clean()` (the
registry's validator, the one the engine trusts); its errors are shown next to the field they
name. Kinds registered by other apps get a form here too, reading their rows (channels,
templates, teams, experiments) through `apps.get_model` so that journeys imports none of them;
a kind without a form of its own gets one generated from its `fields` help texts.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar

from django import forms
from django.apps import apps
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from journeys.engine.registry import STEP_KINDS, get_kind
from journeys.models import Step, Workflow, WorkflowVersion

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
DURATION_HELP = "a duration: 30m, 1h, 2d, 1h30m or a number of seconds"


def duration_text(seconds: Any) -> str:
    """Seconds as people write them (5400 -> 1h30m); anything else unchanged."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        return "" if seconds in (None, 0) else str(seconds)
    parts = []
    for unit, size in _UNITS:
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts)


def _model(label: str):
    app_label, name = label.split(".")
    return apps.get_model(app_label, name) if apps.is_installed(app_label) else None


def _names(label: str, field: str = "name", *, describe: str = "") -> list[tuple[str, str]]:
    model = _model(label)
    if model is None:
        return []
    rows = model.objects.order_by(field).values_list(field, *([describe] if describe else []))
    return [(row[0], f"{row[0]} ({row[1]})" if describe and row[1] else row[0]) for row in rows]


# --------------------------------------------------------------------------- widgets


class _RuleChecked:
    """Rule inputs checked as you type (journeys/static/console/editor.js asks the rule endpoint
    and marks the error position under the field); without JS the form checks on save."""

    def __init__(self, attrs=None, *, version_id: int | None = None, event: str = "", when: str = ""):
        super().__init__(attrs)
        self.version_id, self.event, self.when = version_id, event, when

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {**(attrs or {}), "data-rule-check": reverse("console:rule_check"), "data-version": self.version_id or "",
                 "data-event": self.event, "autocomplete": "off", **({"data-rule-when": self.when} if self.when else {})}
        html = super().render(name, value, attrs, renderer)
        return format_html('{}<div class="rule-feedback" id="{}-feedback" aria-live="polite"></div>', html,
                           attrs.get("id") or name)


class RuleInput(_RuleChecked, forms.Textarea):
    def __init__(self, attrs=None, **kwargs):
        super().__init__({"rows": 2, "cols": 80, "spellcheck": "false", "class": "rule-input vLargeTextField",
                          **(attrs or {})}, **kwargs)


class RuleTextInput(_RuleChecked, forms.TextInput):
    """A one-line value that is a rule only when its companion select (`when`) says so."""


class NamesInput(forms.TextInput):
    """A text input offering known names (an HTML datalist: no JS, no CDN)."""

    def __init__(self, names: list[str], attrs=None):
        super().__init__(attrs)
        self.names = names

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {**(attrs or {}), "list": f"names-{name}"}
        html = super().render(name, value, attrs, renderer)
        options = format_html_join("", '<option value="{}">', ((n,) for n in self.names))
        return format_html('{}<datalist id="names-{}">{}</datalist>', html, name, options)


def _event_names() -> list[str]:
    from journeys.services.catalog import catalog_names

    return catalog_names()


def _trait_names(sample: int = 300) -> list[str]:
    from journeys.models import Customer

    names: set[str] = set()
    for traits in Customer.objects.order_by("-id").values_list("traits", flat=True)[:sample]:
        names.update((traits or {}).keys())
    return sorted(names)


MAX_DURATION_DAYS = 3650  # a wait of more than ten years is a typo (and past year 9999 a date cannot be held)


def check_duration_length(text: str) -> str:
    """Refuse a duration too long to wait for; the kind's validator reports any other mistake."""
    from journeys.engine.durations import DurationTooLong, parse_duration

    try:
        seconds = parse_duration(text.strip().lstrip("-")).total_seconds()
    except DurationTooLong:
        seconds = math.inf
    except ValueError:
        return text
    if seconds > MAX_DURATION_DAYS * 86400:
        raise ValidationError(f"{text.strip()!r} is too long: at most {MAX_DURATION_DAYS}d (ten years)")
    return text


class DurationField(forms.CharField):
    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", DURATION_HELP)
        kwargs.setdefault("widget", forms.TextInput(attrs={"size": 10, "placeholder": "e.g. 1h"}))
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        return check_duration_length(value) if value else value


# --------------------------------------------------------------------------- the base form


class StepConfigForm(forms.Form):
    """Key, name and where the step hangs, then the kind's own fields (`config_fields`)."""

    kind: ClassVar[str] = ""
    config_fields: ClassVar[tuple[str, ...]] = ()
    # Config keys whose values are durations stored as seconds (shown as 1h, 2d...).
    durations: ClassVar[tuple[str, ...]] = ()

    key = forms.SlugField(max_length=64, help_text="a short id, unique in this version (edges and counts use it)")
    name = forms.CharField(required=False, max_length=200, help_text="shown on the graph (optional)")
    after = forms.ChoiceField(required=False, label="Comes after",
                              help_text="connect an outcome of an existing step to this one (optional)")

    def __init__(self, *args, version: WorkflowVersion, step: Step | None = None, **kwargs):
        self.version, self.step = version, step
        if step is not None and "initial" not in kwargs:
            kwargs["initial"] = {"key": step.key, "name": step.name, **self.initial_from(dict(step.config or {}))}
        super().__init__(*args, **kwargs)
        self.config: dict = {}
        choices = [("", "-")]
        for other in version.steps.exclude(pk=step.pk if step else None).order_by("y", "x", "id"):
            try:
                outcomes = get_kind(other.kind).outcomes(other.config or {})
            except ValidationError:
                outcomes = ["next"]
            choices += [(f"{other.key}:{o}", f"{other.key} → {o}") for o in outcomes]
        self.fields["after"].choices = choices
        self.setup()

    # ---- per kind
    def setup(self) -> None:
        """Fill choices that come from the database."""

    def initial_from(self, config: dict) -> dict:
        return {k: duration_text(v) if k in self.durations else v for k, v in config.items()}

    def to_config(self, data: dict) -> dict:
        return {k: data[k] for k in self.config_fields if data.get(k) not in (None, "", [], False)}

    def field_for(self, key: str, message: str) -> str | None:
        """The form field a validator error (`{key: message}`) belongs to."""
        return key if key in self.fields else None

    # ---- shared
    def clean_key(self):
        key = self.cleaned_data["key"]
        clash = Step.objects.filter(version=self.version, key=key)
        if self.step is not None:
            clash = clash.exclude(pk=self.step.pk)
        if clash.exists():
            raise ValidationError(f"this version already has a step {key!r}")
        return key

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        try:
            self.config = get_kind(self.kind).clean(self.to_config(data))
        except ValidationError as exc:
            for key, messages in (exc.message_dict if hasattr(exc, "message_dict") else {None: exc.messages}).items():
                for message in messages:
                    field = self.field_for(key, message) if key else None
                    self.add_error(field, message if field else f"{key}: {message}" if key else message)
        except ValueError as exc:  # a validator that lets a parse error through ("offset: ...")
            key, _, message = str(exc).partition(": ")
            self.add_error(key if key in self.fields else None, message or str(exc))
        return data

    def kind_fields(self) -> list:
        return [self[name] for name in self.fields if name not in ("key", "name", "after")]


# --------------------------------------------------------------------------- journeys' own kinds


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
        self.fields["until_attribute"].widget = NamesInput(_trait_names())
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
        return check_duration_length(offset) if offset else offset

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
        self.fields["event"].widget = NamesInput(_event_names())
        self.fields["filter"].widget = RuleInput(version_id=self.version.pk)


VALUE_KINDS = [("text", "text"), ("number", "number"), ("bool", "yes / no"), ("rule", "rule (computed)"),
               ("json", "JSON")]


class UpdateProfileForm(StepConfigForm):
    kind = "update_profile"
    help = "Each row sets a profile trait or a journey variable. A 'rule' value is computed when the step runs."

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
                return json_finite(text)
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
        name = message.split(":", 1)[0]
        row = next((i for i in range(1, self.rows + 1) if self.cleaned_data.get(f"name_{i}") == name
                    and (self.cleaned_data.get(f"set_{i}") or "traits") == key), None)
        return f"value_{row}" if row else "name_1"


class GoalForm(StepConfigForm):
    kind = "goal"

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


# --------------------------------------------------------------------------- kinds of the other apps


class _MessagingFields(forms.Form):
    min_gap_other_channel = DurationField(required=False, label="Gap after other channels",
                                          help_text="optional, e.g. 4h: not within this long of the last contact "
                                                    "on another channel")
    recent_contact_action = forms.ChoiceField(required=False, choices=[("", "defer (default)"), ("defer", "defer"),
                                                                      ("suppress", "suppress")],
                                              help_text="what happens within that gap")


def _messaging_initial(config: dict) -> dict:
    out = dict(config)
    if out.get("min_gap_other_channel"):
        out["min_gap_other_channel"] = duration_text(out["min_gap_other_channel"])
    return out


class SendMessageForm(StepConfigForm):
    kind = "send_message"
    config_fields = ("channel", "template", "min_gap_other_channel", "recent_contact_action")
    channel = forms.ChoiceField(help_text="where it goes (falls back along the channel's fallback chain)")
    template = forms.ChoiceField(help_text="what is sent; preview it below")
    min_gap_other_channel = _MessagingFields.base_fields["min_gap_other_channel"]
    recent_contact_action = _MessagingFields.base_fields["recent_contact_action"]
    preview_customer = forms.CharField(required=False, label="Preview for",
                                       help_text="user id or email of a customer (empty: a sample customer)")
    preview_locale = forms.CharField(required=False, label="Preview locale",
                                     help_text="e.g. de or pt-BR (empty: the customer's locale)",
                                     widget=forms.TextInput(attrs={"size": 8}))

    def setup(self):
        self.fields["channel"].choices = [("", "-"), *_names("channels_app.Channel", describe="kind")]
        self.fields["template"].choices = [("", "-"), *_names("channels_app.MessageTemplate", describe="channel_kind")]
        self.fields["preview_locale"].widget = NamesInput(_locales(), attrs={"size": 8})

    def initial_from(self, config):
        return _messaging_initial(config)


def _locales() -> list[str]:
    model = _model("channels_app.TemplateVariant")
    return sorted(set(model.objects.values_list("locale", flat=True))) if model else []


class SendBestChannelForm(StepConfigForm):
    kind = "send_best_channel"
    config_fields = ("template", "templates", "channels", "urgency", "send_time", "min_engagements",
                     "min_gap_other_channel", "recent_contact_action")
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
        templates = _names("channels_app.MessageTemplate", describe="channel_kind")
        self.fields["template"].choices = [("", "-"), *templates]
        self.fields["channels"].choices = _names("channels_app.Channel", describe="kind")
        channel = _model("channels_app.Channel")
        kinds = channel._meta.get_field("kind").choices if channel else []
        self.kinds = [k for k, _ in kinds]
        for value, label in kinds:
            self.fields[f"template_{value}"] = forms.ChoiceField(
                required=False, label=f"Template for {label}", choices=[("", "(the main template)"), *templates])
        for value, name in ((self.step.config or {}).get("templates") or {}).items() if self.step else ():
            self.initial[f"template_{value}"] = name

    def initial_from(self, config):
        return _messaging_initial(config)

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


class EscalateToAgentForm(StepConfigForm):
    kind = "escalate_to_agent"
    durations = ("failed_window",)
    config_fields = ("sentiment_below", "complexity_above", "value_at_least", "failed_attempts_at_least",
                     "failed_event", "failed_window", "always", "category", "team", "priority", "text_property",
                     "sentiment_property")
    sentiment_below = forms.FloatField(required=False, min_value=-1, max_value=1,
                                       help_text="escalate when the message's sentiment is at or below this "
                                                 "(-1 angry .. 1 happy), e.g. -0.3")
    complexity_above = forms.FloatField(required=False, min_value=0, max_value=1,
                                        help_text="escalate when complexity is at or above this (0 .. 1), e.g. 0.5")
    value_at_least = forms.FloatField(required=False, min_value=0,
                                      help_text="escalate when profile.ltv is at least this, e.g. 1000")
    failed_attempts_at_least = forms.IntegerField(required=False, min_value=1,
                                                  help_text="escalate after this many failed automated attempts")
    failed_event = forms.CharField(required=False, help_text="event counted as a failed attempt, e.g. Bot Fallback")
    failed_window = DurationField(required=False, help_text="how far back failed events count (default 24h)")
    always = forms.BooleanField(required=False, help_text="escalate every customer who reaches this step")
    category = forms.CharField(required=False, help_text="the case's product category (default: "
                                                         "event.properties.category, else general)")
    team = forms.ChoiceField(required=False, help_text="route to this team (default: by category)")
    priority = forms.ChoiceField(choices=[(p, p) for p in ("low", "normal", "high", "urgent")], initial="normal")
    text_property = forms.CharField(required=False, help_text="event property with the customer's words "
                                                              "(default: text, message, body)")
    sentiment_property = forms.CharField(required=False, help_text="event property with an upstream sentiment "
                                                                   "score -1..1 (default: sentiment)")

    def setup(self):
        self.fields["team"].choices = [("", "(by category)"), *_names("agents.Team", "slug", describe="name")]
        self.fields["failed_event"].widget = NamesInput(_event_names())


class ExperimentSplitForm(StepConfigForm):
    kind = "experiment_split"
    config_fields = ("experiment", "arms", "holdout")
    experiment = forms.ChoiceField(help_text="each customer is assigned an arm once and follows its name")
    arms = forms.CharField(required=False, help_text="comma-separated arm names this step offers "
                                                     "(empty: all arms of the experiment)")
    holdout = forms.ChoiceField(required=False, choices=[("", "as the experiment says"), ("yes", "yes"),
                                                         ("no", "no")],
                                help_text="add a 'holdout' outcome for holdout customers (who get no messages)")

    def setup(self):
        model = _model("experiments.Experiment")
        rows = list(model.objects.prefetch_related("arms").order_by("key")) if model else []
        self.fields["experiment"].choices = [("", "-")] + [
            (e.key, f"{e.key} (arms: {', '.join(a.name for a in e.arms.all())})") for e in rows]

    def initial_from(self, config):
        holdout = config.get("holdout")
        return {"experiment": config.get("experiment", ""), "arms": ", ".join(config.get("arms") or []),
                "holdout": "" if holdout is None else ("yes" if holdout else "no")}

    def to_config(self, data):
        config = {"experiment": data.get("experiment", "")}
        arms = [a.strip() for a in (data.get("arms") or "").split(",") if a.strip()]
        if arms:
            config["arms"] = arms
        if data.get("holdout"):
            config["holdout"] = data["holdout"] == "yes"
        return config


# --------------------------------------------------------------------------- any other kind


def _literal(text: str) -> Any:
    value = text.strip()
    if value[:1] in ("{", "[") or value in ("true", "false", "null") or re.fullmatch(r"-?\d+(\.\d+)?", value):
        try:
            return json_finite(value)
        except ValueError:
            return text
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON can store; write a finite number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is too large a number")
    return number


def json_finite(text: str) -> Any:
    """JSON as the database stores it: NaN, Infinity and 1e999 (which Python's json reads) are refused."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def generic_form(kind_name: str) -> type[StepConfigForm]:
    """A form from the kind's `fields` help texts (values written like JSON where they are objects)."""
    kind = STEP_KINDS[kind_name]
    attrs: dict[str, Any] = {"kind": kind_name, "config_fields": tuple(kind.fields)}
    for key, help_text in kind.fields.items():
        structured = help_text.lstrip().startswith(("{", "[", "list", "optional: {", 'optional per'))
        attrs[key] = forms.CharField(required=False, help_text=help_text, label=key.replace("_", " ").capitalize(),
                                     widget=forms.Textarea(attrs={"rows": 3, "cols": 60}) if structured
                                     else forms.TextInput(attrs={"size": 40}))

    def to_config(self, data):
        return {k: _literal(data[k]) for k in self.config_fields if data.get(k)}

    def initial_from(self, config):
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}

    attrs.update(to_config=to_config, initial_from=initial_from)
    return type(f"{kind_name.title().replace('_', '')}Form", (StepConfigForm,), attrs)


KIND_FORMS: dict[str, type[StepConfigForm]] = {
    form.kind: form for form in (
        ConditionForm, SplitForm, DelayForm, WaitForEventForm, UpdateProfileForm, GoalForm, ExitForm, SetStageForm,
        StartWorkflowForm, SendMessageForm, SendBestChannelForm, EscalateToAgentForm, ExperimentSplitForm)
}


def step_form_class(kind_name: str) -> type[StepConfigForm]:
    """The form of a registered kind (raises ValidationError naming the kinds for an unknown one)."""
    get_kind(kind_name)
    return KIND_FORMS.get(kind_name) or generic_form(kind_name)


def kind_choices() -> list[dict]:
    """The kind picker: every registered kind with its label and help."""
    return [{"kind": k, "label": v.label, "help": v.help, "outcomes": ", ".join(v.outcomes({}))}
            for k, v in sorted(STEP_KINDS.items(), key=lambda kv: kv[1].label)]


# --------------------------------------------------------------------------- reading a config


_SHARED_DURATIONS = ("min_gap_other_channel",)


def _summary_value(value: Any, *, duration: bool = False, signed: bool = False) -> str:
    if duration and isinstance(value, int) and not isinstance(value, bool):
        return ("-" if signed and value < 0 else "") + (duration_text(abs(value)) or "0s")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if set(value) == {"rule"}:
            return f"computed: {value['rule']}"
        return ", ".join(f"{k} = {_summary_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        if all(isinstance(item, dict) and "name" in item for item in value):  # split branches
            return "; ".join(f"{item['name']}: {item.get('rule', '')}".rstrip(": ") for item in value)
        return ", ".join(_summary_value(item) for item in value)
    return json.dumps(value)


def config_summary(kind_name: str, config: dict) -> list[tuple[str, str]]:
    """A step's config as (label, value) lines people can read, for pages that show a step
    without editing it (the version page); labels come from the kind's form, durations read 1h30m."""
    if kind_name not in STEP_KINDS:
        return [("unknown kind", json.dumps(config, sort_keys=True))]
    form = KIND_FORMS.get(kind_name)
    fields = form.base_fields if form else {}
    durations = {*getattr(form, "durations", ()), *_SHARED_DURATIONS}
    signed = {"offset"} if kind_name == "delay" else set()  # before (-3d) or after (2h) a profile date
    renamed = {"name": "goal"} if kind_name == "goal" else {}  # the goal's config "name" is its "goal" field
    lines = []
    for key, value in (config or {}).items():
        if value in (None, "", [], {}):
            continue
        name = renamed.get(key, key)
        field = fields.get(name)
        label = str(field.label) if field is not None and field.label else name.replace("_", " ").capitalize()
        lines.append((label, _summary_value(value, duration=key in durations | signed, signed=key in signed)))
    return lines
