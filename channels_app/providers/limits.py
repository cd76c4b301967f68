"""What a vendor refuses for its size, checked when a message is rendered (sending.py: a clear
`template_error` naming the limit, and a 422 on the messages API) rather than from a vendor error.

Push: FCM and APNs take at most 4,096 bytes of payload, measured as the JSON they get (UTF-8).
SMS: a text is sent in segments: GSM-7 (160 characters alone, 153 each once split; `^{}[~]|€\\`
take two) or, with any other character, UCS-2 (70 alone, 67 each, in UTF-16 code units: an
emoji takes two). Carriers and vendors cap a message's segments (Twilio: 10 recommended,
1,600 characters at most); SMS_MAX_SEGMENTS (10 by default) is ours."""

from __future__ import annotations

import json

from django.conf import settings

from channels_app.choices import ChannelKind

PUSH_MAX_BYTES = 4096
SMS_MAX_SEGMENTS_DEFAULT = 10
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENDED = set("^{}\\[~]|€\f")


def push_payload(*, title: str, body: str, delivery_id: int | None, metadata: dict) -> dict:
    """A push message as the vendor gets and counts it: the notification (title and body) and its
    data (the delivery id and the message's metadata; FCM data values are strings, a missing one is
    left out). The render-time check and the provider build it here, so both measure the same."""
    return {"notification": {"title": title, "body": body},
            "data": {"delivery_id": str(delivery_id), **{k: str(v) for k, v in metadata.items() if v is not None}}}


def push_size(payload: dict) -> int:
    """A push payload's size as FCM / APNs count it: its JSON, UTF-8 encoded."""
    return len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())


def sms_segments(text: str) -> tuple[str, int]:
    """(encoding, segments) of an SMS text: "GSM-7" or "UCS-2", and how many parts it is sent in."""
    if all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text):
        units, single, multi = sum(2 if c in GSM7_EXTENDED else 1 for c in text), 160, 153
        encoding = "GSM-7"
    else:
        units, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
        encoding = "UCS-2"
    return encoding, (1 if units <= single else -(-units // multi))


def sms_max_segments() -> int:
    return int(getattr(settings, "SMS_MAX_SEGMENTS", SMS_MAX_SEGMENTS_DEFAULT))


def size_problem(*, kind: str, subject: str, body: str, delivery_id: int | None = None,
                 metadata: dict | None = None) -> str:
    """Why a rendered message is too large for its channel kind ("" when it fits). A push counts
    its data too (`push_payload`: the delivery id and `metadata`, as the provider sends them)."""
    if kind == ChannelKind.PUSH:
        size = push_size(push_payload(title=subject, body=body, delivery_id=delivery_id, metadata=metadata or {}))
        if size > PUSH_MAX_BYTES:
            return (f"the push payload would be {size:,} bytes (notification and data as JSON, UTF-8), over the "
                    f"{PUSH_MAX_BYTES:,}-byte limit of FCM and APNs: shorten the template or the data it shows")
    if kind == ChannelKind.SMS:
        encoding, segments = sms_segments(body)
        if segments > sms_max_segments():
            return (f"the SMS would be {segments} segments ({len(body):,} characters, {encoding}), over the "
                    f"maximum of {sms_max_segments()} (SMS_MAX_SEGMENTS): shorten the template or the data it shows")
    return ""
