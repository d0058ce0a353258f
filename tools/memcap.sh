#!/usr/bin/env bash
# Does the release server live under a 100 MiB memory cap under load?
#
# Runs target/release/sync-server inside a real memory limit when this machine
# lets us make one (a cgroup v2 child with memory.max, or a cgroup v1 memory
# child with memory.limit_in_bytes), otherwise unconstrained while sampling
# its VmHWM from /proc (the honest substitute). The load, from the project's
# loadgen, all on loopback and bounded in time:
#
#   1. 10,000 idle joined WebSockets (rooms of 10), held open during 2 and 3;
#   2. a 10 MiB document synced by a host to 50 peers;
#   3. 50 logins at once, when accounts are configured (MONGODB_URI, or
#      SYNC_TEST_MONGODB_URI as exported by tools/with-secantus.sh).
#
# With --attack NAME the load is instead one of the hostile clients of
# tools/memcap_attacks.py (frag, joined, pipeline, docs, or all of them at
# once), with a well-behaved client pinging in a room of its own throughout;
# the run also fails if that client's pings stop being answered.
#
# It reports the server's peak RSS (VmHWM), the cgroup's peak usage and
# failure count when there is a cgroup, and what admission control did
# (the server logs "memory guard engaged/lifted"). It fails if the peak RSS
# exceeds the cap, the server was OOM-killed or died, or a load step failed
# for a reason other than admission control.
#
# Usage: tools/memcap.sh [--conns N] [--doc-size BYTES] [--doc-peers N]
#                        [--limit-mib N] [--no-build] [--no-cgroup]
#                        [--attack frag|joined|pipeline|docs|all]
# Env:   CARGO_TARGET_DIR is honoured; MEMCAP_LOG_DIR keeps logs (default a
#        temp dir, printed at the end); the room store lives in its data/;
#        ROOM_STORE=memory|file|mongodb picks the store.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

CONNS=10000
PEERS=10
DOC_SIZE=$((10 << 20))
DOC_PEERS=50
LOGINS=50
LIMIT_MIB=100
BUILD=1
USE_CGROUP=1
ATTACK=
IDLE_TRIES=0
while [ $# -gt 0 ]; do
    case "$1" in
    --conns) CONNS=$2; shift 2 ;;
    --doc-size) DOC_SIZE=$2; shift 2 ;;
    --doc-peers) DOC_PEERS=$2; shift 2 ;;
    --limit-mib) LIMIT_MIB=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --no-cgroup) USE_CGROUP=0; shift ;;
    --attack) ATTACK=$2; shift 2 ;;
    -h | --help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "memcap: unknown argument $1" >&2; exit 2 ;;
    esac
done
LIMIT=$((LIMIT_MIB * 1024 * 1024))
TARGET=${CARGO_TARGET_DIR:-target}
SERVER_BIN=$TARGET/release/sync-server
LOADGEN=$TARGET/release/loadgen
LOGDIR=${MEMCAP_LOG_DIR:-$(mktemp -d /tmp/memcap.XXXXXX)}
mkdir -p "$LOGDIR"
SERVER_PID=
IDLE_PID=
SAMPLER_PID=
CG=
FAILS=()

log() { printf 'memcap: %s\n' "$*"; }
problem() { FAILS+=("$1"); log "PROBLEM: $1"; }

cleanup() {
    # Only the processes this script started, by PID.
    [ -n "$IDLE_PID" ] && kill "$IDLE_PID" 2>/dev/null
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        sleep 1
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    if [ -n "$CG" ] && [ -d "$CG" ]; then
        # Processes must have left before the cgroup can go.
        for _ in 1 2 3 4 5; do rmdir "$CG" 2>/dev/null && break; sleep 0.5; done
    fi
}
trap cleanup EXIT

if [ "$BUILD" = 1 ]; then
    log "building release binaries (sync-server, loadgen)"
    cargo build --release --locked -p sync-server -p loadgen >"$LOGDIR/build.log" 2>&1 || {
        tail -30 "$LOGDIR/build.log"
        exit 1
    }
