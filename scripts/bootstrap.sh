#!/usr/bin/env bash
# Installs what EngineX needs into .venv (uv, then the locked dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  # Debian's system Python refuses pip installs (PEP 668): fall back to a user install.
  python3 -m pip install --quiet uv 2>/dev/null \
    || python3 -m pip install --quiet --user --break-system-packages uv
  export PATH="$HOME/.local/bin:$PATH"
fi
uv sync --frozen --quiet "$@"
