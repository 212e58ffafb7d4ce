#!/usr/bin/env bash
# Warren vs RabbitMQ benchmark: builds, runs the performance matrix and the durable-store
# figures against each broker in turn (never both at once, a fresh broker per workload),
# then writes docs/benchmarks.md and docs/benchmarks.png.
#
#   scripts/bench.sh                 # the whole run (~15 min on 2 cores)
#   scripts/bench.sh --duration 30   # longer timed workloads (default 10 s)
#   scripts/bench.sh --repeat 5      # more runs of each timed workload (default 3)
#   scripts/bench.sh --big           # also 10M persistent 1 KiB messages into Warren (~10 GB of disk)
#
# Options:
#   --duration S        seconds per timed workload (default 10)
#   --repeat N          run each timed workload (transient, persistent, multi, large, fanout,
#                       latency) N times, each on a fresh broker, and report the median run by
#                       its key metric; with an even number of usable runs the lower of the two
#                       middle values (default 3; single runs vary by 20-30 % on a shared VM)
#   --big               add the 10,000,000-message store figure (Warren; needs >= 25 GB free)
#   --connections N     idle connections to hold (default 10000)
#   --store-messages N  messages in the durable-store test (default 1000000)
#   --brokers LIST      comma-separated subset of warren,rabbitmq (default both)
#   --only LIST         comma-separated subset of workloads: transient,persistent,multi,large,
#                       fanout,latency,rss,connections,store (default all)
#   --no-rabbitmq-store skip the durable-store test for RabbitMQ
#   --skip-build        use the existing target/release binaries
#   --results DIR       where raw JSON results go (default target/bench/<timestamp>)
#   --report-only DIR   only regenerate the docs from an earlier results directory
#   --no-docs           do not write docs/benchmarks.{md,png}
#
# Environment: WARREN_BENCH_PORT (default 5899; RabbitMQ uses it minus one, and its
# Erlang distribution port that plus 20000). Only 127.0.0.1 is ever used.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOL="$ROOT/scripts/bench/amqp_tool.py"
REPORT="$ROOT/scripts/bench/report.py"
MEDIAN="$ROOT/scripts/bench/median.py"

DURATION=10
REPEAT=3
BIG=0
CONNECTIONS=10000
STORE_N=1000000
BROKERS="warren,rabbitmq"
ONLY="transient,persistent,multi,large,fanout,latency,rss,connections,store"
RABBIT_STORE=1
BUILD=1
RES=""
REPORT_ONLY=""
DOCS=1
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --repeat) REPEAT="$2"; shift 2 ;;
        --big) BIG=1; shift ;;
        --connections) CONNECTIONS="$2"; shift 2 ;;
        --store-messages) STORE_N="$2"; shift 2 ;;
        --brokers) BROKERS="$2"; shift 2 ;;
        --only) ONLY="$2"; shift 2 ;;
        --no-rabbitmq-store) RABBIT_STORE=0; shift ;;
        --skip-build) BUILD=0; shift ;;
        --results) RES="$2"; shift 2 ;;
        --report-only) REPORT_ONLY="$2"; shift 2 ;;
        --no-docs) DOCS=0; shift ;;
        # the header comment, up to the first line that is not one (so it follows edits)
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'bench.sh: %s\n' "$*" >&2; exit 1; }
want() { [[ ",$ONLY," == *",$1,"* ]]; }
has_broker() { [[ ",$BROKERS," == *",$1,"* ]]; }
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "--repeat needs a positive integer, not '$REPEAT'"

# ------------------------------------------------------------------ python + matplotlib
VENV=""
setup_venv() {
    # Reuse the project's .venv (gitignored) if it exists, else make .venv-bench.
    if [ -x "$ROOT/.venv/bin/python" ]; then VENV="$ROOT/.venv"; else VENV="$ROOT/.venv-bench"; fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        log "installing matplotlib into $VENV"
        "$VENV/bin/pip" install -q matplotlib
    fi
}

make_docs() {
    [ "$DOCS" = 1 ] || return 0
    setup_venv
    "$VENV/bin/python" "$REPORT" --results "$1" --md "$ROOT/docs/benchmarks.md" --png "$ROOT/docs/benchmarks.png"
    log "wrote docs/benchmarks.md and docs/benchmarks.png (raw results: $1)"
}

if [ -n "$REPORT_ONLY" ]; then
    make_docs "$REPORT_ONLY"
    exit 0
fi

