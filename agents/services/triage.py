"""Conversational triage on the chat channel: a scripted bot answers simple requests from
its decision tree and hands the conversation to an agent (a case, routed as any other,
with the full transcript on its timeline) when it cannot match the customer's message,
when the customer asks for a person, or when their sentiment drops.

Every inbound message is stored once (the chat platform's message id), scored with the
agents' scorer, counted as a chat engagement (`Chat Message Received`, which best-channel
selection reads), and answered through channels_app.message_send: consent applies; quiet
hours and caps do not, since the customer is waiting for the answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.choices import ConversationStatus, EntryKind, Priority, Sender
from agents.models import Case, CaseEntry, Conversation, ConversationMessage, TriageBot, TriageNode
from agents.scoring import TextScores, get_scorer
from journeys.engine.batch import rows_move
from journeys.models import Customer
from journeys.services.identity import MergePairs, merge_hook

BOT_TEMPLATE_NAME = "triage-bot-reply"
MAX_TRANSCRIPT_CHARS = 20000


@dataclass
class TriageResult:
    """What the bot did with one inbound message: `action` is greeted, asked (a question with
    options), resolved, not_understood, handed_off, to_agent (already with a person) or duplicate."""

    conversation: Conversation
    message: ConversationMessage
    action: str
    reply: ConversationMessage | None = None
    reason: str = ""
    case: Case | None = None


def bot_template():
    """The channels template that carries the bot's words (plain text, not escaped)."""
    from channels_app.models import MessageTemplate

    template, _ = MessageTemplate.objects.get_or_create(
        name=BOT_TEMPLATE_NAME,
        defaults={"channel_kind": "chat", "subject": "",
                  "body": "{% autoescape off %}{{ reply.body }}{% endautoescape %}"},
    )
    return template


def _has(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase.lower())}(?!\w)", text) is not None


def _options(bot: TriageBot, node: TriageNode | None) -> list[TriageNode]:
    if node is not None:
        children = list(node.children.all())
        if children:
            return children
    return list(bot.nodes.filter(parent__isnull=True))


def menu(options: list[TriageNode]) -> str:
    return "\n".join(f"{i}. {option.label}" for i, option in enumerate(options, start=1))


def node_match(*, bot: TriageBot, options: list[TriageNode], text: str) -> tuple[TriageNode | None, str]:
    """The option the customer means: its number in the menu, its label, or the most of its
    keywords found in the text; then any option of the tree by keywords (customers jump
    topics). Returns (node, how it matched)."""
    lower = (text or "").strip().lower()
    if lower.rstrip(".)").isdigit():
        index = int(lower.rstrip(".)")) - 1
        return (options[index], "number") if 0 <= index < len(options) else (None, "")
    for option in options:
        if lower == option.label.lower():
            return option, "label"

    def best(nodes: list[TriageNode]) -> TriageNode | None:
        scored = [(sum(1 for k in (n.keywords or []) if k.strip() and _has(lower, k)), -i, n)
                  for i, n in enumerate(nodes)]
        scored = [s for s in scored if s[0] > 0]
        return max(scored, key=lambda s: (s[0], s[1]))[2] if scored else None

    found = best(options)
    if found is not None:
        return found, "keywords"
    found = best(list(bot.nodes.all()))
    return (found, "keywords (elsewhere in the tree)") if found is not None else (None, "")


def _handoff_reason(*, bot: TriageBot, conversation: Conversation, text: str, scores: TextScores) -> str:
    lower = (text or "").lower()
    asked = next((k for k in bot.keywords if _has(lower, k)), None)
    if asked:
        return f"the customer asked for a person ({asked!r})"
    if scores.sentiment <= bot.sentiment_floor:
        return f"sentiment {scores.sentiment:+.2f} <= {bot.sentiment_floor:+.2f}"
    best = conversation.best_sentiment
    if best is not None and best - scores.sentiment >= bot.sentiment_drop:
        return f"sentiment fell from {best:+.2f} to {scores.sentiment:+.2f}"
    return ""


def _say(*, conversation: Conversation, text: str, in_reply_to: ConversationMessage, now: datetime,
         node: TriageNode | None = None) -> ConversationMessage:
    """Send the bot's words on the conversation's chat channel, once per inbound message."""
    from channels_app.services import message_send

    delivery = message_send(
        customer=conversation.customer, template=bot_template(), channel=conversation.channel,
        idempotency_key=f"chat:{conversation.pk}:reply:{in_reply_to.pk}", context={"reply": {"body": text}},
        step_key=f"chat-{conversation.pk}", policy_options={"in_reply_to": f"chat:{in_reply_to.pk}"}, now=now,
    )
    return ConversationMessage.objects.create(
        conversation=conversation, sender=Sender.BOT, text=text, node=node, delivery=delivery, created_at=now,
        data={"status": delivery.status, "reason": delivery.reason},
    )


