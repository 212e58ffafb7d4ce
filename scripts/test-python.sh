#!/usr/bin/env bash
# Run the pika interop suite (tests/python) against a freshly built warren.
#
#   scripts/test-python.sh [extra pytest args...]
#
# Environment:
#   WARREN_BIN     broker binary to test (default: target/debug/warren, built here)
#   WARREN_TASKS_BIN  the Rust Celery worker/client (default: target/debug/warren-tasks, built here)
#   WARREN_NO_BUILD=1  skip `cargo build` (use an existing WARREN_BIN)
#   PYTHON         interpreter used to create the venv (default: python3)
#   AMQP_TEST_PORT test an already running broker on that port instead of
#                  spawning warren (e.g. RabbitMQ, to check the tests themselves);
#                  implies WARREN_NO_BUILD=1
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# 1-2. virtualenv with the requirements (idempotent)
source "$ROOT/scripts/venv.sh"

# 3. broker
export WARREN_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}"
if [[ -n "${AMQP_TEST_PORT:-}" ]]; then
    echo "==> using the broker already listening on port $AMQP_TEST_PORT (no warren build)"
else
    if [[ "${WARREN_NO_BUILD:-0}" != "1" ]]; then
        echo "==> cargo build -p server --bin warren -p tasks --bin warren-tasks --example work_queue"
        cargo build -p server --bin warren -p tasks --bin warren-tasks --example work_queue
    fi
    if [[ ! -x "$WARREN_BIN" ]]; then
        echo "error: broker binary not found at $WARREN_BIN" >&2
        exit 1
    fi
fi

# 3b. rabbitmqadmin v2, a witness for the management API (test_17; cargo install, cached)
if [[ -z "${AMQP_TEST_PORT:-}" && -z "${RABBITMQADMIN:-}" ]]; then
    RABBITMQADMIN="$("$ROOT/scripts/rabbitmqadmin.sh")"
    export RABBITMQADMIN
fi

# 4. tests (the whole suite unless test paths were given)
targets=(tests/python)
for arg in "$@"; do
    if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
        targets=()
        break
    fi
done
echo "==> pytest ${targets[*]:-} $* (WARREN_BIN=$WARREN_BIN)"
exec "$VENV/bin/python" -m pytest "${targets[@]}" -p no:cacheprovider "$@"
