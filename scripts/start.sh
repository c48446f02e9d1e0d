#!/usr/bin/env bash
# One command for a complete local deployment: SQLite, dev master key, demo tenants.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/enginex serve --demo "$@"