# ------------------------------------------------------------------ build + install
cd "$ROOT"
if [ "$BUILD" = 1 ]; then
    # (--bin applies to every -p: "-p server --bin warren -p perf" built no warren-perf)
    log "cargo build --release -p server -p perf --bin warren --bin warren-perf"
    cargo build --release -p server -p perf --bin warren --bin warren-perf
fi
WARREN="$ROOT/target/release/warren"
PERF="$ROOT/target/release/warren-perf"
[ -x "$WARREN" ] && [ -x "$PERF" ] || die "missing $WARREN or $PERF"

# shellcheck source=bench/brokers.sh
source "$ROOT/scripts/bench/brokers.sh"
has_broker rabbitmq && install_rabbitmq
setup_venv
PY="$(python3 -c 'import sys; print(sys.executable)')"   # not a pyenv shim: starts faster

# Many sockets: the idle-connection test needs > N descriptors in the tool and brokers.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE="$(ulimit -n)"
if [ "$NOFILE" != unlimited ] && [ "$CONNECTIONS" -gt $((NOFILE - 200)) ]; then
    CONNECTIONS=$((NOFILE - 200))
    log "ulimit -n is $NOFILE: holding $CONNECTIONS connections instead"
fi

# ------------------------------------------------------------------ layout
WPORT="${WARREN_BENCH_PORT:-5899}"
RPORT=$((WPORT - 1))
RDIST=$((RPORT + 20000))
for p in "$WPORT" "$RPORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is already in use on 127.0.0.1 (set WARREN_BENCH_PORT)"; fi
done
[ -n "$RES" ] || RES="$ROOT/target/bench/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$RES"
RES="$(cd "$RES" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/warren-bench.XXXXXX")"
RHOME="$WORK/rabbit-home"
mkdir -p "$RHOME"
cat > "$WORK/rabbitmq.conf" <<EOF
listeners.tcp.1 = 127.0.0.1:$RPORT
log.file.level = warning
log.console = false
EOF
echo '[].' > "$WORK/enabled_plugins"

cat > "$RES/meta.env" <<EOF
DURATION=$DURATION
REPEAT=$REPEAT
CONNECTIONS=$CONNECTIONS
STORE_N=$STORE_N
BIG=$BIG
WPORT=$WPORT
RPORT=$RPORT
NOFILE=$NOFILE
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
WARREN_REV=$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
WARREN_DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -c . || true)
EOF

# ------------------------------------------------------------------ broker control
WARREN_EXTRA=()

# RabbitMQ starts Erlang's port mapper daemon (epmd) if none runs; stop it at the end
# only if it was not running before.
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


# perf BROKER ID ARGS...: one warren-perf run, JSON into $RES/BROKER/ID.json
perf() {
    local b="$1" id="$2"; shift 2
    local out="$RES/$b/$id.json"
    mkdir -p "$RES/$b"
    echo "warren-perf --uri \$U $* --json --broker-pid \$PID" > "$RES/$b/$id.cmd"
    log "$b / $id: warren-perf $*"
    local rc=0
    timeout $((DURATION + 300)) "$PERF" --uri "$(uri "$b")" "$@" --json --quiet --broker-pid "$BROKER_PID" >"$out" 2>"$RES/$b/$id.err" || rc=$?
    if [ "$rc" != 0 ]; then
        echo "warren-perf exited $rc" >> "$RES/$b/$id.err"
        log "$b / $id: warren-perf exited $rc: $(tail -3 "$RES/$b/$id.err")"
    fi
    "$PY" - "$out" <<'EOF' >&2 || true
import json, sys
d = json.load(open(sys.argv[1]))
lat = d.get("latency_us") or {}
print(f"    published {d['publish_rate']:,.0f}/s  confirmed {d['confirm_rate']:,.0f}/s  consumed {d['consume_rate']:,.0f}/s"
      f"  {d['consume_bytes_per_s']/1e6:,.1f} MB/s  p99 {lat.get('p99')} us  broker cpu {d['cpu'].get('broker_core_fraction')}"
      f"  errors {d['errors'][:2]}")
EOF
}

