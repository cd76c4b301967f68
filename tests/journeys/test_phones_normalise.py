"""Phone numbers stored as typed before they were normalised: `manage.py phones_normalise` (the
code migration 0028 runs) rewrites them as `phone_normalize` would, set-based on PostgreSQL; one
customer's spellings become one identity; a number two customers hold in different spellings is
listed and left, and each of them is still found by their own spelling."""

from __future__ import annotations

import random
from io import StringIO
from urllib.parse import urlencode

import pytest
from django.core.management import call_command
from django.db import connection

from journeys.models import Customer, Identity
from journeys.services.identity import PHONE_SPACES, phone_normalize
from tests.apiclient import Api, make_token

pytestmark = pytest.mark.django_db


def normalise(*args: str) -> str:
    out = StringIO()
    call_command("phones_normalise", *args, stdout=out)
    return out.getvalue()


def phones() -> dict:
    return dict(Identity.objects.filter(kind="phone").values_list("value", "customer__external_id"))


def spellings(count: int) -> list[str]:
    """Numbers written every way people (and bad data) write them: country codes with a trunk
    '(0)', every character Python's \\s matches, dashes, dots, parentheses, a zero-width space
    and non-ASCII digits (neither is a separator), unicode dashes, a `tel:` prefix, letters."""
    rng = random.Random(28)
    starts = ["", "+1 ", "+44 (0)", "+44(0)", " +49 (0) ", "+353-(0)", "+44 ( 0 )", "(0)", "+44 20 (0)", "+(0)",
              "+1234 (0)", "\u00a0+33\u2009(0)\t", "+٤٤ (0)", "0044 (0)", "tel:", "TEL:+44 (0)", " tel:+1-"]
    # no 'x': the identities' distinguishing ' 00012' after it would be an extension, not part of the number
    alphabet = list("0123456789-.()+a/") + list(PHONE_SPACES) + ["\u200b", "٣", "\u2011", "\u2013", "\u2212"]
    return [rng.choice(starts) + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
            for _ in range(count)]


def test_every_spelling_is_stored_as_phone_normalize_gives_and_normalised_rows_are_not_written():
    # given profiles and phone identities holding numbers written in 600 ways (the identities
    # made distinct by a last group of digits), and some already normalised
    typed = spellings(600)
    extensions = ["", "", " x12", " ext. 7", ";ext=99", "\tExtension 3", "X 5", " ext:8"]
    profiles = [value[:50] + extensions[i % len(extensions)] for i, value in enumerate(typed)]
    for i, value in enumerate(typed):
        customer = Customer.objects.create(external_id=f"c{i}", phone=profiles[i])
        Identity.objects.create(kind="phone", value=f"{value} {i:05d}", customer=customer)
    clean = Customer.objects.create(external_id="clean", phone="+15557770001")
    Identity.objects.create(kind="phone", value="+15557770001", customer=clean)
    before = _row_versions()

    # when the command runs (a small chunk: many key ranges)
    normalise("--chunk", "7")

    # then every number is what phone_normalize makes of it, on SQLite and PostgreSQL alike
    for i, value in enumerate(typed):
        assert Customer.objects.get(external_id=f"c{i}").phone == phone_normalize(profiles[i]), repr(profiles[i])
    assert phones() == {phone_normalize(f"{v} {i:05d}"): f"c{i}" for i, v in enumerate(typed)} | {
        "+15557770001": "clean"}
    assert phone_normalize("+44 (0)20 7946 0010") == "+442079460010"
    assert phone_normalize("tel:+44 (0)20 7946\u20130010;ext=12") == "+442079460010"
    # and the rows that were normalised already were not written (PostgreSQL: same row version)
    after = _row_versions()
    for table, row in before.items():
        if row is not None:
            assert after[table] == row, table


def _row_versions() -> dict:
    if connection.vendor != "postgresql":
        return {"customer": None, "identity": None}
    with connection.cursor() as cur:
        cur.execute("SELECT ctid::text FROM journeys_customer WHERE external_id = 'clean'")
        customer = cur.fetchone()
        cur.execute("SELECT ctid::text FROM journeys_identity WHERE value = '+15557770001'")
        return {"customer": customer, "identity": cur.fetchone()}


def make(name: str, *numbers: str, phone: str = "") -> Customer:
    customer = Customer.objects.create(external_id=name, phone=phone)
    for number in numbers:
        Identity.objects.create(kind="phone", value=number, customer=customer)
    return customer


