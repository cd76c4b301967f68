"""Real processes for tests: a `manage.py qcluster` on the test database, killable.

The cluster runs in its own session (process group) so that a test can SIGKILL
all of it at once (a crashed machine) or only the worker that holds a given
database connection (an OOM-killed worker). Every process is killed when the
test ends, whatever happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

BASE_DIR = Path(__file__).resolve().parent.parent


def process_settings_env() -> dict:
    """What every process a test starts needs from the test's own settings: the same secret key
    (the test process signs tasks, the workers verify them) and the local servers allow-listed."""
    from django.conf import settings

    return {"SECRET_KEY": settings.SECRET_KEY, "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128"}


def database_url(settings_dict: dict) -> str:
    """postgresql://user:pass@host:port/name of a Django DATABASES entry (the test database's, in a test)."""
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = settings_dict.get("HOST") or ""
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgresql://{auth}{host}{port}/{quote(settings_dict['NAME'], safe='')}"


def wait_until(predicate, *, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def _pgrp(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp ... ; comm may contain spaces and parentheses.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[2]) if fields[0] != "Z" else None


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _pgrp(int(entry)) == pgid:
            pids.append(int(entry))
    return sorted(pids)


def _socket_inodes(local_port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(parts[9])
    return inodes


def pid_owning_port(local_port: int, candidates: list[int]) -> int | None:
    """Which of `candidates` owns the TCP socket bound to `local_port` (a DB client's port)."""
    wanted = {f"socket:[{inode}]" for inode in _socket_inodes(local_port)}
    if not wanted:
        return None
    for pid in candidates:
        fd_dir = Path(f"/proc/{pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    if os.readlink(fd) in wanted:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


class QCluster:
    """`manage.py qcluster` in its own process group, with production settings (not sync)."""

    def __init__(self, *, db_url: str, app_name: str, workers: int = 1, retry: int = 5, timeout: int = 4,
                 extra_env: dict | None = None, cluster_name: str | None = None):
        """`cluster_name`: run as that django-q2 cluster (Q_CLUSTER_NAME), e.g. "schedules", the
        cluster that runs the q2 schedules (settings.Q_SCHEDULE_CLUSTER); default: the main one."""
        self.app_name = app_name
        env = {k: v for k, v in os.environ.items()
               if k not in {"REDIS_URL", "Q_BROKER", "Q_SYNC", "PYTEST_CURRENT_TEST", "Q_CLUSTER_NAME"}}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=db_url,
            Q_WORKERS=str(workers),
            Q_RETRY=str(retry),
            Q_TIMEOUT=str(timeout),
            PGAPPNAME=app_name,  # libpq: lets the test find this cluster's connections in pg_stat_activity
            **process_settings_env(),
            PYTHONUNBUFFERED="1",
            LOG_LEVEL=os.environ.get("QCLUSTER_LOG_LEVEL", "INFO"),
        )
        if cluster_name:
            # The schedules cluster reads its workers/timeout/retry from ALT_CLUSTERS: ours win.
            env.update(Q_CLUSTER_NAME=cluster_name, Q_SCHEDULE_WORKERS=str(workers), Q_SCHEDULE_RETRY=str(retry),
                       Q_SCHEDULE_TIMEOUT=str(timeout))
        env.update(extra_env or {})  # may override any of the above
        self.env = env
        self.log = tempfile.NamedTemporaryFile(prefix=f"{app_name}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "QCluster":
        self.proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", str(BASE_DIR / "manage.py"), "qcluster"],
            cwd=BASE_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        return group_pids(self.pgid) if self.proc else []

    def signal(self, sig: int, pid: int | None = None) -> None:
        """Send `sig` to one process of the cluster, or (pid None) to the whole process group."""
        if pid is None:
            os.killpg(self.pgid, sig)
        else:
            assert pid in self.pids(), f"{pid} is not a process of this cluster"
            os.kill(pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group (no cleanup code runs anywhere) and reap the leader."""
        if self.proc is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        # Orphaned children are reparented; wait until none is left alive.
        deadline = time.monotonic() + 10
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def output(self, tail: int = 6000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def close(self) -> None:
        self.kill()
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> "QCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# -- more real processes: a private PostgreSQL, gunicorn, redis-server -----------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, *, timeout: float, proc: subprocess.Popen | None = None, what: str = "server") -> None:
    """Until something accepts TCP connections on 127.0.0.1:`port` (fails early if `proc` died)."""
    import socket

    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(up, timeout=timeout, interval=0.1, message=f"{what} to listen on port {port}")


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))  # as scripts/pg.sh


def private_postgres_missing() -> str | None:
    """Why a private PostgreSQL cannot be started here (None when it can)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            return f"PostgreSQL server binaries not found in {PG_BIN} (set PG_BIN; Debian: apt install postgresql-15)"
    if os.geteuid() == 0 and not (Path("/usr/sbin/runuser").exists() or Path("/sbin/runuser").exists()):
        return "running as root and runuser is missing (PostgreSQL refuses to run as root)"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster of our own (initdb + pg_ctl via scripts/pg.sh) on a free port.

    Ours to restart or stop: the shared development server is never touched. As root (CI),
    scripts/pg.sh runs the server as an unprivileged system user, as .ci/run does.
    """

    def __init__(self) -> None:
        # Not pytest's tmp_path: /tmp/pytest-of-root is 0700, the server user could not enter it;
        # as root (CI) not $TMPDIR either, which may be under /root.
        base = None if os.geteuid() else "/tmp"
        self.data_dir = tempfile.mkdtemp(prefix="proof-pg-", dir=base)
        self.state_dir = tempfile.mkdtemp(prefix="proof-pg-state-")
        self.url = ""

    def _pg_sh(self, command: str) -> str:
        env = {**os.environ, "PGDATA_DIR": self.data_dir, "PG_STATE_FILE": f"{self.state_dir}/state",
               "PG_BIN": str(PG_BIN), "PG_PORT": str(free_port())}
        done = subprocess.run(["bash", str(BASE_DIR / "scripts" / "pg.sh"), command], cwd=BASE_DIR, env=env,
                              capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise AssertionError(f"scripts/pg.sh {command} failed:\n{done.stderr[-3000:]}")
        return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""

    def start(self) -> "PrivatePostgres":
        self.url = self._pg_sh("start")
        return self

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is terminated, the server comes back on the same port."""
        self._pg_sh("restart")

    def close(self) -> None:
        import shutil

        try:
            self._pg_sh("stop")
        except AssertionError:
            pass
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> "PrivatePostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def manage(*args: str, env: dict) -> str:
    """Run manage.py with `env`; returns stdout, AssertionError (with the output) if it fails."""
    done = subprocess.run([sys.executable, "-W", "ignore", str(BASE_DIR / "manage.py"), *args], cwd=BASE_DIR,
                          env=env, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise AssertionError(f"manage.py {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def server_env(db_url: str, **extra: str) -> dict:
    """Production-like settings for a web or worker process of a test (not the tests' sync mode)."""
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "Q_BROKER", "Q_SYNC", "PYTEST_CURRENT_TEST"}}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", DATABASE_URL=db_url, DEBUG="0", **process_settings_env(),
               SECURE_SSL_REDIRECT="0", ALLOWED_HOSTS="127.0.0.1,localhost",
               EVENT_API_RATE_LIMIT="10000000", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class WebServer:
    """gunicorn serving config.wsgi (sync workers, as in production) in its own process group."""

    def __init__(self, *, env: dict, workers: int = 2, name: str = "web", args: tuple[str, ...] = ()):
        self.env, self.workers, self.name, self.args = env, workers, name, args
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WebServer":
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", "python:config.gunicorn", "config.wsgi", "--workers", str(self.workers),
             "--bind", f"127.0.0.1:{self.port}", "--no-control-socket", "--timeout", "60", *self.args],
            cwd=BASE_DIR, env=self.env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_listening(self.port, timeout=60, proc=self.proc, what="gunicorn")
        return self

    def output(self, tail: int = 6000) -> str:
        return Path(self.log.name).read_text(errors="replace")[-tail:]

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # the master stops its workers
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass

    def __enter__(self) -> "WebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def redis_server_missing() -> str | None:
    import shutil

    return None if shutil.which("redis-server") else "redis-server not installed (Debian: apt install redis-server)"


class RedisServer:
    """A private redis-server on a free loopback port, nothing persisted; stopped at the end."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="proof-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import shutil

        self.proc = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_listening(self.port, timeout=20, proc=self.proc, what="redis-server")
        return self

    def close(self) -> None:
        import shutil

        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the given processes together (VmRSS from /proc; vanished ones count 0)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except OSError:
            continue
    return total


class PeakRss:
    """Samples the resident memory of a process group (all of a qcluster: guard, pusher, monitor,
    workers) in a thread; `peak` is the largest sum seen, `peak_process` the largest single process."""

    def __init__(self, pgid: int, *, interval: float = 0.05):
        import threading

        self.pgid, self.interval = pgid, interval
        self.peak = self.peak_process = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = group_pids(self.pgid)
            self.peak = max(self.peak, rss_bytes(pids))
            self.peak_process = max([self.peak_process] + [rss_bytes([p]) for p in pids])
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)


def in_flight_writes(app_name: str, table: str, modes: tuple[str, ...] = ("RowExclusiveLock",)) -> list[tuple[int, int]]:
    """(backend pid, client port) of `app_name`'s connections (PGAPPNAME) to the test database
    that hold uncommitted inserts/updates on `table` (a granted RowExclusiveLock; with
    "RowShareLock" in `modes` also rows locked FOR UPDATE), PostgreSQL."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            "SELECT a.pid, a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE a.application_name = %s AND a.datname = current_database() AND l.granted"
            " AND l.locktype = 'relation' AND l.relation = %s::regclass AND l.mode = ANY(%s)",
            [app_name, table, list(modes)],
        )
        return cur.fetchall()


def freeze_mid_task(cluster: QCluster, *, table: str, ready, timeout: float = 40,
                    modes: tuple[str, ...] = ("RowExclusiveLock",)) -> tuple[int, int]:
    """Catch one of `cluster`'s workers inside a task: wait until `ready()` and a worker holds
    uncommitted writes on `table`, SIGSTOP the whole cluster, and check that the transaction is
    still open (it did not commit in between; while frozen nothing moves). Returns (backend pid,
    worker pid) with the cluster left frozen: SIGKILL the worker or the group, or SIGCONT it."""
    for _attempt in range(50):
        backend_pid, client_port = wait_until(
            lambda: ready() and in_flight_writes(cluster.app_name, table, modes), timeout=timeout, interval=0.01,
            message=f"a task half done\n{cluster.output()}",
        )[0]
        worker = pid_owning_port(client_port, cluster.pids())
        assert worker not in (None, cluster.pgid), "could not find the worker process"
        cluster.signal(signal.SIGSTOP)
        if backend_pid in [pid for pid, _ in in_flight_writes(cluster.app_name, table, modes)]:
            return backend_pid, worker
        cluster.signal(signal.SIGCONT)
    raise AssertionError("never caught a worker inside a task")


# -- threads ---------------------------------------------------------------------------------------


def run_in_threads(*calls, timeout: float = 60):
    """Run each call in its own thread (each with its own DB connection), started together.
    Returns [(result, started, finished)]; re-raises the first exception."""
    import threading

    from django.db import connections

    barrier = threading.Barrier(len(calls))
    out: list = [None] * len(calls)
    errors: list[BaseException] = []

    def target(i, call):
        try:
            barrier.wait(timeout=10)
            started = time.monotonic()
            result = call()
            out[i] = (result, started, time.monotonic())
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=target, args=(i, c), daemon=True) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a worker thread hung (deadlock?)"
    if errors:
        raise errors[0]
    return out


class committed_meanwhile:
    """`with committed_meanwhile(write):` runs `write` in a transaction on another connection (a
    thread) before the body, and commits it `after` seconds into the body: a body that touches the
    same rows waits on them and sees the write commit under its feet (another worker's batch)."""

    def __init__(self, write, *, after: float = 0.5):
        import threading

        self.write, self.after = write, after
        self.written, self.release = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from django.db import connections, transaction

        try:
            with transaction.atomic():
                self.write()
                self.written.set()
                self.release.wait(10)
        except BaseException as exc:  # noqa: BLE001 - reported when the body ends
            self.errors.append(exc)
        finally:
            self.written.set()
            connections.close_all()

    def __enter__(self):
        import threading

        self.thread.start()
        assert self.written.wait(10), "the other transaction never wrote"
        threading.Timer(self.after, self.release.set).start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "the other transaction hung"
        if self.errors and exc[0] is None:
            raise self.errors[0]
