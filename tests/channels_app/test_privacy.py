"""Data-subject requests: export everything (JSON) and erase per the documented policy."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from channels_app.models import Consent, Delivery, ErasureRecord
from channels_app.services import consent_set, message_send
from journeys.models import Customer, Event, Identity, QuarantinedEvent, Source
from tests.channels_app.factories import ChannelFactory, TemplateFactory, topic

pytestmark = pytest.mark.django_db


@pytest.fixture
def history(api, django_capture_on_commit_callbacks):
    """A customer with events, identities, a merged anonymous profile, a delivery and consents."""
    with django_capture_on_commit_callbacks(execute=True):
        api.post("track", {"anonymousId": "anon-1", "event": "Viewed", "properties": {"page": "/secret-page"}})
        api.post("identify", {"userId": "dana", "anonymousId": "anon-1",
                              "traits": {"email": "dana@example.com", "phone": "+15557777", "first_name": "Dana"}})
    dana = Customer.objects.get(external_id="dana")
    email = ChannelFactory(name="email", kind="email", provider="console")
    with django_capture_on_commit_callbacks(execute=True):
        message_send(customer=dana, template=TemplateFactory(body="Hi {{ profile.first_name }}"), channel=email,
                     idempotency_key="k", context={})
    consent_set(customer=dana, channel_kind="email", topic=topic("marketing"), status="opted_in", source="signup")
    return dana


def test_export_command_writes_everything_held(history, tmp_path):
    out = tmp_path / "dana.json"
    call_command("export_customer", "dana", "--output", str(out))

    data = json.loads(out.read_text())
    assert data["customer"]["email"] == "dana@example.com"
    assert {(i["kind"], i["value"]) for i in data["identities"]} >= {("user_id", "dana"), ("anonymous_id", "anon-1")}
    assert {e["name"] for e in data["events"]} >= {"Viewed", "Message Sent"}
    assert any(e["properties"].get("page") == "/secret-page" for e in data["events"])
    assert data["deliveries"][0]["body"] == "Hi Dana"
    assert data["consents"][0]["topic"] == "marketing" and data["consent_history"][0]["source"] == "signup"


def test_export_command_streams_the_same_document_to_standard_output(history, tmp_path):
    import io

    out = tmp_path / "dana.json"
    call_command("export_customer", "dana", "--output", str(out))
    printed = io.StringIO()
    call_command("export_customer", "dana", stdout=printed)
    assert json.loads(printed.getvalue()) == json.loads(out.read_text())


def test_erase_command_deletes_and_anonymises_per_policy(history, capsys):
    from django.utils import timezone

    from journeys.engine.compiled import load_version
    from journeys.engine.runner import run_enroll
    from journeys.models import BusinessUnit, JourneyRun
    from journeys.services.workflows import version_build, version_publish, workflow_create

    unit = BusinessUnit.objects.create(slug="growth", name="Growth")
    version = version_publish(version=version_build(workflow=workflow_create(name="nurture", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Never",
        "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "7d"}}], "edges": []}), reason="test")
    run_enroll(version=load_version(version.pk), customer=history, trigger_key="t:1", now=timezone.now())
    with pytest.raises(CommandError):
        call_command("erase_customer", "dana")  # refuses without --yes

    call_command("erase_customer", "dana", "--yes", "--reason", "GDPR art. 17 request #12")

    dana = Customer.objects.get(pk=history.pk)
    assert (dana.external_id, dana.email, dana.phone, dana.traits) == (f"erased-{dana.pk}", "", "", {})
    assert not Event.objects.filter(customer=dana).exists()
    assert not Event.objects.filter(properties__page="/secret-page").exists()
    assert not Identity.objects.filter(value__in=["dana", "anon-1", "dana@example.com"]).exists()
    assert not Consent.objects.exists() and not Consent.history.exists()
    delivery = Delivery.objects.get()
    assert (delivery.to, delivery.body, delivery.subject) == ("", "", "") and delivery.status == "sent"
    run = JourneyRun.objects.get(customer=dana)  # an open run is ended, with its moment (reports count it finished)
    assert (run.status, run.error, run.next_wake_at) == ("exited", "customer erased", None) and run.finished_at
    assert list(run.executions.values_list("step_key", "outcome")) == [("wait", "exited")]  # its delay ends with it
    record = ErasureRecord.objects.get()
    assert record.customer_id_erased == dana.pk and record.reason == "GDPR art. 17 request #12"
    assert record.counts["events"] >= 2 and "erased" in capsys.readouterr().out


def test_erasure_takes_the_quarantined_events_that_name_the_customer(history, api):
    # given refused events of dana (under her user id, her anonymous id and her email) and one of someone else
    bad = {"type": "track", "event": "x" * 300}
    response = api.post("batch", {"batch": [{**bad, "userId": "dana"}, {**bad, "anonymousId": "anon-1"},
                                            {"type": "identify", "userId": "new-id", "traits": {"email": "dana@example.com"},
                                             "context": {"x": "x" * 40000}},
                                            {**bad, "userId": "danaX"}]})
    assert len(response.json()["rejected"]) == 4

    # when she is erased
    call_command("erase_customer", "dana", "--yes", "--reason", "GDPR art. 17 request #13")

    # then only the other person's refused event is left, and the record counts hers
    assert [json.loads(e.payload)["userId"] for e in QuarantinedEvent.objects.all()] == ["danaX"]
    assert not QuarantinedEvent.history.filter(payload__contains='"dana"').exists()
    assert ErasureRecord.objects.get().counts["quarantined_events"] == 3


def test_erasure_takes_quarantined_events_that_sent_a_numeric_user_id_as_a_number(api):
    bad = {"type": "track", "event": "x" * 300}
    api.post("batch", {"batch": [{"type": "track", "userId": 777, "event": "Good"}, {**bad, "userId": 777},
                                 {**bad, "userId": 7771}]})
    assert Customer.objects.filter(external_id="777").exists()

    call_command("erase_customer", "777", "--yes", "--reason", "GDPR")

    assert [json.loads(e.payload)["userId"] for e in QuarantinedEvent.objects.all()] == [7771]


def test_export_reads_the_steps_of_all_runs_in_one_query(history, django_assert_max_num_queries):
    from django.utils import timezone

    from channels_app.services import customer_export
    from journeys.models import BusinessUnit, JourneyRun, StepExecution
    from journeys.services.workflows import version_build, version_publish, workflow_create

    # given a customer with many runs, each with its step executions
    unit = BusinessUnit.objects.create(slug="growth", name="Growth")
    version = version_publish(version=version_build(workflow=workflow_create(name="nurture", business_unit=unit), definition={
        "trigger_kind": "event", "trigger_event": "Never",
        "steps": [{"key": "wait", "kind": "delay", "config": {"duration": "7d"}}], "edges": []}), reason="test")
    for n in range(12):
        run = JourneyRun.objects.create(workflow=version.workflow, version=version, customer=history,
                                        trigger_key=f"t:{n}", status="completed")
        StepExecution.objects.bulk_create([
            StepExecution(run=run, step_key=key, step_kind="delay", visit=1, started_at=timezone.now())
            for key in ("second", "first")])
    runs = list(JourneyRun.objects.filter(customer=history).order_by("created_at"))
    assert len(runs) == 12
    # when the export is made, then the number of queries does not grow with the runs
    with django_assert_max_num_queries(20):
        data = customer_export(customer=history)
    # and each run carries its own steps, in order
    assert [r["id"] for r in data["journey_runs"]] == [r.pk for r in runs]
    for row in data["journey_runs"]:
        expected = list(StepExecution.objects.filter(run_id=row["id"]).values_list("id", flat=True))
        assert [step["id"] for step in row["steps"]] == expected and expected
        assert all(step["run"] == row["id"] for step in row["steps"])


def test_admin_export_and_erase_actions(history, admin_client):
    url = "/admin/channels_app/datasubject/"
    export = admin_client.post(url, {"action": "export_selected", "_selected_action": [history.pk]})
    assert export.status_code == 200 and export["Content-Type"] == "application/json"
    assert json.loads(export.content)["customer"]["external_id"] == "dana"

    confirm = admin_client.post(url, {"action": "erase_selected", "_selected_action": [history.pk]})
    assert confirm.status_code == 200 and b"cannot be undone" in confirm.content
    assert Customer.objects.get(pk=history.pk).email == "dana@example.com"  # nothing yet

    done = admin_client.post(url, {"action": "erase_selected", "_selected_action": [history.pk], "confirm": "1",
                                   "reason": "ticket 7"})
    assert done.status_code == 302
    assert Customer.objects.get(pk=history.pk).email == ""
    assert ErasureRecord.objects.get().actor == "admin:admin"


def test_select_all_above_the_limit_is_refused_saying_how_many_and_what_to_do(admin_client, monkeypatch):
    from channels_app.admin import privacy
    from tests.factories import CustomerFactory

    # given more customers selected ("select all") than the actions take at a time
    monkeypatch.setattr(privacy, "ACTION_LIMIT", 4)
    customers = CustomerFactory.create_batch(6)
    url = "/admin/channels_app/datasubject/"
    for action in ("export_selected", "erase_selected"):
        # when ops run the action on all of them
        response = admin_client.post(url, {"action": action, "select_across": "1", "index": "0",
                                           "_selected_action": [customers[0].pk], "confirm": "1", "reason": "r"},
                                     follow=True)
        # then nothing is exported or erased, and the message says how many, the limit and what instead
        assert response["Content-Type"].startswith("text/html")
        text = response.content.decode()
        assert "6 data subjects are selected and this action takes at most 4 at a time" in text
        assert ("manage.py export_customer" if action == "export_selected" else "manage.py erase_customer") in text
    assert not ErasureRecord.objects.exists()


def test_a_selection_with_a_long_history_is_refused_whatever_the_number_of_customers(admin_client, monkeypatch):
    """One customer with 150,000 events took the export past the web server's timeout (a 500)."""
    from channels_app.admin import privacy
    from tests.factories import CustomerFactory

    monkeypatch.setattr(privacy, "HISTORY_LIMIT", 3)
    heavy, light = CustomerFactory.create_batch(2)
    source = Source.objects.create(name="web")
    now = timezone.now()
    Event.objects.bulk_create([Event(source=source, message_id=f"h{i}", type="track", name="Seen", customer=heavy,
                                     timestamp=now, received_at=now) for i in range(4)])
    url = "/admin/channels_app/datasubject/"
    for action in ("export_selected", "erase_selected"):
        response = admin_client.post(url, {"action": action, "_selected_action": [heavy.pk], "confirm": "1",
                                           "reason": "r"}, follow=True)
        text = response.content.decode()
        assert "the selected customers have more than 3 events between them" in text
        assert ("POST /api/v1/customers/&lt;id&gt;/export" if action == "export_selected" else "erase_customer") in text
    assert not ErasureRecord.objects.exists()
    response = admin_client.post(url, {"action": "export_selected", "_selected_action": [light.pk]})
    assert response["Content-Type"] == "application/json"


