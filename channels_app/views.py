"""Public endpoints reached by customers and providers. Every one carries a signed token:
a bad or expired token gets 400 and nothing is recorded."""

from __future__ import annotations

import base64
import hashlib
import hmac
from xml.sax.saxutils import escape as xml_escape

from django.http import (
    HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden, HttpResponseNotFound, HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from channels_app.models import Channel
from channels_app.providers.http import twilio_style
from channels_app.selectors import delivery_channel
from channels_app.services import inbound_sms_handle, preferences_get, preferences_save, unsubscribe_apply
from channels_app.services.consent import sms_keyword_action
from channels_app.services.links import BadLink, absolute, link_load
from channels_app.services.tracking import (
    CallbackRefused, delivery_click_record, delivery_open_record, delivery_status_record,
)
from journeys.errors import JourneyError, PayloadTooLarge, SecretUnavailable
from journeys.models import Customer
from journeys.services.event_parsing import check_storable_text, json_read_storable
from journeys.services.identity import phone_normalize
from journeys.services.outbound import outbound_secret_read

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _bad(request: HttpRequest, error: BadLink, status: int = 400) -> HttpResponse:
    return render(request, "channels_app/link_invalid.html", {"error": str(error)}, status=status)


def _erased(request: HttpRequest) -> HttpResponse:
    """A link of someone erased since: nothing is stored about them any more, nor will be."""
    return _bad(request, BadLink("this link no longer works: the profile it was made for was erased"), status=410)


@csrf_exempt  # RFC 8058: mail clients POST "List-Unsubscribe=One-Click" without a CSRF token
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows a confirmation (link scanners must not unsubscribe anyone); POST unsubscribes."""
    try:
        data = link_load(purpose="unsubscribe", token=token)
    except BadLink as exc:
        return _bad(request, exc)
    customer = get_object_or_404(Customer, pk=data.get("c"))
    if customer.erased_at is not None:
        return _erased(request)
    if request.method == "POST":
        one_click = request.POST.get("List-Unsubscribe") == "One-Click"
        unsubscribe_apply(customer=customer, channel_kind=data.get("k") or "", topic_slug=data.get("t"),
                          source="one_click_unsubscribe" if one_click else "unsubscribe_link")
        if one_click:
            return HttpResponse("unsubscribed", content_type="text/plain")
        return render(request, "channels_app/unsubscribe.html", {"done": True, "token": token, "data": data})
    return render(request, "channels_app/unsubscribe.html", {"done": False, "token": token, "data": data})


@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    """The preference centre: the customer sees and changes their choices."""
    try:
        data = link_load(purpose="preferences", token=token)
    except BadLink as exc:
        return _bad(request, exc)
    customer = get_object_or_404(Customer, pk=data.get("c"))
    if customer.erased_at is not None:
        return _erased(request)
    saved = False
    if request.method == "POST":
        checked = {key for key in request.POST if key.startswith("t:")}
        preferences_save(customer=customer, checked=checked, do_not_contact=bool(request.POST.get("do_not_contact")),
                         personalization=bool(request.POST.get("personalization")))
        saved = True
    return render(request, "channels_app/preferences.html",
                  {"prefs": preferences_get(customer=customer), "saved": saved, "customer": customer})


def open_pixel(request: HttpRequest, token: str) -> HttpResponse:
    try:
        data = link_load(purpose="open", token=token)
    except BadLink:
        return HttpResponseBadRequest("bad link")
    delivery_open_record(delivery_id=data["d"])
    response = HttpResponse(PIXEL, content_type="image/gif")
    response["Cache-Control"] = "no-store"
    return response


def click(request: HttpRequest, token: str) -> HttpResponse:
    try:
        data = link_load(purpose="click", token=token)
    except BadLink as exc:
        return _bad(request, exc)
    url = data["u"]
    if not url.startswith(("http://", "https://")):
        return HttpResponseBadRequest("bad link")
    delivery_click_record(delivery_id=data["d"], url=url)
    return HttpResponseRedirect(url)


@csrf_exempt
@require_http_methods(["POST"])
def status_callback(request: HttpRequest, token: str) -> HttpResponse:
    """Providers report delivered / bounced / failed (Twilio's MessageStatus or CallStatus form
    field, or JSON {"status": ...}). On a Twilio-style channel that names an auth token, the post
    must carry Twilio's X-Twilio-Signature (as inbound SMS), and a MessageSid / CallSid must be the
    delivery's own: else 403 and nothing is recorded."""
    try:
        data = link_load(purpose="status", token=token)
    except BadLink:
        return HttpResponseBadRequest("bad signature")
    channel = delivery_channel(delivery_id=data["d"])
    if channel is not None and twilio_style(channel.provider) and (refused := _twilio_refusal(
            request, channel, refuse=HttpResponseForbidden,
            why="X-Twilio-Signature: missing, or not Twilio's signature of this URL and form with the channel's "
                "auth token")):
        return refused
    if request.content_type == "application/json":
        try:
            body = json_read_storable(request.body or b"{}")
        except JourneyError as exc:
            return HttpResponseBadRequest(str(exc))
        if not isinstance(body, dict):
            return HttpResponseBadRequest("the body must be a JSON object")
    else:
        body = request.POST
    status = body.get("status") or body.get("MessageStatus") or body.get("CallStatus") or ""
    if not isinstance(status, str):
        return HttpResponseBadRequest("status must be text")
    detail = str(body.get("detail") or body.get("ErrorCode") or "")[:1000]
    sid = str(body.get("MessageSid") or body.get("CallSid") or body.get("SmsSid") or "")[:255]
    if "\x00" in status or "\x00" in detail or "\x00" in sid:  # a form post's %00: PostgreSQL stores no NUL in text
        return HttpResponseBadRequest("status/detail: contains a NUL character (\\u0000), which cannot be stored")
    try:
        delivery = delivery_status_record(delivery_id=data["d"], status=status, detail=detail, provider_id=sid)
    except CallbackRefused as exc:
        return HttpResponseForbidden(str(exc))
    return JsonResponse({"ok": delivery is not None, "status": getattr(delivery, "status", None)})


def twilio_signature(*, auth_token: str, url: str, params: dict) -> str:
    """Twilio's request signature: base64(HMAC-SHA1(token, url + sorted key+value pairs))."""
    payload = url + "".join(f"{key}{params[key]}" for key in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def _twilio_refusal(request: HttpRequest, channel: Channel, *, refuse: type[HttpResponse] = HttpResponseBadRequest,
                    why: str = "bad signature") -> HttpResponse | None:
    """When the channel names an auth token, Twilio's X-Twilio-Signature must match: None when it
    does (or the channel names none), else the answer refusing the request (`refuse(why)`). A named
    token that cannot be read (unset, or not a JOURNEYS_SECRET_ variable) refuses everything."""
    env_name = (channel.settings or {}).get("auth_token_env")
    if not env_name:
        return None
    try:
        auth_token = outbound_secret_read(name=str(env_name))
    except SecretUnavailable:
        return HttpResponseForbidden("the channel's auth token is not configured")
    params = {k: request.POST[k] for k in request.POST}
    given = request.headers.get("X-Twilio-Signature", "")
    # Twilio signs the URL it was given (PUBLIC_BASE_URL); behind a proxy the request's own may differ.
    urls = {absolute(request.get_full_path()), request.build_absolute_uri()}
    if not any(hmac.compare_digest(twilio_signature(auth_token=auth_token, url=url, params=params), given)
               for url in urls):
        return refuse(why)
    return None


@csrf_exempt
@require_http_methods(["POST"])
def inbound_sms(request: HttpRequest, token: str) -> HttpResponse:
    """Inbound SMS (Twilio form post): STOP/START/HELP, and customers' answers to agents (see
    inbound_sms_handle). The URL carries a signed channel id; when the channel names an auth
    token, Twilio's X-Twilio-Signature must match too."""
    try:
        data = link_load(purpose="inbound", token=token)
    except BadLink:
        return HttpResponseBadRequest("bad signature")
    channel = get_object_or_404(Channel, pk=data.get("ch"))
    if refused := _twilio_refusal(request, channel):
        return refused
    fields = {name: request.POST.get(name, "") for name in ("From", "Body", "MessageSid")}
    try:  # a NUL (%00) is no text PostgreSQL stores: say which field holds it
        check_storable_text(fields, field="")
    except JourneyError as exc:
        return HttpResponseBadRequest(str(exc))
    from_number = fields["From"]
    if not phone_normalize(from_number):  # whose STOP? never every customer without a number
        return HttpResponseBadRequest("From: the sender's phone number is required")
    result = inbound_sms_handle(channel=channel, from_number=from_number, body=fields["Body"],
                                message_id=fields["MessageSid"])
    action = result["action"]
    if action == "repeated":  # Twilio retried (the first answer may never have reached it): the same answer
        # again, the keyword's confirmation, with nothing applied twice
        result = sms_keyword_action(channel=channel, body=fields["Body"])
        action = "repeated" if result["action"] == "ignored" else result["action"]
    reply = {"opted_out": "You are unsubscribed and will get no more messages. Reply START to resubscribe.",
             "opted_in": "You are subscribed again. Reply STOP to unsubscribe."}.get(action, result.get("reply", ""))
    twiml = f"<Response>{f'<Message>{xml_escape(reply)}</Message>' if reply else ''}</Response>"
    return HttpResponse(twiml, content_type="text/xml")


EMAIL_EVENTS_MAX_BODY = 2 * 1024 * 1024  # below DATA_UPLOAD_MAX_MEMORY_SIZE; SendGrid's batches are far smaller


def _basic_password(request: HttpRequest) -> str | None:
    """The password of an `Authorization: Basic` header (the user name is not checked), None without one."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        return None


@csrf_exempt
@require_http_methods(["POST"])
def email_events(request: HttpRequest, channel_id: int) -> HttpResponse:
    """Bounces, complaints and delivery receipts posted by an email vendor (Amazon SES through SNS,
    SendGrid, Postmark, Mailgun) for an email channel whose settings name `events_password_env`:
    HTTP Basic auth with that password (any user name). See channels_app.services.email_events."""
    from channels_app.services.email_events import EmailEventsRefused, email_events_ingest

    channel = Channel.objects.filter(pk=channel_id, kind="email").first()
    env_name = (channel.settings or {}).get("events_password_env") if channel is not None else None
    if not env_name:
        return HttpResponseNotFound("no email events endpoint here: the email channel with this id does not exist "
                                    "or its settings name no events_password_env")
    try:
        password = outbound_secret_read(name=str(env_name))
    except SecretUnavailable:
        return HttpResponseForbidden("the channel's events password is not configured on the server")
    given = _basic_password(request)
    if given is None:
        response = HttpResponse("HTTP Basic authentication is required (the password the channel's "
                                "events_password_env names)", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Basic realm="email events", charset="UTF-8"'
        return response
    if not hmac.compare_digest(given.encode(), password.encode()):
        return HttpResponseForbidden("wrong password for this channel's email events")
    try:
        size = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        size = 0
    if size > EMAIL_EVENTS_MAX_BODY or len(request.body) > EMAIL_EVENTS_MAX_BODY:
        return HttpResponse(f"the body is over the limit of {EMAIL_EVENTS_MAX_BODY:,} bytes", status=413,
                            content_type="text/plain")
    try:
        payload = json_read_storable(request.body or b"", max_bytes=EMAIL_EVENTS_MAX_BODY)
        result = email_events_ingest(channel_id=channel.pk, payload=payload)
    except PayloadTooLarge as exc:
        return HttpResponse(str(exc), status=413, content_type="text/plain")
    except JourneyError as exc:
        return HttpResponseBadRequest(str(exc))
    return JsonResponse(result, status=200 if result["ok"] else 503)
