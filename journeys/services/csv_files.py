"""The delimiter of an uploaded CSV file: imports read it from the header line, and erasures
rewrite a kept upload's rows with it (a leaf module: both import it)."""

from __future__ import annotations

CSV_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}


def csv_delimiter(text: str, begin: int | None = None) -> str:
    """Comma, semicolon or tab: whichever the header line (from `begin`, else after a byte-order
    mark) holds most of outside quotes (a comma when it holds none: a one-column file)."""
    if begin is None:
        begin = 1 if text.startswith("\ufeff") else 0
    end = text.find("\n", begin)
    counts = dict.fromkeys(CSV_DELIMITERS, 0)
    quoted = False
    for char in text[begin:end if end >= 0 else len(text)]:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(counts, key=counts.__getitem__)  # the first of equals: the comma
    return best if counts[best] else ","
