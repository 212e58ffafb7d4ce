#!/usr/bin/env bash
# Quorum queues, 3 nodes on this machine (issue 15): Warren's 3-node cluster against
# RabbitMQ 3.10.8's 3-node cluster (Debian's package), plus a single Warren node's classic
# durable queue for reference. Same warren-perf workload against each: persistent 1 KiB
# messages, publisher confirms with a window per producer (PerfTest's --confirm), one
# consumer; reports confirmed msg/s and publish→confirm latency p50/p99.
#
#   nice -n -15 scripts/bench/quorum.sh                  # 10 s runs, 3 repeats
#   scripts/bench/quorum.sh --duration 20 --repeat 5
#
# Options:
#   --duration S     seconds per run (default 10)
#   --repeat N       runs of each (broker, workload); interleaved: Warren QQ, RabbitMQ QQ,
#                    Warren classic, then again (default 3); the median run by confirm rate
#                    is reported
#   --producers LIST publishers per workload, comma-separated (default 1,4)
#   --confirm N      unconfirmed messages in flight per producer (default 100)
#   --brokers LIST   subset of warren,rabbitmq,classic (default all three)
#   --skip-build     use the existing target/release binaries
#   --results DIR    where the JSON results go (default target/bench/quorum-<timestamp>)
#
# All three stay up for the whole run (idle between their runs) so that forming the
# clusters is paid once; every run uses a fresh queue, deleted afterwards. Ports are free
# ones picked at start; only 127.0.0.1 is used; RabbitMQ nodes are qqbenchN@localhost.
# Environment: WARREN_BIN, the warren binary to run (default target/release/warren);
# WARREN_EXTRA_CONF, config lines added to every Warren node's file (e.g.
# 'warren.threads = 1', for an A/B run of a setting).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DURATION=10
REPEAT=3
PRODUCERS=1,4
CONFIRM=100
BROKERS=warren,rabbitmq,classic
BUILD=1
RES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --producers) PRODUCERS="$2"; shift 2 ;;
        --confirm) CONFIRM="$2"; shift 2 ;;
        --brokers) BROKERS="$2"; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        --results) RES="$2"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

log() { echo "[quorum $(date -u +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }
has() { [[ ",$BROKERS," == *",$1,"* ]]; }

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
TOOL="$ROOT/scripts/bench/amqp_tool.py"
BIN="$ROOT/target/release"
if [ "$BUILD" = 1 ]; then
    log "building release warren, warrenctl, warren-perf"
    (cd "$ROOT" && cargo build --release -q -p server -p perf --bin warren --bin warrenctl --bin warren-perf)
fi
WARREN_BIN="${WARREN_BIN:-$BIN/warren}"   # another build's warren, e.g. a baseline
for b in warren warrenctl warren-perf; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it or drop --skip-build)"; done

