"""GET /metrics: the operational figures in Prometheus' text format (journeys.console.metrics),
for a monitoring system to scrape and alert on (docs/SCALING.md, "On call").

Open to an API token with the `metrics:read` scope (Authorization: Bearer ..., recorded in the
access log like any token call) or to requests from METRICS_ALLOWED_IPS (the client's address as
TRUSTED_PROXIES reads it). Anything else: 401 (no or a bad token) or 403 (a token without the
scope). Here, outside the apps, because it reads journeys and the channels app alike."""

from __future__ import annotations

import time
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from journeys.choices import ApiScope
from journeys.console.metrics import metrics_collect, metrics_text
from journeys.errors import AuthenticationFailed
from journeys.services.api_tokens import api_request_record, token_authenticate, token_has_scope
from journeys.services.client_ip import client_ip, network_parse

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@lru_cache(maxsize=4)
def _networks(entries: tuple[str, ...]) -> tuple:
    return tuple(network for entry in entries if (network := network_parse(entry)) is not None)


def _from_allowed_address(request: HttpRequest) -> bool:
    networks = _networks(tuple(getattr(settings, "METRICS_ALLOWED_IPS", ()) or ()))
    if not networks:
        return False
    address = network_parse(client_ip(request.META) or "")
    return address is not None and any(address.subnet_of(n) for n in networks if n.version == address.version)


def _refused(status: int, message: str) -> HttpResponse:
    response = HttpResponse(message + "\n", status=status, content_type="text/plain; charset=utf-8")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    started = time.monotonic()
    if request.method not in ("GET", "HEAD"):
        response = _refused(405, "use GET")
        response["Allow"] = "GET, HEAD"
        return response
    token = None
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer":
            return _refused(401, "use Authorization: Bearer <token>")
        try:
            token = token_authenticate(key=value.strip())
        except AuthenticationFailed as exc:
            return _refused(401, exc.message)
        if not token_has_scope(token=token, scope=ApiScope.METRICS_READ):
            response = _refused(403, f"this token lacks the {str(ApiScope.METRICS_READ)!r} scope")
            api_request_record(token=token, method=request.method, path=request.path, status=403,
                               duration_ms=int((time.monotonic() - started) * 1000), ip=client_ip(request.META))
            return response
    elif not _from_allowed_address(request):
        return _refused(401, "missing API token (Authorization: Bearer <token> with the metrics:read scope)")
    response = HttpResponse(metrics_text(metrics_collect()), content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    if token is not None:
        api_request_record(token=token, method=request.method, path=request.path, status=200,
                           duration_ms=int((time.monotonic() - started) * 1000), ip=client_ip(request.META))
    return response
