"""Headless Chromium walks the console: ops watches the dashboard refresh, reads a workflow's
graph (and compares two versions), and opens a Customer 360. Screenshots are taken on every run;
with SAVE_SCREENSHOTS=1 they replace the ones in docs/screenshots/ (shown in the README), otherwise
they go to a temporary directory so that a test run leaves the working tree clean."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.urls import reverse

from journeys.models import Customer, Step, Workflow
from journeys.services.workflows import version_new_draft

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs Debian's chromium and chromium-driver"),
]


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1440,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def _login(browser, base: str, username: str = "admin", password: str = "admin") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{base}/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda b: "/admin/logout/" in b.page_source)


def _only_local_resources(browser, base: str) -> None:
    """Nothing on the page came from outside this server (works without internet)."""
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in urls if not u.startswith(base)]
    assert not outside, outside


@pytest.fixture
def shot(browser, tmp_path):
    """Save a full-page screenshot (docs/screenshots/ with SAVE_SCREENSHOTS=1)."""
    target = DOCS_SCREENSHOTS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> None:
        height = browser.execute_script("return Math.min(document.documentElement.scrollHeight, 2400)")
        browser.set_window_size(1440, max(height + 140, 900))
        browser.save_screenshot(str(target / name))
        browser.set_window_size(1440, 1000)

    return take


def test_ops_watches_the_dashboard_refresh(traffic, send, live_server, browser, shot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base = live_server.url
    _login(browser, base)

    # the admin home loads the live panels by itself
    assert "/admin/" in browser.current_url
    live = str(Workflow.objects.filter(live_version__isnull=False, status="active").count())
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "m-live-workflows").text == live)
    _only_local_resources(browser, base)
    shot("admin-home.png")

    # the full dashboard, refreshing every second
    browser.get(f"{base}{reverse('console:dashboard')}?refresh=1")
    before = int(browser.find_element(By.ID, "m-events-last-minute").text)
    assert browser.find_element(By.ID, "m-runs-waiting").text == "2"
    assert browser.find_element(By.ID, "m-open-cases").text == "1"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart")) == 3
    _only_local_resources(browser, base)
    shot("dashboard.png")

    # new traffic arrives: the page updates in place, without a reload
    browser.execute_script("document.body.dataset.sameDocument = 'yes'")
    send(userId="u-late", event="Signed Up")
    WebDriverWait(browser, 10).until(
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
    _only_local_resources(browser, base)
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
    _only_local_resources(browser, base)
    shot("customer-360.png")

    cases.find_element(By.PARTIAL_LINK_TEXT, "#").click()
    WebDriverWait(browser, 10).until(lambda b: "/admin/agents/case/" in b.current_url)
    assert Customer.objects.get(external_id="u-alan").cases.count() == 1
