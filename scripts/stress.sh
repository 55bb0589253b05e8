#!/usr/bin/env bash
# `make test-stress`: the signal, interrupt, kill and resume tests (pytest marker `stress`) three times
# in a row while busy loops take every core, as on a loaded CI machine or laptop. Such tests wait on
# events (a request arrived, a call is hanging, a process runs in the container), never on sleeps, so
# they pass whatever the load; this shows it.
set -euo pipefail
# Functions exported into the environment (export -f) never stand in for the programs checked here.
for f in $(compgen -A function); do unset -f "$f"; done
cd "$(dirname "$0")/.."
rounds="${STRESS_ROUNDS:-3}"
loops="${STRESS_LOOPS:-$(nproc)}"
pids=()
stop_loops() { [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap stop_loops EXIT
for _ in $(seq 1 "$loops"); do python3 -c 'while True: pass' & pids+=("$!"); done
echo "test-stress: $loops busy loops running (pids ${pids[*]})" >&2
for round in $(seq 1 "$rounds"); do
  echo "test-stress: round $round of $rounds" >&2
  if ! .venv/bin/python -m pytest -q -p no:cacheprovider -m stress "$@"; then
    echo "test-stress: round $round of $rounds failed" >&2
    exit 1
  fi
done
echo "test-stress: $rounds of $rounds rounds passed under load" >&2
