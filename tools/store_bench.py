#!/usr/bin/env python3
"""Figures for durable rooms (issue 11) against a release sync-server.

  python3 tools/store_bench.py push     # 1 MiB document 20x/s for 30 s
  python3 tools/store_bench.py restart  # 100,000 stored rooms: restart time
  python3 tools/store_bench.py bigjoin  # first join of a stored 10 MiB room

Needs the `websocket-client` package (PyPI) and target/release/sync-server
(`cargo build --release`). Each run uses a fresh DATA_DIR under /tmp and the
file store unless ROOM_STORE/MONGODB_URI say otherwise. The server is pinned
to CPU 0 and this client to CPU 1 where possible, like tools/bench.sh.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import websocket  # websocket-client

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"), "release", "sync-server")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, data_dir, extra=None, log_level="warn"):
        self.port = free_port()
        self.data_dir = data_dir
        env = {
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "RUST_LOG": log_level,
            "DATA_DIR": data_dir,
            "ROOM_CREATE_RATE": "1000000",
            "ROOM_CREATE_BURST": "1000000",
            "PATH": os.environ.get("PATH", ""),
        }
        for k in ("ROOM_STORE", "MONGODB_URI", "DB_NAME", "JWT_SECRET"):
            if k in os.environ:
                env[k] = os.environ[k]
        env.update(extra or {})
        cmd = [BIN]
        if shutil.which("taskset") and os.cpu_count() >= 2:
            cmd = ["taskset", "-c", "0"] + cmd
        self.log = tempfile.NamedTemporaryFile(prefix="store-bench-", suffix=".log", delete=False)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.ready_after = self.wait_ready()

    def wait_ready(self):
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                status, _ = self.get("/health")
                if status == 200:
                    return time.monotonic() - self.started
            except OSError:
                time.sleep(0.002)
        raise SystemExit("server did not answer /health")

    def get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body

    def health(self):
        return json.loads(self.get("/health")[1])

    def ws(self):
        w = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws", timeout=60)
        return w

    def hwm_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def write_bytes(self):
        try:
            with open(f"/proc/{self.proc.pid}/io") as f:
                for line in f:
                    if line.startswith("write_bytes:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def stop(self):
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return time.monotonic() - t0

    def logtext(self):
        with open(self.log.name) as f:
            return f.read()


def join(w, code, peer, host=False):
    w.send(json.dumps({"action": "join", "room_code": code, "peer_id": peer, "is_host": host}))
    msgs = []
    while True:
        m = json.loads(w.recv())
        msgs.append(m)
        if m["type"] in ("connected", "error"):
            return msgs


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def push():
    d = tempfile.mkdtemp(prefix="store-bench-")
    s = Server(d, log_level="debug")
    c = http.client.HTTPConnection("127.0.0.1", s.port)
    c.request("POST", "/api/rooms", body=json.dumps({"desired_room_code": "PUSH1", "desired_host_id": "h"}))
    c.getresponse().read()
    host = s.ws()
    join(host, "PUSH1", "h", True)
    doc = json.dumps("x" * (1 << 20))
    stop = threading.Event()
    pings, healths = [], []

    def pinger():
        w = s.ws()
        while not stop.is_set():
            t = time.monotonic()
            w.send('{"action":"ping"}')
            while json.loads(w.recv())["type"] != "pong":
                pass
            pings.append((time.monotonic() - t) * 1000)
            t = time.monotonic()
            s.get("/health")
            healths.append((time.monotonic() - t) * 1000)
            time.sleep(0.02)

    th = threading.Thread(target=pinger)
    th.start()
    wb0 = s.write_bytes()
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < 30:
        host.send('{"action":"sync_document","document":' + doc + "}")
        n += 1
        nxt = t0 + n / 20
        time.sleep(max(0, nxt - time.monotonic()))
    elapsed = time.monotonic() - t0
    stop.set()
    th.join()
    wb = s.write_bytes() - wb0
    s.stop()
    writes = [l for l in s.logtext().splitlines() if "room store: wrote" in l]
    print(f"push: {n} documents of 1 MiB in {elapsed:.1f} s ({n / elapsed:.1f}/s)")
    print(f"  store writes: {len(writes)} ({len(writes) / elapsed:.2f}/s), "
          f"bytes written to disk: {wb / elapsed / 1e6:.2f} MB/s (vs {n * (1 << 20) / elapsed / 1e6:.1f} MB/s pushed)")
    print(f"  ping RTT ms: p50 {pct(pings, .5):.2f} p99 {pct(pings, .99):.2f} max {max(pings):.2f} (n={len(pings)})")
    print(f"  /health ms: p50 {pct(healths, .5):.2f} p99 {pct(healths, .99):.2f} max {max(healths):.2f}")
    shutil.rmtree(d, ignore_errors=True)


def restart(count=100_000):
    d = tempfile.mkdtemp(prefix="store-bench-")
    s = Server(d, {"ROOM_SAVE_DELAY_MS": "0", "ROOM_SAVE_MAX_DELAY_MS": "0"})
    c = http.client.HTTPConnection("127.0.0.1", s.port)
    t0 = time.monotonic()
    for i in range(count):
        c.request("POST", "/api/rooms", body='{"desired_room_code":"R%06d","desired_host_id":"h"}' % i)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    made = time.monotonic() - t0
    end = time.monotonic() + 120
    while s.health()["room_store"]["unsaved_rooms"] and time.monotonic() < end:
        time.sleep(0.05)
    saved = time.monotonic() - t0
    down = s.stop()
    size = os.path.getsize(os.path.join(d, "rooms.redb"))
    print(f"restart: {count} rooms created in {made:.1f} s, all saved after {saved:.1f} s; "
          f"store file {size / 1e6:.1f} MB; SIGTERM exit {down:.2f} s")
    for k in range(3):
        s = Server(d)
        ready = s.ready_after
        t = time.monotonic()
        st, _ = s.get("/api/rooms/R%06d" % (count // 2))
        first = (time.monotonic() - t) * 1000
        print(f"  restart {k + 1}: answering /health after {ready * 1000:.0f} ms; "
              f"first GET of a stored room {st} in {first:.1f} ms")
        s.stop()
    shutil.rmtree(d, ignore_errors=True)


def bigjoin():
    d = tempfile.mkdtemp(prefix="store-bench-")
    s = Server(d)
    c = http.client.HTTPConnection("127.0.0.1", s.port)
    c.request("POST", "/api/rooms", body='{"desired_room_code":"BIG","desired_host_id":"h"}')
    c.getresponse().read()
    host = s.ws()
    join(host, "BIG", "h", True)
    host.send('{"action":"sync_document","document":' + json.dumps("y" * (10 << 20)) + "}")
    host.send('{"action":"ping"}')
    while json.loads(host.recv())["type"] != "pong":
        pass
    host.close()
    s.stop()
    for k in range(3):
        s = Server(d)
        base = s.hwm_kib()
        w = s.ws()
        t = time.monotonic()
        # Timed on the raw socket: websocket-client takes seconds to decode
        # a 10 MiB frame in Python. The pong follows the document_sync.
        w.send(json.dumps({"action": "join", "room_code": "BIG", "peer_id": "guest"}))
        w.send('{"action":"ping"}')
        got = b""
        total = 0
        while not got.endswith(b'{"type":"pong"}'):
            chunk = w.sock.recv(1 << 20)
            assert chunk, "connection closed"
            got = got[-64:] + chunk if len(got) > 64 else got + chunk
            total += len(chunk)
        took = (time.monotonic() - t) * 1000
        assert total > 10 << 20, total
        print(f"bigjoin {k + 1}: first join of a stored 10 MiB room: document_sync after {took:.0f} ms; "
              f"peak RSS {s.hwm_kib() / 1024:.1f} MiB (at start {base / 1024:.1f} MiB)")
        w.close()
        s.stop()
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    what = sys.argv[1:] or ["push", "restart", "bigjoin"]
    for w in what:
        {"push": push, "restart": restart, "bigjoin": bigjoin}[w]()
