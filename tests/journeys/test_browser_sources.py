"""Browser sources: a website's analytics SDK posts to /v1/ from the shop's own origin. Segment's
analytics.js posts text/plain JSON (its writeKey in the body) to one-letter paths (/v1/t, /v1/p,
... and /v1/b when batching) after loading its settings; RudderStack's JavaScript SDK posts JSON
with an Authorization header, so the browser asks first (a CORS preflight). The browser hands the
SDK the answer only when it carries CORS headers; the console and the management API carry none."""

from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from journeys.models import Event, QuarantinedEvent
from tests.browser import browser, needs_chromium  # noqa: F401 - the fixture
from tests.factories import make_source

SHOP = "https://shop.example.com"


def _post(client, path, body, *, origin=SHOP, **headers):
    return client.post(path, data=json.dumps(body), content_type="text/plain;charset=UTF-8",
                       HTTP_ORIGIN=origin, **headers)


@pytest.mark.django_db
def test_analytics_js_one_letter_paths_store_each_type_and_answer_the_shop_origin(client, write_key):
    calls = {"t": {"type": "track", "event": "Order Completed", "properties": {"total": 12}},
             "p": {"type": "page", "name": "Pricing", "properties": {"path": "/pricing"}},
             "i": {"type": "identify", "traits": {"email": "ada@example.com"}},
             "g": {"type": "group", "groupId": "acme", "traits": {"name": "Acme"}},
             "s": {"type": "screen", "name": "Home"},
             "a": {"type": "alias", "previousId": "anon-1"}}
    for short, call in calls.items():
        body = {**call, "userId": "ada", "messageId": f"ajs-{short}", "writeKey": write_key,
                "sentAt": "2026-12-06T10:00:00.000Z", "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
                "context": {"library": {"name": "analytics.js", "version": "next-1.70.0"}}}
        response = _post(client, f"/v1/{short}", body)
        assert response.status_code == 200, (short, response.content)
        assert response.json() == {"success": True}
        assert response["Access-Control-Allow-Origin"] == "*"  # any page may read it, never with cookies
        assert "Access-Control-Allow-Credentials" not in response
    stored = dict(Event.objects.values_list("message_id", "type"))
    assert stored == {f"ajs-{short}": call["type"] for short, call in calls.items()}


@pytest.mark.django_db
def test_analytics_js_batches_to_b_and_a_bad_event_is_quarantined_and_readable(client, write_key):
    body = {"writeKey": write_key, "sentAt": "2026-12-06T10:00:00.000Z", "batch": [
        {"type": "track", "event": "Viewed", "userId": "ada", "messageId": "b-1"},
        {"type": "track", "event": "", "userId": "ada", "messageId": "b-2"},
        {"type": "page", "name": "Home", "anonymousId": "anon-7", "messageId": "b-3"},
    ]}
    response = _post(client, "/v1/b", body)

    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == "*"
    assert [r["field"] for r in response.json()["rejected"]] == ["batch[1].event"]
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["b-1", "b-3"]
    assert QuarantinedEvent.objects.count() == 1


@pytest.mark.django_db
def test_a_preflight_is_answered_without_reaching_a_view_and_allows_what_the_sdk_asks(client):
    response = client.options("/v1/track", HTTP_ORIGIN=SHOP, HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST",
                              HTTP_ACCESS_CONTROL_REQUEST_HEADERS="authorization,content-type,anonymousid")

    assert response.status_code == 204 and "Content-Type" not in response
    assert response["Access-Control-Allow-Origin"] == "*"
    assert "POST" in response["Access-Control-Allow-Methods"]
    assert response["Access-Control-Allow-Headers"] == "authorization,content-type,anonymousid"
    assert int(response["Access-Control-Max-Age"]) > 0


@pytest.mark.django_db
def test_errors_carry_the_cors_headers_too_so_the_sdk_can_read_them(client, source, write_key):
    unauthorized = _post(client, "/v1/t", {"type": "track", "event": "X", "userId": "u", "writeKey": "wk_wrong"})
    assert unauthorized.status_code == 401 and unauthorized["Access-Control-Allow-Origin"] == "*"

    source.rate_limit = 1
    source.save()
    event = {"type": "track", "event": "X", "userId": "u", "writeKey": write_key}
    assert _post(client, "/v1/t", event).status_code == 200
    limited = _post(client, "/v1/t", event)
    assert limited.status_code == 429
    assert limited["Access-Control-Allow-Origin"] == "*"
    # analytics.js waits X-RateLimit-Reset seconds; the browser shows it only when exposed
    assert limited["X-RateLimit-Reset"] == limited["Retry-After"]
    assert "X-RateLimit-Reset" in limited["Access-Control-Expose-Headers"]


