"""In headless Chromium: the report's SVG charts render, and an operator concludes the experiment."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from django.utils import timezone

from experiments.models import Experiment
from experiments.services.assignment import assignment_decide
from tests.experiments.factories import make_customers, make_experiment, make_goal_events
from tests.factories import UserFactory

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        CHROMEDRIVER is None or shutil.which("chromium") is None, reason="needs chromium + chromedriver"
    ),
]


from tests.browser import browser  # noqa: E402,F401  (the shared fixture: fails on CSP violations)


def test_report_renders_charts_and_concludes_from_the_browser(browser, live_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    UserFactory(username="ops", is_staff=True, is_superuser=True)
    start = timezone.now() - timedelta(days=3)
    experiment = make_experiment(goal_event="Order Completed", holdout_share=0.1, now=start)
    decisions = [
        assignment_decide(experiment=experiment, customer=c, now=start + timedelta(days=i % 3))
        for i, c in enumerate(make_customers(90))
    ]
    make_goal_events(
        [d.assignment.customer for d in decisions[::4]],
        name="Order Completed",
        at=timezone.now() - timedelta(minutes=5),
    )

    report_path = f"/admin/experiments/experiment/{experiment.pk}/report/"
    browser.get(f"{live_server.url}/admin/login/?next={report_path}")  # straight to the report
    browser.find_element(By.ID, "id_username").send_keys("ops")
    browser.find_element(By.ID, "id_password").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    WebDriverWait(browser, 30).until(lambda b: "Conversion over time per arm" in b.page_source)

    for css in ("svg.exp-chart", "svg.exp-cohorts"):
        svg = browser.find_element(By.CSS_SELECTOR, css)
        box = browser.execute_script("const b = arguments[0].getBBox(); return [b.width, b.height];", svg)
        assert box[0] > 100 and box[1] > 40, (css, box)
    lines = browser.find_elements(By.CSS_SELECTOR, "svg.exp-chart polyline")
    assert len(lines) == 3  # control, short, holdout
    assert not browser.find_elements(By.CSS_SELECTOR, ".exp-srm")

    form = browser.find_element(By.XPATH, "//input[@value='conclude']/..")
    Select(form.find_element(By.NAME, "winner")).select_by_visible_text("welcome:short")
    form.find_element(By.NAME, "reason").send_keys("shorter onboarding converts better")
    form.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    try:
        WebDriverWait(browser, 30).until(lambda b: "Concluded: short receives every new entry" in b.page_source)
    except Exception:
        import re

        page = browser.page_source
        found = re.findall(r"(?:messagelist|errorlist|Status:).{0,400}", page, re.S)
        raise AssertionError(f"{browser.current_url} {found[:4]}") from None

    experiment = Experiment.objects.get(pk=experiment.pk)
    assert experiment.status == "concluded" and experiment.winner.name == "short"
