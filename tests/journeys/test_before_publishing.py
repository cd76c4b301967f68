"""What a campaign's people have before it goes live: a test send of a message step to their own
address, the audience the trigger's segment selects now (on the version page and where it is
reviewed and published), a dry run of a cron broadcast with a customer only, a clear refusal of
an action the role does not include, and a word when an edit sends an approved version back to
review."""

from __future__ import annotations

import re
import time
from datetime import UTC
from datetime import time as clock

import pytest
from django.urls import reverse
from django.utils import timezone

from channels_app.choices import ConsentStatus
from channels_app.models import Channel, Consent, Delivery, MessageTemplate
from journeys.services.workflows import step_token
from journeys.errors import PermissionDenied
from journeys.models import AuditEntry, Customer, Identity, WorkflowVersion
from journeys.services.workflows import version_approve, version_build, version_submit, workflow_create
from tests.channels_app.conftest import smtp  # noqa: F401  (the fixture: a real SMTP server)
from tests.journeys.test_governance_fixtures import *  # the fixtures: people, units
from tests.journeys.test_governance_fixtures import admin_form_data, login, steps

pytestmark = pytest.mark.django_db

OPS_ADDRESS = "ops.team@example.org"


def customer(external_id: str, traits: dict, **fields) -> Customer:
    """A customer known by their user id (what the dry run's "customer" field looks up)."""
    now = timezone.now()
    made = Customer.objects.create(external_id=external_id, traits=traits, first_seen=now, last_seen=now, **fields)
    Identity.objects.create(customer=made, kind="user_id", value=external_id)
    return made


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
def campaign(units):
    """A Retention cron broadcast over the pro plan, drafted by the system: split-free, one email on
    a channel whose quiet hours cover every hour (a real send would wait) and a cap of 0 a day."""
    now = timezone.now().astimezone(UTC)
    channel = Channel.objects.create(name="campaign-email", kind="email", provider="smtp",
                                     quiet_start=clock(0, 0), quiet_end=clock(23, 59),
                                     settings={"from_email": "shop@example.com"})
    MessageTemplate.objects.create(name="winter", subject="Winter sale for {{ profile.first_name }}",
                                   body="Hi {{ profile.first_name }}, {{ profile.plan }} members save 20%.")
    for i in range(7):
        customer(f"pro{i}", {"plan": "pro"}, email=f"pro{i}@example.com")
    for i in range(3):
        customer(f"free{i}", {"plan": "free"})
    workflow = workflow_create(name="Winter sale broadcast", business_unit=units["retention"])
    return version_build(workflow=workflow, definition={
        "trigger_kind": "schedule", "trigger_config": {"cron": "20 5 7 12 *", "segment": "profile.plan == 'pro'"},
        "steps": steps(("send", "send_message", {"channel": channel.name, "template": "winter"})),
        "edges": []})


def _test_send(client, version, **data):
    return client.post(reverse("admin:journeys_workflowversion_test_send", args=[version.pk]),
                       {"step": "send", "to": OPS_ADDRESS, **data}, follow=True)


# --------------------------------------------------------------------------- test send


def test_an_editor_sends_a_test_to_their_address_at_once_leaving_no_profile_or_delivery(client, people, campaign,
                                                                                       smtp):
    # given the campaign's channel is in quiet hours, and the editor of the workflow on its version page
    customers = Customer.objects.count()
    login(client, people["editor"])
    page = client.get(reverse("admin:journeys_workflowversion_change", args=[campaign.pk]))
    assert 'id="test-send-link"' in page.content.decode()

    # when they send a test of the email step to their own address
    response = _test_send(client, campaign)

    # then the SMTP server has it now, rendered with sample data, marked as a test
    assert [m["To"] for m in smtp.messages] == [OPS_ADDRESS]
    assert smtp.messages[0]["Subject"] == "[Test] Winter sale for Sam"
    assert "Hi Sam" in smtp.messages[0].get_body(("plain",)).get_content()
    said = " ".join(_messages(response))
    assert f"Test sent to {OPS_ADDRESS} through campaign-email" in said and "no sample value for profile.plan" in said
    # and nothing else changed: no profile for the address, no delivery (no cap or quiet hours counted)
    assert Customer.objects.count() == customers
    assert not Identity.objects.filter(value=OPS_ADDRESS).exists()
    assert not Delivery.objects.exists()
    # and the audit log says who sent what where
    entry = AuditEntry.objects.get(action="test_sent")
    assert entry.actor == people["editor"] and entry.version == campaign
    assert entry.data["to"] == OPS_ADDRESS and entry.data["sent"] is True and entry.data["step"] == "send"


