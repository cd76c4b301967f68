"""The Segment-compatible HTTP tracking API (/v1/track, /v1/batch, ...).

Views are thin: read and size-check the body, authenticate the write key,
rate-limit, then call the parsing and ingestion services.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading

from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from journeys.api.body import BodyRefused, body_read, media_type_check, unsupported_media_type
from journeys.services.client_ip import client_ip
from journeys.api.openapi import TrackingSchema
from journeys.api.serializers import EVENT_SERIALIZERS, RESPONSES, BatchIn
from journeys.api.throttling import source_rate_check
from journeys.errors import (
    AuthenticationFailed,
    EventValidationError,
    PayloadTooLarge,
    PermissionDenied,
    SourceDisabled,
)
from journeys.services.api_tokens import api_call_log, token_track_source
from journeys.services.event_parsing import MAX_DEPTH, batch_defaults_check, json_strict, nesting_path
from journeys.services.ingest import ReceiveResult, events_receive
from journeys.services.sources import source_authenticate, source_rudder_config, source_segment_settings

logger = logging.getLogger(__name__)


def _error(status: int, message: str, *, code: str, field: str | None = None, headers: dict | None = None) -> Response:
    body = {"success": False, "code": code, "message": f"{field}: {message}" if field else message}
    if field:
        body["field"] = field
    return Response(body, status=status, headers=headers)


# RudderStack's Node SDK (rudder-sdk-node 2 and 3, gzip on by default) posts its gzip JSON with
# axios's default Content-Type for a buffer, application/x-www-form-urlencoded: such a body is read
# as JSON when it is a JSON object. A real form is a 415, as any other type the API does not read.
MISLABELLED_JSON = ("application/x-www-form-urlencoded",)


def _read_json(request, *, max_bytes: int, accepted: list[str]) -> object:
    """Read, size-check, decompress and parse the body; every failure is a 4xx."""
    media_type = media_type_check(request, accepted=accepted, tolerated=MISLABELLED_JSON)
    raw = body_read(request, max_bytes=max_bytes)
    if media_type in MISLABELLED_JSON and raw.lstrip()[:1] != b"{":
        raise unsupported_media_type(media_type, accepted=accepted)
    if not raw:
        raise BodyRefused(400, "body is empty; send a JSON object", "invalid_body")
    containers_check(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyRefused(400, f"body is not valid UTF-8 (byte {exc.start})", "invalid_body") from None
    del raw  # not held beside the text and the parsed body
    try:
        try:
            return json_strict(text)
        except RecursionError:
            return _parse_on_a_fresh_stack(text)
    except RecursionError:
        where = nesting_path(text)
        raise BodyRefused(400, f"is nested more than {MAX_DEPTH} levels deep", "too_deep", field=where or "body") from None
    except ValueError as exc:
        raise BodyRefused(400, f"malformed JSON: {exc}", "invalid_json") from None


# Real events hold one JSON object or array per ~100 bytes (an order with 50 small products: one
# per ~25); `[{},{},...]` holds one per 3 bytes, and each becomes a Python dict or list: a 9 MiB
# body of them took ~230-260 MB to parse (~25x its size). Large bodies denser than one per 12
# bytes are refused unparsed, which holds the worst case near ~17x (short strings alone: ~12x).
# Under 1 MiB a body costs ~30 MB at worst whatever it holds, and its errors stay the precise
# ones (a body nested too deep is a 400 naming where).
CONTAINER_BYTES = 12
CONTAINER_ALLOWANCE = 10_000
CONTAINER_CHECK_FROM = 1024 * 1024


def containers_check(raw: bytes) -> None:
    """Refuse (413) a large body with more JSON objects and arrays than its size warrants,
    before parsing it (a count of bytes, so braces inside strings count too, which real events
    do not hold by the thousand)."""
    if len(raw) < CONTAINER_CHECK_FROM:
        return
    allowed = len(raw) // CONTAINER_BYTES + CONTAINER_ALLOWANCE
    found = raw.count(b"{") + raw.count(b"[")
    if found > allowed:
        raise BodyRefused(413, f"holds {found} JSON objects and arrays in {len(raw)} bytes; at most one per "
                               f"{CONTAINER_BYTES} bytes (plus {CONTAINER_ALLOWANCE}) is read: send fewer, "
                               "larger events per request", "too_large", field="body")


def _parse_on_a_fresh_stack(text: str) -> object:
    """The parser's recursion budget is shared with the request's own frames (middleware, views):
    a body nesting deep, yet within the budget, is parsed again on a thread of its own, so whether
    it parses (and its too-deep event is quarantined alone, the rest of its batch stored) never
    depends on how deep the request's stack happens to be. Deeper still: RecursionError again."""
    outcome: dict = {}

    def parse() -> None:
        try:
            outcome["value"] = json_strict(text)
        except BaseException as exc:  # noqa: BLE001 - handed to the request's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=parse, name="json-deep")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _basic_write_key(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.split(":", 1)[0]


