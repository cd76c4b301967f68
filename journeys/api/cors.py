"""Cross-origin calls to the tracking API (/v1/) from browsers: a website's analytics SDK
(Segment's analytics.js, RudderStack's JavaScript SDK) posts from the shop's origin, and the
browser shows the answer to the SDK only when it carries CORS headers; a JSON body with an
Authorization header is preflighted first (OPTIONS), and without an answer nothing is sent.

Only /v1/ answers cross-origin, and it authenticates by write key (or API token) alone, never by
a cookie: a credentialed call from any page can do nothing a write key cannot. EVENT_API_CORS_ORIGINS
narrows the origins ("*", the default, is any)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.utils.cache import patch_vary_headers

PREFIX = "/v1/"
PREFLIGHT_MAX_AGE = 7200  # seconds; Chromium caps a cached preflight at two hours


def _allowed(origin: str) -> bool:
    origins = settings.EVENT_API_CORS_ORIGINS
    return "*" in origins or origin in origins


class TrackingCorsMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(PREFIX):
            return self.get_response(request)
        origin = request.META.get("HTTP_ORIGIN", "")
        if request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in request.META:
            response = HttpResponse(status=204)  # a preflight never reaches a view
            if origin and _allowed(origin):
                response["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
                asked = request.META.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
                response["Access-Control-Allow-Headers"] = asked[:1000] or "Authorization, Content-Type"
                response["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
        else:
            response = self.get_response(request)
        patch_vary_headers(response, ("Origin",))
        if origin and _allowed(origin):
            response["Access-Control-Allow-Origin"] = origin
            response["Access-Control-Allow-Credentials"] = "true"
            response["Access-Control-Expose-Headers"] = "Retry-After, X-RateLimit-Reset"
        return response
