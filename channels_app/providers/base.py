"""The provider interface and its errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from journeys.errors import SecretUnavailable
from journeys.services.outbound import SECRET_PREFIX, outbound_secret_name_check, outbound_secret_read


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
    """Sends one message on one channel. `settings` are the channel's non-secret settings;
    `secret(name)` reads the secret that `settings[name + '_env']` names: an environment
    variable called JOURNEYS_SECRET_... (or the same key of the CHANNEL_SECRETS setting), never
    any other variable (journeys.services.outbound).

    `url_settings` / `host_settings` name the settings a provider connects to: they are checked
    when the channel is saved and again before every connection (public addresses only, unless
    allow-listed)."""

    name: ClassVar[str]
    kinds: ClassVar[tuple[str, ...]] = ()
    url_settings: ClassVar[tuple[str, ...]] = ()
    host_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: dict):
        self.settings = settings or {}

    def secret(self, name: str, *, required: bool = True) -> str:
        env_name = self.settings.get(f"{name}_env", "")
        if not env_name:
            if required:
                raise PermanentError(f"secret {name!r} missing: set settings[{name + '_env'!r}] to the name of an "
                                     f"environment variable that holds it ({SECRET_PREFIX}...)")
            return ""
        try:
            outbound_secret_name_check(name=str(env_name))  # a name that is not allowed always fails
            return outbound_secret_read(name=str(env_name))
        except SecretUnavailable as exc:
            if not required and str(env_name).startswith(SECRET_PREFIX):
                return ""
            raise PermanentError(f"secret {name!r} (settings[{name + '_env'!r}]): {exc.message}") from None

    def send(self, message: OutgoingMessage) -> SendResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release connections kept open between sends (keep-alive sessions)."""


PROVIDERS: dict[str, type[Provider]] = {}


def provider(cls: type[Provider]) -> type[Provider]:
    PROVIDERS[cls.name] = cls
    return cls


def get_provider(name: str, settings: dict) -> Provider:
    try:
        return PROVIDERS[name](settings)
    except KeyError:
        raise PermanentError(f"unknown provider {name!r}; known: {', '.join(sorted(PROVIDERS))}") from None