@pytest.mark.django_db
def test_origins_can_be_narrowed_and_the_console_and_management_api_answer_no_other_origin(
        client, write_key, settings):
    settings.EVENT_API_CORS_ORIGINS = ["https://Shop.example.com"]
    event = {"type": "track", "event": "X", "userId": "u", "writeKey": write_key}

    shop = _post(client, "/v1/t", event)
    assert shop["Access-Control-Allow-Origin"] == SHOP and "Origin" in shop["Vary"]
    other = _post(client, "/v1/t", event, origin="https://evil.example.net")
    assert other.status_code == 200 and "Access-Control-Allow-Origin" not in other  # stored; the page cannot read it
    settings.EVENT_API_CORS_ORIGINS = ["*"]
    for path in ("/api/v1/customers/", "/admin/login/"):
        assert "Access-Control-Allow-Origin" not in client.get(path, HTTP_ORIGIN=SHOP)


@pytest.mark.django_db
def test_under_a_script_prefix_the_preflight_and_the_answers_are_the_same(client, write_key, settings):
    settings.PUBLIC_BASE_URL = "https://shop.example.com"
    preflight = client.options("/v1/t", SCRIPT_NAME="/journeys", HTTP_ORIGIN=SHOP,
                               HTTP_ACCESS_CONTROL_REQUEST_METHOD="POST")
    assert preflight.status_code == 204 and preflight["Access-Control-Allow-Origin"] == "*"

    settings_ = client.get(f"/v1/projects/{write_key}/settings", SCRIPT_NAME="/journeys", HTTP_ORIGIN=SHOP)
    assert settings_.json()["integrations"]["Segment.io"]["apiHost"] == "shop.example.com/journeys/v1"


@pytest.mark.django_db
def test_analytics_js_settings_point_its_one_destination_at_this_server(client, source, write_key, settings):
    settings.PUBLIC_BASE_URL = "https://journeys.example.com/"  # as in the links of messages, whatever the Host
    response = client.get(f"/v1/projects/{write_key}/settings", HTTP_ORIGIN=SHOP, HTTP_HOST="localhost:8000")

    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == "*"
    body = response.json()
    assert body["integrations"] == {"Segment.io": {
        "apiKey": write_key, "apiHost": "journeys.example.com/v1", "protocol": "https",
        "unbundledIntegrations": [], "addBundledMetadata": True, "maybeBundledConfigIds": {}}}
    assert body["metrics"]["sampleRate"] == 0 and body["remotePlugins"] == []

    settings.PUBLIC_BASE_URL = settings.PUBLIC_BASE_URL_DEFAULT  # not set: the origin the SDK reached
    assert client.get(f"/v1/projects/{write_key}/settings", secure=True).json()["integrations"]["Segment.io"][
        "apiHost"] == "testserver/v1"

    wrong = client.get("/v1/projects/wk_nope/settings")
    assert wrong.status_code == 401 and wrong.json()["message"] == "invalid write key"
    source.enabled = False
    source.save()
    assert client.get(f"/v1/projects/{write_key}/settings").status_code == 403


@pytest.mark.django_db
def test_rudderstack_js_loads_its_source_config_and_posts_beacons(client, source, write_key):
    """rudder-sdk-js v3 refuses to start without a valid source config (an id, a config object, a
    list of destinations) from `{configUrl}/sourceConfig/`; with `useBeacon` it posts text/plain
    batches to `{dataPlaneUrl}/beacon/v1/batch?writeKey=...`."""
    response = client.get("/v1/sourceConfig/", {"p": "npm", "v": "3.11.0", "build": "modern", "writeKey": write_key},
                          HTTP_ORIGIN=SHOP)
    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == "*"
    config = response.json()["source"]
    assert config["id"] == str(source.pk) and config["config"] == {} and config["destinations"] == []
    basic = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
    assert client.get("/v1/sourceConfig/", HTTP_AUTHORIZATION=basic).status_code == 200
    assert client.get("/v1/sourceConfig", {"writeKey": write_key}).status_code == 200  # configUrl ".../sourceConfig"
    assert client.get("/v1/sourceConfig/", {"writeKey": "wk_nope"}).status_code == 401

    beacon = client.post(f"/beacon/v1/batch?writeKey={write_key}", content_type="text/plain;charset=UTF-8",
                         data=json.dumps({"sentAt": "2026-12-06T10:00:00.000Z", "batch": [
                             {"type": "track", "event": "Left Page", "anonymousId": "anon-3", "messageId": "bcn-1"},
                             {"type": "track", "event": "", "anonymousId": "anon-3", "messageId": "bcn-2"}]}),
                         HTTP_ORIGIN=SHOP)
    assert beacon.status_code == 200 and [r["field"] for r in beacon.json()["rejected"]] == ["batch[1].event"]
    assert list(Event.objects.values_list("message_id", flat=True)) == ["bcn-1"]
    assert client.post("/beacon/v1/batch?writeKey=wk_nope", content_type="text/plain",
                       data=json.dumps({"batch": [{"type": "track", "event": "X", "userId": "u"}]})).status_code == 401


