"""Error types and codes of the journeys app, in one place."""

from __future__ import annotations

from django.core.exceptions import ValidationError


class JourneyError(Exception):
    """Base for errors a caller can show to a person."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class EventValidationError(JourneyError):
    """An event payload breaks a rule of the tracking API (HTTP 400)."""

    code = "invalid_event"


class PayloadTooLarge(JourneyError):
    """A body, a batch or one event is over the API limits (HTTP 413)."""

    code = "too_large"


class AuthenticationFailed(JourneyError):
    code = "unauthorized"


class SourceDisabled(JourneyError):
    code = "source_disabled"


class PermissionDenied(JourneyError):
    code = "permission_denied"


class OutboundRefused(JourneyError):
    """An outbound URL or host we will not connect to (scheme, private address, redirect...)."""

    code = "outbound_refused"


class OutboundUnreachable(JourneyError):
    """A connection to an allowed place failed (DNS, refused, reset, timeout): worth retrying.
    `maybe_received`: the request had been written in full (a timeout or a cut-off while waiting
    for the answer), so the other side may have acted on it.
    `answer`: when the answer's status line and headers had come and only its body did not (cut
    off, or stalled past the deadline), that answer (an OutboundResponse holding what came of the
    body); None when no answer came."""

    code = "outbound_unreachable"
    maybe_received = False
    answer = None


class SecretUnavailable(JourneyError):
    """A configured secret name is not allowed (no JOURNEYS_SECRET_ prefix) or holds nothing."""

    code = "secret_unavailable"


class DraftChanged(ValidationError):
    """A change made on a stale view of a draft (a drawing or a form loaded before someone else
    saved): refused, nothing written, so that nobody's change is overwritten unseen (HTTP 409)."""
