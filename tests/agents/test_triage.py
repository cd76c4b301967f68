"""The chat triage bot: answers from its decision tree, hands off to an agent with the transcript
(no match, asks for a person, sentiment drops); replies go out over a real local Slack-style HTTP
server; the inbound webhook is signed."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from agents.chat import chat_inbound_url, chat_signature
from agents.models import Case, Conversation, ConversationMessage, TriageBot, TriageNode
from agents.scoring import get_scorer
from agents.services.cases import case_reply_send
from agents.services.triage import chat_message_receive
from channels_app.models import Channel, Delivery
from channels_app.services import consent_set
from journeys.models import Event
from tests.agents.factories import AgentFactory, TeamFactory
from tests.channels_app.servers import FakeVendor
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db
SIGNING = "slack-signing-secret"


@pytest.fixture
def slack(monkeypatch):
    """A real local HTTP server in the shape of Slack's Web API (chat.postMessage)."""
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_TOKEN", "xoxb-test")
    monkeypatch.setenv("JOURNEYS_SECRET_TEST_SLACK_SIGNING", SIGNING)
    server = FakeVendor().start()
    yield server
    server.stop()


@pytest.fixture
def chat(slack):
    return Channel.objects.create(name="chat", kind="chat", provider="slack", settings={
        "base_url": slack.url, "bot_token_env": "JOURNEYS_SECRET_TEST_SLACK_TOKEN", "signing_secret_env": "JOURNEYS_SECRET_TEST_SLACK_SIGNING"})


@pytest.fixture
def bot(chat):
    """Support bot: track an order (late -> answer; wrong address -> a person), opening hours, password reset."""
    support = TriageBot.objects.create(name="Support bot", channel=chat, category="general",
                                       handoff_keywords=["agent", "human", "person", "someone real"])
    track = TriageNode.objects.create(bot=support, order=1, label="Track my order",
                                      keywords=["where is", "tracking", "track", "parcel", "order"],
                                      text="Sure. What is wrong with the order?")
    TriageNode.objects.create(bot=support, parent=track, order=1, label="It is late", keywords=["late", "delayed"],
                              text="Late orders ship within 2 days; the tracking link is in your confirmation email.")
    TriageNode.objects.create(bot=support, parent=track, order=2, label="Wrong address", keywords=["address"],
                              text="", handoff=True, category="delivery")
    TriageNode.objects.create(bot=support, order=2, label="Opening hours", keywords=["hours", "open", "opening"],
                              text="We are open 9:00-17:00, Monday to Friday.")
    TriageNode.objects.create(bot=support, order=3, label="Reset my password", keywords=["password", "log in"],
                              text="Use 'Forgot password' on the sign-in page; the link is valid for an hour.")
    return support


@pytest.fixture
def agent(db):
    team = TeamFactory(slug="support", categories=["general", "delivery"], is_fallback=True)
    return AgentFactory(team=team, skills={"general": 4, "delivery": 3}, user__username="sam")


@pytest.fixture
def ada(db):
    return CustomerFactory(external_id="ada", traits={"chat_id": "D-ADA", "first_name": "Ada"})


@pytest.fixture
def say(ada, bot, django_capture_on_commit_callbacks):
    """The customer writes; the commit sends the bot's reply and routes any case."""

    def write(text, **kw):
        with django_capture_on_commit_callbacks(execute=True):
            return chat_message_receive(customer=ada, text=text, bot=bot, **kw)

    return write


def posted(slack) -> list[dict]:
    return [r.json() for r in slack.requests if r.path == "/api/chat.postMessage"]


def test_a_conversation_the_bot_resolves(say, slack, ada):
    greeted = say("hi there")
    asked = say("where is my parcel?")
    resolved = say("it is delayed")

    assert [greeted.action, asked.action, resolved.action] == ["greeted", "asked", "resolved"]
    sent = posted(slack)
    assert [m["channel"] for m in sent] == ["D-ADA"] * 3
    assert sent[0]["text"] == ("Hi! I can help with a few things:\n1. Track my order\n2. Opening hours\n"
                               "3. Reset my password")
    assert sent[1]["text"] == "Sure. What is wrong with the order?\n1. It is late\n2. Wrong address"
    assert sent[2]["text"].startswith("Late orders ship within 2 days") and "Glad I could help" in sent[2]["text"]
    assert slack.requests[0].headers["Authorization"] == "Bearer xoxb-test"

    conversation = Conversation.objects.get()
    assert (conversation.status, conversation.case, conversation.resolved_at is not None) == ("resolved", None, True)
    assert [(m.sender, m.node.label if m.node else None) for m in conversation.messages.all()] == [
        ("customer", None), ("bot", None), ("customer", "Track my order"), ("bot", "Track my order"),
        ("customer", "It is late"), ("bot", "It is late")]
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}
    assert not Case.objects.exists()
    assert Event.objects.filter(customer=ada, name="Chat Message Received").count() == 3
    assert Event.objects.filter(customer=ada, name="Chat Resolved").count() == 1
    ada.refresh_from_db()
    assert ada.last_engaged_at is not None