def _conversation_for(*, customer: Customer, bot: TriageBot | None, conversation: Conversation | None) -> Conversation:
    """The conversation to continue (locked), or a new one with the bot."""
    if conversation is not None:
        # Locked alone: after a wait PostgreSQL re-reads the locked row, not the bot and case joined to it.
        return Conversation.objects.select_for_update().get(pk=conversation.pk)
    if bot is None:
        bot = TriageBot.objects.filter(active=True).order_by("pk").first()
        if bot is None:
            raise TriageBot.DoesNotExist("no active triage bot")
    current = (Conversation.objects.select_for_update()
               .filter(customer=customer, bot=bot, status__in=[ConversationStatus.BOT, ConversationStatus.HANDED_OFF])
               .order_by("-id").first())
    if current is not None and (current.status == ConversationStatus.BOT or (current.case and current.case.is_open)):
        return current
    return Conversation.objects.create(customer=customer, bot=bot, channel=bot.channel)


@transaction.atomic
def chat_message_receive(*, customer: Customer, text: str, conversation: Conversation | None = None,
                         bot: TriageBot | None = None, external_id: str | None = None,
                         now: datetime | None = None) -> TriageResult:
    """Take one message the customer wrote on chat and let the bot (or the agent who has
    the conversation) answer it. A repeated `external_id` returns what was done the first time."""
    from journeys.services.internal_events import event_record_internal

    now = now or timezone.now()
    if external_id:
        seen = ConversationMessage.objects.filter(external_id=external_id).select_related("conversation").first()
        if seen is not None:
            reply = seen.conversation.messages.filter(sender=Sender.BOT, id__gt=seen.pk).first()
            return TriageResult(conversation=seen.conversation, message=seen, action="duplicate", reply=reply)
    # One customer's messages are handled one at a time (two webhooks at once must not start two chats).
    Customer.objects.select_for_update().filter(pk=customer.pk).values_list("pk", flat=True).first()
    conversation = _conversation_for(customer=customer, bot=bot, conversation=conversation)
    bot = conversation.bot
    scores = get_scorer().score(text)
    try:
        with transaction.atomic():
            message = ConversationMessage.objects.create(
                conversation=conversation, sender=Sender.CUSTOMER, text=text, external_id=external_id or None,
                sentiment=scores.sentiment, intent=str(scores.intent)[:20], created_at=now,
            )
    except IntegrityError:  # the same webhook delivered twice at once: the other one answers it
        seen = ConversationMessage.objects.get(external_id=external_id)
        return TriageResult(conversation=conversation, message=seen, action="duplicate")
    first = not conversation.messages.exclude(pk=message.pk).exists()
    conversation.last_message_at = now
    Customer.objects.filter(pk=customer.pk).update(last_engaged_at=now)
    event_record_internal(customer=customer, name="Chat Message Received", message_id=f"chat-in:{message.pk}", at=now,
                          properties={"channel_kind": "chat", "conversation_id": conversation.pk,
                                      "intent": message.intent, "sentiment": message.sentiment})

    if conversation.status != ConversationStatus.HANDED_OFF and (answered := _answered_case(conversation)) is not None:
        # An agent wrote to the customer in this chat (a case a workflow opened) since the bot last
        # spoke: this message answers the agent. The chat is theirs from now on, as after a hand-off.
        conversation.status, conversation.case, conversation.handed_off_at = (
            ConversationStatus.HANDED_OFF, answered, now)
        conversation.handoff_reason = "the customer answered an agent's message"
    if conversation.status == ConversationStatus.HANDED_OFF:
        case = _to_case(conversation=conversation, message=message, scores=scores, reason="", now=now)
        conversation.save()
        return TriageResult(conversation=conversation, message=message, action="to_agent", case=case)

    reason = _handoff_reason(bot=bot, conversation=conversation, text=text, scores=scores)
    conversation.best_sentiment = max(scores.sentiment, conversation.best_sentiment
                                      if conversation.best_sentiment is not None else scores.sentiment)
    options = _options(bot, conversation.current_node)
    node, how = (None, "") if reason else node_match(bot=bot, options=options, text=text)
    if node is not None:
        message.node = node
        message.data = {"matched": how}
        message.save(update_fields=["node", "data"])
        conversation.misses = 0
        if node.handoff:
            reason = f"option {node.label!r} goes to a person"
        elif node.children.exists():
            conversation.current_node = node
            conversation.save()
            reply = _say(conversation=conversation, text=f"{node.text}\n{menu(list(node.children.all()))}",
                         in_reply_to=message, now=now, node=node)
            return TriageResult(conversation=conversation, message=message, action="asked", reply=reply)
        else:
            conversation.current_node, conversation.status, conversation.resolved_at = (
                node, ConversationStatus.RESOLVED, now)
            conversation.save()
            answer = f"{node.text}\n{bot.resolved_message}".strip()
            reply = _say(conversation=conversation, text=answer, in_reply_to=message, now=now, node=node)
            event_record_internal(customer=customer, name="Chat Resolved", message_id=f"chat-resolved:{conversation.pk}",
                                  at=now, properties={"conversation_id": conversation.pk, "option": node.label})
            return TriageResult(conversation=conversation, message=message, action="resolved", reply=reply)
    if not reason:
        if first:
            conversation.save()
            reply = _say(conversation=conversation, text=f"{bot.greeting}\n{menu(options)}", in_reply_to=message,
                         now=now)
            return TriageResult(conversation=conversation, message=message, action="greeted", reply=reply)
        conversation.misses += 1
        if conversation.misses < bot.max_misses:
            conversation.save()
            reply = _say(conversation=conversation, text=f"{bot.not_understood}\n{menu(options)}",
                         in_reply_to=message, now=now)
            return TriageResult(conversation=conversation, message=message, action="not_understood", reply=reply)
        reason = f"no option matched {conversation.misses} messages in a row"

    # Hand-off: tell the customer, open (or join) the case, attach the transcript.
    reply = _say(conversation=conversation, text=bot.handoff_message, in_reply_to=message, now=now)
    case = _to_case(conversation=conversation, message=message, scores=scores, reason=reason, now=now,
                    category=(node.category if node is not None else "") or bot.category)
    conversation.status, conversation.case, conversation.handoff_reason = ConversationStatus.HANDED_OFF, case, reason[:255]
    conversation.handed_off_at = now
    conversation.save()
    lines = list(conversation.messages.all())
    CaseEntry.objects.get_or_create(
        idempotency_key=f"chat:{conversation.pk}:transcript",
        defaults={"case": case, "kind": EntryKind.TRANSCRIPT, "body": conversation.transcript()[:MAX_TRANSCRIPT_CHARS],
                  "data": {"conversation": conversation.pk, "reason": reason, "messages": [
                      {"sender": m.sender, "text": m.text, "at": m.created_at.isoformat(), "sentiment": m.sentiment,
                       "option": m.node.label if m.node_id else None} for m in lines]}},
    )
    event_record_internal(customer=customer, name="Chat Handed Off", message_id=f"chat-handoff:{conversation.pk}",
                          at=now, properties={"conversation_id": conversation.pk, "case_id": case.pk, "reason": reason})
    return TriageResult(conversation=conversation, message=message, action="handed_off", reply=reply, reason=reason,
                        case=case)


