"""Reads about chat conversations that both cases and the triage bot need.

On its own so that the two depend on it and not on each other: triage opens cases
(triage -> cases), and a case's reply goes back to the chat it came from (cases -> here).
"""

from __future__ import annotations

from agents.choices import ConversationStatus
from agents.models import Case, Conversation


def conversation_for_case(*, case: Case) -> Conversation | None:
    """The chat a case came from, while it is with a person (agent replies go back there)."""
    return case.conversations.filter(status=ConversationStatus.HANDED_OFF).select_related("channel").order_by("-id").first()
