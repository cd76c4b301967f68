"""Management API: tokens with scopes and the log of the calls made with them."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.db import models
from django.utils import timezone
from simple_history.models import HistoricalRecords

from journeys.models.base import Timestamped


def hash_token(key: str) -> str:
    """Tokens are 32 random bytes, so a plain SHA-256 is enough (as for write keys)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class ApiToken(Timestamped):
    """A bearer token for the management API (`Authorization: Bearer <token>`).

    Only the SHA-256 of the token is stored; the token itself is shown once, at creation.
    `key_prefix` tells tokens apart. Who made or revoked it and why is kept on the row and
    in its history.
    """

    name = models.CharField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    key_prefix = models.CharField(max_length=16, editable=False, help_text="first characters, to tell tokens apart")
    scopes = models.JSONField(default=list, blank=True, help_text="what the token may do")
    source = models.ForeignKey(
        "journeys.Source", null=True, blank=True, on_delete=models.PROTECT, related_name="api_tokens",
        help_text="with the track scope: the source its events are attributed to",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="empty = never expires")
    rate_limit = models.PositiveIntegerField(
        null=True, blank=True, help_text="requests per minute; empty = the settings default (API_RATE_LIMIT)"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)
    created_reason = models.CharField(max_length=500, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+", editable=False)
    revoked_reason = models.CharField(max_length=500, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    history = HistoricalRecords(excluded_fields=["key_hash", "last_used_at"])

    class Meta:
        ordering = ["name"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"

    @property
    def actor(self) -> str:
        """How the token appears in audit rows (merges, erasures)."""
        return f"api-token:{self.name}"

    def active_at(self, now=None) -> bool:
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class ApiRequest(models.Model):
    """One call made with a token (the access log): kept `API["LOG_KEEP_DAYS"]` days."""

    token = models.ForeignKey(ApiToken, on_delete=models.CASCADE, related_name="requests")
    at = models.DateTimeField()
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=255)
    status = models.PositiveSmallIntegerField()
    duration_ms = models.PositiveIntegerField()
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "API request"
        indexes = [models.Index(fields=["token", "at"], name="apirequest_token_at_idx"),
                   models.Index(fields=["at"], name="apirequest_at_idx")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"
