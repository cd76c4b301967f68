"""Model fields with their own form fields (so every ModelForm, the admin's included, gets them)."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError
from django.db import models

from journeys.engine.business_hours import BusinessHoursError, business_hours_clean, business_hours_parse, business_hours_text


def validate_business_hours(value) -> None:
    try:
        business_hours_clean(value)
    except BusinessHoursError as exc:
        raise ValidationError(str(exc)) from None


class BusinessHoursFormField(forms.CharField):
    """Typed as text ('Mon-Fri 09:00-17:00'), stored as {"days": [...], "start", "end"}."""

    def __init__(self, **kwargs):
        kwargs.pop("encoder", None)
        kwargs.pop("decoder", None)
        kwargs.setdefault("required", False)
        kwargs.setdefault("help_text", "days and local hours in which new entries from date, inactivity and schedule "
                                       "triggers start, in the customer's timezone, e.g. 'Mon-Fri 09:00-17:00'; "
                                       "entries outside it wait for the next window. Empty: any time.")
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, dict):
            return business_hours_text(value)
        return value

    def to_python(self, value):
        if isinstance(value, dict):
            return value
        try:
            return business_hours_parse(super().to_python(value))
        except BusinessHoursError as exc:
            raise ValidationError(str(exc), code="invalid") from None

    def has_changed(self, initial, data):
        try:
            return self.to_python(data) != (initial or {})
        except ValidationError:
            return True


class BusinessHoursField(models.JSONField):
    """A version's business hours (journeys.engine.business_hours), validated on every full_clean."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("default", dict)
        kwargs.setdefault("blank", True)
        kwargs.setdefault("validators", [validate_business_hours])
        super().__init__(*args, **kwargs)

    def formfield(self, **kwargs):
        return models.Field.formfield(self, **{"form_class": BusinessHoursFormField, **kwargs})


# --------------------------------------------------------------------------- client JSON


import json
import re

from django.db import models

MAX_DEPTH = 64
TOO_DEEP = f"(nested deeper than {MAX_DEPTH} levels: not shown)"
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def json_text_limit_depth(text: str, *, max_depth: int = MAX_DEPTH) -> str:
    """`text` (JSON) with every array/object nested deeper than `max_depth` replaced by the
    TOO_DEEP string; the text itself when nothing is that deep. Iterative: any depth is fine."""
    if text.count("{") + text.count("[") <= max_depth:
        return text
    out: list[str] = []
    depth, cut_from, copied_to = 0, -1, 0
    for token in _TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth == max_depth + 1:
                cut_from = token.start()
        elif char in "]}":
            if depth == max_depth + 1 and cut_from >= 0:
                out.append(text[copied_to:cut_from])
                out.append(json.dumps(TOO_DEEP))
                copied_to, cut_from = token.end(), -1
            depth -= 1
    if copied_to == 0:
        return text
    out.append(text[copied_to:])
    return "".join(out)


class ClientJSONField(models.JSONField):
    """models.JSONField whose values are read back with nesting bounded to MAX_DEPTH."""

    def from_db_value(self, value, expression, connection):
        if isinstance(value, str):
            value = json_text_limit_depth(value)
        return super().from_db_value(value, expression, connection)

    def deconstruct(self):
        """Migrations see a plain JSONField: the column and its SQL are the same, only reading
        differs, so no migration (and no table rebuild on SQLite) is needed."""
        name, _path, args, kwargs = super().deconstruct()
        return name, "django.db.models.JSONField", args, kwargs
