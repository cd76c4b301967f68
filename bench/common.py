"""Shared plumbing for the benchmarks in bench/.

A benchmark needs the real thing: PostgreSQL, a migrated database, an event
source and the web server as a separate process. `stack()` sets all of that
up and always tears it down again (even on an error or Ctrl-C); `report()`
prints the one JSON line that scripts/bench.sh collects.

    with stack() as s:          # s.database_url, s.port, s.write_key, s.source_id
        ...
    report("ingest", events_per_s=..., baseline_per_s=..., ratio=...)

Uses DATABASE_URL when it is set (a fresh database is created on that server
and dropped afterwards), else starts a private PostgreSQL with scripts/pg.sh.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import psycopg

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PG_STATE = ROOT / "tmp" / "pg.state"
LOG_DIR = ROOT / "tmp"  # git-ignored; the last run's server logs stay here


def log(message: str) -> None:
    """Progress goes to stderr so that stdout ends with the JSON line only."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def report(bench: str, **figures: object) -> None:
    """The last stdout line of every benchmark: {"bench": name, ...figures}."""
    print(json.dumps({"bench": bench, **figures}), flush=True)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that `finally` blocks (teardown) still run."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    """Child process ids (Linux /proc)."""
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


# --- PostgreSQL -------------------------------------------------------------


def _pg_sh(command: str, pgdata: str) -> str:
    """Run scripts/pg.sh for our own data dir.

    pg.sh also writes and deletes tmp/pg.state, which someone else's running
    test database may rely on; we put back whatever was there before.
    """
    saved = PG_STATE.read_bytes() if PG_STATE.exists() else None
    try:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "pg.sh"), command],
            env={**os.environ, "PGDATA_DIR": pgdata},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:  # initdb/pg_ctl chatter is only worth showing when it failed
            raise RuntimeError(f"scripts/pg.sh {command} failed:\n{done.stderr[-3000:]}")
    finally:
        if saved is None:
            PG_STATE.unlink(missing_ok=True)
        else:
            PG_STATE.write_bytes(saved)
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """Yield the URL of an empty database; it is gone again afterwards."""
    given = os.environ.get("DATABASE_URL", "")
    if given:
        # Never benchmark into someone's real database: make a throwaway one beside it.
        name = f"bench_{os.getpid()}_{secrets.token_hex(3)}"
        with psycopg.connect(given, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlunparse(urlparse(given)._replace(path=f"/{name}"))
        finally:
            with psycopg.connect(given, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return
    pgdata = tempfile.mkdtemp(prefix="bench-pg-")
    try:
        log(f"starting PostgreSQL in {pgdata}")
        url = _pg_sh("start", pgdata)
        yield url
    finally:
        with contextlib.suppress(Exception):
            _pg_sh("stop", pgdata)
        with contextlib.suppress(OSError):  # keep the server log for a look afterwards
            shutil.copyfile(Path(pgdata) / "server.log", LOG_DIR / "bench-postgres.log")
        shutil.rmtree(pgdata, ignore_errors=True)


# --- Django and the web server ----------------------------------------------


def server_env(database_url: str, **overrides: str) -> dict[str, str]:
    """Production-like settings for the server and manage.py.

    DEBUG off (DEBUG=1 would keep every SQL query in memory); no HTTPS redirect
    since we talk plain HTTP on loopback; a rate limit nobody reaches; the
    django-q2 ORM broker, not sync mode, so enqueueing costs what it costs in
    production (no worker runs: events stay pending, which is fine here).
    """
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "0",
        "SECRET_KEY": "bench-" + secrets.token_hex(24),
        "SECURE_SSL_REDIRECT": "0",
        "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8,::1/128",  # local vendors (HTTP/SMTP sinks)
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "EVENT_API_RATE_LIMIT": "10000000",
        "LOG_LEVEL": "WARNING",
        "Q_SYNC": "0",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    env.pop("REDIS_URL", None)  # the default broker (ORM) unless a benchmark asks otherwise
    env.update(overrides)
    return env



def django_in_process(url: str) -> None:
    """Migrate the bench database and set Django up in this process, with production-like settings
    (for benches that call services directly rather than through a server)."""
    env = server_env(url)
    log("migrating")
    manage("migrate", "--noinput", "-v", "0", env=env)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE", "Q_SYNC")})
    import django

    django.setup()

def manage(*args: str, env: dict[str, str]) -> str:
    """Run manage.py; returns its stdout (stderr passes through)."""
    done = subprocess.run(
        [str(PYTHON), "manage.py", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return done.stdout


def _stop(proc: subprocess.Popen, name: str) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()  # gunicorn's master stops its workers on SIGTERM
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop in 15 s; killing it")
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the master and its workers
        proc.wait()


@contextlib.contextmanager
def gunicorn(
    env: dict[str, str], *, workers: int = 2, port: int | None = None, name: str = "gunicorn"
) -> Iterator[tuple[int, subprocess.Popen]]:
    """Run the WSGI app as run.sh does (sync workers); yields (port, master process).

    Its log goes to tmp/bench-<name>.log (kept for a look afterwards).
    """
    port = port or free_port()
    LOG_DIR.mkdir(exist_ok=True)
    logpath = LOG_DIR / f"bench-{name}.log"
    command = [str(GUNICORN), "-c", "python:config.gunicorn", "config.wsgi", "--workers", str(workers)]
    command += ["--bind", f"127.0.0.1:{port}"]
    # The default control socket path is shared with any other gunicorn (make run).
    command += ["--no-control-socket"]
    with open(logpath, "w") as logfile:
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so _stop can kill all of it
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {proc.returncode}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1),
            ):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not start listening within 60 s")
            time.sleep(0.1)
        yield port, proc
    except BaseException:
        log(f"gunicorn log tail:\n{logpath.read_text()[-2000:]}")
        raise
    finally:
        _stop(proc, "gunicorn")


def worker_pids(master: subprocess.Popen) -> list[int]:
    """The gunicorn worker processes (children of the master), e.g. to attach a profiler."""
    return _children(master.pid)


# --- CPU accounting -----------------------------------------------------------
# Wall-clock rates depend on whatever else runs on the machine; CPU seconds
# spent by the server and by PostgreSQL per event do not (much), so the
# benchmarks report both.

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, including those already reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICK + sum(
        tree_cpu(child) for child in _children(pid)
    )


def postmaster_pid(conn: psycopg.Connection) -> int:
    """The PostgreSQL server's main process (the parent of our backend), for tree_cpu().

    0 when the server runs on another machine (its CPU then counts as 0).
    """
    backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


@dataclass
class Stack:
    database_url: str
    env: dict[str, str]
    write_key: str
    source_id: int
    port: int = 0
    server: subprocess.Popen | None = field(default=None, repr=False)

    def connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.database_url, **kwargs)


@contextlib.contextmanager
def stack(
    *, workers: int = 2, source: str = "bench", env: dict[str, str] | None = None
) -> Iterator[Stack]:
    """PostgreSQL + migrated database + one event source + gunicorn; all torn down afterwards."""
    with postgres() as url:
        server = server_env(url, **(env or {}))
        log("migrating")
        manage("migrate", "--noinput", "-v", "0", env=server)
        key = manage("create_source", source, env=server).strip().splitlines()[-1]
        with psycopg.connect(url) as conn:
            source_id = conn.execute(
                "SELECT id FROM journeys_source WHERE name = %s", [source]
            ).fetchone()[0]
        s = Stack(database_url=url, env=server, write_key=key, source_id=source_id)
        log(f"starting gunicorn with {workers} workers")
        with gunicorn(server, workers=workers) as (port, proc):
            s.port, s.server = port, proc
            yield s


# --- workers and memory -------------------------------------------------------


@contextlib.contextmanager
def qcluster(env: dict[str, str], *, q_workers: int = 2, name: str = "bench",
             cluster_name: str | None = None) -> Iterator[subprocess.Popen]:
    """One `manage.py qcluster` (Q_WORKERS workers) in its own session; stopped (then killed) afterwards.
    `cluster_name="schedules"` starts the cluster that runs the q2 schedules (settings.Q_SCHEDULE_CLUSTER)
    instead of the event workers.

    Its log goes to tmp/bench-qcluster-<name>.log.
    """
    LOG_DIR.mkdir(exist_ok=True)
    extra = {"Q_WORKERS": str(q_workers)}
    if cluster_name:
        extra.update(Q_CLUSTER_NAME=cluster_name, Q_SCHEDULE_WORKERS=str(q_workers))
    with open(LOG_DIR / f"bench-qcluster-{name}.log", "w") as logfile:
        proc = subprocess.Popen(
            [str(PYTHON), "manage.py", "qcluster"], env={**env, **extra}, cwd=ROOT,
            stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                log(f"qcluster {name} did not stop in 30 s; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum, largest) resident bytes of a process and its live descendants (VmRSS, /proc)."""
    sizes = []
    stack_ = [pid]
    while stack_:
        p = stack_.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = Path(f"/proc/{p}/status").read_text()
            sizes.append(int(status.split("VmRSS:")[1].split()[0]) * 1024)
        stack_.extend(_children(p))
    return sum(sizes), max(sizes, default=0)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)
