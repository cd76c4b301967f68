// Sends one batch with a bad event through a real client library, the way an app would.
// usage: node send.js segment|rudder BASE_URL WRITE_KEY ; prints one JSON line {"errors": [...]}
"use strict";
const [kind, url, writeKey] = process.argv.slice(2);
const errors = [];
const bad = "x".repeat(300); // the bad event: a 300-character name
const events = [
  ["identify", { userId: "cy", traits: { email: "cy@example.com", plan: "pro" } }],
  ["track", { userId: "cy", event: "Order Completed", properties: { total: 120 } }],
  ["track", { userId: "cy", event: bad, properties: { total: 1 } }],
  ["page", { userId: "cy", category: "Docs", name: "Pricing" }],
  ["track", { userId: "cy", event: "Checkout Started", properties: { step: 1 } }],
];

async function segment() {
  const { Analytics } = require("@segment/analytics-node");
  const client = new Analytics({ writeKey, host: url, maxEventsInBatch: 100, flushInterval: 1000, maxRetries: 3 });
  client.on("error", (err) => errors.push(String(err && (err.reason || err.message || err))));
  for (const [method, body] of events) client[method](body);
  await client.closeAndFlush({ timeout: 20000 });
}

async function rudder() {
  const Analytics = require("@rudderstack/rudder-sdk-node");
  const client = new Analytics(writeKey, {
    dataPlaneUrl: url, flushAt: 100, flushInterval: 1000, retryCount: 3, logLevel: "error",
    errorHandler: (err) => errors.push(String(err && (err.message || err))),
  });
  for (const [method, body] of events) client[method](body);
  await client.flush();
}

(kind === "segment" ? segment() : rudder())
  .then(() => { console.log(JSON.stringify({ errors })); process.exit(0); })
  .catch((err) => { console.log(JSON.stringify({ errors: [...errors, String(err)] })); process.exit(1); });
