"""Who may see and change the configuration of channels, agents and experiments, role by role,
through the admin URLs (changelist, add, change, history, delete; GET and POST): ops admins
everything; business-unit editors read the channel configuration they build steps with and change
only their own unit's draft experiments; approvers read; analysts read experiments (reports);
agents and people without a role get nothing. A denied page is a 403 or a redirect away from the
object, never the object."""

from __future__ import annotations

import pytest
from django.urls import reverse

from agents.models import TriageBot
from channels_app.models import Channel, Consent, ContentBlock
from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
from tests.channels_app.factories import CapFactory, TemplateFactory, TopicFactory
from tests.experiments.factories import make_experiment
from tests.factories import CustomerFactory
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import admin_form_data, login

pytestmark = pytest.mark.django_db

ROLES = ("ops", "editor", "approver", "analyst", "agent", "nobody")
C, V, N = "change", "view", "none"
READ_BY_BUILDERS = (C, V, V, N, N, N)  # channel configuration: the editors and approvers read it
OPS_ONLY = (C, N, N, N, N, N)
EXPERIMENT_OWN_UNIT = (C, C, V, V, N, N)
EXPERIMENT_OTHER_UNIT = (C, N, V, V, N, N)

# object -> (how to make it, access per role in ROLES order)
OBJECTS = {
    "channel": (lambda w: Channel.objects.create(name="email-x", kind="email", provider="console"), READ_BY_BUILDERS),
    "template": (lambda w: TemplateFactory(name="welcome-mail"), READ_BY_BUILDERS),
    "content block": (lambda w: ContentBlock.objects.create(name="offer", variants=[]), READ_BY_BUILDERS),
    "topic": (lambda w: TopicFactory(slug="offers"), READ_BY_BUILDERS),
    "frequency cap": (lambda w: CapFactory(name="one-a-day"), READ_BY_BUILDERS),
    "consent": (lambda w: Consent.objects.create(customer=CustomerFactory(), channel_kind="sms", status="opted_in",
                                                 source="web", updated_at="2026-01-01T00:00:00Z"), OPS_ONLY),
    "team": (lambda w: TeamFactory(name="Billing team"), OPS_ONLY),
    "agent": (lambda w: AgentFactory(capacity=3), OPS_ONLY),
    "reply template": (lambda w: ReplyTemplateFactory(name="refund-reply"), OPS_ONLY),
    "triage bot": (lambda w: TriageBot.objects.create(
        name="Helper", channel=Channel.objects.create(name="chat-x", kind="chat", provider="console")), OPS_ONLY),
    "experiment of the editor's unit": (
        lambda w: make_experiment(key="mine", start=False, workflow=w["retention"]), EXPERIMENT_OWN_UNIT),
    "experiment of another unit": (
        lambda w: make_experiment(key="theirs", start=False, workflow=w["support"]), EXPERIMENT_OTHER_UNIT),
}


def _url(obj, view, *args):
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_{view}", args=args)


def _denied(response, obj):
    """Refused: a 403, or a redirect to the admin index or the login page; the object is not shown."""
    if response.status_code == 302:
        assert response["Location"].rstrip("/").endswith("/admin") or "login" in response["Location"]
    else:
        assert response.status_code == 403, response.status_code
    assert str(obj).encode() not in response.content


@pytest.mark.parametrize("name", list(OBJECTS))
@pytest.mark.parametrize("index, role", list(enumerate(ROLES)))
def test_config_admin_urls_per_role(client, people, live_workflow, support_workflow, name, index, role):
    make, access = OBJECTS[name]
    obj = make({"retention": live_workflow, "support": support_workflow})
    level = access[index]
    login(client, people[role])
    change, history, delete = _url(obj, "change", obj.pk), _url(obj, "history", obj.pk), _url(obj, "delete", obj.pk)

    page = client.get(change)
    if level == N:
        _denied(page, obj)
        _denied(client.get(history), obj)
    else:
        assert page.status_code == 200
        asks_reason = b'name="change_reason"' in page.content
        assert asks_reason == (level == C), "only people who may change are asked why"
        assert client.get(history).status_code == 200

    # the list: whoever may see any such object; add: whoever may change
    listing = client.get(_url(obj, "changelist"))
    sees_some = level != N or (role == "editor" and "experiment" in name)
    assert listing.status_code == (200 if sees_some else 403)
    add = client.get(_url(obj, "add"))
    may_add = level == C or (role == "editor" and "experiment" in name)
    assert add.status_code == (200 if may_add else 403)

    deleting = client.get(delete)
    if role == "ops":
        assert deleting.status_code == 200
    else:
        _denied(deleting, obj)


@pytest.mark.parametrize("name", list(OBJECTS))
@pytest.mark.parametrize("role", ["editor", "approver", "analyst", "agent", "nobody"])
def test_a_forged_post_changes_nothing(client, admin_client, people, live_workflow, support_workflow, name, role):
    """The form an ops admin would post, sent by someone who may not change the object: refused, unchanged."""
    make, access = OBJECTS[name]
    if access[ROLES.index(role)] == C:
        return  # allowed: covered by the history tests of each app
    obj = make({"retention": live_workflow, "support": support_workflow})
    data = admin_form_data(admin_client.get(_url(obj, "change", obj.pk)), change_reason="sneaky")
    before = obj.history.count()

    login(client, people[role])
    response = client.post(_url(obj, "change", obj.pk), data)
    deleted = client.post(_url(obj, "delete", obj.pk), {"post": "yes"})

    assert response.status_code in (302, 403) and deleted.status_code in (302, 403)
    if response.status_code == 302:
        assert not response["Location"].endswith(_url(obj, "changelist"))  # not "saved", sent away
    assert type(obj).objects.filter(pk=obj.pk).exists() and obj.history.count() == before
