"""Write keys and people's identifiers kept out of the logs.

A write key is a secret the admin shows once and keeps only hashed, yet it travels in request
lines: `?writeKey=` (RudderStack's beacon and source config), `/v1/projects/<key>/settings`
(Segment's analytics.js), and as the HTTP Basic user of every server-side SDK. gunicorn's access
log (config.gunicorn) and Django's own request log lines ("Unauthorized: /v1/projects/...")
show such a key as its first 10 characters, the prefix the admin lists to tell sources apart.

A customer lookup names the person in its query string (`GET /api/v1/customers?user_id=c7`,
`?email=`, `?phone=`, `?anonymous_id=`, the admin's search box `?q=` and its export link
`?customer=`): an erasure cannot reach a log file, so those values are not written at all
(`***`); the app's own API log keeps the path only.
"""

from __future__ import annotations

import logging
import re

KEY_SHOWN = 10  # the characters of a key kept, as Source.key_prefix
# writeKey=<key> in a query string (also at its start, and percent-encoded), /projects/<key>/settings
_KEY_IN_TEXT = re.compile(r"(?i)(?P<name>(?:^|[?&;]|%3F|%26)writeKey(?:=|%3D))(?P<key>[^&;\s\"]*)"
                          r"|(?P<path>/projects/)(?P<path_key>[^/?\s\"]+)(?=/settings)")


# user_id=<value> (and the other lookups' names, any case, also percent-encoded) in a query string
_PERSON_IN_QUERY = re.compile(r"(?i)(?P<name>(?:^|[?&;]|%3F|%26)(?:user_?id|e-?mail|phone|anonymous_?id|q|customer)"
                              r"(?:=|%3D))(?P<value>[^&;\s\"]+)")
PERSON_SHOWN = "***"


def key_masked(key: str) -> str:
    """A write key as the logs show it."""
    return f"{key[:KEY_SHOWN]}***" if key else key


def keys_masked(text: str) -> str:
    """`text` (a request line, path, query string or log message) with every write key in it
    masked, and the values of the query parameters that name a person left out."""
    text = _KEY_IN_TEXT.sub(lambda m: m["name"] + key_masked(m["key"]) if m["name"] is not None
                            else m["path"] + key_masked(m["path_key"]), text)
    return _PERSON_IN_QUERY.sub(lambda m: m["name"] + PERSON_SHOWN, text)


class WriteKeyFilter(logging.Filter):
    """A logging filter (settings.LOGGING's handlers) that masks write keys (and the values of
    person lookups) in each message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = keys_masked(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True