def _bearer_token(request) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


class TextJSONParser(JSONParser):
    """JSON sent as text/plain: what browsers send without a CORS preflight (analytics.js's
    fetch and sendBeacon, RudderStack's beacon)."""

    media_type = "text/plain"


class _TrackingView(APIView):
    authentication_classes: list = []
    permission_classes: list = []
    renderer_classes = [JSONRenderer]
    # The media types the body is read as (always as JSON); any other is a 415. The views read
    # the body themselves (_read_json): these name the types, for the check and the document.
    parser_classes = [JSONParser, TextJSONParser]
    schema = TrackingSchema()
    event_type: str | None = None
    key_in_query = False  # the write key may come as ?writeKey= (a beacon cannot set a header)
    max_body_setting = "MAX_EVENT_BYTES"
    # The shapes, for the OpenAPI document (journeys.api.openapi / drf-spectacular): input and output apart.
    request_serializer = BatchIn
    response_serializers = RESPONSES

    def http_method_not_allowed(self, request, *args, **kwargs):
        return _error(405, f"method {request.method} not allowed; use POST", code="method_not_allowed",
                      headers={"Allow": "POST"})

    def handle_exception(self, exc):
        """What DRF refuses before the view runs (an Accept header no renderer satisfies: 406) in
        this API's error format."""
        if isinstance(exc, APIException):
            codes = exc.get_codes()
            return _error(exc.status_code, str(exc.detail), code=codes if isinstance(codes, str) else exc.default_code)
        return super().handle_exception(exc)

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        api_call_log(request=request, status=response.status_code)
        return response

    def handle_payload(self, *, source, body: dict, received_at, ip) -> ReceiveResult:  # pragma: no cover
        raise NotImplementedError

    def post(self, request, *args, **kwargs):
        received_at = timezone.now()
        header_key = _basic_write_key(request)
        bearer = _bearer_token(request)
        try:
            source = source_authenticate(write_key=header_key) if header_key else None
            if bearer is not None:  # an API token with the track scope (its calls are logged)
                source = token_track_source(key=bearer, request=request)
            body = _read_json(request, max_bytes=settings.EVENT_API[self.max_body_setting],
                              accepted=[parser.media_type for parser in self.get_parsers()])
            if not isinstance(body, dict):
                return _error(400, "body must be a JSON object", code="invalid_body")
            if source is None:
                key = body.get("writeKey")
                if not key and self.key_in_query:
                    key = request.GET.get("writeKey")
                source = source_authenticate(write_key=key)
            wait = source_rate_check(source=source)
            if wait:
                return _error(
                    429, f"rate limit exceeded for source {source.name!r}; retry after {wait}s",
                    # X-RateLimit-Reset: the seconds Segment's analytics.js waits before it retries
                    code="rate_limited", headers={"Retry-After": str(wait), "X-RateLimit-Reset": str(wait)},
                )
            result = self.handle_payload(source=source, body=body, received_at=received_at, ip=client_ip(request.META))
        except BodyRefused as exc:
            return _error(exc.status, exc.message, code=exc.code, field=exc.field)
        except AuthenticationFailed as exc:
            return _error(401, exc.message, code=exc.code, headers={"WWW-Authenticate": 'Basic realm="events"'})
        except (SourceDisabled, PermissionDenied) as exc:
            return _error(403, exc.message, code=exc.code)
        except PayloadTooLarge as exc:
            return _error(413, exc.message, code=exc.code, field=exc.field)
        except EventValidationError as exc:
            return _error(400, exc.message, code=exc.code, field=exc.field)
        except (OperationalError, InterfaceError) as exc:
            # The database is down or restarting: nothing was stored, the client retries.
            logger.warning("event API: database unavailable: %s", exc)
            return _error(503, "storage temporarily unavailable; retry", code="unavailable", headers={"Retry-After": "2"})
        except DatabaseError:
            logger.exception("event API: database error")
            return _error(503, "storage error; retry", code="unavailable", headers={"Retry-After": "2"})
        return Response(accepted_body(result))


def accepted_body(result: ReceiveResult) -> dict:
    """200: `{"success": true}` as Segment answers; with `rejected` listing each event that was
    quarantined instead of stored (its batch index, field, error code and message)."""
    body: dict = {"success": True}
    if result.rejected:
        body["rejected"] = [
            {"index": r.index or 0, "field": r.field, "code": r.code,
             "message": f"{r.field}: {r.message}" if r.field else r.message}
            for r in result.rejected
        ]
    return body