# timed BROKER ID METRIC ARGS...: a timed workload $REPEAT times, each on a fresh broker, into
# ID.1.json ... ID.N.json; then median.py copies the median run by METRIC (a dotted JSON path)
# to ID.json, the file the report reads, and lists every run's METRIC in ID.runs.json. One run
# on this kind of machine can be 20-30 % off (a noisy neighbour, a slow start); the median
# of a few is far steadier, and is still one real run whose other figures belong together.
timed() {
    local b="$1" id="$2" metric="$3"; shift 3
    local dir="$RES/$b" i
    # A reused --results directory must not leave an earlier ID.json (or more runs than now)
    # behind: if every run fails there is no ID.json, and the report says "not measured".
    rm -f "$dir/$id".{json,cmd,err,runs.json} "$dir/$id".[0-9]*.{json,cmd,err}
    for i in $(seq 1 "$REPEAT"); do
        [ "$REPEAT" = 1 ] || log "$b / $id: run $i of $REPEAT"
        start_fresh "$b" "$id"
        perf "$b" "$id.$i" "$@"
        stop_broker
    done
    cp "$dir/$id.1.cmd" "$dir/$id.cmd"   # the same for every run; the report prints it
    "$PY" "$MEDIAN" "$dir" "$id" "$metric" "$REPEAT" || log "$b / $id: no usable run of $REPEAT"
}

# ------------------------------------------------------------------ the matrix
D="$DURATION"
run_matrix() {
    local b="$1"
    mkdir -p "$RES/$b"
    # Key metric per workload: the figure the Results table compares.
    if want transient; then
        timed "$b" transient consume_rate -z "$D" -x 1 -y 1 -s 16 -q 1000 -A 100
    fi
    if want persistent; then
        timed "$b" persistent confirm_rate -z "$D" -x 1 -y 1 -s 16 -p --durable-queue -c 1000 -q 1000 -A 100
    fi
    if want multi; then
        timed "$b" multi consume_rate -z "$D" -x 4 -y 4 -Q 4 -s 16 -q 1000 -A 100
    fi
    if want large; then
        timed "$b" large consume_bytes_per_s -z "$D" -x 1 -y 1 -s 65536 -q 1000 -A 100
    fi
    if want fanout; then
        timed "$b" fanout consume_rate -z "$D" -x 1 -y 10 --exchange perf.fanout --exchange-type fanout --fanout-queues 10 -s 16 -q 1000 -A 100
    fi
    if want latency; then
        timed "$b" latency latency_us.p99 -z "$D" -x 1 -y 1 -s 16 -r 5000 --latency -q 1000 -A 100
    fi
    if want rss; then
        start_fresh "$b" rss
        local before after
        before=$(rss_kb "$BROKER_PID")
        perf "$b" rss_publish -x 1 -y 0 -s 16 -c 1000 -C 1000000
        sleep 2
        after=$(rss_kb "$BROKER_PID")
        printf '{"rss_before_kb": %s, "rss_after_kb": %s, "hwm_kb": %s, "messages": 1000000}\n' \
            "$before" "$after" "$(hwm_kb "$BROKER_PID")" > "$RES/$b/rss.json"
        log "$b / rss: $before kB -> $after kB"
        stop_broker
    fi
    if want connections; then
        start_fresh "$b" connections
        log "$b / connections: holding $CONNECTIONS idle connections"
        echo "python3 scripts/bench/amqp_tool.py hold --port \$PORT --n $CONNECTIONS --broker-pid \$PID" > "$RES/$b/connections.cmd"
        "$PY" "$TOOL" hold --port "$(port_of "$b")" --n "$CONNECTIONS" --broker-pid "$BROKER_PID" \
            > "$RES/$b/connections.json" 2> "$RES/$b/connections.err" || log "$b / connections: tool failed: $(tail -3 "$RES/$b/connections.err")"
        cat "$RES/$b/connections.json" >&2 || true
        stop_broker
    fi
}

