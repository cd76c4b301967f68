"""Real client libraries nobody here wrote (Segment's and RudderStack's Python and Node SDKs) against a
live server: a batch with a bad event stores the good ones, quarantines the bad one, and the client
neither retries nor reports an error (a 400 would have made it drop the whole batch)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from journeys.models import Event, QuarantinedEvent
from tests.factories import make_source

segment = pytest.importorskip("segment.analytics")
rudder = pytest.importorskip("rudderstack.analytics")
from rudderstack.analytics import request as rudder_request  # noqa: E402
from segment.analytics import request as segment_request  # noqa: E402

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def wire():
    """Every HTTP answer the SDKs get (their module-level requests sessions), by status."""
    seen: Counter = Counter()

    def hook(response, *args, **kwargs):
        seen[response.status_code] += 1

    sessions = [segment_request._session, rudder_request._session]
    for session in sessions:
        session.hooks["response"].append(hook)
    yield seen
    for session in sessions:
        session.hooks["response"].remove(hook)
        session.close()  # no kept-alive connection outlives the live server's test database


def _send(client, errors: list) -> None:
    client.identify("ada", {"email": "ada@example.com", "plan": "pro"})
    client.track("ada", "Order Completed", {"total": 120})
    client.track("ada", "x" * 300, {"total": 1})  # the bad event: a 300-character name
    client.page("ada", "Docs", "Pricing")  # category, name
    client.track("ada", "Checkout Started", {"step": 1})
    client.flush()
    client.shutdown()
    assert errors == []


def test_segment_python_batch_with_a_bad_event(live_server, wire):
    source, key = make_source("segment-python")
    errors: list = []
    client = segment.Client(write_key=key, host=live_server.url, upload_size=100, upload_interval=1, max_retries=3,
                            on_error=lambda exc, batch: errors.append(exc), gzip=False)

    _send(client, errors)

    assert set(wire) == {200}  # answered 200: the SDK neither retries nor drops anything
    names = sorted(Event.objects.filter(source=source).values_list("type", "name"))
    assert names == [("identify", ""), ("page", "Pricing"), ("track", "Checkout Started"), ("track", "Order Completed")]
    held = QuarantinedEvent.objects.get(source=source)
    assert (held.field, held.code) == ("batch[2].event", "invalid_event")
    stored = Event.objects.get(source=source, name="Order Completed")
    assert stored.context["library"]["name"] == "analytics-python" and stored.original_timestamp is not None
    assert Event.objects.get(source=source, type="page").category == "Docs"


def test_rudderstack_python_gzip_batch_with_a_bad_and_a_big_event(live_server, wire):
    source, key = make_source("rudder-python")
    errors: list = []
    client = rudder.Client(write_key=key, host=live_server.url, upload_size=100, upload_interval=1, max_retries=3,
                           on_error=lambda exc, batch: errors.append(exc))  # gzip is its default
    # Its SDK sends events of up to 4 MB in batches of up to 8 MB: 20 x 30 KB (600 KB, over the old
    # 500 KB limit) and one of 40 KB, which is over our 32 KB per event and is quarantined.
    for n in range(20):
        client.track("bea", "Photo Uploaded", {"n": n, "exif": "e" * 30_000})
    client.track("bea", "Photo Uploaded", {"n": 99, "exif": "e" * 40_000})

    _send(client, errors)

    assert set(wire) == {200}
    assert Event.objects.filter(source=source, name="Photo Uploaded").count() == 20
    assert set(QuarantinedEvent.objects.filter(source=source).values_list("field", "code")) == {
        ("batch[20]", "too_large"), ("batch[23].event", "invalid_event")}
    stored = Event.objects.get(source=source, name="Order Completed")
    assert stored.channel == "server"  # a field Segment's spec has and the old columns dropped


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_rudderstack_python_largest_batch_keeps_its_good_events_beside_a_4mb_one(live_server, wire, gzip):
    """rudder-sdk-python closes a batch only once it holds 4 MiB and takes events of up to 4 MiB:
    128 events of ~32 KB (4.1 MB) and then one of ~4 MB go out as one 8 MB batch. That batch was
    a 413, which the SDK takes as final: it dropped every good event of it."""
    source, key = make_source(f"rudder-python-{'gzip' if gzip else 'plain'}")
    errors: list = []
    client = rudder.Client(write_key=key, host=live_server.url, upload_size=200, upload_interval=2, max_retries=3,
                           on_error=lambda exc, batch: errors.append(exc), gzip=gzip)
    for n in range(128):
        client.track("cleo", "Photo Uploaded", {"n": n, "exif": "e" * 31_500})
    client.track("cleo", "Page Pasted", {"html": "h" * (4 * 1024 * 1024 - 1024)})
    for n in range(10):
        client.track("cleo", "Photo Viewed", {"n": n})
    client.flush()
    client.shutdown()

    assert errors == [] and set(wire) == {200}
    assert Event.objects.filter(source=source, name="Photo Uploaded").count() == 128
    assert Event.objects.filter(source=source, name="Photo Viewed").count() == 10
    held = QuarantinedEvent.objects.get(source=source)  # batch[128]: the 8 MB batch arrived whole
    assert (held.field, held.code, held.batch_index) == ("batch[128]", "too_large", 128)


# -- the Node clients (@segment/analytics-node, @rudderstack/rudder-sdk-node), when Node is here ----------

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / "node"


@pytest.fixture(scope="module")
def node_clients() -> Path:
    """The pinned npm packages in a test-only folder (tests/clients/node, package-lock.json),
    installed once with `npm ci --ignore-scripts`; skipped, saying why, without Node or the registry."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are not installed (Debian: apt install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "@segment" / "analytics-node").exists():
        done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--prefer-offline"],
                              cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        if done.returncode:
            pytest.skip(f"npm ci failed (no registry?): {done.stderr[-500:]}")
    return NODE_DIR


@pytest.mark.parametrize("kind", ["segment", "rudder"])
def test_node_client_batch_with_a_bad_event(live_server, node_clients, kind):
    source, key = make_source(f"{kind}-node")

    done = subprocess.run(["node", "send.js", kind, live_server.url, key], cwd=node_clients, capture_output=True,
                          text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"errors": []}
    names = sorted(Event.objects.filter(source=source).values_list("type", "name"))
    assert names == [("identify", ""), ("page", "Pricing"), ("track", "Checkout Started"), ("track", "Order Completed")]
    held = QuarantinedEvent.objects.get(source=source)  # (RudderStack's sends the first event on its own)
    assert (held.field, held.code) == (f"batch[{held.batch_index}].event", "invalid_event")
