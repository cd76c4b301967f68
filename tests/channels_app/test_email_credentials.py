"""Which SMTP server gets which credentials, and which address a channel's SMTP host is reached at.

The deployment's relay password (EMAIL_HOST_USER / EMAIL_HOST_PASSWORD) goes only to the
deployment's relay (EMAIL_HOST on EMAIL_PORT): a channel that names another server, which anyone
with an ops login can type in, gets the channel's own credentials or none. And a channel's host
is reached at the address the outbound check passed, not at whatever a second DNS lookup says."""

from __future__ import annotations

import socket
import ssl

import pytest

from channels_app.models import Delivery
from channels_app.services import message_send
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.channels_app.servers import free_port, self_signed_certificate, start_smtp

pytestmark = pytest.mark.django_db

RELAY_USER, RELAY_PASSWORD = "relay-user@corp", "DeployRelayPassw0rd!"


@pytest.fixture
def relay(settings):
    """The deployment's own relay, which asks for its credentials."""
    controller, sink = start_smtp(auth=True)
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = controller.hostname, controller.port, False
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = RELAY_USER, RELAY_PASSWORD
    settings.EMAIL_TIMEOUT = 5
    yield sink
    controller.stop()


@pytest.fixture
def elsewhere():
    """A server a channel names (standing in for a public one an ops login could point it at)."""
    controller, sink = start_smtp("127.0.0.2", auth=True)
    sink.port = controller.port
    yield sink
    controller.stop()


def send(on_commit, channel_settings: dict, key: str = "k1") -> Delivery:
    channel = ChannelFactory(name=f"email-{key}", kind="email", provider="smtp",
                             settings={"from_email": "shop@example.com", **channel_settings})
    template = TemplateFactory(topic=topic("transactional"), subject="Hi", body="Hello")
    customer = CustomerFactory(external_id=f"c-{key}", email=f"{key}@example.com")
    with on_commit():
        delivery = message_send(customer=customer, template=template, channel=channel, idempotency_key=key,
                                context={})
    delivery.refresh_from_db()
    return delivery


def test_a_channel_naming_its_own_server_never_gets_the_deployments_relay_password(relay, elsewhere, on_commit):
    delivery = send(on_commit, {"host": "127.0.0.2", "port": elsewhere.port, "use_tls": False})

    assert delivery.status == "sent", delivery.error
    assert [m["To"] for m in elsewhere.messages] == ["k1@example.com"]
    assert elsewhere.logins == []  # no AUTH at all: the channel has no credentials of its own
    assert relay.messages == [] and relay.logins == []


def test_the_deployments_relay_on_another_port_is_another_server(relay, elsewhere, settings, on_commit):
    settings.EMAIL_HOST = "127.0.0.2"  # the relay's name, but the channel picks a port of its own

    delivery = send(on_commit, {"port": elsewhere.port})

    assert delivery.status == "sent", delivery.error
    assert elsewhere.logins == [] and len(elsewhere.messages) == 1


def test_a_channel_logs_in_to_its_own_server_with_its_own_credentials(relay, elsewhere, monkeypatch, on_commit):
    monkeypatch.setenv("JOURNEYS_SECRET_SHOP_SMTP", "shop-secret")

    delivery = send(on_commit, {"host": "127.0.0.2", "port": elsewhere.port, "use_tls": False,
                                "username": "shop", "password_env": "JOURNEYS_SECRET_SHOP_SMTP"})

    assert delivery.status == "sent", delivery.error
    assert elsewhere.logins == [("shop", "shop-secret")]


def test_a_channel_on_the_deployments_relay_still_logs_in_with_the_relays_credentials(relay, settings, on_commit):
    first = send(on_commit, {}, key="default")
    named = send(on_commit, {"host": settings.EMAIL_HOST, "port": settings.EMAIL_PORT}, key="named")

    assert (first.status, named.status) == ("sent", "sent")
    assert relay.logins == [(RELAY_USER, RELAY_PASSWORD)] * 2


