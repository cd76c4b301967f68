"""Shared admin pieces."""

from __future__ import annotations


class ReadOnlyMixin:
    """Logs and records: shown, never added, edited or deleted by hand (by no role, superusers
    included: a send log or an erasure record with rows missing tells a wrong story)."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
