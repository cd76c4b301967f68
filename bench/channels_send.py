"""Messaging cost: messages/s through the engine's send path and the dispatcher (consent,
sandboxed render, outbox row and one dispatch task per batch, as `send_message` does in an
engine batch; then the dispatcher: claim, send-time checks, provider, result, `Message
Sent` event) vs. a baseline of the bare minimum (render with Django's own engine + insert
the row + call the provider, per message) in the same run, in ABBA halves.

    .venv/bin/python bench/channels_send.py [--messages 2000] [--batch 200]

Figures besides the ratio: the same baseline with one django-q2 enqueue per message, and
a bulk baseline (the rows of a batch inserted with one bulk_create, then the provider
called per message), the bare minimum of sending in batches.

Uses DATABASE_URL when set (give it a scratch database: it is migrated and written to),
else a temporary SQLite file. The console provider is used so that the network is not
measured. Last stdout line: {"bench": "channels_send", "per_s": ..., "baseline_per_s": ..., "ratio": ...}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=200, help="messages per engine batch (the engine's task size)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    if not os.environ.get("DATABASE_URL"):
        os.environ["SQLITE_PATH"] = str(Path(tmp) / "bench.sqlite3")
    # The ORM broker (not sync mode): enqueueing is a row insert, as in production; the
    # dispatch is called here directly, as the worker would.
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))  # in-process only; nothing else shares it
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    import django

    django.setup()
    logging.getLogger("channels_app.console").setLevel(logging.WARNING)
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.template import Context, Engine

    call_command("migrate", verbosity=0)
    from channels_app.models import Channel, Delivery, MessageTemplate, Topic
    from channels_app.providers import OutgoingMessage, get_provider
    from django.utils import timezone

    from channels_app.services import deliveries_dispatch
    from channels_app.services.sending import SendBatch
    from journeys.engine.batch import EngineBatch
    from journeys.models import Customer

    run = str(int(time.time()))
    channel = Channel.objects.create(name=f"bench-{run}", kind="email", provider="console")
    template = MessageTemplate.objects.create(
        name=f"bench-{run}",
        topic=Topic.objects.get(slug="product_updates"),
        subject="Hi {{ profile.first_name }}",
        body="Your cart of {{ event.properties.total }} is waiting.",
    )
    customers = Customer.objects.bulk_create(
        Customer(
            external_id=f"b{run}-{i}", email=f"b{i}@example.com", traits={"first_name": f"N{i}"}
        )
        for i in range(200)
    )
    event = {"name": "Checkout", "properties": {"total": 120}}
    from django_q.models import OrmQ

    queue_mark = OrmQ.objects.order_by("-pk").values_list("pk", flat=True).first() or 0

    engine, provider = Engine(autoescape=False), get_provider("console", {})
    subject_t, body_t = engine.from_string(template.subject), engine.from_string(template.body)

    def ours_run(numbers: range) -> float:
        """What an engine batch does (journeys.engine.batch + channels_app SendBatch: one INSERT
        of the batch's deliveries and one deliveries_send task), then what that task does on a
        worker (deliveries_dispatch: claim, checks, console provider, results). Seconds taken."""
        nonlocal channel, template
        start = time.perf_counter()
        for first in range(numbers.start, numbers.stop, args.batch):
            part = range(first, min(first + args.batch, numbers.stop))
            with transaction.atomic():
                batch = EngineBatch(customer_ids={customers[i % 200].pk for i in part}, now=timezone.now())
                with batch.active():
                    sends = SendBatch.current()
                    channel, template = sends.channel(channel.name), sends.template(template.name)  # as send_message does
                    ids = [sends.message(customer=customers[i % 200], template=template, channel=channel,
                                         idempotency_key=f"bench:{run}:{i}", context={"event": event},
                                         now=batch.now).pk for i in part]
                    batch.flush()
            deliveries_dispatch(delivery_ids=ids)
        return time.perf_counter() - start

    def bare_send(i: int, key: str) -> None:
        """The bare minimum for one message: render with Django's engine, insert the row in its
        own transaction, call the provider."""
        customer = customers[i % 200]
        ctx = Context({"profile": customer.traits, "event": event})
        with transaction.atomic():
            row = Delivery.objects.create(
                idempotency_key=f"{key}:{run}:{i}", customer=customer, channel=channel, to=customer.email,
                subject=subject_t.render(ctx), body=body_t.render(ctx), status="sent",
            )
        provider.send(OutgoingMessage(delivery_id=row.pk, idempotency_key=row.idempotency_key, kind="email",
                                      to=row.to, subject=row.subject, body=row.body))

    def baseline_run(numbers: range) -> float:
        start = time.perf_counter()
        for i in numbers:
            bare_send(i, "base")
        return time.perf_counter() - start

    # ABBA halves (ours, bare, bare, ours): a drift of the machine's load hits both alike.
    half = args.messages // 2
    first, second = range(0, half), range(half, args.messages)
    ours_s = ours_run(first)
    baseline_s = baseline_run(first) + baseline_run(second)
    ours_s += ours_run(second)
    ours, baseline = args.messages / ours_s, args.messages / baseline_s
    assert Delivery.objects.filter(channel=channel, status="sent", idempotency_key__startswith="bench:").count() \
        == args.messages

    # The same baseline plus one django-q2 enqueue per message (the outbox hand-off we
    # cannot skip): shows how much of the gap is the queue rather than our checks.
    from django_q.tasks import async_task

    start = time.perf_counter()
    for i in range(args.messages):
        async_task("math.floor", 1.5, group="bench")
        bare_send(i, "baseq")
    with_queue = args.messages / (time.perf_counter() - start)

    # Bare, in batches: a batch's rows with one bulk_create, then the provider per message.
    start = time.perf_counter()
    for first in range(0, args.messages, args.batch):
        rows = []
        for i in range(first, min(first + args.batch, args.messages)):
            customer = customers[i % 200]
            ctx = Context({"profile": customer.traits, "event": event})
            rows.append(Delivery(idempotency_key=f"bulk:{run}:{i}", customer=customer, channel=channel,
                                 to=customer.email, subject=subject_t.render(ctx), body=body_t.render(ctx),
                                 status="sent"))
        with transaction.atomic():
            Delivery.objects.bulk_create(rows)
        for row in rows:
            provider.send(OutgoingMessage(delivery_id=row.pk or 0, idempotency_key=row.idempotency_key, kind="email",
                                          to=row.to, subject=row.subject, body=row.body))
    bulk = args.messages / (time.perf_counter() - start)

    OrmQ.objects.filter(pk__gt=queue_mark).delete()  # leave no bench task for a worker
    print(
        json.dumps(
            {
                "bench": "channels_send",
                "messages": args.messages,
                "database": connection.vendor,
                "per_s": round(ours, 1),
                "baseline_per_s": round(baseline, 1),
                "ratio": round(ours / baseline, 3),
                "baseline_with_enqueue_per_s": round(with_queue, 1),
                "ratio_vs_enqueue_baseline": round(ours / with_queue, 3),
                "bulk_baseline_per_s": round(bulk, 1),
                "ratio_vs_bulk_baseline": round(ours / bulk, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
