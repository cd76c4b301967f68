"""Outbound calls and the secrets they carry: the one gate every HTTP call to a configured
URL (channel providers, webhooks, event-stream destinations) and every configured secret
goes through.

Why: a URL or an environment-variable name typed into the admin must not let an ops user
(or anyone who gets an ops login) reach the machine's own services — the database, the
cloud metadata endpoint at 169.254.169.254, an admin port on loopback — nor read any
environment variable (DATABASE_URL, SECRET_KEY...) into a request header.

- `outbound_url_check(url=)` refuses anything but http(s) and any host that resolves to a
  loopback, private, link-local, unspecified, multicast, reserved or otherwise non-global
  address (IPv4-mapped, 6to4 and Teredo forms included), unless the setting
  `OUTBOUND_ALLOWED_HOSTS` names the host or `OUTBOUND_ALLOWED_NETWORKS` holds the address.
  Every address a name resolves to must pass, and the connection is pinned to the checked
  address (no second DNS lookup that a rebinding DNS server could answer differently).
- `OutboundSession` sends HTTP(S) requests through that check: keep-alive connections,
  pinned, TLS verified against the host name, 307/308 redirects followed only to allowed
  places (other redirects are refused: a POST is not silently turned into a GET), bounded
  response size, and a deadline for the whole exchange (`timeout`): a server that sends its
  headers and then trickles or stalls its body cannot hold the caller past it.
- `backoff_delay(...)` is how long to wait before calling a failing destination again
  (exponential with jitter, capped, never sooner than its Retry-After in either form).
- `outbound_secret_read(name=)` reads a secret only from an environment variable whose name
  starts with `JOURNEYS_SECRET_` (or the same key of the `CHANNEL_SECRETS` setting, filled
  by a secrets manager at start-up); `outbound_secret_name_check(name=)` is the save-time form.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import math
import os
import random
import select
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from functools import lru_cache, partial
from urllib.parse import urljoin, urlsplit

from django.conf import settings

from journeys.errors import OutboundRefused, OutboundUnreachable, SecretUnavailable

SCHEMES = ("http", "https")
SECRET_PREFIX = "JOURNEYS_SECRET_"
DEFAULT_TIMEOUT_S = 10.0
MAX_REDIRECTS = 3
MAX_RESPONSE_BYTES = 1024 * 1024
RETRY_AFTER_MAX_S = 86400.0  # a Retry-After further out than a day is honoured for a day

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class OutboundTarget:
    """A URL that passed the check, with the address the connection must use."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


@dataclass
class OutboundResponse:
    """What came back. Any status is returned; callers decide what 4xx/5xx mean to them."""

    status: int
    headers: Mapping[str, str]  # an http.client.HTTPMessage: .get() is case-insensitive
    body: bytes
    url: str = ""


# ---------------------------------------------------------------------------------------------
# addresses


@lru_cache(maxsize=8)
def _networks(spec: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in spec if item.strip())


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """OUTBOUND_ALLOWED_NETWORKS as networks (a bad entry is caught by the system check)."""
    return _networks(tuple(getattr(settings, "OUTBOUND_ALLOWED_NETWORKS", ()) or ()))


def host_key(host: str) -> str:
    """A host name as the allow-list compares it: case, surrounding space, a final dot and IPv6
    brackets do not matter."""
    return (host or "").strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _allowed_hosts() -> set[str]:
    return {host_key(h) for h in getattr(settings, "OUTBOUND_ALLOWED_HOSTS", ()) or () if h.strip()}


def _embedded_v4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped or ip.sixtofour
    return None


def address_is_public(ip: IPAddress) -> bool:
    """A globally routable unicast address: not loopback, private, link-local, unspecified,
    multicast, reserved or shared (100.64/10); IPv4 embedded in IPv6 is judged as IPv4."""
    embedded = _embedded_v4(ip)
    if embedded is not None:
        return address_is_public(embedded)
    if isinstance(ip, ipaddress.IPv6Address) and (ip.teredo or ip.is_site_local):
        return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local
                                 or ip.is_unspecified or ip.is_private)


