"""/v1/identify checks an email or phone trait as the customer import does: an identify whose
address cannot be one is quarantined naming the field; the rest of its batch is stored."""

from __future__ import annotations

import pytest

from journeys.models import Customer, Identity, QuarantinedEvent

pytestmark = pytest.mark.django_db


def test_an_identify_with_an_invalid_email_is_quarantined_and_its_batch_stored(api):
    # given a batch: a good identify, one with `not-an-email`, one with the phone `12-abc`
    batch = [{"type": "identify", "userId": "c-1", "traits": {"email": "c1@example.com", "phone": "+1 555 0100"}},
             {"type": "identify", "userId": "c-2", "traits": {"email": "not-an-email"}},
             {"type": "identify", "userId": "c-3", "traits": {"phone": "12-abc"}}]
    # when it is posted
    response = api.post("batch", {"batch": batch})
    # then the two bad items are rejected naming their field, and the good one is stored
    assert response.status_code == 200, response.content
    assert [r["field"] for r in response.json()["rejected"]] == ["batch[1].traits.email", "batch[2].traits.phone"]
    assert QuarantinedEvent.objects.count() == 2
    assert Customer.objects.get(external_id="c-1").email == "c1@example.com"
    assert not Identity.objects.filter(value__in=["not-an-email", "12abc"]).exists()
