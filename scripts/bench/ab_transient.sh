#!/usr/bin/env bash
# A/B throughput of two warren builds: transient 1 producer 1 consumer, 16 B, prefetch
# 1000, ack every 100 (bench.sh's "transient"), runs interleaved A B A B ... so that
# drift on a shared machine hits both alike, a fresh broker per run, the management API
# on in both (its statistics sampler runs).
#
#   scripts/bench/ab_transient.sh BASE_DIR NEW_DIR [REPS] [SECONDS]
#
# AB_BASE_MGMT=0: the base build predates the management API (no --management-port).
#
# BASE_DIR and NEW_DIR hold a `warren` binary each; NEW_DIR's `warren-perf` drives both.
# Prints each build's consume rates (msg/s). Only 127.0.0.1 is used.
set -euo pipefail
BASE="$1"; NEW="$2"; REPS="${3:-4}"; DUR="${4:-10}"
PORT="${AB_PORT:-5893}"; MPORT="${AB_MGMT_PORT:-15893}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
run() { # LABEL DIR EXTRA_FLAGS...
    local label="$1" dir="$2"; shift 2
    rm -rf "$OUT/data"; mkdir -p "$OUT/data"
    "$dir/warren" --amqp-port "$PORT" --bind 127.0.0.1 "$@" \
        --data-dir "$OUT/data" >"$OUT/$label.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
    "$NEW/warren-perf" --uri "amqp://guest:guest@127.0.0.1:$PORT/%2f" -z "$DUR" -x 1 -y 1 -s 16 -q 1000 -A 100 \
        --json --quiet --broker-pid "$pid" \
        | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["consume_rate"]))' >>"$OUT/$label.txt"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$REPS"); do
    if [[ "${AB_BASE_MGMT:-1}" == 1 ]]; then run base "$BASE" --management-port "$MPORT"; else run base "$BASE"; fi
    # The statistics build serves Prometheus too: off here, as RabbitMQ's bench setups do.
    run new "$NEW" --management-port "$MPORT" --prometheus-port 0
done
for l in base new; do echo "$l: $(tr '\n' ' ' <"$OUT/$l.txt")"; done