# ------------------------------------------------------------------ durable store
run_store() {
    local b="$1" n="$2" id="store"
    local q="store-q"
    mkdir -p "$RES/$b"
    start_fresh "$b" store
    local datadir="$DATA" rss0 rss1 hwm1 du1 du2 du3 rss2 t0 pub rec
    rss0=$(rss_kb "$BROKER_PID")
    log "$b / store: publishing $n persistent 1 KiB messages with confirms"
    pub="$RES/$b/store_publish.json"
    "$PY" "$TOOL" publish-seq --port "$(port_of "$b")" --queue "$q" --n "$n" --size 1024 --confirm 1000 \
        --broker-pid "$BROKER_PID" > "$pub" 2> "$RES/$b/store_publish.err" || log "$b / store: publish failed: $(tail -3 "$RES/$b/store_publish.err")"
    cat "$pub" >&2
    sleep 2
    rss1=$(rss_kb "$BROKER_PID"); hwm1=$(hwm_kb "$BROKER_PID")
    du1=$(dir_bytes "$datadir")
    stop_broker
    local stop_s="$STOP_SECONDS"
    log "$b / store: stopped in ${stop_s}s; restarting on the same data and timing the first basic.get"
    # The tool starts the broker itself (timing from just before its exec) and then
    # polls: connect, channel.open, basic.get until a message comes back.
    CUR="$b"; DATA="$datadir"
    broker_cmd "$b"
    [ "$b" = rabbitmq ] && CMD+=("$RMQ_SERVER")
    rm -f "$DATA/rabbit.pid" "$WORK/launched.pid"
    rec="$RES/$b/store_recover.json"
    "$PY" "$TOOL" recover-check --port "$(port_of "$b")" --queue "$q" --n "$n" --timeout 300 \
        --pid-file "$WORK/launched.pid" --launch-log "$RES/$b.log" -- "${CMD[@]}" \
        > "$rec" 2> "$RES/$b/store_recover.err" || log "$b / store: recover-check failed: $(tail -3 "$RES/$b/store_recover.err")"
    cat "$rec" >&2
    LAUNCH_PID="$(cat "$WORK/launched.pid")"
    if [ "$b" = rabbitmq ]; then BROKER_PID="$(cat "$DATA/rabbit.pid" 2>/dev/null || echo "")"; else BROKER_PID="$LAUNCH_PID"; fi
    local rss_r hwm_r
    rss_r=$(rss_kb "$BROKER_PID" 2>/dev/null || echo null); hwm_r=$(hwm_kb "$BROKER_PID" 2>/dev/null || echo null)
    du2=$(dir_bytes "$datadir")
    sleep 5
    du3=$(dir_bytes "$datadir")
    rss2=$(rss_kb "$BROKER_PID" 2>/dev/null || echo null)
    printf '{"messages": %s, "rss_before_kb": %s, "rss_after_publish_kb": %s, "hwm_after_publish_kb": %s, "du_after_publish": %s, "stop_seconds": %s, "rss_after_drain_kb": %s, "hwm_after_restart_kb": %s, "du_after_drain": %s, "du_after_drain_5s": %s, "rss_after_drain_5s_kb": %s}\n' \
        "$n" "$rss0" "$rss1" "$hwm1" "$du1" "$stop_s" "$rss_r" "$hwm_r" "$du2" "$du3" "$rss2" > "$RES/$b/store.json"
    cat "$RES/$b/store.json" >&2
    stop_broker
    rm -rf "$datadir"
}

run_big() {
    local n=10000000
    local avail
    avail=$(df -B1 --output=avail "$WORK" | tail -1)
    if [ "$avail" -lt $((25 * 1000 * 1000 * 1000)) ]; then
        log "--big: only $((avail / 1000000000)) GB free under $WORK (< 25 GB): skipped"
        echo "{\"skipped\": \"only $((avail / 1000000000)) GB free\"}" > "$RES/warren/big.json"
        return 0
    fi
    start_fresh warren big
    local rss0 rss1
    rss0=$(rss_kb "$BROKER_PID")
    perf warren big_publish -x 1 -y 0 -s 1024 -p --durable-queue -c 1000 -C "$n" --queue-prefix big-
    sleep 2
    rss1=$(rss_kb "$BROKER_PID")
    printf '{"messages": %s, "rss_before_kb": %s, "rss_after_publish_kb": %s, "hwm_kb": %s, "du_after_publish": %s}\n' \
        "$n" "$rss0" "$rss1" "$(hwm_kb "$BROKER_PID")" "$(dir_bytes "$DATA")" > "$RES/warren/big.json"
    cat "$RES/warren/big.json" >&2
    stop_broker
    rm -rf "$DATA"
}

T_START=$(date +%s)
for b in warren rabbitmq; do
    has_broker "$b" || continue
    run_matrix "$b"
    if want store && { [ "$b" = warren ] || [ "$RABBIT_STORE" = 1 ]; }; then
        run_store "$b" "$STORE_N"
    fi
    if [ "$b" = warren ] && [ "$BIG" = 1 ]; then
        run_big
    fi
done
echo "ELAPSED=$(( $(date +%s) - T_START ))" >> "$RES/meta.env"
log "all workloads done in $(( $(date +%s) - T_START )) s"
make_docs "$RES"
