"""Fields and widgets the step forms of every app share: durations written as people write them
(1h30m), rules checked as they are typed, inputs offering known names."""

from __future__ import annotations

import math

from django import forms
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html, format_html_join

DURATION_HELP = "a duration: 30m, 1h, 2d, 1h30m or a number of seconds"


# --------------------------------------------------------------------------- widgets


class _RuleChecked:
    """Rule inputs checked as you type (journeys/static/console/editor.js asks the rule endpoint
    and marks the error position under the field); without JS the form checks on save.
    `profile_only`: a rule read from the profile alone (a segment, a stage), checked as such."""

    def __init__(self, attrs=None, *, version_id: int | None = None, event: str = "", when: str = "",
                 profile_only: bool = False):
        super().__init__(attrs)
        self.version_id, self.event, self.when, self.profile_only = version_id, event, when, profile_only

    def render(self, name, value, attrs=None, renderer=None):
        attrs = {**(attrs or {}), "data-rule-check": reverse("console:rule_check"), "data-version": self.version_id or "",
                 "data-event": self.event, "autocomplete": "off", **({"data-rule-when": self.when} if self.when else {}),
                 **({"data-rule-profile": "1"} if self.profile_only else {})}
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


def event_names() -> list[str]:
    from journeys.services.catalog import catalog_names

    return catalog_names()


def trait_names(sample: int = 300) -> list[str]:
    from journeys.models import Customer

    names: set[str] = set()
    for traits in Customer.objects.order_by("-id").values_list("traits", flat=True)[:sample]:
        names.update((traits or {}).keys())
    return sorted(names)


MAX_DURATION_DAYS = 3650  # a wait of more than ten years is a typo (and past year 9999 a date cannot be held)


DURATION_EXAMPLE = "Enter a duration like 30m, 2h or 7d"


def duration_clean(text: str, *, signed: bool = False) -> str:
    """A duration as typed, read by the engine's own parser (so what a form accepts is what a run
    can wait for): anything it cannot read, a negative one (unless `signed`: before/after a date,
    -3d) and a wait too long to hold are refused with what to write instead."""
    from journeys.engine.durations import DurationTooLong, parse_duration

    shown = text.strip()
    if shown.startswith("-") and not signed:
        raise ValidationError(f"{shown!r} is negative: a duration cannot be. {DURATION_EXAMPLE}")
    try:
        seconds = parse_duration(shown.lstrip("-") if signed else shown).total_seconds()
    except DurationTooLong:
        seconds = math.inf
    except ValueError:
        raise ValidationError(f"{shown!r} is not a duration. {DURATION_EXAMPLE}"
                              + (" (-3d for before)" if signed else "")) from None
    if seconds > MAX_DURATION_DAYS * 86400:
        raise ValidationError(f"{shown!r} is too long: at most {MAX_DURATION_DAYS}d (ten years)")
    return text


class DurationField(forms.CharField):
    """A duration written as people write it (1h30m), checked with the engine's parser."""

    def __init__(self, **kwargs):
        kwargs.setdefault("help_text", DURATION_HELP)
        kwargs.setdefault("widget", forms.TextInput(attrs={"size": 10, "placeholder": "e.g. 1h"}))
        super().__init__(**kwargs)

    def clean(self, value):
        value = super().clean(value)
        return duration_clean(value) if value else value