def test_the_erase_confirmation_names_fifty_and_counts_the_rest(admin_client):
    from tests.factories import CustomerFactory

    customers = CustomerFactory.create_batch(61)
    response = admin_client.post("/admin/channels_app/datasubject/", {
        "action": "erase_selected", "select_across": "1", "index": "0", "_selected_action": [customers[0].pk]})
    text = response.content.decode()
    listed = text[text.index('id="erase-list"'):text.index("</ul>", text.index('id="erase-list"'))]
    assert listed.count("<li>") == 50 and "and 11 more" in listed
    assert "Erase 61 customers?" in text and text.count('name="_selected_action"') == 61
    assert Customer.objects.filter(email__endswith="@example.com").count() == 61  # nothing erased yet


def test_an_erased_persons_old_links_reports_and_broadcasts_write_nothing_about_them(history, client):
    from channels_app.services.links import link_url
    from channels_app.services.tracking import delivery_open_record, delivery_status_record
    from journeys.services.segments import segment_customer_ids

    delivery = Delivery.objects.get(customer=history)
    call_command("erase_customer", "dana", "--yes", "--reason", "GDPR")
    history.refresh_from_db()
    events = Event.objects.count()

    # an old email is opened, the vendor reports it delivered, its unsubscribe and preference links are followed
    delivery_open_record(delivery_id=delivery.pk)
    delivery_status_record(delivery_id=delivery.pk, status="delivered")
    for purpose, data in (("unsubscribe", {"c": history.pk, "k": "email"}), ("preferences", {"c": history.pk})):
        path = "/" + link_url(purpose=purpose, data=data).split("/", 3)[3]
        assert client.get(path).status_code == 410
        assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 410

    history.refresh_from_db()
    assert Event.objects.count() == events and history.last_engaged_at is None
    assert not Consent.objects.filter(customer=history).exists()
    # and a broadcast to everyone leaves the tombstone out
    assert history.pk not in segment_customer_ids(rule="", now=history.created_at, limit=100)
    assert history.pk not in segment_customer_ids(rule="profile.plan != 'pro'", now=history.created_at, limit=100)