def test_people_who_may_not_edit_the_workflow_cannot_send_a_test(client, people, campaign, smtp):
    # given an approver (reviews and publishes, does not edit) and an editor of another unit
    for name in ("approver", "other_editor"):
        login(client, people[name])

        # when they open the version page or post a test send
        page = client.get(reverse("admin:journeys_workflowversion_change", args=[campaign.pk]))
        response = client.post(reverse("admin:journeys_workflowversion_test_send", args=[campaign.pk]),
                               {"step": "send", "to": OPS_ADDRESS})

        # then no link is offered, the send is refused and nothing is sent
        assert 'id="test-send-link"' not in page.content.decode()
        assert response.status_code == 403
    from journeys.services.testsend import step_test_send

    with pytest.raises(PermissionDenied):
        step_test_send(version=campaign, step_key="send", to=OPS_ADDRESS, actor=people["approver"])
    assert smtp.messages == [] and not AuditEntry.objects.filter(action="test_sent").exists()


def test_a_test_is_refused_for_an_address_whose_customer_opted_out_and_for_a_bad_address(client, people, campaign,
                                                                                         smtp):
    # given a customer who asked never to be contacted
    customer = Customer.objects.get(external_id="pro1")
    Identity.objects.create(customer=customer, kind="email", value="pro1@example.com")
    Consent.objects.create(customer=customer, channel_kind="", topic=None, status=ConsentStatus.OPTED_OUT,
                           source="admin", updated_at=timezone.now())
    login(client, people["editor"])

    # when the editor sends a test to that customer's address, then to something that is no address
    opted_out = _test_send(client, campaign, to="pro1@example.com")
    bad = _test_send(client, campaign, to="not an address")

    # then both are refused at the address, saying why, and nothing is sent
    assert "belongs to a customer who may not get this message" in " ".join(opted_out.context["form"].errors["to"])
    assert "is not a valid email address" in " ".join(bad.context["form"].errors["to"])
    assert smtp.messages == []


def test_a_provider_failure_is_said_and_audited(client, people, campaign, settings):
    # given the SMTP server is down
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2
    login(client, people["editor"])

    # when the editor sends a test
    response = _test_send(client, campaign)

    # then the page says it was not sent, and the audit log has the attempt
    assert any(m.startswith(f"The test to {OPS_ADDRESS} through campaign-email was not sent") for m in _messages(response))
    assert AuditEntry.objects.get(action="test_sent").data["sent"] is False


# --------------------------------------------------------------------------- audience


def test_the_audience_now_is_on_the_version_page_and_where_it_is_approved_and_published(client, people, campaign):
    # given the editor proposed the broadcast
    request = version_submit(version=campaign, actor=people["editor"], summary="winter sale")
    pro = sum(1 for c in Customer.objects.all() if (c.traits or {}).get("plan") == "pro")

    # when the approver opens the version page and the review page
    login(client, people["approver"])
    version_page = client.get(reverse("admin:journeys_workflowversion_change", args=[campaign.pk])).content.decode()
    review = client.get(reverse("admin:journeys_changerequest_change", args=[request.pk])).content.decode()

    # then both say how many customers the segment selects now
    for text in (version_page, review):
        assert f"Audience now:</b> {pro} customers now: the segment profile.plan == &#x27;pro&#x27;" in text
    assert 'id="approve-button"' in review

    # and once approved, the publisher reads it where they publish
    version_approve(version=campaign, actor=people["approver"], comment="ok")
    login(client, people["ops"])
    review = client.get(reverse("admin:journeys_changerequest_change", args=[request.pk])).content.decode()
    assert 'id="publish-button"' in review and f"{pro} customers now" in review


