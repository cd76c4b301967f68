"""Login throttling (django-axes): the client's address and the lockout backend."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
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


class LoginThrottleBackend(AxesStandaloneBackend):
    """django-axes' lockout check for sign-ins that come from a web request (the admin's and the
    agents' login pages: Django's LoginView always passes the request). A login without a
    request (a management command, the test client's `login()`) has no client to throttle and
    is let through to the next backend instead of failing."""

    def authenticate(self, request: HttpRequest | None, username: str | None = None, password: str | None = None,
                     **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
