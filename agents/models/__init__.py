"""Models of the agents app, split by concept and re-exported here."""

from agents.models.cases import Case, CaseEntry, CaseGroupObjectPermission, CaseUserObjectPermission
from agents.models.people import Agent, AgentSkill, Team
from agents.models.replies import ReplyTemplate
from agents.models.triage import Conversation, ConversationMessage, TriageBot, TriageNode

__all__ = [
    "Agent",
    "AgentSkill",
    "Team",
    "Case",
    "CaseEntry",
    "CaseUserObjectPermission",
    "CaseGroupObjectPermission",
    "ReplyTemplate",
    "TriageBot",
    "TriageNode",
    "Conversation",
    "ConversationMessage",
]