def _rebinding_dns(monkeypatch, name: str, first: str, then: str) -> list[str]:
    """`name` resolves to `first` once, then to `then` (a rebinding DNS server); returns the lookups."""
    lookups: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return real(first if len(lookups) == 1 else then, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lookups


def _same_port_on(*hosts: str) -> int:
    for _ in range(20):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as probe:
                    probe.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every address")


def test_a_channel_host_is_reached_at_the_address_checked_not_at_a_second_lookup(settings, monkeypatch, on_commit):
    """A name that resolves to an allowed address for the check and to an internal one right
    after: the session goes to the checked address; the internal server hears nothing."""
    settings.OUTBOUND_ALLOWED_HOSTS, settings.OUTBOUND_ALLOWED_NETWORKS = [], ["127.0.0.2/32"]
    port = _same_port_on("127.0.0.2", "127.0.0.1")
    public, public_sink = start_smtp("127.0.0.2", port)
    internal, internal_sink = start_smtp("127.0.0.1", port)
    lookups = _rebinding_dns(monkeypatch, "mail.rebind.test", first="127.0.0.2", then="127.0.0.1")
    try:
        delivery = send(on_commit, {"host": "mail.rebind.test", "port": port, "use_tls": False})
    finally:
        public.stop()
        internal.stop()

    assert delivery.status == "sent", delivery.error
    assert len(public_sink.messages) == 1 and internal_sink.messages == []
    assert lookups == ["mail.rebind.test"]  # one lookup: the checked one


def _tls_trusted(tmp_path, monkeypatch, name: str) -> ssl.SSLContext:
    """A server TLS context with a certificate for `name`, which the client trusts (and only it)."""
    cert_file, key_file = self_signed_certificate(tmp_path, name)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    real_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda *args, **kwargs: real_context(cafile=cert_file))
    return server_tls


def test_starttls_to_a_pinned_address_still_checks_the_certificate_against_the_name(settings, monkeypatch,
                                                                                      tmp_path, on_commit):
    settings.OUTBOUND_ALLOWED_HOSTS, settings.OUTBOUND_ALLOWED_NETWORKS = [], ["127.0.0.2/32"]
    server_tls = _tls_trusted(tmp_path, monkeypatch, "mail.shop.test")
    server, sink = start_smtp("127.0.0.2", tls_context=server_tls, require_starttls=True)
    _rebinding_dns(monkeypatch, "mail.shop.test", first="127.0.0.2", then="127.0.0.2")
    _rebinding_dns(monkeypatch, "wrong.shop.test", first="127.0.0.2", then="127.0.0.2")
    try:
        good = send(on_commit, {"host": "mail.shop.test", "port": server.port, "use_tls": True}, key="good")
        wrong = send(on_commit, {"host": "wrong.shop.test", "port": server.port, "use_tls": True}, key="wrong")
    finally:
        server.stop()

    assert good.status == "sent", good.error
    assert wrong.status != "sent" and "certificate" in wrong.error.lower()  # verified against the name it was given
    assert [m["To"] for m in sink.messages] == ["good@example.com"]


def test_a_channel_cannot_turn_off_tls_for_the_deployments_relay_password(settings, monkeypatch, tmp_path, on_commit):
    server_tls = _tls_trusted(tmp_path, monkeypatch, "127.0.0.1")
    server, sink = start_smtp(auth=True, auth_require_tls=True, tls_context=server_tls, require_starttls=True)
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = server.hostname, server.port, True
    settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = RELAY_USER, RELAY_PASSWORD
    try:
        delivery = send(on_commit, {"use_tls": False})
    finally:
        server.stop()

    assert delivery.status == "sent", delivery.error
    assert sink.logins == [(RELAY_USER, RELAY_PASSWORD)]  # over TLS: the server offers AUTH only after STARTTLS
