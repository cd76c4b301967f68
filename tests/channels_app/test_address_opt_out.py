"""An opt-out holds for the address: a visitor who types the address of a customer who
unsubscribed gets a profile of their own (anyone can type anyone's address, so nothing is merged),
but nothing that customer refused is sent to the address through it, until the person opts in
again explicitly from a profile with that address (QA identity report, defect 4)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from channels_app.models import Channel, Consent, Delivery, MessageTemplate, Suppression
from channels_app.services import deliveries_dispatch, message_send
from channels_app.services.consent import address_suppress, complaint_apply, consent_set
from channels_app.services.links import link_url
from journeys.choices import ApiScope
from journeys.models import Customer, Identity
from tests.apiclient import Api, make_token
from tests.channels_app.factories import CustomerFactory, topic
from tests.channels_app.test_consent import inbound, sms_channel  # noqa: F401 (a fixture)
from tests.factories import live_workflow

pytestmark = pytest.mark.django_db

ADDRESS = "person77120@mail.example.org"


@pytest.fixture
def shop(smtp):
    """An email channel on the local SMTP server, a product-updates newsletter and a receipt, a
    journey that mails the newsletter on `Promo Viewed`, and a backend's token."""
    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    MessageTemplate.objects.create(name="news", channel_kind="email", topic=topic("product_updates"),
                                   subject="News", body="Hello")
    MessageTemplate.objects.create(name="receipt", channel_kind="email", topic=topic("transactional"),
                                   subject="Receipt", body="Thanks")
    live_workflow(name="promo", definition={"trigger_event": "Promo Viewed", "steps": [
        {"key": "mail", "kind": "send_message", "config": {"channel": "email", "template": "news"}}]})
    _, key = make_token(ApiScope.SEND, ApiScope.CUSTOMERS_READ, ApiScope.CUSTOMERS_WRITE, name="backend")
    return Api(key)


def message(shop, on_commit, template, key, customer):
    """The messages API (one message, `message_send`'s own consent check) to a profile."""
    with on_commit():
        response = shop.post("messages", {"idempotency_key": key, "template": template, "customer_id": customer.pk})
    assert response.status_code in (200, 202), response.body
    return Delivery.objects.get(pk=response.body["delivery"]["id"])


def client_path(purpose: str, **data) -> str:
    return link_url(purpose=purpose, data=data).split("8000", 1)[1]


def known(post, user_id: str, address: str = ADDRESS) -> Customer:
    post("identify", userId=user_id, traits={"email": address})
    return Customer.objects.get(external_id=user_id)


def visitor(post, anonymous_id: str, address: str = ADDRESS) -> Customer:
    """A visitor who is not signed in submits the newsletter form with an address."""
    post("identify", anonymousId=anonymous_id, traits={"email": address})
    return Identity.objects.get(kind="anonymous_id", value=anonymous_id).customer


def promo(post, anonymous_id: str) -> Delivery:
    """The journey's newsletter to the visitor (the engine's batched send, then its dispatch)."""
    post(anonymousId=anonymous_id, event="Promo Viewed")
    return Delivery.objects.filter(customer__identities__value=anonymous_id).latest("id")


def test_a_visitor_typing_an_unsubscribed_address_gets_no_newsletter_but_the_receipt(shop, post, client, smtp,
                                                                                     on_commit):
    # given a known customer who unsubscribed from the newsletter with the link of a real email
    customer = known(post, "k77120")
    first = message(shop, on_commit, "news", "n1", customer)
    assert first.status == "sent"
    assert client.post(client_path("unsubscribe", c=customer.pk, k="email", t="product_updates", d=first.pk),
                       {"List-Unsubscribe": "One-Click"}).status_code == 200

    # when a visitor, not signed in, types the same address (in capitals) into the newsletter form
    anonymous = visitor(post, "anon-77120", ADDRESS.upper())

    # then they are a profile of their own (nothing merged by an address anyone can type)
    assert anonymous.pk != customer.pk and anonymous.email == ADDRESS.upper()
    assert Identity.objects.get(kind="email", value=ADDRESS).customer_id == customer.pk
    # and neither a journey nor the messages API mails the newsletter to the address; a receipt goes
    journey = promo(post, "anon-77120")
    news = message(shop, on_commit, "news", "n2", anonymous)
    receipt = message(shop, on_commit, "receipt", "r1", anonymous)
    assert (journey.status, journey.reason) == ("suppressed", "topic_opt_out")
    assert (news.status, news.reason) == ("suppressed", "topic_opt_out")
    assert receipt.status == "sent" and [m["Subject"] for m in smtp.messages] == ["News", "Receipt"]
    # the visitor's own consents are untouched: the hold is the address's, read at send time
    assert not Consent.objects.filter(customer=anonymous).exists()


