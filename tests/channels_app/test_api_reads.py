"""Channels, templates and deliveries read through the management API: the names and ids a
platform team needs, never a channel's settings or secrets; deliveries filtered by customer,
workflow, status and time through indexes only; lists page by id without duplicates or skips
while rows are added; bad filters are 400s naming them; scopes apply."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from channels_app.models import ChannelBreaker, Delivery
from channels_app.selectors import deliveries_lookup
from journeys.choices import ApiScope
from journeys.models import JourneyRun
from tests.apiclient import Api, make_token
from tests.channels_app.factories import ChannelFactory, TemplateFactory, TopicFactory
from tests.factories import CustomerFactory, live_workflow

pytestmark = pytest.mark.django_db

GOAL = {"trigger_event": "Signed Up", "steps": [{"key": "done", "kind": "goal", "config": {}}], "edges": []}


@pytest.fixture
def api():
    _, key = make_token(ApiScope.CHANNELS_READ, ApiScope.DELIVERIES_READ, name="platform")
    return Api(key)


def deliver(customer, channel, *, status="sent", run=None, key=None, **fields) -> Delivery:
    return Delivery.objects.create(
        idempotency_key=key or f"k-{Delivery.objects.count()}-{customer.pk}-{status}", customer=customer,
        channel=channel, status=status, run_id=run.pk if run else None, step_key="mail" if run else "", **fields)


def run_of(workflow, customer) -> JourneyRun:
    return JourneyRun.objects.create(workflow=workflow, version=workflow.versions.get(number=1), customer=customer,
                                     trigger_key=f"t-{customer.pk}", exclusive=False)


# --------------------------------------------------------------------------- channels and templates


def test_channels_show_kind_provider_pause_and_breaker_but_never_settings():
    # given a channel with settings (a sender and a secret named by env var) whose breaker is open
    email = ChannelFactory(name="email", kind="email", provider="smtp",
                           settings={"from": "shop@example.com", "password_env": "SMTP_SECRET_VAR"})
    sms = ChannelFactory(name="sms", kind="sms", provider="twilio", paused=True, fallback=email)
    ChannelBreaker.objects.create(channel=email, state="open", opened_at=timezone.now(), consecutive_failures=3)
    _, key = make_token(ApiScope.CHANNELS_READ, name="platform")

    # when listed and read
    response = Api(key).get("channels")
    one = Api(key).get(f"channels/{sms.pk}").body

    # then each shows what it is and how it stands
    rows = {row["name"]: row for row in response.body["results"]}
    assert (rows["email"]["breaker_state"], rows["email"]["provider"], rows["email"]["paused"]) == ("open", "smtp",
                                                                                                     False)
    assert rows["email"]["breaker_opened_at"]
    assert (one["breaker_state"], one["paused"], one["kind"], one["fallback_id"]) == ("closed", True, "sms", email.pk)
    # and nothing of the settings, not even their names
    text = response.content.decode()
    assert "settings" not in rows["email"] and "shop@example.com" not in text and "SMTP_SECRET_VAR" not in text
    assert "password_env" not in text


def test_templates_show_name_channel_kind_and_topic(api):
    topic = TopicFactory(slug="receipts")
    receipt = TemplateFactory(name="receipt", channel_kind="email", topic=topic)
    any_kind = TemplateFactory(name="hello", channel_kind="")

    rows = {row["id"]: row for row in api.pages("templates")}

    assert rows[receipt.pk] == {"id": receipt.pk, "name": "receipt", "channel_kind": "email", "topic": "receipts"}
    assert rows[any_kind.pk]["topic"] is None and rows[any_kind.pk]["channel_kind"] == ""
    assert "body" not in rows[receipt.pk] and "subject" not in rows[receipt.pk]


@pytest.mark.parametrize("path", ["channels", "templates"])
def test_channel_and_template_lists_page_without_duplicates_while_rows_are_added(api, path):
    make = (lambda n: ChannelFactory(name=f"ch-{n}")) if path == "channels" else (lambda n: TemplateFactory())
    before = [make(n).pk for n in range(5)]
    added: list[int] = []

    rows = api.pages(f"{path}?limit=2", between=lambda: added.append(make(f"new{len(added)}").pk))

    assert [row["id"] for row in rows] == before + added and len(added) == 3


# --------------------------------------------------------------------------- deliveries


@pytest.fixture
def traffic():
    """Two customers, a workflow and the API: deliveries of each, in several statuses."""
    email = ChannelFactory(name="email")
    ada, bo = CustomerFactory(external_id="ada"), CustomerFactory(external_id="bo")
    workflow = live_workflow(name="welcome", definition=GOAL)
    other = live_workflow(name="winback", definition=GOAL)
    rows = {
        "ada_welcome": deliver(ada, email, run=run_of(workflow, ada), status="delivered"),
        "ada_api": deliver(ada, email, status="failed", key="api:receipt-1"),
        "bo_welcome": deliver(bo, email, run=run_of(workflow, bo), status="suppressed", reason="no_address"),
        "bo_winback": deliver(bo, email, run=run_of(other, bo), status="failed", error="550 no such user"),
    }
    return {"ada": ada, "bo": bo, "workflow": workflow, "other": other, "email": email, **rows}


def ids(rows) -> list[int]:
    return [row["id"] for row in rows]


def test_deliveries_filter_by_customer_workflow_status_and_time(api, traffic):
    t = traffic
    assert ids(api.pages(f"deliveries?customer_id={t['ada'].pk}")) == [t["ada_welcome"].pk, t["ada_api"].pk]
    assert ids(api.pages(f"deliveries?workflow_id={t['workflow'].pk}")) == [t["ada_welcome"].pk, t["bo_welcome"].pk]
    assert ids(api.pages("deliveries?status=failed")) == [t["ada_api"].pk, t["bo_winback"].pk]
    assert ids(api.pages(f"deliveries?customer_id={t['bo'].pk}&status=failed")) == [t["bo_winback"].pk]
    assert len(api.pages("deliveries")) == 4

    # since: created at or after, with a customer or a workflow
    Delivery.objects.filter(pk=t["ada_welcome"].pk).update(created_at=timezone.now() - timedelta(days=3))
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(api.pages(f"deliveries?customer_id={t['ada'].pk}&since={since.replace('+', '%2B')}")) == [
        t["ada_api"].pk]
    assert ids(api.pages(f"deliveries?workflow_id={t['workflow'].pk}&since=2000-01-01T00:00:00Z")) == [
        t["ada_welcome"].pk, t["bo_welcome"].pk]

    # an unknown customer or workflow has no deliveries
    assert api.pages("deliveries?customer_id=999999") == [] == api.pages("deliveries?workflow_id=999999")


def test_a_delivery_reads_status_reason_channel_template_workflow_and_attempts_without_its_body(api, traffic):
    template = TemplateFactory(name="welcome-mail")
    delivery = traffic["bo_welcome"]
    Delivery.objects.filter(pk=delivery.pk).update(template=template, attempts=2, body="SECRET BODY TEXT",
                                                   subject="Hi Bo", to="bo@example.com")

    response = api.get(f"deliveries/{delivery.pk}")

    body = response.body
    assert (body["status"], body["reason"], body["channel"], body["template"]) == (
        "suppressed", "no_address", "email", "welcome-mail")
    assert (body["attempts"], body["workflow_id"], body["customer_id"], body["step_key"]) == (
        2, traffic["workflow"].pk, traffic["bo"].pk, "mail")
    assert body["created_at"] and "sent_at" in body and "delivered_at" in body
    assert "SECRET BODY TEXT" not in response.content.decode() and "body" not in body and "to" not in body
    assert api.get(f"deliveries/{traffic['ada_api'].pk}").body["workflow_id"] is None  # sent through the API


def test_a_merged_away_customer_id_reads_the_survivors_deliveries(api, traffic):
    ghost = CustomerFactory(external_id="ghost", merged_into=traffic["ada"])
    assert ids(api.pages(f"deliveries?customer_id={ghost.pk}")) == [traffic["ada_welcome"].pk, traffic["ada_api"].pk]


def test_delivery_paging_has_no_duplicates_or_skips_while_messages_are_sent(api, traffic):
    t = traffic
    before = [t[k].pk for k in ("ada_welcome", "ada_api", "bo_welcome", "bo_winback")]
    added: list[int] = []

    def send_more():  # while the client reads the first pages (a page of one row: else it never ends)
        if len(added) < 2:
            added.append(deliver(t["ada"], t["email"], status="failed").pk)
            deliver(t["bo"], t["email"], status="sent")  # another customer's: not in the filtered list

    everything = api.pages("deliveries?limit=1")
    assert ids(everything) == before
    rows = api.pages(f"deliveries?customer_id={t['ada'].pk}&limit=1", between=send_more)
    assert ids(rows) == [t["ada_welcome"].pk, t["ada_api"].pk, *added] and len(added) == 2


@pytest.mark.parametrize(("query", "field"), [
    ("customer_id=abc", "customer_id"), ("customer_id=0", "customer_id"), ("customer_id=", "customer_id"),
    ("customer_id=99999999999999999999999", "customer_id"),
    ("workflow_id=-1", "workflow_id"), ("workflow_id=1.5", "workflow_id"),
    ("status=lost", "status"), ("status=", "status"),
    ("customer_id=1&since=yesterday", "since"), ("customer_id=1&since=", "since"),
    ("since=2026-01-01T00:00:00Z", "since"),  # a time range alone: no index serves it
    ("status=sent&since=2026-01-01T00:00:00Z", "since"),
    ("limit=0", "limit"), ("cursor=garbage", "cursor"),
])
def test_bad_filters_are_a_400_naming_the_field(api, query, field):
    response = api.get(f"deliveries?{query}")
    assert (response.status_code, response.body.get("field")) == (400, field), response.body


@pytest.mark.parametrize(("scopes", "path", "scope"), [
    ([ApiScope.SEND], "deliveries", "deliveries:read"), ([ApiScope.CHANNELS_READ], "deliveries/1", "deliveries:read"),
    ([ApiScope.DELIVERIES_READ], "channels", "channels:read"), ([ApiScope.SEND], "templates", "channels:read"),
])
def test_a_token_without_the_scope_is_refused_naming_it(scopes, path, scope):
    _, key = make_token(*scopes, name="other")
    response = Api(key).get(path)
    assert (response.status_code, response.body["message"]) == (403, f"this token lacks the {scope!r} scope")


def test_unknown_ids_are_404s_naming_them(api):
    for path, name in (("deliveries", "delivery"), ("channels", "channel"), ("templates", "message template")):
        response = api.get(f"{path}/987654")
        assert (response.status_code, response.body["message"]) == (404, f"no {name} with id 987654"), path


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans: PostgreSQL only")
@pytest.mark.parametrize("filters", ["customer", "workflow", "status", "customer_since", "workflow_since"])
def test_every_offered_delivery_filter_is_served_by_an_index(traffic, filters):
    # given many deliveries (a few thousand, statistics gathered)
    t = traffic
    many = [CustomerFactory.build(external_id=f"m{n}") for n in range(2000)]
    from journeys.models import Customer

    Customer.objects.bulk_create(many)
    many = list(Customer.objects.filter(external_id__startswith="m"))
    Delivery.objects.bulk_create([Delivery(idempotency_key=f"bulk-{c.pk}-{n}", customer=c, channel=t["email"],
                                           status="delivered") for c in many for n in range(3)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE channels_app_delivery")
        cursor.execute("ANALYZE journeys_journeyrun")
    since = timezone.now() - timedelta(days=1)
    query, index = {
        "customer": ({"customer_id": t["ada"].pk}, "delivery_customer_sent_idx"),
        "workflow": ({"workflow_id": t["workflow"].pk}, "channels_app_delivery_run_id"),
        "status": ({"status": "failed"}, "delivery_due_idx"),
        "customer_since": ({"customer_id": t["ada"].pk, "since": since}, "delivery_customer_sent_idx"),
        "workflow_since": ({"workflow_id": t["workflow"].pk, "since": since}, "channels_app_delivery_run_id"),
    }[filters]

    # when the list's query (by id, a page) is planned
    plan = deliveries_lookup(**query).order_by("id")[:51].explain(format="json")

    # then the deliveries are read through the filter's index, never by a scan of the whole table
    assert f'"Index Name": "{index}' in plan, plan
    assert "channels_app_delivery" not in _seq_scanned(plan), plan


def _seq_scanned(plan: str) -> str:
    """The relations read by a sequential scan in a JSON plan."""
    found: list[str] = []

    def walk(node):
        if node.get("Node Type") == "Seq Scan":
            found.append(f'"Relation Name": "{node.get("Relation Name")}"')
        for child in node.get("Plans", []):
            walk(child)

    for entry in json.loads(plan):
        walk(entry["Plan"])
    return " ".join(found)
