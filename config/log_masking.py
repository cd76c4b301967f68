"""Write keys kept out of the logs.

A write key is a secret the admin shows once and keeps only hashed, yet it travels in request
lines: `?writeKey=` (RudderStack's beacon and source config), `/v1/projects/<key>/settings`
(Segment's analytics.js), and as the HTTP Basic user of every server-side SDK. gunicorn's access
log (config.gunicorn) and Django's own request log lines ("Unauthorized: /v1/projects/...")
show such a key as its first 10 characters, the prefix the admin lists to tell sources apart.
"""

from __future__ import annotations

import logging
import re

KEY_SHOWN = 10  # the characters of a key kept, as Source.key_prefix
# writeKey=<key> in a query string (also at its start, and percent-encoded), /projects/<key>/settings
_KEY_IN_TEXT = re.compile(r"(?i)(?P<name>(?:^|[?&;]|%3F|%26)writeKey(?:=|%3D))(?P<key>[^&;\s\"]*)"
                          r"|(?P<path>/projects/)(?P<path_key>[^/?\s\"]+)(?=/settings)")


def key_masked(key: str) -> str:
    """A write key as the logs show it."""
    return f"{key[:KEY_SHOWN]}***" if key else key


def keys_masked(text: str) -> str:
    """`text` (a request line, path, query string or log message) with every write key in it masked."""
    return _KEY_IN_TEXT.sub(lambda m: m["name"] + key_masked(m["key"]) if m["name"] is not None
                            else m["path"] + key_masked(m["path_key"]), text)


class WriteKeyFilter(logging.Filter):
    """A logging filter (settings.LOGGING's handlers) that masks write keys in each message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = keys_masked(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
