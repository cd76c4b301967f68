"""Proof under load and faults: real servers (gunicorn, qcluster, PostgreSQL, redis-server) as
separate processes, driven through the HTTP event API the way a Segment client drives it."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class SenderStats:
    statuses: Counter = field(default_factory=Counter)
    retry_after: list = field(default_factory=list)  # Retry-After of every 503 (None when missing)
    failures: list = field(default_factory=list)
    sent_ids: list = field(default_factory=list)  # messageIds of every batch that got its 200


class BatchSender:
    """Clients in threads, each POSTing /v1/batch to a real server until told to stop.

    Like Segment's libraries: a batch keeps its messageIds across retries, and a 503/429
    or a dropped connection is retried (after Retry-After, capped by `max_wait`); any
    other answer but 200 is a failure. `minimum` batches per client are always sent.
    """

    def __init__(self, *, port: int, write_key: str, clients: int = 3, per_batch: int = 20, minimum: int = 5,
                 max_wait: float = 2.0, event: str = "Order Completed", prefix: str = "m"):
        self.port, self.clients, self.per_batch, self.minimum = port, clients, per_batch, minimum
        self.max_wait, self.event, self.prefix = max_wait, event, prefix
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.stats = SenderStats()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _post(self, body: bytes):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("POST", "/v1/batch", body=body,
                         headers={"Authorization": self.auth, "Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.getheader("Retry-After"), response.read()
        except (OSError, http.client.HTTPException) as exc:
            return f"connection error {type(exc).__name__}", None, b""
        finally:
            conn.close()

    def _client(self, n: int) -> None:
        seq = 0
        while seq < self.minimum or not self.stop.is_set():
            ids = [f"{self.prefix}{n}-{seq}-{i}" for i in range(self.per_batch)]
            body = json.dumps({"batch": [
                {"type": "track", "userId": f"u{n}-{seq % 50}", "event": self.event, "messageId": mid,
                 "properties": {"seq": seq}} for mid in ids
            ]}).encode()
            deadline = time.monotonic() + 60
            while True:
                status, retry_after, answer = self._post(body)
                with self.lock:
                    self.stats.statuses[status] += 1
                    if status == 503:
                        self.stats.retry_after.append(retry_after)
                if status == 200:
                    with self.lock:
                        self.stats.sent_ids.extend(ids)
                    break
                if status not in (429, 503) and not isinstance(status, str):
                    with self.lock:
                        self.stats.failures.append(f"client {n} batch {seq}: {status} {answer[:300]!r}")
                    return
                if time.monotonic() > deadline:
                    with self.lock:
                        self.stats.failures.append(f"client {n} batch {seq}: no 200 within 60 s (last {status})")
                    return
                time.sleep(min(self.max_wait, float(retry_after or 0.2)))
            seq += 1

    def start(self) -> "BatchSender":
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def delivered(self) -> int:
        with self.lock:
            return len(self.stats.sent_ids)

    def finish(self, timeout: float = 120) -> SenderStats:
        self.stop.set()
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a client hung"
        return self.stats


@pytest.fixture
def batch_sender():
    made: list[BatchSender] = []

    def make(**kwargs) -> BatchSender:
        sender = BatchSender(**kwargs)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.stop.set()
