#!/usr/bin/env bash
# Soak and chaos run (issue 9): mixed publishers and consumers with publisher confirms
# against one warren while it is killed -9 at random moments, with a slow consumer and
# a client that never reads its socket attached, and the data dir on a small tmpfs that
# fills up (disk alarm) and gets its space back. At the end every confirmed message must
# have been delivered at least once, nothing delivered that was never published, the
# broker's RSS under a bound, and the broker must still serve. Exits 1 on any violation.
#
#   scripts/soak.sh                  10 minutes of load (plus ~1 min of drain and checks)
#   scripts/soak.sh --minutes 30     longer
#   scripts/soak.sh --seed 1234      replay a run's schedule (the seed is printed first)
#   scripts/soak.sh --smoke          the CI version: 55 s of load, 2 kills (the second one
#                                    twice: again while the broker starts), 1 disk alarm;
#                                    about 60 s in all
#   scripts/soak.sh --keep           keep the work dir (logs, ledgers) even when it passes
#   scripts/soak.sh --enospc         the filler takes all the space (writes fail before the
#                                    alarm is raised) instead of leaving half the limit free
#   scripts/soak.sh --help           all options (publishers, consumers, rate, RSS bound)
#
# What runs (details at the top of scripts/soak.py, the driver):
#   - warren on a free 127.0.0.1 port, --data-dir on a tmpfs of SOAK_TMPFS_MB (160) MiB
#     mounted here, --disk-free-limit = a quarter of it;
#   - 2 publishers (pika, confirms, 64 in flight, 300 msg/s each; persistent messages
#     with checkable bodies, 1 in ~500 over 100 KiB) into 2 durable queues through a
#     durable direct exchange; 2 consumers (prefetch 200), 1 slow consumer (prefetch 2,
#     50-250 ms per message), 1 non-reading client (prefetch 20000, never reads; drops
#     its socket and reconnects every 20-60 s); all reconnect with backoff after a kill;
#   - kill -9 every 20-70 s (one in five twice in a row), restart on the same data dir;
#   - disk-alarm episodes every 40-110 s: a filler file leaves half the limit free for
#     5-25 s, then is deleted; the alarm must be raised, publishers blocked, the alarm
#     cleared and publishing resumed;
#   - the broker's VmRSS sampled every second (bound: --rss-limit-mb, default 256).
# The schedule (kill moments, double kills, episodes) and the clients' random choices
# come from the seed; the exact interleaving with the broker does not.
#
# Prints a summary: duration, seed, kills and the time to serve again / to the first
# confirm after each, messages published/confirmed/nacked/delivered, duplicates, max
# RSS, disk-alarm episodes with raise/clear/resume times, violations.
#
# Needs root (or CAP_SYS_ADMIN) for the tmpfs mount; the mount, the broker and the
# clients are cleaned up on any exit. Work dir: a new /tmp/warren-soak.XXXXXX (removed
# when the run passes unless --keep): warren.log, the clients' ledgers (pub*.log,
# con*.log) and error logs (*.err), rss.csv, summary.json. Figures of full runs:
# docs/reliability.md ("Soak and chaos run").
#
# Environment:
#   WARREN_BIN        broker binary (default target/release/warren if present, else
#                     target/debug/warren; built with cargo if missing)
#   WARREN_LOG        tracing filter for the broker (default info; the driver reads its
#                     "disk resource alarm" WARN lines, so keep warn or more)
#   SOAK_TMPFS_MB     size of the tmpfs (default 160)
#   PYTHON            interpreter for the venv (default python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TMPFS_MB="${SOAK_TMPFS_MB:-160}"

keep=0
for arg in "$@"; do
    case "$arg" in
        --keep) keep=1 ;;
        -h | --help) help=1 ;;
    esac
done

# 1. the same virtualenv as scripts/test-python.sh (idempotent)
source "$ROOT/scripts/venv.sh"

if [[ "${help:-0}" == 1 ]]; then
    exec "$VENV/bin/python" scripts/soak.py --work - --mount - --warren-bin - --help
fi

# 2. broker binary
if [[ -z "${WARREN_BIN:-}" ]]; then
    if [[ -x "$ROOT/target/release/warren" ]]; then
        WARREN_BIN="$ROOT/target/release/warren"
    else
        WARREN_BIN="$ROOT/target/debug/warren"
    fi
fi
if [[ ! -x "$WARREN_BIN" ]]; then
    case "$WARREN_BIN" in
        "$ROOT/target/release/warren") cargo build --release -p server --bin warren ;;
        "$ROOT/target/debug/warren") cargo build -p server --bin warren ;;
    esac
fi
if [[ ! -x "$WARREN_BIN" ]]; then
    echo "error: broker binary not found at $WARREN_BIN" >&2
    exit 2
fi
WARREN_BIN="$(cd "$(dirname "$WARREN_BIN")" && pwd)/$(basename "$WARREN_BIN")"

# 3. work dir and tmpfs; everything is undone on exit
WORK="$(mktemp -d "${TMPDIR:-/tmp}/warren-soak.XXXXXX")"
MNT="$WORK/tmpfs"
mkdir -p "$MNT"
PY_PID=""
mounted=0
cleanup() {
    local status=$?
    set +e
    if [[ -n "$PY_PID" ]] && kill -0 "$PY_PID" 2>/dev/null; then
        kill -TERM "$PY_PID" 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$PY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PY_PID" 2>/dev/null
    fi
    # The driver kills its broker; in case it could not, the broker's pid is on file.
    if [[ -f "$WORK/broker.pid" ]]; then
        bpid="$(cat "$WORK/broker.pid")"
        if [[ -n "$bpid" ]] && grep -qs warren "/proc/$bpid/cmdline"; then
            kill -KILL "$bpid" 2>/dev/null
            sleep 0.2
        fi
    fi
    if [[ "$mounted" == 1 ]]; then
        umount "$MNT" 2>/dev/null || { sleep 1; umount "$MNT" 2>/dev/null; } || umount -l "$MNT"
    fi
    if [[ "$status" == 0 && "$keep" == 0 ]]; then
        rm -rf "$WORK"
    else
        echo "soak: work dir kept: $WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! mount -t tmpfs -o "size=${TMPFS_MB}m,mode=0700" tmpfs "$MNT"; then
    echo "error: cannot mount a tmpfs at $MNT (the soak needs root or CAP_SYS_ADMIN)" >&2
    exit 2
fi
mounted=1

# 4. the run (in the background, so that a signal reaches the trap at once)
"$VENV/bin/python" -u scripts/soak.py --work "$WORK" --mount "$MNT" --warren-bin "$WARREN_BIN" "$@" &
PY_PID=$!
rc=0
wait "$PY_PID" || rc=$?
PY_PID=""
exit "$rc"