def test_an_export_that_finishes_after_the_erasure_keeps_no_copy(history):
    from journeys.models import Job
    from journeys.services.jobs import run_job

    job = Job.objects.create(kind="export", params={"customer_id": history.pk})
    call_command("erase_customer", "dana", "--yes", "--reason", "GDPR")  # while the export was queued or running

    run_job(job.pk)

    job.refresh_from_db()
    assert job.status == "succeeded" and job.result["erased"] is True
    assert "export" not in job.result and "dana" not in json.dumps(job.result)


def test_a_send_under_way_during_the_erasure_writes_no_event_with_the_old_user_id(history):
    from journeys.services.internal_events import InternalEvent, events_record_internal

    call_command("erase_customer", "dana", "--yes", "--reason", "GDPR")
    late = InternalEvent(customer_id=history.pk, user_id="dana", name="Message Sent", message_id="sent:late",
                         at=history.created_at, properties={})

    assert events_record_internal(events=[late]) == []
    assert not Event.objects.filter(user_id="dana").exists()


def test_the_export_holds_the_customers_support_cases_with_every_reply_and_note(history, tmp_path,
                                                                                django_assert_max_num_queries):
    from django.contrib.auth.models import User

    from agents.services.cases import CaseDraft, case_note_add, case_open
    from channels_app.services import customer_export

    # given a customer with a dozen support cases, one with an internal note
    def draft(n):
        return CaseDraft(customer=history, subject=f"Charged twice #{n}", text=f"My card was charged twice ({n})",
                         category=f"billing-{n}", intent="complaint", language="en", priority=2, sentiment=-0.5,
                         complexity=0.2, reasons=["angry"])

    admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
    cases = [case_open(draft=draft(n), idempotency_key=f"case-{n}")[0] for n in range(12)]
    case_note_add(case=cases[0], actor=admin, body="Refund approved for Dana")
    # when the export is made, then the number of queries does not grow with the cases
    with django_assert_max_num_queries(25):
        customer_export(customer=history)
    # and the export command's file holds each case: what the customer wrote and every entry
    out = tmp_path / "dana.json"
    call_command("export_customer", "dana", "--output", str(out))
    exported = json.loads(out.read_text())["support_cases"]
    assert [c["subject"] for c in exported] == [f"Charged twice #{n}" for n in range(12)]
    assert exported[0]["text"] == "My card was charged twice (0)"
    assert [(e["kind"], e["body"]) for e in exported[0]["entries"]][-1] == ("note", "Refund approved for Dana")
    assert any(e["body"] == "My card was charged twice (0)" for e in exported[0]["entries"])


