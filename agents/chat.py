"""The inbound chat webhook: a chat platform (Slack Events API shape) posts what customers
write; the triage bot answers. Thin: authenticate, parse, call chat_message_receive.

Authentication, both required when the channel names a signing secret:
- the URL carries a signed token naming the chat channel (`chat_inbound_url(channel)`);
- `X-Slack-Signature: v0=<hex HMAC-SHA256(secret, "v0:<timestamp>:<body>")>` with
  `X-Slack-Request-Timestamp` within 5 minutes, the secret read from the environment
  variable that `settings.signing_secret_env` names (a named but unset variable refuses all).
"""

from __future__ import annotations

import hashlib
import hmac
import time

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from agents.models import TriageBot
from agents.services.cases import case_answer_receive
from agents.services.triage import chat_message_receive
from channels_app.models import Channel
from channels_app.services.links import BadLink, absolute, link_load, link_sign
from journeys.errors import JourneyError, SecretUnavailable
from journeys.models import Customer
from journeys.services.event_parsing import json_read_storable
from journeys.services.outbound import outbound_secret_read

MAX_SKEW_S = 300
MAX_BODY = 64 * 1024


def chat_inbound_url(channel: Channel) -> str:
    """The URL to give the chat platform for this channel's inbound messages."""
    return absolute(reverse("agents:chat_inbound", args=[link_sign(purpose="chat", data={"ch": channel.pk})]))


def chat_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:".encode() + body, hashlib.sha256).hexdigest()


def _signing_secret(channel: Channel) -> tuple[bool, str]:
    """(required, secret): a named secret that cannot be read (unset, or not a JOURNEYS_SECRET_
    variable) is required and empty, so every request is refused."""
    env_name = (channel.settings or {}).get("signing_secret_env")
    if not env_name:
        return False, ""
    try:
        return True, outbound_secret_read(name=str(env_name))
    except SecretUnavailable:
        return True, ""


def _message(body: dict) -> tuple[str, str, str, str]:
    """(chat id, text, message id, why ignored) from a Slack event or a plain {"chat_id", "text", "message_id"}."""
    if body.get("type") == "event_callback":
        event = body.get("event") or {}
        if event.get("type") != "message" or event.get("bot_id") or event.get("subtype"):
            return "", "", "", "not a customer message"  # our own bot's echo, edits, joins...
        return (str(event.get("channel") or event.get("user") or ""), str(event.get("text") or ""),
                str(body.get("event_id") or event.get("client_msg_id") or event.get("ts") or ""), "")
    return str(body.get("chat_id") or ""), str(body.get("text") or ""), str(body.get("message_id") or ""), ""


def _message_key(channel: Channel, chat_id: str, message_id: str) -> str:
    """A message id is the platform's within one chat (a per-chat counter, Slack's ts): two chats'
    message 1 are two messages. Qualified by channel and chat, hashed when that is too long."""
    key = f"{channel.pk}:{chat_id}:{message_id}"
    return key if len(key) <= 200 else f"{channel.pk}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


@csrf_exempt
@require_POST
def chat_inbound(request: HttpRequest, token: str) -> HttpResponse:
    try:
        data = link_load(purpose="chat", token=token)
    except BadLink:
        return HttpResponseBadRequest("bad signature")
    channel = get_object_or_404(Channel, pk=data.get("ch"), kind="chat")
    if len(request.body) > MAX_BODY:
        return HttpResponse("too large", status=413)
    required, secret = _signing_secret(channel)
    if required:
        stamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not secret or not stamp.isdigit() or abs(time.time() - int(stamp)) > MAX_SKEW_S:
            return HttpResponseForbidden("bad signature")
        given = request.headers.get("X-Slack-Signature", "")
        if not hmac.compare_digest(chat_signature(secret=secret, timestamp=stamp, body=request.body), given):
            return HttpResponseForbidden("bad signature")
    try:
        body = json_read_storable(request.body or b"{}", max_bytes=MAX_BODY)
    except JourneyError as exc:
        return HttpResponseBadRequest(str(exc))
    if not isinstance(body, dict):
        return HttpResponseBadRequest("bad json")
    if body.get("type") == "url_verification":
        return JsonResponse({"challenge": body.get("challenge", "")})
    chat_id, text, message_id, ignored = _message(body)
    if ignored or not text.strip():
        return JsonResponse({"ok": True, "ignored": ignored or "empty message"})
    # Unknown senders and channels without a bot get 200: a chat platform retries anything else.
    customer = Customer.objects.filter(traits__chat_id=chat_id, merged_into__isnull=True).order_by("pk").first()
    if customer is None:
        return JsonResponse({"ok": False, "error": "unknown chat id"})
    key = _message_key(channel, chat_id, message_id) if message_id else None
    bot = TriageBot.objects.filter(channel=channel, active=True).order_by("pk").first()
    if bot is None:
        # No bot hears this channel: an answer to an agent's message still reaches its case.
        case = case_answer_receive(customers=[customer], channel=channel, text=text,
                                   idempotency_key=f"chat:{key}" if key else None)
        if case is None:
            return JsonResponse({"ok": False, "error": "no active triage bot on this channel"})
        return JsonResponse({"ok": True, "conversation": None, "action": "to_agent", "reply": None, "case": case.pk})
    result = chat_message_receive(customer=customer, text=text, bot=bot, external_id=key)
    return JsonResponse({"ok": True, "conversation": result.conversation.pk, "action": result.action,
                         "reply": result.reply.text if result.reply else None,
                         "case": result.case.pk if result.case else None})
