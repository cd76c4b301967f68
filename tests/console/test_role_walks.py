"""Headless Chromium walks the main path of each role:

- ops builds a workflow with the step forms (the rule editor shows an error, then the fix; the
  template preview renders), proposes it, an approver approves, ops publishes;
- an editor changes a step of their unit's workflow and proposes it; an approver reviews the
  diff and publishes;
- ops imports customers as a background job and watches its progress; an agent resolves a case;
  an analyst reads an experiment report.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse
from django.utils import timezone

from journeys.models import ChangeRequest, Customer, Job, Source, Workflow
from journeys.services.workflows import version_new_draft
from tests.browser import browser, click, login, needs_chromium, only_local_resources, shot, wait_for  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def _by():
    from selenium.webdriver.common.by import By

    return By


def _select(browser, element_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(_by().ID, element_id)).select_by_value(value)


def _wait(browser, condition, timeout: float = 15):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _add_step(browser, kind: str) -> None:
    By = _by()
    click(browser, By.ID, "add-step-link", "choose its kind")
    browser.find_element(By.ID, f"kind-{kind}").click()
    click(browser, By.ID, "kind-continue", 'id="step-form"')


def test_ops_builds_with_the_step_forms_and_publishes_after_review(demo, live_server, browser, shot):
    By = _by()
    base = live_server.url
    login(browser, base, "ops")

    # a new workflow of the Retention unit, and its first version
    browser.get(f"{base}{reverse('admin:journeys_workflow_add')}")
    browser.find_element(By.ID, "id_name").send_keys("Big basket")
    _select(browser, "id_business_unit", str(Workflow.objects.get(name="Cart abandonment").business_unit_id))
    browser.find_element(By.ID, "id_change_reason").send_keys("new journey for large baskets")
    click(browser, By.NAME, "_save", "was added successfully")
    workflow = Workflow.objects.get(name="Big basket")
    browser.get(f"{base}{reverse('admin:journeys_workflowversion_add')}")
    _select(browser, "id_workflow", str(workflow.pk))
    browser.find_element(By.ID, "id_number").send_keys("1")
    browser.find_element(By.ID, "id_trigger_event").send_keys("Checkout Started")
    browser.find_element(By.ID, "id_change_reason").send_keys("first version")
    click(browser, By.NAME, "_continue", "was added successfully")

    # a condition: the rule editor marks the error as it is typed, then accepts the fix
    _add_step(browser, "condition")
    browser.find_element(By.ID, "id_key").send_keys("big")
    rule = browser.find_element(By.ID, "id_rule")
    rule.send_keys("event.properties.total >= and profile.ltv > 0")
    feedback = browser.find_element(By.ID, "id_rule-feedback")
    _wait(browser, lambda b: "column" in feedback.text)
    assert "rule-error" in feedback.get_attribute("class")
    assert feedback.find_element(By.TAG_NAME, "mark").text == "a"  # the 'and' where a value belongs
    assert "column 27" in feedback.text
    browser.find_element(By.ID, "id_change_reason").send_keys("only big baskets")
    shot("step-form-rule-error.png", max_height=900)
    rule.clear()
    rule.send_keys("event.properties.total >= 100 and profile.ltvv > 0")
    _wait(browser, lambda b: "valid rule" in feedback.text)
    assert "profile.ltvv: no customer has this attribute" in feedback.text  # a warning, not an error
    rule.clear()
    rule.send_keys("event.properties.total >= 100")
    _wait(browser, lambda b: "valid rule" in feedback.text and "⚠" not in feedback.text)
    click(browser, By.ID, "save-step", "Step big (condition) saved")

    # a message on the 'yes' branch, its template previewed in place
    _add_step(browser, "send_message")
    browser.find_element(By.ID, "id_key").send_keys("mail")
    _select(browser, "id_after", "big:yes")
    _select(browser, "id_channel", "email")
    _select(browser, "id_template", "cart-reminder")
    browser.find_element(By.ID, "id_preview_customer").send_keys("u-ada")
    browser.execute_script("document.body.dataset.samePage = 'yes'")
    browser.find_element(By.ID, "preview-button").click()
    subject = _wait(browser, lambda b: b.find_elements(By.ID, "preview-subject"))[0]
    assert subject.text == "You left something in your cart, Ada"
    assert browser.execute_script("return document.body.dataset.samePage") == "yes"  # no reload
    browser.find_element(By.ID, "id_change_reason").send_keys("tell them")
    only_local_resources(browser, base)
    shot("template-preview.png", max_height=1300)
    click(browser, By.ID, "save-step", "Step mail (send_message) saved")

    # a delay shows only the fields of the chosen kind of wait
    _add_step(browser, "delay")
    browser.find_element(By.ID, "id_key").send_keys("later")
    _select(browser, "id_after", "mail:next")
    assert browser.find_element(By.ID, "row-until_local_time").is_displayed() is False
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=until_local_time]").click()
    assert browser.find_element(By.ID, "row-duration").is_displayed() is False
    browser.find_element(By.ID, "id_until_local_time").send_keys("09:30")
    browser.find_element(By.ID, "id_change_reason").send_keys("morning")
    click(browser, By.ID, "save-step", "Step later (delay) saved")

    # a computed trait: its value is checked as a rule once 'rule' is chosen
    _add_step(browser, "update_profile")
    browser.find_element(By.ID, "id_key").send_keys("count")
    _select(browser, "id_after", "later:next")
    browser.find_element(By.ID, "id_name_1").send_keys("reminders")
    value = browser.find_element(By.ID, "id_value_1")
    value.send_keys("coalesce(profile.reminders, 0) +")
    _select(browser, "id_as_1", "rule")
    _wait(browser, lambda b: "column 33" in b.find_element(By.ID, "id_value_1-feedback").text)
    value.send_keys(" 1")
    _wait(browser, lambda b: "valid rule" in b.find_element(By.ID, "id_value_1-feedback").text)
    browser.find_element(By.ID, "id_change_reason").send_keys("count reminders")
    click(browser, By.ID, "save-step", "Step count (update_profile) saved")
    version = workflow.versions.get()
    assert version.steps.get(key="later").config == {"until_local_time": "09:30"}
    assert version.steps.get(key="count").config["traits"] == {"reminders": {"rule": "coalesce(profile.reminders, 0) + 1"}}
    assert version.entry_step == "big"
    assert sorted((e.source.key, e.outcome, e.target.key) for e in version.edges.all()) == [
        ("big", "yes", "mail"), ("later", "next", "count"), ("mail", "next", "later")]

    # proposed by ops, approved by an approver, published by ops
    click(browser, By.ID, "propose-link", "Propose")
    browser.find_element(By.NAME, "summary").send_keys("Reminder for baskets over 100")
    click(browser, By.NAME, "_propose", "Proposed for review")
    request = ChangeRequest.objects.get(version=version)
    login(browser, base, "approver")
    browser.get(f"{base}{reverse('admin:journeys_changerequest_change', args=[request.pk])}")
    browser.find_element(By.ID, "id_comment").send_keys("looks right")
    click(browser, By.ID, "approve-button", "Approve: done")
    login(browser, base, "ops")
    browser.get(f"{base}{reverse('admin:journeys_changerequest_change', args=[request.pk])}")
    browser.find_element(By.ID, "id_comment").send_keys("go")
    click(browser, By.ID, "publish-button", "Publish: done")
    workflow.refresh_from_db()
    assert workflow.live_version_id == version.pk


def test_editor_proposes_a_step_change_and_approver_publishes_it(demo, live_server, browser, shot):
    By = _by()
    base = live_server.url
    live = Workflow.objects.get(name="Cart abandonment").live_version
    draft = version_new_draft(version=live)
    login(browser, base, "editor")

    # the editor opens the step from the version page and changes its rule in the form
    browser.get(f"{base}{reverse('admin:journeys_workflowversion_change', args=[draft.pk])}")
    step = draft.steps.get(key="valuable")
    click(browser, By.CSS_SELECTOR, f'a[href="{reverse("admin:journeys_step_change", args=[step.pk])}"]',
          'id="step-form"')
    rule = browser.find_element(By.ID, "id_rule")
    rule.clear()
    rule.send_keys("profile.ltv >= 300")
    _wait(browser, lambda b: "valid rule" in b.find_element(By.ID, "id_rule-feedback").text)
    browser.find_element(By.ID, "id_change_reason").send_keys("more customers get the SMS")
    click(browser, By.ID, "save-step", "Step valuable (condition) saved")
    click(browser, By.ID, "propose-link", "Propose")
    browser.find_element(By.NAME, "summary").send_keys("SMS from an LTV of 300")
    click(browser, By.NAME, "_propose", "Proposed for review")
    request = ChangeRequest.objects.get(version=draft)
    assert request.proposed_by.username == "editor"

    # the approver reviews the diff and publishes
    login(browser, base, "approver")
    browser.get(f"{base}/admin/journeys/auditreport/dashboard/")
    page = click(browser, By.PARTIAL_LINK_TEXT, f"CR #{request.pk}", "What changes")
    assert "profile.ltv &gt;= 300" in page and "SMS from an LTV of 300" in page
    only_local_resources(browser, base)
    shot("review-diff.png", max_height=1600)
    browser.find_element(By.ID, "id_comment").send_keys("fine")
    click(browser, By.ID, "approve-button", "Approve: done")
    browser.find_element(By.ID, "id_comment").send_keys("ship it")
    click(browser, By.ID, "publish-button", "Publish: done")
    assert Workflow.objects.get(name="Cart abandonment").live_version_id == draft.pk


def test_ops_imports_customers_and_watches_the_job(demo, live_server, browser, shot, tmp_path):
    from journeys.models import JobStatus
    from journeys.services.jobs import job_progress, run_job

    By = _by()
    base = live_server.url
    login(browser, base, "ops")

    # the progress bar moves in place while a worker runs a job
    ops = get_user_model().objects.get(username="ops")
    live = Workflow.objects.get(name="Cart abandonment").live_version
    queued = Job.objects.create(kind="replay", params={"version_id": live.pk}, created_by=ops)  # not yet picked up
    browser.get(f"{base}{reverse('admin:journeys_job_change', args=[queued.pk])}")
    browser.execute_script("document.body.dataset.samePage = 'yes'")
    Job.objects.filter(pk=queued.pk).update(status=JobStatus.RUNNING)
    job_progress(job=queued, done=3, total=8, message="event 3 of 8")
    _wait(browser, lambda b: b.find_element(By.ID, "job-percent").text == "37%")
    assert browser.find_element(By.ID, "job-message").text == "event 3 of 8"
    assert browser.execute_script("return document.body.dataset.samePage") == "yes"
    assert browser.find_element(By.ID, "job-progress").get_attribute("value") == "37"
    shot("job-progress.png", max_height=600)
    run_job(queued.pk)  # finished: the page shows the result
    _wait(browser, lambda b: b.find_elements(By.ID, "dry-run-summary"))

    # an import started from the admin: rows checked, bad ones reported by row number
    upload = tmp_path / "people.csv"
    upload.write_text("user_id,email,plan\nu-b1,b1@example.com,pro\n,nobody@example.com,free\nu-b2,b2@example.com,free\n")
    browser.get(f"{base}{reverse('admin:journeys_job_add')}")
    click(browser, By.LINK_TEXT, "Bulk import of customers", 'id="job-form"')
    browser.find_element(By.ID, "id_file").send_keys(str(upload))
    _select(browser, "id_source", str(Source.objects.get(name="demo-web").pk))
    page = click(browser, By.ID, "start-job", 'id="import-summary"')
    assert "<b>2</b> imported" in page and "<b>1</b> rejected" in page
    assert browser.find_element(By.ID, "rejected-rows").text.splitlines()[1] == "3 user_id is required"
    assert Customer.objects.filter(external_id__in=["u-b1", "u-b2"]).count() == 2
    shot("job-result.png", max_height=800)


def test_agent_resolves_a_case_in_the_console(live_server, browser, shot):
    from agents.models import Case
    from tests.agents.conftest import open_case
    from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
    from tests.factories import CustomerFactory

    from channels_app.models import Channel

    By = _by()
    Channel.objects.create(name="email", kind="email")
    AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 4}, user__username="alice")
    ada = CustomerFactory(email="ada@example.com", traits={"first_name": "Ada", "plan": "pro", "ltv": 820})
    ReplyTemplateFactory(name="Refund started", category="billing", intent="refund",
                         body="Hi {{ profile.first_name }}, I've started your refund.")
    case = open_case(customer=ada, intent="refund", text="I was charged twice, I want a refund")

    browser.get(f"{live_server.url}/agents/")
    browser.find_element(By.ID, "id_username").send_keys("alice")
    browser.find_element(By.ID, "id_password").send_keys("pw")
    browser.find_element(By.ID, "sign-in").click()
    click(browser, By.LINK_TEXT, f"#{case.pk}", "case-title")
    browser.find_element(By.CSS_SELECTOR, '.suggestion[data-name="Refund started"] .use-suggestion').click()
    shot("case-console.png", max_height=1200)
    browser.find_element(By.ID, "send-reply").click()
    wait_for(browser, "Reply sent.")
    _select(browser, "id_code", "refunded")
    browser.find_element(By.ID, "resolve").click()
    wait_for(browser, "Case resolved.")
    assert Case.objects.get(pk=case.pk).status == "resolved"


def test_analyst_reads_an_experiment_report(demo, live_server, browser, shot):
    from experiments.services.assignment import assignment_decide
    from tests.experiments.factories import make_customers, make_experiment, make_goal_events

    By = _by()
    start = timezone.now() - timedelta(days=3)
    experiment = make_experiment(goal_event="Order Completed", holdout_share=0.1, now=start)
    decisions = [assignment_decide(experiment=experiment, customer=c, now=start + timedelta(days=i % 3))
                 for i, c in enumerate(make_customers(90))]
    make_goal_events([d.assignment.customer for d in decisions[::4]], name="Order Completed",
                     at=timezone.now() - timedelta(minutes=5))

    report = f"/admin/experiments/experiment/{experiment.pk}/report/"
    login(browser, live_server.url, "analyst", next_url=report)
    wait_for(browser, "Conversion over time per arm")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.exp-chart polyline")) == 3
    assert not browser.find_elements(By.XPATH, "//input[@value='conclude']")  # analysts read, they do not decide
    only_local_resources(browser, live_server.url)
    shot("experiment-report.png", max_height=1800)
