"""Rules -> PostgreSQL: a segment rule as an expression over one customer row.

The Python compiler (codegen) is the reference: a rule selects exactly the rows it
would select in Python. What Python does is modelled per row as a *set of possible
outcomes* (a small bitmask): F (false), T (true), E (raises, so the rule is false).
A part SQL can decide exactly is one of F, T, E; a part it cannot decide for some row
(a string that only Python's ISO parser may accept, non-ASCII text under lower(),
an integer beyond 2**53 against a float...) is a set with several members, and that
row is evaluated again in Python. `and`, `or` and `not` combine the sets with
Python's short-circuit rules (an error on the left of `and` stops it; `not` keeps
an error an error), so `not (profile.age > 3)` is false, not true, when age is text.

Values are modelled the same way: each operand is a list of alternatives, one per
runtime type it may have on a row (a JSON trait may be null, a boolean, an integer,
a float, text, a list or an object), each with the SQL condition that it applies,
the SQL expression of its value, or "raises" / "unknown". Comparisons are generated
per pair of alternatives with Python's rules for those two types: numbers compare by
value (booleans are 0 and 1; an integer against a float exactly), text by code
point (COLLATE "C"), a type mismatch is false for ==/!= and an error for ordering.

Every value reaches the SQL as a bound parameter; every expression that could fail
in PostgreSQL (a cast, a date) is evaluated only inside the CASE branch that proved
it valid. Rules reading event.*, context.*, journey.*, events_in_last() of a name or
window read from the data, or functions without an exact SQL equivalent raise
NotTranslatable: the caller evaluates them in Python. This module does not know the
customer table: a `ProfileSource` maps `profile.<key>` to SQL and counts a row's events
(journeys.services.segments has the one for customers).
"""

from __future__ import annotations

from .outcomes import ANY, MAYBE, E, F, State, T
from .translator import Translator, translate
from .values import (
    BOOL,
    DATE,
    DICT,
    ERR,
    FLOAT,
    INT,
    LIST,
    NULL,
    PROFILE,
    STR,
    TS,
    UNK,
    Alt,
    Builder,
    NotTranslatable,
    ProfileSource,
    Translation,
    Val,
)

__all__ = [
    "ANY",
    "BOOL",
    "DATE",
    "DICT",
    "ERR",
    "FLOAT",
    "INT",
    "LIST",
    "MAYBE",
    "NULL",
    "PROFILE",
    "STR",
    "TS",
    "UNK",
    "Alt",
    "Builder",
    "E",
    "F",
    "NotTranslatable",
    "ProfileSource",
    "State",
    "T",
    "Translation",
    "Translator",
    "Val",
    "translate",
]
