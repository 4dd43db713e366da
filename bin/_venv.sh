# Sourced by bin/ironcliw and bin/test: create or refresh the project's virtual environment.
# Quick when nothing changed: it reinstalls only when pyproject.toml (or the extras asked
# for) differ from what the stamp file says was installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${IRONCLIW_PYTHON:-$(command -v python3.11 || command -v python3)}"

ensure_venv() {  # $1: extras, e.g. "" or "[test]"
    local extras="${1:-}"
    local want stamp="$VENV/.ironcliw-stamp"
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)$extras"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "ironcliw needs Python 3.11 or newer; found $("$PYTHON_BIN" --version)" >&2; exit 2; }
        echo "creating $VENV ..." >&2
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing dependencies into $VENV ..." >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT$extras" >&2
        echo "$want" > "$stamp"
    fi
}
