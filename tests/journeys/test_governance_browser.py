"""In headless Chromium: an editor changes a draft and proposes it; an approver reviews the diff and publishes."""

from __future__ import annotations

import re
import shutil

import pytest
from django.contrib.auth.models import Group

from journeys.models import BusinessUnit, ChangeRequest, Workflow, WorkflowVersion
from journeys.services.governance import ROLE_APPROVERS, business_unit_grant_editor, roles_setup
from journeys.services.workflows import version_build, version_new_draft, version_publish, workflow_create
from tests.factories import UserFactory
from tests.journeys.test_governance_fixtures import SIGNUP

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMEDRIVER is None or shutil.which("chromium") is None, reason="needs chromium + chromedriver"),
]


from tests.browser import browser  # noqa: E402,F401  (the shared fixture: fails on CSP violations)


def _login(browser, base, username):
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{base}/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    _wait_for(browser, "/admin/logout/")


def _wait_for(browser, text: str) -> str:
    """Wait until the new page shows `text` (a click does not wait for the next page)."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, 30).until(lambda b: text in b.page_source)
    except Exception:
        errors = re.findall(r'(?:errorlist|errornote|messagelist|class="error").*?</(?:ul|p|li)>', browser.page_source, re.S)
        raise AssertionError(f"{text!r} not on {browser.current_url}: {errors[:5]}") from None
    return browser.page_source


def _click(browser, by, value, then: str) -> str:
    browser.find_element(by, value).click()
    return _wait_for(browser, then)


def test_editor_proposes_and_approver_reviews_the_diff_and_publishes(live_server, browser):
    from selenium.webdriver.common.by import By

    roles_setup()
    unit = BusinessUnit.objects.create(name="Retention", slug="retention")
    editor = UserFactory(username="edna", is_staff=True)
    approver = UserFactory(username="arno", is_staff=True)
    approver.groups.add(Group.objects.get(name=ROLE_APPROVERS))
    business_unit_grant_editor(unit=unit, user=editor)
    workflow = workflow_create(name="Signup", business_unit=unit)
    v1 = version_publish(version=version_build(workflow=workflow, definition=SIGNUP), reason="first")
    draft = version_new_draft(version=v1)
    base = live_server.url

    # the editor opens the 'check' step from the version page (its rule is shown, not editable there)
    # and changes the rule in the condition's form, saying why
    _login(browser, base, "edna")
    browser.get(f"{base}/admin/journeys/workflowversion/{draft.pk}/change/")
    assert not browser.find_elements(By.CSS_SELECTOR, "textarea[name$='-config']")
    link = f"a.step-form-link[href$='/journeys/step/{draft.steps.get(key='check').pk}/change/']"
    row = browser.find_element(By.CSS_SELECTOR, link).find_element(By.XPATH, "ancestor::tr")
    assert "Rule: profile.plan == 'pro'" in row.text
    _click(browser, By.CSS_SELECTOR, link, 'id="step-form"')
    rule = browser.find_element(By.ID, "id_rule")
    rule.clear()
    rule.send_keys("profile.plan == 'business'")
    browser.find_element(By.ID, "id_change_reason").send_keys("business customers are the VIPs now")
    _click(browser, By.ID, "save-step", "Step check (condition) saved")

    # ... and proposes it
    _click(browser, By.ID, "propose-link", "changed step <b>check</b>")
    browser.find_element(By.NAME, "summary").send_keys("Treat business plans as VIP")
    _click(browser, By.NAME, "_propose", "Proposed for review")
    request = ChangeRequest.objects.get(version=draft)
    assert request.status == "open" and request.proposed_by == editor
    assert "approve-button" not in browser.page_source  # the editor cannot approve

    # the approver finds it on the dashboard, reviews the diff, approves and publishes
    _login(browser, base, "arno")
    browser.get(f"{base}/admin/journeys/auditreport/dashboard/")
    page = _click(browser, By.PARTIAL_LINK_TEXT, "CR #", "What changes")
    assert "changed step <b>check</b>" in page
    assert "profile.plan == 'business'" in page.replace("&#x27;", "'").replace("&#39;", "'")
    assert "Treat business plans as VIP" in page
    browser.find_element(By.ID, "id_comment").send_keys("checked the dry run")
    _click(browser, By.ID, "approve-button", "Approve: done")
    browser.find_element(By.ID, "id_comment").send_keys("ship it")
    _click(browser, By.ID, "publish-button", "Publish: done")
    assert browser.find_element(By.ID, "version-stage").text == "live"

    draft.refresh_from_db()
    assert draft.state == "live" and Workflow.objects.get(pk=workflow.pk).live_version_id == draft.pk
    assert WorkflowVersion.objects.get(pk=v1.pk).state == "retired"
