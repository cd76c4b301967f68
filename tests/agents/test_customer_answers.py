"""A customer answers an agent's SMS on the product's own inbound SMS endpoint (Twilio-signed): the
answer lands on the case the agent texted them about, and SMS keywords keep working."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import Case
from channels_app.models import Channel, Consent
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, TeamFactory
from tests.channels_app.test_consent import inbound
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
ANSWER = "My order number is 12345, please hurry"


@pytest.fixture
def sms(monkeypatch):
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_TWILIO_TOKEN", "tw-secret")
    return Channel.objects.create(name="sms", kind="sms", provider="console",
                                  settings={"auth_token_env": "JOURNEYS_SECRET_TEST_TWILIO_TOKEN"})


@pytest.fixture
def texted(client, sms, django_capture_on_commit_callbacks):
    """A case whose customer prefers SMS; its agent asked a question by SMS from the console."""
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3}, user__username="alice")
    customer = CustomerFactory(phone="+15550001", traits={"preferred_channel": "sms"})
    case = open_case(customer=customer, capture=django_capture_on_commit_callbacks)
    client.force_login(agent.user)
    client.post(reverse("agents:reply", args=[case.pk]), {"body": "Could you send me your order number?", "nonce": "n1"})
    case.refresh_from_db()
    assert (case.assigned_agent, case.status, case.entries.get(kind="message").delivery.channel) == (agent, "pending", sms)
    return case


def answers(case) -> list[str]:
    return list(case.entries.filter(kind="inbound").order_by("id").values_list("body", flat=True))[1:]  # [0]: what opened it


def test_an_sms_answer_lands_on_the_case_and_puts_it_back_in_the_agents_court(client, sms, texted):
    # when the customer answers the agent's SMS
    answer = inbound(client.__class__(), sms, ANSWER, MessageSid="SM1")

    # then it is on the case (no automatic text back), which waits on the agent again with its SLA running
    assert answer.status_code == 200 and answer.content == b"<Response></Response>"
    texted.refresh_from_db()
    assert answers(texted) == [ANSWER]
    assert texted.status == "assigned" and texted.sla_due_at is not None
    page = client.get(reverse("agents:case", args=[texted.pk])).content.decode()
    assert ANSWER in page.split('id="timeline"')[1]

    # Twilio retrying its webhook (same MessageSid) does not add it twice
    inbound(client.__class__(), sms, ANSWER, MessageSid="SM1")
    assert answers(texted) == [ANSWER]


def test_keywords_keep_working_and_the_agent_sees_them_on_the_case(client, sms, texted):
    stop = inbound(client.__class__(), sms, "Stop.", MessageSid="SM2")
    assert b"unsubscribed" in stop.content
    assert Consent.objects.get(customer=texted.customer, channel_kind="sms").status == "opted_out"

    # "Yes" is a START keyword, and the answer to the agent's question
    start = inbound(client.__class__(), sms, "Yes", MessageSid="SM3")
    assert b"subscribed again" in start.content
    assert Consent.objects.get(customer=texted.customer, channel_kind="sms").status == "opted_in"

    helped = inbound(client.__class__(), sms, "Help, my parcel is lost", MessageSid="SM4")
    assert b"Reply STOP to unsubscribe" in helped.content
    assert answers(Case.objects.get(pk=texted.pk)) == ["Stop.", "Yes", "Help, my parcel is lost"]


def test_an_answer_after_the_case_was_resolved_reopens_it_but_a_bare_keyword_does_not(
        client, sms, texted, django_capture_on_commit_callbacks):
    from agents.services.cases import case_resolve

    case_resolve(case=texted, actor=texted.assigned_agent.user, code="answered")

    inbound(client.__class__(), sms, "YES", MessageSid="SM5")  # a START keyword on its own
    texted.refresh_from_db()
    assert texted.status == "resolved" and answers(texted) == []

    with django_capture_on_commit_callbacks(execute=True):
        inbound(client.__class__(), sms, "It still does not work", MessageSid="SM6")
    texted.refresh_from_db()
    assert (texted.status, texted.reopen_count, answers(texted)) == ("assigned", 1, ["It still does not work"])
    assert texted.assigned_agent.user.username == "alice"  # back to the agent who had it


def test_a_text_from_someone_no_agent_texted_is_ignored_as_before(client, sms, texted):
    CustomerFactory(phone="+15550002")
    reply = inbound(client.__class__(), sms, ANSWER, sender="+15550002", MessageSid="SM7")
    assert reply.content == b"<Response></Response>"
    assert answers(Case.objects.get(pk=texted.pk)) == []


def test_an_sms_answer_to_an_email_reply_is_not_taken_for_it(client, sms, django_capture_on_commit_callbacks,
                                                             email_channel):
    """Only a case an agent wrote to the customer about on SMS is answered by SMS."""
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 3})
    customer = CustomerFactory(phone="+15550001", email="ada@example.com")
    case = open_case(customer=customer, capture=django_capture_on_commit_callbacks)
    client.force_login(agent.user)
    client.post(reverse("agents:reply", args=[case.pk]), {"body": "Hello", "nonce": "n1"})

    inbound(client.__class__(), sms, ANSWER, MessageSid="SM8")

    assert answers(case) == [] and Case.objects.get(pk=case.pk).status == "pending"


def test_a_bare_keyword_on_an_open_case_is_on_its_timeline_but_no_answer(client, sms, texted):
    """STOP on its own: the agent sees it, but the case still waits on the customer (no deadline)."""
    inbound(client.__class__(), sms, "STOP", MessageSid="SM9")

    texted.refresh_from_db()
    assert answers(texted) == ["STOP"]
    assert (texted.status, texted.sla_due_at) == ("pending", None)


def test_an_answer_to_a_newer_case_that_was_closed_does_not_land_on_an_older_open_one(
        client, sms, texted, django_capture_on_commit_callbacks):
    from django.utils import timezone

    # given a newer case (about something else) the agent texted the same customer about after the first one
    Case.objects.filter(pk=texted.pk).update(category="refunds")
    newer = open_case(customer=texted.customer, capture=django_capture_on_commit_callbacks)
    client.force_login(texted.assigned_agent.user)
    client.post(reverse("agents:reply", args=[newer.pk]), {"body": "Your refund is on its way", "nonce": "n2"})
    assert newer.pk != texted.pk and newer.entries.filter(kind="message").exists()

    # resolved within the reopen window: the answer reopens the newer case, not the older open one
    Case.objects.filter(pk=newer.pk).update(status="resolved", resolved_at=timezone.now())
    inbound(client.__class__(), sms, ANSWER, MessageSid="SM10")
    assert answers(Case.objects.get(pk=texted.pk)) == []
    assert (Case.objects.get(pk=newer.pk).reopen_count, answers(newer)) == (1, [ANSWER])

    # closed: the answer goes to neither
    Case.objects.filter(pk=newer.pk).update(status="closed")
    inbound(client.__class__(), sms, "And another thing", MessageSid="SM11")
    assert answers(Case.objects.get(pk=texted.pk)) == [] and answers(newer) == [ANSWER]


def test_a_long_answer_is_kept_whole(client, sms, texted):
    long = "x" * 1590 + " " + "y" * 10  # longer than the old 5000-character cut once repeated below
    inbound(client.__class__(), sms, long * 4, MessageSid="SM12")
    assert answers(Case.objects.get(pk=texted.pk)) == [long * 4]
