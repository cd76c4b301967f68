"""In headless Chromium: a customer opens the preference centre from a message link,
changes their choices and saves; an ops user previews a template in the admin."""

from __future__ import annotations

import shutil

import pytest

from channels_app.models import Consent
from channels_app.services.links import link_sign
from tests.channels_app.factories import ChannelFactory, CustomerFactory, TemplateFactory

CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMEDRIVER is None or shutil.which("chromium") is None, reason="needs chromium + chromedriver"),
]


from tests.browser import browser  # noqa: E402,F401  (the shared fixture: fails on CSP violations)


def wait_for(browser, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: text in b.page_source)


def test_customer_changes_choices_in_the_preference_centre(live_server, browser):
    from django.urls import reverse
    from selenium.webdriver.common.by import By

    ChannelFactory(name="email", kind="email", provider="console")
    ChannelFactory(name="sms", kind="sms", provider="console")
    ada = CustomerFactory(external_id="ada")
    url = live_server.url + reverse("channels_app:preferences", args=[link_sign(purpose="preferences", data={"c": ada.pk})])

    browser.get(url)
    marketing_email = browser.find_element(By.NAME, "t:marketing:email")
    updates_sms = browser.find_element(By.NAME, "t:product_updates:sms")
    assert not marketing_email.is_selected() and updates_sms.is_selected()
    marketing_email.click()
    updates_sms.click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, "Your choices are saved")

    status = {(c.channel_kind, c.topic.slug if c.topic else None): c.status for c in Consent.objects.filter(customer=ada)}
    assert status[("email", "marketing")] == "opted_in"
    assert status[("sms", "product_updates")] == "opted_out"
    assert browser.find_element(By.NAME, "t:marketing:email").is_selected()

    browser.get(url[:-4] + "abc/")
    assert "This link does not work" in browser.page_source
    assert Consent.objects.filter(customer=ada).count() == len(status)


def test_ops_user_previews_a_template_in_the_admin(live_server, browser, admin_user):
    from selenium.webdriver.common.by import By

    template = TemplateFactory(subject="Cart of {{ event.properties.total }}", body="Hi {{ profile.first_name }}")
    CustomerFactory(external_id="bea", traits={"first_name": "Bea"})
    browser.get(f"{live_server.url}/admin/login/")
    browser.find_element(By.ID, "id_username").send_keys("admin")
    browser.find_element(By.ID, "id_password").send_keys("password")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, "/admin/logout/")

    browser.get(f"{live_server.url}/admin/channels_app/messagetemplate/")
    browser.find_element(By.LINK_TEXT, "preview").click()
    browser.find_element(By.NAME, "customer").send_keys("bea")
    browser.find_element(By.NAME, "event").send_keys('{"name": "Checkout", "properties": {"total": 42}}')
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(browser, "Cart of 42")
    assert "Hi Bea" in browser.page_source and template.name in browser.page_source
