#!/usr/bin/env bash
# Runs the whole suite. Uses DATABASE_URL when set (PostgreSQL), else SQLite.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest "$@"
