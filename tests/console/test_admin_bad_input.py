"""What an ops person runs into on the step pages and job pages with bad input: ids that are not
ids, pages for versions that cannot change, unknown step kinds, numbers and durations nothing can
hold, and uploads the import cannot read. Each answer says what to do, none is a server error."""

from __future__ import annotations

import html
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from journeys.models import Job, Source, Step, Workflow, WorkflowVersion
from journeys.services.workflows import version_new_draft

pytestmark = pytest.mark.django_db

STEP_ADD = reverse("admin:journeys_step_add")


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def live(demo):
    return Workflow.objects.get(name="Cart abandonment").live_version


@pytest.fixture
def draft(live):
    return version_new_draft(version=live)


# --------------------------------------------------------------------------- ids in URLs


@pytest.mark.parametrize("name", ["step", "job", "changerequest", "auditreport"])
def test_an_id_that_is_not_a_number_is_a_page_not_found(ops, name):
    assert ops.get(reverse(f"admin:journeys_{name}_change", args=["abc"])).status_code == 404


def test_a_version_id_that_is_not_a_number_is_answered_like_a_missing_version(ops):
    response = ops.get(reverse("admin:journeys_workflowversion_change", args=["abc"]), follow=True)
    assert response.status_code == 200
    assert any("doesn’t exist" in m for m in _messages(response))


@pytest.mark.parametrize(("query", "message"), [
    ("", "Steps belong to a workflow version"),
    ("?version=abc", "No workflow version with id 'abc'"),
    ("?version=99999", "No workflow version with id '99999'"),
])
def test_adding_a_step_without_a_known_version_leads_to_the_versions(ops, query, message):
    response = ops.get(STEP_ADD + query)

    assert response.status_code == 302 and response["Location"] == reverse("admin:journeys_workflowversion_changelist")
    assert any(message in m for m in _messages(ops.get(response["Location"])))


# --------------------------------------------------------------------------- versions that cannot change


def test_adding_a_step_to_a_live_version_says_to_make_a_draft(ops, live):
    response = ops.get(f"{STEP_ADD}?version={live.pk}", follow=True)

    assert response.redirect_chain[-1][0] == reverse("admin:journeys_workflowversion_change", args=[live.pk])
    assert any("cannot change here (live); create a new draft" in m for m in _messages(response))


def test_choosing_another_kind_for_a_live_step_says_why_not(ops, live):
    step = live.steps.get(key="valuable")
    url = reverse("admin:journeys_step_change", args=[step.pk])

    response = ops.get(f"{url}?pick=1", follow=True)

    assert response.redirect_chain == [(url, 302)] and response.status_code == 200
    assert any("create a new draft" in m for m in _messages(response))
    assert 'id="step-locked"' in response.content.decode()
    assert ops.post(f"{url}?kind=goal", {"key": "valuable", "goal": "x", "change_reason": "x"}).status_code == 403


def test_someone_who_may_only_look_is_told_so(client, live):
    client.login(username="analyst", password="analyst")
    step = live.steps.get(key="valuable")
    page = client.get(reverse("admin:journeys_step_change", args=[step.pk]))
    assert page.status_code == 200
    assert "You may look at Cart abandonment but not edit it." in page.content.decode()
    assert "create a new draft" not in page.content.decode()


def test_a_template_preview_still_works_on_a_live_version(ops, live):
    step = live.steps.get(key="email")
    response = ops.post(reverse("admin:journeys_step_change", args=[step.pk]),
                        {"key": "email", "channel": "email", "template": "cart-reminder", "_preview": "Preview"})
    assert response.status_code == 200 and response.context["preview"] is not None


# --------------------------------------------------------------------------- unknown step kinds