def test_a_first_message_can_be_answered_straight_away(say, slack):
    result = say("What are your opening hours?")
    assert result.action == "resolved"
    assert posted(slack)[0]["text"].startswith("We are open 9:00-17:00")


def test_a_menu_number_picks_the_option(say):
    say("hello")
    assert say("3").reply.text.startswith("Use 'Forgot password'")


def test_no_match_hands_off_with_the_transcript(say, slack, agent):
    say("hi")
    first_miss = say("my blender makes a strange noise")
    handed = say("it also smells of smoke")

    assert first_miss.action == "not_understood"
    assert first_miss.reply.text.startswith("Sorry, I did not get that. You can pick:\n1. Track my order")
    assert handed.action == "handed_off" and handed.reason == "no option matched 2 messages in a row"
    case = handed.case
    case.refresh_from_db()
    assert (case.status, case.assigned_agent, case.category) == ("assigned", agent, "general")
    assert case.escalation_reasons == ["chat triage: no option matched 2 messages in a row"]
    assert case.subject == "Chat: hi"

    transcript = case.entries.get(kind="transcript")
    lines = transcript.body.splitlines()
    assert [re.sub(r"^\[[\d: -]+\] ", "", line) for line in lines] == [
        "Customer: hi",
        "Bot: Hi! I can help with a few things:", "1. Track my order", "2. Opening hours", "3. Reset my password",
        "Customer: my blender makes a strange noise",
        "Bot: Sorry, I did not get that. You can pick:", "1. Track my order", "2. Opening hours",
        "3. Reset my password",
        "Customer: it also smells of smoke",
        "Bot: I'm passing you to a colleague, who will answer here shortly.",
    ]
    assert [m["sender"] for m in transcript.data["messages"]] == ["customer", "bot"] * 3
    assert transcript.data["reason"] == "no option matched 2 messages in a row"
    assert posted(slack)[-1]["text"] == "I'm passing you to a colleague, who will answer here shortly."
    conversation = Conversation.objects.get()
    assert (conversation.status, conversation.case) == ("handed_off", case)
    assert Event.objects.filter(name="Chat Handed Off", properties__case_id=case.pk).exists()


def test_after_a_hand_off_the_agent_has_the_chat(say, slack, agent, django_capture_on_commit_callbacks):
    case = say("I want to talk to a human").case
    replies_before = len(posted(slack))

    later = say("my order number is 1234")

    assert later.action == "to_agent" and later.reply is None and later.case == case
    assert len(posted(slack)) == replies_before  # the bot keeps quiet: a person has it
    assert case.entries.filter(kind="inbound", body="my order number is 1234").exists()

    with django_capture_on_commit_callbacks(execute=True):
        entry = case_reply_send(case=case, actor=agent.user, body="Thanks, it ships today.", idempotency_key="n1")
    entry.delivery.refresh_from_db()
    assert entry.delivery.channel.kind == "chat" and entry.delivery.status == "sent"
    assert posted(slack)[-1] == {"channel": "D-ADA", "text": "Thanks, it ships today."}
    assert Conversation.objects.get().messages.last().sender == "agent"


def test_asking_for_a_person_hands_off_at_once(say, agent):
    result = say("Can I talk to a human please")

    assert result.action == "handed_off"
    assert result.reason == "the customer asked for a person ('human')"
    transcript = result.case.entries.get(kind="transcript")
    assert "Customer: Can I talk to a human please" in transcript.body
    assert transcript.data["reason"] == "the customer asked for a person ('human')"


