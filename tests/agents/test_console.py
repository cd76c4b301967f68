"""The agent console through the Django test client: queues, permission boundaries, reply, notes, resolve."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from agents.models import Case
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
from tests.factories import CustomerFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def world(django_capture_on_commit_callbacks, email_channel):
    """Two teams; alice and bob in billing (capacity 1 each), carol in hardware."""
    billing = TeamFactory(slug="billing", categories=["billing"])
    hardware = TeamFactory(slug="hardware", categories=["hardware"])
    alice = AgentFactory(team=billing, capacity=1, skills={"billing": 5}, user__username="alice")
    bob = AgentFactory(team=billing, capacity=1, skills={"billing": 3}, user__username="bob")
    carol = AgentFactory(team=hardware, skills={"hardware": 3}, user__username="carol")
    customer = CustomerFactory(email="ada@example.com", traits={"first_name": "Ada", "plan": "pro"})
    cap = django_capture_on_commit_callbacks
    alices = open_case(customer=customer, capture=cap)
    bobs = open_case(capture=cap)
    queued = open_case(capture=cap)  # both billing agents are full
    carols = open_case(category="hardware", intent="technical", capture=cap)
    assert (alices.assigned_agent, bobs.assigned_agent, queued.status, carols.assigned_agent) == (alice, bob, "new", carol)
    return {"alice": alice, "bob": bob, "carol": carol, "alices": alices, "bobs": bobs, "queued": queued,
            "carols": carols, "customer": customer}


def login(client, agent):
    client.force_login(agent.user)
    return client


def test_pages_need_a_login(client, world):
    response = client.get(reverse("agents:queue"))
    assert response.status_code == 302 and response["Location"].startswith("/agents/login/")


def test_my_queue_lists_my_cases_and_my_teams_queue_only(client, world):
    page = login(client, world["alice"]).get(reverse("agents:queue")).content.decode()
    mine = page.split('id="my-cases"')[1].split("</section>")[0]
    queue = page.split('id="team-queue"')[1].split("</section>")[0]
    assert f"#{world['alices'].pk}<" in mine and f"#{world['bobs'].pk}<" not in mine
    assert f"#{world['queued'].pk}<" in queue
    assert f"#{world['carols'].pk}<" not in page

    carol_page = login(client, world["carol"]).get(reverse("agents:queue")).content.decode()
    assert f"#{world['queued'].pk}<" not in carol_page  # another team's queue


def test_the_queue_shows_fifty_cases_a_section_with_a_count_and_pages(client, world, django_capture_on_commit_callbacks):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    # given a long team queue (alice and bob are full: new cases wait, most urgent first)
    waiting = [open_case(capture=django_capture_on_commit_callbacks, priority=1 + n % 3) for n in range(61)]
    queued = sorted([world["queued"], *waiting], key=lambda c: (-c.priority, c.created_at, c.pk))
    assert all(c.status == "new" for c in queued)
    # when alice opens her queue
    with CaptureQueriesContext(connection) as queries:
        page = login(client, world["alice"]).get(reverse("agents:queue")).content.decode()
    # then the section shows the 50 most urgent, says how many there are, and links the next page
    section = page.split('id="team-queue"')[1].split("</section>")[0]
    shown = [int(pk) for pk in re.findall(r'agents/cases/(\d+)/take/', section)]
    assert shown == [c.pk for c in queued[:50]]
    assert "Team queue (62)" in section and "Showing 1–50 of 62" in section and "?queue=2" in section
    # the count is one COUNT query and the rows are read with a LIMIT
    on_cases = [q["sql"] for q in queries.captured_queries if 'FROM "agents_case"' in q["sql"]]
    assert sum("COUNT(" in sql for sql in on_cases) == 2  # one per section
    assert all("LIMIT" in sql for sql in on_cases if "COUNT(" not in sql)
    # the next page shows the rest
    section = client.get(reverse("agents:queue") + "?queue=2").content.decode().split('id="team-queue"')[1]
    assert [int(pk) for pk in re.findall(r'agents/cases/(\d+)/take/', section)] == [c.pk for c in queued[50:]]


@pytest.mark.parametrize("url", ["case", "reply", "note", "resolve", "take", "reopen", "close", "followup"])
def test_someone_elses_case_is_not_found(client, world, url):
    client = login(client, world["alice"])
    target = reverse(f"agents:{url}", args=[world["bobs"].pk])
    response = client.get(target) if url == "case" else client.post(target, {"body": "hi", "code": "fixed", "nonce": "x"})
    assert response.status_code == 404 and b"bob" not in response.content  # a colleague's case: not even who has it
    other_team = reverse(f"agents:{url}", args=[world["carols"].pk])
    response = client.get(other_team) if url == "case" else client.post(other_team, {"body": "hi", "code": "fixed"})
    assert response.status_code == 404
    assert Case.objects.get(pk=world["bobs"].pk).status == "assigned"


def test_a_queued_case_can_be_seen_by_the_team_but_not_worked_until_taken(client, world):
    client = login(client, world["bob"])
    queued = world["queued"]
    assert client.get(reverse("agents:case", args=[queued.pk])).status_code == 200
    assert client.post(reverse("agents:reply", args=[queued.pk]), {"body": "hi", "nonce": "n1"}).status_code == 403
    assert client.post(reverse("agents:resolve", args=[queued.pk]), {"code": "fixed"}).status_code == 403

    # Bob is at capacity: taking is refused with a message, not a crash.
    response = client.post(reverse("agents:take", args=[queued.pk]), follow=True)
    assert "already hold 1 open cases" in response.content.decode()

    carol_client = login(client.__class__(), world["carol"])
    assert carol_client.post(reverse("agents:take", args=[queued.pk])).status_code == 404


def _messages(response) -> list[str]:
    return re.findall(r'class="msg [^"]*" role="status">([^<]+)<', response.content.decode())


def test_take_on_a_case_someone_took_first_says_a_colleague_has_it(client, world, django_capture_on_commit_callbacks):
    # given dave, a billing agent with room, and bob, who saw the same queued case on his page
    dave = AgentFactory(team=world["bob"].team, capacity=3, user__username="dave", user__first_name="Dave")
    queued = world["queued"]
    take = reverse("agents:take", args=[queued.pk])
    dave_client = login(client.__class__(), dave)
    assert "The case is yours." in _messages(dave_client.post(take, follow=True))

    # when bob presses Take a moment later: back to his queue, told a colleague took it (no bare 403/404),
    # not who: he may no longer see the case
    bob_client = login(client.__class__(), world["bob"])
    response = bob_client.post(take)
    assert response.status_code == 302 and response["Location"] == reverse("agents:queue")
    assert _messages(bob_client.get(response["Location"])) == [f"Case #{queued.pk} was taken by a colleague first."]

    # dave pressing Take again (a second tab) stays on the case, which is his
    response = dave_client.post(take)
    assert response["Location"] == reverse("agents:case", args=[queued.pk])
    assert _messages(dave_client.get(response["Location"])) == [f"Case #{queued.pk} is already yours."]

    # a case routed straight to a colleague (never in the queue) and another team's case stay unknown
    alice_client = login(client.__class__(), world["alice"])
    assert alice_client.post(reverse("agents:take", args=[world["bobs"].pk])).status_code == 404
    assert alice_client.post(reverse("agents:take", args=[world["carols"].pk])).status_code == 404
    assert _messages(alice_client.get(reverse("agents:queue"))) == []
    assert Case.objects.get(pk=queued.pk).assigned_agent == dave


@pytest.mark.parametrize("who", ["another team's agent", "the fallback team's agent", "a user who is no agent"])
def test_take_on_a_case_out_of_reach_answers_like_a_case_that_does_not_exist(client, world, who):
    """Pressing Take on case ids one after another must not tell which exist or who holds them."""
    user = {"another team's agent": lambda: world["carol"].user,
            "the fallback team's agent": lambda: AgentFactory(team=TeamFactory(slug="triage", is_fallback=True)).user,
            "a user who is no agent": lambda: UserFactory()}[who]()
    client.force_login(user)

    for case in (world["alices"], world["bobs"], world["queued"]):
        response = client.post(reverse("agents:take", args=[case.pk]))
        assert response.status_code == 404 and b"alice" not in response.content and b"bob" not in response.content
    assert client.post(reverse("agents:take", args=[999_999])).status_code == 404
    assert _messages(client.get(reverse("agents:queue"))) == []
    assert Case.objects.get(pk=world["queued"].pk).status == "new"


def test_a_status_that_is_not_one_is_a_message_on_the_queue(client, world):
    client = login(client, world["carol"])
    response = client.post(reverse("agents:status"), {"status": "bogus"})
    assert response.status_code == 302 and response["Location"] == reverse("agents:queue")
    assert _messages(client.get(reverse("agents:queue"))) == ["bogus is not a status: pick Online, Away, Offline."]
    world["carol"].refresh_from_db()
    assert world["carol"].status == "online"


def test_resolve_and_follow_up_say_what_is_wrong_with_the_form(client, world):
    client = login(client, world["alice"])
    case = world["alices"]
    response = client.post(reverse("agents:resolve", args=[case.pk]), {"code": "fixed", "note": "y" * 3000}, follow=True)
    assert _messages(response) == ["A resolution note can be at most 2000 characters; this one has 3000. Shorten it "
                                   "and resolve again (a longer text fits in a note on the case)."]
    response = client.post(reverse("agents:resolve", args=[case.pk]), {"code": "bogus"}, follow=True)
    assert _messages(response) == ["Pick a resolution code: bogus is not one."]
    response = client.post(reverse("agents:followup", args=[case.pk]), {"workflow": "abc"}, follow=True)
    assert _messages(response) == ["Pick a live workflow: that one is not live (any more)."]
    assert Case.objects.get(pk=case.pk).status == "assigned"


def test_a_supervisor_with_model_permissions_sees_every_case(client, world):
    lead = UserFactory()
    lead.user_permissions.add(*Permission.objects.filter(codename__in=["view_case", "change_case"]))
    client.force_login(lead)
    for key in ("alices", "bobs", "queued", "carols"):
        assert client.get(reverse("agents:case", args=[world[key].pk])).status_code == 200


def test_reply_goes_out_on_the_preferred_channel_once_and_stops_the_sla_clock(client, world):
    from channels_app.models import Channel, Delivery

    sms = Channel.objects.create(name="sms", kind="sms")
    customer = world["customer"]
    customer.phone = "+15550100"
    customer.traits = {**customer.traits, "preferred_channel": "sms"}
    customer.save()
    client = login(client, world["alice"])
    url = reverse("agents:reply", args=[world["alices"].pk])

    with pytest.MonkeyPatch.context():
        for _ in range(2):  # a double click posts the same form twice
            response = client.post(url, {"body": "I'm on it, Ada.", "nonce": "form-1"}, follow=True)
    # the send happens after the reply is stored (a worker takes it): the agent is not told it went out
    assert "Reply queued: it goes out in a moment" in response.content.decode()
    assert "Reply sent." not in response.content.decode()
    delivery = Delivery.objects.get()
    assert (delivery.channel, delivery.to, delivery.body) == (sms, "+15550100", "I'm on it, Ada.")
    case = Case.objects.get(pk=world["alices"].pk)
    assert case.first_response_at is not None and case.status == "pending"
    assert case.entries.get(kind="message").delivery == delivery


def test_notes_stay_internal(client, world):
    from channels_app.models import Delivery

    client = login(client, world["alice"])
    client.post(reverse("agents:note", args=[world["alices"].pk]), {"body": "Called the bank."})
    assert world["alices"].entries.get(kind="note").body == "Called the bank."
    assert Delivery.objects.count() == 0


def test_case_page_is_prefilled_with_summary_and_suggested_replies(client, world):
    ReplyTemplateFactory(name="Billing help", category="billing", body="Hi {{ profile.first_name }}, about your {{ profile.plan }} bill...")
    page = login(client, world["alice"]).get(reverse("agents:case", args=[world["alices"].pk])).content.decode()
    assert "Hi Ada, about your pro bill..." in page
    assert re.search(r"<th>Plan</th><td>pro</td>", page)
    assert 'id="recent-events"' in page and 'id="previous-cases"' in page


def test_resolve_needs_a_code_and_records_it(client, world):
    client = login(client, world["alice"])
    url = reverse("agents:resolve", args=[world["alices"].pk])
    client.post(url, {"code": "made-up"})
    assert Case.objects.get(pk=world["alices"].pk).status == "assigned"
    client.post(url, {"code": "fixed", "note": "Refunded the double charge"})
    case = Case.objects.get(pk=world["alices"].pk)
    assert (case.status, case.resolution_code) == ("resolved", "fixed")
    # Resolved cases free capacity: the queued case can now go to alice.
    from agents.services.routing import cases_route_waiting

    assert cases_route_waiting() == 1
    assert Case.objects.get(pk=world["queued"].pk).assigned_agent == world["alice"]


def test_status_toggle_and_metrics_pages(client, world):
    client = login(client, world["carol"])
    client.post(reverse("agents:status"), {"status": "away"})
    world["carol"].refresh_from_db()
    assert world["carol"].status == "away"
    page = client.get(reverse("agents:metrics")).content.decode()
    assert '<td id="m-cases">1</td>' in page  # carol sees her own case only


def test_a_reply_that_cannot_reach_the_customer_is_recorded_and_keeps_the_sla_running(client, world):
    from channels_app.models import Delivery

    customer = world["customer"]
    customer.email = ""
    customer.save()
    client = login(client, world["alice"])

    page = client.post(reverse("agents:reply", args=[world["alices"].pk]), {"body": "Hello?", "nonce": "n"},
                       follow=True).content.decode()

    delivery = Delivery.objects.get()
    assert delivery.status == "suppressed"
    case = Case.objects.get(pk=world["alices"].pk)
    assert case.first_response_at is None and case.sla_due_at is not None and case.status == "assigned"
    assert "suppressed" in page.split('id="timeline"')[1]
    assert "The reply is on the case but was not sent" in page and "Reply sent." not in page


def test_a_customer_who_asked_not_to_be_contacted_gets_no_reply(client, world):
    """Consent is the channels app's call; the case records what happened."""
    import channels_app.services as channels

    if not hasattr(channels, "consent_set"):
        pytest.skip("this channels_app has no consent records yet")
    from channels_app.models import Delivery

    channels.consent_set(customer=world["customer"], channel_kind="", topic=None, status="opted_out",
                         source="support ticket")
    client = login(client, world["alice"])
    client.post(reverse("agents:reply", args=[world["alices"].pk]), {"body": "Hello Ada", "nonce": "n"})

    delivery = Delivery.objects.get()
    assert delivery.status == "suppressed"
    entry = world["alices"].entries.get(kind="message")
    assert entry.delivery == delivery and entry.data["status"] == "suppressed"
    assert Case.objects.get(pk=world["alices"].pk).first_response_at is None