def test_the_segment_count_is_the_engines_audience_and_bounded():
    # given 120 customers, a third of them on the pro plan
    now = timezone.now()
    for i in range(120):
        Customer.objects.create(external_id=f"c{i}", traits={"plan": "pro" if i % 3 == 0 else "free"},
                                first_seen=now, last_seen=now)

    # when the segment is counted, in full and with a budget of 30 customers
    from journeys.services.segments import segment_customer_ids, segment_size

    full = segment_size(rule="profile.plan == 'pro'", now=now)
    sampled = segment_size(rule="profile.plan == 'pro'", now=now, budget=30)

    # then the full count is the audience the engine walks; the budget is kept by an estimate
    assert full.count == len(segment_customer_ids(rule="profile.plan == 'pro'", now=now, limit=1000)) == 40
    assert full.exact
    if sampled.plan == "python":  # PostgreSQL counts a rule that translates in SQL, exactly
        assert not sampled.exact and sampled.checked == 30 and 10 <= sampled.count <= 70  # a random 30: 3.5 sd
    else:
        assert sampled.exact and sampled.count == 40


def test_a_python_segment_is_estimated_from_a_random_sample_even_when_the_data_repeats_in_step_with_ids(
        units, monkeypatch):
    """A bulk import cycling through cities: every 4th id is in Paris. A sample of every k-th id would see
    one city only (every 4th id: nobody, or everyone); a random sample sees each as often as it is."""
    from journeys.services import segments

    # given 1,200 customers, those whose id is 1 more than a multiple of 4 in Paris (300 of them)
    Customer.objects.bulk_create(Customer(external_id=f"b{i}") for i in range(1200))
    people = list(Customer.objects.all())
    for c in people:
        c.traits = {"age": 10, "city": "Paris" if c.pk % 4 == 1 else ["Rome", "Oslo", "Lima"][c.pk % 4 - 1]}
    Customer.objects.bulk_update(people, ["traits"])
    rule = "min(profile.age, 20) == 10 and profile.city == 'Paris'"  # min(): evaluated in Python everywhere
    now = timezone.now()
    assert segments.segment_plan(rule) == "python"

    # when it is counted with a budget of 300 customers (every 4th id, in the old sample)
    size = segments.segment_size(rule=rule, now=now, budget=300)

    # then 300 customers were checked and the estimate is near the 300 in Paris, not 0 or 1,200
    assert (size.exact, size.checked, size.base) == (False, 300, 1200)
    assert 180 <= size.count <= 420, size.count  # 4.6 standard deviations either side
    # and the same base gives the same estimate again (a reload does not move it)
    assert segments.segment_size(rule=rule, now=now, budget=300).count == size.count

    # and the version page's audience says it is an estimate from a sample of that size
    monkeypatch.setattr(segments, "PYTHON_BUDGET", 300)
    workflow = workflow_create(name="Paris", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_kind": "schedule", "trigger_config": {"cron": "0 9 * * 1", "segment": rule},
        "steps": steps(("done", "goal", {}))})
    summary = segments.trigger_audience(version=version, now=now).summary
    assert summary.startswith(f"About {size.count:,} customers (an estimate from a random sample: 300 of the "
                              "1,200 customers were checked) now"), summary


@pytest.mark.parametrize("rule", ["days_since(profile.signup_at) > 30", "profile.plan == 'pro' or exists(profile.tags)",
                                  "int(profile.total) > 40", "lower(profile.plan) == 'pro' and profile.ltv >= 100"])
def test_the_segment_count_matches_the_walk_on_traits_of_every_shape(rule):
    """Dates in unusual forms, text that looks like numbers, wrong types: on PostgreSQL some rows
    are left to Python by the SQL and re-checked; the count is still the audience walked."""
    from journeys.services.segments import segment_customer_ids, segment_size
    from tests.journeys.test_segments_sql import NOW, populate

    populate(240)

    size = segment_size(rule=rule, now=NOW)

    assert size.exact and size.count == len(segment_customer_ids(rule=rule, now=NOW, limit=10_000))


def test_an_event_trigger_says_who_enters_and_counts_nothing(live_workflow):
    from journeys.services.segments import trigger_audience

    audience = trigger_audience(version=live_workflow.live_version)
    assert audience.size is None and audience.summary.startswith("Customers enter on each 'Signed Up' event")


# --------------------------------------------------------------------------- dry run without an event


