#!/usr/bin/env bash
# Run client libraries' own integration test suites against Warren.
#
#   scripts/client-suites.sh [--registry-only] [--suites a,b,...] [--keep]
#
# Suites (see docs/client-suites.md for what each one covers and how long it takes):
#   kombu       kombu 5.7.0 t/integration/test_py_amqp.py   (sdist from PyPI)
#   py-amqp     amqp 5.4.2 t/integration                     (sdist from PyPI)
#   amqplib     amqplib test/{channel_api,callback_api,connect}.test.js
#                                                   needs AMQPLIB_SRC (the npm
#                                                   tarball has no test/ directory)
#   pika        pika tests/acceptance                          needs PIKA_SRC
#   amqp091-go  amqp091-go `go test -tags integration ./...`   needs AMQP091_GO_SRC
#
# kombu and py-amqp come from PyPI and always run. The others run when a path
# to a checkout of their git repository is given (CI cannot clone, so they are
# not part of CI):
#   PIKA_SRC=/path/to/pika  AMQP091_GO_SRC=/path/to/amqp091-go \
#   AMQPLIB_SRC=/path/to/amqplib  scripts/client-suites.sh
# --registry-only runs kombu and py-amqp only, whatever is set (the CI smoke).
# --suites picks suites by name. --keep keeps the brokers' data directories.
#
# What it does, idempotently, under the cache dir (CLIENT_SUITES_CACHE, default
# .cache/client-suites/, git-ignored):
#   venv/            a Python venv with pytest and the clients (re-installed only
#                    when the pinned list below changes)
#   src/             the kombu and amqp sdists, unpacked (downloaded once)
#   work/<suite>/    a copy of PIKA_SRC / AMQPLIB_SRC / AMQP091_GO_SRC, patched
#                    where the suite hard-codes localhost:5672 (the source given
#                    is never modified)
#   last-run/<suite>/  output.log, warren.log, results.tsv, seconds of the last run
# For each suite it starts its own warren on a free 127.0.0.1 port with a fresh
# temporary data dir and points the suite at it (and only at it); TLS ports the
# suites ask for are pointed at a closed 127.0.0.1 port. Results are compared
# with tests/client-suites/known-failures.txt ("suite::test id | reason"); the
# script exits 1 on any failure not listed there, or when a suite did not run.
#
# Environment:
#   WARREN_BIN        broker binary (default target/debug/warren, built here)
#   WARREN_NO_BUILD=1 do not run `cargo build` first
#   WARREN_LOG        tracing filter for the brokers (e.g. debug); their logs
#                     are in last-run/<suite>/warren.log
#   PYTHON            interpreter for the venv (default python3)
#   CLIENT_SUITES_CACHE  cache dir (default <repo>/.cache/client-suites)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
HERE="$ROOT/tests/client-suites"
KNOWN="$HERE/known-failures.txt"
CACHE="${CLIENT_SUITES_CACHE:-$ROOT/.cache/client-suites}"
PYTHON="${PYTHON:-python3}"

KOMBU_VERSION=5.7.0
AMQP_VERSION=5.4.2 # kombu 5.7.0 requires amqp>=5.4.2; 5.4.2 is the newest
PY_REQS=(pytest==8.4.2 pytest-timeout==2.4.0 "amqp==$AMQP_VERSION" "kombu==$KOMBU_VERSION")
PIKA_REQS=(twisted==25.5.0 tornado==6.5.2 gevent==26.9.0)

registry_only=0
keep=0
suites_arg=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --registry-only) registry_only=1 ;;
        --suites) suites_arg="$2"; shift ;;
        --suites=*) suites_arg="${1#*=}" ;;
        --keep) keep=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ -n "$suites_arg" ]]; then
    IFS=, read -r -a SUITES <<< "$suites_arg"
elif [[ $registry_only == 1 ]]; then
    SUITES=(kombu py-amqp)
else
    SUITES=(kombu py-amqp)
    [[ -n "${AMQPLIB_SRC:-}" ]] && SUITES+=(amqplib)
    [[ -n "${PIKA_SRC:-}" ]] && SUITES+=(pika)
    [[ -n "${AMQP091_GO_SRC:-}" ]] && SUITES+=(amqp091-go)
fi
for s in "${SUITES[@]}"; do
    case "$s" in
        kombu|py-amqp) ;;
        amqplib) [[ -d "${AMQPLIB_SRC:-}" ]] || { echo "amqplib needs AMQPLIB_SRC=<amqplib checkout>" >&2; exit 2; } ;;
        pika) [[ -d "${PIKA_SRC:-}" ]] || { echo "pika needs PIKA_SRC=<pika checkout>" >&2; exit 2; } ;;
        amqp091-go) [[ -d "${AMQP091_GO_SRC:-}" ]] || { echo "amqp091-go needs AMQP091_GO_SRC=<amqp091-go checkout>" >&2; exit 2; } ;;
        *) echo "unknown suite '$s' (kombu, py-amqp, amqplib, pika, amqp091-go)" >&2; exit 2 ;;
    esac