@pytest.mark.parametrize(("url", "body", "message"), [
    ("agents:reply", "x" * 200_000, "A reply can be at most 5000 characters; this one has 200000."),
    ("agents:reply", "", "Write a reply first."),
    ("agents:note", "x" * 200_000, "A note can be at most 5000 characters; this one has 200000."),
    ("agents:note", "", "Write a note first."),
])
def test_a_reply_or_note_the_console_cannot_take_says_what_to_fix(client, world, url, body, message):
    from channels_app.models import Delivery

    # given alice's case; when she sends a reply or note that is empty or far too long
    client = login(client, world["alice"])
    response = client.post(reverse(url, args=[world["alices"].pk]), {"body": body, "nonce": "form-1"}, follow=True)

    # then the case page says what to fix, and nothing was sent or noted
    shown = " ".join(str(m) for m in response.context["messages"])
    assert message in shown, shown
    assert Delivery.objects.count() == 0 and not world["alices"].entries.filter(kind__in=["message", "note"]).exists()


@pytest.mark.parametrize(("url", "data", "message"), [
    ("agents:reply", {"body": "Hello\x00there", "nonce": "n1"},
     "The reply cannot contain null characters (\\0): remove them and send again."),
    ("agents:note", {"body": "Called\x00the bank"},
     "The note cannot contain null characters (\\0): remove them and add it again."),
    ("agents:resolve", {"code": "fixed", "note": "Refunded\x00"},
     "The resolution note cannot contain null characters (\\0): remove them and resolve again."),
])
def test_a_null_character_is_refused_naming_the_field(client, world, url, data, message):
    response = login(client, world["alice"]).post(reverse(url, args=[world["alices"].pk]), data, follow=True)

    assert _messages(response) == [message]
    case = Case.objects.get(pk=world["alices"].pk)
    assert case.status == "assigned" and not case.entries.filter(kind__in=["message", "note"]).exists()


