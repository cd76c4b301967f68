"""Providers that speak HTTP: a signed JSON webhook and adapters in the shape of common
vendor APIs (Twilio-style form posts for SMS and voice, FCM-style JSON for push,
Slack-style JSON for chat). Each points at a configurable `base_url`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import ClassVar
from xml.sax.saxutils import escape

from channels_app.choices import DEAD_NUMBER_CODES, UNSUBSCRIBED_CODES
from channels_app.providers.base import (
    PROVIDERS, OutgoingMessage, PermanentError, Provider, ProviderError, SendResult, TransientError, provider,
)
from channels_app.providers.limits import PUSH_MAX_BYTES, push_payload, push_size
from journeys.errors import JourneyError, OutboundRefused, OutboundUnreachable
from journeys.services.event_parsing import json_read_storable
from journeys.services.identity import phone_e164
from journeys.services.outbound import OutboundSession, retry_after_seconds
from journeys.services.stream import stream_sign

DEFAULT_TIMEOUT_S = 10.0

logger = logging.getLogger(__name__)


class HttpProvider(Provider):
    """Shared request/response handling: timeouts and 5xx/429 are transient, other 4xx permanent.
    Requests go through journeys' OutboundSession: public addresses only (unless allow-listed),
    pinned to the checked address, keep-alive between the sends of one provider instance."""

    url_settings = ("base_url", "url")
    concurrent = True
    # Whether an answer's status alone says what became of the message (its body only carries the
    # vendor's id or an error text): when the status came and the body was then cut off or stalled
    # past the timeout, the status decides; a 2xx is a sent message, never sent again. Where the
    # body decides (Slack's 200 {"ok": false}), such a message is unanswered: retried with its
    # key on its own channel, never rerouted. (A bulk endpoint's lost results leave each of its
    # messages unanswered too.)
    status_decides: ClassVar[bool] = True

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
            if exc.answer is None or not self.status_decides:
                raise TransientError(exc.message, unanswered=exc.maybe_received) from exc
            logger.warning("%s: the answer's body was lost, its status decides: %s", self.name, exc.message)
            response = exc.answer
        if response.status < 300:
            return response.status, response.body
        body = response.body[:500].decode("utf-8", "replace")
        if response.status in (401, 407):
            # the channel's credentials, not this message: every message would fail alike until the
            # settings are fixed, so it counts toward the breaker (messages wait) instead of failing them all
            raise TransientError(f"HTTP {response.status}: {body} (the vendor refused the channel's credentials: "
                                 "check its secret settings)", status_code=response.status)
        if response.status == 429 or response.status == 408 or response.status >= 500:
            raise TransientError(f"HTTP {response.status}: {body}", status_code=response.status,
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        raise self.refusal(response.status, response.body, f"HTTP {response.status}: {body}")

    def refusal(self, status: int, raw: bytes, error: str) -> PermanentError:
        """The error for a 4xx answer that retrying would not change (`error`: its status and the
        start of its body). A vendor whose answer says the recipient's address is dead or opted
        out says so here (`bounce`, `opt_out`), so the address is not tried again."""
        return PermanentError(error, status_code=status)

    @staticmethod
    def json_body(raw: bytes) -> dict:
        """The provider's JSON answer, or {} when it is not JSON a database can store (NaN, NUL,
        lone surrogates...): its ids are kept on the delivery, and a row PostgreSQL refuses
        would fail the recording of a message already sent."""
        try:
            value = json_read_storable(raw or b"{}", max_bytes=max(len(raw) * 2, 1024 * 1024))
        except JourneyError:
            return {}
        return value if isinstance(value, dict) else {}


@provider
class WebhookProvider(HttpProvider):
    """POSTs JSON to settings.url, signed with the secret named by settings.secret_env two ways
    (README, "Webhook channel signatures"): Standard Webhooks (`webhook-id` = the idempotency key,
    the same on every retry, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
    "id.timestamp.body">`, the key being a `whsec_` secret's decoded bytes or else the secret's own
    bytes), and the older `X-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">` with
    `X-Timestamp`, kept for receivers built on it; plus `Idempotency-Key`.

    Bulk endpoint (optional): with settings.batch_url, a batch goes out as
    `{"messages": [<the single-message document>, ...]}` (at most settings.batch_size, default
    100, a request; signed the same way) and the receiver answers
    `{"results": [{"idempotency_key": ..., "status": 200, "id": ...}, ...]}`: each message
    gets its own outcome (2xx sent; 408, 429 and 5xx retried; other codes failed)."""

    name = "webhook"
    kinds = ("webhook", "in_app", "chat", "sms", "push", "voice", "email")
    url_settings = ("base_url", "url", "batch_url")

    @staticmethod
    def document(message: OutgoingMessage) -> dict:
        """The request's JSON: a webhook message's body is its `payload` when it is written as
        JSON (rendered with JSON-escaped values, templates.template_render), else {"text": body}.
        A body written as JSON that does not parse is refused, never sent in another shape."""
        payload = None
        if message.kind == "webhook" and message.body.lstrip()[:1] in ("{", "["):
            try:
                payload = json.loads(message.body)
            except ValueError as exc:
                raise PermanentError(f"webhook: the body is not valid JSON ({exc})") from None
        return {
            "id": message.delivery_id, "idempotency_key": message.idempotency_key, "kind": message.kind,
            "to": message.to, "subject": message.subject,
            "payload": payload if payload is not None else {"text": message.body},
            "metadata": message.metadata,
        }

    def _post_signed(self, url: str, document: dict, idempotency_key: str) -> tuple[int, bytes]:
        body = json.dumps(document, sort_keys=True, default=str).encode()
        timestamp = str(int(time.time()))
        secret = self.secret("secret")
        signature = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return self.request(url, data=body, headers={
            "Content-Type": "application/json", "X-Timestamp": timestamp, "X-Signature": f"sha256={signature}",
            "webhook-id": idempotency_key, "webhook-timestamp": timestamp,
            "webhook-signature": stream_sign(secret=standard_webhooks_secret(secret), webhook_id=idempotency_key,
                                             timestamp=int(timestamp), body=body),
            "Idempotency-Key": idempotency_key, "User-Agent": "journey-console",
        })

    def send(self, message: OutgoingMessage) -> SendResult:
        status, raw = self._post_signed(self.base_url(), self.document(message), message.idempotency_key)
        return SendResult(provider_message_id=str(self.json_body(raw).get("id") or f"webhook-{message.delivery_id}"),
                          status_code=status)

    def batch_unit(self) -> int:
        return max(1, int(self.settings.get("batch_size") or 100)) if self.settings.get("batch_url") else 1

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult | ProviderError]:
        batch_url = self.settings.get("batch_url")
        if not batch_url:
            yield from super().send_batch(messages)
            return
        size = self.batch_unit()
        for i in range(0, len(messages), size):
            chunk = messages[i : i + size]
            key = hashlib.sha256("\n".join(m.idempotency_key for m in chunk).encode()).hexdigest()
            try:
                status, raw = self._post_signed(batch_url, {"messages": [self.document(m) for m in chunk]}, key)
            except ProviderError as exc:
                for _ in chunk:
                    yield exc
                continue
            results = self.json_body(raw).get("results")
            by_key = {str(r.get("idempotency_key")): r for r in results if isinstance(r, dict)} \
                if isinstance(results, list) else {}
            for message in chunk:
                yield _bulk_outcome(by_key.get(message.idempotency_key), message, status)


def _bulk_outcome(result: dict | None, message: OutgoingMessage, status: int) -> SendResult | ProviderError:
    """One message's outcome in a bulk answer."""
    if result is None:
        return TransientError(f"HTTP {status}: the bulk answer has no result for this message", status_code=status,
                              unanswered=True)
    try:
        code = int(result.get("status") or 200)
    except (TypeError, ValueError):
        code = 0
    if 200 <= code < 300:
        return SendResult(provider_message_id=str(result.get("id") or f"webhook-{message.delivery_id}"), status_code=code)
    error = f"HTTP {code}: {str(result.get('error') or '')[:500]}"
    if code in (408, 429) or code >= 500:
        return TransientError(error, status_code=code, retry_after=retry_after_seconds(str(result.get("retry_after") or "")))
    return PermanentError(error, status_code=code or None)


def standard_webhooks_secret(secret: str) -> str:
    """The channel's secret as a Standard Webhooks library takes it: a `whsec_...` secret as it
    is, any other as `whsec_` + base64 of its bytes (what a receiver passes to `Webhook(...)`)."""
    return secret if secret.startswith("whsec_") else "whsec_" + base64.b64encode(secret.encode()).decode()


def webhook_signature_valid(*, secret: str, timestamp: str, body: bytes, header: str) -> bool:
    """For receivers (and tests): check an `X-Signature` header made by WebhookProvider."""
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header or "")