[ -n "$RES" ] || RES="$ROOT/target/bench/quorum-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RES"
RES="$(cd "$RES" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/warren-qq.XXXXXX")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PIDS=()        # every process we started (warren nodes, rabbitmq-server scripts)
RMQ_NODES=()   # RabbitMQ node names, to stop with rabbitmqctl
RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RMQ_CTL=/usr/lib/rabbitmq/bin/rabbitmqctl
RHOME="$WORK/rabbit-home"
rmqctl() { timeout 120 env HOME="$RHOME" "$RMQ_CTL" "$@"; }
cleanup() {
    set +e
    for n in "${RMQ_NODES[@]}"; do rmqctl -n "$n" stop >/dev/null 2>&1; done
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_amqp() { "$PY" "$TOOL" wait --port "$1" --timeout 120 >/dev/null || die "nothing answers AMQP on $1 (logs in $RES)"; }

declare -A PORT PIDOF
# ------------------------------------------------------------------ RabbitMQ, 3 nodes
RMQ_PIDS=""
if has rabbitmq; then
    [ -x "$RMQ_SERVER" ] || die "no $RMQ_SERVER: apt-get install rabbitmq-server (see scripts/bench/brokers.sh)"
    mkdir -p "$RHOME"
    printf 'log.file.level = warning\nlog.console = false\n' > "$WORK/rabbitmq.conf"
    echo '[].' > "$WORK/enabled_plugins"   # no management plugin
    for i in 1 2 3; do
        n="qqbench$i@localhost"
        PORT[rq$i]=$(free_port)
        env HOME="$RHOME" RABBITMQ_NODENAME="$n" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
            RABBITMQ_NODE_PORT="${PORT[rq$i]}" RABBITMQ_DIST_PORT="$(free_port)" \
            RABBITMQ_MNESIA_BASE="$WORK/rq$i/mnesia" RABBITMQ_LOG_BASE="$WORK/rq$i/log" \
            RABBITMQ_CONFIG_FILE="$WORK/rabbitmq.conf" RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/enabled_plugins" \
            RABBITMQ_PID_FILE="$WORK/rq$i/rabbit.pid" "$RMQ_SERVER" >>"$RES/rabbitmq-$i.log" 2>&1 &
        PIDS+=($!); RMQ_NODES+=("$n")
        # The first node creates the Erlang cookie in $HOME; the others must read the same.
        [ "$i" = 1 ] && wait_amqp "${PORT[rq1]}"
    done
    for i in 2 3; do
        wait_amqp "${PORT[rq$i]}"
        rmqctl -n "qqbench$i@localhost" stop_app >/dev/null
        rmqctl -n "qqbench$i@localhost" join_cluster qqbench1@localhost >/dev/null
        rmqctl -n "qqbench$i@localhost" start_app >/dev/null
        wait_amqp "${PORT[rq$i]}"
    done
    for i in 1 2 3; do PIDOF[rq$i]=$(cat "$WORK/rq$i/rabbit.pid"); RMQ_PIDS+="${PIDOF[rq$i]} "; done
    rmqctl -n qqbench1@localhost cluster_status > "$RES/rabbitmq-cluster-status.txt"
    grep -q qqbench3 "$RES/rabbitmq-cluster-status.txt" || die "RabbitMQ nodes did not cluster"
    log "RabbitMQ cluster up (queues declared on qqbench1, clients on it)"
fi

# ------------------------------------------------------------------ Warren, 3 nodes
if has warren; then
    WHOME="$WORK/warren-home"; mkdir -p "$WHOME"
    conf="cluster_formation.peer_discovery_backend = classic_config\n"
    for i in 1 2 3; do
        RAFT[$i]=$(free_port)
        conf+="cluster_formation.classic_config.nodes.$i = qq$i@127.0.0.1:${RAFT[$i]}\n"
    done
    # WARREN_EXTRA_CONF: more lines for every Warren node's config (A/B runs of a setting).
    conf+="${WARREN_EXTRA_CONF:-}\n"
    printf "$conf" > "$WORK/warren-cluster.conf"
    for i in 1 2 3; do
        PORT[wq$i]=$(free_port)
        env HOME="$WHOME" RABBITMQ_ERLANG_COOKIE= "$WARREN_BIN" --config "$WORK/warren-cluster.conf" \
            --node-name "qq$i@127.0.0.1" --amqp-port "${PORT[wq$i]}" --bind 127.0.0.1 \
            --management-port 0 --prometheus-port 0 --data-dir "$WORK/wq$i" >>"$RES/warren-qq$i.log" 2>&1 &
        PIDS+=($!); PIDOF[wq$i]=$!
    done
    for i in 1 2 3; do wait_amqp "${PORT[wq$i]}"; done
    # Clients go to the Raft leader (where every quorum queue's leader is).
    leader=""
    for _ in $(seq 1 100); do
        leader=$(WARREN_DATA_DIR="$WORK/wq1" "$BIN/warrenctl" -q --formatter json cluster_status 2>/dev/null \
            | python3 -c 'import json,sys; print(json.load(sys.stdin).get("leader") or "")' 2>/dev/null || true)
        [ -n "$leader" ] && break
        sleep 0.2
    done
    [ -n "$leader" ] || die "the Warren cluster elected no leader"
    WLEAD="wq${leader:2:1}"   # qq2@127.0.0.1:PORT -> wq2
    log "Warren cluster up, leader $leader (AMQP port ${PORT[$WLEAD]})"
fi

# ------------------------------------------------------------------ Warren, single node
if has classic; then
    PORT[wc]=$(free_port)
    "$WARREN_BIN" --amqp-port "${PORT[wc]}" --bind 127.0.0.1 --management-port 0 --prometheus-port 0 \
        --data-dir "$WORK/wc" >>"$RES/warren-single.log" 2>&1 &
    PIDS+=($!); PIDOF[wc]=$!
    wait_amqp "${PORT[wc]}"
    log "Warren single node up"
fi

# cpu_of PIDS...: user + system seconds of those processes together
cpu_of() {
    local t=0 p
    for p in "$@"; do t=$(awk -v t="$t" -v hz="$(getconf CLK_TCK)" '{print t + ($14 + $15) / hz}' "/proc/$p/stat"); done
    echo "$t"
}

delete_queue() { # PORT QUEUE
    "$PY" - "$1" "$2" <<'EOF' >/dev/null 2>&1 || true
import sys, pika
c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(sys.argv[1])))
c.channel().queue_delete(sys.argv[2])
c.close()
EOF
}