def _transfer(client, case, to):
    return client.post(reverse("agents:transfer", args=[case.pk]), {"to": to})


def test_an_agent_transfers_a_case_to_an_online_colleague(client, world):
    # given alice's case, and carol (hardware, online, room for 2 more) offered on the case page
    client = login(client, world["alice"])
    case, carol = world["alices"], world["carol"]
    page = client.get(reverse("agents:case", args=[case.pk])).content.decode()
    assert f'value="agent:{carol.pk}"' in page and f'value="agent:{world["alice"].pk}"' not in page

    # when she hands it to carol
    response = _transfer(client, case, f"agent:{carol.pk}")

    # then carol has it (and its deadline still runs); alice no longer sees it and lands on her queue
    assert response.status_code == 302 and response["Location"] == reverse("agents:queue")
    assert _messages(client.get(response["Location"])) == [f"Case #{case.pk} transferred: it is now with carol."]
    moved = Case.objects.get(pk=case.pk)
    assert (moved.assigned_agent, moved.team, moved.status, moved.sla_due_at) == (carol, carol.team, "assigned",
                                                                                  case.sla_due_at)
    assert moved.entries.filter(kind="assignment", author=world["alice"].user,
                                body__contains="assigned to carol (transferred by alice)").exists()
    assert client.get(reverse("agents:case", args=[case.pk])).status_code == 404
    assert login(client.__class__(), carol).post(reverse("agents:note", args=[case.pk]),
                                                 {"body": "mine now"}).status_code == 302


