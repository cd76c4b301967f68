"""Providers that speak HTTP: a signed JSON webhook and adapters in the shape of common
vendor APIs (Twilio-style form posts for SMS and voice, FCM-style JSON for push,
Slack-style JSON for chat). Each points at a configurable `base_url`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from email.utils import parsedate_to_datetime
from xml.sax.saxutils import escape

from channels_app.providers.base import (
    OutgoingMessage, PermanentError, Provider, SendResult, TransientError, provider,
)
from journeys.errors import OutboundRefused, OutboundUnreachable
from journeys.services.outbound import OutboundSession

DEFAULT_TIMEOUT_S = 10.0


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class HttpProvider(Provider):
    """Shared request/response handling: timeouts and 5xx/429 are transient, other 4xx permanent.
    Requests go through journeys' OutboundSession: public addresses only (unless allow-listed),
    pinned to the checked address, keep-alive between the sends of one provider instance."""

    url_settings = ("base_url", "url")

    def timeout(self) -> float:
        return float(self.settings.get("timeout") or DEFAULT_TIMEOUT_S)

    def base_url(self) -> str:
        url = self.settings.get("base_url") or self.settings.get("url")
        if not url:
            raise PermanentError(f"{self.name}: settings.base_url is required")
        return str(url).rstrip("/")

    def session(self) -> OutboundSession:
        if getattr(self, "_session", None) is None:
            self._session = OutboundSession(timeout=self.timeout())
        return self._session

    def close(self) -> None:
        if getattr(self, "_session", None) is not None:
            self._session.close()
            self._session = None

    def request(self, url: str, *, data: bytes, headers: dict) -> tuple[int, bytes]:
        try:
            response = self.session().post(url, body=data, headers=headers)
        except OutboundRefused as exc:
            raise PermanentError(f"{self.name}: {exc.message}") from exc
        except OutboundUnreachable as exc:
            raise TransientError(exc.message) from exc
        if response.status == 429 or response.status == 408 or response.status >= 500:
            body = response.body[:500].decode("utf-8", "replace")
            raise TransientError(f"HTTP {response.status}: {body}", status_code=response.status,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if response.status >= 300:
            body = response.body[:500].decode("utf-8", "replace")
            raise PermanentError(f"HTTP {response.status}: {body}", status_code=response.status)
        return response.status, response.body

    @staticmethod
    def json_body(raw: bytes) -> dict:
        try:
            value = json.loads(raw or b"{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@provider
class WebhookProvider(HttpProvider):
    """POSTs JSON to settings.url, signed: `X-Signature: sha256=<hex HMAC of "<timestamp>.<body>">`
    with the secret named by settings.secret_env, plus `X-Timestamp` and `Idempotency-Key`."""

    name = "webhook"
    kinds = ("webhook", "in_app", "chat", "sms", "push", "voice", "email")

    def send(self, message: OutgoingMessage) -> SendResult:
        try:
            payload = json.loads(message.body) if message.kind == "webhook" else None
        except ValueError:
            payload = None
        body = json.dumps({
            "id": message.delivery_id, "idempotency_key": message.idempotency_key, "kind": message.kind,
            "to": message.to, "subject": message.subject,
            "payload": payload if payload is not None else {"text": message.body},
            "metadata": message.metadata,
        }, sort_keys=True, default=str).encode()
        timestamp = str(int(time.time()))
        secret = self.secret("secret")
        signature = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        status, raw = self.request(self.base_url(), data=body, headers={
            "Content-Type": "application/json", "X-Timestamp": timestamp, "X-Signature": f"sha256={signature}",
            "Idempotency-Key": message.idempotency_key, "User-Agent": "journey-console",
        })
        return SendResult(provider_message_id=str(self.json_body(raw).get("id") or f"webhook-{message.delivery_id}"),
                          status_code=status)


def webhook_signature_valid(*, secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """For receivers (and tests): check an `X-Signature` header made by WebhookProvider."""
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class TwilioStyle(HttpProvider):
    """Form posts to {base_url}/2010-04-01/Accounts/{account_sid}/<resource>.json with HTTP
    Basic auth (account_sid : token from settings.auth_token_env)."""

    resource = ""

    def fields(self, message: OutgoingMessage) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, message: OutgoingMessage) -> SendResult:
        sid = self.settings.get("account_sid") or ""
        if not sid:
            raise PermanentError(f"{self.name}: settings.account_sid is required")
        token = self.secret("auth_token")
        fields = {"To": message.to, "From": self.settings.get("from_number", ""), **self.fields(message)}
        if message.status_callback_url:
            fields["StatusCallback"] = message.status_callback_url
        auth = base64.b64encode(f"{sid}:{token}".encode()).decode()
        status, raw = self.request(
            f"{self.base_url()}/2010-04-01/Accounts/{urllib.parse.quote(sid)}/{self.resource}.json",
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {auth}",
                     "I-Twilio-Idempotency-Token": message.idempotency_key},
        )
        return SendResult(provider_message_id=str(self.json_body(raw).get("sid") or ""), status_code=status)


@provider
class TwilioSms(TwilioStyle):
    name = "twilio_sms"
    kinds = ("sms",)
    resource = "Messages"

    def fields(self, message):
        return {"Body": message.body}


@provider
class TwilioVoice(TwilioStyle):
    name = "twilio_voice"
    kinds = ("voice",)
    resource = "Calls"

    def fields(self, message):
        voice = escape(self.settings.get("voice", "alice"))
        return {"Twiml": f'<Response><Say voice="{voice}">{escape(message.body)}</Say></Response>'}


@provider
class FcmPush(HttpProvider):
    """FCM HTTP v1 shape: POST {base_url}/v1/projects/{project_id}/messages:send, Bearer token
    from settings.access_token_env, JSON {"message": {"token", "notification", "data"}}."""

    name = "fcm"
    kinds = ("push",)

    def send(self, message: OutgoingMessage) -> SendResult:
        project = self.settings.get("project_id") or ""
        if not project:
            raise PermanentError("fcm: settings.project_id is required")
        body = json.dumps({"message": {
            "token": message.to,
            "notification": {"title": message.subject, "body": message.body},
            "data": {"delivery_id": str(message.delivery_id), **{k: str(v) for k, v in message.metadata.items()}},
        }}).encode()
        status, raw = self.request(
            f"{self.base_url()}/v1/projects/{urllib.parse.quote(project)}/messages:send", data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.secret('access_token')}"},
        )
        return SendResult(provider_message_id=str(self.json_body(raw).get("name") or ""), status_code=status)


@provider
class SlackChat(HttpProvider):
    """Slack Web API shape: POST {base_url}/api/chat.postMessage with a Bearer bot token;
    `{"ok": false}` in a 200 answer is a permanent error (Slack's convention)."""

    name = "slack"
    kinds = ("chat",)

    def send(self, message: OutgoingMessage) -> SendResult:
        body = json.dumps({"channel": message.to, "text": message.body}).encode()
        status, raw = self.request(
            f"{self.base_url()}/api/chat.postMessage", data=body,
            headers={"Content-Type": "application/json; charset=utf-8",
                     "Authorization": f"Bearer {self.secret('bot_token')}"},
        )
        answer = self.json_body(raw)
        if answer.get("ok") is False:
            if answer.get("error") == "ratelimited":
                raise TransientError("slack: ratelimited", status_code=status)
            raise PermanentError(f"slack: {answer.get('error')}", status_code=status)
        return SendResult(provider_message_id=str(answer.get("ts") or ""), status_code=status)
