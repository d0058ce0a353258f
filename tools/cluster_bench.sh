#!/usr/bin/env bash
# The figures of cluster mode (issue 13), against one node on the same
# machine:
#   1. R=10 rooms x P=100 peers, one sender per room, closed loop: with the
#      members of each room spread round-robin over three nodes, the
#      deliveries per second and the server CPU per delivery summed over the
#      nodes (target: at most twice one node's), and Redis's CPU per event;
#   2. p99 delivery latency across the three nodes at about 100,000
#      deliveries/s (1,010 messages/s x 99 receivers; target 5 ms);
#   3. the time from SIGKILL of a node to peer_left on the others (the
#      cluster test that does it, with its own timing).
#
# Real components only: Debian's redis-server on a free loopback port, the
# shared room store on SecantusDB (run it as
#   tools/with-secantus.sh tools/cluster_bench.sh
# which exports SYNC_TEST_MONGODB_URI). Nodes and Redis are pinned to CPU 0
# and the load generator to CPU 1, as in tools/bench.sh; with UNPINNED=1
# nothing is pinned and the generator does not busy-poll, so on a 2-CPU
# machine the nodes can use both cores. Results go to stdout and
# <target>/bench/cluster.md.
set -euo pipefail

cd "$(dirname "$0")/.."
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
OUT="$TARGET_DIR/bench"
BIN="$TARGET_DIR/release/sync-server"
LOADGEN="$TARGET_DIR/release/loadgen"
mkdir -p "$OUT"
: "${SYNC_TEST_MONGODB_URI:?run under tools/with-secantus.sh}"
command -v redis-server >/dev/null || { echo "cluster_bench: redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
if [ -z "${SKIP_BUILD:-}" ]; then
    cargo build --release -p sync-server -p loadgen >&2
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

PIN_SERVER=(taskset -c 0)
PIN_LOADGEN=(taskset -c 1)
BUSY_POLL=(--busy-poll)
if [ -n "${UNPINNED:-}" ] || ! command -v taskset >/dev/null || [ "$(nproc)" -lt 2 ]; then
    PIN_SERVER=()
    PIN_LOADGEN=()
fi
if [ -n "${UNPINNED:-}" ]; then
    BUSY_POLL=()
fi

PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

REDIS_PORT="$("$LOADGEN" free-port)"
REDIS_DIR="$(mktemp -d)"
"${PIN_SERVER[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$REDIS_DIR" >"$OUT/cluster-redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
done

DB="cluster_bench_$$"
start_node() { # name [cluster]: prints "port pid"
    local name="$1" cluster="${2:-}"
    local port
    port="$("$LOADGEN" free-port)"
    local env=(HOST=127.0.0.1 PORT="$port" MAX_CONNECTIONS=50000 RUST_LOG=warn
        ROOM_CREATE_RATE=100000 ROOM_CREATE_BURST=100000)
    if [ -n "$cluster" ]; then
        env+=(ROOM_STORE=mongodb MONGODB_URI="$SYNC_TEST_MONGODB_URI" DB_NAME="$DB"
            JWT_SECRET=cluster-bench-secret-0123456789abcdef
            REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" NODE_ID="$name")
    else
        env+=(ROOM_STORE=memory)
    fi
    env "${env[@]}" "${PIN_SERVER[@]}" "$BIN" >"$OUT/cluster-$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    "$LOADGEN" --port "$port" wait-ready --timeout 30 >&2
    echo "$port $pid"
}

FANOUT=(fanout --rooms 10 --peers 100 --senders 1 --bytes 100 --window 64 --duration 10)
LATENCY=(fanout --rooms 10 --peers 100 --senders 1 --bytes 100 --rate 1010 --duration 10 "${BUSY_POLL[@]}")
MD="$OUT/cluster.md"
: >"$MD"

# One node, no Redis: the reference.
read -r P0 PID0 < <(start_node single)
"${PIN_LOADGEN[@]}" "$LOADGEN" --port "$P0" --server-pid "$PID0" --md "$MD" \
    --label "one node: fanout R=10 P=100 S=1, closed loop" "${FANOUT[@]}" >"$OUT/cluster-single.json"
kill "$PID0"

# Three nodes on Redis; each room's members spread over them.
read -r P1 PID1 < <(start_node node-a cluster)
read -r P2 PID2 < <(start_node node-b cluster)
read -r P3 PID3 < <(start_node node-c cluster)
ALSO=(--also "127.0.0.1:$P2" --also "127.0.0.1:$P3" --also-pid "$PID2" --also-pid "$PID3")
R0="$(ticks "$REDIS_PID")"
thread_ticks() { # pid: "<thread name> <ticks>" per thread name
    for t in /proc/"$1"/task/*; do
        echo "$(cat "$t/comm") $(awk '{ print $14 + $15 }' "$t/stat")"
    done | awk '{ a[$1] += $2 } END { for (k in a) print k, a[k] }' | sort
}
thread_ticks "$PID1" >"$OUT/cluster-threads-before.txt"
"${PIN_LOADGEN[@]}" "$LOADGEN" --port "$P1" --server-pid "$PID1" "${ALSO[@]}" --md "$MD" \
    --label "three nodes: fanout R=10 P=100 S=1 spread round-robin, closed loop" \
    "${FANOUT[@]}" >"$OUT/cluster-three.json"
R1="$(ticks "$REDIS_PID")"
thread_ticks "$PID1" >"$OUT/cluster-threads-after.txt"
"${PIN_LOADGEN[@]}" "$LOADGEN" --port "$P1" --server-pid "$PID1" "${ALSO[@]}" --md "$MD" \
    --label "three nodes: 100k deliveries/s across nodes, open loop" \
    "${LATENCY[@]}" >"$OUT/cluster-latency.json"

HZ="$(getconf CLK_TCK)"
python3 - "$OUT/cluster-single.json" "$OUT/cluster-three.json" "$R0" "$R1" "$HZ" <<'PY' | tee -a "$MD"
import json, sys
single = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
three = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
r0, r1, hz = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
events = three["messages_sent"]
redis_us = (r1 - r0) / hz * 1e6 / max(events, 1)
ratio = three["server_cpu_us_per_delivery"] / single["server_cpu_us_per_delivery"]
print()
print(f"- server CPU per delivery: one node {single['server_cpu_us_per_delivery']:.3f} µs, "
      f"three nodes summed {three['server_cpu_us_per_delivery']:.3f} µs ({ratio:.2f}x; target at most 2x)")
print(f"- Redis CPU per event: {redis_us:.1f} µs ({events:,} events, {(r1 - r0) / hz:.2f} s of Redis CPU)")
PY

echo "- node-a CPU ticks by thread during the closed-loop run:" | tee -a "$MD"
join "$OUT/cluster-threads-before.txt" "$OUT/cluster-threads-after.txt" \
    | awk '{ printf "  - %s: %d\n", $1, $3 - $2 }' | tee -a "$MD"

echo
echo "SIGKILL of a node -> peer_left on the others:"
cargo test --test cluster a_killed_node_s_peers_leave_within_the_ttl -- --nocapture 2>&1 \
    | grep -E "SIGKILL -> peer_left|test result" | tee -a "$MD"
cat "$MD"
