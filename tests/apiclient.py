"""Calling the management API (/api/v1) the way a client's backend does: a bearer token."""

from __future__ import annotations

import json
from datetime import datetime

from rest_framework.test import APIClient

from journeys.choices import ApiScope
from journeys.services.api_tokens import token_create

ALL_SCOPES = list(ApiScope.values)


def make_token(*scopes: str, name: str | None = None, expires_at: datetime | None = None, source=None,
               rate_limit: int | None = None):
    """A token and its secret value (known only at creation)."""
    scopes = list(scopes) or ALL_SCOPES
    if ApiScope.TRACK in scopes and source is None:
        from tests.factories import make_source

        source, _ = make_source(f"src-{name or '-'.join(scopes)}")
    return token_create(name=name or "t-" + "-".join(scopes), scopes=scopes, expires_at=expires_at, source=source,
                        rate_limit=rate_limit)


class Api:
    """`api.post("messages", {...})` -> the response, with `.body` parsed."""

    def __init__(self, key: str | None):
        self.client = APIClient()
        self.key = key

    def call(self, method: str, path: str, body=None, *, key: str | None = "default", headers: dict | None = None,
             raw: bytes | None = None):
        use = self.key if key == "default" else key
        extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in (headers or {}).items()}
        if use is not None:
            extra["HTTP_AUTHORIZATION"] = f"Bearer {use}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        response = self.client.generic(method, f"/api/v1/{path}", data, content_type="application/json", **extra)
        try:
            response.body = json.loads(response.content) if response.content else None
        except ValueError:
            response.body = None
        return response

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.call("POST", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.call("PATCH", path, body, **kw)

    def delete(self, path, body=None, **kw):
        return self.call("DELETE", path, body, **kw)

    def pages(self, path: str, *, between=None) -> list[dict]:
        """Every row of a list endpoint, following its `next` links as a client does; `between()`
        runs before each next page (to insert rows while the client pages)."""
        response, rows = self.get(path), []
        while True:
            assert response.status_code == 200, response.body
            rows += response.body["results"]
            if not response.body["next"]:
                return rows
            if between is not None:
                between()
            response = self.get(response.body["next"].split("/api/v1/", 1)[1])
