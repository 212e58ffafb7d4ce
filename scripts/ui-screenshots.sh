#!/usr/bin/env bash
# Regenerate docs/ui/*.png: the web UI journeys of tests/python/test_19_ui.py run in headless
# Chromium (Debian's chromium + chromium-driver) with UI_SCREENSHOT_DIR set, so each
# screenshot the tests take is also written there.
#
#   scripts/ui-screenshots.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p docs/ui
rm -f docs/ui/*.png
# The rabbitmqadmin witness is for test_17 only: not needed here.
export RABBITMQADMIN="${RABBITMQADMIN:-none}"
UI_SCREENSHOT_DIR="$ROOT/docs/ui" bash scripts/test-python.sh tests/python/test_19_ui.py -q
ls -l docs/ui/*.png
