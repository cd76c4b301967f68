"""Keyed digests of personal values that must still be recognised once the value itself is gone.

An API client's idempotency key (`receipt-<userId>`, `welcome-<email>`) has to find its first
request again, and an erased person's objection has to hold when their address comes back
(channels_app: suppressions and hard-bounce marks), yet neither may keep the value readable. A
bare hash of an address or a user id is undone by hashing the likely candidates, so the digest
is an HMAC under a key of the deployment's: PRIVACY_DIGEST_KEY, else one derived from
SECRET_KEY. Changing that key forgets every digest made with the old one (a replayed key is taken
for a new request; a suppression or bounce no longer holds): set PRIVACY_DIGEST_KEY before
rotating SECRET_KEY (docs/PRIVACY.md).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.crypto import salted_hmac

DIGEST_CHARS = 32  # hex digits: 128 bits


def personal_digest(value: str, *, purpose: str) -> str:
    """The keyed digest of `value` for `purpose` (each purpose its own key: a digest made for one
    cannot be matched against another's)."""
    secret = getattr(settings, "PRIVACY_DIGEST_KEY", "") or settings.SECRET_KEY
    return salted_hmac(f"journey-console.{purpose}", value, secret=secret, algorithm="sha256").hexdigest()[:DIGEST_CHARS]
