"""Posts as Twilio makes them: a form (or a JSON body) to the URL Twilio was given, signed with
X-Twilio-Signature over that URL and the form's fields (channels_app.views.twilio_signature)."""

from __future__ import annotations

from urllib.parse import urlsplit

from channels_app.views import twilio_signature


def twilio_post(client, url: str, params: dict, *, token: str, json: bool = False, signature: str | None = None):
    """POST `params` to `url` (absolute, as the product gave it) as Twilio does; `signature` replaces
    the right one (a forgery); json=True sends them as a JSON body (signed over the URL alone)."""
    parts = urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    if signature is None:
        signature = twilio_signature(auth_token=token, url=url, params={} if json else params)
    if json:
        return client.post(path, params, content_type="application/json", HTTP_X_TWILIO_SIGNATURE=signature)
    return client.post(path, params, HTTP_X_TWILIO_SIGNATURE=signature)