fi
if [ ! -x "$SERVER_BIN" ] || [ ! -x "$LOADGEN" ]; then
    log "missing $SERVER_BIN or $LOADGEN"
    exit 1
fi

# Both ends hold CONNS sockets; raise the descriptor limit for us and children.
need=$((CONNS * 2 + 1024))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((CONNS + 512)) ]; then
    log "descriptor limit $(ulimit -n) is below $((CONNS + 512)); run as root or lower --conns"
    exit 1
fi

# --- the memory limit --------------------------------------------------------
MODE=vmhwm
PEAK_FILE=
FAILCNT_FILE=
EVENTS_FILE=
mount_of() { # $1 = fstype, $2 = super-option required (or "")
    awk -v t="$1" -v o="$2" '{
        for (i = 1; i <= NF; i++) if ($i == "-") break
        if ($(i+1) != t) next
        if (o != "") { n = split($(i+3), so, ","); f = 0; for (j = 1; j <= n; j++) if (so[j] == o) f = 1; if (!f) next }
        print $5; exit }' /proc/self/mountinfo
}
try_v2() {
    local m
    m=$(mount_of cgroup2 "") || return 1
    [ -n "$m" ] && [ -f "$m/cgroup.controllers" ] || return 1
    grep -qw memory "$m/cgroup.controllers" || return 1
    # A child of the root cgroup: the root is exempt from the rule that a
    # cgroup with member processes cannot delegate controllers.
    grep -qw memory "$m/cgroup.subtree_control" || echo +memory >"$m/cgroup.subtree_control" 2>/dev/null
    local d="$m/khun-memcap-$$"
    mkdir "$d" 2>/dev/null || return 1
    CG=$d
    if ! { [ -f "$d/memory.max" ] && echo "$LIMIT" >"$d/memory.max"; }; then
        return 1
    fi
    [ -f "$d/memory.swap.max" ] && echo 0 >"$d/memory.swap.max" 2>/dev/null
    MODE="cgroup v2 memory.max"
    [ -f "$d/memory.peak" ] && PEAK_FILE="$d/memory.peak"
    EVENTS_FILE="$d/memory.events"
    return 0
}
try_v1() {
    local m rel d
    m=$(mount_of cgroup memory) || return 1
    [ -n "$m" ] && [ -d "$m" ] || return 1
    rel=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ { print $3; exit }' /proc/self/cgroup)
    d="$m${rel%/}/khun-memcap-$$"
    [ -d "$m${rel%/}" ] || d="$m/khun-memcap-$$"
    mkdir "$d" 2>/dev/null || return 1
    CG=$d
    echo "$LIMIT" >"$d/memory.limit_in_bytes" 2>/dev/null || return 1
    # No swapping around the cap: memsw (memory+swap) = the same limit.
    [ -f "$d/memory.memsw.limit_in_bytes" ] && echo "$LIMIT" >"$d/memory.memsw.limit_in_bytes" 2>/dev/null
    [ "$(cat "$d/memory.limit_in_bytes")" -le "$LIMIT" ] || return 1
    MODE="cgroup v1 memory.limit_in_bytes"
    PEAK_FILE="$d/memory.max_usage_in_bytes"
    FAILCNT_FILE="$d/memory.failcnt"
    return 0
}
if [ "$USE_CGROUP" = 1 ]; then
    if ! try_v2; then
        [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
        CG=
        if ! try_v1; then
            [ -n "$CG" ] && rmdir "$CG" 2>/dev/null
            CG=
        fi
    fi
fi
if [ -z "$CG" ]; then
    MODE=vmhwm
    log "no writable cgroup memory controller here: running without a kernel limit, judging by VmHWM"
else
    log "limit: $MODE = $LIMIT bytes in $CG"
fi

# --- the server ----------------------------------------------------------------
PORT=$("$LOADGEN" free-port) || exit 1
ACCOUNTS_URI=${MONGODB_URI:-${SYNC_TEST_MONGODB_URI:-}}
ADMIN_EMAIL=memcap-admin@example.com
ADMIN_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
server_env=(
    HOST=127.0.0.1 PORT="$PORT" RUST_LOG=info
    MAX_CONNECTIONS=$((CONNS + 1000))
    # loadgen creates CONNS/PEERS rooms from one address.
    ROOM_CREATE_RATE=1000000 ROOM_CREATE_BURST=1000000
)
# The room store (issue 11) in a fresh directory of this run; ROOM_STORE
# (file, memory, mongodb) picks another store to compare.
server_env+=(DATA_DIR="$LOGDIR/data")
[ -n "${ROOM_STORE:-}" ] && server_env+=(ROOM_STORE="$ROOM_STORE")
# To watch admission control engage below the kernel's limit.
[ -n "${MEMORY_LIMIT_BYTES:-}" ] && server_env+=(MEMORY_LIMIT_BYTES="$MEMORY_LIMIT_BYTES")
if [ -n "$ACCOUNTS_URI" ]; then
    server_env+=(
        MONGODB_URI="$ACCOUNTS_URI" DB_NAME="memcap_$$"
        JWT_SECRET="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        INITIAL_ADMIN_EMAIL="$ADMIN_EMAIL" INITIAL_ADMIN_PASSWORD="$ADMIN_PASSWORD"
    )
fi
if [ -n "$CG" ]; then
    # The shell joins the cgroup, then becomes the server (same PID).
    # shellcheck disable=SC2016
    env -i "${server_env[@]}" sh -c 'echo $$ > "$1/cgroup.procs" && exec "$2"' sh "$CG" "$SERVER_BIN" \
        >/dev/null 2>"$LOGDIR/server.log" &
else
    env -i "${server_env[@]}" "$SERVER_BIN" >/dev/null 2>"$LOGDIR/server.log" &
fi
SERVER_PID=$!
if ! timeout 30 "$LOADGEN" --port "$PORT" wait-ready --timeout 20; then
    tail -20 "$LOGDIR/server.log"
    log "server did not become ready"
    exit 1
fi
if [ -n "$CG" ] && ! grep -qx "$SERVER_PID" "$CG/cgroup.procs"; then
    problem "server $SERVER_PID is not inside $CG"
fi
grep -m1 'memory guard' "$LOGDIR/server.log" | sed 's/^/  server: /'
status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null; }
log "server pid $SERVER_PID on 127.0.0.1:$PORT, idle RSS $(status_kb VmRSS) KiB"
# VmHWM dies with the process; keep the last reading so that a server killed
# by the OOM killer still has a figure.
(
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        h=$(status_kb VmHWM)
        [ -n "$h" ] && echo "$h" >"$LOGDIR/vmhwm.last"
        sleep 0.2
    done
) &
SAMPLER_PID=$!