def test_an_unknown_kind_on_a_step_page_goes_back_to_that_step(ops, draft):
    step = draft.steps.get(key="valuable")
    url = reverse("admin:journeys_step_change", args=[step.pk])

    response = ops.get(f"{url}?kind=fax", follow=True)

    assert response.redirect_chain == [(url, 302)]
    assert response.context["kind"] == "condition"
    assert any("unknown step kind 'fax'; known kinds: condition" in m for m in _messages(response))


def test_a_stored_kind_nobody_registers_any_more_asks_for_a_kind_instead_of_looping(ops, draft):
    step = Step.objects.create(version=draft, key="legacy", kind="fax", config={"number": "+4930123"})
    url = reverse("admin:journeys_step_change", args=[step.pk])

    response = ops.get(url, follow=True)

    assert response.redirect_chain == [(f"{url}?pick=1", 302)]
    assert 'id="kind-picker"' in response.content.decode()
    assert any("Step legacy: kind: unknown step kind 'fax'" in m for m in _messages(response))


def test_an_unknown_kind_when_adding_goes_to_the_kind_picker(ops, draft):
    response = ops.get(f"{STEP_ADD}?version={draft.pk}&kind=fax", follow=True)
    assert response.redirect_chain == [(f"{STEP_ADD}?version={draft.pk}", 302)]
    assert 'id="kind-picker"' in response.content.decode()


# --------------------------------------------------------------------------- values nothing can hold


def _post_step(client, version, kind, data):
    return client.post(f"{STEP_ADD}?version={version.pk}&kind={kind}",
                       {"change_reason": "probe", "_save": "Save", **data})


@pytest.mark.parametrize(("kind", "data", "field", "message"), [
    ("delay", {"mode": "duration", "duration": "99999999999999999999"}, "duration", "is too long: at most 3650d"),
    ("delay", {"mode": "duration", "duration": "99999999999999999999d"}, "duration", "is too long"),
    ("delay", {"mode": "until_attribute", "until_attribute": "renewal_date", "offset": "-4000d"}, "offset",
     "'-4000d' is too long"),
    ("wait_for_event", {"event": "Order Completed", "timeout": "600w"}, "timeout", "is too long"),
    ("wait_for_event", {"event": "Order Completed", "timeout": "soon"}, "timeout",
     "'soon' is not a duration. Enter a duration like 30m, 2h or 7d"),
    ("wait_for_event", {"event": "Order Completed", "timeout": "-1h"}, "timeout", "'-1h' is negative"),
    ("delay", {"mode": "until_attribute", "until_attribute": "renewal_date", "offset": "-3 fortnights"}, "offset",
     "Enter a duration like 30m, 2h or 7d (-3d for before)"),
    ("update_profile", {"set_1": "traits", "name_1": "score", "as_1": "number", "value_1": "nan"}, "value_1",
     "'nan' is not a finite number"),
    ("update_profile", {"set_1": "traits", "name_1": "score", "as_1": "number", "value_1": "1e999"}, "value_1",
     "is not a finite number"),
    ("update_profile", {"set_1": "traits", "name_1": "score", "as_1": "json", "value_1": '{"a": NaN}'}, "value_1",
     "NaN is not a number JSON can store"),
    ("update_profile", {"set_1": "traits", "name_1": "score", "as_1": "json", "value_1": "[1e999]"}, "value_1",
     "too large a number"),
])
def test_values_too_large_for_a_wait_or_the_database_are_refused_at_their_field(ops, draft, kind, data, field,
                                                                                 message):
    before = draft.steps.count()

    response = _post_step(ops, draft, kind, {"key": "probe", **data})

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert draft.steps.count() == before


# --------------------------------------------------------------------------- uploads


def _upload(client, name: str, content: bytes):
    source = Source.objects.get(name="demo-web")
    return client.post(f"{reverse('admin:journeys_job_add')}?kind=import_customers",
                       {"file": SimpleUploadedFile(name, content), "source": source.pk})


@pytest.mark.parametrize(("name", "content", "message"), [
    ("people.xlsx", b"PK\x03\x04" + b"\x00" * 30, "people.xlsx is a ZIP archive (an Excel .xlsx"),
    ("people.csv", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "people.csv is a PNG image, not CSV or JSON text"),
    ("scan.pdf", b"%PDF-1.4\n", "scan.pdf is a PDF document"),
    ("people.tsv", b"user_id\tplan\nu-1\tpro\n", "people.tsv: choose a .csv, .json or .jsonl file (not .tsv)"),
    ("latin.csv", "user_id,name\nu-2,J\xf6rg\n".encode("latin-1"),
     "latin.csv is not UTF-8 text (byte 0xf6 on line 2): save it as UTF-8"),
    ("ids.csv", b"u-1\n", "ids.csv has a header row (u-1) and no rows below it"),
    ("people.json", b'[{"user_id": "a",}]', "people.json is not valid JSON: Expecting property name"),
    ("one.json", b'{\n  "user_id": "a"\n}\n', "one.json holds a single JSON object over several lines"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json nests lists or objects too deeply (at [0][0]"),
    ("blank.csv", b"  \n\n", "the uploaded file is empty: choose a CSV or JSON file with rows"),
    ("empty.csv", b"", "the uploaded file is empty: choose a CSV or JSON file with rows"),
])
def test_uploads_the_import_cannot_read_are_refused_saying_what_to_do(ops, name, content, message):
    response = _upload(ops, name, content)

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors["file"]), response.context["form"].errors
    assert not Job.objects.exists()


@pytest.mark.parametrize(("name", "content"), [
    ("people.csv", b"\xef\xbb\xbfuser_id,plan\nu-1,pro\n"),  # Excel's UTF-8 with a byte order mark
    ("people.jsonl", b'{"user_id": "u-1"}\n{"user_id": "u-2"}\n'),
    ("people.json", b'[{"user_id": "u-1"}]'),
    ("people", b"user_id\nu-1\n"),  # no extension: read by its content
])
def test_readable_uploads_still_start_a_job(ops, name, content, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = _upload(ops, name, content)
    job = Job.objects.get()
    assert response.status_code == 302 and job.status == "succeeded" and job.result["imported"] >= 1


def test_an_unknown_job_kind_is_named(ops):
    response = ops.get(f"{reverse('admin:journeys_job_add')}?kind=fax")
    assert response.status_code == 200
    assert "'fax' is not a job you can start here" in " ".join(_messages(response))


def test_the_version_page_is_not_broken_by_a_missing_version(ops):
    assert not WorkflowVersion.objects.filter(pk=99999).exists()
    assert ops.get(reverse("admin:journeys_workflowversion_change", args=[99999])).status_code == 302


# --------------------------------------------------------------------------- dashboard, actions, import, dry run


@pytest.mark.parametrize(("days", "message"), [("abc", "days: write a whole number of days, e.g. 14"),
                                               ("-5", "days: Ensure this value is greater than or equal to 1")])
def test_the_audit_refuses_a_bad_number_of_days(ops, days, message):
    from journeys.models import AuditReport

    response = ops.post(reverse("admin:journeys_ops_dashboard"), {"form": "audit", "days": days})

    assert response.status_code == 200
    assert message in " ".join(_messages(response)) and not AuditReport.objects.exists()
    ops.post(reverse("admin:journeys_ops_dashboard"), {"form": "audit", "days": "7"})
    assert AuditReport.objects.get().days == 7


def _action(client, action, versions, **extra):
    return client.post(reverse("admin:journeys_workflowversion_changelist"),
                       {"action": action, "_selected_action": [v.pk for v in versions], **extra}, follow=True)


@pytest.mark.parametrize(("percent", "message"), [
    ("abc", "Canary %: 'abc' is not a share of new entries; write a whole number from 1 to 99"),
    ("150", "'150' is not a share of new entries"),
    ("", "Canary %: say which share of new entries (1 to 99) the canary takes"),
])
def test_a_canary_with_a_bad_share_names_the_share_instead_of_losing_the_action(ops, draft, percent, message):
    response = _action(ops, "canary", [draft], reason="try it", percent=percent)

    shown = " ".join(_messages(response))
    assert message in shown and "No action selected" not in shown
    assert Workflow.objects.get(pk=draft.workflow_id).canary_version_id is None


def test_export_asks_for_one_version_at_a_time(ops, live, draft):
    response = _action(ops, "export_json", [live, draft])
    assert response["Content-Type"].startswith("text/html")
    assert "Export one version at a time (2 selected)." in _messages(response)
    single = _action(ops, "export_json", [live])
    assert single["Content-Type"] == "application/json"


@pytest.mark.parametrize(("name", "content", "message"), [
    ("flow.png", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), "flow.png is not a workflow export (not JSON text)"),
    ("flow.json", b"{oops", "flow.json is not valid JSON: Expecting property name"),
])
def test_importing_a_file_that_is_not_an_export_names_the_file(ops, name, content, message):
    response = ops.post(reverse("admin:journeys_workflow_import"), {"file": SimpleUploadedFile(name, content)})

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors["file"])
    assert response.content.decode().count(message.split(" (")[0]) == 1  # said once, next to the file


@pytest.mark.parametrize(("event", "message"), [
    ("[1]", "must be a JSON object, e.g."),
    ('{"event": 5}', "give the event's name as text under \"event\""),
    ('{"properties": {"total": 80}}', "give the event's name as text"),
    ('{"event": "Checkout Started", "properties": "80"}', '"properties" must be a JSON object'),
])
def test_a_dry_run_event_that_cannot_be_replayed_says_what_to_fix(ops, live, event, message):
    url = reverse("admin:journeys_workflowversion_dry_run", args=[live.pk])

    response = ops.post(url, {"customer": "nobody", "event": event})

    errors = response.context["form"].errors
    assert message in " ".join(errors["event"]), errors
    assert "no customer with id or email 'nobody'" in " ".join(errors["customer"])  # both said at once
    assert response.context["report"] is None



def test_an_upload_over_the_size_limit_is_refused_before_it_is_read(ops, monkeypatch):
    from journeys.services import jobs

    monkeypatch.setattr(jobs, "MAX_INPUT_BYTES", 1024)
    response = _upload(ops, "people.csv", b"user_id,plan\n" + b"u-1,pro\n" * 200)

    assert response.status_code == 200
    assert "people.csv is larger than" in " ".join(response.context["form"].errors["file"])
    assert not Job.objects.exists()


# --------------------------------------------------------------------------- JSON people type: refused at its field
# Python's json reads NaN, Infinity and 1e999; PostgreSQL's jsonb refuses them (and NUL, and lone
# surrogates), so a stored one is a 500 there and a shown one is not JSON.


def _export_with(live, **config) -> bytes:
    from journeys.services.workflows import workflow_export

    data = workflow_export(version=live)
    data["version"]["steps"][0]["config"].update(config)
    return json.dumps(data).encode()


@pytest.mark.parametrize(("config", "message"), [
    ({"total": float("nan")}, "is not a finite number"),
    ({"total": float("inf")}, "is not a finite number"),
    ({"note": "a\x00b"}, "contains a NUL character"),
])
def test_importing_an_export_with_what_no_database_stores_names_where_and_stores_nothing(ops, live, config, message):
    # given an export edited by hand: a step's config holds NaN, Infinity or a NUL character
    before = WorkflowVersion.objects.count()
    upload = SimpleUploadedFile("flow.json", _export_with(live, **config))

    # when it is imported through the admin
    response = ops.post(reverse("admin:journeys_workflow_import"), {"file": upload})

    # then the file is refused, naming the step's field, and no version was made
    assert response.status_code == 200
    errors = " ".join(response.context["form"].errors["file"])
    assert f"flow.json, at version.steps[0].config.{next(iter(config))}, {message}" in errors, errors
    assert WorkflowVersion.objects.count() == before


@pytest.mark.parametrize(("event", "message"), [
    ('{"event": "Checkout Started", "properties": {"total": NaN}}', "event.properties.total: is not a finite number"),
    ('{"event": "Checkout Started", "properties": {"total": 1e999}}', "event.properties.total: is not a finite number"),
    ('{"event": "Checkout Started", "properties": {"note": "a\\u0000b"}}', "event.properties.note: contains a NUL"),
])
def test_a_dry_run_event_that_is_not_json_a_database_stores_is_refused_at_its_field(ops, live, event, message):
    # given a customer the dry run can use and an event with NaN, 1e999 or a NUL character
    from journeys.models import Identity

    customer = Identity.objects.values_list("value", flat=True).first()
    url = reverse("admin:journeys_workflowversion_dry_run", args=[live.pk])

    # when it is dry-run
    response = ops.post(url, {"customer": customer, "event": event})

    # then the event field names where, and nothing ran

    errors = response.context["form"].errors
    assert message in " ".join(errors["event"]), errors
    assert response.context["report"] is None


def test_the_dry_run_command_refuses_nan_naming_the_field(live):
    from django.core.management import CommandError, call_command

    from journeys.models import Customer

    with pytest.raises(CommandError, match=r"--event\.properties\.total: is not a finite number"):
        call_command("dry_run", str(live.pk), "--customer", f"#{Customer.objects.order_by('pk').first().pk}",
                     "--event", '{"event": "Checkout Started", "properties": {"total": NaN}}')


# --------------------------------------------------------------------------- trigger settings that are not an object


@pytest.mark.parametrize("typed", ["[1, 2]", "5", '"str"', "null"])
def test_trigger_settings_that_are_not_an_object_are_refused_at_their_field(ops, draft, typed):
    # given a draft's version page as the browser would post it back
    from tests.journeys.test_governance_fixtures import admin_form_data

    url = reverse("admin:journeys_workflowversion_change", args=[draft.pk])
    before = WorkflowVersion.objects.get(pk=draft.pk).trigger_config

    # when its trigger settings are typed as a list, a number, a string or null
    response = ops.post(url, admin_form_data(ops.get(url), trigger_config=typed, change_reason="try"))

    # then the field says it must be a JSON object, and nothing changed
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "must be a JSON object of the trigger's settings" in " ".join(errors["trigger_config"]), errors
    assert WorkflowVersion.objects.get(pk=draft.pk).trigger_config == before


@pytest.mark.parametrize(("stored", "problem"), [
    ([1, 2], "trigger: must be a JSON object of the trigger's settings"),
    (5, "trigger: must be a JSON object of the trigger's settings"),
    ("str", "trigger: must be a JSON object of the trigger's settings"),
    ({"filter": 5}, "trigger: filter: a rule is written as text"),
    ({"filter": "1 +"}, "trigger: filter: unexpected end of rule"),
])
def test_a_stored_trigger_config_nothing_can_read_is_reported_not_a_server_error(ops, draft, stored, problem):
    # given a draft whose trigger settings were written around every form (shell, old data)
    from journeys.models import Identity

    WorkflowVersion.objects.filter(pk=draft.pk).update(trigger_config=stored)
    customer = Identity.objects.values_list("value", flat=True).first()

    # when its pages are opened, it is dry-run and it is proposed
    page = ops.get(reverse("admin:journeys_workflowversion_change", args=[draft.pk]))
    propose_url = reverse("admin:journeys_workflowversion_propose", args=[draft.pk])
    propose_page = ops.get(propose_url)
    proposed = ops.post(propose_url, {"summary": "try it"})
    graph = ops.get(reverse("console:version_graph", args=[draft.pk]))
    dry_run = ops.post(reverse("admin:journeys_workflowversion_dry_run", args=[draft.pk]),
                       {"customer": customer, "event": '{"event": "Checkout Started"}'})

    # then each page opens and the problem is named; the draft is not proposed
    for response in (page, propose_page, proposed, graph, dry_run):
        assert response.status_code == 200
    for response in (page, propose_page, proposed):
        assert problem in html.unescape(response.content.decode())
    assert WorkflowVersion.objects.get(pk=draft.pk).state == "draft"


# --------------------------------------------------------------------------- exports edited by hand


def _edited_export(live, change) -> bytes:
    from journeys.services.workflows import workflow_export

    data = workflow_export(version=live)
    change(data)
    return json.dumps(data).encode()


def _set(part, key, value):
    return lambda data: (data[part] if part else data).__setitem__(key, value)


def _set_step(key, value):
    return lambda data: data["version"]["steps"][0].__setitem__(key, value)


@pytest.mark.parametrize(("change", "message"), [
    (_set("version", "trigger_config", [1, 2]), "trigger_config: must be a JSON object of the trigger's settings"),
    (_set("version", "reentry_cooldown_s", "abc"), "reentry_cooldown_s: must be an integer, not 'abc'"),
    (_set("version", "reentry_cooldown_s", -5), "reentry_cooldown_s: must be an integer from 0 to"),
    (_set_step("x", "abc"), "steps[0].x: must be an integer, not 'abc'"),
    (_set_step("y", 1.5), "steps[0].y: must be an integer, not 1.5"),
    (_set_step("config", "abc"), "steps[0].config: must be a JSON object (the step's settings)"),
    (_set_step("key", "no spaces"), "steps[0].key: 'no spaces' is not a step key"),
    (_set_step("kind", "fax"), "steps[0].kind: unknown step kind 'fax'"),
    (_set(None, "version", [1]), "version: must be a JSON object (the version's settings, steps and edges)"),
    (_set(None, "workflow", [1]), "workflow: must be a JSON object (name, description, business_unit)"),
    (_set("version", "allow_concurrent_runs", "false"), "allow_concurrent_runs: must be true or false, not 'false'"),
    (_set("version", "notes", {"a": 1}), "notes: must be text, not dict"),
    (_set("version", "goal_event", "x" * 1000), "goal_event: must be at most 255 characters (it has 1000)"),
    (_set("version", "steps", {"key": "a"}), "steps: must be a JSON list (of step objects)"),
    (lambda data: data["version"]["edges"][0].__setitem__("to", "nowhere"), "edges[0].to: 'nowhere' is not a step"),
    (lambda data: data["version"]["edges"][0].__setitem__("outcome", 5), "edges[0].outcome: must be text, not int"),
])
def test_an_export_edited_into_what_no_field_holds_is_refused_naming_its_path(ops, live, change, message):
    # given an export edited by hand: a value of the wrong type or size somewhere in it
    versions, workflows = WorkflowVersion.objects.count(), Workflow.objects.count()
    upload = SimpleUploadedFile("flow.json", _edited_export(live, change))

    # when it is imported through the admin under a new name
    response = ops.post(reverse("admin:journeys_workflow_import"), {"file": upload, "name": "Hand edited"})

    # then the import says where and what, and nothing was stored
    assert response.status_code == 200
    errors = " | ".join(response.context["form"].non_field_errors())
    assert message in errors, errors
    assert (WorkflowVersion.objects.count(), Workflow.objects.count()) == (versions, workflows)


def test_an_unedited_export_still_imports_value_for_value(ops, live):
    from journeys.services.workflows import workflow_export

    upload = SimpleUploadedFile("flow.json", _edited_export(live, lambda data: None))

    response = ops.post(reverse("admin:journeys_workflow_import"), {"file": upload, "name": "Copy"})

    assert response.status_code == 302
    copy = Workflow.objects.get(name="Copy").versions.get()
    assert workflow_export(version=copy)["version"] == workflow_export(version=live)["version"]