def test_a_transfer_to_a_queue_goes_to_an_online_agent_of_that_team_never_back(client, world):
    from agents.models import Team

    client = login(client, world["alice"])
    hardware = Team.objects.get(slug="hardware")
    case = world["alices"]

    _transfer(client, case, f"team:{hardware.pk}")
    assert Case.objects.get(pk=case.pk).assigned_agent == world["carol"]

    # carol hands her own case back to her team's queue: she is its only agent, so it waits there
    carols = world["carols"]
    carol_client = login(client.__class__(), world["carol"])
    response = _transfer(carol_client, carols, f"team:{hardware.pk}")
    assert _messages(carol_client.get(response["Location"])) == [
        f"Case #{carols.pk} transferred: it waits in the {hardware} queue."]
    carols.refresh_from_db()
    assert (carols.status, carols.team, carols.assigned_agent) == ("new", hardware, None)
    queue = carol_client.get(reverse("agents:queue")).content.decode()
    assert f"#{carols.pk}<" in queue.split('id="team-queue"')[1]  # she, or a colleague, may take it later


def test_an_answered_case_sent_back_to_a_queue_gets_a_fresh_deadline_the_sla_sweep_sees(client, world):
    """A reply clears the deadline (the case is pending); sent to a queue it needs an answer again."""
    from datetime import timedelta

    from django.utils import timezone

    from agents.services.routing import cases_sla_check
    from agents.models import Team

    carols = world["carols"]
    Case.objects.filter(pk=carols.pk).update(status="pending", sla_due_at=None, first_response_at=timezone.now())
    hardware = Team.objects.get(slug="hardware")
    before = timezone.now()

    _transfer(login(client, world["carol"]), carols, f"team:{hardware.pk}")

    carols.refresh_from_db()
    assert (carols.status, carols.assigned_agent) == ("new", None)
    assert carols.sla_due_at is not None and carols.sla_due_at > before
    cases_sla_check(now=carols.sla_due_at + timedelta(minutes=1))
    assert Case.objects.get(pk=carols.pk).sla_breaches == 1


