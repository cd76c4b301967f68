"""Email through a real SMTP server: text + HTML, RFC 8058 headers, opens and clicks as events."""

from __future__ import annotations

import re
import time
from html import unescape
from urllib.parse import urlparse

import pytest

from channels_app.models import Delivery
from channels_app.services import message_send
from journeys.models import Event
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


def path_of(url: str) -> str:
    return urlparse(url).path


@pytest.fixture
def email_setup(smtp):
    channel = ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "news@shop.test"})
    template = TemplateFactory(
        topic=topic("product_updates"),
        subject="Hi {{ profile.first_name }}",
        body="Plain: total {{ event.properties.total }} & more",
        html_body='<html><body><p>Hello <b>{{ profile.first_name }}</b></p>'
                  '<a href="https://shop.test/cart?x=1&amp;y=2">cart</a>'
                  '<a href="{{ links.unsubscribe_url }}">unsubscribe</a></body></html>',
    )
    customer = CustomerFactory(external_id="ada", email="ada@example.com", traits={"first_name": "<Ada>"})
    return channel, template, customer


def send(on_commit, channel, template, customer, key="k1", **context):
    with on_commit():
        return message_send(customer=customer, template=template, channel=channel, idempotency_key=key,
                            context={"event": {"name": "Checkout", "properties": {"total": 120}}, **context})


def test_email_arrives_with_text_html_and_one_click_unsubscribe_headers(email_setup, smtp, on_commit):
    channel, template, customer = email_setup

    delivery = send(on_commit, channel, template, customer)

    delivery.refresh_from_db()
    assert delivery.status == "sent" and delivery.attempts == 1 and delivery.provider_message_id
    [mail] = smtp.messages
    assert mail["To"] == "ada@example.com" and mail["From"] == "news@shop.test"
    assert mail["Subject"] == "Hi <Ada>"
    assert mail["Message-ID"] == delivery.provider_message_id
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(r"<http://[^>]+/channels/u/[^>]+/>", mail["List-Unsubscribe"].strip())
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "total 120 & more" in text  # text is not HTML-escaped
    assert "<b>&lt;Ada&gt;</b>" in html  # HTML is
    assert "/channels/o/" in html and "/channels/c/" in html
    assert "https://shop.test/cart" not in html  # the link goes through the signed redirect
    assert Event.objects.filter(name="Message Sent", customer=customer).count() == 1


def test_open_and_click_are_recorded_once_as_events(email_setup, smtp, on_commit, client):
    channel, template, customer = email_setup
    delivery = send(on_commit, channel, template, customer)
    html = smtp.messages[0].get_body(("html",)).get_content()
    pixel = unescape(re.search(r'<img src="([^"]+)"', html).group(1))
    click = unescape(re.search(r'href="([^"]+/channels/c/[^"]+)"', html).group(1))

    for _ in range(2):
        assert client.get(path_of(pixel)).status_code == 200
        response = client.get(path_of(click))
        assert response.status_code == 302 and response["Location"] == "https://shop.test/cart?x=1&y=2"

    delivery.refresh_from_db()
    assert delivery.status == "clicked" and delivery.opened_at and delivery.clicked_at
    assert Event.objects.filter(name="Email Opened", customer=customer).count() == 1
    clicked = Event.objects.get(name="Link Clicked", customer=customer)
    assert clicked.properties["url"] == "https://shop.test/cart?x=1&y=2"
    assert clicked.properties["delivery_id"] == delivery.pk
    customer.refresh_from_db()
    assert customer.last_engaged_at is not None


