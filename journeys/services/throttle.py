"""The client's address for login throttling (django-axes calls `client_ip`)."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR, or, behind TRUSTED_PROXY_COUNT proxies, the address the outermost trusted
    proxy saw (counted from the right of X-Forwarded-For: what a client writes on the left is
    not trusted)."""
    remote = request.META.get("REMOTE_ADDR", "") or ""
    proxies = int(getattr(settings, "TRUSTED_PROXY_COUNT", 0) or 0)
    if proxies <= 0:
        return remote
    hops = [h.strip() for h in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if h.strip()]
    return hops[-proxies] if len(hops) >= proxies else remote
