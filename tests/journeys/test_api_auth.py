"""Every management API endpoint with every scope: 401 without a token or with a bad, revoked or
expired one; 403 with a token lacking the scope; through with the scope. Each call is logged."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from journeys.choices import ApiScope
from journeys.models import ApiRequest, ApiToken
from journeys.services.api_tokens import token_revoke
from tests.apiclient import ALL_SCOPES, Api, make_token
from tests.factories import CustomerFactory

pytestmark = pytest.mark.django_db

# (method, path with {c} for a customer id, scope needed, body)
ENDPOINTS = [
    ("GET", "customers", ApiScope.CUSTOMERS_READ, None),
    ("GET", "customers/{c}", ApiScope.CUSTOMERS_READ, None),
    ("PATCH", "customers/{c}/traits", ApiScope.CUSTOMERS_WRITE, {"traits": {"plan": "pro"}}),
    ("POST", "customers/{c}/merge", ApiScope.CUSTOMERS_WRITE, {"merge": 999999}),
    ("DELETE", "customers/{c}", ApiScope.CUSTOMERS_WRITE, None),
    ("POST", "customers/{c}/export", ApiScope.EXPORT, None),
    ("POST", "workflows/999999/trigger", ApiScope.TRIGGER, {"idempotency_key": "k", "recipients": [{"user_id": "x"}]}),
    ("POST", "messages", ApiScope.SEND, {"idempotency_key": "k", "template": "none", "user_id": "x"}),
    ("GET", "messages/999999", ApiScope.SEND, None),
]
IDS = [f"{m} {p}" for m, p, _, _ in ENDPOINTS]


@pytest.fixture
def customer():
    return CustomerFactory(external_id="u-auth")


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_refuses_calls_without_a_valid_token(method, path, scope, body, customer):
    # given a revoked and an expired token, each holding every scope
    revoked, revoked_key = make_token(*ALL_SCOPES, name="revoked")
    token_revoke(token=revoked, reason="leaked")
    expired, expired_key = make_token(*ALL_SCOPES, name="expired", expires_at=timezone.now() + timedelta(seconds=1))
    ApiToken.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    url = path.format(c=customer.pk)

    for key, why in ((None, "missing API token"), ("jct_not-a-real-token", "invalid API token"),
                     (revoked_key, "revoked"), (expired_key, "expired")):
        # when the endpoint is called with it
        response = Api(key).call(method, url, body)

        # then it is refused as unauthenticated, saying why, and nothing is logged for a token
        assert response.status_code == 401, (key, response.content)
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert why in response.body["message"]
    assert not ApiRequest.objects.exists()


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS, ids=IDS)
def test_every_endpoint_needs_its_scope_and_logs_the_call(method, path, scope, body, customer):
    url = path.format(c=customer.pk)
    for other in ALL_SCOPES:
        if other == scope:
            continue
        # given a token with another scope, when it calls the endpoint, then 403 names the scope
        token, key = make_token(other, name=f"only-{other}")
        response = Api(key).call(method, url, body)
        assert response.status_code == 403, (other, response.content)
        assert repr(str(scope)) in response.body["message"]

    # given a token with the scope, when it calls, then it gets through (whatever the answer)
    token, key = make_token(scope, name=f"with-{scope}")
    response = Api(key).call(method, url, body)
    assert response.status_code not in (401, 403), response.content

    # and every call made with that token is in the access log
    logged = ApiRequest.objects.get(token=token)
    assert (logged.method, logged.path, logged.status) == (method, f"/api/v1/{url}", response.status_code)
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_bearer_is_the_only_scheme(customer):
    # given a valid token sent as HTTP Basic (as a write key would be)
    _, key = make_token(ApiScope.CUSTOMERS_READ)
    response = Api(None).get(f"customers/{customer.pk}", headers={"Authorization": f"Basic {key}"})

    # then it is refused with a message that says what to send
    assert response.status_code == 401
    assert "Bearer" in response.body["message"]


def test_revoking_stops_a_token_at_once_and_records_who_and_why(django_user_model, customer):
    # given a token in use
    _, key = make_token(ApiScope.CUSTOMERS_READ, name="backend")
    token = ApiToken.objects.get(name="backend")
    assert Api(key).get(f"customers/{customer.pk}").status_code == 200
    admin = django_user_model.objects.create_superuser("ops", "ops@example.com", "pw")

    # when ops revoke it
    token_revoke(token=token, actor=admin, reason="ticket 42: leaked in a log")

    # then its next call is refused, and the token says who revoked it and why (history too)
    assert Api(key).get(f"customers/{customer.pk}").status_code == 401
    token.refresh_from_db()
    assert (token.revoked_by, token.revoked_reason) == (admin, "ticket 42: leaked in a log")
    last = token.history.order_by("-history_id").first()
    assert last.history_user == admin and "ticket 42" in last.history_change_reason


def test_tokens_are_stored_hashed_and_told_apart_by_prefix():
    # when a token is made
    token, key = make_token(ApiScope.SEND, name="mailer")

    # then only its hash is stored, and its prefix (shown in the admin) is its first characters
    assert key.startswith("jct_") and len(key) > 40
    assert key not in str(ApiToken.objects.filter(pk=token.pk).values().get())
    assert key.startswith(token.key_prefix)


def test_a_token_with_the_track_scope_sends_events_for_its_source_and_is_logged(django_capture_on_commit_callbacks):
    from journeys.models import Event

    # given a token with the track scope, and one without
    token, key = make_token(ApiScope.TRACK, name="sdk")
    _, other = make_token(ApiScope.SEND, name="mailer")
    body = {"userId": "u1", "event": "Checkout Started"}

    # when each posts an event to the tracking API with Authorization: Bearer
    with django_capture_on_commit_callbacks(execute=True):
        ok = Api(key).client.post("/v1/track", body, format="json", HTTP_AUTHORIZATION=f"Bearer {key}")
    refused = Api(other).client.post("/v1/track", body, format="json", HTTP_AUTHORIZATION=f"Bearer {other}")
    unknown = Api(None).client.post("/v1/track", body, format="json", HTTP_AUTHORIZATION="Bearer jct_nope")

    # then the first is stored for the token's source and logged; the others are refused
    assert ok.status_code == 200, ok.content
    assert Event.objects.get(name="Checkout Started").source == token.source
    assert (refused.status_code, unknown.status_code) == (403, 401)
    assert list(ApiRequest.objects.order_by("id").values_list("token__name", "path", "status")) == [
        ("sdk", "/v1/track", 200), ("mailer", "/v1/track", 403)]


def test_each_token_is_throttled_on_its_own_with_retry_after(customer):
    # given a token allowed 2 requests a minute, and another token
    _, slow = make_token(ApiScope.CUSTOMERS_READ, name="slow", rate_limit=2)
    _, fast = make_token(ApiScope.CUSTOMERS_READ, name="fast")

    # when the first calls three times
    answers = [Api(slow).get(f"customers/{customer.pk}").status_code for _ in range(3)]

    # then the third is refused with 429 and Retry-After; the other token is not affected
    assert answers == [200, 200, 429]
    response = Api(slow).get(f"customers/{customer.pk}")
    assert int(response["Retry-After"]) >= 1 and "throttled" in response.body["message"].lower()
    assert Api(fast).get(f"customers/{customer.pk}").status_code == 200


def test_a_token_stops_when_the_account_that_made_it_is_deactivated(customer, admin_client):
    # given a token an ops person made (through the service, as the admin does), in use
    from django.contrib.auth.models import Permission
    from django.urls import reverse

    from journeys.services.api_tokens import token_create
    from tests.factories import UserFactory

    maker = UserFactory(username="leaver", is_staff=True)
    maker.user_permissions.add(*Permission.objects.filter(codename__in=["add_apitoken", "change_apitoken"]))
    token, key = token_create(name="crm sync", scopes=[ApiScope.CUSTOMERS_READ], actor=maker, reason="crm")
    system_token, system_key = make_token(ApiScope.CUSTOMERS_READ, name="system")
    assert Api(key).call("GET", f"customers/{customer.pk}").status_code == 200

    # when the person leaves and their account is deactivated
    maker.is_active = False
    maker.save(update_fields=["is_active"])

    # then their token is refused, saying why and what to do; a token made by the system still works
    refused = Api(key).call("GET", f"customers/{customer.pk}")
    assert refused.status_code == 401 and refused["WWW-Authenticate"].startswith("Bearer")
    assert "stopped working when the account that made it was deactivated" in refused.body["message"]
    assert "ask ops for a new token" in refused.body["message"]
    assert Api(system_key).call("GET", f"customers/{customer.pk}").status_code == 200
    # and the token list shows it stopped
    listed = admin_client.get(reverse("admin:journeys_apitoken_changelist")).content.decode()
    assert "stopped: its maker&#x27;s account is deactivated" in listed

    # and when the account is active again, so is the token
    maker.is_active = True
    maker.save(update_fields=["is_active"])
    assert Api(key).call("GET", f"customers/{customer.pk}").status_code == 200