def test_tampered_tracking_links_get_400_and_record_nothing(email_setup, smtp, on_commit, client):
    channel, template, customer = email_setup
    send(on_commit, channel, template, customer)
    html = smtp.messages[0].get_body(("html",)).get_content()
    pixel = path_of(unescape(re.search(r'<img src="([^"]+)"', html).group(1)))
    click = path_of(unescape(re.search(r'href="([^"]+/channels/c/[^"]+)"', html).group(1)))
    unsubscribe = path_of(smtp.messages[0]["List-Unsubscribe"].strip().strip("<>"))

    def tamper(path: str) -> str:
        return path[:-8] + ("A" if path[-8] != "A" else "B") + path[-7:]

    assert client.get(tamper(pixel)).status_code == 400
    assert client.get(tamper(click)).status_code == 400
    assert client.post(tamper(unsubscribe), {"List-Unsubscribe": "One-Click"}).status_code == 400
    # a valid token for one purpose is not accepted for another
    token = click.split("/")[-2]
    assert client.get(f"/channels/o/{token}.gif").status_code == 400

    assert not Event.objects.filter(name__in=["Email Opened", "Link Clicked"]).exists()
    assert Delivery.objects.get().status == "sent"
    assert not customer.consents.exists()


def test_transactional_email_has_no_list_unsubscribe(email_setup, smtp, on_commit):
    channel, template, customer = email_setup
    template.topic = topic("transactional")
    template.save()
    send(on_commit, channel, template, customer)
    assert "List-Unsubscribe" not in smtp.messages[0]


def test_smtp_permanent_rejection_fails_without_retry(email_setup, smtp, on_commit):
    channel, template, customer = email_setup
    smtp.refuse_next = ["550 5.7.1 relaying denied"]
    delivery = send(on_commit, channel, template, customer)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason, delivery.attempts) == ("failed", "permanent_error", 1)
    assert "550" in delivery.error and smtp.messages == []
    assert Event.objects.filter(name="Message Failed").count() == 1
    # (a 5.1.x refusal, an address that does not exist, is a bounce: test_bounces.py)


def test_non_ascii_subjects_bodies_and_named_senders_arrive_intact(smtp, on_commit):
    channel = ChannelFactory(name="email", kind="email", provider="smtp",
                             settings={"from_email": "Café Zoë <news@shop.test>"})
    template = TemplateFactory(topic=topic("transactional"), subject="Grüße, {{ profile.first_name }} ✓",
                               body="Ligne 1 : déjà vu = 100 %\n" + "é" * 300 + "\n.leading dot",
                               html_body="<p>Grüße <b>{{ profile.first_name }}</b></p>")
    customer = CustomerFactory(external_id="zoe", email="zoe@example.com", traits={"first_name": "Zoë"})

    send(on_commit, channel, template, customer)

    [mail] = smtp.messages
    assert mail["Subject"] == "Grüße, Zoë ✓"
    [sender] = mail["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Café Zoë", "news@shop.test")
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == "Ligne 1 : déjà vu = 100 %\n" + "é" * 300 + "\n.leading dot"
    assert "<b>Zoë</b>" in mail.get_body(("html",)).get_content()
    assert all(len(line) <= 998 for line in mail.as_string().splitlines())
    [message_id] = re.findall(r"(?m)^Message-ID: (.*)$", mail.as_string())  # as written, not as parsed
    assert re.fullmatch(r"<delivery-\d+\.[0-9a-f]{20}@shop\.test>", message_id.strip()), message_id


def test_recipients_refused_for_now_are_retried_later_without_opening_the_breaker(email_setup, smtp, on_commit):
    from channels_app.models import ChannelBreaker

    channel, template, _ = email_setup
    greylisted = [CustomerFactory(external_id=f"g{n}", email=f"g{n}@example.com") for n in range(6)]
    for customer in greylisted:
        smtp.refuse[customer.email] = "451 4.7.1 greylisted, try again later"
    for n, customer in enumerate(greylisted):
        send(on_commit, channel, template, customer, key=f"grey-{n}")
    ok = send(on_commit, channel, template, CustomerFactory(external_id="fine", email="fine@example.com"), key="ok")

    # the greylisted ones wait to be tried again in some minutes; the channel stays closed-circuit
    for delivery in Delivery.objects.filter(customer__in=greylisted):
        assert (delivery.status, delivery.reason) == ("deferred", "retry")
        assert (delivery.next_attempt_at - delivery.updated_at).total_seconds() >= 590
    breaker = ChannelBreaker.objects.filter(channel=channel).first()
    assert breaker is None or (breaker.state, breaker.consecutive_failures) == ("closed", 0)
    ok.refresh_from_db()
    assert ok.status == "sent" and [m["To"] for m in smtp.messages] == ["fine@example.com"]


