#!/usr/bin/env bash
# `make run`: migrate, create the demo admin, load demo data, then run the web
# server (gunicorn), the django-q2 event workers and the schedules cluster together.
# Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PORT=${PORT:-8000}

$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput -v 0
$PY manage.py load_demo

pids=()
stop() {
  trap - INT TERM EXIT
  echo "stopping web and workers..."
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

.venv/bin/gunicorn config.wsgi --bind "127.0.0.1:$PORT" --workers "${WEB_WORKERS:-2}" --access-logfile - &
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