done
has_suite() { local s; for s in "${SUITES[@]}"; do [[ "$s" == "$1" ]] && return 0; done; return 1; }

mkdir -p "$CACHE"
RUN="$CACHE/last-run"
rm -rf "$RUN"
mkdir -p "$RUN"
echo "==> client suites: ${SUITES[*]} (cache: $CACHE)"

# ---------------------------------------------------------------- setup
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

VENV="$CACHE/venv"
PY="$VENV/bin/python"
ensure_venv() {
    if [[ ! -x "$PY" ]] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        echo "==> creating $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local reqs=("${PY_REQS[@]}")
    has_suite pika && reqs+=("${PIKA_REQS[@]}")
    local want have
    want="$(printf '%s\n' "${reqs[@]}" | sort | sha256sum | cut -d' ' -f1)"
    have="$(cat "$VENV/.reqs.sha256" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        echo "==> pip install ${reqs[*]}"
        "$PY" -m pip install --quiet --disable-pip-version-check "${reqs[@]}"
        echo "$want" > "$VENV/.reqs.sha256"
    fi
}

# ensure_sdist NAME VERSION: unpack the sdist under $CACHE/src/NAME-VERSION
ensure_sdist() {
    local name="$1" version="$2" dir="$CACHE/src/$1-$2"
    if [[ ! -f "$dir/.unpacked" ]]; then
        echo "==> downloading the $name $version sdist"
        mkdir -p "$CACHE/dl" "$CACHE/src"
        "$PY" -m pip download --quiet --disable-pip-version-check --no-binary :all: --no-deps \
            -d "$CACHE/dl" "$name==$version"
        rm -rf "$dir"
        tar xzf "$CACHE/dl/$name-$version.tar.gz" -C "$CACHE/src"
        touch "$dir/.unpacked"
    fi
}

# copy_tree SRC DEST: fresh copy of a checkout (without .git) to patch and run
copy_tree() {
    rm -rf "$2"
    mkdir -p "$2"
    (cd "$1" && tar cf - --exclude=.git --exclude=node_modules .) | tar xf - -C "$2"
}

WARREN_SRC_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}"
if [[ "${WARREN_NO_BUILD:-0}" != "1" && -z "${WARREN_BIN:-}" ]]; then
    echo "==> cargo build -p server --bins"
    cargo build -q -p server --bins
fi
[[ -x "$WARREN_SRC_BIN" ]] || { echo "error: no broker binary at $WARREN_SRC_BIN" >&2; exit 1; }
# A private copy, so a rebuild during the run does not swap the binary.
WARREN="$RUN/warren"
cp "$WARREN_SRC_BIN" "$WARREN"
# warrenctl, for the suites that shell out to rabbitmqctl (amqp091-go).
WARRENCTL="$RUN/warrenctl"
cp "$(dirname "$WARREN_SRC_BIN")/warrenctl" "$WARRENCTL" 2>/dev/null || true

ensure_venv
has_suite kombu && ensure_sdist kombu "$KOMBU_VERSION"
has_suite py-amqp && ensure_sdist amqp "$AMQP_VERSION"

