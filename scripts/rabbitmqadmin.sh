#!/usr/bin/env bash
# Make sure rabbitmqadmin v2 (RabbitMQ's own CLI for the management HTTP API, a
# third-party witness for Warren's API) is installed, and print its path.
#
#   scripts/rabbitmqadmin.sh        # installs once (cargo install, ~4 min on 2 cores), then cached
#
# Installed into $WARREN_TOOLS_DIR (default: ~/.cache/warren/tools) with the version
# pinned and --locked, so a later run reuses it.
set -euo pipefail
VERSION=2.35.0
TOOLS="${WARREN_TOOLS_DIR:-$HOME/.cache/warren/tools}"
BIN="$TOOLS/rabbitmqadmin-$VERSION/bin/rabbitmqadmin"
if [[ ! -x "$BIN" ]] || ! "$BIN" --version 2>/dev/null | grep -q "$VERSION"; then
    echo "==> cargo install rabbitmqadmin $VERSION into $TOOLS (once)" >&2
    mkdir -p "$TOOLS"
    cargo install rabbitmqadmin --version "$VERSION" --locked --quiet \
        --root "$TOOLS/rabbitmqadmin-$VERSION" --target-dir "$TOOLS/build" >&2
    rm -rf "$TOOLS/build"
fi
echo "$BIN"
