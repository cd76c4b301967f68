"""Email over SMTP: text + HTML, RFC 8058 one-click unsubscribe headers, a stable Message-ID.

One SMTP session serves every message of a dispatcher run (MAIL/RCPT/DATA per message on
the same connection); a refused recipient fails only its own message, a dropped connection
fails the message in flight (transient: retried later) and the next message reconnects."""

from __future__ import annotations

import binascii
import hashlib
import re
import secrets
import smtplib
import socket
import time
from email.header import Header
from email.utils import formatdate, parseaddr
from functools import partial

from django.conf import settings as django_settings
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.message import sanitize_address

from channels_app.providers.base import (
    OutgoingMessage, PermanentError, Provider, ProviderError, SendResult, TransientError, provider,
)
from journeys.errors import OutboundRefused, OutboundUnreachable
from journeys.services.outbound import host_key, outbound_host_check, socket_closed_by_peer

CONNECTION_ERRORS = (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, socket.timeout, OSError)


# Answers about the channel's own credentials, not about a message: every message would fail the same
# way until someone fixes the settings, so they count toward the breaker (it opens, messages wait)
# instead of failing a whole campaign one message at a time.
SMTP_AUTH_CODES = frozenset({454, 530, 534, 535, 538})
# Answers to RCPT about the recipient's mailbox (450 unavailable, greylisted; 451 local error, greylisted;
# 452 mailbox full): that message waits. Others (421 closing, 454 and the credentials' codes) are about
# the server or the channel and count toward its breaker.
RECIPIENT_CODES = frozenset({450, 451, 452})
# A recipient refused for now is tried again no sooner than this: greylisting lets a sender through
# after some minutes, so the channel's usual backoff (seconds) would spend every attempt in vain.
RECIPIENT_RETRY_S = 600


# RCPT answers that say the mailbox does not exist (RFC 3463 5.1.x: bad mailbox, bad domain; 550/551/553
# without an enhanced code). Others (5.7.x policy or spam blocks, 552/5.2.2 a full mailbox) are about
# this message or this sender, not the address: failed, but the address is not suppressed.
HARD_BOUNCE_CODES = frozenset({550, 551, 553})
_ENHANCED = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})")


def _hard_bounce(code: int, answer: bytes | str) -> bool:
    """Whether an SMTP refusal of a recipient says that its address does not exist."""
    raw = answer.encode() if isinstance(answer, str) else (answer or b"")
    enhanced = _ENHANCED.match(raw)
    if enhanced:
        return enhanced.group(1) == b"5" and enhanced.group(2) == b"1"
    return code in HARD_BOUNCE_CODES


