"""journeys.services.outbound: where outbound calls may go and which secrets they may read."""

from __future__ import annotations

import re
import socket
import time

import pytest

from journeys.errors import OutboundRefused, OutboundUnreachable, SecretUnavailable
from journeys.services.outbound import (
    OutboundSession, outbound_secret_read, outbound_url_check, outbound_url_problem,
)
from tests.channels_app.servers import FakeVendor, Plan, free_port, self_signed_certificate


@pytest.fixture
def no_allow_list(settings):
    settings.OUTBOUND_ALLOWED_HOSTS, settings.OUTBOUND_ALLOWED_NETWORKS = [], []
    return settings


@pytest.fixture
def vendor():
    server = FakeVendor().start()
    yield server
    server.stop()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/", "http://localhost/", "http://[::1]/", "http://0.0.0.0/",
    "http://0x7f.1/", "http://2130706433/", "http://0177.0.0.1/",           # other spellings of 127.0.0.1
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://[2002:7f00:1::]/",  # IPv4 inside IPv6
    "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://240.0.0.1/", "http://[fc00::1]/", "http://[ff02::1]/",
    "http://[64:ff9b::7f00:1]/",
])
def test_private_loopback_and_reserved_addresses_are_refused(no_allow_list, url):
    with pytest.raises(OutboundRefused, match="address"):
        outbound_url_check(url=url)


@pytest.mark.parametrize("url, why", [
    ("file:///etc/passwd", "scheme 'file'"), ("gopher://example.com/", "scheme 'gopher'"),
    ("ftp://example.com/x", "scheme 'ftp'"), ("//example.com/x", "scheme '(none)'"), ("", "no URL"),
    ("http://user:pw@93.184.216.34/", "credentials"), ("http:///path", "no host"),
    ("http://93.184.216.34/a b", "spaces"), ("http://93.184.216.34:99999/", "valid URL"),
])
def test_only_plain_http_and_https_urls_are_accepted(no_allow_list, url, why):
    with pytest.raises(OutboundRefused, match=re.escape(why)):
        outbound_url_check(url=url)


def test_public_addresses_pass_and_the_allow_list_opens_named_networks_and_hosts(no_allow_list):
    assert outbound_url_check(url="https://93.184.216.34/hook").address == "93.184.216.34"
    assert outbound_url_check(url="http://[::ffff:8.8.8.8]/").address == "::ffff:8.8.8.8"
    assert outbound_url_problem(url="http://10.1.2.3/") != ""

    no_allow_list.OUTBOUND_ALLOWED_NETWORKS = ["10.1.0.0/16"]
    assert outbound_url_check(url="http://10.1.2.3/").address == "10.1.2.3"
    with pytest.raises(OutboundRefused):
        outbound_url_check(url="http://10.2.0.1/")

    no_allow_list.OUTBOUND_ALLOWED_HOSTS = ["LocalHost"]
    assert outbound_url_check(url="http://localhost:9/").address in {"127.0.0.1", "::1"}


def test_a_name_that_does_not_resolve_is_unreachable_not_refused(no_allow_list):
    with pytest.raises(OutboundUnreachable, match="does not resolve"):
        outbound_url_check(url="http://no-such-host.invalid/")
    assert outbound_url_problem(url="http://no-such-host.invalid/") == ""  # savable; checked again when sending


