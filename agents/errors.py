"""The one exception services raise for a refused operation; `code` is an agents.choices.ErrorCode."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied


class CaseError(Exception):
    def __init__(self, code: str, message: str = ""):
        from agents.choices import ErrorCode

        self.code = code
        self.message = message or ErrorCode(code).label
        super().__init__(self.message)


class CaseForbidden(CaseError, PermissionDenied):
    """Raised when the actor may not touch the case; views turn it into 403."""

    def __init__(self, message: str = ""):
        super().__init__("not_allowed", message)