class TwilioStyle(HttpProvider):
    """Form posts to {base_url}/2010-04-01/Accounts/{account_sid}/<resource>.json with HTTP
    Basic auth (account_sid : token from settings.auth_token_env)."""

    resource = ""
    status_callbacks = True

    def fields(self, message: OutgoingMessage) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def send(self, message: OutgoingMessage) -> SendResult:
        sid = self.settings.get("account_sid") or ""
        if not sid:
            raise PermanentError(f"{self.name}: settings.account_sid is required")
        token = self.secret("auth_token")
        to = phone_e164(message.to)
        if not to:  # the vendor would refuse it (21211) or guess its country
            raise PermanentError(f"{self.name}: {message.to!r} is not an E.164 number ('+' and the country code)")
        fields = {"To": to, "From": self.settings.get("from_number", ""), **self.fields(message)}
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

    def refusal(self, status: int, raw: bytes, error: str) -> PermanentError:
        """Twilio's 4xx answer carries its error `code`: an invalid or non-mobile number (21211,
        21614) is a bounce, an unsubscribed recipient (21610) an opt-out, as in a status callback."""
        code = str(self.json_body(raw).get("code") or "")
        return PermanentError(error, status_code=status, bounce=code in DEAD_NUMBER_CODES,
                              opt_out=code in UNSUBSCRIBED_CODES)