# --- load --------------------------------------------------------------------------
LG=("$LOADGEN" --port "$PORT" --server-pid "$SERVER_PID")
connections() {
    "$PY" - "$PORT" <<'EOF' 2>/dev/null
import json, sys, urllib.request
print(json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=2))["connections"])
EOF
}
PY=python3

if [ -n "$ATTACK" ]; then
    log "attack: $ATTACK (tools/memcap_attacks.py), a well-behaved client pinging in its own room throughout"
    if timeout 300 "$PY" tools/memcap_attacks.py --port "$PORT" --attack "$ATTACK" \
        >"$LOGDIR/attack.out" 2>"$LOGDIR/attack.err"; then
        sed 's/^/  /' "$LOGDIR/attack.out"
    else
        sed 's/^/  /' "$LOGDIR/attack.out"
        problem "attack $ATTACK: the well-behaved client failed: $(tail -3 "$LOGDIR/attack.err" | tr '\n' ' ')"
    fi
    log "  RSS $(status_kb VmRSS) KiB, peak so far $(status_kb VmHWM) KiB"
else
# 1. Idle connections, held long enough for the document (and logins) to
#    run on top of them.
HOLD_MS=45000
IDLE_TRIES=0
start_idle() {
    IDLE_TRIES=$((IDLE_TRIES + 1))
    log "step 1: $CONNS idle WebSockets in rooms of $PEERS (held ${HOLD_MS} ms, attempt $IDLE_TRIES)"
    timeout 240 "${LG[@]}" idle --conns "$CONNS" --peers "$PEERS" --hold-ms "$HOLD_MS" \
        >"$LOGDIR/idle.out" 2>"$LOGDIR/idle.err" &
    IDLE_PID=$!
}
start_idle
deadline=$((SECONDS + 120))
while :; do
    n=$(connections)
    if [ -n "$n" ] && [ "$n" -ge "$CONNS" ]; then break; fi
    if ! kill -0 "$IDLE_PID" 2>/dev/null; then
        # loadgen gives up on the whole scenario if one of its connections
        # fails; a rare reset on loopback should not decide this test, so
        # retry (and say so), but not forever.
        why=$(grep -v '^{' "$LOGDIR/idle.out" | head -1)
        if [ "$IDLE_TRIES" -lt 3 ] && ! grep -q 'memory guard engaged' "$LOGDIR/server.log"; then
            log "  idle attempt $IDLE_TRIES ended early (${why:-no output}); retrying"
            sleep 2
            start_idle
            deadline=$((SECONDS + 120))
            continue
        fi
        problem "idle load ended before $CONNS connections were up (server has ${n:-?}): $why"
        break
    fi
    if [ $SECONDS -ge $deadline ]; then
        problem "only ${n:-?} of $CONNS connections after 120 s"
        break
    fi
    sleep 0.5
