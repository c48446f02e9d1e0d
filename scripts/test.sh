#!/usr/bin/env bash
# One command for the whole test suite: installs everything the tests need, then runs
# ruff and pytest on SQLite, PostgreSQL (RLS on) and a real Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh

# Chromium for the browser tests (Debian package; Playwright cannot download browsers here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }
  else
    echo "chromium is missing: sudo apt-get install -y chromium" >&2
  fi
fi

# PgBouncer for tests/test_pgbouncer.py (transaction pooling in front of PostgreSQL).
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get install -y -qq pgbouncer >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq pgbouncer; }
  else
    echo "pgbouncer is missing: sudo apt-get install -y pgbouncer" >&2
  fi
fi

# xmlsec1 for the SAML tests: pysaml2's IdP (tests/idp/saml/) signs real responses with it.
if ! command -v xmlsec1 >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get install -y -qq xmlsec1 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq xmlsec1; }
  else
    echo "xmlsec1 is missing: sudo apt-get install -y xmlsec1" >&2
    case "${CI:-}" in
      1|true|yes) exit 1 ;;
    esac
  fi
fi
# The real OpenID Provider of the SSO tests (npm oidc-provider, pinned in package-lock.json).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get install -y -qq nodejs npm >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nodejs npm; }
  else
    echo "node/npm are missing: sudo apt-get install -y nodejs npm" >&2
  fi
fi
if command -v npm >/dev/null 2>&1; then
  if [ ! -f tests/idp/oidc/node_modules/oidc-provider/package.json ]; then
    (cd tests/idp/oidc && npm ci --no-audit --no-fund --silent)
  fi
else
  case "${CI:-}" in
    1|true|yes) echo "node and npm are required for the SSO tests (tests/idp/oidc)" >&2; exit 1 ;;
  esac
fi
# Redis for tests/test_rate_limits.py (rate-limit counters with ENGINEX_REDIS_URL); the tests
# start their own redis-server on a free port.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get install -y -qq redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server; }
  else
    echo "redis-server is missing: sudo apt-get install -y redis-server" >&2
  fi
fi

# PostgreSQL on 127.0.0.1:5432 for the RLS tests; start the local cluster if it is down.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
  fi
fi

.venv/bin/ruff check enginex tests benchmarks
# Parallel test processes (pytest-xdist): much of a test's time is waiting on servers,
# databases and the browser, so three processes keep two cores busy. Each module stays in one
# process (--dist loadfile), in its own order; ENGINEX_TEST_WORKERS=0 runs in this process.
.venv/bin/pytest -n "${ENGINEX_TEST_WORKERS:-3}" --dist loadfile "$@"
