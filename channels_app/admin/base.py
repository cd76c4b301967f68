"""Shared admin pieces."""

from __future__ import annotations


class ReadOnlyMixin:
    """Logs and records: shown, never added or edited by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False
