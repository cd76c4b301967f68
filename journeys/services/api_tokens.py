"""API tokens: made and revoked by ops (who and why recorded), checked on every call, and the
access log of the calls made with them."""

from __future__ import annotations

import hmac
import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, transaction
from django.utils import timezone

from journeys.choices import ApiScope
from journeys.errors import AuthenticationFailed, PermissionDenied
from journeys.models import ApiRequest, ApiToken, Source
from journeys.models.api import hash_token
from journeys.services.governance import history_stamp, require_model_perm, require_reason

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "jct_"


def scopes_clean(scopes: Any) -> list[str]:
    """A list of known scopes, each once, in the order of ApiScope (ValidationError otherwise)."""
    if not isinstance(scopes, (list, tuple)) or not scopes:
        raise ValidationError({"scopes": "choose at least one scope"})
    unknown = [s for s in scopes if s not in ApiScope.values]
    if unknown:
        raise ValidationError({"scopes": f"unknown scope(s) {', '.join(map(str, unknown))}; "
                                         f"known: {', '.join(ApiScope.values)}"})
    return [s for s in ApiScope.values if s in scopes]


@transaction.atomic
def token_create(
    *,
    name: str,
    scopes: list[str],
    actor: Any = None,
    reason: str = "",
    description: str = "",
    expires_at: datetime | None = None,
    source: Source | None = None,
    rate_limit: int | None = None,
) -> tuple[ApiToken, str]:
    """Make a token; returns it with its secret value, which is never stored or shown again.

    A person (`actor`) must say why; who and why are kept on the token and its history row.
    """
    require_model_perm(actor, "add_apitoken", "create API tokens")
    reason = require_reason(actor, reason) or "token created"
    scopes = scopes_clean(scopes)
    if ApiScope.TRACK in scopes and source is None:
        raise ValidationError({"source": "a token with the track scope needs the source its events belong to"})
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationError({"expires_at": "must be in the future"})
    key = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        name=name, description=description, scopes=scopes, source=source, expires_at=expires_at,
        rate_limit=rate_limit, key_hash=hash_token(key), key_prefix=key[:12],
        created_by=actor if getattr(actor, "pk", None) else None, created_reason=reason[:500],
    )
    token.full_clean(exclude=["key_hash", "key_prefix"])
    history_stamp(token, actor=actor, reason=reason)
    token.save()
    return token, key


@transaction.atomic
def token_revoke(*, token: ApiToken, actor: Any = None, reason: str = "") -> ApiToken:
    """Stop a token at once (its calls get 401 from now on); who and why are recorded."""
    require_model_perm(actor, "change_apitoken", "revoke API tokens")
    reason = require_reason(actor, reason) or "token revoked"
    token = ApiToken.objects.select_for_update().get(pk=token.pk)
    if token.revoked_at is not None:
        return token
    token.revoked_at = timezone.now()
    token.revoked_by = actor if getattr(actor, "pk", None) else None
    token.revoked_reason = reason[:500]
    history_stamp(token, actor=actor, reason=f"revoked: {reason}")
    token.save(update_fields=["revoked_at", "revoked_by", "revoked_reason", "updated_at"])
    return token


MAKER_DEACTIVATED = ("API token {prefix}… stopped working when the account that made it was deactivated: ask ops "
                     "for a new token, made by someone still here")


def token_maker_deactivated(token: ApiToken) -> bool:
    """A token made by a person works only while that person's account is active: someone who
    leaves (deactivated) takes the access they handed out with them. Tokens made by the system
    (no maker) are not tied to anyone."""
    return token.created_by_id is not None and not token.created_by.is_active


def token_authenticate(*, key: str | None, now: datetime | None = None) -> ApiToken:
    """The active token for a bearer value: found by its SHA-256 (an index hit), compared in
    constant time; a revoked or expired token, or one whose maker's account is deactivated, is
    refused like an unknown one (401), saying which."""
    if not key or not isinstance(key, str):
        raise AuthenticationFailed("missing API token (Authorization: Bearer <token>)")
    digest = hash_token(key)
    token = ApiToken.objects.select_related("source", "created_by").filter(key_hash=digest).first()
    if token is None or not hmac.compare_digest(token.key_hash, digest):
        raise AuthenticationFailed("invalid API token")
    now = now or timezone.now()
    if token.revoked_at is not None:
        raise AuthenticationFailed(f"API token {token.key_prefix}… was revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise AuthenticationFailed(f"API token {token.key_prefix}… expired at {token.expires_at.isoformat()}")
    if token_maker_deactivated(token):
        raise AuthenticationFailed(MAKER_DEACTIVATED.format(prefix=token.key_prefix))
    return token


def token_has_scope(*, token: ApiToken, scope: str) -> bool:
    return scope in (token.scopes or [])


def api_request_record(*, token: ApiToken, method: str, path: str, status: int, duration_ms: int,
                       ip: str | None, now: datetime | None = None) -> None:
    """One access-log row per call (one INSERT, outside the call's own transaction); the token's
    `last_used_at` is written at most once a minute, so a busy token costs one row per call.
    The call's answer stands whatever happens here: a row lost to a database outage is logged."""
    now = now or timezone.now()
    try:
        ApiRequest.objects.create(token_id=token.pk, at=now, method=method[:8], path=path[:255], status=status,
                                  duration_ms=max(0, duration_ms), ip=ip or None)
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
    except DatabaseError:
        logger.warning("API access log: could not record %s %s", method, path)


def api_requests_purge(*, now: datetime | None = None) -> int:
    """Drop access-log rows older than API["LOG_KEEP_DAYS"] (called by the stream tick)."""
    cutoff = (now or timezone.now()) - timedelta(days=settings.API["LOG_KEEP_DAYS"])
    return ApiRequest.objects.filter(at__lt=cutoff).delete()[0]


def token_track_source(*, key: str, request: Any = None) -> Source:
    """The source a bearer token with the `track` scope sends events for (the tracking API,
    /v1/*, accepts such tokens beside write keys). The call is logged with the token when
    `request` is given (see `api_call_log`)."""
    import time

    from journeys.errors import SourceDisabled

    token = token_authenticate(key=key)
    if request is not None:
        request._api_token = (token, time.monotonic())
    if not token_has_scope(token=token, scope=ApiScope.TRACK):
        raise PermissionDenied(f"this token lacks the {str(ApiScope.TRACK)!r} scope")
    if token.source is None or not token.source.enabled:
        raise SourceDisabled(f"the source of token {token.key_prefix}… is missing or disabled")
    return token.source


def api_call_log(*, request: Any, status: int) -> None:
    """Record a call authenticated by `token_track_source` in the access log."""
    import time

    from journeys.services.client_ip import client_ip

    found = getattr(request, "_api_token", None)
    if found is not None:
        token, started = found
        api_request_record(token=token, method=request.method, path=request.path, status=status,
                           duration_ms=int((time.monotonic() - started) * 1000),
                           ip=client_ip(request.META))
