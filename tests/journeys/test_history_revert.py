"""Reverting from an admin history page is an edit with the old values filled in: it needs the
right to change the object, changes only what the change form could change (never a revoked
token's revocation, a key or a read-only field), and is refused where the admin says no revert."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.test import Client
from simple_history.admin import SimpleHistoryAdmin

from journeys.admin.base import HistoryRevertGuard
from journeys.choices import ApiScope
from journeys.models import ApiToken, Workflow
from journeys.services.api_tokens import token_revoke
from tests.apiclient import Api, make_token
from tests.journeys.test_governance_fixtures import *  # noqa: F401,F403
from tests.journeys.test_governance_fixtures import login

pytestmark = pytest.mark.django_db


def revert(client: Client, obj, history_id: int, data: dict):
    """Post the history page's form as a browser would: every value it shows, plus `data`."""
    opts = obj._meta
    url = f"/admin/{opts.app_label}/{opts.model_name}/{obj.pk}/history/{history_id}/"
    page = client.get(url)
    shown = {}
    if page.status_code == 200:
        form = page.context["adminform"].form
        for name in form.fields:
            value = form[name].value()
            if value not in (None, False):
                shown[name] = "on" if value is True else value
    return client.post(url, {**shown, **data})


def test_every_history_admin_guards_its_revert():
    unguarded = [type(a).__name__ for a in admin.site._registry.values()
                 if isinstance(a, SimpleHistoryAdmin) and not isinstance(a, HistoryRevertGuard)]
    assert unguarded == []


@pytest.fixture
def renamed_channel(db):
    """A channel first named "mail", now "mail-v2"; returns it and the history id of its first version."""
    from channels_app.models import Channel

    channel = Channel.objects.create(name="mail", kind="email", provider="console")
    first = channel.history.earliest().history_id
    channel.name = "mail-v2"
    channel.save()
    return channel, first


def test_a_user_who_may_only_view_cannot_revert(people, renamed_channel):
    # the approver may view channels, not change them
    channel, first = renamed_channel

    response = revert(login(Client(), people["approver"]), channel, first, {"change_reason": "back"})

    assert response.status_code == 403
    channel.refresh_from_db()
    assert channel.name == "mail-v2"


def test_a_revoked_token_stays_revoked_whatever_version_is_restored(people):
    token, key = make_token(ApiScope.TRIGGER, name="trig")
    first = token.history.earliest().history_id
    token_revoke(token=token, actor=people["ops"], reason="leaked")

    revert(login(Client(), people["ops"]), token, first, {"change_reason": "revert"})

    token = ApiToken.objects.get(pk=token.pk)
    assert token.revoked_at is not None and token.revoked_reason == "leaked"
    assert Api(key).get("jobs/1").status_code == 401


def test_where_the_admin_has_no_revert_a_posted_one_is_refused(people, live_workflow):
    first = live_workflow.history.earliest().history_id
    response = revert(login(Client(), people["ops"]), live_workflow, first, {"change_reason": "revert"})
    assert response.status_code == 403
    assert Workflow.objects.get(pk=live_workflow.pk).live_version_id == live_workflow.live_version_id


def test_ops_still_revert_a_channel_with_a_reason(people, renamed_channel):
    channel, first = renamed_channel

    response = revert(login(Client(), people["ops"]), channel, first, {"change_reason": "the old name was right"})

    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.name == "mail"
    assert channel.history.latest().history_change_reason == "the old name was right"
