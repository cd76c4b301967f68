"""Pages that edit shared configuration carry what they showed, so that a save from a page opened
before someone else's save is refused instead of writing the older copy over their change.

One mechanism for every such page (a step's page and the canvas's step form, a workflow's page,
a message template with its locale variants, a channel): the page is rendered with `edit_token`
of the stored content; its save is checked, with the row locked, by `edit_refuse_stale`, which
raises `DraftChanged` naming who changed it and when. Nothing is saved then, and the form comes
back with what was typed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any

from django.db.models import Model, QuerySet
from django.utils import timezone

from journeys.errors import DraftChanged

CHANGED_SINCE = ("{what} was changed by {who} at {when} since you opened this page: nothing was saved, so that "
                 "their change is not undone. Reload the page to see it, then make your change again (what you "
                 "typed is still in this form)")
DELETED_SINCE = "{what} was deleted since you opened this page: nothing was saved"


def edit_token(content: Any) -> str:
    """A digest of what a page shows (JSON-able content, keys in any order)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def fields_token(obj: Model, fields: Iterable[str]) -> str:
    """`edit_token` of some fields of a row (or of one of its history rows, which has the same
    columns); a foreign key is read as its id."""
    return edit_token({name: getattr(obj, obj._meta.get_field(name).attname) for name in fields})


def last_change(history: QuerySet | list[QuerySet], token_of: Callable[[Any], str] | None = None,
                now: str = "") -> tuple[str, str]:
    """Who made the content what it is now, and when, from its history rows (simple-history; a
    list: the rows of a row and of its inline rows): the latest row, or with `token_of`, the
    oldest of the latest rows that already show the content as it is now (a later save that
    changed something else, a pause, is not named)."""
    rows = sorted((row for each in (history if isinstance(history, list) else [history])
                   for row in each.select_related("history_user").order_by("-history_date", "-history_id")[:50]),
                  key=lambda row: row.history_date, reverse=True)
    found = rows[0] if rows else None
    if token_of is not None:
        for row in rows:
            if token_of(row) != now:
                break
            found = row
    if found is None:
        return "someone else", "an unknown time"
    who = str(found.history_user) if found.history_user_id else "someone else"
    return who, timezone.localtime(found.history_date).strftime("%Y-%m-%d %H:%M:%S %Z")


def edit_refuse_stale(*, loaded: str | None, now: str, what: str, history: QuerySet | list[QuerySet],
                      token_of: Callable[[Any], str] | None = None) -> None:
    """Refuse (`DraftChanged`) a save from a page that showed `loaded` when the content is `now`
    (both `edit_token`s; call it with the row locked). `loaded=None`: nothing to compare (a save
    not made from a page, by the system or a script that reads the row first)."""
    if loaded is None or loaded == now:
        return
    who, when = last_change(history, token_of, now)
    raise DraftChanged(CHANGED_SINCE.format(what=what, who=who, when=when), code="changed_meanwhile")
