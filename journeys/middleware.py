"""Request-wide plumbing of the journeys app."""

from __future__ import annotations

from journeys.selectors import scopes_cached


class PermissionScopeMiddleware:
    """A user's grants (units and workflows they edit) are read once per request, not once per
    permission question (`journeys.selectors.scopes_cached`): an editor's admin pages ask dozens."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with scopes_cached():
            return self.get_response(request)
