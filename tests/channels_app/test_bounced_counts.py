"""A message whose recipient's server refused the address (bounced) was not sent: the version's graph
page, the dashboard (its "Messages (24 h)" card and the workflow's row) and /metrics all count it
as "bounced", beside "failed", never as sent nor hidden."""

from __future__ import annotations

import pytest
from django.urls import reverse

from channels_app.models import Delivery
from journeys.models import Workflow
from tests.apiclient import make_token
from tests.channels_app.conftest import orders
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory, topic
from tests.factories import live_workflow

pytestmark = pytest.mark.django_db


@pytest.fixture
def receipts(smtp):
    """The live workflow 'receipts': each Order Completed emails a receipt; 'u-C' and 'u-D' have
    addresses their mail server refuses (550 5.1.1 at RCPT)."""
    ChannelFactory(name="email", kind="email", provider="smtp", settings={"from_email": "shop@shop.test"})
    TemplateFactory(name="receipt", topic=topic("transactional"))
    for ref in "ABCD":
        CustomerFactory(external_id=f"u-{ref}", email=f"{ref.lower()}@example.com")
    smtp.refuse["c@example.com"] = smtp.refuse["d@example.com"] = "550 5.1.1 user unknown"
    live_workflow(name="receipts", definition={"trigger_event": "Order Completed", "steps": [
        {"key": "receipt", "kind": "send_message", "config": {"channel": "email", "template": "receipt"}}]})
    return smtp


def test_a_bounced_message_is_counted_as_bounced_on_the_pages_and_in_metrics(
        receipts, api, admin_client, client, django_capture_on_commit_callbacks):
    # given four orders, two of whose addresses the mail server refuses
    orders(api, django_capture_on_commit_callbacks, *({"ref": ref, "total": 5} for ref in "ABCD"))
    assert sorted(Delivery.objects.values_list("status", flat=True)) == ["bounced", "bounced", "sent", "sent"]
    assert len(receipts.messages) == 2
    workflow = Workflow.objects.get(name="receipts")

    # when the on-call reads the version's graph page
    page = admin_client.get(reverse("console:version_graph", args=[workflow.live_version_id])).content.decode()

    # then 2 of the 4 were sent (what the mail server accepted) and 2 bounced
    assert '<span id="msg-total-sent">2</span> of 4 sent' in page
    assert "0 failed · " in page and ">2 bounced</span>" in page

    # and the dashboard says the same: 2 sent, 0 failed, 2 bounced in the last 24 h
    feed = admin_client.get(reverse("console:dashboard_data")).json()
    totals = feed["metrics"]["deliveries"]
    assert (totals["sent"], totals["failed"], totals["bounced"]) == (2, 0, 2)
    assert '<dd id="m-bounced">2</dd>' in feed["html"]
    # and the workflow's row shows them where failures are shown, and stands out
    messages = feed["metrics"]["workflows"]["receipts"]["messages"]
    assert (messages["failed_hour"], messages["bounced_hour"], messages["bounced_recent"]) == (0, 2, 2)
    assert messages["failed_by"] == [{"status": "bounced", "reason": "undeliverable", "n": 2,
                                      "label": "bounced: the recipient's server refused the address"}]
    assert f'<tr data-workflow="{workflow.pk}" class="workflow-failing">' in feed["html"]
    assert "2 bounced in the last hour (bounced: the recipient&#x27;s server refused the address: 2)" in feed["html"]
    assert f"?workflow={workflow.pk}&amp;status__in=failed,bounced" in feed["html"]

    # and /metrics gives an alert the bounces (and does not count them as failures of ours)
    _, key = make_token("metrics:read")
    text = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {key}").content.decode()
    assert 'journeys_deliveries_bounced_last_hour{channel="email"} 2' in text
    assert 'journeys_deliveries_failed_last_hour{channel="email"} 0' in text