@pytest.fixture
def shell(history, api, django_capture_on_commit_callbacks):
    """A second visit of dana's as an anonymous visitor, merged into her profile when she signed in."""
    with django_capture_on_commit_callbacks(execute=True):
        api.post("track", {"anonymousId": "anon-2", "event": "Viewed", "properties": {"page": "/other-page"}})
        api.post("identify", {"userId": "dana", "anonymousId": "anon-2"})
    return Customer.objects.get(merged_into=history)


def test_the_commands_given_a_merged_away_profiles_number_act_on_the_profile_that_holds_its_data(
        history, shell, tmp_path):
    import io

    # given dana's anonymous profile, merged into hers at identify (an old ticket names its number)
    out, said = tmp_path / "export.json", io.StringIO()

    # when the DPO exports and erases by that number
    call_command("export_customer", str(shell.pk), "--output", str(out), stderr=said)
    call_command("erase_customer", str(shell.pk), "--yes", "--reason", "old ticket", stderr=said)

    # then the export is dana's (her email, her events) and the erasure is hers, each saying so
    exported = json.loads(out.read_text())
    assert exported["customer"]["id"] == history.pk and exported["customer"]["email"] == "dana@example.com"
    assert any(e["properties"].get("page") == "/secret-page" for e in exported["events"])
    assert said.getvalue().count(f"customer #{shell.pk} was merged into #{history.pk}") == 2
    assert list(ErasureRecord.objects.values_list("customer_id_erased", flat=True)) == [history.pk]
    assert Customer.objects.get(pk=history.pk).email == "" and not Event.objects.filter(customer=shell).exists()


