"""Messaging cost: messages/s through message_send + dispatch (consent, policy checks,
sandboxed render, outbox row, claim, provider, result) vs. a baseline of the bare minimum
(render with Django's own engine + insert the row + call the provider) in the same run.

    .venv/bin/python bench/channels_send.py [--messages 2000]

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
    from django.db import transaction
    from django.template import Context, Engine

    call_command("migrate", verbosity=0)
    from channels_app.models import Channel, Delivery, MessageTemplate, Topic
    from channels_app.providers import OutgoingMessage, get_provider
    from channels_app.services import delivery_dispatch, message_send
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

    start = time.perf_counter()
    for i in range(args.messages):
        with transaction.atomic():
            delivery = message_send(
                customer=customers[i % 200],
                template=template,
                channel=channel,
                idempotency_key=f"bench:{run}:{i}",
                context={"event": event},
            )
        delivery_dispatch(delivery_id=delivery.pk)
    ours = args.messages / (time.perf_counter() - start)
    assert Delivery.objects.filter(channel=channel, status="sent").count() == args.messages

    engine, provider = Engine(autoescape=False), get_provider("console", {})
    subject_t, body_t = engine.from_string(template.subject), engine.from_string(template.body)
    start = time.perf_counter()
    for i in range(args.messages):
        customer = customers[i % 200]
        ctx = Context({"profile": customer.traits, "event": event})
        with transaction.atomic():
            row = Delivery.objects.create(
                idempotency_key=f"base:{run}:{i}",
                customer=customer,
                channel=channel,
                to=customer.email,
                subject=subject_t.render(ctx),
                body=body_t.render(ctx),
                status="sent",
            )
        provider.send(
            OutgoingMessage(
                delivery_id=row.pk,
                idempotency_key=row.idempotency_key,
                kind="email",
                to=row.to,
                subject=row.subject,
                body=row.body,
            )
        )
    baseline = args.messages / (time.perf_counter() - start)

    # The same baseline plus one django-q2 enqueue per message (the outbox hand-off we
    # cannot skip): shows how much of the gap is the queue rather than our checks.
    from django_q.tasks import async_task

    start = time.perf_counter()
    for i in range(args.messages):
        customer = customers[i % 200]
        ctx = Context({"profile": customer.traits, "event": event})
        with transaction.atomic():
            row = Delivery.objects.create(
                idempotency_key=f"baseq:{run}:{i}",
                customer=customer,
                channel=channel,
                to=customer.email,
                subject=subject_t.render(ctx),
                body=body_t.render(ctx),
                status="sent",
            )
        async_task("math.floor", 1.5, group="bench")
        provider.send(
            OutgoingMessage(
                delivery_id=row.pk,
                idempotency_key=row.idempotency_key,
                kind="email",
                to=row.to,
                subject=row.subject,
                body=row.body,
            )
        )
    with_queue = args.messages / (time.perf_counter() - start)

    OrmQ.objects.filter(pk__gt=queue_mark).delete()  # leave no bench task for a worker
    print(
        json.dumps(
            {
                "bench": "channels_send",
                "messages": args.messages,
                "per_s": round(ours, 1),
                "baseline_per_s": round(baseline, 1),
                "ratio": round(ours / baseline, 3),
                "baseline_with_enqueue_per_s": round(with_queue, 1),
                "ratio_vs_enqueue_baseline": round(ours / with_queue, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
