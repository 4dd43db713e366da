# Sourced by bin/ironcliw and bin/test: create or refresh the project's virtual environment.
# Quick when nothing changed: it reinstalls only when pyproject.toml (or the extras asked
# for, or the install mode) differ from what the stamp file says was installed, and the
# common case (the stamp newer than pyproject.toml) is decided with shell builtins alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON_BIN="${IRONCLIW_PYTHON:-$(command -v python3.11 || command -v python3)}"
# The editable install puts the checkout on sys.path with a plain .pth line ("compat"), not
# setuptools' import-hook finder, whose import costs every command its imports (pathlib,
# importlib.util, ...: see bench/bench_supervision.py's CLI figure).
INSTALL_MODE="compat"

installed_extras() {  # the stamp's extras, read with builtins only
    local have=""
    [ -f "$VENV/.ironcliw-stamp" ] && read -r have < "$VENV/.ironcliw-stamp"
    case "$have" in
        *"[test,models]") echo "[test,models]" ;;
        *"[test]") echo "[test]" ;;
        *) echo "" ;;
    esac
}

ensure_venv() {  # $1: extras, e.g. "" or "[test]"
    local extras="${1:-}"
    local want have="" stamp="$VENV/.ironcliw-stamp"
    if [ -x "$VENV/bin/python" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ]; then
        read -r have < "$stamp" || true
        [[ "$have" == *"$INSTALL_MODE$extras" ]] && return 0
    fi
    want="$(sha256sum < "$ROOT/pyproject.toml" | cut -c1-16)$INSTALL_MODE$extras"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON_BIN" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
            echo "ironcliw needs Python 3.11 or newer; found $("$PYTHON_BIN" --version)" >&2; exit 2; }
        echo "creating $VENV ..." >&2
        "$PYTHON_BIN" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "installing dependencies into $VENV ..." >&2
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            --config-settings editable_mode="$INSTALL_MODE" -e "$ROOT$extras" >&2
        echo "$want" > "$stamp"
    else
        touch "$stamp"  # pyproject.toml was touched, not changed: the fast path again next time
    fi
}