class SingleEventView(_TrackingView):
    @property
    def request_serializer(self):
        return EVENT_SERIALIZERS[self.event_type]

    def handle_payload(self, *, source, body: dict, received_at, ip) -> ReceiveResult:
        return events_receive(source=source, payloads=[body], received_at=received_at, ip=ip,
                              event_type=self.event_type)


class BatchView(_TrackingView):
    """Good events are stored, each bad one is quarantined and listed in the answer; a `strict`
    source keeps all or nothing (the first bad event is a 400 naming its index, nothing stored)."""

    max_body_setting = "MAX_BATCH_BYTES"

    def handle_payload(self, *, source, body: dict, received_at, ip) -> ReceiveResult:
        batch = body.get("batch")
        if batch is None:
            raise EventValidationError("is required (a list of events)", field="batch")
        if not isinstance(batch, list):
            raise EventValidationError("must be a list of events", field="batch")
        if not batch:
            raise EventValidationError("is empty", field="batch")
        defaults = batch_defaults_check(body, max_bytes=settings.EVENT_API["MAX_EVENT_BYTES"])
        return events_receive(source=source, payloads=batch, received_at=received_at, ip=ip,
                              batch_defaults=defaults, in_batch=True)


class ShortSingleEventView(SingleEventView):
    """/v1/t, /v1/p, /v1/i, /v1/g, /v1/a, /v1/s: where Segment's analytics.js posts each call
    (`{apiHost}/{first letter of the type}`, a text/plain JSON body with its writeKey). The same
    endpoint as /v1/track and the others; not listed twice in the OpenAPI document."""

    schema = None


class ShortBatchView(BatchView):
    """/v1/b: analytics.js's batching delivery strategy (`{apiHost}/b`); /v1/batch under another name."""

    schema = None


BROWSER_SHORT_PATHS = {"t": "track", "p": "page", "i": "identify", "g": "group", "a": "alias", "s": "screen"}


class BeaconBatchView(BatchView):
    """POST /beacon/v1/batch?writeKey=...: RudderStack's JavaScript SDK with `useBeacon` (the
    browser's sendBeacon: a text/plain body, no header, the write key in the query)."""

    schema = None
    key_in_query = True


class _BrowserSourceView(APIView):
    """What a browser or app SDK loads before it sends anything, for one write key (from the path,
    the query or HTTP Basic). Its URLs are this server's public one (PUBLIC_BASE_URL, as in the
    links of messages, and the script prefix the site is served under): a proxy that rewrites the
    Host header does not send the SDKs to an internal name. Left unset, the origin the SDK reached."""

    authentication_classes: list = []
    permission_classes: list = []
    renderer_classes = [JSONRenderer]
    schema = None

    def get(self, request, write_key: str | None = None):
        key = write_key or request.GET.get("writeKey") or _basic_write_key(request)
        try:
            source = source_authenticate(write_key=key)
        except AuthenticationFailed as exc:
            return _error(401, exc.message, code=exc.code)
        except SourceDisabled as exc:
            return _error(403, exc.message, code=exc.code)
        script = request.path.removesuffix(request.path_info)  # a prefix the site is served under
        base = settings.PUBLIC_BASE_URL.rstrip("/")
        if base == settings.PUBLIC_BASE_URL_DEFAULT or "://" not in base:  # not set: as the SDK reached us
            base = request.build_absolute_uri("/").rstrip("/")
        return Response(self.document(source=source, write_key=key, api_base=f"{base}{script}/v1"),
                        headers={"Cache-Control": "private, max-age=300"})

    def document(self, *, source, write_key: str, api_base: str) -> dict:  # pragma: no cover - each view says
        raise NotImplementedError


class BrowserSettingsView(_BrowserSourceView):
    """GET /v1/projects/{write key}/settings: what Segment's analytics.js (analytics-next) loads from
    its CDN; with `cdnURL` pointed here, its one destination is this server's /v1."""

    def document(self, *, source, write_key: str, api_base: str) -> dict:
        return source_segment_settings(write_key=write_key, api_base=api_base)


class RudderSourceConfigView(_BrowserSourceView):
    """GET /v1/sourceConfig/?writeKey=...: what RudderStack's JavaScript SDK loads from its control
    plane (`configUrl` pointed at this server's /v1) before it sends to its `dataPlaneUrl`."""

    def document(self, *, source, write_key: str, api_base: str) -> dict:
        return source_rudder_config(source=source, write_key=write_key)