@pytest.mark.parametrize("opt_out, reasons", [
    (lambda c: complaint_apply(customer=c, channel_kind="email", detail="feedback loop"),
     ("channel_opt_out", None)),
    (lambda c: address_suppress(customer=c, channel_kind="email", address=ADDRESS, detail="550 no such user"),
     ("undeliverable", "undeliverable")),
    (lambda c: consent_set(customer=c, channel_kind="", topic=None, status="opted_out", source="preference_centre"),
     ("do_not_contact", "do_not_contact")),
], ids=["complaint", "hard-bounce", "do-not-contact"])
def test_each_opt_out_of_the_address_holds_through_another_profile_as_it_holds_its_own(
        shop, post, on_commit, opt_out, reasons):
    # given a known customer's complaint, hard bounce or do-not-contact
    opt_out(known(post, "k77130"))

    # when a visitor with that address is sent the newsletter and a receipt
    anonymous = visitor(post, "anon-77130")
    news = message(shop, on_commit, "news", "n1", anonymous)
    receipt = message(shop, on_commit, "receipt", "r1", anonymous)

    # then each is held as the customer's own would be (a receipt passes a complaint, not a dead mailbox)
    assert news.status == "suppressed" and news.reason == reasons[0]
    assert (receipt.status, receipt.reason or None) == (("sent", None) if reasons[1] is None
                                                        else ("suppressed", reasons[1]))


def test_the_batched_dispatch_checks_the_address_again_with_a_query_per_batch(shop, post, on_commit, smtp,
                                                                                django_capture_on_commit_callbacks):
    # given newsletters queued for visitors, some with the address of a known customer
    news = MessageTemplate.objects.get(name="news")
    email = Channel.objects.get(name="email")
    owners = [CustomerFactory(external_id=f"k{i}", email=f"p{i}@example.com") for i in range(6)]
    visitors = [CustomerFactory(external_id="", email=f"P{i}@example.com") for i in range(6)]

    def queued(people, tag):
        with django_capture_on_commit_callbacks(execute=False):  # recorded, not sent yet
            return [message_send(customer=c, template=news, channel=email, idempotency_key=f"{tag}{c.pk}",
                                 context={}) for c in people]

    small, large = queued(visitors[:2], "s"), queued(visitors[2:], "l")
    assert {d.status for d in small + large} == {"queued"}

    # when the owners of three of those addresses unsubscribe before the dispatch
    for owner in (owners[0], owners[2], owners[3]):
        consent_set(customer=owner, channel_kind="email", topic=None, status="opted_out",
                    source="one_click_unsubscribe")
    with CaptureQueriesContext(connection) as two:
        deliveries_dispatch(delivery_ids=[d.pk for d in small])
    with CaptureQueriesContext(connection) as four:
        deliveries_dispatch(delivery_ids=[d.pk for d in large])

    # then those are held at send time, the others go
    outcome = {d.customer.email: (d.status, d.reason) for d in Delivery.objects.filter(
        pk__in=[d.pk for d in small + large]).select_related("customer")}
    assert outcome == {"P0@example.com": ("suppressed", "channel_opt_out"), "P1@example.com": ("sent", ""),
                       "P2@example.com": ("suppressed", "channel_opt_out"),
                       "P3@example.com": ("suppressed", "channel_opt_out"),
                       "P4@example.com": ("sent", ""), "P5@example.com": ("sent", "")}
    assert sorted(m["To"] for m in smtp.messages) == ["P1@example.com", "P4@example.com", "P5@example.com"]

    # and the addresses' holders and their consents are read once per batch, not once per message
    def reads(ctx) -> int:
        return sum(1 for q in ctx.captured_queries if q["sql"].startswith("SELECT") and (
            'FROM "channels_app_consent"' in q["sql"] or 'FROM "journeys_customer"' in q["sql"]))
    assert reads(two) == reads(four)


def test_the_hold_follows_the_opted_out_profile_when_it_changes_its_address(shop, post, on_commit):
    # given a customer who unsubscribed from all email, and a visitor with their address
    customer = known(post, "k77140")
    consent_set(customer=customer, channel_kind="email", topic=None, status="opted_out", source="one_click_unsubscribe")
    anonymous = visitor(post, "anon-77140")
    assert message(shop, on_commit, "news", "n1", anonymous).reason == "channel_opt_out"

    # when the customer moves to another address
    post("identify", userId="k77140", traits={"email": "moved77140@mail.example.org"})

    # then the old address is no longer theirs to hold; the new one is, through any profile
    assert message(shop, on_commit, "news", "n2", anonymous).status == "sent"
    newcomer = visitor(post, "anon-77141", "Moved77140@mail.example.org")
    assert message(shop, on_commit, "news", "n3", newcomer).reason == "channel_opt_out"