def smtp_error(exc: Exception) -> ProviderError:
    """Ours for an SMTP failure: 4xx answers are transient, 5xx permanent, a lost connection
    transient; an authentication failure is transient (the channel's settings, see above)."""
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code in SMTP_AUTH_CODES:
        return TransientError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}: the server refused the channel's "
                              "credentials (check its username and password_env)", status_code=exc.smtp_code)
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(c in RECIPIENT_CODES for c in codes):  # greylisting, a full mailbox: this recipient, later
            return TransientError(f"recipient refused for now: {exc.recipients}", status_code=codes[0],
                                  retry_after=RECIPIENT_RETRY_S, recipient_only=True)
        if codes and all(400 <= c < 500 for c in codes):
            return TransientError(f"recipient refused: {exc.recipients}", status_code=codes[0])
        answers = [answer for _, answer in exc.recipients.values()]
        return PermanentError(f"recipient refused: {exc.recipients}", status_code=codes[0] if codes else None,
                              bounce=bool(codes) and all(_hard_bounce(c, a) for c, a in zip(codes, answers)))
    if isinstance(exc, smtplib.SMTPResponseException):
        error = TransientError if 400 <= exc.smtp_code < 500 else PermanentError
        return error(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", status_code=exc.smtp_code)
    return TransientError(f"SMTP connection: {exc}")


# An address that needs no encoding (most do): used as it is, without parsing it.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _address(value: str) -> tuple[str, str]:
    """(header form, envelope form) of an address: display names and international domains go
    through Django's sanitize_address (RFC 2047, IDNA). A non-ASCII local part (`jörg@...`,
    RFC 6531) is kept as it is, its domain in IDNA: it can only go with SMTPUTF8 (`send`), never
    as an RFC 2047 encoded-word, which names another mailbox."""
    if _PLAIN_ADDRESS.fullmatch(value):
        return value, value
    name, address = parseaddr(value)
    local, _, domain = address.rpartition("@")
    if not name and local and not local.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise PermanentError(f"invalid address {value!r}: {exc}") from exc
        return f"{local}@{domain}", f"{local}@{domain}"
    try:
        header = sanitize_address(value, django_settings.DEFAULT_CHARSET)
    except ValueError as exc:
        raise PermanentError(f"invalid address {value!r}: {exc}") from exc
    return header, parseaddr(header)[1]


def _smtp_transaction(conn: smtplib.SMTP, sender: str, recipient: str, raw: bytes) -> None:
    """smtplib's sendmail for one recipient, with the envelope addresses given as they go on
    the wire (sendmail parses both again for every message), and the same errors. A server that
    offers PIPELINING (RFC 2920; every common relay and sending service) gets MAIL, RCPT and DATA
    in one write: two round trips a message instead of four, across a network the most of its time.
    An address that is not ASCII goes with MAIL FROM's SMTPUTF8 (RFC 6531), which the server must
    offer (`send` checks), its commands in UTF-8."""
    conn.ehlo_or_helo_if_needed()
    size = f" SIZE={len(raw)}" if conn.does_esmtp and conn.has_extn("size") else ""
    if not (sender.isascii() and recipient.isascii()):
        size += " SMTPUTF8"
        conn.command_encoding = "utf-8"
    try:
        _smtp_commands(conn, sender, recipient, raw, size)
    finally:
        conn.command_encoding = "ascii"


def _smtp_commands(conn: smtplib.SMTP, sender: str, recipient: str, raw: bytes, size: str) -> None:

    def failed(code: int) -> None:
        if code == 421:
            conn.close()
        else:
            try:
                conn.rset()
            except smtplib.SMTPServerDisconnected:
                pass

    envelope = [f"MAIL FROM:<{sender}>{size}", f"RCPT TO:<{recipient}>"]
    pipelined = conn.does_esmtp and conn.has_extn("pipelining")
    replies = _pipelined(conn, [*envelope, "DATA"]) if pipelined else []
    if not pipelined:
        for command in envelope:
            replies.append(conn.docmd(command))
            if replies[-1][0] not in (250, 251):
                break
    code, answer = replies[0]
    if code != 250:
        failed(code)
        raise smtplib.SMTPSenderRefused(code, answer, sender)
    code, answer = replies[1]
    if code not in (250, 251):
        failed(code)
        raise smtplib.SMTPRecipientsRefused({recipient: (code, answer)})
    if pipelined:
        code, answer = replies[2]
        if code != 354:
            failed(code)
            raise smtplib.SMTPDataError(code, answer)
        conn.send(_dot_stuffed(raw))
        code, answer = conn.getreply()
    else:
        code, answer = conn.data(raw)
    if code != 250:
        failed(code)
        raise smtplib.SMTPDataError(code, answer)


def _pipelined(conn: smtplib.SMTP, commands: list[str]) -> list[tuple[int, bytes]]:
    """The commands in one write, then their answers in order (all of them, as RFC 2920 asks: an
    answer left unread would be taken for the next command's). A 421 ends the session: no more
    answers come. A DATA the server took after a refused envelope is ended at once (an empty
    message without recipients), so that the RSET that follows is read as a command."""
    conn.send("".join(f"{command}\r\n" for command in commands))
    replies: list[tuple[int, bytes]] = []
    for _ in commands:
        try:
            replies.append(conn.getreply())
        except smtplib.SMTPServerDisconnected:
            # A server that refuses and hangs up (a drop rule, too many errors): the refusal read
            # is the answer (no message was sent); with none, the session was lost.
            if all(code in (250, 251) for code, _ in replies):
                raise
            conn.close()
            return replies
        if replies[-1][0] == 421:
            return replies
    if replies[-1][0] == 354 and any(code not in (250, 251) for code, _ in replies[:-1]):
        try:
            conn.send(b".\r\n")
            conn.getreply()
        except smtplib.SMTPServerDisconnected:
            conn.close()
    return replies


_LINE_END = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def _dot_stuffed(raw: bytes) -> bytes:
    """A message body as DATA sends it (smtplib's data(): CRLF line ends, a leading dot doubled,
    the final '.')."""
    body = _LEADING_DOT.sub(b"..", _LINE_END.sub(b"\r\n", raw))
    return body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n"


def _header(name: str, value: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise PermanentError(f"the {name} header contains a line break")
    if value.isascii() and len(value) < 900:
        return f"{name}: {value}\r\n".encode()
    return f"{name}: {Header(value, 'utf-8', header_name=name).encode(linesep=chr(13) + chr(10))}\r\n".encode()


def _quoted_printable(text: str) -> bytes:
    return binascii.b2a_qp(text.replace("\r\n", "\n").encode(), istext=True).replace(b"\n", b"\r\n")


_date: list = [None, b""]  # (second, localtime) -> the Date header: formatted once a second, not per message


def _date_header() -> bytes:
    localtime = bool(django_settings.EMAIL_USE_LOCALTIME)
    key = (int(time.time()), localtime)
    if _date[0] != key:
        _date[:] = [key, _header("Date", formatdate(key[0], localtime=localtime))]
    return _date[1]


def mime_bytes(message: OutgoingMessage, *, sender: str, recipient: str, headers: dict) -> bytes:
    """The message as sent: UTF-8 text (and HTML, as multipart/alternative), quoted-printable.
    A recipient that is not ASCII (sent with SMTPUTF8) is written in UTF-8 (RFC 6532).

    Written directly rather than through the email package's generator, which costs ~0.4 ms a
    message (header folding, a regex compiled per boundary): a batch builds thousands. The
    boundary starts with "=_", which quoted-printable content can never contain."""
    to = _header("To", recipient) if recipient.isascii() else f"To: {recipient}\r\n".encode()
    out = [_header("Subject", message.subject), _header("From", sender), to,
           _date_header(),
           *(_header(name, str(value)) for name, value in headers.items()), b"MIME-Version: 1.0\r\n"]
    text = b'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    if not message.html_body:
        return b"".join([*out, text, _quoted_printable(message.body), b"\r\n"])
    boundary = f"=_{secrets.token_hex(16)}".encode()
    html = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    return b"".join([*out, b'Content-Type: multipart/alternative; boundary="', boundary, b'"\r\n\r\n',
                     b"--", boundary, b"\r\n", text, _quoted_printable(message.body), b"\r\n",
                     b"--", boundary, b"\r\n", html, _quoted_printable(message.html_body), b"\r\n",
                     b"--", boundary, b"--\r\n"])


# Postmark's SMTP relays (smtp.postmarkapp.com, smtp-broadcasts.postmarkapp.com) and the metadata key
# under which our Message-ID rides (Postmark keys are at most 20 characters).
POSTMARK_SMTP_DOMAINS = (".postmarkapp.com",)
POSTMARK_METADATA_KEY = "journeys_message_id"


def message_id_digest(idempotency_key: str) -> str:
    """The part of a delivery's Message-ID made of its idempotency key (`<delivery-<id>.<digest>@domain>`):
    a report that names the Message-ID (a vendor's bounce, channels_app.services.email_events) is taken
    for the delivery only when it matches, so a guessed id names no message."""
    return hashlib.sha256(idempotency_key.encode()).hexdigest()[:20]


class _PinnedSMTP(smtplib.SMTP):
    """An SMTP client that connects to `address`, the one the outbound check passed, instead of
    resolving the host name again (a rebinding DNS server could answer a loopback or private
    address the second time). The name stays the session's host: STARTTLS sends it as SNI and
    verifies the certificate against it. An empty address: the name, resolved as usual."""

    def __init__(self, host: str = "", port: int = 0, *, address: str = "", **kwargs):
        self._address = address
        super().__init__(host, port, **kwargs)

    def _get_socket(self, host, port, timeout):
        return super()._get_socket(self._address or host, port, timeout)


class _PinnedSMTPSSL(_PinnedSMTP, smtplib.SMTP_SSL):
    """The same over implicit TLS (EMAIL_USE_SSL): SMTP_SSL wraps the socket with the name."""


class PinnedEmailBackend(EmailBackend):
    """Django's SMTP backend whose connections go to `address` (see _PinnedSMTP)."""

    def __init__(self, *, address: str = "", **kwargs):
        super().__init__(**kwargs)
        self.address = address

    @property
    def connection_class(self):
        return partial(_PinnedSMTPSSL if self.use_ssl else _PinnedSMTP, address=self.address)


@provider
class SmtpProvider(Provider):
    """settings: from_email, host, port, username, password_env, use_tls, timeout (all
    optional: Django's EMAIL_* settings are the defaults, except that EMAIL_HOST_USER and
    EMAIL_HOST_PASSWORD are used only with EMAIL_HOST on EMAIL_PORT, never with a host or port
    the channel names)."""

    name = "smtp"
    kinds = ("email",)
    host_settings = ("host",)
    concurrent = True

    def __init__(self, settings: dict):
        super().__init__(settings)
        self._backend = None  # Django's SMTP EmailBackend, open while messages flow
        self._sender: tuple[str, str] | None = None

    def _open(self):
        """The session, opened on first use, and again after a dropped connection or one the server
        closed while it was idle (a 421 for an idle timeout, then its end: a fresh session, not a
        failed message)."""
        if self._backend is not None and self._backend.connection is not None:
            sock = getattr(self._backend.connection, "sock", None)
            if sock is not None and not socket_closed_by_peer(sock):
                return self._backend
            self._drop()
        s = self.settings
        host = str(s.get("host") or django_settings.EMAIL_HOST)
        port = int(s.get("port") or django_settings.EMAIL_PORT)
        address = ""
        if s.get("host"):
            # a host typed into the channel (not the deployment's EMAIL_HOST) is an outbound target like a
            # URL: checked whenever a session is opened, and the session goes to the address checked
            try:
                address = outbound_host_check(host=host, port=port)
            except OutboundRefused as exc:
                raise PermanentError(f"smtp: {exc.message}") from exc
            except OutboundUnreachable as exc:
                raise TransientError(f"smtp: {exc.message}") from exc
        # the deployment's own relay (EMAIL_HOST on EMAIL_PORT) is the only server its credentials go to
        relay = host_key(host) == host_key(str(django_settings.EMAIL_HOST)) and port == int(django_settings.EMAIL_PORT)
        username, password = self._credentials(deployment_relay=relay)
        use_tls = bool(s.get("use_tls", django_settings.EMAIL_USE_TLS))
        if relay and password and password == django_settings.EMAIL_HOST_PASSWORD:
            use_tls = use_tls or bool(django_settings.EMAIL_USE_TLS)  # a channel cannot send them in clear text
        backend = PinnedEmailBackend(
            address=address, host=host, port=port, username=username, password=password, use_tls=use_tls,
            timeout=float(s.get("timeout") or django_settings.EMAIL_TIMEOUT or 30), fail_silently=False,
        )
        self._backend = backend
        try:
            backend.open()
        except CONNECTION_ERRORS as exc:  # refused, timed out, 421 at the greeting, 535 at AUTH...
            self._drop()
            raise smtp_error(exc) from exc
        return backend

    def _credentials(self, *, deployment_relay: bool) -> tuple[str, str]:
        """(username, password) for a session: the channel's own (`username`, the secret that
        `password_env` names). The deployment's EMAIL_HOST_USER / EMAIL_HOST_PASSWORD fill in only
        for the deployment's own relay: a channel that names another server never hands it the
        deployment's password (whoever edits a channel must not be able to read environment
        secrets, journeys.services.outbound)."""
        username = str(self.settings.get("username") or "")
        password = self.secret("password", required=False) if self.settings.get("password_env") else ""
        if deployment_relay:
            username = username or django_settings.EMAIL_HOST_USER
            password = password or django_settings.EMAIL_HOST_PASSWORD
        return username, password

    def _drop(self) -> None:
        """Forget a broken session (without waiting for a QUIT answer that will not come)."""
        if self._backend is not None and self._backend.connection is not None:
            try:
                self._backend.connection.close()
            except OSError:
                pass
            self._backend.connection = None

    def message_id(self, message: OutgoingMessage) -> str:
        """Stable per delivery: a resend after a crash carries the same id, so receivers can deduplicate."""
        digest = message_id_digest(message.idempotency_key)
        sender = self.settings.get("from_email") or django_settings.DEFAULT_FROM_EMAIL
        domain = parseaddr(sender)[1].rpartition("@")[2]  # the address's, not the display name's
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            domain = ""
        return f"<delivery-{message.delivery_id}.{digest}@{domain or 'localhost'}>"

    def send(self, message: OutgoingMessage) -> SendResult:
        message_id = self.message_id(message)
        sender = self._sender or _address(self.settings.get("from_email") or django_settings.DEFAULT_FROM_EMAIL)
        self._sender = sender
        recipient = _address(message.to)
        raw = mime_bytes(message, sender=sender[0], recipient=recipient[0],
                         headers={"Message-ID": message_id, **self._vendor_headers(message_id), **message.headers})
        backend = self._open()
        if not (sender[1].isascii() and recipient[1].isascii()):
            self._smtputf8_check(backend.connection, message.to)
        try:
            _smtp_transaction(backend.connection, sender[1], recipient[1], raw)
        except CONNECTION_ERRORS as exc:
            # A refused recipient or sender, a refused DATA: smtplib sent RSET and the session goes
            # on. A lost connection (or 421, the server closing): whether the server kept the message
            # is unknown; it is retried later with the same Message-ID, and the next message reconnects.
            answered = isinstance(exc, (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException))
            if not answered or getattr(exc, "smtp_code", None) == 421:
                self._drop()
            error = smtp_error(exc)
            error.unanswered = not answered  # the session was lost mid-transaction: the server may have queued it
            raise error from exc
        return SendResult(provider_message_id=message_id)

    def _vendor_headers(self, message_id: str) -> dict[str, str]:
        """Postmark replaces the Message-ID and reports bounces without it: through its SMTP relay a
        message carries ours as metadata (X-PM-Metadata-..., which Postmark takes off and returns in its
        bounce and complaint webhooks), so they name the message (channels_app.services.email_events)."""
        host = str(self.settings.get("host") or django_settings.EMAIL_HOST).strip().rstrip(".").lower()
        if not host.endswith(POSTMARK_SMTP_DOMAINS):
            return {}
        return {f"X-PM-Metadata-{POSTMARK_METADATA_KEY}": message_id.strip("<>").partition("@")[0]}

    def _smtputf8_check(self, conn: smtplib.SMTP, to: str) -> None:
        """A non-ASCII address needs a server that offers SMTPUTF8: without it the message fails
        for good, saying so (rewriting the address would send it to another mailbox)."""
        try:
            conn.ehlo_or_helo_if_needed()
        except CONNECTION_ERRORS as exc:
            self._drop()
            raise smtp_error(exc) from exc
        if not (conn.does_esmtp and conn.has_extn("smtputf8")):
            raise PermanentError(f"the address {to!r} is not ASCII and needs SMTPUTF8 (RFC 6531), which the mail "
                                 "server does not offer: not sent")

    def close(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()  # QUIT; Django's backend ignores a dead connection here
            except Exception:  # noqa: BLE001 - closing must never fail a dispatcher run
                self._drop()
            self._backend = None
