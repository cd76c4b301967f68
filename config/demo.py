"""Demo data for `make run`: an admin, a source, customers, channels, templates and
three live workflows (cart abandonment, high-value support query, account anniversary).

It lives in config/ because it spans apps (journeys must not import the others)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction

from journeys.models import Customer, Identity, Source
from journeys.services.sources import source_create

DEMO_ADMIN = ("admin", "admin")


def demo_logins() -> list[tuple[str, str]]:
    """Every login demo_load creates, with its password: the deploy check journeys.E006 refuses them."""
    from agents.demo import DEMO_AGENTS

    return [DEMO_ADMIN, *((name, name) for name in DEMO_ROLE_USERS), *((row[0], row[0]) for row in DEMO_AGENTS)]


@transaction.atomic
def demo_load() -> list[str]:
    """Idempotent: safe to run on every start."""
    lines = []
    User = get_user_model()
    username, password = DEMO_ADMIN
    user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
    if created:
        user.set_password(password)
        user.save()
    lines.append(f"Demo admin login: username={username} password={password}")
    if not Source.objects.filter(name="demo-web").exists():
        _, key = source_create(name="demo-web", description="Demo web app")
        lines.append(f"Demo source 'demo-web' write key: {key}")
    people = [
        ("u-ada", "ada@example.com", "Europe/London", {"first_name": "Ada", "ltv": 820, "plan": "pro", "signup_date": "2021-11-26"}),
        ("u-grace", "grace@example.com", "America/New_York", {"first_name": "Grace", "ltv": 120, "plan": "free"}),
        ("u-alan", "alan@example.com", "Europe/Berlin", {"first_name": "Alan", "ltv": 1500, "plan": "business"}),
    ]
    for user_id, email, tz, traits in people:
        if Identity.objects.filter(kind="user_id", value=user_id).exists():
            continue
        customer = Customer.objects.create(external_id=user_id, email=email, timezone=tz, traits=traits)
        Identity.objects.create(kind="user_id", value=user_id, customer=customer)
        Identity.objects.create(kind="email", value=email, customer=customer)
    lines.extend(_demo_workflows())
    lines.extend(_demo_roles())
    from agents.demo import agents_demo_load

    lines.extend(agents_demo_load())
    return lines


def _demo_workflows() -> list[str]:
    from channels_app.models import Channel, MessageTemplate
    from journeys.models import BusinessUnit, Workflow
    from journeys.services.workflows import version_build, version_publish, workflow_create

    email, _ = Channel.objects.get_or_create(name="email", defaults={"kind": "email"})
    sms, _ = Channel.objects.get_or_create(name="sms", defaults={"kind": "sms"})
    Channel.objects.get_or_create(name="push", defaults={"kind": "push", "fallback": email})
    templates = {
        "cart-reminder": ("You left something in your cart, {{ profile.first_name|default:'there' }}",
                          "Your cart worth {{ event.properties.total }} is waiting."),
        "cart-discount-sms": ("", "Still thinking? Use CODE10 for 10% off your cart."),
        "anniversary-push": ("Happy anniversary!", "{{ profile.first_name }}, thanks for {{ profile.tenure_days }} days with us."),
        "support-ack": ("We're on it", "A specialist will reply shortly, {{ profile.first_name|default:'' }}."),
    }
    from channels_app.models import Topic

    # Topics decide which consent applies (and put the choices in the preference centre).
    topics = {"support-ack": "transactional"}
    for name, (subject, body) in templates.items():
        topic = Topic.objects.filter(slug=topics.get(name, "product_updates")).first()
        MessageTemplate.objects.get_or_create(name=name, defaults={"subject": subject, "body": body, "topic": topic})
    unit, _ = BusinessUnit.objects.get_or_create(slug="retention", defaults={"name": "Retention"})
    support_unit, _ = BusinessUnit.objects.get_or_create(slug="support", defaults={"name": "Support"})
    flows = {
        "Cart abandonment": (unit, {
            "trigger_kind": "inactivity", "trigger_event": "Checkout Started",
            "trigger_config": {"followed_by": "Order Completed", "within": "1h"},
            "reentry_policy": "cooldown", "reentry_cooldown_s": 86400, "goal_event": "Order Completed",
            "steps": [
                {"key": "email", "kind": "send_message", "config": {"channel": "email", "template": "cart-reminder"}},
                {"key": "wait", "kind": "wait_for_event", "config": {"event": "Order Completed", "timeout": "24h"}},
                {"key": "valuable", "kind": "condition", "config": {"rule": "profile.ltv >= 500"}},
                {"key": "sms", "kind": "send_message", "config": {"channel": "sms", "template": "cart-discount-sms"}},
                {"key": "bought", "kind": "goal", "config": {"name": "ordered"}},
            ],
            "edges": [
                {"from": "email", "outcome": "next", "to": "wait"},
                {"from": "wait", "outcome": "timeout", "to": "valuable"},
                {"from": "wait", "outcome": "event", "to": "bought"},
                {"from": "valuable", "outcome": "yes", "to": "sms"},
            ],
        }),
        "High-value support query": (support_unit, {
            "trigger_event": "Support Message", "reentry_policy": "always",
            "steps": [
                {"key": "triage", "kind": "escalate_to_agent",
                 "config": {"sentiment_below": -0.3, "complexity_above": 0.5, "value_at_least": 1000,
                            "failed_attempts_at_least": 2, "failed_event": "Bot Fallback"}},
                {"key": "ack", "kind": "send_message", "config": {"channel": "email", "template": "support-ack"}},
            ],
            "edges": [{"from": "triage", "outcome": "escalated", "to": "ack"}],
        }),
        "Account anniversary": (unit, {
            "trigger_kind": "date_attribute", "trigger_config": {"attribute": "signup_date", "at": "09:00", "yearly": True},
            "reentry_policy": "always",
            "steps": [{"key": "push", "kind": "send_message", "config": {"channel": "push", "template": "anniversary-push"}}],
        }),
    }
    lines = []
    for name, (owner, definition) in flows.items():
        if Workflow.objects.filter(name=name).exists():
            continue
        workflow = workflow_create(name=name, business_unit=owner, description="demo")
        version_publish(version=version_build(workflow=workflow, definition=definition), reason="demo data")
        lines.append(f"Demo workflow live: {name}")
    return lines


DEMO_ROLE_USERS = ("ops", "editor", "approver", "agent", "analyst")


def _demo_roles() -> list[str]:
    """One login per role (password = username) so the permission matrix can be tried by hand."""
    from django.contrib.auth.models import Group

    from journeys.models import BusinessUnit
    from journeys.services import governance as gov

    gov.roles_setup()
    User = get_user_model()
    groups = {"ops": gov.ROLE_OPS, "approver": gov.ROLE_APPROVERS, "agent": gov.ROLE_AGENTS,
              "analyst": gov.ROLE_ANALYSTS}
    for username in DEMO_ROLE_USERS:
        user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True})
        if created:
            user.set_password(username)
            user.save()
        if username in groups:
            user.groups.add(Group.objects.get(name=groups[username]))
    gov.business_unit_grant_editor(unit=BusinessUnit.objects.get(slug="retention"),
                                   user=User.objects.get(username="editor"), reason="demo data")
    return [f"Demo role logins (password = username): {', '.join(DEMO_ROLE_USERS)}; editor edits Retention"]