def test_a_keyword_inside_another_word_is_not_a_request_for_a_person(ada, bot, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        result = chat_message_receive(customer=ada, text="how do I change my personal password", bot=bot)
    assert result.action == "resolved" and result.reply.text.startswith("Use 'Forgot password'")


def test_an_option_can_hand_off(say, agent):
    say("track my order")
    result = say("I need to change the address")
    assert result.action == "handed_off" and result.reason == "option 'Wrong address' goes to a person"
    assert result.case.category == "delivery"


def test_negative_sentiment_hands_off(say, agent):
    say("hi")
    text = "This is terrible, the worst service ever, I am furious"
    score = get_scorer().score(text).sentiment
    assert score <= -0.4

    result = say(text)

    assert result.action == "handed_off" and result.reason == f"sentiment {score:+.2f} <= -0.40"
    case = result.case
    assert case.sentiment == score and case.priority == 3  # strong emotion jumps the queue
    assert case.entries.get(kind="transcript").data["messages"][-2]["sentiment"] == score


def test_a_sentiment_drop_hands_off(say, bot, agent):
    bot.sentiment_floor = -0.9
    bot.save()
    happy, upset = "Thanks so much, you are great and helpful!", "hmm, not good, this is disappointing"
    best, low = get_scorer().score(happy).sentiment, get_scorer().score(upset).sentiment
    assert best - low >= 0.8 and low > -0.9

    say(happy)
    result = say(upset)

    assert result.action == "handed_off" and result.reason == f"sentiment fell from {best:+.2f} to {low:+.2f}"


def test_consent_applies_to_bot_replies(say, slack, ada):
    consent_set(customer=ada, channel_kind="chat", topic=None, status="opted_out", source="admin")
    result = say("What are your opening hours?")
    assert (result.reply.delivery.status, result.reply.delivery.reason) == ("suppressed", "channel_opt_out")
    assert posted(slack) == []


def test_quiet_hours_do_not_hold_an_answer_the_customer_is_waiting_for(say, slack, chat):
    hour = timezone.now().hour
    chat.quiet_start = datetime.strptime(f"{(hour - 1) % 24:02d}:00", "%H:%M").time()
    chat.quiet_end = datetime.strptime(f"{(hour + 2) % 24:02d}:00", "%H:%M").time()
    chat.save()
    delivery = say("opening hours?").reply.delivery
    delivery.refresh_from_db()
    assert (delivery.status, delivery.channel.quiet_start is not None) == ("sent", True)


def test_chat_engagement_feeds_best_channel_selection(say, ada):
    from channels_app.services.choice import channel_choose, engagements_list
    from journeys.engine.runtime import profile_dict

    Channel.objects.create(name="email", kind="email", provider="console")
    say("hi")
    ada.refresh_from_db()
    now = timezone.now() + timedelta(seconds=1)
    assert [e.kind for e in engagements_list(customer=ada, now=now)] == ["chat"]
    choice = channel_choose(customer=ada, profile=profile_dict(ada, now), channels=list(Channel.objects.all()),
                            send_time="now", now=now)
    assert choice.channel.kind == "chat" and choice.chosen_by == "last_engaged"


# --- the inbound webhook ---------------------------------------------------------------------------------------


def slack_post(client, chat, body: dict, *, secret=SIGNING, stamp=None, token=None):
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()) if stamp is None else stamp)
    url = chat_inbound_url(chat).split("127.0.0.1:8000", 1)[-1] if token is None else \
        reverse("agents:chat_inbound", args=[token])
    return client.generic("POST", url, raw, content_type="application/json",
                          HTTP_X_SLACK_REQUEST_TIMESTAMP=stamp,
                          HTTP_X_SLACK_SIGNATURE=chat_signature(secret=secret, timestamp=stamp, body=raw))


def event(text, event_id="Ev1", **extra):
    return {"type": "event_callback", "event_id": event_id,
            "event": {"type": "message", "channel": "D-ADA", "user": "U1", "text": text, **extra}}