def _address_allowlisted(ip: IPAddress) -> bool:
    candidates = [ip] + [e for e in [_embedded_v4(ip)] if e is not None]
    return any(c.version == network.version and c in network for network in allowed_networks() for c in candidates)


def address_allowed(ip: IPAddress) -> bool:
    """Public, or inside OUTBOUND_ALLOWED_NETWORKS (an embedded IPv4 counts as itself)."""
    return _address_allowlisted(ip) or address_is_public(ip)


def host_allowlisted(host: str) -> bool:
    """OUTBOUND_ALLOWED_HOSTS names `host`, or it is an address literal inside
    OUTBOUND_ALLOWED_NETWORKS: the places ops opened on purpose (a local gateway, a test server),
    compared as the guard compares them (no DNS lookup)."""
    key = host_key(host)
    if not key:
        return False
    if key in _allowed_hosts():
        return True
    try:
        return _address_allowlisted(ipaddress.ip_address(key))
    except ValueError:
        return False


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OutboundUnreachable(f"host {host!r} does not resolve ({exc})") from exc
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundUnreachable(f"host {host!r} does not resolve")
    return addresses


def outbound_host_check(*, host: str, port: int) -> str:
    """Resolve `host` and return the address to connect to; raise OutboundRefused when any of
    its addresses is not allowed, OutboundUnreachable when it does not resolve.

    For non-HTTP clients (SMTP): call it right before connecting, and connect to the address it
    returns, not to the name (channels_app.providers.email.PinnedEmailBackend)."""
    host = host_key(host)
    if not host:
        raise OutboundRefused("no host")
    addresses = _resolve(host, port)
    if host not in _allowed_hosts():
        for address in addresses:
            if not address_allowed(ipaddress.ip_address(address)):
                raise OutboundRefused(
                    f"{host} resolves to {address}, a loopback/private/link-local/reserved address; outbound "
                    f"calls only go to public addresses unless OUTBOUND_ALLOWED_HOSTS or "
                    f"OUTBOUND_ALLOWED_NETWORKS names it")
    return addresses[0]


