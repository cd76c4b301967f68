"""What every management API view (/api/v1) shares: bearer-token authentication, scopes,
per-token throttling, the access log, one error format and cursor pagination.

Errors are `{"code": ..., "message": ..., "field": ...}` (like the tracking API's); `field`
names the bad input (`recipients[2].user_id`) and `errors` keeps every message by field.
"""

from __future__ import annotations

import io
import time

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import Http404
from django.views.decorators.csrf import csrf_exempt
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import exception_handler as drf_exception_handler

from journeys import errors
from journeys.api.body import BodyRefused, body_read
from journeys.api.fields import MAX_ID
from journeys.models import ApiToken
from journeys.services.api_tokens import api_request_record, token_authenticate, token_has_scope
from journeys.services.client_ip import client_ip


class BearerTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer <token>`; `request.auth` is the ApiToken. `request.user` stays
    anonymous: a token is no person (history rows name no user; services record the token)."""

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            raise exceptions.AuthenticationFailed("use Authorization: Bearer <token>")
        try:
            token = token_authenticate(key=value.strip())
        except errors.AuthenticationFailed as exc:
            raise exceptions.AuthenticationFailed(exc.message) from None
        return AnonymousUser(), token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "an API token made in the admin (API tokens)"}


class HasScope(BasePermission):
    """The token holds the scope the view names for this action (`view.scope_for(request)`)."""

    message = "this token may not do that"

    def has_permission(self, request, view) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return False
        scope = view.scope_for(request)
        if token_has_scope(token=token, scope=scope):
            return True
        self.message = f"this token lacks the {str(scope)!r} scope"
        return False


class TokenRateThrottle(BaseThrottle):
    """Requests per minute per token, counted in one place for every process
    (`journeys.services.ratelimit.rate_limit_hit`)."""

    def allow_request(self, request, view) -> bool:
        from journeys.services.ratelimit import rate_limit_hit

        token = request.auth
        if not isinstance(token, ApiToken):
            return True
        limit = token.rate_limit or settings.API["RATE_LIMIT"]
        if not limit:
            return True
        decision = rate_limit_hit(key=f"api-token:{token.pk}", limit=limit, window_s=settings.API["RATE_WINDOW_S"])
        self._wait = decision.retry_after
        return decision.allowed

    def wait(self):
        return getattr(self, "_wait", None)


class IdCursorPagination(CursorPagination):
    """Pages by primary key: as cheap on the millionth row as on the first."""

    ordering = "id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500

    def get_page_size(self, request):
        """`limit`: 1 to max_page_size (more is cut to it); anything else is refused, not ignored."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise exceptions.ValidationError(
                {self.page_size_query_param: f"must be a whole number from 1 to {self.max_page_size}"})
        return min(int(raw), self.max_page_size)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
                parameter["description"] = (f"rows per page, 1 to {self.max_page_size} (default {self.page_size}; "
                                            f"more is cut to {self.max_page_size}); 0 or not a number: 400")
            elif parameter["name"] == self.cursor_query_param:
                parameter["description"] = "the `next` link's cursor, as it is (anything else is a 400)"
        return parameters

    def decode_cursor(self, request):
        refused = exceptions.ValidationError(
            {self.cursor_query_param: "is not a cursor this API handed out (use the `next` link as it is)"})
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound:
            raise refused from None
        position = cursor.position if cursor is not None else None
        if position is not None and not (position.isascii() and position.isdigit() and int(position) <= MAX_ID):
            raise refused  # the position is an id: anything else would reach the query
        return cursor


class Unprocessable(exceptions.APIException):
    """Well-formed input that cannot be done (unknown template, workflow not live): 422."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "unprocessable"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"


def _first_error(detail, path: str = "") -> tuple[str, str, str]:
    """(field path, message, code) of the first error in DRF's nested error structure."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key in ("non_field_errors", "detail"):
                sub = path
            elif isinstance(key, int) or str(key).isdigit():  # a list's errors by index (many=True)
                sub = f"{path}[{key}]"
            else:
                sub = f"{path}.{key}" if path else str(key)
            found = _first_error(value, sub)
            if found[1]:
                return found
        return path, "", ""
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)) and value:
                found = _first_error(value, f"{path}[{index}]")
                if found[1]:
                    return found
            elif value:
                return path, str(value), getattr(value, "code", "invalid") or "invalid"
        return path, "", ""
    return path, str(detail), getattr(detail, "code", "invalid") or "invalid"


def _body(*, code: str, message: str, field: str = "", errors: object = None) -> dict:
    body: dict = {"code": code, "message": f"{field}: {message}" if field else message}
    if field:
        body["field"] = field
    if errors is not None:
        body["errors"] = errors
    return body


def api_exception_handler(exc, context):
    """Every refusal as {"code", "message", "field"}; service errors mapped to their status."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "not found")
    elif isinstance(exc, errors.PermissionDenied):
        exc = exceptions.PermissionDenied(exc.message)
    elif isinstance(exc, BodyRefused):  # while the body was read: 400, 413 or 415
        return Response(_body(code=exc.code, message=exc.message, field=exc.field or ""), status=exc.status)
    elif isinstance(exc, errors.PayloadTooLarge):
        return Response(_body(code=exc.code, message=exc.message, field=exc.field or ""), status=413)
    elif isinstance(exc, errors.JourneyError):
        return Response(_body(code=exc.code, message=exc.message, field=exc.field or ""), status=422)
    elif isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        field, message, _ = _first_error(detail)
        return Response(_body(code="invalid", message=message, field=field, errors=detail), status=422)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        field, message, code = _first_error(exc.detail)
        response.data = _body(code=code or "invalid", message=message or "invalid input", field=field,
                              errors=response.data)
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = _body(code=codes if isinstance(codes, str) else exc.default_code, message=str(exc.detail))
    return response




def id_or_404(value) -> int:
    """A path id as an int; anything that cannot be a row id (too long, not digits) is a 404."""
    text = str(value)
    if not text.isdigit() or int(text) > MAX_ID:
        raise exceptions.NotFound(f"no such id {text[:40]!r}")
    return int(text)


@csrf_exempt
def not_found_view(request, *args, **kwargs):
    """Unknown /api/v1 paths answer in the API's error format, not with an HTML page."""
    from django.http import JsonResponse

    return JsonResponse(_body(code="not_found", message=f"no API endpoint at {request.path[:200]}"), status=404)


def _too_large(exception) -> str | None:
    """What is over Django's limits on a request body, or None when the 400 is about something else."""
    from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent

    if isinstance(exception, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return f"The form is over the limit of {limit:,} bytes ({limit / 1024 / 1024:.1f} MB)."
    if isinstance(exception, TooManyFieldsSent):
        return f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:,} fields, the limit."
    if isinstance(exception, TooManyFilesSent):
        return f"The form has more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES:,} files, the limit."
    return None


@csrf_exempt
def bad_request_view(request, exception=None):
    """Django's 400 (an unknown or malformed Host header, a form with too many fields) answers the
    APIs' clients in their error format; the console keeps Django's page. A body over Django's
    limits (size, number of fields or files) is a 413 saying the limit, on the console too.
    Never reads the Host."""
    from django.core.exceptions import DisallowedHost
    from django.http import JsonResponse
    from django.shortcuts import render
    from django.views.defaults import bad_request

    too_large = _too_large(exception)
    if not request.path.startswith(("/v1/", "/api/")):
        if too_large:
            return render(request, "413.html", {"problem": too_large}, status=413)
        return bad_request(request, exception)
    if too_large:
        body = _body(code="too_large", message=too_large)
        return JsonResponse({"success": False, **body} if request.path.startswith("/v1/") else body, status=413)
    if isinstance(exception, DisallowedHost):
        host = request.META.get("HTTP_X_FORWARDED_HOST" if settings.USE_X_FORWARDED_HOST else "HTTP_HOST", "")
        body = _body(code="bad_host", field="Host",
                     message=f"{host[:100]!r} is not a host this server answers for (ALLOWED_HOSTS)")
    else:
        body = _body(code="bad_request", message=str(exception or "")[:300] or "bad request")
    if request.path.startswith("/v1/"):
        body = {"success": False, **body}
    return JsonResponse(body, status=400)


class BoundedJSONParser(JSONParser):
    """JSON bodies; one nested beyond what the parser can walk is a 400 naming the body, not a 500
    (the services refuse anything nested over 64 levels with the field; this is far past that)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise exceptions.ParseError("body: JSON nested too deeply (at most 64 levels)") from None


class TokenApiView:
    """Mixin for APIView/ViewSet classes of the management API.

    `scope` names the scope every action needs, or `scopes` maps action (or HTTP method) names to
    scopes. Views stay thin: validate with an input serializer, call a service, render with an
    output serializer.
    """

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [HasScope]
    throttle_classes = [TokenRateThrottle]
    renderer_classes = [JSONRenderer]
    parser_classes = [BoundedJSONParser]
    scope: str = ""
    scopes: dict[str, str] = {}

    def scope_for(self, request) -> str:
        action = getattr(self, "action", None)
        return self.scopes.get(action or "", "") or self.scopes.get(request.method, "") or self.scope

    def get_exception_handler(self):
        return api_exception_handler

    def get_object(self):
        key = self.lookup_url_kwarg or self.lookup_field
        self.kwargs[key] = id_or_404(self.kwargs[key])
        try:
            return super().get_object()
        except Http404:
            name = self.get_queryset().model._meta.verbose_name
            raise exceptions.NotFound(f"no {name} with id {self.kwargs[key]}") from None

    def permission_denied(self, request, message=None, code=None):
        if request.auth is None:  # no or a bad token: 401 with WWW-Authenticate, never 403
            raise exceptions.NotAuthenticated("missing API token (Authorization: Bearer <token>)")
        super().permission_denied(request, message=message, code=code)

    def initial(self, request, *args, **kwargs):
        # A method this route does not offer is a 405 (with Allow), before any scope is looked for.
        method = request.method.lower()
        if method not in self.http_method_names or not hasattr(self, method):
            raise exceptions.MethodNotAllowed(request.method)
        # The body is read here, before authentication: its size limit is enforced while reading
        # (also when it came chunked, without Content-Length) and gzip is inflated, as the
        # tracking API does; the parser then reads these bytes.
        raw = body_read(request, max_bytes=settings.API["MAX_BODY_BYTES"])
        request._stream = io.BytesIO(raw) if raw else None  # what DRF's parsers read (its JSON parser:
        request._request._body = raw  # HttpRequest.body, which is these bytes once it was read)
        super().initial(request, *args, **kwargs)

    def dispatch(self, request, *args, **kwargs):
        started = time.monotonic()
        response = super().dispatch(request, *args, **kwargs)
        token = getattr(getattr(self, "request", None), "_auth", None)
        if isinstance(token, ApiToken):
            api_request_record(token=token, method=request.method, path=request.path, status=response.status_code,
                               duration_ms=int((time.monotonic() - started) * 1000), ip=client_ip(request.META))
        return response
