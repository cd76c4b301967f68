"""Headless Chromium: an agent signs in, opens a case, uses a suggested reply and resolves it."""

from __future__ import annotations

import shutil

import pytest

from agents.models import Case
from tests.agents.conftest import open_case
from tests.agents.factories import AgentFactory, ReplyTemplateFactory, TeamFactory
from tests.factories import CustomerFactory

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs Debian's chromium and chromium-driver"),
]


from tests.browser import browser  # noqa: E402,F401  (the shared fixture: fails on CSP violations)


def test_agent_opens_a_case_uses_a_suggested_reply_and_resolves_it(live_server, browser):
    from channels_app.models import Channel, Delivery
    from journeys.models import Event
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def wait_text(element_id: str, text: str):
        # The page replaces the element when it refreshes; Chromium may then answer the check with
        # "Node with given id does not belong to the document" (a WebDriverException, not a
        # stale-element one): look again, as a person would (CI of 94e47b1, once).
        WebDriverWait(browser, 10, ignored_exceptions=(WebDriverException,)).until(
            ec.text_to_be_present_in_element((By.ID, element_id), text))

    Channel.objects.create(name="email", kind="email")
    agent = AgentFactory(team=TeamFactory(categories=["billing"]), skills={"billing": 4}, user__username="alice")
    customer = CustomerFactory(email="ada@example.com", traits={"first_name": "Ada", "plan": "pro", "ltv": 820})
    ReplyTemplateFactory(name="Refund started", category="billing", intent="refund",
                         body="Hi {{ profile.first_name }}, I've started your refund.")
    case = open_case(customer=customer, intent="refund", text="I was charged twice, I want a refund")
    assert Case.objects.get(pk=case.pk).assigned_agent == agent

    browser.get(f"{live_server.url}/agents/")
    browser.find_element(By.ID, "id_username").send_keys("alice")
    browser.find_element(By.ID, "id_password").send_keys("pw")
    browser.find_element(By.ID, "sign-in").click()

    browser.find_element(By.LINK_TEXT, f"#{case.pk}").click()
    assert "I was charged twice" in browser.find_element(By.ID, "case-title").text
    assert "pro" in browser.find_element(By.ID, "facts").text

    suggestion = browser.find_element(By.CSS_SELECTOR, '.suggestion[data-name="Refund started"]')
    suggestion.find_element(By.CLASS_NAME, "use-suggestion").click()
    box = browser.find_element(By.ID, "reply-body")
    assert box.get_attribute("value") == "Hi Ada, I've started your refund."
    browser.find_element(By.ID, "send-reply").click()

    wait_text("timeline", "Hi Ada, I've started your refund.")
    assert "Reply sent." in browser.find_element(By.CSS_SELECTOR, "[role=status]").text

    Select(browser.find_element(By.ID, "id_code")).select_by_value("refunded")
    browser.find_element(By.ID, "resolve").click()

    wait_text("case-status", "Resolved")
    assert "Case resolved." in browser.find_element(By.CSS_SELECTOR, "[role=status]").text
    delivery = Delivery.objects.get()
    assert (delivery.to, delivery.body, delivery.status) == ("ada@example.com", "Hi Ada, I've started your refund.", "sent")
    case.refresh_from_db()
    assert (case.status, case.resolution_code) == ("resolved", "refunded") and case.first_response_at
    assert Event.objects.get(name="Case Resolved").properties["case_id"] == case.pk
