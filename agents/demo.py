"""Demo agents, teams and reply templates for `make run` (called from config/demo.py)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from agents.models import Agent, AgentSkill, ReplyTemplate, Team, TriageBot, TriageNode
from agents.services.cases import agent_save, team_save

DEMO_AGENTS = [
    # username, team slug, languages, skills, capacity
    ("agent", "support", ["en", "de"], {"billing": 4, "general": 3}, 5),
    ("agent2", "support", ["en"], {"hardware": 5}, 3),
    ("triage", "triage", ["en", "fr"], {}, 10),
]

REPLY_TEMPLATES = [
    ("Refund acknowledged", "billing", "refund",
     "Hi {{ profile.first_name|default:'there' }}, I'm sorry about this. I've started your refund; "
     "you'll see it on your statement within 5 working days."),
    ("Billing explanation", "billing", "billing",
     "Hi {{ profile.first_name|default:'there' }}, thanks for flagging this charge. On your {{ profile.plan|default:'current' }} "
     "plan you are billed monthly; I've attached a breakdown and corrected anything that was wrong."),
    ("Delivery update", "", "delivery",
     "Hi {{ profile.first_name|default:'there' }}, I've checked with the courier and your parcel is on its way. "
     "I'll keep an eye on it for you."),
    ("Technical triage", "", "technical",
     "Hi {{ profile.first_name|default:'there' }}, sorry for the trouble. Could you tell me which version you use and "
     "send a screenshot of the error? I'll take it from there."),
    ("General apology", "", "",
     "Hi {{ profile.first_name|default:'there' }}, thank you for your patience. I'm looking into this personally "
     "and will get back to you today."),
]


# label, keywords, text, handoff, category, children
DEMO_TREE = [
    ("Track my order", ["where is", "tracking", "track", "parcel", "order"], "Sure. What is wrong with the order?",
     False, "", [
         ("It is late", ["late", "delayed"],
          "Late orders ship within 2 days; the tracking link is in your confirmation email.", False, "", []),
         ("Wrong address", ["address"], "", True, "general", []),
     ]),
    ("Opening hours", ["hours", "open", "opening"], "We are open 9:00-17:00, Monday to Friday.", False, "", []),
    ("Reset my password", ["password", "log in", "login"],
     "Use 'Forgot password' on the sign-in page; the link is valid for an hour.", False, "", []),
    ("Billing question", ["invoice", "charge", "charged", "refund", "billing"], "", True, "billing", []),
]


def _demo_triage_bot() -> list[str]:
    """A chat channel (console provider) and the support bot's decision tree."""
    from channels_app.models import Channel

    if TriageBot.objects.exists():
        return []
    chat, _ = Channel.objects.get_or_create(name="chat", defaults={"kind": "chat", "provider": "console"})
    bot = TriageBot.objects.create(name="Support bot", channel=chat, category="general",
                                   team=Team.objects.filter(slug="support").first())

    def add(nodes, parent):
        for order, (label, keywords, text, handoff, category, children) in enumerate(nodes, start=1):
            node = TriageNode.objects.create(bot=bot, parent=parent, order=order, label=label, keywords=keywords,
                                             text=text or "Let me find a colleague for this.", handoff=handoff,
                                             category=category)
            add(children, node)

    add(DEMO_TREE, None)
    return ["Demo chat triage bot 'Support bot' on channel 'chat' (admin: Agents and cases > Triage bots)"]


@transaction.atomic
def agents_demo_load() -> list[str]:
    """Idempotent: teams, three agents (password = username) and reply templates."""
    lines = []
    teams = {}
    for slug, name, categories, fallback in (
        ("support", "Support", ["billing", "hardware", "general"], False),
        ("triage", "Triage (fallback queue)", [], True),
    ):
        team = Team.objects.filter(slug=slug).first() or Team(slug=slug, name=name, categories=categories,
                                                               is_fallback=fallback)
        teams[slug] = team_save(team=team)
    User = get_user_model()
    for username, team_slug, languages, skills, capacity in DEMO_AGENTS:
        user, created = User.objects.get_or_create(username=username, defaults={"first_name": username.title()})
        if created:
            user.set_password(username)
            user.save()
            lines.append(f"Demo agent login: username={username} password={username} (console at /agents/)")
        if not Agent.objects.filter(user=user).exists():
            agent = agent_save(agent=Agent(user=user, team=teams[team_slug], languages=languages,
                                           capacity=capacity, status="online"))
            for category, level in skills.items():
                AgentSkill.objects.create(agent=agent, category=category, level=level)
    for name, category, intent, body in REPLY_TEMPLATES:
        ReplyTemplate.objects.get_or_create(name=name, defaults={"category": category, "intent": intent, "body": body})
    lines.extend(_demo_triage_bot())
    return lines