def _answered_case(conversation: Conversation) -> Case | None:
    """The open case an agent last wrote to the customer about on chat, if that was after the
    bot's last words to them (else the customer is talking to the bot)."""
    from agents.services.cases import case_replied_on

    bot_spoke = (ConversationMessage.objects.filter(conversation__customer_id=conversation.customer_id,
                                                    sender=Sender.BOT)
                 .order_by("-created_at").values_list("created_at", flat=True).first())
    return case_replied_on(customers=[conversation.customer], channel=conversation.channel, since=bot_spoke)


def _to_case(*, conversation: Conversation, message: ConversationMessage, scores: TextScores, reason: str,
             now: datetime, category: str = "") -> Case:
    """Open the hand-off's case (once per conversation), or add a later message to it."""
    from agents.services.cases import CaseDraft, case_open

    bot, customer = conversation.bot, conversation.customer
    first = conversation.messages.filter(sender=Sender.CUSTOMER).first()
    priority = bot.priority + (1 if scores.sentiment <= -0.6 else 0)
    draft = CaseDraft(
        customer=customer, subject=f"Chat: {(first.text if first else message.text)[:80]}", text=message.text,
        category=(conversation.case.category if conversation.case else category or bot.category)[:64],
        intent=str(scores.intent)[:20], language=(customer.locale or "en")[:2], priority=min(priority, Priority.URGENT),
        sentiment=scores.sentiment, complexity=scores.complexity,
        reasons=[f"chat triage: {reason}"] if reason else ["chat: the customer wrote again"], team=bot.team,
    )
    key = f"chat:{conversation.pk}:handoff" if reason else f"chat:{conversation.pk}:message:{message.pk}"
    case, _ = case_open(draft=draft, idempotency_key=key, now=now)
    return case


@merge_hook
def conversations_merge_customers(pairs: MergePairs) -> None:
    """MERGE_HOOKS entry: absorbed profiles' chats belong to the surviving customers (one UPDATE)."""
    rows_move(Conversation.objects.all(), pairs)


def conversations_export(customer: Customer) -> tuple[str, list]:
    """EXPORTERS entry: the customer's chats with the bot and agents, message by message."""
    return "chat_conversations", [
        {"id": c.pk, "status": c.status, "started": c.created_at, "case": c.case_id,
         "messages": [{"sender": m.sender, "text": m.text, "at": m.created_at} for m in c.messages.all()]}
        for c in Conversation.objects.filter(customer=customer).prefetch_related("messages")
    ]


def conversations_erase(customer: Customer) -> dict:
    """ERASERS entry: the chats go with the customer (their words are personal data)."""
    messages = ConversationMessage.objects.filter(conversation__customer=customer).count()
    Conversation.objects.filter(customer=customer).delete()
    return {"chat_messages": messages}