def test_the_dry_run_of_a_cron_broadcast_needs_a_customer_only(client, people, campaign):
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_dry_run", args=[campaign.pk])

    # when the editor opens the dry run and names a pro customer, then a free one
    page = client.get(url).content.decode()
    member = client.post(url, {"customer": "pro2"})
    outsider = client.post(url, {"customer": "free0"})

    # then no event is asked for, the pro customer would get the email and the free one is not in the audience
    assert 'name="event"' not in page and "starts its runs without an event" in page
    report = member.context["report"]
    assert report.entered and report.actions[0]["would_send"] == "winter"
    assert "Enters:</b> in the segment (profile.plan == &#x27;pro&#x27;): enters at each cron moment" in member.content.decode()
    assert not outsider.context["report"].entered
    assert "not in the trigger&#x27;s segment (profile.plan == &#x27;pro&#x27;)" in outsider.content.decode()


def test_the_dry_run_of_a_date_trigger_walks_from_the_customers_next_date(client, people, units):
    workflow = workflow_create(name="Anniversary", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_kind": "date_attribute", "trigger_config": {"attribute": "signup_date", "at": "09:00"},
        "steps": steps(("tag", "update_profile", {"traits": {"celebrated": True}})), "edges": []})
    customer("dated", {"signup_date": "2020-03-01"})
    customer("undated", {})
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_dry_run", args=[version.pk])

    dated, undated = client.post(url, {"customer": "dated"}), client.post(url, {"customer": "undated"})

    assert dated.context["report"].entered and "-03-01 at 09:00 UTC" in dated.context["report"].entry
    assert dated.context["report"].path[0]["at"][5:16] == "03-01T09:00"
    assert undated.context["report"].reason == "no upcoming date in signup_date (it is None)"


def test_a_segment_entry_dry_run_takes_an_event_or_none(client, people, units):
    workflow = workflow_create(name="Became VIP", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_kind": "segment_entry", "trigger_config": {"rule": "profile.plan == 'pro'"},
        "steps": steps(("tag", "update_profile", {"traits": {"vip": True}})), "edges": []})
    customer("p", {"plan": "pro"})
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_dry_run", args=[version.pk])

    without = client.post(url, {"customer": "p"})
    with_event = client.post(url, {"customer": "p", "event": '{"event": "Plan Changed"}'})

    assert without.context["report"].entered and with_event.context["report"].entered


# --------------------------------------------------------------------------- refusals and messages


def test_an_editor_choosing_approve_is_told_they_may_not(client, people, campaign):
    version_submit(version=campaign, actor=people["editor"], summary="winter sale")
    login(client, people["editor"])

    response = client.post(reverse("admin:journeys_workflowversion_changelist"),
                           {"action": "approve", "_selected_action": [campaign.pk], "index": 0,
                            "reason": "looks good to me"}, follow=True)

    said = _messages(response)
    assert not any("No action selected" in m for m in said)
    assert any(m.startswith("You may not approve: approving and rejecting are for reviewers") for m in said), said
    assert WorkflowVersion.objects.get(pk=campaign.pk).state == "in_review"


def test_editing_an_approved_version_says_it_went_back_to_review(client, people, campaign):
    # given the broadcast proposed by the editor and approved
    version_submit(version=campaign, actor=people["editor"], summary="winter sale")
    version_approve(version=campaign, actor=people["approver"], comment="ok")
    login(client, people["editor"])
    url = reverse("admin:journeys_workflowversion_change", args=[campaign.pk])

    # when the editor moves the cron on the version page
    data = admin_form_data(client.get(url), trigger_config='{"cron": "30 5 7 12 *", "segment": "profile.plan == \'pro\'"}',
                           change_reason="half an hour later")
    response = client.post(url, data, follow=True)

    # then the page says the change sent it back to review, not that it is still approved
    said = " ".join(_messages(response))
    assert "v1 was approved; this change sent it back to review" in said
    assert "(approved)" not in said and "v1 (in_review)</a>” was changed successfully" in said
    assert WorkflowVersion.objects.get(pk=campaign.pk).state == "in_review"


def test_editing_a_step_of_an_approved_version_says_it_went_back_to_review(client, people, campaign):
    version_submit(version=campaign, actor=people["editor"], summary="winter sale")
    version_approve(version=campaign, actor=people["approver"], comment="ok")
    login(client, people["editor"])
    step = campaign.steps.get(key="send")

    response = client.post(reverse("admin:journeys_step_change", args=[step.pk]),
                           {"key": "send", "channel": "campaign-email", "template": "winter",
                            "change_reason": "same, saved again with a new name", "name": "Winter email",
                            "_save": "Save", "loaded": step_token(step=step)}, follow=True)

    assert any("this change sent it back to review" in m for m in _messages(response)), _messages(response)



