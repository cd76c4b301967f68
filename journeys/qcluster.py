"""A q2 cluster that comes back by itself when a worker is killed while it waits for a task
(django-q2 issue #23, open upstream).

The workers of a cluster read one multiprocessing task queue, and the worker waiting for the next
task holds the queue's read lock while it waits. Killed then (the OOM killer, `kill -9`), it takes
the lock with it: the guard starts a new worker, but no worker of the cluster takes a task again,
and a SIGTERM no longer stops it (the STOP pills are never read). A pusher killed while it writes
to the queue leaves its write lock taken the same way.

`WatchedSentinel` is q2's sentinel (the process that guards the workers) with one more check each
guard cycle. Once a process that holds those locks has died (a worker while idle, or the pusher),
the cluster counts as frozen when tasks wait in the queue and its read lock stays taken for
`Q_FREEZE_S` seconds (a live worker waiting on a queue with tasks in it takes one within
microseconds). The sentinel then waits until no worker is running a task, kills the idle workers
and the pusher, moves the tasks still in the old queue to a new one and starts them again on it.
A task that cannot be carried over (it was half read, or still in the dead pusher's buffer) is
handed out again by the ORM broker after `Q_RETRY`, as after any worker crash. A SIGTERM that
comes meanwhile first does the same, so the cluster stops.

`install()` (JourneysConfig.ready) makes q2's Cluster start this sentinel, whichever way the
cluster is started (`manage.py qcluster`, tests)."""

from __future__ import annotations

import os
import signal
import struct
import time
from multiprocessing.reduction import ForkingPickler

from django.conf import settings
from django_q import cluster as q_cluster
from django_q.conf import Conf, logger
from django_q.humanhash import humanize
from django_q.queues import Queue

IDLE = -1  # a worker's timer while it waits for a task (q2: django_q.worker)


class _EachCycle:
    """The cluster's stop event as the sentinel's guard loop sees it: the loop waits on it once a
    cycle, so `each_cycle` runs first. Everything else goes to the event.

    The wait is a sleep, then a look at the event, not `Event.wait`: a process asleep in a
    multiprocessing Event's wait counts as a sleeper of its condition, and `Event.set` waits for
    every sleeper to wake. A SIGTERM to the whole process group (systemd's default
    `KillMode=control-group`, `kill -TERM -- -<pgid>`, supervisord's `stopasgroup`) kills the
    sentinel (q2 gives it the default SIGTERM action) while it sleeps there, and the main process's
    `stop_event.set()` then waited for it for ever ("stopping." and nothing more). Now the main
    process sets the event, finds the sentinel gone and exits; the workers got the same SIGTERM."""

    def __init__(self, event, each_cycle) -> None:
        self._event, self._each_cycle = event, each_cycle

    def wait(self, timeout: float | None = None) -> bool:
        self._each_cycle()
        if timeout:
            time.sleep(timeout)
        return self._event.is_set()

    def __getattr__(self, name: str):
        return getattr(self._event, name)


class WatchedSentinel(q_cluster.Sentinel):
    def __init__(self, stop_event, start_event, cluster_id, broker=None, timeout=None, start=True) -> None:
        self.suspect = False  # a process that holds the task queue's locks died since the queue was made
        self.stuck_since: float | None = None
        super().__init__(_EachCycle(stop_event, self.freeze_check), start_event, cluster_id, broker, timeout,
                         start=False)
        if start:
            self.start()

    def reincarnate(self, process) -> None:
        if process is self.pusher or (process in self.pool and process.timer.value == IDLE):
            self.suspect = True
        super().reincarnate(process)

    def stop(self) -> None:
        if self.suspect and self.read_lock_taken():
            self.workers_idle_wait(timeout=self.timeout or 30)
            self.unfreeze()
        super().stop()

    def read_lock_taken(self) -> bool:
        lock = self.task_queue._rlock
        if lock.acquire(block=False):
            lock.release()
            return False
        return True

    def workers_busy(self) -> bool:
        return any(p.is_alive() and p.timer.value > 0 for p in self.pool)

    def workers_idle_wait(self, *, timeout: float) -> None:
        ends = time.monotonic() + timeout
        while self.workers_busy() and time.monotonic() < ends:
            time.sleep(0.1)

    def freeze_check(self) -> None:
        """Each guard cycle: after a suspect death, is the queue stuck (tasks in it, its read lock
        taken) and has it been for Q_FREEZE_S? Then start the workers again on a new queue."""
        if not self.suspect:
            return
        if self.task_queue.qsize() <= 0 or not self.read_lock_taken():
            self.stuck_since = None
            return
        now = time.monotonic()
        self.stuck_since = self.stuck_since or now
        if now - self.stuck_since >= settings.Q_FREEZE_S and not self.workers_busy():
            self.unfreeze()

    def unfreeze(self) -> None:
        logger.critical(
            "Q Cluster %s: the task queue is stuck (a worker or the pusher was killed holding its lock): "
            "restarting the workers and the pusher on a new queue", humanize(self.cluster_id.hex))
        old = self.task_queue
        for process in [*self.pool, self.pusher]:
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
            process.join(timeout=5)
        left = _tasks_left(old)
        self.task_queue = Queue(maxsize=Conf.QUEUE_LIMIT) if Conf.QUEUE_LIMIT else Queue()
        self.pool = []
        for __ in range(self.pool_size):
            self.spawn_worker()
        self.pusher = self.spawn_pusher()
        for task in left:
            self.task_queue.put(task)
        old._reader.close()
        old._writer.close()
        self.suspect, self.stuck_since = False, None
        self.reincarnations += 1
        logger.critical("Q Cluster %s: workers restarted; %d waiting task(s) carried over",
                        humanize(self.cluster_id.hex), len(left))


def _tasks_left(queue: Queue) -> list:
    """The whole tasks still in `queue`'s pipe, read without its read lock (whoever holds it is
    dead, and no one else reads now). Framing as multiprocessing.Connection writes it: a 4-byte
    big-endian length (-1: an 8-byte length follows), then the pickled task. Stops at the first
    frame that is cut short or does not unpickle (the dead reader had taken part of it)."""
    fd = queue._reader.fileno()
    os.set_blocking(fd, False)
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    tasks, at = [], 0
    while len(data) - at >= 4:
        (size,), start = struct.unpack_from("!i", data, at), at + 4
        if size == -1 and len(data) - start >= 8:
            (size,), start = struct.unpack_from("!Q", data, start), start + 8
        if size < 0 or len(data) - start < size:
            break
        try:
            tasks.append(ForkingPickler.loads(bytes(data[start:start + size])))
        except Exception:  # noqa: BLE001 - a torn frame: the rest cannot be framed either
            break
        at = start + size
    return tasks


def install() -> None:
    q_cluster.Sentinel = WatchedSentinel
