# Broker control shared by scripts/bench.sh and scripts/bench-scale.sh (sourced, not run).
# The caller sets: WARREN (binary), WPORT/RPORT/RDIST (ports), WORK (scratch dir with
# rabbitmq.conf and enabled_plugins), RHOME, RES (results dir, for the brokers' logs),
# PY + TOOL (amqp_tool.py, for wait_ready), and log/die functions.
# WARREN_EXTRA (array, optional): more flags for warren.

RMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
RMQ_CTL=/usr/lib/rabbitmq/bin/rabbitmqctl

# Install Debian's rabbitmq-server unless it is there.
install_rabbitmq() {
    [ -x "$RMQ_SERVER" ] && return 0
    log "installing Debian's rabbitmq-server"
    # Keep the package's postinst from starting a system-wide broker on 5672.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server
    [ "$made_policy" = 1 ] && rm -f "$policy"
    [ -x "$RMQ_SERVER" ] || die "rabbitmq-server did not install"
}

BROKER_PID=""   # the process whose RSS/CPU is measured (warren, or RabbitMQ's beam.smp)
LAUNCH_PID=""   # our direct child (warren itself, or the rabbitmq-server shell script)
CUR=""          # which broker is up
DATA=""         # its data directory

# broker_cmd BROKER: the command line that starts it on $DATA, into the array CMD
broker_cmd() {
    if [ "$1" = warren ]; then
        CMD=("$WARREN" --amqp-port "$WPORT" --bind 127.0.0.1 --management-port 0 --prometheus-port 0 --data-dir "$DATA/data" "${WARREN_EXTRA[@]}")
    else
        CMD=(env HOME="$RHOME"
            RABBITMQ_NODENAME=bench@localhost
            RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
            RABBITMQ_NODE_PORT="$RPORT"
            RABBITMQ_DIST_PORT="$RDIST"
            RABBITMQ_MNESIA_BASE="$DATA/mnesia"
            RABBITMQ_LOG_BASE="$DATA/log"
            RABBITMQ_CONFIG_FILE="$WORK/rabbitmq.conf"
            RABBITMQ_ENABLED_PLUGINS_FILE="$WORK/enabled_plugins"
            RABBITMQ_PID_FILE="$DATA/rabbit.pid")
    fi
}

rabbitmqctl_stop() {
    timeout 60 env HOME="$RHOME" RABBITMQ_NODENAME=bench@localhost RABBITMQ_DIST_PORT="$RDIST" \
        "$RMQ_CTL" -n bench@localhost stop "$DATA/rabbit.pid" >/dev/null 2>&1
}

port_of() { if [ "$1" = warren ]; then echo "$WPORT"; else echo "$RPORT"; fi; }

# launch BROKER DATADIR: start without waiting (the restart timing needs that)
launch() {
    CUR="$1"; DATA="$2"
    mkdir -p "$DATA"
    rm -f "$DATA/rabbit.pid"
    broker_cmd "$CUR"
    if [ "$CUR" = warren ]; then
        "${CMD[@]}" >>"$RES/warren.log" 2>&1 &
        LAUNCH_PID=$!
        BROKER_PID=$LAUNCH_PID
    else
        "${CMD[@]}" "$RMQ_SERVER" >>"$RES/rabbitmq.log" 2>&1 &
        LAUNCH_PID=$!
        BROKER_PID=""
    fi
}

# wait_ready: until the broker completes an AMQP handshake; sets BROKER_PID
wait_ready() {
    "$PY" "$TOOL" wait --port "$(port_of "$CUR")" --timeout 120 >/dev/null || die "$CUR did not start (see $RES/$CUR.log)"
    if [ "$CUR" = rabbitmq ]; then
        BROKER_PID="$(cat "$DATA/rabbit.pid")"
    fi
    kill -0 "$BROKER_PID" 2>/dev/null || die "$CUR is not running"
}

start_fresh() { # BROKER NAME
    local dir="$WORK/$1-$2"
    rm -rf "$dir"
    launch "$1" "$dir"
    wait_ready
    sleep 1   # let it settle before RSS readings
}

# alive PID: running (a zombie left by a launcher that exited does not count)
alive() { [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }

# stop: SIGTERM to the broker (RabbitMQ's beam.smp handles it as a clean shutdown), wait
stop_broker() {
    [ -n "$LAUNCH_PID" ] || return 0
    local t0 t1 i
    t0=$(date +%s%N)
    if [ "$CUR" = rabbitmq ] && [ -n "$BROKER_PID" ]; then
        rabbitmqctl_stop || kill -TERM "$BROKER_PID" 2>/dev/null || true
    else
        kill -TERM "$BROKER_PID" 2>/dev/null || true
    fi
    for i in $(seq 1 600); do
        alive "$LAUNCH_PID" || break
        sleep 0.1
    done
    if alive "$LAUNCH_PID"; then
        log "$CUR did not stop within 60 s: SIGKILL"
        [ -n "$BROKER_PID" ] && kill -KILL "$BROKER_PID" 2>/dev/null || true
        kill -KILL "$LAUNCH_PID" 2>/dev/null || true
    fi
    wait "$LAUNCH_PID" 2>/dev/null || true
    t1=$(date +%s%N)
    STOP_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
    LAUNCH_PID=""; BROKER_PID=""
}


rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
dir_bytes() { du -sb "$1" | awk '{print $1}'; }
uri() { echo "amqp://guest:guest@127.0.0.1:$(port_of "$1")/%2f"; }