# one_run KIND PRODUCERS REPEAT: KIND is warren (3-node quorum), rabbitmq (3-node quorum) or
# classic (single Warren node, durable classic queue)
one_run() {
    local kind="$1" x="$2" r="$3" port pids args q id
    case "$kind" in
        warren) port="${PORT[$WLEAD]}"; pids="${PIDOF[wq1]} ${PIDOF[wq2]} ${PIDOF[wq3]}"; args=(--queue-args x-queue-type=quorum) ;;
        rabbitmq) port="${PORT[rq1]}"; pids="$RMQ_PIDS"; args=(--queue-args x-queue-type=quorum) ;;
        classic) port="${PORT[wc]}"; pids="${PIDOF[wc]}"; args=() ;;
    esac
    id="$kind-x$x.$r"
    q="qq-$kind-x$x-r$r-"
    local c0 c1
    # shellcheck disable=SC2086
    c0=$(cpu_of $pids)
    "$BIN/warren-perf" --uri "amqp://guest:guest@127.0.0.1:$port/%2f" -x "$x" -y 1 -s 1024 -c "$CONFIRM" -p \
        --durable-queue "${args[@]}" --queue-prefix "$q" -q 1000 -A 100 --latency -z "$DURATION" --json --quiet \
        >"$RES/$id.json" 2>"$RES/$id.err" || log "$id: warren-perf failed (see $RES/$id.err)"
    # shellcheck disable=SC2086
    c1=$(cpu_of $pids)
    awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.3f\n", b - a}' > "$RES/$id.cpu"
    if [ "$kind" = warren ]; then
        # Where the queue's own Raft group was led (the clients are on $WLEAD).
        python3 - "$WORK/wq1/warren.sock" "${q}0" <<'EOF' > "$RES/$id.leader" 2>/dev/null || true
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(("GET /api/queues/%%2f/%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % sys.argv[2]).encode())
data = b""
while True:
    b = s.recv(65536)
    if not b: break
    data += b
print(json.loads(data.split(b"\r\n\r\n", 1)[1]).get("leader"))
EOF
        log "$id: queue leader $(cat "$RES/$id.leader"), clients on $leader"
    fi
    delete_queue "$port" "${q}0"
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); c=d.get("confirm_latency_us") or {}; print("%s: %.0f confirmed/s, confirm p50 %s us p99 %s us" % (sys.argv[2], d["confirm_rate"], c.get("p50"), c.get("p99")))' \
        "$RES/$id.json" "$id" >&2 2>/dev/null || true
}

{
    echo "started $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "warren binary $WARREN_BIN"
    echo "warren $(git -C "$ROOT" rev-parse --short=12 HEAD) dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no | grep -c . || true)"
    echo "duration=$DURATION repeat=$REPEAT producers=$PRODUCERS confirm=$CONFIRM nice=$(nice)"
    echo "uptime before: $(uptime)"
} > "$RES/meta.txt"
sleep 2
IFS=, read -r -a XS <<<"$PRODUCERS"
for r in $(seq 1 "$REPEAT"); do
    for x in "${XS[@]}"; do
        for kind in warren rabbitmq classic; do
            has "$kind" && one_run "$kind" "$x" "$r"
        done
    done
done
echo "uptime after: $(uptime)" >> "$RES/meta.txt"
python3 "$ROOT/scripts/bench/quorum_report.py" "$RES" "$REPEAT" "$PRODUCERS" | tee "$RES/report.md"
log "results in $RES"
