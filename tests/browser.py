"""Headless Chromium for browser tests (Debian's chromium + chromium-driver, driven by Selenium).

    from tests.browser import browser, shot, needs_chromium   # fixtures + skip marker
    pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

`shot(name)` saves a full-page PNG: into docs/screenshots/ with SAVE_SCREENSHOTS=1 (they are
shown in the README), otherwise into the test's temporary directory so a run leaves the
working tree clean. `login`, `wait_for`, `click` and `only_local_resources` are the steps
every walk needs.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
WIDTH = 1280

needs_chromium = pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM), reason="needs Debian's chromium and chromium-driver")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--window-size={WIDTH},1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console messages, CSP reports included
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(5)
    yield driver
    violations = csp_violations(driver)
    driver.quit()
    assert not violations, "Content-Security-Policy violations in the browser console:\n" + "\n".join(violations)


def csp_violations(driver) -> list[str]:
    """Console messages of the pages visited so far that report a Content-Security-Policy violation."""
    try:
        entries = driver.get_log("browser")
    except Exception:  # noqa: BLE001 - a driver without logs has nothing to report
        return []
    return [e["message"] for e in entries if "Content Security Policy" in e.get("message", "")]


@pytest.fixture
def shot(browser, tmp_path):
    """Save a full-page screenshot (docs/screenshots/ with SAVE_SCREENSHOTS=1), at most
    `max_height` pixels tall so that the pictures in the repository stay small."""
    target = DOCS_SCREENSHOTS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)

    def take(name: str, max_height: int = 2000) -> Path:
        height = browser.execute_script("return Math.min(document.documentElement.scrollHeight, arguments[0])",
                                        max_height)
        browser.set_window_size(WIDTH, max(height + 140, 800))
        path = target / name
        browser.save_screenshot(str(path))
        browser.set_window_size(WIDTH, 1000)
        return path

    return take


def login(browser, base: str, username: str, password: str | None = None, *, next_url: str = "") -> None:
    """Sign in through the admin's login page (password defaults to the demo's: the username)."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{base}/admin/login/" + (f"?next={next_url}" if next_url else ""))
    browser.find_element(By.ID, "id_username").send_keys(username)
    browser.find_element(By.ID, "id_password").send_keys(password or username)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, "/admin/logout/")


def wait_for(browser, text: str, timeout: float = 20) -> str:
    """Wait until the page shows `text` (a click does not wait for the next page); on timeout,
    fail with the page's error messages."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, timeout).until(lambda b: text in b.page_source)
    except Exception:
        errors = re.findall(r'(?:errorlist|errornote|messagelist|class="error").*?</(?:ul|p|li)>', browser.page_source,
                            re.S)
        raise AssertionError(f"{text!r} not on {browser.current_url}: {errors[:5]}") from None
    return browser.page_source


def click(browser, by, value, then: str) -> str:
    browser.find_element(by, value).click()
    return wait_for(browser, then)


def only_local_resources(browser, base: str) -> None:
    """Nothing on the page came from outside this server (works without internet)."""
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    outside = [u for u in urls if not u.startswith(base)]
    assert not outside, outside
