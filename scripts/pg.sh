#!/usr/bin/env bash
# A throwaway PostgreSQL 15 for tests, benchmarks and local development.
#
#   scripts/pg.sh start   # last line of stdout is the DATABASE_URL
#   scripts/pg.sh stop
#   scripts/pg.sh restart # pg_ctl restart -m fast (same port): a database restart under load
#
# start: uses PGDATA_DIR (an empty or already-initialised dir) or makes one
# with mktemp -d; listens on 127.0.0.1 only, on PG_PORT or the first free port
# from 54329; trust auth (loopback only, no passwords to manage); fsync off,
# since the data is disposable. Creates database `journeys` owned by superuser
# role `journeys` (pytest-django must be able to CREATE DATABASE test_journeys).
# stop: stops the server in PGDATA_DIR (or the one the last start used) and
# deletes the data dir only if start created it.
# restart: `pg_ctl restart -m fast` of the server in PGDATA_DIR (or the last
# start's): sessions are terminated, the server comes back on the same port.
# PG_STATE_FILE (default tmp/pg.state) is where start remembers its choices;
# give each concurrent user of this script its own.
set -euo pipefail
cd "$(dirname "$0")/.."

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}   # Debian's postgresql-15 layout
PG_ROLE=${PG_ROLE:-journeys}
PG_DB=${PG_DB:-journeys}
PG_OS_USER=${PG_OS_USER:-cipg}     # only used when run as root
STATE=${PG_STATE_FILE:-tmp/pg.state}  # remembers start's choices for stop; tmp/ is git-ignored

# PostgreSQL refuses to run as root, so as root run the server as PG_OS_USER.
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local dir=${PGDATA_DIR:-} created=0 port
  if [ -z "$dir" ]; then dir=$(mktemp -d); created=1; fi
  dir=$(cd "$dir" && pwd)

  if [ "$(id -u)" = 0 ]; then
    id "$PG_OS_USER" >/dev/null 2>&1 ||
      useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_OS_USER"
    chown "$PG_OS_USER" "$dir"
    # e.g. a TMPDIR under /root would be unreachable for the server user.
    as_pg test -w "$dir" || { echo "pg.sh: $PG_OS_USER cannot write $dir" >&2; exit 1; }
  fi

  if [ ! -f "$dir/PG_VERSION" ]; then
    as_pg "$PG_BIN/initdb" -D "$dir" -U "$PG_ROLE" --auth=trust -E UTF8 --no-locale --no-sync >&2
    # Socket in the data dir: /var/run/postgresql may be missing or not ours.
    cat >>"$dir/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi

  if as_pg "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    port=$(sed -n 4p "$dir/postmaster.pid")      # already running: reuse it
  else
    port=${PG_PORT:-54329}
    local tries=1
    [ -n "${PG_PORT:-}" ] || tries=20
    while true; do
      if [ -z "${PG_PORT:-}" ]; then
        while port_in_use "$port"; do port=$((port + 1)); done
      fi
      rm -f "$dir/server.log"
      as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -o "-p $port" -w -t 60 start >&2 && break
      # Someone else bound the free port between the check and our start: take the next one.
      tries=$((tries - 1))
      if ((tries > 0)) && grep -q "Address already in use" "$dir/server.log"; then
        port=$((port + 1))
        continue
      fi
      cat "$dir/server.log" >&2
      exit 1
    done
  fi

  mkdir -p "$(dirname "$STATE")"
  printf 'dir=%q\ncreated=%q\n' "$dir" "$created" >"$STATE"

  local psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U "$PG_ROLE" -d postgres -tAq)
  [ -n "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" ] ||
    "${psql[@]}" -c "CREATE DATABASE $PG_DB"
  echo "postgresql://$PG_ROLE@127.0.0.1:$port/$PG_DB"
}

stop() {
  local dir=${PGDATA_DIR:-} created=0
  if [ -z "$dir" ] && [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"
  fi
  [ -n "$dir" ] || { echo "pg.sh: nothing to stop (no PGDATA_DIR, no $STATE)" >&2; return 0; }
  if [ -f "$dir/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >&2 || true
  fi
  rm -f "$STATE"
  if [ "$created" = 1 ]; then rm -rf "$dir"; fi
}

restart() {
  local dir=${PGDATA_DIR:-} created=0
  if [ -z "$dir" ] && [ -f "$STATE" ]; then
    # shellcheck disable=SC1090
    . "$STATE"
  fi
  [ -n "$dir" ] || { echo "pg.sh: nothing to restart (no PGDATA_DIR, no $STATE)" >&2; exit 1; }
  # Without -o, pg_ctl restarts with the options of the last start (postmaster.opts): same port.
  as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -m fast -w -t 60 restart >&2 ||
    { tail -n 30 "$dir/server.log" >&2; exit 1; }
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  *) echo "usage: $0 start|stop|restart" >&2; exit 2 ;;
esac