def test_signed_webhook_message_is_answered_once(client, chat, bot, ada, slack, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        answer = slack_post(client, chat, event("What are your opening hours?"))
    with django_capture_on_commit_callbacks(execute=True):
        again = slack_post(client, chat, event("What are your opening hours?"))  # Slack retries

    assert answer.status_code == 200 and answer.json()["action"] == "resolved"
    assert again.json()["action"] == "duplicate"
    assert ConversationMessage.objects.filter(sender="customer").count() == 1
    assert len(posted(slack)) == 1


def test_two_chats_message_numbers_do_not_clash(client, chat, bot, ada, slack, django_capture_on_commit_callbacks):
    CustomerFactory(external_id="bea", traits={"chat_id": "D-BEA"})
    plain = {"chat_id": "D-ADA", "text": "What are your opening hours?", "message_id": "1"}
    with django_capture_on_commit_callbacks(execute=True):
        first = slack_post(client, chat, plain)
        second = slack_post(client, chat, {**plain, "chat_id": "D-BEA", "text": "my card was charged twice"})

    assert first.json()["action"] != "duplicate" and second.json()["action"] != "duplicate", second.json()
    assert first.json()["conversation"] != second.json()["conversation"]
    assert ConversationMessage.objects.filter(sender="customer").count() == 2


def test_webhook_refuses_bad_signatures_and_tokens(client, chat, bot, ada):
    assert slack_post(client, chat, event("hi"), secret="wrong").status_code == 403
    assert slack_post(client, chat, event("hi"), stamp=int(time.time()) - 3600).status_code == 403
    assert slack_post(client, chat, event("hi"), token="forged").status_code == 400
    assert not ConversationMessage.objects.exists()


def test_webhook_ignores_the_bots_own_echo_and_unknown_senders(client, chat, bot, ada):
    echo = slack_post(client, chat, event("Hi! I can help", bot_id="B1"))
    stranger = slack_post(client, chat, {**event("hi", "Ev9"), "event": {"type": "message", "channel": "D-NOBODY",
                                                                         "text": "hi"}})
    challenge = slack_post(client, chat, {"type": "url_verification", "challenge": "abc"})

    assert echo.json() == {"ok": True, "ignored": "not a customer message"}
    assert stranger.json() == {"ok": False, "error": "unknown chat id"}
    assert challenge.json() == {"challenge": "abc"}
    assert not ConversationMessage.objects.exists()


@pytest.mark.parametrize(("text", "message"), [
    (float("nan"), "event.text: is not a finite number"),
    ("where is my \u0000 order", "event.text: contains a NUL character"),
    ("where is my \ud800 order", "event.text: contains text that is not valid Unicode"),
])
def test_webhook_refuses_a_message_no_database_stores_naming_the_field(client, chat, bot, ada, text, message):
    # given a signed chat message whose text is NaN, or holds a NUL or a lone surrogate
    # when the platform posts it
    response = slack_post(client, chat, event(text))

    # then it is a 400 naming the field, and no conversation holds it
    assert response.status_code == 400 and message in response.content.decode()
    assert not ConversationMessage.objects.exists()


def test_admin_shows_the_decision_tree(admin_client, bot):
    page = admin_client.get(reverse("admin:agents_triagebot_change", args=[bot.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Track my order" in html and "It is late" in html and "Wrong address" in html and "→ agent" in html
    assert admin_client.get(reverse("admin:agents_conversation_changelist")).status_code == 200


def test_erasure_and_export_cover_conversations(say, ada):
    from channels_app.services import customer_erase, customer_export

    say("hi")
    exported = customer_export(customer=ada)
    assert [m["text"] for m in exported["chat_conversations"][0]["messages"]][0] == "hi"
    record = customer_erase(customer=ada, actor="test")
    assert record.counts["chat_messages"] == 2 and not Conversation.objects.exists()


def _inline(rows: list[dict], initial: int = 0) -> dict:
    data = {"nodes-TOTAL_FORMS": len(rows), "nodes-INITIAL_FORMS": initial, "nodes-MIN_NUM_FORMS": 0,
            "nodes-MAX_NUM_FORMS": 1000}
    for i, row in enumerate(rows):
        data.update({f"nodes-{i}-{k}": v for k, v in row.items()})
    return data


def test_ops_build_the_tree_in_the_admin(admin_client, chat, ada, django_capture_on_commit_callbacks):
    form = {"name": "Shop bot", "channel": chat.pk, "active": "on", "greeting": "Hello!", "not_understood": "Sorry:",
            "handoff_message": "A colleague will answer.", "resolved_message": "", "handoff_keywords": '["human"]',
            "max_misses": 2, "sentiment_floor": -0.4, "sentiment_drop": 0.8, "category": "general", "priority": 2,
            "change_reason": "returns branch for the shop bot"}
    added = admin_client.post(reverse("admin:agents_triagebot_add"), {**form, **_inline([
        {"order": 1, "label": "Returns", "keywords": '["return", "send back"]', "text": "Which item?", "category": ""},
    ])})
    assert added.status_code == 302, added.content.decode()[:3000]
    bot = TriageBot.objects.get(name="Shop bot")
    returns = bot.nodes.get()
    edited = admin_client.post(reverse("admin:agents_triagebot_change", args=[bot.pk]), {**form, **_inline([
        {"id": returns.pk, "bot": bot.pk, "order": 1, "label": "Returns", "keywords": '["return", "send back"]',
         "text": "Which item?", "category": ""},
        {"parent": returns.pk, "order": 1, "label": "Shoes", "keywords": '["shoes"]',
         "text": "Shoes go back free within 30 days.", "category": ""},
    ], initial=1)})
    assert edited.status_code == 302, edited.content.decode()[:3000]

    with django_capture_on_commit_callbacks(execute=True):
        chat_message_receive(customer=ada, text="I want to return something", bot=bot)
        result = chat_message_receive(customer=ada, text="the shoes", bot=bot)
    assert result.action == "resolved" and result.reply.text == "Shoes go back free within 30 days."


@pytest.fixture
def workflow_case(ada, agent, django_capture_on_commit_callbacks):
    """A case a workflow opened (no chat with the bot) for a customer who prefers chat; the agent
    asked a question, which went out in the chat."""
    from tests.agents.conftest import open_case

    ada.traits = {**ada.traits, "preferred_channel": "chat"}
    ada.save()
    case = open_case(customer=ada, category="general", capture=django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        case_reply_send(case=case, actor=agent.user, body="Could you send me your order number?", idempotency_key="r1")
    case.refresh_from_db()
    assert (case.assigned_agent, case.status) == (agent, "pending")
    return case


def test_an_answer_in_the_chat_to_an_agent_of_a_workflow_case_goes_to_the_case_not_the_bot(
        client, chat, bot, slack, agent, workflow_case, django_capture_on_commit_callbacks):
    assert posted(slack)[-1] == {"channel": "D-ADA", "text": "Could you send me your order number?"}
    sent = len(posted(slack))

    # when the customer answers in the chat
    with django_capture_on_commit_callbacks(execute=True):
        answer = slack_post(client, chat, {"chat_id": "D-ADA", "text": "My order number is 12345, please hurry",
                                           "message_id": "m1"})

    # then it is on the case, which waits on the agent again; the bot kept quiet
    assert answer.json()["action"] == "to_agent" and answer.json()["case"] == workflow_case.pk
    workflow_case.refresh_from_db()
    assert workflow_case.status == "assigned" and workflow_case.sla_due_at is not None
    assert workflow_case.entries.filter(kind="inbound", body="My order number is 12345, please hurry").exists()
    assert len(posted(slack)) == sent
    # the chat is the agent's from now on, as after a hand-off
    with django_capture_on_commit_callbacks(execute=True):
        case_reply_send(case=workflow_case, actor=agent.user, body="Thanks, it ships today.", idempotency_key="r2")
    conversation = Conversation.objects.get()
    assert (conversation.status, conversation.case) == ("handed_off", workflow_case)
    assert [m.sender for m in conversation.messages.all()] == ["customer", "agent"]
    assert slack_post(client, chat, {"chat_id": "D-ADA", "text": "great", "message_id": "m2"}).json()["action"] == "to_agent"


def test_after_the_workflow_case_is_resolved_the_bot_answers_the_chat_again(
        client, chat, bot, slack, agent, workflow_case, django_capture_on_commit_callbacks):
    from agents.services.cases import case_resolve

    case_resolve(case=workflow_case, actor=agent.user, code="answered")
    with django_capture_on_commit_callbacks(execute=True):
        answer = slack_post(client, chat, {"chat_id": "D-ADA", "text": "What are your opening hours?", "message_id": "m1"})

    assert answer.json()["action"] == "resolved" and answer.json()["case"] is None
    assert Case.objects.get(pk=workflow_case.pk).status == "resolved"


def test_on_a_chat_channel_without_a_bot_an_answer_to_an_agent_still_reaches_the_case(
        client, chat, bot, slack, workflow_case, django_capture_on_commit_callbacks):
    TriageBot.objects.update(active=False)

    answer = slack_post(client, chat, {"chat_id": "D-ADA", "text": "It is 12345", "message_id": "m1"})
    again = slack_post(client, chat, {"chat_id": "D-ADA", "text": "It is 12345", "message_id": "m1"})  # retried

    assert answer.json() == {"ok": True, "conversation": None, "action": "to_agent", "reply": None,
                             "case": workflow_case.pk} == again.json()
    assert workflow_case.entries.filter(kind="inbound", body="It is 12345").count() == 1
    assert Case.objects.get(pk=workflow_case.pk).status == "assigned"
