#!/usr/bin/env bash
# Scale benchmark (issue 14): Warren vs RabbitMQ with many queues, bindings, connections and
# consumers, and churn. One broker at a time, a fresh broker per workload group; the
# workloads are `warren-scale` subcommands (crates/perf/src/scale.rs), each writing one JSON
# object; scripts/bench/scale_report.py puts both brokers side by side (ratio, target,
# met or not) into docs/benchmarks-scale.md between its "scale-results" markers.
#
#   scripts/bench-scale.sh                     # full sizes (100k queues, 1M bindings, 50k connections)
#   scripts/bench-scale.sh --smoke             # small sizes, a few minutes
#   scripts/bench-scale.sh --long              # churn for 10 minutes instead of 60 s
#
# Options:
#   --queues N          queues to declare (default 100000)
#   --bindings N        topic bindings (default 1000000)
#   --connections N     connections publishing 1 msg/s (default 50000)
#   --consumers N       consumers on one queue / queues with one consumer (default 10000)
#   --churn-seconds S   duration of each churn workload (default 60; --long: 600)
#   --route-seconds S   duration of the routing and fanout workloads (default 10)
#   --conn-seconds S    duration of the connection workloads, after they are open (default 30)
#   --rabbit-scale F    RabbitMQ runs the queue/binding/connection/consumer workloads at
#                       this fraction of the sizes (default 1; RabbitMQ at 1M bindings takes
#                       far longer than ~10 minutes a workload). Warren runs at the full size
#                       and also at the reduced one, so the ratios compare equal sizes.
#   --smoke             --queues 2000 --bindings 20000 --connections 1000 --consumers 500
#                       --churn-seconds 5 --route-seconds 3 --conn-seconds 5
#   --long              --churn-seconds 600
#   --brokers LIST      warren,rabbitmq (default both)
#   --only LIST         subset of: transient,durable,fanout,connections,consumers,churn
#   --skip-build        use the existing target/release binaries
#   --results DIR       raw JSON results (default target/bench-scale/<timestamp>)
#   --report-only DIR   only regenerate the docs from an earlier results directory
#   --no-docs           do not touch docs/benchmarks-scale.md
#
# Environment: WARREN_BENCH_PORT (default 5899; RabbitMQ uses it minus one, its Erlang
# distribution port that plus 20000). Only loopback addresses (127.0.0.x) are used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL="$ROOT/scripts/bench/amqp_tool.py"
REPORT="$ROOT/scripts/bench/scale_report.py"

QUEUES=100000
BINDINGS=1000000
CONNECTIONS=50000
CONSUMERS=10000
CHURN_S=60
ROUTE_S=10
CONN_S=30
RABBIT_SCALE=1
BROKERS="warren,rabbitmq"
ONLY="transient,durable,fanout,connections,consumers,churn"
BUILD=1
RES=""
REPORT_ONLY=""
DOCS=1
ARGS="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --queues) QUEUES="$2"; shift 2 ;;
        --bindings) BINDINGS="$2"; shift 2 ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --consumers) CONSUMERS="$2"; shift 2 ;;
        --churn-seconds) CHURN_S="$2"; shift 2 ;;
        --route-seconds) ROUTE_S="$2"; shift 2 ;;
        --conn-seconds) CONN_S="$2"; shift 2 ;;
        --rabbit-scale) RABBIT_SCALE="$2"; shift 2 ;;
        --smoke) QUEUES=2000; BINDINGS=20000; CONNECTIONS=1000; CONSUMERS=500; CHURN_S=5; ROUTE_S=3; CONN_S=5; shift ;;
        --long) CHURN_S=600; shift ;;
        --brokers) BROKERS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        --results) RES="$2"; shift 2 ;;
        --report-only) REPORT_ONLY="$2"; shift 2 ;;
        --no-docs) DOCS=0; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench-scale.sh: %s\n' "$*" >&2; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
has_broker() { [[ ",$BROKERS," == *",$1,"* ]]; }
PY="$(python3 -c 'import sys; print(sys.executable)')"

make_docs() {
    [ "$DOCS" = 1 ] || return 0
    "$PY" "$REPORT" --results "$1" --md "$ROOT/docs/benchmarks-scale.md"
    log "wrote docs/benchmarks-scale.md (raw results: $1)"
}
if [ -n "$REPORT_ONLY" ]; then make_docs "$REPORT_ONLY"; exit 0; fi

cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    # (--bin applies to every -p: name the perf binaries too)
    log "cargo build --release -p server -p perf --bin warren --bin warren-scale"
    cargo build --release -p server -p perf --bin warren --bin warren-scale
fi
WARREN="$ROOT/target/release/warren"
SCALE="$ROOT/target/release/warren-scale"
[ -x "$WARREN" ] && [ -x "$SCALE" ] || die "missing $WARREN or $SCALE"

# shellcheck source=bench/brokers.sh
source "$ROOT/scripts/bench/brokers.sh"
has_broker rabbitmq && install_rabbitmq