# ---------------------------------------------------------------- broker
WPID=""
WDATA=""
PORT=""
cleanup() {
    stop_warren >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_warren() { # start_warren SUITE_DIR
    PORT="$(free_port)"
    MPORT="$(free_port)"
    WDATA="$(mktemp -d "${TMPDIR:-/tmp}/warren-client-suites.XXXXXX")"
    echo "=== warren on 127.0.0.1:$PORT (management API on $MPORT), data $WDATA" > "$1/warren.log"
    WARREN_LOG="${WARREN_LOG:-info}" NO_COLOR=1 "$WARREN" --amqp-port "$PORT" --bind 127.0.0.1 \
        --management-port "$MPORT" --prometheus-port 0 --data-dir "$WDATA/data" >> "$1/warren.log" 2>&1 &
    WPID=$!
    local i
    for ((i = 0; i < 200; i++)); do
        if ! kill -0 "$WPID" 2>/dev/null; then
            echo "error: warren exited during startup:" >&2
            tail -20 "$1/warren.log" >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "error: warren did not listen on 127.0.0.1:$PORT within 20 s" >&2
    return 1
}

stop_warren() { # stop_warren [SUITE_DIR]: marks SUITE_DIR/broker-died if it had exited
    [[ -n "$WPID" ]] || return 0
    if kill -0 "$WPID" 2>/dev/null; then
        kill -TERM "$WPID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$WPID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$WPID" 2>/dev/null || true
        wait "$WPID" 2>/dev/null || true
    else
        local rc=0
        wait "$WPID" 2>/dev/null || rc=$?
        if [[ -n "${1:-}" ]]; then
            echo "warren exited with code $rc during the suite" > "$1/broker-died"
        fi
    fi
    WPID=""
    if [[ $keep == 1 ]]; then
        echo "(kept data dir $WDATA)"
    else
        rm -rf "$WDATA"
    fi
}

# ---------------------------------------------------------------- suites
# Each run_<suite> runs in its suite dir's context with $PORT set and must
# write $SDIR/results.tsv (OUTCOME<TAB>test id).

pytest_common=(-p pytest_results -p no:cacheprovider -o addopts= -q -rfE --timeout=120)

run_kombu() {
    cd "$CACHE/src/kombu-$KOMBU_VERSION"
    # test_py_amqp.py reads RABBITMQ_HOST and RABBITMQ_5672_TCP; its failover tests
    # also try pyamqp://localhost:12345 first, which must be (and is) refused.
    RABBITMQ_HOST=127.0.0.1 RABBITMQ_5672_TCP="$PORT" \
        CLIENT_SUITE_RESULTS="$SDIR/results.tsv" PYTHONPATH="$HERE" \
        timeout -k 10 900 "$PY" -m pytest t/integration/test_py_amqp.py "${pytest_common[@]}"
}

run_py-amqp() {
    cd "$CACHE/src/amqp-$AMQP_VERSION"
    # test_rmq.py reads RABBITMQ_HOST, RABBITMQ_5672_TCP and RABBITMQ_5671_TCP (TLS).
    # Warren has no TLS listener: 5671 points at a closed local port. Two tests
    # connect to tls-v1-2.badssl.com on the Internet: never run here (deselected).
    local closed
    closed="$(free_port)"
    RABBITMQ_HOST=127.0.0.1 RABBITMQ_5672_TCP="$PORT" RABBITMQ_5671_TCP="$closed" \
        CLIENT_SUITE_RESULTS="$SDIR/results.tsv" PYTHONPATH="$HERE" \
        timeout -k 10 900 "$PY" -m pytest t/integration "${pytest_common[@]}" \
        --deselect t/integration/test_rmq.py::test_tls_default_certs \
        --deselect t/integration/test_rmq.py::test_tls_no_default_certs_fails
}

run_pika() {
    local w="$CACHE/work/pika"
    copy_tree "$PIKA_SRC" "$w"
    cd "$w"
    # The acceptance tests hard-code localhost:5672.
    sed -i "s/{'port': 5672}/{'port': $PORT}/" tests/acceptance/blocking_adapter_test.py
    sed -i "s/host='localhost', port=5672)/host='127.0.0.1', port=$PORT)/" tests/base/async_test_base.py
    if grep -n "5672" tests/acceptance/*.py tests/base/*.py | grep -v '^\S*:[0-9]*:\s*#'; then
        echo "error: pika tests still name port 5672 after patching (see above)" >&2
        return 1
    fi
    # The TestGetaddrinfo* classes resolve www.google.com: never run here (deselected).
    local dns=tests/acceptance/io_services_tests.py
    CLIENT_SUITE_RESULTS="$SDIR/results.tsv" PYTHONPATH="$HERE" \
        timeout -k 10 2400 "$PY" -m pytest tests/acceptance "${pytest_common[@]}" \
        --deselect $dns::TestGetaddrinfoWWWGoogleDotComPort80 \
        --deselect $dns::TestGetaddrinfoNonExistentHost \
        --deselect $dns::TestGetaddrinfoCancelBeforeLoopRun \
        --deselect $dns::TestGetaddrinfoCancelAfterLoopRun
}

run_amqplib() {
    command -v node >/dev/null || { echo "error: node is not installed" >&2; return 1; }
    local w="$CACHE/work/amqplib" url="amqp://127.0.0.1:$PORT"
    copy_tree "$AMQPLIB_SRC" "$w"
    cd "$w"
    # channel_api.test.js reads URL; callback_api.test.js and connect.test.js use
    # the default amqp://localhost(:5672). The ipv6 test would need [::1]:5672:
    # warren listens on 127.0.0.1 only here, so it is skipped.
    sed -i -e "s#connect((#connect(process.env.URL, (#" \
        -e "s#connect(dom.bind(#connect(process.env.URL, dom.bind(#" test/callback_api.test.js
    sed -i -e "s#'amqp://localhost'#'$url'#g" \
        -e "s#'amqp://localhost?#'$url?#g" \
        -e "s#{ protocol: 'amqp', hostname: 'localhost' }#{ protocol: 'amqp', hostname: '127.0.0.1', port: $PORT }#" \
        -e "s#connect({ heartbeat: 20 }#connect({ hostname: '127.0.0.1', port: $PORT, heartbeat: 20 }#" \
        -e "s#it('ipv6'#it.skip('ipv6'#" test/connect.test.js
    local rc=0
    URL="$url" timeout -k 10 600 node --test --test-timeout=10000 \
        --test-reporter=spec --test-reporter-destination=stdout \
        --test-reporter=junit --test-reporter-destination="$SDIR/junit.xml" \
        test/channel_api.test.js test/callback_api.test.js test/connect.test.js || rc=$?
    "$PYTHON" "$HERE/results.py" node-junit "$SDIR/junit.xml" "$SDIR/results.tsv"
    return $rc
}

run_amqp091-go() {
    command -v go >/dev/null || { echo "error: go is not installed (Debian: apt-get install golang-go)" >&2; return 1; }
    local w="$CACHE/work/amqp091-go"
    copy_tree "$AMQP091_GO_SRC" "$w"
    cd "$w"
    # The only dependency is go.uber.org/goleak. Without a reachable module proxy
    # use Debian's golang-uber-goleak-dev (set AMQP091_GO_PROXY=1 to use GOPROXY).
    if [[ "${AMQP091_GO_PROXY:-0}" != "1" ]]; then
        local goleak=/usr/share/gocode/src/go.uber.org/goleak
        if [[ ! -f "$goleak/go.mod" ]]; then
            echo "==> apt-get install golang-uber-goleak-dev"
            apt-get install -y -qq golang-uber-goleak-dev >/dev/null
        fi
        go mod edit -replace "go.uber.org/goleak=$goleak"
        export GOPROXY=off
    fi
    # The recovery tests drop connections through the management HTTP API on
    # localhost:15672: point them at this run's warren's API port.
    if [[ -f internal/utils/http.go ]]; then
        sed -i "s#http://localhost:15672/#http://127.0.0.1:$MPORT/#; s#\"http://localhost:\"+port#\"http://127.0.0.1:\"+port#" internal/utils/http.go
        sed -i "s#utils.DropConnection(\(.*\), \"15672\")#utils.DropConnection(\1, \"$MPORT\")#" recovery_test.go
    fi
    # Tests that check for product "RabbitMQ" before using its extensions (basic.recover
    # requeue=false -> 540, per-queue TTL, basic.nack) run against Warren too. Without this
    # they skip, and TestIntegrationRecoverNotImplemented and integrationRabbitMQ() leave
    # their connection open, which fails the package's goleak check.
    sed -i 's/product.(string) == "RabbitMQ"/(product.(string) == "RabbitMQ" || product.(string) == "Warren")/; s/ok \&\& server == "RabbitMQ"/ok \&\& (server == "RabbitMQ" || server == "Warren")/' integration_test.go
    # Tests that need rabbitmqctl (set_vm_memory_high_watermark, to force
    # connection.blocked) get warrenctl on this run's node.
    local ctl="$RUN/rabbitmqctl"
    printf '#!/bin/sh\nexec "%s" --data-dir "%s" "$@"\n' "$WARRENCTL" "$WDATA/data" > "$ctl"
    chmod +x "$ctl"
    local rc=0
    RABBITMQ_RABBITMQCTL_PATH="$ctl" AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/" GOFLAGS=-mod=mod \
        timeout -k 10 1800 go test -tags integration -json -count=1 -timeout 25m ./... \
        > "$SDIR/go-test.json" || rc=$?
    "$PYTHON" "$HERE/results.py" go-json "$SDIR/go-test.json" "$SDIR/results.tsv" "$SDIR/go-test.txt"
    cat "$SDIR/go-test.txt"
    return $rc
}

for suite in "${SUITES[@]}"; do
    SDIR="$RUN/$suite"
    mkdir -p "$SDIR"
    echo
    echo "==> $suite (output: $SDIR/output.log)"
    start_warren "$SDIR"
    t0=$(date +%s)
    rc=0
    ( "run_$suite" ) > "$SDIR/output.log" 2>&1 || rc=$?
    echo "$(( $(date +%s) - t0 ))" > "$SDIR/seconds"
    stop_warren "$SDIR"
    [[ $rc == 124 || $rc == 137 ]] && echo "$suite: TIMED OUT" | tee -a "$SDIR/output.log"
    tail -n 12 "$SDIR/output.log" | sed 's/^/    /'
done

"$PYTHON" "$HERE/results.py" compare "$KNOWN" "$RUN" "${SUITES[@]}"
