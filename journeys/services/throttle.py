"""Login throttling (django-axes): the lockout backend (the client address: journeys.services.client_ip)."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from django.http import HttpRequest


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