# Descriptors: each connection costs one in the tool and one in the broker (both inherit
# this limit; Warren also raises its soft limit to the hard one itself).
want_fds=$((CONNECTIONS + CONSUMERS + 10000))
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$want_fds" ]; then
    ulimit -Hn "$want_fds" 2>/dev/null || log "cannot raise the hard descriptor limit to $want_fds (not root?)"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
# Each source address has its own ephemeral port range (about 28k ports here).
PORTS=$(awk '{print $2 - $1}' /proc/sys/net/ipv4/ip_local_port_range)
SOURCES=$(( (CONNECTIONS + CONSUMERS) / (PORTS - 2000) + 1 ))

WPORT="${WARREN_BENCH_PORT:-5899}"
RPORT=$((WPORT - 1))
RDIST=$((RPORT + 20000))
for p in "$WPORT" "$RPORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use on 127.0.0.1 (set WARREN_BENCH_PORT)"; fi
done
[ -n "$RES" ] || RES="$ROOT/target/bench-scale/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RES"
RES="$(cd "$RES" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/warren-bench-scale.XXXXXX")"
RHOME="$WORK/rabbit-home"
mkdir -p "$RHOME"
cat > "$WORK/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$RPORT
log.file.level = warning
log.console = false
EOF
echo '[].' > "$WORK/enabled_plugins"

cat > "$RES/meta.env" <<EOF
ARGS="$ARGS"
QUEUES=$QUEUES
BINDINGS=$BINDINGS
CONNECTIONS=$CONNECTIONS
CONSUMERS=$CONSUMERS
CHURN_S=$CHURN_S
ROUTE_S=$ROUTE_S
CONN_S=$CONN_S
RABBIT_SCALE=$RABBIT_SCALE
NOFILE=$NOFILE
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
WARREN_REV=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
WARREN_DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)
RABBITMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
EOF

WARREN_EXTRA=(--fd-reserve 256)

