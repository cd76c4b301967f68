"""Signed links: unsubscribe, preference centre, open pixel, click redirect, status callbacks.

Each purpose has its own salt (a token for one cannot be replayed as another) and,
where it makes sense, a maximum age. A bad or expired token raises `BadLink`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import zlib
from functools import lru_cache

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, reverse

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


@lru_cache(maxsize=32)
def _mac(salt: str, secret: str) -> hmac.HMAC:
    # django.core.signing.salted_hmac's key for this salt, derived once (not once a link).
    key = hashlib.sha256((salt + "signer").encode() + secret.encode()).digest()
    return hmac.new(key, digestmod=hashlib.sha256)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def link_sign(*, purpose: str, data: dict) -> str:
    """`signing.dumps(data, salt=..., compress=True)`, byte for byte (signing.loads reads it), at
    half its cost: a dispatcher signs three to five links an email, and Django builds a Signer,
    reads the settings and derives the HMAC key from the secret for each one."""
    raw = json.dumps(data, separators=(",", ":")).encode("latin-1")
    packed = zlib.compress(raw)
    body = "." + _b64(packed) if len(packed) < len(raw) - 1 else _b64(raw)
    value = f"{body}:{signing.b62_encode(int(time.time()))}"
    mac = _mac(SALTS[purpose], settings.SECRET_KEY).copy()
    mac.update(value.encode())
    return f"{value}:{_b64(mac.digest())}"


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


VIEWS = {"unsubscribe": "unsubscribe", "preferences": "preferences", "open": "open",
         "click": "click", "status": "status", "inbound": "inbound_sms"}
_TOKEN = "TOKEN-0123456789"  # a stand-in that the URL patterns accept and nothing else contains


@lru_cache(maxsize=32)
def _url_parts(purpose: str, script_prefix: str, base: str) -> tuple[str, str]:
    url = absolute(reverse(f"channels_app:{VIEWS[purpose]}", args=[_TOKEN]))
    head, _, tail = url.partition(_TOKEN)
    return head, tail


def link_url(*, purpose: str, data: dict) -> str:
    """The absolute URL (PUBLIC_BASE_URL) of a signed link. The URL around the token is
    reversed once per purpose (a dispatcher signs one or two links per message)."""
    head, tail = _url_parts(purpose, get_script_prefix(), settings.PUBLIC_BASE_URL)
    return head + link_sign(purpose=purpose, data=data) + tail
