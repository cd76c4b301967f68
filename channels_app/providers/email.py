"""Email through Django's SMTP backend: text + HTML, RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import hashlib
import smtplib
import socket

from django.conf import settings as django_settings
from django.core.mail import EmailMultiAlternatives, get_connection

from channels_app.providers.base import (
    OutgoingMessage, PermanentError, Provider, SendResult, TransientError, provider,
)
from journeys.errors import OutboundRefused, OutboundUnreachable
from journeys.services.outbound import outbound_host_check


@provider
class SmtpProvider(Provider):
    """settings: from_email, host, port, username, password_env, use_tls (all optional:
    Django's EMAIL_* settings are the defaults)."""

    name = "smtp"
    kinds = ("email",)
    host_settings = ("host",)

    def send(self, message: OutgoingMessage) -> SendResult:
        s = self.settings
        if s.get("host"):
            # a host typed into the channel (not the deployment's EMAIL_HOST) is an outbound target like a URL
            try:
                outbound_host_check(host=str(s["host"]), port=int(s.get("port") or django_settings.EMAIL_PORT))
            except OutboundRefused as exc:
                raise PermanentError(f"smtp: {exc.message}") from exc
            except OutboundUnreachable as exc:
                raise TransientError(f"smtp: {exc.message}") from exc
        connection = get_connection(
            backend="django.core.mail.backends.smtp.EmailBackend",
            host=s.get("host") or django_settings.EMAIL_HOST,
            port=int(s.get("port") or django_settings.EMAIL_PORT),
            username=s.get("username") or django_settings.EMAIL_HOST_USER,
            password=(self.secret("password", required=False) if s.get("password_env") else django_settings.EMAIL_HOST_PASSWORD),
            use_tls=bool(s.get("use_tls", django_settings.EMAIL_USE_TLS)),
            timeout=float(s.get("timeout") or django_settings.EMAIL_TIMEOUT),
            fail_silently=False,
        )
        # A stable Message-ID: a resend after a crash carries the same id, so receivers can deduplicate.
        digest = hashlib.sha256(message.idempotency_key.encode()).hexdigest()[:20]
        domain = (s.get("from_email") or django_settings.DEFAULT_FROM_EMAIL).rpartition("@")[2] or "localhost"
        message_id = f"<delivery-{message.delivery_id}.{digest}@{domain}>"
        email = EmailMultiAlternatives(
            subject=message.subject, body=message.body,
            from_email=s.get("from_email") or django_settings.DEFAULT_FROM_EMAIL, to=[message.to],
            headers={"Message-ID": message_id, **message.headers}, connection=connection,
        )
        if message.html_body:
            email.attach_alternative(message.html_body, "text/html")
        try:
            email.send()
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            error = TransientError if codes and all(400 <= c < 500 for c in codes) else PermanentError
            raise error(f"recipient refused: {exc.recipients}", status_code=codes[0] if codes else None) from exc
        except smtplib.SMTPResponseException as exc:
            error = TransientError if 400 <= exc.smtp_code < 500 else PermanentError
            raise error(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}", status_code=exc.smtp_code) from exc
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, socket.timeout, OSError) as exc:
            raise TransientError(f"SMTP connection: {exc}") from exc
        return SendResult(provider_message_id=message_id)
