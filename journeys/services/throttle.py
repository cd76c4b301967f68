"""Login throttling (django-axes): the lockout backend (the client address: journeys.services.client_ip)
and the answer to a locked sign-in."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend
from axes.helpers import get_cool_off
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.timesince import timeuntil


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


def login_lockout(request: HttpRequest, original_response: HttpResponse | None = None,
                  credentials: dict | None = None) -> HttpResponse:
    """django-axes' answer to a locked sign-in (AXES_LOCKOUT_CALLABLE): the lockout page with the
    wait in words ("15 minutes"; axes' own template context has it as ISO 8601, "PT15M"), and
    Retry-After in seconds. Each attempt while locked starts the wait again (axes'
    AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT), so the whole cool-off is the honest answer."""
    cool_off = get_cool_off(request)
    now = timezone.now()
    context = {"cooloff": timeuntil(now + cool_off, now) if cool_off else ""}
    response = render(request, settings.AXES_LOCKOUT_TEMPLATE, context, status=settings.AXES_HTTP_RESPONSE_CODE)
    if cool_off:
        response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response