def twilio_style(name: str) -> bool:
    """Whether provider `name` speaks Twilio's API, whose callbacks carry X-Twilio-Signature."""
    return issubclass(PROVIDERS.get(name, Provider), TwilioStyle)


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
        payload = push_payload(title=message.subject, body=message.body, delivery_id=message.delivery_id,
                               metadata=message.metadata)
        if (size := push_size(payload)) > PUSH_MAX_BYTES:  # FCM would answer 400: refused here, saying why
            raise PermanentError(f"fcm: the payload is {size:,} bytes (notification and data as JSON, UTF-8), over "
                                 f"FCM's {PUSH_MAX_BYTES:,}-byte limit")
        body = json.dumps({"message": {"token": message.to, **payload}}, ensure_ascii=False).encode()
        status, raw = self.request(
            f"{self.base_url()}/v1/projects/{urllib.parse.quote(project)}/messages:send", data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.secret('access_token')}"},
        )
        return SendResult(provider_message_id=str(self.json_body(raw).get("name") or ""), status_code=status)

    def refusal(self, status: int, raw: bytes, error: str) -> PermanentError:
        """A registration token FCM no longer knows (`UNREGISTERED`: the app was uninstalled, the
        token expired) or that is not a token at all (`INVALID_ARGUMENT` about `message.token`) is
        a bounce: FCM's documentation says to stop sending to it, so it is suppressed."""
        answer = self.json_body(raw).get("error")
        answer = answer if isinstance(answer, dict) else {}
        details = [d for d in answer.get("details") or [] if isinstance(d, dict)]
        codes = {str(d.get("errorCode") or "") for d in details} | {str(answer.get("status") or "")}
        about_token = "registration token" in str(answer.get("message") or "").lower() or any(
            isinstance(v, dict) and v.get("field") == "message.token"
            for d in details if isinstance(d.get("fieldViolations"), list) for v in d["fieldViolations"])
        dead = "UNREGISTERED" in codes or ("INVALID_ARGUMENT" in codes and about_token)
        return PermanentError(error, status_code=status, bounce=dead)


@provider
class SlackChat(HttpProvider):
    """Slack Web API shape: POST {base_url}/api/chat.postMessage with a Bearer bot token;
    `{"ok": false}` in a 200 answer is a permanent error (Slack's convention)."""

    name = "slack"
    kinds = ("chat",)
    status_decides = False  # a 200 may say {"ok": false}

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
