#!/usr/bin/env bash
# `make bench`: run every benchmark in bench/ and print one table at the end.
#
# Each bench/*.py (bench/common.py is their shared helper, not a benchmark)
# sets up what it needs, and prints its result as one JSON object on the last
# stdout line, headline figures first. The table shows the first four figures
# of each; the full result lines are kept in tmp/bench-results.jsonl. The
# machine (cores, memory, load average at the start and the end) is printed
# with the table, since wall-clock figures depend on it.
#
#   BENCH="ingest burst" make bench    # only these benchmarks (names without .py)
set -uo pipefail   # no -e: one failing benchmark must not hide the others' results
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p tmp
RESULTS=tmp/bench-results.jsonl
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
: >"$RESULTS"
status=0

started_at=$(date -u '+%Y-%m-%d %H:%M UTC')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for script in bench/*.py; do
  name=$(basename "$script" .py)
  [ "$name" = common ] && continue
  if [ -n "${BENCH:-}" ] && [[ " $BENCH " != *" $name "* ]]; then continue; fi
  echo "== $script" >&2
  "$PY" "$script" | tee "$OUT"   # shown as it runs; the last line is the result
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || status=1
  # Keep the result line (naming the bench and a non-zero exit); a crash leaves
  # none, so record the failure instead and the table still names it.
  tail -n 1 "$OUT" | "$PY" -c '
import json, sys
name, rc = sys.argv[1], int(sys.argv[2])
try:
    result = json.loads(sys.stdin.read())
    assert isinstance(result, dict)
except (ValueError, AssertionError):
    result = {"error": "no JSON result line"}
result = {"bench": result.pop("bench", name), **result}
if rc:
    result["exit"] = rc
print(json.dumps(result))' "$name" "$rc" >>"$RESULTS"
done

MACHINE="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -m);"
MACHINE="$MACHINE load average $load_start at the start ($started_at), $(cut -d' ' -f1-3 /proc/loadavg) at the end"
"$PY" - "$RESULTS" "$MACHINE" <<'EOF'
import json, sys

rows = []
for line in open(sys.argv[1]):
    result = json.loads(line)
    name = result.pop("bench", "?")
    extra = {k: result.pop(k) for k in ("ok", "exit", "error") if k in result}
    figures = list(result.items())[:4] + list(extra.items())
    rows.append((name, "  ".join(f"{k}={v}" for k, v in figures)))
width = max([len("bench")] + [len(name) for name, _ in rows])
print(f"\nmachine: {sys.argv[2]}")
print(f"{'bench':<{width}}  key figures")
print(f"{'-' * width}  {'-' * 60}")
for name, figures in rows:
    print(f"{name:<{width}}  {figures}")
EOF
exit $status
