"""Signed links: unsubscribe, preference centre, open pixel, click redirect, status callbacks.

Each purpose has its own salt (a token for one cannot be replayed as another) and,
where it makes sense, a maximum age. A bad or expired token raises `BadLink`.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

SALTS = {
    "unsubscribe": "channels.unsubscribe",
    "preferences": "channels.preferences",
    "open": "channels.open",
    "click": "channels.click",
    "status": "channels.status",
    "inbound": "channels.inbound",
    "chat": "channels.chat_inbound",
}
# Unsubscribe links must keep working for a long time (old emails); preference links
# give access to choices, so they expire sooner; status callbacks come within days.
MAX_AGE_S = {
    "unsubscribe": 400 * 86400,
    "preferences": 30 * 86400,
    "open": 400 * 86400,
    "click": 400 * 86400,
    "status": 14 * 86400,
    "inbound": None,
    "chat": None,
}


# What each purpose's signed data holds: key -> (type, required). Anything else in a token
# that verifies (signed with a leaked or public key, or by an older release) is a bad link, so
# the views never meet a list where they expect an id (issue #15: they answered 500).
_ID = (int, True)
SCHEMAS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "unsubscribe": {"c": _ID, "k": (str, False), "t": ((str, type(None)), False), "d": (int, False)},
    "preferences": {"c": _ID},
    "open": {"d": _ID},
    "click": {"d": _ID, "u": (str, True)},
    "status": {"d": _ID},
    "inbound": {"ch": _ID},
    "chat": {"ch": _ID},
}
_MAX_ID = 2**63 - 1


class BadLink(Exception):
    pass


def _check_schema(purpose: str, data: dict) -> None:
    if set(data) - SCHEMAS[purpose].keys():
        raise BadLink("this link is not valid")
    for key, (kind, required) in SCHEMAS[purpose].items():
        if key not in data:
            if required:
                raise BadLink("this link is not valid")
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise BadLink("this link is not valid")
        if isinstance(value, int) and not 0 < value <= _MAX_ID:
            raise BadLink("this link is not valid")
        if isinstance(value, str) and len(value) > 4096:
            raise BadLink("this link is not valid")


def link_sign(*, purpose: str, data: dict) -> str:
    return signing.dumps(data, salt=SALTS[purpose], compress=True)


def link_load(*, purpose: str, token: str) -> dict:
    try:
        data = signing.loads(token, salt=SALTS[purpose], max_age=MAX_AGE_S[purpose])
    except signing.SignatureExpired as exc:
        raise BadLink("this link has expired") from exc
    except signing.BadSignature as exc:
        raise BadLink("this link is not valid") from exc
    if not isinstance(data, dict):
        raise BadLink("this link is not valid")
    _check_schema(purpose, data)
    return data


def absolute(path: str) -> str:
    return settings.PUBLIC_BASE_URL.rstrip("/") + path


def link_url(*, purpose: str, data: dict) -> str:
    """The absolute URL (PUBLIC_BASE_URL) of a signed link."""
    views = {"unsubscribe": "unsubscribe", "preferences": "preferences", "open": "open",
             "click": "click", "status": "status", "inbound": "inbound_sms"}
    return absolute(reverse(f"channels_app:{views[purpose]}", args=[link_sign(purpose=purpose, data=data)]))