EPMD_WAS_UP=1
if has_broker rabbitmq && command -v epmd >/dev/null && ! epmd -names >/dev/null 2>&1; then EPMD_WAS_UP=0; fi
cleanup() {
    local rc=$?
    stop_broker || true
    if [ "$EPMD_WAS_UP" = 0 ]; then epmd -kill >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# scale BROKER ID ARGS...: one warren-scale run against the broker that is up, JSON into
# $RES/BROKER/ID.json (a failed run leaves ID.err and no ID.json: "not measured").
scale() {
    local b="$1" id="$2"; shift 2
    mkdir -p "$RES/$b"
    echo "warren-scale $*" > "$RES/$b/$id.cmd"
    log "$b / $id: warren-scale $*"
    local rc=0
    timeout 1800 "$SCALE" --uri "$(uri "$b")" --broker-pid "$BROKER_PID" "$@" >"$RES/$b/$id.json.tmp" 2>"$RES/$b/$id.err" || rc=$?
    if [ "$rc" = 0 ]; then
        mv "$RES/$b/$id.json.tmp" "$RES/$b/$id.json"
        cut -c1-400 "$RES/$b/$id.json" >&2
    else
        rm -f "$RES/$b/$id.json.tmp"
        log "$b / $id: warren-scale exited $rc: $(tail -3 "$RES/$b/$id.err")"
    fi
}

start_fresh() { # BROKER NAME
    local dir="$WORK/$1-$2"
    rm -rf "$dir"
    launch "$1" "$dir"
    wait_ready
    sleep 1
}
finish() { stop_broker; rm -rf "$DATA"; }

# group_transient BROKER TAG Q B: declare (1 and 10 connections), bind, route, delete.
group_transient() {
    local b="$1" t="$2" q="$3" n="$4"
    start_fresh "$b" "transient$t"
    scale "$b" "declare_1c$t" --prefix tq1- declare --queues "$q"
    scale "$b" "delete_1c$t" --prefix tq1- delete --queues "$q"
    scale "$b" "declare_10c$t" --conns 10 --prefix tq- declare --queues "$q"
    scale "$b" "bind_10c$t" --conns 10 --prefix tq- bind --queues "$q" --bindings "$n"
    scale "$b" "route$t" route --bindings "$n" --duration "$ROUTE_S"
    scale "$b" "delete_10c$t" --conns 10 --prefix tq- delete --queues "$q"
    finish
}

# group_durable BROKER TAG Q B: durable declares and bindings, a backlog in 1 % of the
# queues, restart (time to accept, time until every queue answers), delete.
group_durable() {
    local b="$1" t="$2" q="$3" n="$4"
    start_fresh "$b" "durable$t"
    local dir="$DATA"
    scale "$b" "declare_durable_1c$t" --prefix dq1- declare --queues "$((q / 10))" --durable
    scale "$b" "delete_durable_1c$t" --prefix dq1- delete --queues "$((q / 10))"
    scale "$b" "declare_durable_10c$t" --conns 10 --prefix dq- declare --queues "$q" --durable
    scale "$b" "bind_durable_10c$t" --conns 10 --prefix dq- bind --queues "$q" --bindings "$n" --durable
    local filled=$(( q / 100 > 0 ? q / 100 : 1 ))
    scale "$b" "fill$t" --prefix dq- fill --queues "$filled" --messages 10
    stop_broker
    log "$b / restart$t: $q durable queues, $n durable bindings, $((filled * 10)) messages"
    CUR="$b"; DATA="$dir"
    broker_cmd "$b"
    [ "$b" = rabbitmq ] && CMD+=("$RMQ_SERVER")
    rm -f "$DATA/rabbit.pid" "$WORK/launched.pid"
    mkdir -p "$RES/$b"
    echo "warren-scale --conns 10 --window 10 restart --queues $q --messages $((filled * 10)) -- <broker>" > "$RES/$b/restart$t.cmd"
    timeout 1800 "$SCALE" --uri "$(uri "$b")" --conns 10 --window 10 --prefix dq- restart --queues "$q" \
        --messages "$((filled * 10))" --pid-file "$WORK/launched.pid" --log "$RES/$b.log" -- "${CMD[@]}" \
        > "$RES/$b/restart$t.json" 2> "$RES/$b/restart$t.err" || { log "$b / restart$t failed: $(tail -3 "$RES/$b/restart$t.err")"; rm -f "$RES/$b/restart$t.json"; }
    cat "$RES/$b/restart$t.json" >&2 || true
    LAUNCH_PID="$(cat "$WORK/launched.pid")"
    if [ "$b" = rabbitmq ]; then
        for _ in $(seq 1 100); do [ -s "$DATA/rabbit.pid" ] && break; sleep 0.1; done
        BROKER_PID="$(cat "$DATA/rabbit.pid" 2>/dev/null || echo "")"
    else
        BROKER_PID="$LAUNCH_PID"
    fi
    scale "$b" "delete_durable_10c$t" --conns 10 --prefix dq- delete --queues "$q"
    finish
}

scaled() { awk -v n="$1" -v f="$RABBIT_SCALE" 'BEGIN { printf "%d", n * f }'; }

run_broker() {
    local b="$1" q="$QUEUES" n="$BINDINGS" c="$CONNECTIONS" k="$CONSUMERS"
    local small=0
    if [ "$b" = rabbitmq ] && [ "$RABBIT_SCALE" != 1 ]; then
        q=$(scaled "$QUEUES"); n=$(scaled "$BINDINGS"); c=$(scaled "$CONNECTIONS"); k=$(scaled "$CONSUMERS")
    fi
    if [ "$b" = warren ] && [ "$RABBIT_SCALE" != 1 ]; then small=1; fi
    if want transient; then
        group_transient "$b" "" "$q" "$n"
        [ "$small" = 1 ] && group_transient "$b" "_small" "$(scaled "$QUEUES")" "$(scaled "$BINDINGS")"
    fi
    if want durable; then
        group_durable "$b" "" "$q" "$n"
        [ "$small" = 1 ] && group_durable "$b" "_small" "$(scaled "$QUEUES")" "$(scaled "$BINDINGS")"
    fi
    if want fanout; then
        start_fresh "$b" fanout
        scale "$b" fanout fanout --queues 1000 --duration "$ROUTE_S"
        finish
    fi
    if want connections; then
        local cs
        for cs in "$c" $([ "$small" = 1 ] && scaled "$CONNECTIONS"); do
            local t=""; [ "$cs" != "$c" ] && t="_small"
            start_fresh "$b" connections
            scale "$b" "connections_publish$t" connections --n "$cs" --duration "$CONN_S" --source-addrs "$SOURCES"
            finish
            start_fresh "$b" connections
            scale "$b" "connections_consume$t" connections --n "$cs" --duration "$CONN_S" --consume --source-addrs "$SOURCES"
            finish
        done
    fi
    if want consumers; then
        local per=$(( k / 100 > 0 ? 100 : 1 ))
        start_fresh "$b" consumers
        scale "$b" consumers_one_queue --conns "$per" consumers --n "$k" --layout one-queue --messages $((k * 20))
        finish
        start_fresh "$b" consumers
        scale "$b" consumers_queue_each --conns "$per" consumers --n "$k" --layout queue-each --messages $((k * 20))
        finish
    fi
    if want churn; then
        start_fresh "$b" churn
        scale "$b" conn_churn conn-churn --rate 5000 --threads 2 --duration "$CHURN_S"
        finish
        start_fresh "$b" churn
        scale "$b" queue_churn --conns 10 queue-churn --duration "$CHURN_S"
        finish
    fi
}

T_START=$(date +%s)
for b in warren rabbitmq; do
    has_broker "$b" || continue
    run_broker "$b"
done
echo "ELAPSED=$(( $(date +%s) - T_START ))" >> "$RES/meta.env"
log "all workloads done in $(( $(date +%s) - T_START )) s"
make_docs "$RES"
