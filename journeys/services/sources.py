"""Event sources and their write keys."""

from __future__ import annotations

import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

from django.db import transaction
from django.utils import timezone

from journeys.errors import AuthenticationFailed, SourceDisabled
from journeys.models import Source
from journeys.models.events import hash_write_key
from journeys.services.governance import history_stamp, require_model_perm, require_reason


def _new_key() -> str:
    return "wk_" + secrets.token_urlsafe(32)


@transaction.atomic
def source_create(
    *,
    name: str,
    description: str = "",
    rate_limit: int | None = None,
    enabled: bool = True,
    schema_policy: str = "flag",
    strict: bool = False,
    retention_days: int | None = None,
    allow_known_merges: bool = False,
    actor: Any = None,
    reason: str = "",
) -> tuple[Source, str]:
    """Create a source; returns it with its write key, which is never stored or shown again.

    A person (`actor`) must say why; who and why land on the source's creation history row.
    """
    require_model_perm(actor, "add_source", "create event sources")
    reason = require_reason(actor, reason) or "source created"
    key = _new_key()
    source = Source(
        name=name,
        description=description,
        rate_limit=rate_limit,
        enabled=enabled,
        schema_policy=schema_policy,
        strict=strict,
        retention_days=retention_days,
        allow_known_merges=allow_known_merges,
        key_hash=hash_write_key(key),
        key_prefix=key[:10],
    )
    source.full_clean(exclude=["key_hash", "key_prefix"])
    history_stamp(source, actor=actor, reason=reason)
    source.save()
    return source, key


@transaction.atomic
def source_rotate_key(*, source: Source, actor: Any = None) -> str:
    """Replace the write key; the old key stops working at once."""
    require_model_perm(actor, "change_source", "rotate write keys")
    key = _new_key()
    source.key_hash = hash_write_key(key)
    source.key_prefix = key[:10]
    source.key_rotated_at = timezone.now()
    history_stamp(source, actor=actor, reason="write key rotated")
    source.save(update_fields=["key_hash", "key_prefix", "key_rotated_at", "updated_at"])
    return key


@transaction.atomic
def source_set_enabled(*, source: Source, enabled: bool, reason: str, actor: Any = None) -> Source:
    """Enable or disable a source; a disabled source's requests get 403."""
    require_model_perm(actor, "change_source", "enable or disable event sources")
    source.enabled = enabled
    history_stamp(source, actor=actor, reason=require_reason(actor, reason))
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


def source_segment_settings(*, write_key: str, api_base: str) -> dict:
    """The settings Segment's analytics.js (and its mobile SDKs) load before they send anything:
    one destination, this server's tracking API at `api_base` (e.g. https://host/v1), no other
    destination, no remote metrics. The write key has been authenticated by the caller."""
    api = urlsplit(api_base)
    segment = {"apiKey": write_key, "apiHost": f"{api.netloc}{api.path}", "protocol": api.scheme,
               "unbundledIntegrations": [], "addBundledMetadata": True, "maybeBundledConfigIds": {}}
    everything = {"__default": {"enabled": True, "integrations": {}}}
    return {
        "integrations": {"Segment.io": segment},
        "plan": {"track": everything, "identify": everything, "group": everything},
        "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {}, "enabledMiddleware": {},
        "metrics": {"sampleRate": 0}, "legacyVideoPluginsEnabled": False, "remotePlugins": [],
    }


def source_rudder_config(*, source: Source, write_key: str) -> dict:
    """The source configuration RudderStack's JavaScript SDK loads from its control plane before it
    starts (it needs an id, a config object and a list of destinations): no device-mode destination."""
    return {"isHosted": False, "source": {
        "id": str(source.pk), "name": source.name, "writeKey": write_key, "enabled": True,
        "workspaceId": "journeys", "config": {}, "destinations": []}}