def test_only_an_explicit_opt_in_from_a_profile_with_the_address_lifts_the_hold(
        shop, post, client, on_commit, django_user_model):
    from channels_app.services.consent import consent_record_by_operator

    customer = known(post, "k77150")
    consent_set(customer=customer, channel_kind="email", topic=topic("product_updates"), status="opted_out",
                source="one_click_unsubscribe")
    anonymous = visitor(post, "anon-77150")

    # a CRM import's opt-in on the visitor's profile lifts nothing
    consent_set(customer=anonymous, channel_kind="email", topic=topic("product_updates"), status="opted_in",
                source="import job 7")
    assert message(shop, on_commit, "news", "n1", anonymous).reason == "topic_opt_out"

    # the visitor's preference centre shows the newsletter off; ticking it there is the person's choice
    path = client_path("preferences", c=anonymous.pk)
    assert 'name="t:product_updates:email" aria-label="Product updates by email" >' in client.get(path).content.decode()
    assert client.post(path, {"t:product_updates:email": "on"}).status_code == 200
    assert message(shop, on_commit, "news", "n2", anonymous).status == "sent"
    # the customer's own choice stays theirs
    assert message(shop, on_commit, "news", "n3", customer).reason == "topic_opt_out"
    # the lift is kept as the address's keyed digest, naming no one
    assert not Suppression.objects.filter(digest__contains="@").exists()

    # a later opt-out from the other profile holds again, until ops record the person's opt-in
    complaint_apply(customer=customer, channel_kind="email", detail="feedback loop")
    assert message(shop, on_commit, "news", "n4", anonymous).reason == "channel_opt_out"
    ops = django_user_model.objects.create_user("ops-1", password="x", is_staff=True)
    consent_record_by_operator(customer=anonymous, channel_kind="email", topic=None, status="opted_in", actor=ops,
                               reason="the visitor called to subscribe")
    assert message(shop, on_commit, "news", "n5", anonymous).status == "sent"


def test_an_sms_opt_out_holds_the_number_through_another_profile_until_start(sms_channel, post, client,  # noqa: F811
                                                                              on_commit):
    news = MessageTemplate.objects.create(name="sms-news", channel_kind="sms", topic=topic("product_updates"),
                                          body="News")
    post("identify", userId="k77160", traits={"phone": "+1 555 000 1"})
    customer = Customer.objects.get(external_id="k77160")
    consent_set(customer=customer, channel_kind="sms", topic=None, status="opted_out",
                source="preference_centre")
    post("identify", anonymousId="anon-77160", traits={"phone": "+15550001"})
    anonymous = Identity.objects.get(kind="anonymous_id", value="anon-77160").customer
    assert anonymous.pk != customer.pk

    def text(key):
        with on_commit():
            return message_send(customer=anonymous, template=news, channel=sms_channel, idempotency_key=key,
                                context={})

    assert text("s1").reason == "channel_opt_out"
    assert inbound(client, sms_channel, "START", sender="+15550001").status_code == 200
    assert text("s2").status in ("queued", "sent")


def test_the_customers_api_lists_every_profile_with_the_address(shop, post):
    # given a known customer, a visitor who typed their address as they did, one who typed it in capitals
    customer = known(post, "k77170")
    same = visitor(post, "anon-77170")
    capitals = visitor(post, "anon-77171", ADDRESS.upper())
    visitor(post, "anon-77172", "other77170@mail.example.org")

    def found(asked):
        response = shop.get(f"customers?email={asked}")
        assert response.status_code == 200
        return {c["id"] for c in response.body["results"]}

    # then the look-up by the address lists every profile holding it in the spelling asked or in
    # lower case, besides the one its identity points at
    assert found(ADDRESS) >= {customer.pk, same.pk}
    assert found(ADDRESS.upper()) == {customer.pk, same.pk, capitals.pk}
    assert found("other77170@mail.example.org") == {Customer.objects.get(email__startswith="other").pk}


