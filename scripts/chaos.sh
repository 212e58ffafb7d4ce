#!/usr/bin/env bash
# Seeded chaos run for quorum queues (issue 15): three warren processes on 127.0.0.1 with
# a TCP fault proxy in front of each inter-node listener; publishers with confirms and
# consumers (pika) on random nodes; kill -9, SIGTERM restarts, partitions and leader
# rebalances of one random node at a time (never more than a minority), then heal, drain and check that
# every confirmed message was delivered at least once. Details: scripts/chaos.py.
#
#   scripts/chaos.sh                       5 minutes of faults (plus drain and checks)
#   scripts/chaos.sh --seed 7 --minutes 10 replay a schedule (the seed is printed first)
#   scripts/chaos.sh --smoke               the CI version: 45 s of faults, about 60 s in all
#   scripts/chaos.sh --keep                keep the work dir (node logs, summary.json)
#
# Prints a JSON summary (seed, events, published/confirmed/nacked/delivered, duplicates,
# lost); exits 1 when a confirmed message was lost. Results of full runs: docs/cluster.md
# ("Faults across processes").
#
# Environment: WARREN_BIN (default target/debug/warren, built first with warrenctl; pass a
# release binary for long runs, with warrenctl beside it); WARREN_LOG (the nodes' log filter, default warn).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

keep=0
args=()
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
        *) args+=("$arg") ;;
    esac
done

source "$ROOT/scripts/venv.sh"

if [[ -z "${WARREN_BIN:-}" ]]; then
    # Built (a no-op when it is up to date): a stale binary would not know today's keys.
    cargo build -q -p server --bin warren --bin warrenctl
    WARREN_BIN="$ROOT/target/debug/warren"
fi
[[ -x "$WARREN_BIN" ]] || { echo "error: broker binary not found at $WARREN_BIN" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/warren-chaos.XXXXXX")"
PY_PID=""
cleanup() {
    rc=$?
    [[ -n "$PY_PID" ]] && kill "$PY_PID" 2>/dev/null || true
    # The nodes the driver started (it stops them itself when it ends normally).
    # (Only a pid that is still a warren on this work dir: pids get reused.)
    for pidfile in "$WORK"/n*.pid; do
        [[ -e "$pidfile" ]] || continue
        pid="$(cat "$pidfile")"
        if { tr '\0' ' ' < "/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$WORK"; then
            kill -9 "$pid" 2>/dev/null || true
        fi
    done
    if [[ $rc -eq 0 && $keep -eq 0 ]]; then
        rm -rf "$WORK"
    else
        echo "work dir kept: $WORK" >&2
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

"$VENV/bin/python" -u scripts/chaos.py --work "$WORK" --warren-bin "$WARREN_BIN" ${args[@]+"${args[@]}"} &
PY_PID=$!
wait "$PY_PID"
