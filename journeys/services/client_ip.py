"""The sender's address: the TCP peer, or what trusted proxies say in X-Forwarded-For.

One rule for everything that records or counts a client's address: the event API (the IP kept
with each event, unless the event names its user's own in `context.ip`: `event_ip`), the
management API's access log, and login throttling (django-axes calls `request_client_ip`)."""

from __future__ import annotations

import ipaddress
import logging
from functools import lru_cache

from django.conf import settings

logger = logging.getLogger(__name__)


def network_parse(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """An address or a network (CIDR) as a network, or None when `text` is neither (a host name)."""
    try:
        return ipaddress.ip_network(str(text).strip(), strict=False)
    except ValueError:
        return None


@lru_cache(maxsize=8)
def _networks(proxies: tuple[str, ...]) -> tuple:
    """The trusted networks. An entry that is not one (journeys.E004 names it at every manage.py
    command) trusts nothing, rather than failing every request that asks for the client's address."""
    networks = []
    for proxy in proxies:
        if (network := network_parse(proxy)) is None:
            logger.error("TRUSTED_PROXIES: %r is not an address or a network; it is ignored", proxy)
        else:
            networks.append(network)
    return tuple(networks)


def _address(text: str):
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return address.ipv4_mapped or address if address.version == 6 else address


def client_ip(meta: dict) -> str | None:
    """REMOTE_ADDR, unless it is a trusted proxy (settings.TRUSTED_PROXIES): then walk
    X-Forwarded-For from the right, past every trusted proxy, to the first other address.
    Anything a client could forge (entries left of an untrusted hop, junk) is never used."""
    peer = _address(meta.get("REMOTE_ADDR") or "")
    if peer is None:
        return None
    trusted = _networks(tuple(settings.TRUSTED_PROXIES))

    def is_trusted(address) -> bool:
        return any(address in network for network in trusted)

    if not trusted or not is_trusted(peer):
        return str(peer)
    hops = [h for h in (meta.get("HTTP_X_FORWARDED_FOR") or "").split(",") if h.strip()]
    for hop in reversed(hops):
        address = _address(hop)
        if address is None:
            return str(peer)  # a malformed hop: stop at what we know
        if not is_trusted(address):
            return str(address)
        peer = address
    return str(peer)


def request_client_ip(request) -> str:
    """client_ip of a request ('' when unknown): django-axes' AXES_CLIENT_IP_CALLABLE."""
    return client_ip(request.META) or ""


def event_ip(*, context: dict, sender: str | None) -> str | None:
    """The address kept with an event: `context.ip` when the event names one, as Segment does (a
    server-side SDK sends it for its user: the request itself comes from the customer's server),
    else the sender's. Anything that is not a plain IP address stays in the context, unused."""
    named = context.get("ip")
    if not isinstance(named, str) or not named or len(named) > 45 or "%" in named:  # (no IPv6 zone)
        return sender
    try:
        address = ipaddress.ip_address(named.strip())
    except ValueError:
        return sender
    return str(address.ipv4_mapped or address if address.version == 6 else address)
