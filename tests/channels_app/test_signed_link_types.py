"""Signed-link views answer 400 when a token that verifies carries data of the wrong shape
(issue #15 item 11: they answered 500), and status callbacks refuse odd bodies the same way."""

from __future__ import annotations

import pytest
from django.core import signing

from channels_app.services.links import SALTS, link_url
from tests.channels_app.factories import CustomerFactory

pytestmark = pytest.mark.django_db

ROUTES = {"unsubscribe": "/channels/u/{}/", "preferences": "/channels/p/{}/", "open": "/channels/o/{}.gif",
          "click": "/channels/c/{}/", "status": "/channels/status/{}/", "inbound": "/channels/inbound/sms/{}/",
          "chat": "/agents/chat/inbound/{}/"}
ODD = [["x"], {"c": [1]}, {"c": "1; drop"}, {"c": {"a": 1}}, {"d": None}, {"d": 1.5}, {"d": True}, {"d": -1},
       {"d": 10**30}, {"d": 1, "u": ["http://x"]}, {"ch": "1"}, {"c": 1, "k": 5}, {"c": 1, "t": [1]}, "text", 7, {}]


def token(purpose, data):
    return signing.dumps(data, salt=SALTS[purpose], compress=True)


@pytest.mark.parametrize("purpose", ROUTES)
@pytest.mark.parametrize("data", ODD, ids=repr)
def test_a_verified_token_with_odd_data_is_a_bad_link(client, purpose, data):
    path = ROUTES[purpose].format(token(purpose, data))
    method = client.post if purpose in ("status", "inbound", "chat") else client.get
    assert method(path).status_code == 400


def test_status_callbacks_refuse_bodies_of_the_wrong_shape(client):
    path = link_url(purpose="status", data={"d": 1}).split("8000", 1)[1]
    assert client.post(path, "[1, 2]", content_type="application/json").status_code == 400
    assert client.post(path, '{"status": ["delivered"]}', content_type="application/json").status_code == 400
    assert client.post(path, '{"status": "delivered"}', content_type="application/json").status_code == 200


def test_good_links_still_work(client):
    customer = CustomerFactory()
    assert client.get(link_url(purpose="preferences", data={"c": customer.pk}).split("8000", 1)[1]).status_code == 200
    assert client.get(link_url(purpose="unsubscribe", data={"c": customer.pk, "k": "email", "t": None})
                      .split("8000", 1)[1]).status_code == 200


@pytest.mark.parametrize("purpose", SALTS)
@pytest.mark.parametrize("data", [{"c": 7}, {"d": 12, "u": "https://shop.example/p?" + "x=1&" * 40},
                                  {"c": 1, "k": "product_updates", "t": None, "d": 3}, {"c": "é ü"}], ids=repr)
def test_links_are_signed_exactly_as_django_signs_them(purpose, data):
    """link_sign is signing.dumps(compress=True) byte for byte (compressed or not), read back by
    signing.loads, and follows a change of SECRET_KEY (old links verify through the fallbacks)."""
    from django.test import override_settings

    from channels_app.services.links import link_sign

    for _ in range(3):  # the two calls must fall in the same second (the token carries it)
        ours, django = link_sign(purpose=purpose, data=data), token(purpose, data)
        if ours.split(":")[1] == django.split(":")[1]:
            break
    assert ours == django
    assert signing.loads(ours, salt=SALTS[purpose]) == data
    with override_settings(SECRET_KEY="another-" + "k" * 50, SECRET_KEY_FALLBACKS=[signing.settings.SECRET_KEY]):
        rotated = link_sign(purpose=purpose, data=data)
        assert rotated.rsplit(":", 1)[1] != ours.rsplit(":", 1)[1]
        assert signing.loads(rotated, salt=SALTS[purpose]) == signing.loads(ours, salt=SALTS[purpose]) == data
