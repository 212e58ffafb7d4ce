#!/usr/bin/env bash
# The one command that runs every check: formatting, clippy, Rust tests and
# the Python (pika) interop suite. Used by .ci/run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

START=$(date +%s)
section() {
    printf '\n==================== %s ====================\n' "$*"
    SECTION_START=$(date +%s)
}
section_done() {
    printf -- '---- done in %ss\n' "$(( $(date +%s) - SECTION_START ))"
}
trap 'rc=$?; printf "\n==> test-all FAILED (exit %s) after %ss\n" "$rc" "$(( $(date +%s) - START ))"' ERR

section "cargo fmt --check"
cargo fmt --all -- --check
section_done

section "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
section_done

if command -v cargo-nextest >/dev/null 2>&1; then
    section "cargo nextest run"
    cargo nextest run --workspace --no-tests=pass
    section_done
    section "cargo test --doc"
    cargo test --doc --workspace
    section_done
else
    section "cargo test"
    cargo test --workspace
    section_done
fi

section "benchmarks compile (cargo bench --no-run; not timed in CI)"
cargo bench -p wire -p broker -p store --no-run
section_done

section "python interop tests (pika)"
scripts/test-python.sh
section_done

section "soak smoke (kill -9, disk alarm, non-reading client: scripts/soak.sh --smoke)"
WARREN_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}" scripts/soak.sh --smoke
section_done

section "quorum-queue chaos smoke (3 nodes, kill -9, restarts, partitions: scripts/chaos.sh --smoke)"
WARREN_BIN="${WARREN_BIN:-$ROOT/target/debug/warren}" scripts/chaos.sh --smoke
section_done

section "client libraries' own suites: kombu, py-amqp (docs/client-suites.md)"
scripts/client-suites.sh --registry-only
section_done

printf '\n==> test-all passed in %ss\n' "$(( $(date +%s) - START ))"
