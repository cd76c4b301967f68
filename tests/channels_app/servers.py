"""Real servers for the channel tests: an SMTP server (aiosmtpd) and an HTTP server that
records requests and fails on demand (timeouts, answers trickled a byte at a time, 5xx, 429
with Retry-After) or answers as servers that close the connection do (`Connection: close`,
HTTP/1.0, chunked, no body: the body in writes of its own after the headers)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SmtpSink:
    """aiosmtpd handler: keeps every received message (parsed) in `messages` and the client's
    address and port of each (`peers`: one port per connection). Fails on demand: the next
    RCPT commands (`refuse_next`), a given recipient (`refuse`), or drops the connection at a
    given recipient's RCPT (`drop`, once per address)."""

    def __init__(self):
        self.messages = []
        self.envelopes: list[tuple] = []  # (MAIL FROM, RCPT TOs, MAIL options) of each message, as on the wire
        self.raw: list[bytes] = []  # each message's bytes
        self.peers: list[tuple] = []
        self.refuse_next: list[str] = []  # SMTP replies to give to the next RCPT commands
        self.refuse: dict[str, str] = {}  # recipient -> SMTP reply
        self.drop: set[str] = set()  # recipients whose RCPT closes the connection (once each)
        self.hang_up_after_data = False  # close each session right after accepting its message (an idle timeout)
        self.hung_up = 0  # sessions closed so
        self.mail_reply = ""  # an answer to give every MAIL command instead of 250
        self.pipelining = True  # offer PIPELINING (RFC 2920), as real relays do
        self.pipelined = 0  # MAIL commands whose RCPT and DATA had already arrived (sent in one write)
        self.logins: list[tuple[str, str]] = []  # (username, password) of each AUTH (servers started with auth=True)

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=True)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if b"RCPT TO:" in server._reader._buffer and b"DATA\r\n" in server._reader._buffer:
            self.pipelined += 1
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.drop:
            self.drop.discard(address)
            server.transport.close()
            return "421 closing"
        if self.refuse_next:
            return self.refuse_next.pop(0)
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), list(envelope.mail_options)))
        self.raw.append(envelope.original_content or envelope.content)
        self.peers.append(session.peer)
        if self.hang_up_after_data:
            def hang_up():
                server.transport.close()
                self.hung_up += 1

            asyncio.get_running_loop().call_later(0.02, hang_up)
        return "250 Message accepted for delivery"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)

    def form(self) -> dict:
        return {k: v[-1] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Plan:
    status: int = 200
    body: dict = field(default_factory=dict)
    headers: dict = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes = b""  # an answer's body as it is (instead of `body` as JSON)
    trickle: float = 0.0  # send the headers at once, then the body one byte every `trickle` seconds
    close: bool = False  # say `Connection: close` and close the connection after this answer
    http10: bool = False  # answer as an HTTP/1.0 server does (no keep-alive: closed after the answer)
    pause: float = 0.0  # send the headers, wait this long, then the body: separate TCP writes
    chunked: bool = False  # the body in two chunks (Transfer-Encoding: chunked), `pause` before each
    no_body: bool = False  # no body and no Content-Length: the answer ends when the server closes
    cut: bool = False  # send the headers (the whole body's Content-Length) and half the body, then close


class FakeVendor:
    """A local HTTP server. `plan(...)` queues the next answers; by default 200 {"id"/"sid"...}."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.ports: list[int] = []  # the client's port of each request: one per connection (keep-alive)
        self.queue: list[Plan] = []
        self.in_flight = self.max_in_flight = 0  # requests being answered at once (concurrent connections)
        self.default = Plan(200, {"id": "ok-1", "sid": "SM123", "name": "projects/p/messages/9", "ok": True, "ts": "1.2"})
        self.lock = threading.Lock()
        self.on_request = None  # called with the request's number (1, 2...) before it is answered
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real vendors' APIs
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with vendor.lock:
                    vendor.requests.append(Recorded("POST", self.path, dict(self.headers), body))
                    vendor.ports.append(self.client_address[1])
                    plan = vendor.queue.pop(0) if vendor.queue else vendor.default
                    vendor.in_flight += 1
                    vendor.max_in_flight = max(vendor.max_in_flight, vendor.in_flight)
                    number = len(vendor.requests)
                if vendor.on_request is not None:
                    vendor.on_request(number)
                if plan.delay:
                    time.sleep(plan.delay)
                with vendor.lock:
                    vendor.in_flight -= 1  # answered (before the client can read the answer)
                payload = b"" if plan.no_body else plan.raw or json.dumps(plan.body).encode()
                try:
                    if plan.http10:
                        self.protocol_version = "HTTP/1.0"
                    if plan.close or plan.http10 or plan.no_body or plan.cut:
                        self.close_connection = True
                    self.send_response(plan.status)
                    for k, v in plan.headers.items():
                        self.send_header(k, v)
                    if plan.close or plan.no_body:
                        self.send_header("Connection", "close")
                    self.send_header("Content-Type", "application/json")
                    if plan.chunked:
                        self.send_header("Transfer-Encoding", "chunked")
                    elif not plan.no_body:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if plan.chunked:
                        half = len(payload) // 2
                        for chunk in (payload[:half], payload[half:]):
                            time.sleep(plan.pause)
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.write(b"0\r\n\r\n")
                    elif plan.cut:
                        time.sleep(plan.pause)
                        self.wfile.write(payload[: len(payload) // 2])
                    elif plan.pause:
                        time.sleep(plan.pause)  # the headers went in a write of their own (end_headers)
                        self.wfile.write(payload)
                    elif plan.trickle:
                        self.wfile.flush()
                        for i in range(len(payload)):
                            time.sleep(plan.trickle)
                            self.wfile.write(payload[i:i + 1])
                            self.wfile.flush()
                    else:
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def plan(self, *plans: Plan) -> None:
        with self.lock:
            self.queue.extend(plans)

    def fail(self, times: int, status: int = 500, **kw) -> None:
        self.plan(*[Plan(status, {"error": "boom"}, **kw) for _ in range(times)])

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def self_signed_certificate(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (a host name or an IP address): (cert file, key file)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt_name = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        alt_name = x509.DNSName(name)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def start_smtp(host: str = "127.0.0.1", port: int = 0, *, auth: bool = False,
               **options) -> tuple[Controller, SmtpSink]:
    """A server on host:port (a free port by default). auth=True: it offers AUTH, even without TLS
    (as a hostile server would), and records every login in `sink.logins`."""
    sink = SmtpSink()
    if auth:
        options = {"authenticator": sink.authenticate, "auth_require_tls": False, **options}
    controller = Controller(sink, hostname=host, port=port or free_port(host), **options)
    controller.start()
    return controller, sink