def test_a_server_refusing_every_recipient_for_itself_counts_toward_the_breaker(email_setup, smtp, on_commit):
    from channels_app.models import ChannelBreaker

    channel, template, customer = email_setup
    smtp.refuse[customer.email] = "421 4.3.2 service shutting down"
    delivery = send(on_commit, channel, template, customer)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.reason) == ("deferred", "retry")
    assert ChannelBreaker.objects.get(channel=channel).consecutive_failures == 1


def test_a_line_break_in_a_value_does_not_lose_the_message_and_a_long_subject_arrives_whole(smtp, on_commit):
    channel = ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "news@shop.test"})
    template = TemplateFactory(topic=topic("transactional"), subject="Hi {{ profile.first_name }}: {{ journey.s }} END",
                               body="Body")
    typed = CustomerFactory(external_id="crlf", email="crlf@example.com", traits={"first_name": "Ada\r\nBcc: x@evil.test"})

    send(on_commit, channel, template, typed, journey={"s": "ä" * 300})

    [mail] = smtp.messages
    assert mail["Subject"] == "Hi Ada Bcc: x@evil.test: " + "ä" * 300 + " END"
    assert mail["Bcc"] is None and Delivery.objects.get().status == "sent"


def test_a_session_the_server_closed_while_idle_is_opened_again_before_the_next_message(smtp):
    """SMTP servers hang up idle sessions; the next message of a dispatcher run goes over a fresh
    session instead of failing (a lost session counts as 'may have arrived': it could not be
    rerouted and waited for a retry)."""
    from channels_app.providers import OutgoingMessage, get_provider

    smtp.hang_up_after_data = True
    provider = get_provider("smtp", {"from_email": "news@shop.test"})
    try:
        for i in range(3):
            result = provider.send(OutgoingMessage(delivery_id=i, idempotency_key=f"idle-{i}", kind="email",
                                                   to=f"idle{i}@example.com", subject="Hi", body="Hello"))
            assert result.provider_message_id
            deadline = time.monotonic() + 5
            while smtp.hung_up <= i and time.monotonic() < deadline:  # the server hangs up meanwhile
                time.sleep(0.005)
    finally:
        provider.close()
    assert [m["To"] for m in smtp.messages] == ["idle0@example.com", "idle1@example.com", "idle2@example.com"]
    assert len(set(smtp.peers)) == 3


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-command-at-a-time"])
def test_one_session_carries_refusals_and_messages_whether_or_not_the_server_pipelines(smtp, pipelining):
    """A relay offering PIPELINING (RFC 2920) gets MAIL, RCPT and DATA in one write (two round trips
    a message, not four). Either way a refused sender or recipient fails its own message only, with
    its answer's class (5xx permanent, 4xx transient, refused credentials transient), and the
    session goes on: every answer is read in order, none is taken for the next command's."""
    from channels_app.providers import OutgoingMessage, PermanentError, TransientError, get_provider

    smtp.pipelining = pipelining
    smtp.refuse = {"gone@example.com": "550 5.1.1 no such user", "full@example.com": "452 4.2.2 mailbox full"}
    provider = get_provider("smtp", {"from_email": "news@shop.test"})

    def send(to, body="Hello"):
        return provider.send(OutgoingMessage(delivery_id=len(to), idempotency_key=to, kind="email", to=to,
                                             subject="Hi", body=body))

    try:
        send("a@example.com", body=".starts with a dot\n..two\nbare\rreturn")
        with pytest.raises(PermanentError, match="550"):
            send("gone@example.com")
        with pytest.raises(TransientError, match="452"):
            send("full@example.com")
        smtp.mail_reply = "530 5.7.0 Authentication required"
        with pytest.raises(TransientError, match="credentials"):
            send("b@example.com")
        smtp.mail_reply = ""
        send("c@example.com")
    finally:
        provider.close()

    assert [m["To"] for m in smtp.messages] == ["a@example.com", "c@example.com"]
    assert len(set(smtp.peers)) == 1  # one session throughout
    body = smtp.messages[0].get_body(("plain",)).get_content()
    assert body.splitlines() == [".starts with a dot", "..two", "bare", "return"]
    assert smtp.pipelined == (5 if pipelining else 0)


