"""Two identical transactional sends racing on one idempotency key (PostgreSQL, each request on its
own connection): one message is stored and sent; the request that lost the race is answered as a
replay (200, `replayed`), never as a second creation."""

from __future__ import annotations

import threading
import time

from django.db import connection, connections, transaction

from channels_app.models import Delivery
from journeys.choices import ApiScope
from tests.apiclient import Api, make_token
from tests.channels_app.test_api_messages import receipt  # noqa: F401 - the email channel and receipt template
from tests.factories import CustomerFactory
from tests.marks import on_postgres

pytestmark = on_postgres("two requests racing on one key, each on its own connection")


def _waiting_on(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted", [table])
        return cursor.fetchone()[0]


def test_the_request_that_loses_the_race_for_a_key_is_a_replay_of_the_one_message(receipt, smtp):  # noqa: F811
    # given a customer, a send token, and the deliveries table held against inserts (reads go on), so
    # that both requests find no delivery under the key before either can store one
    CustomerFactory(external_id="ada", email="ada@example.com")
    _, key = make_token(ApiScope.SEND, name="shop")
    body = {"idempotency_key": "order-17", "template": "receipt", "user_id": "ada", "data": {"order_id": "17"}}
    table = Delivery._meta.db_table
    answers, errors = [], []

    def request():
        try:
            answers.append(Api(key).post("messages", body))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=request) for _ in range(2)]
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(f'LOCK TABLE "{table}" IN SHARE MODE')
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while _waiting_on(table) < 2 and time.monotonic() < deadline:  # both past their read, at the insert
            time.sleep(0.02)
        assert _waiting_on(table) == 2
    # when the hold is released and both inserts go ahead
    for thread in threads:
        thread.join(60)

    # then one request created the message (202) and the other is a replay of it (200)
    assert not errors, errors
    answers.sort(key=lambda r: r.status_code)
    assert [(r.status_code, r.body["replayed"]) for r in answers] == [(200, True), (202, False)], [r.body for r in answers]
    assert answers[0].body["delivery"]["id"] == answers[1].body["delivery"]["id"]
    assert Delivery.objects.count() == 1 and len(smtp.messages) == 1