def _split(url: str) -> tuple[str, str, int]:
    if not isinstance(url, str) or not url.strip():
        raise OutboundRefused("no URL")
    if any(ord(ch) < 33 or ord(ch) == 127 for ch in url.strip()):
        raise OutboundRefused("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused(f"not a valid URL ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise OutboundRefused(f"scheme {parts.scheme or '(none)'!r} is not allowed: use http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused("credentials in the URL are not allowed: name a secret setting instead")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise OutboundRefused("the URL has no host")
    return scheme, host, port or (443 if scheme == "https" else 80)


def outbound_url_check(*, url: str, resolve: bool = True) -> OutboundTarget:
    """Check a configured URL; raise OutboundRefused (with a message for a form) or
    OutboundUnreachable (DNS). With resolve=False only the scheme and shape are checked
    (and a literal IP address), e.g. for a form when the network is not to be touched."""
    scheme, host, port = _split(url)
    if not resolve:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return OutboundTarget(url=url.strip(), scheme=scheme, host=host, port=port, address="")
        if not (host_allowlisted(host) or address_is_public(literal)):
            raise OutboundRefused(f"{host} is a loopback/private/link-local/reserved address; outbound calls only "
                                  f"go to public addresses unless OUTBOUND_ALLOWED_NETWORKS names it")
        return OutboundTarget(url=url.strip(), scheme=scheme, host=host, port=port, address=str(literal))
    address = outbound_host_check(host=host, port=port)
    return OutboundTarget(url=url.strip(), scheme=scheme, host=host, port=port, address=address)


def outbound_url_problem(*, url: str) -> str:
    """'' when `url` may be saved as an outbound URL, else why not (for a form error).
    A name that does not resolve right now is accepted (it is checked again before each call)."""
    try:
        outbound_url_check(url=url)
    except OutboundRefused as exc:
        return exc.message
    except OutboundUnreachable:
        return ""
    return ""


# ---------------------------------------------------------------------------------------------
# backoff


def retry_after_seconds(value: str | float | None, *, now: datetime | None = None) -> float | None:
    """A Retry-After as seconds from `now`: delay-seconds or an HTTP date (RFC 9110 10.2.3),
    at most a day; None when there is none or it cannot be read."""
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            at = parsedate_to_datetime(str(value).strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if at.tzinfo is None:  # "-0000": an HTTP date is UTC
            at = at.replace(tzinfo=timezone.utc)
        seconds = (at - (now or datetime.now(timezone.utc))).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_MAX_S)


def backoff_delay(*, attempt: int, base_s: float, max_s: float, retry_after: str | float | None = None,
                  now: datetime | None = None) -> timedelta:
    """How long to wait before trying a failing destination again after `attempt` failures:
    exponential from `base_s`, capped at `max_s`, with jitter (half fixed, half random), and never
    sooner than the destination's Retry-After (seconds or an HTTP date, read against `now`)."""
    ceiling = min(max_s, base_s * 2 ** min(max(0, attempt - 1), 60))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    wait = retry_after_seconds(retry_after, now=now)
    if wait is not None:
        delay = max(delay, wait + random.uniform(0, min(5.0, wait * 0.1)))
    return timedelta(seconds=delay)


# ---------------------------------------------------------------------------------------------
# secrets


def outbound_secret_name_check(*, name: str) -> None:
    """Raise SecretUnavailable unless `name` is an allowed secret variable name."""
    if not isinstance(name, str) or not name.startswith(SECRET_PREFIX) or len(name) <= len(SECRET_PREFIX):
        raise SecretUnavailable(
            f"{name!r} is not a secret variable name: secrets are read only from environment variables "
            f"named {SECRET_PREFIX}... (e.g. {SECRET_PREFIX}TWILIO_TOKEN)")
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise SecretUnavailable(f"{name!r}: use only letters, digits and underscores")


def outbound_secret_read(*, name: str) -> str:
    """The secret held by environment variable `name` (or CHANNEL_SECRETS[name]); raise
    SecretUnavailable when the name is not allowed or nothing is set."""
    outbound_secret_name_check(name=name)
    value = os.environ.get(name, "") or str((getattr(settings, "CHANNEL_SECRETS", None) or {}).get(name, ""))
    if not value:
        raise SecretUnavailable(f"environment variable {name} is not set")
    return value


# ---------------------------------------------------------------------------------------------
# HTTP


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the checked address; the Host header still names the host."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """TLS to the checked address, with the certificate verified against the host name."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float, context: ssl.SSLContext):
        super().__init__(host, port, timeout=timeout, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _DeadlineReader(io.RawIOBase):
    """The socket as a response reads it: each read waits only until the exchange's deadline, so
    the per-read timeout cannot be renewed forever by a server sending a byte now and then.

    It reads through the socket's own file (`socket.makefile`), which holds a reference on the
    socket as http.client expects: for an answer that says it will close (`Connection: close`,
    HTTP/1.0) getresponse() closes the connection before the body is read, and the socket's file
    descriptor must stay open until the response is done with it (closing it at once made the
    read of a body that came after the headers fail with EBADF, and an accepted message be sent
    again)."""

    def __init__(self, sock: socket.socket, deadline: float):
        super().__init__()
        self._sock = sock
        self._file = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:  # type: ignore[override]
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no complete answer within the timeout")
        self._sock.settimeout(remaining)
        return self._file.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._file.close()  # the last reference: a connection closed meanwhile closes its socket now
        super().close()


class _DeadlineSocket:
    """What http.client.HTTPResponse is built from: only its `makefile` is used."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """A response whose status line, headers and body must all arrive before `deadline`. Each
    one is added to `made`, so that the caller can close it (and release its socket) even when
    getresponse() failed before handing it over."""

    def __init__(self, sock: socket.socket, *, deadline: float, made: list[http.client.HTTPResponse], **kwargs):
        super().__init__(_DeadlineSocket(sock, deadline), **kwargs)
        made.append(self)


def _deadline_set(connection: http.client.HTTPConnection, deadline: float) -> list[http.client.HTTPResponse]:
    """Bound connecting, writing the request and reading the whole answer by `deadline`; returns
    the list the exchange's response will be added to (to be closed when done with it)."""
    remaining = max(0.001, deadline - time.monotonic())
    connection.timeout = remaining  # a new connection's connect (and its socket's first timeout)
    if connection.sock is not None:
        connection.sock.settimeout(remaining)
    made: list[http.client.HTTPResponse] = []
    connection.response_class = partial(_DeadlineResponse, deadline=deadline, made=made)  # type: ignore[assignment]
    return made


_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _unreachable(host: str, exc: Exception, sent: bool, answer: OutboundResponse | None) -> OutboundUnreachable:
    cut = f" (after the answer's status, HTTP {answer.status}; its body did not come in full)" if answer else ""
    error = OutboundUnreachable(f"{host}: {type(exc).__name__}: {exc}{cut}")
    error.maybe_received = sent
    error.answer = answer
    return error


def _cut_answer(raw: http.client.HTTPResponse | None, exc: Exception, url: str) -> OutboundResponse | None:
    """The answer whose body failed (its status and headers, what came of its body), if it had begun."""
    if raw is None:
        return None
    partial = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
    return OutboundResponse(status=raw.status, headers=raw.headers, body=bytes(partial), url=url)


def socket_closed_by_peer(sock: socket.socket) -> bool:
    """An idle client connection (HTTP keep-alive, an SMTP session) is readable only when the
    server has closed it or said something nobody asked for (a 421 before hanging up): either
    way it is not reused."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    return connection.sock is not None and socket_closed_by_peer(connection.sock)  # no sock yet: request() connects


@dataclass
class OutboundSession:
    """Keep-alive HTTP(S) client for configured URLs. Every new connection goes through
    `outbound_url_check` and is pinned to the checked address; redirects are followed only
    for 307/308 and only to allowed places. Use as a context manager (closes connections).

        with OutboundSession(timeout=5) as session:
            response = session.request("POST", url, body=b"...", headers={...})

    `timeout` is the deadline of one whole exchange, from connecting to the last byte of the
    answer: a server that trickles or stalls its answer times out like one that never answers.
    An answer that closes the connection (`Connection: close`, HTTP/1.0) is read to its end (its
    body may come after the headers); the next request opens a new connection.

    Raises OutboundRefused (do not retry: fix the configuration) or OutboundUnreachable
    (DNS, connect, reset, timeout, a body cut short of its length: retry later; when only the
    body failed, its `answer` holds the status and headers). HTTP errors are returned as
    responses."""

    timeout: float = DEFAULT_TIMEOUT_S
    max_redirects: int = MAX_REDIRECTS
    max_response_bytes: int = MAX_RESPONSE_BYTES
    _connections: dict[tuple[str, str, int], http.client.HTTPConnection] = field(default_factory=dict, repr=False)
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    def __enter__(self) -> OutboundSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def post(self, url: str, *, body: bytes, headers: Mapping[str, str] | None = None) -> OutboundResponse:
        return self.request("POST", url, body=body, headers=headers)

    def request(self, method: str, url: str, *, body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> OutboundResponse:
        for _hop in range(self.max_redirects + 1):
            response = self._send(method, url, body=body, headers=dict(headers or {}))
            if response.status not in _REDIRECTS:
                return response
            location = response.headers.get("Location", "")
            if response.status in (301, 302, 303) and method not in ("GET", "HEAD"):
                raise OutboundRefused(f"{url} answered HTTP {response.status} (moved to {location or '?'}); a "
                                      f"{method} is not re-sent as a GET: update the URL")
            if not location:
                return response
            url = urljoin(url, location)  # the next _send checks it like any other URL
        raise OutboundRefused(f"more than {self.max_redirects} redirects")

    def _open(self, target: OutboundTarget) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if target.scheme == "https":
            if self._context is None:
                self._context = ssl.create_default_context()
            connection = _PinnedHTTPSConnection(target.host, target.port, address=target.address,
                                                timeout=self.timeout, context=self._context)
        else:
            connection = _PinnedHTTPConnection(target.host, target.port, address=target.address,
                                               timeout=self.timeout)
        self._connections[(target.scheme, target.host, target.port)] = connection
        return connection

    def _drop(self, key: tuple[str, str, int]) -> None:
        connection = self._connections.pop(key, None)
        if connection is not None:
            connection.close()

    def _send(self, method: str, url: str, *, body: bytes | None, headers: dict[str, str]) -> OutboundResponse:
        scheme, host, port = _split(url)
        key = (scheme, host.lower(), port)
        parts = urlsplit(url.strip())
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        # `timeout` bounds the whole exchange (connect, request, status, headers, body), not each read
        deadline = time.monotonic() + self.timeout
        for _attempt in (1, 2):
            # an open connection stays pinned to the address checked when it was opened
            connection = self._connections.get(key)
            if connection is not None and _closed_by_peer(connection):
                self._drop(key)  # the server closed the idle keep-alive connection: a fresh, re-checked one
                connection = None
            reused = connection is not None
            if connection is None:
                target = outbound_url_check(url=url)
                connection = self._open(OutboundTarget(url=target.url, scheme=scheme, host=key[1], port=port,
                                                       address=target.address))
            sent = False
            raw: http.client.HTTPResponse | None = None  # once its status line and headers have come
            responses: list[http.client.HTTPResponse] = []
            try:
                responses = _deadline_set(connection, deadline)
                connection.request(method, path, body=body, headers=headers)
                sent = True
                raw = connection.getresponse()  # an answer that will close has closed `connection` already
                data = raw.read(self.max_response_bytes + 1)  # ... and still reads its body to the end
                if raw.length and len(data) <= self.max_response_bytes and raw.status not in _REDIRECTS:
                    raise http.client.IncompleteRead(data, raw.length)  # closed short of its Content-Length
            except _STALE as exc:
                self._drop(key)
                # Tried again on a fresh connection only when the server cannot have acted on it: the
                # request could not be written, or it is idempotent. A POST written in full and then
                # cut off may have been processed (the caller retries later, with its idempotency key).
                if reused and (not sent or method in _IDEMPOTENT):
                    continue
                raise _unreachable(host, exc, sent, _cut_answer(raw, exc, url.strip())) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop(key)
                raise _unreachable(host, exc, sent, _cut_answer(raw, exc, url.strip())) from exc
            finally:
                for response in responses:
                    response.close()  # releases the socket of an answer that closed its connection (or was cut)
            if len(data) > self.max_response_bytes or raw.will_close:
                self._drop(key)  # the next request opens (and checks) a new connection
            return OutboundResponse(status=raw.status, headers=raw.headers, body=data[: self.max_response_bytes],
                                    url=url.strip())
        raise OutboundUnreachable(f"{host}: the connection was closed twice")


def outbound_request(*, method: str, url: str, body: bytes | None = None, headers: Mapping[str, str] | None = None,
                     timeout: float = DEFAULT_TIMEOUT_S) -> OutboundResponse:
    """One request on a fresh session (see OutboundSession)."""
    with OutboundSession(timeout=timeout) as session:
        return session.request(method, url, body=body, headers=headers)
