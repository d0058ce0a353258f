#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: unit tests, the
# integration tests against the real binary, the browser tests in headless
# Chromium, the cluster tests against a real redis-server, and the accounts
# tests against
# a real MongoDB-wire database (SecantusDB, installed into a venv and started
# on a free loopback port by tools/with-secantus.sh). Extra arguments go to
# `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "tools/test.sh: cargo is required (install Rust from rustup)" >&2
  exit 1
fi
if ! command -v python3 >/dev/null 2>&1; then
  echo "tools/test.sh: python3 (3.10+) with pip is required for the test database" >&2
  exit 1
fi

# The browser tests (tests/browser.rs) drive Debian's Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
  else
    echo "tools/test.sh: the browser tests need Debian's chromium (apt-get install chromium, as root)" >&2
    exit 1
  fi
fi

# The cluster tests (tests/cluster.rs) start Debian's redis-server and
# haproxy on free loopback ports; without them they fail, they never skip.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v haproxy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server haproxy
    # The packages start system instances where they can; the tests start
    # their own.
    (command -v systemctl >/dev/null 2>&1 && systemctl stop redis-server haproxy) >/dev/null 2>&1 || true
  else
    echo "tools/test.sh: the cluster tests need Debian's redis-server and haproxy (apt-get install redis-server haproxy, as root)" >&2
    exit 1
  fi
fi

# Build first so the database is not kept waiting on a cold compile.
cargo build --workspace --all-targets --locked
exec tools/with-secantus.sh cargo test --workspace --all-targets --locked "$@"
