#!/usr/bin/env bash
# Runs the whole suite. Uses DATABASE_URL when set (PostgreSQL), else SQLite.
#
# On both cores (pytest-xdist, TEST_WORKERS=2), so ~1,900 tests stay under 10 minutes per
# database; then the `serial` tests (real worker processes killed or frozen mid-task, racing
# ticks: tests/conftest.py) alone, so the other worker cannot starve their timing. Arguments go
# to both runs (e.g. a path). TEST_WORKERS=0: everything in one process, in one run.
set -uo pipefail
cd "$(dirname "$0")/.."
workers=${TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
# --dist load hands out tests in collection order, so each worker still runs the tests that
# flush the database (transactional ones, ordered last by pytest-django) after all the others.
# --create-db: each run makes its test databases anew. On PostgreSQL they are copies of one
# migrated template (tests/pgtemplate.py: migrated once, ~1 s a copy), so the serial run (no
# xdist: one process, nothing to share) gets a fresh database of its own without migrating.
# On PostgreSQL the template is migrated meanwhile the workers start and collect the tests.
template=
if [ -n "${DATABASE_URL:-}" ]; then
  .venv/bin/python -m tests.pgtemplate & template=$!
fi
.venv/bin/python -m pytest -n "$workers" --dist load --create-db -m "not serial" "$@"
first=$?
[ -z "$template" ] || wait "$template"
.venv/bin/python -m pytest --create-db -m serial "$@"
second=$?
[ "$first" = 5 ] && first=0    # 5: nothing selected (e.g. a path with only serial tests)
[ "$second" = 5 ] && second=0
exit $(( first || second ))