def test_the_connection_is_pinned_to_the_checked_address(vendor, settings, monkeypatch):
    # given a DNS server that answers a loopback address first and a private one afterwards (rebinding)
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    port = int(vendor.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo
    answers = ["127.0.0.1", "10.9.9.9"]
    lookups = []

    def rebinding(host, *args, **kwargs):
        if host != "hooks.test":
            return real(host, *args, **kwargs)
        lookups.append(host)
        address = answers[min(len(lookups), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)

    # when a request goes out
    response = OutboundSession(timeout=2).post(f"http://hooks.test:{port}/in", body=b"{}",
                                               headers={"Content-Type": "application/json"})

    # then it went to the address that was checked, named the host, and DNS was asked once
    assert response.status == 200 and lookups == ["hooks.test"]
    assert vendor.requests[0].headers["Host"] == f"hooks.test:{port}"
    # and the next connection asks again and is refused
    with pytest.raises(OutboundRefused, match="10.9.9.9"):
        OutboundSession(timeout=2).post(f"http://hooks.test:{port}/in", body=b"{}")


def test_redirects_to_disallowed_places_are_refused_and_a_post_is_not_turned_into_a_get(vendor, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    vendor.plan(Plan(307, headers={"Location": "http://169.254.169.254/latest/meta-data/"}))
    with pytest.raises(OutboundRefused, match="169.254.169.254"):
        OutboundSession(timeout=2).post(vendor.url + "/a", body=b"x")

    vendor.plan(Plan(302, headers={"Location": "/elsewhere"}))
    with pytest.raises(OutboundRefused, match="HTTP 302"):
        OutboundSession(timeout=2).post(vendor.url + "/a", body=b"x")

    vendor.plan(Plan(308, headers={"Location": "/moved"}))
    response = OutboundSession(timeout=2).post(vendor.url + "/a", body=b"payload")
    assert response.status == 200
    assert [(r.path, r.body) for r in vendor.requests[-2:]] == [("/a", b"payload"), ("/moved", b"payload")]


def test_unreachable_and_refused_connections_are_unreachable(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with pytest.raises(OutboundUnreachable, match="Connection"):
        OutboundSession(timeout=1).post(f"http://127.0.0.1:{free_port()}/", body=b"")


def test_secrets_come_only_from_prefixed_variables(monkeypatch, settings):
    monkeypatch.setenv("JOURNEYS_SECRET_SMS_TOKEN", "tok")
    assert outbound_secret_read(name="JOURNEYS_SECRET_SMS_TOKEN") == "tok"

    for name in ("PATH", "DATABASE_URL", "SECRET_KEY", "EMAIL_HOST_PASSWORD", "JOURNEYS_SECRET_", "journeys_secret_x",
                 "JOURNEYS_SECRET_A-B"):
        with pytest.raises(SecretUnavailable):
            outbound_secret_read(name=name)

    monkeypatch.delenv("JOURNEYS_SECRET_UNSET", raising=False)
    with pytest.raises(SecretUnavailable, match="not set"):
        outbound_secret_read(name="JOURNEYS_SECRET_UNSET")
    settings.CHANNEL_SECRETS = {"JOURNEYS_SECRET_UNSET": "from-vault", "PATH": "no"}
    assert outbound_secret_read(name="JOURNEYS_SECRET_UNSET") == "from-vault"
    with pytest.raises(SecretUnavailable):
        outbound_secret_read(name="PATH")


class RawServer:
    """HTTP/1.1 on a bare socket: answers requests (keep-alive) and, on demand, closes the
    connection right after answering (`close_after_answer`), or reads a request in full and
    closes without answering (`cut_at`: the n-th request, 1-based)."""

    def __init__(self, *, close_after_answer: bool = False, cut_at: int = 0):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.bodies: list[bytes] = []
        self.connections = self.closed = 0
        self.close_after_answer, self.cut_at = close_after_answer, cut_at
        import threading

        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            reader = conn.makefile("rb")
            while reader.readline():
                length = 0
                while (line := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    length = int(value) if name.strip().lower() == "content-length" else length
                self.bodies.append(reader.read(length))
                if len(self.bodies) == self.cut_at:
                    break  # processed, never answered
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                if self.close_after_answer:
                    break
            reader.close()  # the file holds the socket open too
            conn.close()
            self.closed += 1

    def wait_closed(self, n: int, timeout: float = 5.0) -> None:
        """Until the server has closed n connections (their FIN is on its way: loopback, no delay)."""
        deadline = time.monotonic() + timeout
        while self.closed < n and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self):
        self.sock.close()


def test_a_post_cut_off_after_the_server_read_it_is_not_sent_again(settings):
    """Only a request the server cannot have acted on is tried again on a fresh connection: a
    POST written in full and then cut off is the caller's to retry (later, with its key)."""
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    server = RawServer(cut_at=2)
    session = OutboundSession(timeout=2)
    try:
        assert session.post(server.url, body=b"one").status == 200
        with pytest.raises(OutboundUnreachable, match="RemoteDisconnected"):
            session.post(server.url, body=b"two")
        assert session.post(server.url, body=b"three").status == 200  # a fresh connection
    finally:
        session.close()
        server.stop()
    assert server.bodies == [b"one", b"two", b"three"] and server.connections == 2


def test_a_keep_alive_connection_the_server_closed_while_idle_is_replaced_before_sending(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    server = RawServer(close_after_answer=True)
    session = OutboundSession(timeout=2)
    try:
        for n, body in enumerate((b"one", b"two", b"three"), start=1):
            assert session.post(server.url, body=body).status == 200
            server.wait_closed(n)  # the server's FIN reaches us while the connection is idle
    finally:
        session.close()
        server.stop()
    assert server.bodies == [b"one", b"two", b"three"] and server.connections == 3


@pytest.mark.parametrize("answer", [
    dict(close=True, pause=0.05), dict(http10=True, pause=0.05), dict(close=True, chunked=True, pause=0.03),
    dict(close=True), dict(no_body=True, pause=0.05),
], ids=["connection-close", "http-1.0", "chunked-close", "close-no-pause", "close-no-body"])
def test_an_answer_that_closes_the_connection_is_read_to_its_end_and_the_next_request_reconnects(
        vendor, settings, answer):
    # given a server that closes the connection after each answer, the body coming after the headers
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    vendor.default = Plan(201, {"sid": "SM1"}, **answer)
    body = b"" if answer.get("no_body") else b'{"sid": "SM1"}'

    # when one session posts three times
    with OutboundSession(timeout=2) as session:
        answers = [session.post(vendor.url + "/m", body=f"n={n}".encode()) for n in range(3)]

    # then each answer is read in full with its status, and each request went once, on a new connection
    assert [(a.status, a.body) for a in answers] == [(201, body)] * 3
    assert [r.body for r in vendor.requests] == [b"n=0", b"n=1", b"n=2"] and len(set(vendor.ports)) == 3


def test_an_https_answer_that_closes_the_connection_is_read_to_its_end(settings, tmp_path):
    """The same over TLS (what vendors speak): the body, sent after the headers, is read after
    getresponse() closed the connection."""
    import ssl
    import threading

    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    cert_file, key_file = self_signed_certificate(tmp_path, "127.0.0.1")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with server_context.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.recv(65536))
                tls.sendall(b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 14\r\n\r\n")
                time.sleep(0.05)
                tls.sendall(b'{"sid": "SM1"}')

    threading.Thread(target=serve, daemon=True).start()
    try:
        with OutboundSession(timeout=2, _context=ssl.create_default_context(cafile=cert_file)) as session:
            url = f"https://127.0.0.1:{listener.getsockname()[1]}/m"
            answers = [session.post(url, body=b"x") for _ in range(2)]
    finally:
        listener.close()
    assert [(a.status, a.body) for a in answers] == [(201, b'{"sid": "SM1"}')] * 2 and len(received) == 2


def test_a_body_cut_short_of_its_length_is_an_error_that_keeps_the_answers_status(vendor, settings):
    # given a server that answers 201 with a Content-Length and closes halfway through the body
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    vendor.plan(Plan(201, {"sid": "SM1"}, cut=True, pause=0.05))

    # when a request gets that answer, then it is not taken for the whole answer: the error says
    # the request may have been received, with the answer's status and what came of its body
    with OutboundSession(timeout=2) as session:
        with pytest.raises(OutboundUnreachable, match="IncompleteRead.*HTTP 201; its body did not come in full") as cut:
            session.post(vendor.url + "/m", body=b"x")
        # and the next request goes on a new connection
        assert session.post(vendor.url + "/m", body=b"y").status == 200
    assert cut.value.maybe_received and (cut.value.answer.status, cut.value.answer.body) == (201, b'{"sid":')
    assert [r.body for r in vendor.requests] == [b"x", b"y"] and len(set(vendor.ports)) == 2
