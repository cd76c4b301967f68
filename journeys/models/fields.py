"""A JSON field for what clients send (traits, properties, context), safe to read back.

Why: JSON nested ~900 levels was accepted by the API before ingestion capped nesting at 64;
reading such a row back raised RecursionError, so every page that showed it (the customer's
360, the event, every workflow version page) answered 500 (issue #15). Rows stored before the
cap keep their text in the database; when read, anything nested deeper than MAX_DEPTH is
replaced by a short marker string, so every reader (admin, console, rules, templates, dry runs)
sees bounded data. Normal rows cost one `str.count` more than Django's JSONField.
"""

from __future__ import annotations

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
