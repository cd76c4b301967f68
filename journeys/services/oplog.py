"""Log lines an on-call alerts on (docs/SCALING.md, "On call"): a WARNING when something goes
wrong in bulk (events refused into the quarantine, a provider failing), said in aggregate and
without personal data.

`ops_warning` writes at most one line per key (a source, a channel) per OPS_LOG_INTERVAL_S in
each process: the first occurrence at once, the ones after it added up and written with the
next occurrence once the interval has passed. A storm of a thousand bad batches a minute is one
line a minute per source and process, not a thousand. `text_scrubbed` takes addresses and
numbers out of a provider's error text before it is logged (a vendor's answer may quote the
recipient)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from django.conf import settings

_lock = threading.Lock()
_logged: dict[str, tuple[float, Counter]] = {}  # key -> (when its last line was written, counts since)

_EMAIL = re.compile(r"[^\s'\"<>(),;:]+@[^\s'\"<>(),;:]+")
_NUMBER = re.compile(r"\+?\d[\d\s().-]{5,}\d")  # phone numbers, ids, card-like runs: 7 digits or more
_TOKEN = re.compile(r"\b[A-Za-z0-9_\-]{24,}\b")  # keys, tokens, long ids a vendor echoes back
_SPACE = re.compile(r"\s+")


def text_scrubbed(text: str, *, limit: int = 200) -> str:
    """`text` on one line, at most `limit` characters, with e-mail addresses, long numbers (phone
    numbers) and long tokens replaced: what a log line or a page may show of a provider's error."""
    text = _EMAIL.sub("<email>", str(text or ""))
    text = _NUMBER.sub(lambda m: "<number>" if sum(c.isdigit() for c in m.group()) >= 7 else m.group(), text)
    text = _TOKEN.sub(lambda m: "<token>" if any(c.isdigit() for c in m.group()) else m.group(), text)
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


_CODE = re.compile(r"\b(HTTP|SMTP) (\d{3})\b")


def error_code(text: str) -> str:
    """A short code for a provider's error, to count them by: "HTTP 500", "SMTP 421", "timeout",
    "connection" or "other"."""
    if found := _CODE.search(text or ""):
        return f"{found.group(1)} {found.group(2)}"
    lower = (text or "").lower()
    if "timed out" in lower or "timeout" in lower:
        return "timeout"
    if "connect" in lower or "refused" in lower or "reset" in lower or "resolve" in lower:
        return "connection"
    return "other"


def counts_text(counts: Mapping[str, int]) -> str:
    """"field_too_long 480, invalid 20": the largest first."""
    return ", ".join(f"{key} {n}" for key, n in Counter(counts).most_common())


def ops_warning(logger: logging.Logger, *, key: str, counts: Mapping[str, int],
                render: Callable[[Counter, float | None], str], interval: float | None = None) -> bool:
    """Add `counts` to what `key` has seen and log one WARNING, `render(counts, seconds)`, unless
    this process wrote one for `key` less than `interval` seconds ago (OPS_LOG_INTERVAL_S, 60 by
    default): then they wait for the next line. `seconds` is how long the counts were gathered
    (None for the first line of the key: only this occurrence). Returns whether a line was written."""
    interval = float(getattr(settings, "OPS_LOG_INTERVAL_S", 60)) if interval is None else interval
    now = time.monotonic()
    with _lock:
        last, held = _logged.get(key, (None, Counter()))
        held.update(counts)
        if last is not None and now - last < interval:
            _logged[key] = (last, held)
            return False
        _logged[key] = (now, Counter())
    logger.warning(render(held, None if last is None else now - last))
    return True


def ops_log_reset() -> None:
    """Forget what was logged (tests)."""
    with _lock:
        _logged.clear()