def test_a_transfer_is_refused_to_an_away_colleague_a_full_one_and_by_someone_who_only_sees_the_queue(client, world):
    carol = world["carol"]
    carol.status = "away"
    carol.save()
    client = login(client, world["alice"])
    case = world["alices"]

    page = client.get(reverse("agents:case", args=[case.pk])).content.decode()
    assert f'value="agent:{carol.pk}"' not in page  # away: not offered
    response = _transfer(client, case, f"agent:{carol.pk}")
    assert _messages(client.get(response["Location"])) == [
        f"Pick a queue or a colleague from the list: agent:{carol.pk} is not one (any more)."]
    response = _transfer(client, case, f"agent:{world['bob'].pk}")  # bob is full
    assert _messages(client.get(response["Location"])) == ["bob already holds 1 open cases"]
    assert Case.objects.get(pk=case.pk).assigned_agent == world["alice"]

    # bob sees the queued case but may not hand it anywhere
    bob = login(client.__class__(), world["bob"])
    assert _transfer(bob, world["queued"], f"agent:{world['alice'].pk}").status_code == 403


def test_a_supervisor_may_transfer_any_case_to_any_agent(client, world):
    from agents.services.routing import case_assign

    lead = UserFactory()
    lead.user_permissions.add(*Permission.objects.filter(codename__in=["view_case", "change_case"]))
    carol = world["carol"]
    carol.status = "away"
    carol.save()
    client.force_login(lead)
    assert f'value="agent:{carol.pk}"' in client.get(reverse("agents:case", args=[world["queued"].pk])).content.decode()

    response = _transfer(client, world["queued"], f"agent:{carol.pk}")

    assert response["Location"] == reverse("agents:case", args=[world["queued"].pk])  # a supervisor still sees it
    assert Case.objects.get(pk=world["queued"].pk).assigned_agent == carol
    with pytest.raises(Exception, match="already with carol"):
        case_assign(case=world["queued"], agent=carol, actor=lead)


def test_the_case_page_shows_the_newest_timeline_entries_and_links_the_older_ones(client, world):
    from agents.models import CaseEntry

    case = world["alices"]
    CaseEntry.objects.bulk_create(CaseEntry(case=case, kind="note", body=f"note {n}.") for n in range(120))
    client = login(client, world["alice"])

    timeline = client.get(reverse("agents:case", args=[case.pk])).content.decode().split('id="timeline"')[1]
    shown = re.findall(r"note (\d+)\.", timeline.split("</section>")[0])
    assert shown == [str(n) for n in range(70, 120)]  # the newest 50, oldest first
    assert "Entries 1–50 of 122, counted from the newest" in timeline and "?timeline=2" in timeline

    oldest = client.get(reverse("agents:case", args=[case.pk]) + "?timeline=3").content.decode()
    section = oldest.split('id="timeline"')[1].split("</section>")[0]
    assert re.findall(r"note (\d+)\.", section) == [str(n) for n in range(0, 20)]
    assert "My invoice is wrong" in section and "?timeline=2" in section  # what opened the case, and newer
