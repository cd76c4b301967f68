"""An address with a non-ASCII local part (RFC 6531): sent with SMTPUTF8 where the server offers it,
else failed for good saying so; never rewritten as an RFC 2047 encoded-word (another mailbox).
A journey and the messages API agree."""

from __future__ import annotations

import pytest

from channels_app.models import Channel, Delivery, MessageTemplate
from channels_app.services import message_send
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory
from tests.channels_app.servers import start_smtp

pytestmark = pytest.mark.django_db


@pytest.fixture(params=[True, False], ids=["smtputf8", "ascii-only"])
def server(request, settings):
    controller, sink = start_smtp(enable_SMTPUTF8=request.param)
    settings.EMAIL_HOST, settings.EMAIL_PORT = controller.hostname, controller.port
    settings.EMAIL_USE_TLS, settings.EMAIL_HOST_USER, settings.EMAIL_HOST_PASSWORD = False, "", ""
    sink.utf8 = request.param
    yield sink
    controller.stop()


def check(delivery, sink):
    delivery.refresh_from_db()
    if sink.utf8:
        # the mailbox as written, with SMTPUTF8 on MAIL FROM and the To header in UTF-8
        assert delivery.status == "sent", delivery.error
        [(_, rcpt_tos, options)] = sink.envelopes
        assert rcpt_tos == ["jörg@xn--bcher-kva.example"] and "SMTPUTF8" in options
        assert b"\r\nTo: j\xc3\xb6rg@xn--bcher-kva.example\r\n" in sink.raw[0]
    else:
        # failed for good, saying why; the server got no RCPT
        assert (delivery.status, delivery.reason) == ("failed", "permanent_error")
        assert "needs SMTPUTF8" in delivery.error and delivery.attempts == 1
        assert sink.messages == []


def test_a_journey_message_to_a_non_ascii_local_part(server, on_commit):
    channel = ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "shop@shop.test"})
    customer = CustomerFactory(external_id="jorg", email="jörg@bücher.example")

    with on_commit():
        delivery = message_send(customer=customer, template=TemplateFactory(), channel=channel, idempotency_key="k",
                                context={})

    check(delivery, server)


def test_the_messages_api_accepts_the_address_and_sends_it_the_same_way(server, on_commit):
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from_email": "shop@shop.test"})
    MessageTemplate.objects.create(name="receipt", channel_kind="email", subject="Receipt", body="Thanks")
    _, key = make_token(ApiScope.SEND, name="shop")

    with on_commit():
        response = Api(key).post("messages", {"idempotency_key": "k1", "template": "receipt",
                                              "to": "jörg@bücher.example"})

    assert response.status_code == 202, response.body
    check(Delivery.objects.get(pk=response.body["delivery"]["id"]), server)
