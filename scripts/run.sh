#!/usr/bin/env bash
# `make run`: migrate, create the demo admin, load demo data, then run the web
# server (gunicorn), the django-q2 event workers and the schedules cluster together.
# Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-8000}

# A key of this checkout's own, made once and kept in a git-ignored file; the web server and
# the worker get the same one (tasks are signed with it). An exported SECRET_KEY wins.
if [ -z "${SECRET_KEY:-}" ]; then
  if [ ! -s .secret_key ]; then
    (umask 077 && $PY -c 'import secrets; print(secrets.token_urlsafe(50))' > .secret_key)
    echo "Generated a secret key for this checkout in .secret_key (git-ignored)."
  fi
  SECRET_KEY=$(cat .secret_key)
fi
export SECRET_KEY
# The demo serves plain http on 127.0.0.1: turn off, explicitly, what only works over HTTPS
# (secure-only cookies, the HTTPS redirect, HSTS). DEBUG stays off (no tracebacks in pages).
export DEBUG=${DEBUG:-0} SECURE_SSL_REDIRECT=0 SESSION_COOKIE_SECURE=0 CSRF_COOKIE_SECURE=0 SECURE_HSTS_SECONDS=0

$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput -v 0
# A local demo with DEBUG off: load_demo refuses that unless told (its logins are admin/admin...).
$PY manage.py load_demo --allow-production

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping web and workers..."
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/gunicorn -c python:config.gunicorn config.wsgi --bind "127.0.0.1:$PORT" --workers "${WEB_WORKERS:-2}" --access-logfile - &
pids+=($!)
$PY manage.py qcluster &
pids+=($!)
# The q2 schedules (minute tick, audit...) on their own one-worker cluster, beside the event workers.
if [ "${Q_SCHEDULE_CLUSTER-schedules}" != "" ]; then
  Q_CLUSTER_NAME="${Q_SCHEDULE_CLUSTER:-schedules}" $PY manage.py qcluster &
  pids+=($!)
fi

echo "Console: http://127.0.0.1:$PORT/admin/   (login printed above)"
# Stop both as soon as either exits.
wait -n "${pids[@]}"
