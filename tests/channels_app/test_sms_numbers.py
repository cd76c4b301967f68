"""SMS and voice numbers go out in E.164 only: '00' becomes '+', a number without a country code is
refused by the messages API (naming `to`) and fails a journey's delivery, saying why."""

from __future__ import annotations

import pytest

from channels_app.models import Channel, MessageTemplate
from channels_app.services import message_send
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(sms):
    MessageTemplate.objects.create(name="code", channel_kind="sms", subject="", body="Your code is 1234")
    _, key = make_token(ApiScope.SEND, name="shop")
    return Api(key)


def post(api, on_commit, to):
    with on_commit():
        return api.post("messages", {"idempotency_key": f"k-{to}", "template": "code", "to": to})


@pytest.mark.parametrize("to, sent", [("0044 20 7946 0011", "+442079460011"), ("+1 (415) 555-0199", "+14155550199")])
def test_the_api_sends_a_number_with_its_country_code_in_e164(api, vendor, on_commit, to, sent):
    response = post(api, on_commit, to)

    assert response.status_code == 202, response.body
    assert vendor.requests[0].form()["To"] == sent


@pytest.mark.parametrize("to", ["(415) 555-0199", "020 7946 0011"])
def test_the_api_refuses_a_number_without_a_country_code_naming_to(api, vendor, on_commit, to):
    response = post(api, on_commit, to)

    assert response.status_code in (400, 422), response.body
    assert "to" in str(response.body) and "country code" in str(response.body)
    assert vendor.requests == []


def test_a_journey_message_to_a_number_without_a_country_code_fails_saying_why(sms, vendor, on_commit):
    # given customers whose profile numbers were typed with and without a country code
    national = CustomerFactory(external_id="n", phone="(415) 555-0199")
    international = CustomerFactory(external_id="i", phone="0044 20 7946 0011")

    with on_commit():
        failed = message_send(customer=national, template=TemplateFactory(), channel=sms, idempotency_key="a",
                              context={})
        sent = message_send(customer=international, template=TemplateFactory(), channel=sms, idempotency_key="b",
                            context={})
    failed.refresh_from_db()
    sent.refresh_from_db()

    # then the one without a country code is not sent and says so; the other goes in E.164
    assert (failed.status, failed.reason) == ("failed", "permanent_error") and "country code" in failed.error
    assert sent.status == "sent" and sent.to == "+442079460011"
    assert [r.form()["To"] for r in vendor.requests] == ["+442079460011"]
