"""The provider interface and its errors."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar


class ProviderError(Exception):
    """A send failed. `transient` errors are retried (with backoff); others are not."""

    transient: bool = False

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class TransientError(ProviderError):
    """Timeouts, connection errors, 5xx, 429: worth retrying later."""

    transient = True


class PermanentError(ProviderError):
    """4xx, rejected recipient, bad configuration: retrying would fail the same way."""

    transient = False


@dataclass
class OutgoingMessage:
    """Everything a provider needs; built from a Delivery (providers never touch the ORM)."""

    delivery_id: int
    idempotency_key: str
    kind: str
    to: str
    subject: str
    body: str
    html_body: str = ""
    headers: dict = field(default_factory=dict)
    status_callback_url: str = ""
    metadata: dict = field(default_factory=dict)


@dataclass
class SendResult:
    provider_message_id: str = ""
    status_code: int | None = None


class Provider:
    """Sends messages on one channel. `settings` are the channel's non-secret settings;
    `secret(name)` reads the environment variable that `settings[name + '_env']` names
    (or, failing that, the same key of the CHANNEL_SECRETS Django setting).

    One instance serves one dispatcher run: it may keep a connection open between
    messages (an SMTP session, an HTTP keep-alive connection); `close()` releases it."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()
    # Whether messages should carry a signed status-callback URL (signing one costs ~40 us).
    status_callbacks: ClassVar[bool] = False

    def __init__(self, settings: dict):
        self.settings = settings or {}

    def secret(self, name: str, *, required: bool = True) -> str:
        env_name = self.settings.get(f"{name}_env", "")
        value = os.environ.get(env_name, "") if env_name else ""
        if env_name and not value:
            # a secrets setting (filled by a secrets manager at start-up) is the other place secrets may live
            from django.conf import settings as django_settings

            value = str(getattr(django_settings, "CHANNEL_SECRETS", {}).get(env_name, ""))
        if required and not value:
            raise PermanentError(f"secret {name!r} missing: set settings[{name + '_env'!r}] to an environment "
                                 f"variable that holds it (now {env_name or 'unset'})")
        return value

    def send(self, message: OutgoingMessage) -> SendResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> Iterator[SendResult | ProviderError]:
        """Send several messages; yields one outcome per message, in order, as each one is done.

        The dispatcher records each accepted message before it asks for the next outcome, and
        may stop asking (e.g. the breaker opened): messages not reached yet are not sent. So a
        provider sends message n+1 only when outcome n has been taken, unless it uses a bulk
        endpoint, where one request is the unit. This default sends them one by one with
        `send` (over whatever connection the instance keeps)."""
        for message in messages:
            try:
                yield self.send(message)
            except ProviderError as exc:
                yield exc

    def close(self) -> None:
        """Release connections kept between messages (the dispatcher calls it when done)."""

    def __enter__(self) -> Provider:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROVIDERS: dict[str, type[Provider]] = {}


def provider(cls: type[Provider]) -> type[Provider]:
    PROVIDERS[cls.name] = cls
    return cls


def get_provider(name: str, settings: dict) -> Provider:
    try:
        return PROVIDERS[name](settings)
    except KeyError:
        raise PermanentError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
