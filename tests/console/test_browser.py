"""Headless Chromium walks the console: ops watches the dashboard refresh, reads a workflow's
graph (and compares two versions), and opens a Customer 360. Screenshots: see tests/browser.py."""

from __future__ import annotations

import pytest
from django.urls import reverse

from journeys.models import Customer, Step, Workflow
from journeys.services.workflows import version_new_draft

from tests.browser import browser, login, needs_chromium, only_local_resources, shot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]


def _login(browser, base: str) -> None:
    login(browser, base, "admin", "admin")


def test_ops_watches_the_dashboard_refresh(traffic, send, live_server, browser, shot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = live_server.url
    _login(browser, base)

    # the admin home loads the live panels by itself
    assert "/admin/" in browser.current_url
    live = str(Workflow.objects.filter(live_version__isnull=False, status="active").count())
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "m-live-workflows").text == live)
    only_local_resources(browser, base)
    shot("admin-home.png")

    # the full dashboard, refreshing every second
    browser.get(f"{base}{reverse('console:dashboard')}?refresh=1")
    before = int(browser.find_element(By.ID, "m-events-last-minute").text)
    assert browser.find_element(By.ID, "m-runs-waiting").text == "2"
    assert browser.find_element(By.ID, "m-open-cases").text == "1"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    only_local_resources(browser, base)
    shot("dashboard.png")

    # new traffic arrives: the page updates in place, without a reload
    browser.execute_script("document.body.dataset.sameDocument = 'yes'")
    send(userId="u-late", event="Signed Up")
    from selenium.common.exceptions import StaleElementReferenceException

    # (the panels are replaced on each refresh: a figure read as it is swapped is read again)
    WebDriverWait(browser, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda b: int(b.find_element(By.ID, "m-events-last-minute").text) > before
        and b.find_element(By.ID, "m-runs-waiting").text == "3")
    assert browser.execute_script("return document.body.dataset.sameDocument") == "yes"
    assert int(browser.find_element(By.ID, "dashboard-refreshes").text) >= 1
    assert browser.find_element(By.ID, "dashboard-status").text.startswith("updated ")


def test_ops_reads_the_graph_of_a_demo_workflow_and_compares_versions(traffic, live_server, browser, shot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base = live_server.url
    _login(browser, base)
    draft = version_new_draft(version=traffic)
    Step.objects.filter(version=draft, key="nudge").update(config={"traits": {"nudged": "twice"}})
    Step.objects.create(version=draft, key="bye", kind="exit")

    # a demo workflow: cart abandonment, drawn with its labelled branches
    cart = Workflow.objects.get(name="Cart abandonment").live_version
    browser.get(f"{base}{reverse('console:version_graph', args=[cart.pk])}")
    keys = {n.get_attribute("data-key") for n in browser.find_elements(By.CSS_SELECTOR, "svg.workflow-graph g.node")}
    assert keys == {"email", "wait", "valuable", "sms", "bought"}
    labels = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.workflow-graph .edge-label")}
    assert labels == {"next", "timeout", "event", "yes"}
    only_local_resources(browser, base)
    shot("workflow-graph.png")

    # from the dashboard's live workflow list to the graph of Onboarding's live version
    browser.get(f"{base}{reverse('console:dashboard')}")
    browser.find_element(By.CSS_SELECTOR, f'a[href="{reverse("console:version_graph", args=[traffic.pk])}"]').click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.CSS_SELECTOR, "svg.workflow-graph"))
    nodes = {n.get_attribute("data-key"): n for n in browser.find_elements(By.CSS_SELECTOR, "svg.workflow-graph g.node")}
    assert set(nodes) == {"welcome", "wait", "yay", "nudge"}
    assert nodes["wait"].get_attribute("data-waiting") == "2"
    assert "in 3 · wait 2 · conv 1 · err 0" in nodes["wait"].text
    labels = {e.text for e in browser.find_elements(By.CSS_SELECTOR, "svg.workflow-graph .edge-label")}
    assert labels == {"next", "event", "timeout"}
    shot("workflow-graph-counts.png")

    # side by side with the new draft
    Select(browser.find_element(By.ID, "compare")).select_by_value(str(draft.pk))
    browser.find_element(By.CSS_SELECTOR, "#compare-form input[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".graph-panel")) == 2)
    assert browser.find_elements(By.CSS_SELECTOR, '#graph-v2 g.node.added[data-key="bye"]')
    assert len(browser.find_elements(By.CSS_SELECTOR, 'g.node.changed[data-key="nudge"]')) == 2
    shot("workflow-graph-compare.png")

    # a step opens in the version's admin page
    browser.find_element(By.CSS_SELECTOR, '#graph-v1 g.node[data-key="wait"] a').click()
    WebDriverWait(browser, 10).until(lambda b: "#steps-" in b.current_url)
    anchor = browser.current_url.rsplit("#", 1)[1]
    assert "wait" in browser.find_element(By.ID, anchor).text


def test_ops_opens_a_customer_360(traffic, send, live_server, browser, shot):
    from channels_app.models import Topic
    from channels_app.services.consent import consent_set
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    alan = Customer.objects.get(external_id="u-alan")
    topic = Topic.objects.first()
    consent_set(customer=alan, channel_kind="sms", topic=topic, status="opted_out", source="sms_stop")
    consent_set(customer=alan, channel_kind="sms", topic=topic, status="opted_in", source="preference_centre")
    send(anonymousId="anon-77", event="Viewed Pricing")
    send(anonymousId="anon-77", userId="u-alan", event="Logged In")
    base = live_server.url
    _login(browser, base)
    browser.get(f"{base}{reverse('admin:journeys_customer_changelist')}?q=alan@example.com")
    browser.find_element(By.LINK_TEXT, "u-alan").click()
    WebDriverWait(browser, 10).until(lambda b: b.find_elements(By.ID, "customer-360"))

    assert "Alan" in browser.find_element(By.ID, "c360-profile").text
    identities = browser.find_element(By.ID, "c360-identities").text
    assert "alan@example.com" in identities and "anon-77" in identities and f"→ #{alan.pk}" in identities
    assert "sms_stop" in browser.find_element(By.ID, "c360-consents").text
    assert "Support Message" in browser.find_element(By.ID, "c360-events").text
    assert "We're on it" in browser.find_element(By.ID, "c360-messages").text
    assert "High-value support query" in browser.find_element(By.ID, "c360-runs").text
    cases = browser.find_element(By.ID, "c360-cases")
    assert "Assigned" in cases.text
    only_local_resources(browser, base)
    shot("customer-360.png")

    cases.find_element(By.PARTIAL_LINK_TEXT, "#").click()
    WebDriverWait(browser, 10).until(lambda b: "/admin/agents/case/" in b.current_url)
    assert Customer.objects.get(external_id="u-alan").cases.count() == 1
