# Sourced by scripts/test-python.sh and scripts/soak.sh: make sure .venv exists and holds
# tests/python/requirements.txt (reinstalled only when that file changed). Expects ROOT;
# sets VENV. PYTHON picks the interpreter that creates the venv (default: python3).

VENV="$ROOT/.venv"
_req="$ROOT/tests/python/requirements.txt"
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "==> creating virtualenv at .venv"
    rm -rf "$VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
_stamp="$VENV/.requirements.sha256"
_want="$(sha256sum "$_req" | cut -d' ' -f1)"
if [[ "$_want" != "$(cat "$_stamp" 2>/dev/null || true)" ]]; then
    echo "==> installing tests/python/requirements.txt into .venv"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$_req"
    echo "$_want" > "$_stamp"
fi
unset _req _stamp _want