def test_the_audience_of_a_python_segment_is_bounded_by_the_count_time_limit(admin_client, units, settings,
                                                                             monkeypatch):
    """A rule that cannot run as SQL is checked in Python page by page: the time limit that gives up
    a count (SEGMENT_COUNT_TIMEOUT_MS) stops the sample too, and the page says from how many."""
    from journeys.services import segments

    # given 1,200 customers who all match a Python-only rule, and a check that takes 0.2 s a page of 100
    Customer.objects.bulk_create(Customer(external_id=f"t{i}", traits={"age": 10}) for i in range(1200))
    rule = "min(profile.age, 20) == 10"
    assert segments.segment_plan(rule) == "python"
    matching = segments.customers_matching

    def slow(**kwargs):
        time.sleep(0.2)
        return matching(**kwargs)

    monkeypatch.setattr(segments, "customers_matching", slow)
    monkeypatch.setattr(segments, "PAGE", 100)
    settings.SEGMENT_COUNT_TIMEOUT_MS = 500
    workflow = workflow_create(name="Ten year olds", business_unit=units["retention"])
    version = version_build(workflow=workflow, definition={
        "trigger_kind": "schedule", "trigger_config": {"cron": "0 9 * * 1", "segment": rule},
        "steps": steps(("done", "goal", {}))})
    url = reverse("admin:journeys_workflowversion_change", args=[version.pk])

    # when the version page is opened with a sample of 600 to draw
    monkeypatch.setattr(segments, "PYTHON_BUDGET", 600)
    page = admin_client.get(url).content.decode()

    # then the sample stopped at the limit, and the estimate is from the customers checked by then
    said = re.search(r"About 1,200 customers \(an estimate from a random sample: (\d+) of the 1,200 customers were "
                     r"checked, all the 0.5 s limit allowed\) now", page)
    assert said and 0 < int(said.group(1)) < 600, page

    # and a walk of every customer (no sample: 1,200 within the budget) that the limit stops gives up, saying so
    monkeypatch.setattr(segments, "PYTHON_BUDGET", 20_000)
    page = admin_client.get(url).content.decode()
    said = re.search(r"An audience that could not be counted within 0.5 s \((\d+) of 1,200 checked by then\) now", page)
    assert said and 0 < int(said.group(1)) < 1200, page


def test_a_test_send_shows_the_variant_a_locale_gets(client, people, campaign, smtp):
    # given the campaign's template has fr, fr-CA and ar variants
    winter = MessageTemplate.objects.get(name="winter")
    for locale, subject in (("fr", "Soldes d'hiver pour {{ profile.first_name }}"), ("fr-CA", "Soldes d'hiver, allo"),
                            ("ar", "تخفيضات الشتاء")):
        winter.variants.create(locale=locale, subject=subject)
    login(client, people["editor"])

    # when the editor sends tests as customers whose locales are fr_FR, FR-ca and ar-EG get them
    said = [" ".join(_messages(_test_send(client, campaign, locale=locale))) for locale in ("fr_FR", "FR-ca", "ar-EG")]

    # then each arrives in that variant, the page says which, and the audit log records it
    assert [m["Subject"] for m in smtp.messages] == [
        "[Test] Soldes d'hiver pour Sam", "[Test] Soldes d'hiver, allo", "[Test] تخفيضات الشتاء"]
    assert "in the fr variant" in said[0] and "in the fr-CA variant" in said[1] and "in the ar variant" in said[2]
    assert [e.data["locale"] for e in AuditEntry.objects.filter(action="test_sent").order_by("pk")] == ["fr", "fr-CA",
                                                                                                      "ar"]


def test_a_test_send_refuses_a_locale_that_is_no_language_tag_on_its_field(client, people, campaign, smtp):
    login(client, people["editor"])

    response = _test_send(client, campaign, locale="zz zz!!")

    assert "is not a language tag" in response.context["form"].errors["locale"][0]
    assert smtp.messages == [] and not AuditEntry.objects.filter(action="test_sent").exists()