def test_an_erasure_of_a_merged_away_profile_is_refused_naming_the_survivor_and_records_nothing(
        history, shell, admin_client):
    from channels_app.services import customer_erase
    from journeys.errors import JourneyError

    with pytest.raises(JourneyError, match=f"merged into #{history.pk}"):
        customer_erase(customer=shell, actor="test", reason="r")
    assert not ErasureRecord.objects.exists()

    # the admin's action, given the shell, erases the person it stands for
    done = admin_client.post("/admin/channels_app/datasubject/", {
        "action": "erase_selected", "_selected_action": [shell.pk], "confirm": "1", "reason": "ticket 8"})
    assert done.status_code == 302
    assert list(ErasureRecord.objects.values_list("customer_id_erased", flat=True)) == [history.pk]


def test_the_export_holds_experiment_assignments_workflow_entries_and_stage_changes(history):
    from channels_app.services import customer_export
    from experiments.models import Assignment
    from experiments.services.assignment import assignment_decide
    from journeys.models import EntryGate, LifecycleStage
    from journeys.services.lifecycle import customer_set_stage
    from tests.experiments.factories import make_experiment
    from tests.factories import live_workflow

    # given dana's arm in an experiment (with the scores a next-best-action model predicted), an
    # entry into a workflow that lets people in once, and a lifecycle stage change
    experiment = make_experiment(key="promo")
    assignment_decide(experiment=experiment, customer=history, now=timezone.now())
    Assignment.objects.filter(customer=history).update(scores={"control": 0.1, "short": 0.7})
    workflow = live_workflow(name="welcome once", definition={"trigger_event": "Signed Up", "reentry_policy": "once",
                                                              "steps": [{"key": "g", "kind": "goal", "config": {}}]})
    EntryGate.objects.create(workflow=workflow, customer=history, entered_at=timezone.now())
    LifecycleStage.objects.get_or_create(key="active", defaults={"name": "Active"})
    customer_set_stage(customer=history, stage="active", reason="first order")

    data = customer_export(customer=history)

    [assigned] = data["experiment_assignments"]
    arm = Assignment.objects.get(customer=history)
    assert (assigned["experiment_name"], assigned["arm"], assigned["holdout"], assigned["bucket"]) == (
        experiment.name, arm.arm.name, arm.holdout, arm.bucket)
    assert assigned["scores"] == {"control": 0.1, "short": 0.7} and assigned["weights"] == arm.weights
    assert [(e["workflow"], e["workflow_name"]) for e in data["workflow_entries"]] == [(workflow.pk, "welcome once")]
    assert [(t["to_stage"], t["reason"]) for t in data["stage_transitions"]] == [("active", "first order")]
    assert data["suppressions"] == []
