#!/usr/bin/env bash
# Runs a command next to a throw-away SecantusDB daemon (a MongoDB-wire
# database on WiredTiger, from PyPI), for the accounts integration tests.
#
#   tools/with-secantus.sh cargo test --workspace
#
# - Installs SecantusDB (pinned) into a venv under
#   ${XDG_CACHE_HOME:-$HOME/.cache}/khun-phaen/venv, reused on later runs
#   (override the place with KHUN_PHAEN_VENV).
# - Starts `secantusd-py` on a free loopback port with an empty config and a
#   fresh storage directory, its output in a log file, and waits until it
#   answers a ping.
# - Exports for the command:
#     SYNC_TEST_MONGODB_URI   mongodb://127.0.0.1:<port>
#     SYNC_TEST_SECANTUS_BIN  the secantusd-py executable, so a test can run a
#                             daemon of its own (the outage test stops and
#                             restarts one; it must not stop the shared one)
#     SYNC_TEST_PYTHON        the venv's python (has pymongo and
#                             prometheus_client, for the metrics test)
# - Stops the daemon with SIGTERM afterwards and exits with the command's
#   status. If the daemon cannot start, prints its log tail and exits 1: the
#   tests must fail then, not skip.
set -euo pipefail

SECANTUS_VERSION="0.7.0b3"

if [ "$#" -eq 0 ]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi

cache="${XDG_CACHE_HOME:-$HOME/.cache}/khun-phaen"
venv="${KHUN_PHAEN_VENV:-$cache/venv}"
marker="$venv/.secantusdb-$SECANTUS_VERSION"
python="${PYTHON:-python3}"

install_venv() {
    mkdir -p "$(dirname "$venv")"
    if [ -f "$marker" ] && [ -x "$venv/bin/secantusd-py" ]; then
        return 0
    fi
    echo "with-secantus: installing SecantusDB==$SECANTUS_VERSION into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
    touch "$marker"
}

# The metrics test parses /metrics with the official Prometheus client's
# parser; it lives in the same venv (pinned, installed once).
PROMETHEUS_CLIENT_VERSION="0.26.0"
install_prometheus_client() {
    local m="$venv/.prometheus-client-$PROMETHEUS_CLIENT_VERSION"
    if [ -f "$m" ]; then
        return 0
    fi
    echo "with-secantus: installing prometheus-client==$PROMETHEUS_CLIENT_VERSION into $venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "prometheus-client==$PROMETHEUS_CLIENT_VERSION"
    touch "$m"
}

# Two runs at once must not build the same venv together.
lockfile="$cache/venv.lock"
mkdir -p "$cache"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$lockfile"
    flock 9
    install_venv
    install_prometheus_client
    flock -u 9
    exec 9>&-
else
    install_venv
    install_prometheus_client
fi

daemon="$venv/bin/secantusd-py"
vpython="$venv/bin/python"

work="$(mktemp -d "${TMPDIR:-/tmp}/secantus.XXXXXX")"
: >"$work/secantusd.toml"
mkdir -p "$work/data"
log="$work/secantusd.log"

port="$("$vpython" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')"

pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "with-secantus: daemon ignored SIGTERM for 10 s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Started from the work directory so no stray ./secantusd.toml is read.
(cd "$work" && exec "$daemon" --config "$work/secantusd.toml" --host 127.0.0.1 --port "$port" \
    --storage-path "$work/data" --log-level WARNING) >"$log" 2>&1 &
pid=$!

uri="mongodb://127.0.0.1:$port"
ready=""
for _ in $(seq 1 60); do
    if ! kill -0 "$pid" 2>/dev/null; then
        break
    fi
    if "$vpython" - "$uri" >/dev/null 2>&1 <<'EOF'
import sys
import pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=500, connectTimeoutMS=500)
client.admin.command("ping")
EOF
    then
        ready=1
        break
    fi
    sleep 0.5
done

if [ -z "$ready" ]; then
    echo "with-secantus: SecantusDB did not start on 127.0.0.1:$port; last lines of its log:" >&2
    tail -n 40 "$log" >&2 || true
    exit 1
fi

export SYNC_TEST_MONGODB_URI="$uri"
export SYNC_TEST_SECANTUS_BIN="$daemon"
export SYNC_TEST_PYTHON="$vpython"

status=0
"$@" || status=$?
if ! kill -0 "$pid" 2>/dev/null; then
    echo "with-secantus: the daemon exited during the run; last lines of its log:" >&2
    tail -n 40 "$log" >&2 || true
fi
exit "$status"
