"""Cross-origin calls to the tracking API (/v1/, and RudderStack's /beacon/v1/) from browsers: a
website's analytics SDK (Segment's analytics.js, RudderStack's JavaScript SDK) posts from the
shop's origin, and the browser shows the answer to the SDK only when it carries CORS headers; a
JSON body with an Authorization header is preflighted first (OPTIONS), and without an answer
nothing is sent at all.

Answers are never credentialed (no Access-Control-Allow-Credentials; neither SDK sends cookies),
so a page elsewhere can never read an answer made with a signed-in user's cookie.
EVENT_API_CORS_ORIGINS lists the origins whose pages may read the answers ("*", the default: any).
It does not stop a page from sending: the write key is what admits an event."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.utils.cache import patch_vary_headers

PREFIXES = ("/v1/", "/beacon/v1/")
PREFLIGHT_MAX_AGE = 7200  # seconds; Chromium caps a cached preflight at two hours
_DEFAULT_HEADERS = "Authorization, Content-Type, Content-Encoding, AnonymousId"


def _allow_origin(origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for this request's Origin, or None."""
    origins = settings.EVENT_API_CORS_ORIGINS
    if "*" in origins:
        return "*"
    if origin and origin.lower() in {o.lower() for o in origins}:
        return origin
    return None


class TrackingCorsMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if not request.path_info.startswith(PREFIXES):
            return self.get_response(request)
        allow = _allow_origin(request.META.get("HTTP_ORIGIN", ""))
        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            response = HttpResponse(status=204)  # a preflight never reaches a view
            del response["Content-Type"]
            if allow:
                asked = request.META.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
                response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                response["Access-Control-Allow-Headers"] = asked if 0 < len(asked) <= 2000 else _DEFAULT_HEADERS
                response["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        else:
            response = self.get_response(request)
        if allow:
            response["Access-Control-Allow-Origin"] = allow
            response["Access-Control-Expose-Headers"] = "Retry-After, X-RateLimit-Reset"
        if allow != "*":
            patch_vary_headers(response, ("Origin",))
        return response