done
log "  server holds $(connections) connections, RSS $(status_kb VmRSS) KiB"

# 2. The document, on top of the idle connections.
log "step 2: a $DOC_SIZE-byte document to $DOC_PEERS peers"
if timeout 120 "${LG[@]}" doc --size "$DOC_SIZE" --peers "$DOC_PEERS" \
    >"$LOGDIR/doc.out" 2>"$LOGDIR/doc.err"; then
    sed 's/^/  /' "$LOGDIR/doc.out" | grep -v '^  {' | head -5
else
    if grep -q 'memory guard engaged' "$LOGDIR/server.log"; then
        log "  doc load was refused by admission control (see the guard lines below)"
    else
        problem "doc load failed: $(tail -3 "$LOGDIR/doc.err" | tr '\n' ' ')"
    fi
fi
log "  RSS $(status_kb VmRSS) KiB, peak so far $(status_kb VmHWM) KiB"

# 3. Logins, when there are accounts.
if [ -n "$ACCOUNTS_URI" ]; then
    log "step 3: $LOGINS logins at once"
    if "$PY" - "$PORT" "$ADMIN_EMAIL" "$ADMIN_PASSWORD" "$LOGINS" >"$LOGDIR/logins.out" 2>&1 <<'EOF'; then
import json, sys, threading, time, urllib.request
port, email, password, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
body = json.dumps({"email": email, "password": password}).encode()
codes, start, go = [], time.monotonic(), threading.Barrier(n)
def login():
    go.wait()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/auth/login", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            codes.append(r.status)
    except urllib.error.HTTPError as e:
        codes.append(e.code)
    except Exception as e:
        codes.append(str(e))
