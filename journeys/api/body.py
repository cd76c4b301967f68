"""Reading a request body, the same way on both APIs (tracking /v1 and management /api/v1).

The size limit is enforced while the body is read, whether it came with a Content-Length or
chunked (no Content-Length: the server de-chunked it into wsgi.input); a gzip body
(`Content-Encoding: gzip`) is inflated under the same limit.
"""

from __future__ import annotations

import zlib


class BodyRefused(Exception):
    """A body the API will not read: its status (400, 413, 415), error code and message."""

    def __init__(self, status: int, message: str, code: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.field = status, message, code, field


def body_read(request, *, max_bytes: int) -> bytes:
    """The body's bytes (decompressed), at most `max_bytes`; b"" when there is none.
    `request` is DRF's Request (its stream is None when the body is empty)."""
    declared = request.META.get("CONTENT_LENGTH")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(413, f"body is {declared} bytes; the limit is {max_bytes} bytes", "too_large")
    stream = request.stream  # None when the body is empty; bounded by Content-Length
    if (not declared and request.META.get("wsgi.input_terminated")
            and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()):
        # A chunked upload has no Content-Length (Segment's Android SDK streams its batches, httpx
        # and requests stream generators): Django then reads an empty body, so read what the server
        # de-chunked and ended (it says so with wsgi.input_terminated, as gunicorn does; Django's
        # development server hands over nothing, and the body is read as empty).
        stream = request.META.get("wsgi.input")
    raw = stream.read(max_bytes + 1) if stream is not None else b""
    if len(raw) > max_bytes:
        raise BodyRefused(413, f"body is over the limit of {max_bytes} bytes", "too_large")
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding == "gzip":
        # The same limit once decompressed: never more than max_bytes + 1 bytes are inflated, so a
        # gzip bomb costs no more memory than a plain body.
        try:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            raw = decompressor.decompress(raw, max_bytes + 1)
        except zlib.error:
            raise BodyRefused(400, "body is not valid gzip", "invalid_body") from None
        if len(raw) > max_bytes:
            raise BodyRefused(413, f"decompressed body is over the limit of {max_bytes} bytes", "too_large")
    elif encoding not in ("", "identity"):
        raise BodyRefused(415, f"unsupported Content-Encoding {encoding!r}; use gzip", "unsupported_encoding")
    return raw


def media_type_check(request, *, accepted: list[str], tolerated: tuple[str, ...] = ()) -> str:
    """The body's media type, or a 415 naming it when the view does not read that type. A body
    without any Content-Type is read as the first accepted type; a `tolerated` type is let
    through for the view to check what the body really is."""
    media_type = request.META.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if media_type and media_type not in accepted and media_type not in tolerated:
        raise unsupported_media_type(media_type, accepted=accepted)
    return media_type


def unsupported_media_type(media_type: str, *, accepted: list[str]) -> BodyRefused:
    return BodyRefused(415, f"{media_type[:100]!r} is not read here; send {' or '.join(accepted)}",
                       "unsupported_media_type", field="Content-Type")