def test_saving_the_preference_centre_as_shown_does_not_copy_another_profiles_do_not_contact(client):
    # given a customer who asked not to be contacted at all, and a visitor profile that typed the
    # same email address but has a phone number of its own (review 26, finding 9)
    from channels_app.services.consent import consent_refusal, preferences_get, preferences_save

    Channel.objects.create(name="email", kind="email", provider="smtp", settings={"from": "shop@example.com"})
    Channel.objects.create(name="sms", kind="sms", provider="twilio", settings={})
    news = topic("product_updates")
    owner = CustomerFactory(external_id="pc-owner", email="pc@example.org", phone="+15550007001")
    consent_set(customer=owner, channel_kind="", topic=None, status="opted_out", source="preference_centre")
    guest = CustomerFactory(external_id="pc-guest", email="pc@example.org", phone="+15550007002")
    receipt = topic("transactional")
    assert consent_refusal(customer=guest, channel_kind="sms", topic=receipt, address=guest.phone) is None

    # then the page shows the guest's own choices as theirs and the address's hold apart
    shown = preferences_get(customer=guest)
    assert shown["do_not_contact"] is False
    cells = {cell["kind"]: cell for row in shown["rows"] if row["topic"] == news for cell in row["cells"]}
    assert (cells["email"]["held"], cells["email"]["on"], cells["sms"]["held"], cells["sms"]["on"]) == (
        True, False, False, True)
    page = client.get(client_path("preferences", c=guest.pk)).content.decode()
    assert "unsubscribed from this elsewhere" in page

    # when the guest's preference centre is saved exactly as it is shown
    checked = {cell["field"] for row in shown["rows"] for cell in row["cells"] if cell["on"]}
    preferences_save(customer=guest, checked=checked, do_not_contact=shown["do_not_contact"],
                     personalization=shown["personalization"])

    # then the guest's own phone still gets its receipts and its newsletter, nothing of the owner's
    # was stored as the guest's, and the address stays held for email until the guest ticks it
    assert consent_refusal(customer=guest, channel_kind="sms", topic=receipt, address=guest.phone) is None
    assert consent_refusal(customer=guest, channel_kind="sms", topic=news, address=guest.phone) is None
    assert not Consent.objects.filter(customer=guest, status="opted_out", topic__in=[None, news])
    assert consent_refusal(customer=guest, channel_kind="email", topic=news, address=guest.email) == "do_not_contact"
    assert consent_refusal(customer=owner, channel_kind="email", topic=news, address=owner.email) == "do_not_contact"

    # when the guest ticks the held newsletter by email, the address is subscribed again for it
    preferences_save(customer=guest, checked=checked | {"t:product_updates:email"}, do_not_contact=False,
                     personalization=shown["personalization"])
    assert consent_refusal(customer=guest, channel_kind="email", topic=news, address=guest.email) is None
    assert consent_refusal(customer=owner, channel_kind="email", topic=news, address=owner.email) == "do_not_contact"


def test_every_holder_of_an_address_is_found_by_one_lookup_in_any_spelling(shop, post, sms_channel, client,  # noqa: F811
                                                                         on_commit):
    # given profiles holding one email address in three capitalisations, and two profiles that hold
    # one phone number without its identity pointing at the second (review 26, findings 4 and 7)
    customer = known(post, "k77180")
    consent_set(customer=customer, channel_kind="email", topic=topic("product_updates"), status="opted_out",
                source="one_click_unsubscribe")
    mixed = CustomerFactory(external_id="k77181", email="Person77120@Mail.Example.org")
    first = CustomerFactory(external_id="k77182", phone="+15550007180")
    second = CustomerFactory(external_id="k77183", phone="+15550007180")
    consent_set(customer=first, channel_kind="sms", topic=None, status="opted_out", source="preference_centre")

    # then the hold reaches the profile that typed the address in other capitals, and the number's
    # second holder, and the customers API lists every capitalisation's profile
    assert message(shop, on_commit, "news", "n1", mixed).reason == "topic_opt_out"
    from channels_app.services.consent import consent_refusal, customers_by_phone
    assert consent_refusal(customer=second, channel_kind="sms", topic=topic("product_updates"),
                           address=second.phone) == "channel_opt_out"
    assert {c.pk for c in customers_by_phone("+1 555 000 7180")} == {first.pk, second.pk}
    ids = {c["id"] for c in shop.get("customers?email=PERSON77120@mail.example.org").body["results"]}
    assert ids == {customer.pk, mixed.pk}


@pytest.mark.skipif(connection.vendor != "postgresql", reason="query plans: PostgreSQL only")
def test_the_holders_of_an_address_are_read_through_indexes_not_the_customers_table():
    from journeys.selectors import customers_holding

    # when who holds an address and a number is planned with sequential scans priced out
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
    sql, params = customers_holding(emails=["a@example.org"], phones=["+15550001"]).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = " ".join(row[0] for row in cursor.fetchall())

    # then both columns are read through their indexes
    assert "customer_phone_idx" in plan and "customer_email_lower_idx" in plan, plan
    assert "Seq Scan on journeys_customer" not in plan, plan