def test_one_customers_spellings_become_one_identity_and_numbers_two_customers_hold_are_listed():
    # given a customer holding her number in two spellings, and another whose typed spelling
    # sits next to the normalised one; a number two customers hold (one normalised already)
    # and a number two customers hold, each as typed; a user id with separators
    make("ada", "+1 (555) 777-0001", "+1.555.777.0001", phone="+1 555 777 0001")
    make("ben", "+1 555 777 0003", "+15557770003")
    bo = make("bo", "+15557770002")
    cy = make("cy", "+1 555 777 0002")
    dan = make("dan", "(555) 000-0007")
    eve = make("eve", "(555)000 0007")
    Identity.objects.create(kind="user_id", value="e. (f)", customer=bo)

    # when the command runs, listing collisions
    out = normalise("--collisions")

    # then one identity per customer and number; the collided spellings are left as they are
    assert phones() == {"+15557770001": "ada", "+15557770003": "ben", "+15557770002": "bo",
                        "+1 555 777 0002": "cy", "(555) 000-0007": "dan", "(555)000 0007": "eve"}
    assert Customer.objects.get(external_id="ada").phone == "+15557770001"
    assert Identity.objects.filter(kind="user_id", value="e. (f)").exists()
    # and the report counts them and lists each number with its identities and customers
    assert ("1 profile numbers and 1 phone identities normalised, 2 duplicate spellings of one customer's number "
            "removed; 2 numbers belong to more than one customer") in out
    listed = [line.split("\t") for line in out.splitlines() if "\t" in line]
    assert [(number, spelling, customer) for number, _, spelling, customer in listed] == [
        ("+15557770002", "'+15557770002'", f"customer {bo.pk}"),
        ("+15557770002", "'+1 555 777 0002'", f"customer {cy.pk}"),
        ("5550000007", "'(555) 000-0007'", f"customer {dan.pk}"),
        ("5550000007", "'(555)000 0007'", f"customer {eve.pk}")]

    # when the web process of the previous release stores a number as typed afterwards, and
    # the command runs again
    make("fay", "+1 555 777 0009", phone="+1 555 777 0009")
    again = normalise()
    # then that number is normalised too, and the rest is as it was
    assert again.startswith("1 profile numbers and 1 phone identities normalised, 0 duplicate")
    assert phones()["+15557770009"] == "fay" and len(phones()) == 7


def test_the_migration_runs_the_same_normalisation():
    from importlib import import_module

    from django.apps import apps

    # given numbers stored as typed, two of which two customers hold
    make("ada", "+44 (0)20 7946 0010", phone="+44 (0)20 7946 0010")
    make("bo", "+15557770002")
    make("cy", "+1 555 777 0002", phone="+1 555 777 0002")
    migration = import_module("journeys.migrations.0028_phone_numbers_normalised")
    # when its data migration runs; then it does what the command does, and is not atomic
    # (PostgreSQL: each chunk commits on its own)
    migration.normalise(apps, None)
    assert migration.Migration.atomic is False
    assert dict(Customer.objects.values_list("external_id", "phone")) == {
        "ada": "+442079460010", "bo": "", "cy": "+15557770002"}
    assert phones() == {"+442079460010": "ada", "+15557770002": "bo", "+1 555 777 0002": "cy"}


def test_a_number_left_as_typed_is_still_found_by_its_spelling_and_never_claimed_again(api):
    # given two customers holding one number in their own spellings (left so by the migration)
    dan = make("dan", "(555) 000-0007")
    eve = make("eve", "(555)000 0007")

    # when new visitors are identified with each spelling
    for n, typed in enumerate(["(555) 000-0007", "(555)000 0007"]):
        assert api.post("identify", {"anonymousId": f"anon-{n}", "traits": {"phone": typed}}).status_code == 200

    # then the number stays with the customers who had it: no new profile took it in the
    # normalised spelling (which every later lookup of the number would have found first)
    assert phones() == {"(555) 000-0007": "dan", "(555)000 0007": "eve"}
    # and the customers API finds each by the spelling they hold, both by the number
    _, key = make_token("customers:read", name="crm")
    crm = Api(key)
    for typed, expected in (("(555) 000-0007", {dan.pk}), ("(555)000 0007", {eve.pk}), ("5550000007", set())):
        found = crm.get(f"customers?{urlencode({'phone': typed})}").body["results"]
        assert {c["id"] for c in found} == expected, typed