@pytest.mark.django_db
def test_a_chunked_batch_without_content_length_is_read_not_refused_as_empty(client, write_key, settings):
    """Segment's Android SDK streams its batches (Transfer-Encoding: chunked, no Content-Length) to
    /v1/b and deletes a batch answered with a 4xx. gunicorn de-chunks the body into wsgi.input;
    Django reads nothing without a Content-Length, and the batch was refused as empty."""
    body = json.dumps({"writeKey": write_key, "batch": [
        {"type": "track", "event": "App Opened", "anonymousId": "android-1", "messageId": "and-1"},
        {"type": "screen", "name": "Home", "anonymousId": "android-1", "messageId": "and-2"}]}).encode()

    response = client.generic("POST", "/v1/b", b"", content_type="text/plain", CONTENT_LENGTH="",
                              HTTP_TRANSFER_ENCODING="chunked", **{"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})

    assert response.status_code == 200, response.content
    assert sorted(Event.objects.values_list("message_id", flat=True)) == ["and-1", "and-2"]
    # a chunked body over the limit is still a 413, however it came
    big = io.BytesIO(b'{"batch": [' + b" " * settings.EVENT_API["MAX_BATCH_BYTES"] + b"]}")
    assert client.generic("POST", "/v1/b", b"", content_type="text/plain", CONTENT_LENGTH="",
                          HTTP_TRANSFER_ENCODING="chunked",
                          **{"wsgi.input": big, "wsgi.input_terminated": True}).status_code == 413


# -- a real browser: Chromium enforces CORS on a page served from another origin -------------------


class _ShopPage(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = b"<!doctype html><title>shop</title><p>shop</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def shop_origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ShopPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


_SEND = """
const [api, key, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const read = (r) => r.json().then((body) => ({status: r.status, body}), () => ({status: r.status}));
const fail = (e) => ({error: String(e)});
// one after another, as each SDK's queue sends (the test server writes to SQLite one at a time)
const calls = [
  // analytics.js, standard delivery: text/plain, no preflight
  () => fetch(api + "/v1/t", {method: "post", keepalive: true, headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({type: "track", event: "Viewed Pricing", userId: "ada", messageId: "web-t", writeKey: key})})
    .then(read, fail),
  // analytics.js, batching delivery, with a bad event in the batch
  () => fetch(api + "/v1/b", {method: "post", headers: {"Content-Type": "text/plain"},
    body: JSON.stringify({writeKey: key, batch: [
      {type: "page", name: "Home", anonymousId: "anon-web", messageId: "web-b1"},
      {type: "track", event: "", userId: "ada", messageId: "web-b2"}]})}).then(read, fail),
  // RudderStack's JavaScript SDK: JSON with an Authorization header, preflighted by the browser
  () => fetch(api + "/v1/track", {method: "POST",
    headers: {"Content-Type": "application/json;charset=UTF-8", "Authorization": "Basic " + btoa(key + ":"),
              "AnonymousId": btoa("anon-web")},
    body: JSON.stringify({type: "track", event: "Added to Cart", userId: "ada", messageId: "web-r"})})
    .then(read, fail),
  () => fetch(api + "/v1/projects/" + key + "/settings").then(read, fail),
  () => fetch(api + "/v1/sourceConfig/?writeKey=" + key, {headers: {"Authorization": "Basic " + btoa(key + ":")}})
    .then(read, fail),
];
calls.reduce((chain, call) => chain.then((out) => call().then((one) => [...out, one])), Promise.resolve([]))
  .then(done);
"""


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_a_page_on_the_shops_origin_sends_and_reads_the_answers(live_server, browser, shop_origin):
    source, key = make_source("website")
    browser.get(shop_origin + "/")

    track, batch, rudder, sdk_settings, rudder_config = browser.execute_async_script(_SEND, live_server.url, key)

    assert track == {"status": 200, "body": {"success": True}}
    assert batch["status"] == 200 and [r["field"] for r in batch["body"]["rejected"]] == ["batch[1].event"]
    assert rudder == {"status": 200, "body": {"success": True}}
    assert sdk_settings["status"] == 200
    assert sdk_settings["body"]["integrations"]["Segment.io"]["apiKey"] == key
    assert rudder_config["status"] == 200 and rudder_config["body"]["source"]["destinations"] == []
    assert sorted(Event.objects.filter(source=source).values_list("message_id", flat=True)) == [
        "web-b1", "web-r", "web-t"]
