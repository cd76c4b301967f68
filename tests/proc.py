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
                 extra_env: dict | None = None):
        self.app_name = app_name
        env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "Q_SYNC", "PYTEST_CURRENT_TEST"}}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            DATABASE_URL=db_url,
            Q_WORKERS=str(workers),
            Q_RETRY=str(retry),
            Q_TIMEOUT=str(timeout),
            PGAPPNAME=app_name,  # libpq: lets the test find this cluster's connections in pg_stat_activity
            PYTHONUNBUFFERED="1",
            LOG_LEVEL=os.environ.get("QCLUSTER_LOG_LEVEL", "INFO"),
            **(extra_env or {}),
        )
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
