"""Step forms: the base every kind's form extends, the form of a kind, the palette of kinds, and a
step's config read back as labelled lines.

A kind owns its form (`StepKind.form`, registered with its executor from its own app): the form
turns labelled fields into the kind's config and runs the kind's own `clean()` (the validator
the engine trusts), putting each error next to the field it names. A kind without a form gets
one generated from its `fields` help texts.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from django import forms
from django.core.exceptions import ValidationError

from journeys.engine.durations import duration_text
from journeys.engine.registry import STEP_KINDS, get_kind
from journeys.models import Step, WorkflowVersion
from journeys.services.event_parsing import json_strict


class StepConfigForm(forms.Form):
    """Key, name and where the step hangs, then the kind's own fields (`config_fields`)."""

    kind: ClassVar[str] = ""
    config_fields: ClassVar[tuple[str, ...]] = ()
    # Config keys whose values are durations stored as seconds (shown as 1h, 2d...); signed ones
    # may be negative (before a date: -3d).
    durations: ClassVar[tuple[str, ...]] = ()
    signed_durations: ClassVar[tuple[str, ...]] = ()
    # Config keys shown under another field's label (the goal's config "name" is its "goal" field).
    config_labels: ClassVar[dict[str, str]] = {}
    # The form shows a template preview (a `template` field, rendered for a chosen customer).
    template_preview: ClassVar[bool] = False
    preview_fields: ClassVar[tuple[str, ...]] = ()  # fields that only steer the preview

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
        return [self[name] for name in self.fields if name not in ("key", "name", "after", *self.preview_fields)]

    def preview_form_fields(self) -> list:
        return [self[name] for name in self.preview_fields]


def _literal(text: str) -> Any:
    value = text.strip()
    if value[:1] in ("{", "[") or value in ("true", "false", "null") or re.fullmatch(r"-?\d+(\.\d+)?", value):
        try:
            return json_strict(value, finite=True)
        except ValueError:
            return text
    return text


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


class TemplatePreviewMixin(forms.Form):
    """For a kind that sends a template: who and which locale the side panel or step page previews
    it for (the preview never changes the config)."""

    template_preview = True
    preview_customer = forms.CharField(required=False, label="Preview for",
                                       help_text="user id or email of a customer (empty: a sample customer)")
    preview_locale = forms.CharField(required=False, label="Preview locale",
                                     help_text="e.g. de or pt-BR (empty: the customer's locale)",
                                     widget=forms.TextInput(attrs={"size": 8}))
    preview_fields = ("preview_customer", "preview_locale")


def step_form_class(kind_name: str) -> type[StepConfigForm]:
    """The form the kind registered (raises ValidationError naming the kinds for an unknown one)."""
    kind = get_kind(kind_name)
    return kind.form or generic_form(kind_name)


def kind_palette() -> list[dict]:
    """Every registered kind with its label, help, outcomes, palette section and colour, sorted by
    section then kind: the canvas's palette and the step page's kind picker."""
    kinds = sorted(STEP_KINDS.items(), key=lambda kv: (kv[1].palette.order, kv[1].label))
    first = {}
    for _, kind in kinds:
        first.setdefault(kind.palette.group, kind.palette.order)
    kinds.sort(key=lambda kv: (first[kv[1].palette.group], kv[1].palette.group, kv[1].palette.order, kv[1].label))
    return [{"kind": name, "label": kind.label, "help": kind.help, "outcomes": ", ".join(_outcomes(kind)),
             "group": kind.palette.group, "colour": kind.palette.colour} for name, kind in kinds]


def _outcomes(kind) -> list[str]:
    try:
        return kind.outcomes({})
    except (ValidationError, KeyError, TypeError, ValueError):  # outcomes read from a config it has not got
        return []


# --------------------------------------------------------------------------- reading a config


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
    form = step_form_class(kind_name)
    fields = form.base_fields
    durations, signed = {*form.durations, *form.signed_durations}, set(form.signed_durations)
    lines = []
    for key, value in (config or {}).items():
        if value in (None, "", [], {}):
            continue
        name = form.config_labels.get(key, key)
        field = fields.get(name)
        label = str(field.label) if field is not None and field.label else name.replace("_", " ").capitalize()
        lines.append((label, _summary_value(value, duration=key in durations, signed=key in signed)))
    return lines