@pytest.mark.parametrize("odd", ["data after a refusal", "hang-up after a refusal"])
def test_odd_servers_refusing_a_pipelined_recipient_fail_that_message_alone(settings, odd):
    """Some servers answer a pipelined DATA with 354 even though they refused the only recipient:
    the empty message is ended at once, so that the RSET after it and the next message's commands
    are read as commands. Others refuse and hang up (a drop rule, too many errors): the refusal is
    the answer (permanent, not 'no answer'), and the next message goes over a new session."""
    import socket
    import threading

    from channels_app.providers import OutgoingMessage, PermanentError, get_provider
    from tests.channels_app.servers import free_port

    port, seen = free_port(), []
    listener = socket.create_server(("127.0.0.1", port))

    def session(conn) -> bool:
        """One SMTP session; False when the client quit."""
        lines = conn.makefile("rb")
        conn.sendall(b"220 odd.test ESMTP\r\n")
        in_data = False
        for raw in lines:
            line = raw.decode().rstrip("\r\n")
            if in_data:
                if line == ".":
                    in_data = False
                    conn.sendall(b"554 no valid recipients\r\n" if seen[-2].startswith("RCPT TO:<gone")
                                 else b"250 queued\r\n")
                    seen.append(".")
                continue
            seen.append(line)
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if verb == "EHLO":
                conn.sendall(b"250-odd.test\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            elif verb == "RCPT" and "gone@" in line:
                conn.sendall(b"550 no such user\r\n")
                if odd == "hang-up after a refusal":
                    return True
            elif verb == "DATA":
                in_data = True
                conn.sendall(b"354 go ahead\r\n")
            elif verb == "QUIT":
                conn.sendall(b"221 bye\r\n")
                return False
            else:
                conn.sendall(b"250 ok\r\n")
        return False

    def serve():
        while True:
            conn, _ = listener.accept()
            with conn:
                if not session(conn):
                    return

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_USE_TLS = "127.0.0.1", port, False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    provider = get_provider("smtp", {"from_email": "news@shop.test"})
    try:
        with pytest.raises(PermanentError, match="550") as refused:
            provider.send(OutgoingMessage(delivery_id=1, idempotency_key="a", kind="email", to="gone@example.com",
                                          subject="Hi", body="Hello"))
        assert not refused.value.unanswered  # the server answered: never 'may have arrived'
        result = provider.send(OutgoingMessage(delivery_id=2, idempotency_key="b", kind="email",
                                               to="here@example.com", subject="Hi", body="Hello"))
    finally:
        provider.close()
        server.join(5)
        listener.close()
    assert result.provider_message_id
    verbs = [line.split(" ", 1)[0].split(":", 1)[0].upper() if line != "." else "." for line in seen]
    assert verbs == {
        "data after a refusal": ["EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", "MAIL", "RCPT", "DATA", ".", "QUIT"],
        "hang-up after a refusal": ["EHLO", "MAIL", "RCPT", "EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"],
    }[odd]
