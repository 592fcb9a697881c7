#!/usr/bin/env bash
# SegCompass developer entry point. Needs only Python 3.11 and pip.
#   ./dev.sh run    set up (if needed) and run the main job on the built-in default
#   ./dev.sh test   set up (if needed) and run lint + the test suite
# SEGCOMPASS_VENV chooses where the virtual environment lives (default: .venv in this checkout).
set -euo pipefail
cd "$(dirname "$0")"

VENV="${SEGCOMPASS_VENV:-.venv}"
PY="${PYTHON:-python3}"
LOCK_HASH="$(sha256sum requirements.lock pyproject.toml | sha256sum | cut -c1-16)"

setup() {
  if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.segcompass-lock" 2>/dev/null)" != "$LOCK_HASH" ]; then
    echo "[dev.sh] creating the virtual environment in $VENV (a few minutes, once)" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=25" >&2
    "$VENV/bin/python" -m pip install -q -c requirements.lock -e ".[test]" >&2
    echo "$LOCK_HASH" > "$VENV/.segcompass-lock"
  else
    # A cached environment may point at another checkout: re-link this one (seconds, no downloads).
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >&2
  fi
}

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

case "${1:-}" in
  run)
    setup
    shift
    exec "$VENV/bin/segcompass-analyze" pipeline "$@"
    ;;
  test)
    setup
    shift
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./dev.sh run [pipeline options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac
