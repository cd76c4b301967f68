"""Event sources and their write keys."""

from __future__ import annotations

import hmac
import secrets

from django.db import transaction
from django.utils import timezone

from journeys.errors import AuthenticationFailed, SourceDisabled
from journeys.models import Source
from journeys.models.events import hash_write_key


def _new_key() -> str:
    return "wk_" + secrets.token_urlsafe(32)


@transaction.atomic
def source_create(
    *, name: str, description: str = "", rate_limit: int | None = None, enabled: bool = True
) -> tuple[Source, str]:
    """Create a source; returns it with its write key, which is never stored or shown again."""
    key = _new_key()
    source = Source(
        name=name,
        description=description,
        rate_limit=rate_limit,
        enabled=enabled,
        key_hash=hash_write_key(key),
        key_prefix=key[:10],
    )
    source.full_clean(exclude=["key_hash", "key_prefix"])
    source._change_reason = "source created"
    source.save()
    return source, key


@transaction.atomic
def source_rotate_key(*, source: Source) -> str:
    """Replace the write key; the old key stops working at once."""
    key = _new_key()
    source.key_hash = hash_write_key(key)
    source.key_prefix = key[:10]
    source.key_rotated_at = timezone.now()
    source._change_reason = "write key rotated"
    source.save(update_fields=["key_hash", "key_prefix", "key_rotated_at", "updated_at"])
    return key


@transaction.atomic
def source_set_enabled(*, source: Source, enabled: bool, reason: str) -> Source:
    """Enable or disable a source; a disabled source's requests get 403."""
    source.enabled = enabled
    source._change_reason = reason
    source.save(update_fields=["enabled", "updated_at"])
    return source


def source_authenticate(*, write_key: str | None) -> Source:
    """Find the enabled source for a write key.

    The lookup is by SHA-256 (an index hit); the final comparison is constant time.
    """
    if not write_key or not isinstance(write_key, str):
        raise AuthenticationFailed("missing write key (HTTP Basic username or 'writeKey')")
    digest = hash_write_key(write_key)
    source = Source.objects.filter(key_hash=digest).first()
    if source is None or not hmac.compare_digest(source.key_hash, digest):
        raise AuthenticationFailed("invalid write key")
    if not source.enabled:
        raise SourceDisabled(f"source {source.name!r} is disabled")
    return source
