"""API tokens and stream destinations in the admin: made with a reason, shown once, revoked and
resumed with a reason; the token shown at creation works at once."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from journeys.admin.base import REASON_MISSING
from journeys.models import ApiToken, StreamDestination
from tests.apiclient import Api
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db


def _shown(response) -> str:
    text = " ".join(str(m) for m in response.context["messages"])
    return re.search(r"<code>([^<]+)</code>", text).group(1)


def test_a_token_made_in_the_admin_is_shown_once_and_works(admin_client, admin_user):
    # when ops make a token with one scope, saying why
    response = admin_client.post(reverse("admin:journeys_apitoken_add"), {
        "name": "crm", "description": "", "scopes": ["customers:read"], "source": "", "expires_at": "",
        "rate_limit": "", "change_reason": "CRM sync reads profiles"}, follow=True)

    # then the page shows the token once; only its hash and prefix are stored; who and why are kept
    key = _shown(response)
    token = ApiToken.objects.get(name="crm")
    assert key.startswith(token.key_prefix) and token.key_hash != key
    assert (token.created_by, token.created_reason, token.scopes) == (admin_user, "CRM sync reads profiles",
                                                                      ["customers:read"])
    assert token.history.get().history_user == admin_user
    customer = CustomerFactory()
    assert Api(key).get(f"customers/{customer.pk}").status_code == 200
    assert Api(key).post("messages", {}).status_code == 403


def test_the_admin_refuses_a_token_without_reason_scope_or_track_source(admin_client):
    url = reverse("admin:journeys_apitoken_add")
    base = {"name": "x", "description": "", "source": "", "expires_at": "", "rate_limit": ""}
    no_reason = admin_client.post(url, {**base, "scopes": ["send"], "change_reason": " "})
    no_scope = admin_client.post(url, {**base, "change_reason": "why"})
    no_source = admin_client.post(url, {**base, "scopes": ["track"], "change_reason": "why"})
    assert REASON_MISSING in no_reason.context["adminform"].form.errors["change_reason"]
    assert "scopes" in no_scope.context["adminform"].form.errors
    assert "source" in no_source.context["adminform"].form.errors
    assert not ApiToken.objects.exists()


def test_revoking_in_the_admin_needs_a_reason(admin_client, admin_user):
    from tests.apiclient import make_token

    token, key = make_token("customers:read", name="old")
    url = reverse("admin:journeys_apitoken_changelist")
    admin_client.post(url, {"action": "revoke_tokens", "_selected_action": [token.pk], "reason": ""})
    token.refresh_from_db()
    assert token.revoked_at is None
    admin_client.post(url, {"action": "revoke_tokens", "_selected_action": [token.pk], "reason": "rotated"})
    token.refresh_from_db()
    assert (token.revoked_by, token.revoked_reason) == (admin_user, "rotated")


def test_a_destination_made_in_the_admin_shows_its_secret_once_and_refuses_plain_http(admin_client, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS, settings.OUTBOUND_ALLOWED_HOSTS = [], []
    url = reverse("admin:journeys_streamdestination_add")
    base = {"name": "warehouse", "event_types": ["message.sent", "case.opened"], "enabled": "on",
            "batch_size": "100", "max_failures": "30", "change_reason": "BI wants message events"}

    refused = admin_client.post(url, {**base, "url": "http://example.com/hook"})
    assert "url" in refused.context["adminform"].form.errors
    never_pauses = admin_client.post(url, {**base, "url": "https://example.com/hook", "max_failures": "0"})
    assert "max_failures" in never_pauses.context["adminform"].form.errors  # a form error, not a 500
    assert not StreamDestination.objects.exists()
    response = admin_client.post(url, {**base, "url": "https://example.com/hook"}, follow=True)

    destination = StreamDestination.objects.get()
    assert _shown(response).startswith("whsec_")
    assert destination.event_types == ["message.sent", "case.opened"]
    assert destination.history.get().history_change_reason == "BI wants message events"


def test_the_admin_grants_the_read_scopes_and_a_token_reads_only_what_they_name(admin_client):
    # when ops make a token for a platform team with the read scopes for workflows and channels
    page = admin_client.get(reverse("admin:journeys_apitoken_add")).content.decode()
    for scope in ("workflows:read", "channels:read", "deliveries:read", "experiments:read"):
        assert f'value="{scope}"' in page  # offered on the form
    response = admin_client.post(reverse("admin:journeys_apitoken_add"), {
        "name": "platform", "description": "", "scopes": ["workflows:read", "channels:read"], "source": "",
        "expires_at": "", "rate_limit": "", "change_reason": "platform team's deploy tooling"}, follow=True)
    key = _shown(response)

    # then it lists workflows, channels and templates, and nothing else
    api = Api(key)
    assert [api.get(path).status_code for path in ("workflows", "channels", "templates")] == [200, 200, 200]
    assert [api.get(path).status_code for path in ("deliveries", "experiments", "customers")] == [403, 403, 403]