ts = [threading.Thread(target=login) for _ in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
ok = sum(1 for c in codes if c == 200)
print(f"{ok}/{n} logins answered 200 in {time.monotonic() - start:.1f} s; others: {[c for c in codes if c != 200][:5]}")
sys.exit(0 if ok == n else 1)
EOF
        sed 's/^/  /' "$LOGDIR/logins.out"
    else
        problem "logins: $(cat "$LOGDIR/logins.out")"
    fi
else
    log "step 3: skipped (no MONGODB_URI / SYNC_TEST_MONGODB_URI: accounts not configured)"
fi

# Let the idle load finish its hold and report.
wait "$IDLE_PID"
rc=$?
IDLE_PID=
if [ $rc -ne 0 ]; then
    grep -q 'memory guard engaged' "$LOGDIR/server.log" \
        || problem "idle load failed ($rc): $(tail -3 "$LOGDIR/idle.err" | tr '\n' ' ')"
fi
grep -v '^{' "$LOGDIR/idle.out" | sed 's/^/  /' | head -5
fi

# --- verdict ---------------------------------------------------------------------------
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID"
    problem "the server died during the load (exit $?; 137 = SIGKILL, e.g. the OOM killer)"
    HWM_KB=$(cat "$LOGDIR/vmhwm.last" 2>/dev/null)
else
    HWM_KB=$(status_kb VmHWM)
    RSS_KB=$(status_kb VmRSS)
    if ! env -i HOST=127.0.0.1 PORT="$PORT" "$SERVER_BIN" healthcheck; then
        problem "healthcheck failed after the load"
    fi
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID"
    rc=$?
    [ $rc -eq 0 ] || problem "server exited $rc after SIGTERM"
fi
SERVER_PID=
CG_PEAK=
CG_FAILCNT=
CG_OOM=
[ -n "$PEAK_FILE" ] && [ -f "$PEAK_FILE" ] && CG_PEAK=$(cat "$PEAK_FILE")
[ -n "$FAILCNT_FILE" ] && [ -f "$FAILCNT_FILE" ] && CG_FAILCNT=$(cat "$FAILCNT_FILE")
[ -n "$EVENTS_FILE" ] && [ -f "$EVENTS_FILE" ] && CG_OOM=$(awk '$1 == "oom_kill" { print $2 }' "$EVENTS_FILE")
[ -n "$CG_OOM" ] && [ "$CG_OOM" -gt 0 ] && problem "the kernel OOM-killed $CG_OOM process(es) in the cgroup"

GUARD_ENGAGED=$(grep -c 'memory guard engaged' "$LOGDIR/server.log")
GUARD_LIFTED=$(grep -c 'memory guard lifted' "$LOGDIR/server.log")
PEAK_BYTES=$(( ${HWM_KB:-0} * 1024 ))
if [ -n "$HWM_KB" ] && [ "$PEAK_BYTES" -gt "$LIMIT" ]; then
    problem "peak RSS $PEAK_BYTES bytes is above the $LIMIT-byte cap"
fi

echo
log "mode:            $MODE"
log "cap:             $LIMIT bytes ($LIMIT_MIB MiB)"
log "peak RSS:        ${HWM_KB:-?} KiB ($(awk -v k="${HWM_KB:-0}" 'BEGIN { printf "%.1f", k / 1024 }') MiB, VmHWM)"
log "RSS at the end:  ${RSS_KB:-?} KiB"
[ -n "$CG_PEAK" ] && log "cgroup peak:     $CG_PEAK bytes (RSS + page cache + kernel memory charged to the cgroup)"
[ -n "$CG_FAILCNT" ] && log "cgroup failcnt:  $CG_FAILCNT (times the limit was hit and reclaim ran)"
log "admission:       engaged $GUARD_ENGAGED time(s), lifted $GUARD_LIFTED time(s)"
grep 'memory guard' "$LOGDIR/server.log" | sed 's/^/  server: /'
printf '{"attack":"%s","mode":"%s","cap_bytes":%s,"peak_rss_bytes":%s,"cgroup_peak_bytes":%s,"cgroup_failcnt":%s,"guard_engaged":%s,"guard_lifted":%s,"idle_attempts":%s,"conns":%s,"doc_bytes":%s,"doc_peers":%s,"logins":%s,"problems":%s}\n' \
    "${ATTACK:-none}" "$MODE" "$LIMIT" "$PEAK_BYTES" "${CG_PEAK:-null}" "${CG_FAILCNT:-null}" "$GUARD_ENGAGED" "$GUARD_LIFTED" "$IDLE_TRIES" \
    "$CONNS" "$DOC_SIZE" "$DOC_PEERS" "$([ -n "$ACCOUNTS_URI" ] && echo "$LOGINS" || echo 0)" "${#FAILS[@]}" \
    | tee "$LOGDIR/memcap.json"
log "logs in $LOGDIR"
if [ ${#FAILS[@]} -gt 0 ]; then
    for f in "${FAILS[@]}"; do log "FAILED: $f"; done
    exit 1
fi
log "OK: the server stayed under the cap"
