"""Repeated wrong passwords lock sign-in per account and per address (django-axes), on the
admin's and the agents' login pages; common and numeric passwords are refused."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

PAGES = ["/admin/login/", "/agents/login/"]


def attempt(page: str, username: str, password: str, ip: str = "203.0.113.5"):
    client = Client(REMOTE_ADDR=ip)
    response = client.post(page, {"username": username, "password": password})
    return response, client


@pytest.mark.parametrize("page", PAGES)
def test_after_five_wrong_passwords_even_the_right_one_is_refused(page, settings):
    UserFactory(username="dave", is_staff=True)
    answers = [attempt(page, "dave", "guess")[0].status_code for _ in range(settings.AXES_FAILURE_LIMIT)]
    assert answers == [200] * (settings.AXES_FAILURE_LIMIT - 1) + [429]  # the form again, then locked

    right, client = attempt(page, "dave", "pw")

    assert right.status_code == 429 and b"Too many failed sign-ins" in right.content
    assert "_auth_user_id" not in client.session


@pytest.mark.parametrize("page", PAGES)
def test_the_lock_is_per_account_across_addresses_and_per_address_across_accounts(page, settings):
    UserFactory(username="erin", is_staff=True)
    UserFactory(username="fay", is_staff=True)
    for i in range(settings.AXES_FAILURE_LIMIT):
        attempt(page, "erin", "guess", ip=f"198.51.100.{i + 1}")  # a botnet: one try per address
    assert attempt(page, "erin", "pw", ip="198.51.100.200")[0].status_code == 429

    for i in range(settings.AXES_FAILURE_LIMIT):
        attempt(page, f"someone{i}", "guess", ip="192.0.2.77")  # one address, many accounts
    assert attempt(page, "fay", "pw", ip="192.0.2.77")[0].status_code == 429
    assert attempt(page, "fay", "pw", ip="192.0.2.78")[0].status_code == 302  # fay elsewhere is fine


def test_behind_a_trusted_proxy_the_lock_is_per_client_not_per_proxy(settings):
    """The same address rule as the event API (TRUSTED_PROXIES): one attacker behind the load
    balancer does not lock out every other client coming through it, and a client cannot pick
    its address by writing X-Forwarded-For itself."""
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    UserFactory(username="hal", is_staff=True)

    def through_proxy(username, password, forwarded):
        return Client(REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded).post(
            "/admin/login/", {"username": username, "password": password})

    for i in range(settings.AXES_FAILURE_LIMIT):  # one attacker, many accounts, forged left-most hops
        through_proxy(f"victim{i}", "guess", f"192.0.2.{i + 1}, 198.51.100.66")
    assert through_proxy("hal", "pw", "198.51.100.66").status_code == 429  # the attacker's address is locked
    assert through_proxy("hal", "pw", "198.51.100.67").status_code == 302  # another client is not


def test_the_locked_page_says_how_long_in_words_and_when_to_retry(settings):
    UserFactory(username="ida", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt("/admin/login/", "ida", "guess")

    locked, _ = attempt("/admin/login/", "ida", "pw")

    text = locked.content.decode().replace("\xa0", " ")
    assert locked.status_code == 429 and "Try again in 15 minutes" in text and "PT15M" not in text
    assert locked["Retry-After"] == "900"


def test_a_trusted_proxy_written_as_a_host_name_does_not_break_sign_in(settings):
    # given a TRUSTED_PROXIES entry that is no address (journeys.E004 names it at every manage.py command)
    settings.TRUSTED_PROXIES = ["lb.internal"]
    UserFactory(username="jo", is_staff=True)

    wrong, _ = attempt("/admin/login/", "jo", "guess")
    right, _ = attempt("/admin/login/", "jo", "pw")

    assert (wrong.status_code, right.status_code) == (200, 302)  # the form again, then in; not 500


def test_a_success_before_the_limit_forgets_the_failures(settings):
    UserFactory(username="gus", is_staff=True)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt("/admin/login/", "gus", "guess")
    assert attempt("/admin/login/", "gus", "pw")[0].status_code == 302
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        attempt("/admin/login/", "gus", "guess")
    assert attempt("/admin/login/", "gus", "pw")[0].status_code == 302


@pytest.mark.parametrize("password, message", [("password123", "too common"), ("83920174651", "entirely numeric")])
def test_common_and_numeric_passwords_are_refused(admin_client, password, message):
    response = admin_client.post("/admin/auth/user/add/", {
        "username": "newbie", "password1": password, "password2": password, "usable_password": "true"})
    assert response.status_code == 200 and message in response.content.decode()
