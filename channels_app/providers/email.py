"""Email over SMTP: text + HTML, RFC 8058 one-click unsubscribe headers, a stable Message-ID.

One SMTP session serves every message of a dispatcher run (MAIL/RCPT/DATA per message on
the same connection); a refused recipient fails only its own message, a dropped connection
fails the message in flight (transient: retried later) and the next message reconnects."""

from __future__ import annotations

import hashlib
import smtplib
import socket

from django.conf import settings as django_settings
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.mail.message import sanitize_address

from channels_app.providers.base import (
    OutgoingMessage, PermanentError, Provider, ProviderError, SendResult, TransientError, provider,
)

CONNECTION_ERRORS = (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, socket.timeout, OSError)


def smtp_error(exc: Exception) -> ProviderError:
    """Ours for an SMTP failure: 4xx answers are transient, 5xx permanent, a lost connection transient."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        error = TransientError if codes and all(400 <= c < 500 for c in codes) else PermanentError
        return error(f"recipient refused: {exc.recipients}", status_code=codes[0] if codes else None)
    if isinstance(exc, smtplib.SMTPResponseException):
        error = TransientError if 400 <= exc.smtp_code < 500 else PermanentError
        return error(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", status_code=exc.smtp_code)
    return TransientError(f"SMTP connection: {exc}")


@provider
class SmtpProvider(Provider):
    """settings: from_email, host, port, username, password_env, use_tls, timeout (all
    optional: Django's EMAIL_* settings are the defaults)."""

    name = "smtp"
    kinds = ("email",)

    def __init__(self, settings: dict):
        super().__init__(settings)
        self._backend = None  # Django's SMTP EmailBackend, open while messages flow

    def _open(self):
        """The session, opened on first use (and again after a dropped connection)."""
        if self._backend is not None and self._backend.connection is not None:
            return self._backend
        s = self.settings
        backend = get_connection(
            backend="django.core.mail.backends.smtp.EmailBackend",
            host=s.get("host") or django_settings.EMAIL_HOST,
            port=int(s.get("port") or django_settings.EMAIL_PORT),
            username=s.get("username") or django_settings.EMAIL_HOST_USER,
            password=(self.secret("password", required=False) if s.get("password_env")
                      else django_settings.EMAIL_HOST_PASSWORD),
            use_tls=bool(s.get("use_tls", django_settings.EMAIL_USE_TLS)),
            timeout=float(s.get("timeout") or django_settings.EMAIL_TIMEOUT or 30),
            fail_silently=False,
        )
        self._backend = backend
        try:
            backend.open()
        except CONNECTION_ERRORS as exc:  # refused, timed out, 421 at the greeting, 535 at AUTH...
            self._drop()
            raise smtp_error(exc) from exc
        return backend

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
        digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:20]
        domain = (self.settings.get("from_email") or django_settings.DEFAULT_FROM_EMAIL).rpartition("@")[2]
        return f"<delivery-{message.delivery_id}.{digest}@{domain or 'localhost'}>"

    def send(self, message: OutgoingMessage) -> SendResult:
        message_id = self.message_id(message)
        email = EmailMultiAlternatives(
            subject=message.subject, body=message.body,
            from_email=self.settings.get("from_email") or django_settings.DEFAULT_FROM_EMAIL, to=[message.to],
            headers={"Message-ID": message_id, **message.headers},
        )
        if message.html_body:
            email.attach_alternative(message.html_body, "text/html")
        backend = self._open()
        encoding = email.encoding or django_settings.DEFAULT_CHARSET
        try:
            backend.connection.sendmail(
                sanitize_address(email.from_email, encoding),
                [sanitize_address(address, encoding) for address in email.recipients()],
                email.message().as_bytes(linesep="\r\n"),
            )
        except CONNECTION_ERRORS as exc:
            # A refused recipient or sender, a refused DATA: smtplib sent RSET and the session goes
            # on. A lost connection (or 421, the server closing): whether the server kept the message
            # is unknown; it is retried later with the same Message-ID, and the next message reconnects.
            if not isinstance(exc, (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException)) \
                    or getattr(exc, "smtp_code", None) == 421:
                self._drop()
            raise smtp_error(exc) from exc
        return SendResult(provider_message_id=message_id)

    def close(self) -> None:
        if self._backend is not None:
            try:
                self._backend.close()  # QUIT; Django's backend ignores a dead connection here
            except Exception:  # noqa: BLE001 - closing must never fail a dispatcher run
                self._drop()
            self._backend = None
