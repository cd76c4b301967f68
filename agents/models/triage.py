from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from simple_history.models import HistoricalRecords

from agents.choices import ConversationStatus, Priority, Sender
from journeys.models.base import Timestamped

DEFAULT_HANDOFF_KEYWORDS = ["agent", "human", "person", "someone", "representative", "operator", "real person",
                            "talk to a person", "speak to someone"]


class TriageBot(Timestamped):
    """A scripted chat bot that answers simple requests from a small decision tree (its
    nodes) and hands the conversation to an agent when it cannot: no option matches after
    `max_misses` tries, the customer asks for a person, or their sentiment drops."""

    name = models.CharField(max_length=100, unique=True)
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.PROTECT, related_name="triage_bots",
                                help_text="the chat channel the bot listens and answers on")
    active = models.BooleanField(default=True)
    greeting = models.TextField(default="Hi! I can help with a few things:",
                                help_text="said before the first menu of options")
    not_understood = models.TextField(default="Sorry, I did not get that. You can pick:",
                                      help_text="said when nothing matches (before the options again)")
    handoff_message = models.TextField(default="I'm passing you to a colleague, who will answer here shortly.")
    resolved_message = models.TextField(default="Glad I could help. Write again any time.", blank=True,
                                        help_text="added after an answer that resolves the request")
    handoff_keywords = models.JSONField(default=list, blank=True,
                                        help_text='words that ask for a person, e.g. ["agent", "human", "person"]')
    max_misses = models.PositiveSmallIntegerField(default=2, help_text="unmatched messages before a hand-off")
    sentiment_floor = models.FloatField(default=-0.4, help_text="hand off when a message scores at or below this (-1..1)")
    sentiment_drop = models.FloatField(default=0.8,
                                       help_text="hand off when sentiment falls this much below the conversation's best")
    category = models.SlugField(max_length=64, default="general", help_text="category of the cases it opens")
    team = models.ForeignKey("agents.Team", null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                             help_text="route hand-offs to this team (default: by category)")
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not isinstance(self.handoff_keywords, list) or not all(isinstance(k, str) for k in self.handoff_keywords):
            raise ValidationError({"handoff_keywords": 'a list of words, e.g. ["agent", "human"]'})
        if self.channel_id and self.channel.kind != "chat":
            raise ValidationError({"channel": "pick a chat channel"})

    @property
    def keywords(self) -> list[str]:
        return [k.lower() for k in (self.handoff_keywords or DEFAULT_HANDOFF_KEYWORDS) if k.strip()]


class TriageNode(models.Model):
    """One option of the bot's decision tree. The customer reaches it by its number in the
    menu, its label, or one of its keywords; the bot then says `text`. A node with children
    asks a question (its children are the next menu); a leaf answers and resolves, unless
    it is a hand-off node ("talk to billing")."""

    bot = models.ForeignKey(TriageBot, on_delete=models.CASCADE, related_name="nodes")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children",
                               help_text="empty = an option of the first menu")
    order = models.PositiveSmallIntegerField(default=0)
    label = models.CharField(max_length=100, help_text="the option as shown in the menu, e.g. Track my order")
    keywords = models.JSONField(default=list, blank=True,
                                help_text='intent keywords, e.g. ["where is", "tracking", "parcel"]')
    text = models.TextField(help_text="the answer, or the question asked before this node's own options")
    handoff = models.BooleanField(default=False, help_text="reaching this option hands the chat to an agent")
    category = models.SlugField(max_length=64, blank=True, help_text="case category when handing off from here")
    history = HistoricalRecords()

    class Meta:
        ordering = ["bot", "parent_id", "order", "id"]

    def __str__(self) -> str:
        return f"{self.bot.name}: {self.label}"

    def clean(self) -> None:
        if not isinstance(self.keywords, list) or not all(isinstance(k, str) for k in self.keywords):
            raise ValidationError({"keywords": 'a list of words or phrases, e.g. ["refund", "money back"]'})
        if self.parent_id and self.parent.bot_id != self.bot_id:
            raise ValidationError({"parent": "the parent option belongs to another bot"})
        node, seen = self.parent, set()
        while node is not None:
            if node.pk == self.pk or node.pk in seen:
                raise ValidationError({"parent": "an option cannot be inside itself"})
            seen.add(node.pk)
            node = node.parent


class Conversation(Timestamped):
    """One chat between a customer and the bot (then, after a hand-off, an agent).

    `current_node` is where the customer stands in the tree; `case` is the case a
    hand-off opened, whose timeline carries the transcript."""

    customer = models.ForeignKey("journeys.Customer", on_delete=models.CASCADE, related_name="conversations")
    bot = models.ForeignKey(TriageBot, on_delete=models.PROTECT, related_name="conversations")
    channel = models.ForeignKey("channels_app.Channel", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=12, choices=ConversationStatus.choices, default=ConversationStatus.BOT)
    current_node = models.ForeignKey(TriageNode, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    misses = models.PositiveSmallIntegerField(default=0)
    best_sentiment = models.FloatField(null=True, blank=True)
    case = models.ForeignKey("agents.Case", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="conversations")
    handoff_reason = models.CharField(max_length=255, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    handed_off_at = models.DateTimeField(null=True, blank=True)
    last_message_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_message_at", "-id"]
        indexes = [models.Index(fields=["customer", "status"], name="conversation_customer_idx")]

    def __str__(self) -> str:
        return f"chat #{self.pk} with {self.customer} ({self.status})"

    def transcript(self) -> str:
        """The conversation as plain text, one line per message (what the agent reads)."""
        return "\n".join(m.line() for m in self.messages.all())


class ConversationMessage(models.Model):
    """One message of a conversation, either way. `external_id` is the chat platform's
    message id: a webhook delivered twice stores (and answers) the message once."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    sender = models.CharField(max_length=10, choices=Sender.choices)
    text = models.TextField()
    external_id = models.CharField(max_length=200, null=True, blank=True, unique=True)
    node = models.ForeignKey(TriageNode, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                             help_text="the option matched (inbound) or answered (bot)")
    sentiment = models.FloatField(null=True, blank=True)
    intent = models.CharField(max_length=20, blank=True)
    delivery = models.ForeignKey("channels_app.Delivery", null=True, blank=True, on_delete=models.SET_NULL,
                                 related_name="+", help_text="how a bot or agent message went out")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return self.line()

    def line(self) -> str:
        return f"[{self.created_at:%Y-%m-%d %H:%M}] {self.get_sender_display()}: {self.text}"
