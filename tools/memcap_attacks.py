#!/usr/bin/env python3
"""Hostile clients for `tools/memcap.sh --attack NAME` (issue 15).

Each attack is one that pushed the server past its memory cap before the
hardening; `all` runs them at once. Throughout, a well-behaved client in a
room of its own pings every 200 ms; the run fails (exit 1) if one of its
pings goes unanswered for 5 s or its connection is lost.

  frag       16 WebSockets that never join each start a 15 MiB message in
             fragments and keep sending (expected: closed 1009 at 64 KiB)
  joined     16 joined WebSockets each start a 15 MiB message that never
             ends (expected: the total bound closes most with 1013)
  pipeline   200 HTTP connections pipelining GET /health, never reading
  docs       12 rooms, then a 15 MiB document into each (expected: the
             memory guard answers an error, or 1013, once near the cap)
  all        all of the above at the same time

Only the standard library; speaks just enough RFC 6455 for the job.
"""
import argparse
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

MIB = 1 << 20
HOLD = 12.0  # seconds each attack keeps its pressure up


def post_room(port, code, host):
    body = json.dumps({"desired_room_code": code, "desired_host_id": host}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/rooms", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise OSError("closed during the handshake")
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n")[0]
    if b" 101 " not in status:
        raise OSError(status.decode(errors="replace"))
    return s, bytearray(rest)


def header(opcode, n, fin=True):
    """A client frame header with a zero masking key (payload sent as is)."""
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        h = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        h = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        h = struct.pack("!BBQ", b0, 0x80 | 127, n)
    return h + b"\0\0\0\0"


def text(payload):
    return header(1, len(payload)) + payload


def read_frame(s, buf):
    """(opcode, payload) of the next server frame; None on EOF."""
    def need(n):
        while len(buf) < n:
            d = s.recv(1 << 16)
            if not d:
                return False
            buf.extend(d)
        return True
    if not need(2):
        return None
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    off = 2
    if n == 126:
        if not need(4):
            return None
        n, off = struct.unpack("!H", buf[2:4])[0], 4
    elif n == 127:
        if not need(10):
            return None
        n, off = struct.unpack("!Q", buf[2:10])[0], 10
    if not need(off + n):
        return None
    payload = bytes(buf[off:off + n])
    del buf[:off + n]
    return op, payload


def join(s, buf, code, peer, host=False):
    s.sendall(text(json.dumps({"action": "join", "room_code": code, "peer_id": peer,
                               "is_host": host}).encode()))
    while True:
        f = read_frame(s, buf)
        if f is None:
            raise OSError("closed while joining")
        if f[0] == 1 and b'"connected"' in f[1]:
            return
        if f[0] == 1 and b'"error"' in f[1]:
            raise OSError(f[1].decode())


def close_code(s, buf):
    """Reads until the server's close frame (or EOF); its code or None."""
    s.settimeout(30)
    try:
        while True:
            f = read_frame(s, buf)
            if f is None:
                return None
            if f[0] == 8:
                return struct.unpack("!H", f[1][:2])[0] if len(f[1]) >= 2 else 1005
    except OSError:
        return None


class Calm:
    """The well-behaved client: pings in a room of its own."""

    def __init__(self, port):
        self.port, self.stop = port, threading.Event()
        self.worst, self.pings, self.failure = 0.0, 0, None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        try:
            post_room(self.port, "CALM-ROOM", "calm-host")
            s, buf = ws_connect(self.port)
            join(s, buf, "CALM-ROOM", "calm-host", True)
            s.settimeout(5)
            while not self.stop.is_set():
                t0 = time.monotonic()
                s.sendall(text(b'{"action":"ping"}'))
                while True:
                    f = read_frame(s, buf)
                    if f is None:
                        raise OSError("connection lost")
                    if f[0] == 1 and b'"pong"' in f[1]:
                        break
                self.worst = max(self.worst, time.monotonic() - t0)
                self.pings += 1
                time.sleep(0.2)
        except OSError as e:
            self.failure = f"calm client: {e}"


def attack_frag(port, out):
    codes = []

    def one(i):
        try:
            s, buf = ws_connect(port)
        except OSError as e:
            codes.append(f"refused: {e}"[:60])
            return
        try:
            s.sendall(header(1, 15 * MIB, fin=False))
            chunk = b"x" * (256 << 10)
            sent = 0
            s.settimeout(5)
            while sent < 15 * MIB:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        codes.append(close_code(s, buf))
    run_all([lambda i=i: one(i) for i in range(16)])
    out["frag_close_codes"] = summary(codes)


def attack_joined(port, out):
    post_room(port, "ATK-JOINED", "atk-host")
    codes = []

    def one(i):
        try:
            s, buf = ws_connect(port)
            join(s, buf, "ATK-JOINED", f"j{i}")
        except OSError as e:
            codes.append(f"refused: {e}"[:60])
            return
        try:
            s.sendall(header(1, 15 * MIB, fin=False))
            chunk = b"y" * (256 << 10)
            s.settimeout(5)
            for _ in range(15 * 4 - 1):
                s.sendall(chunk)
            # Hold the unfinished message, trickling a byte now and then.
            end = time.monotonic() + HOLD
            while time.monotonic() < end:
                s.sendall(b"y")
                time.sleep(1)
            codes.append("held")
        except OSError:
            codes.append(close_code(s, buf))
    run_all([lambda i=i: one(i) for i in range(16)])
    out["joined_outcomes"] = summary(codes)


def attack_pipeline(port, out):
    reqs = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 4000
    socks = []
    for _ in range(200):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    end = time.monotonic() + HOLD
    sent = 0
    while time.monotonic() < end:
        for s in socks:
            try:
                sent += s.send(reqs)
            except BlockingIOError:
                pass
            except OSError:
                pass
        time.sleep(0.05)
    out["pipeline_bytes_sent"] = sent
    for s in socks:
        s.close()


def attack_docs(port, out):
    outcomes = []

    def one(i):
        code = f"ATK-DOC-{i}"
        post_room(port, code, f"doc-host-{i}")
        try:
            s, buf = ws_connect(port)
            join(s, buf, code, f"doc-host-{i}", True)
            doc = b'{"action":"sync_document","document":"' + b"d" * (15 * MIB) + b'"}'
            s.settimeout(30)
            s.sendall(text(doc))
            s.sendall(text(b'{"action":"request_sync"}'))
            while True:
                f = read_frame(s, buf)
                if f is None:
                    outcomes.append("eof")
                    return
                if f[0] == 8:
                    outcomes.append(f"close {struct.unpack('!H', f[1][:2])[0]}")
                    return
                if f[0] == 1 and b'"error"' in f[1][:40]:
                    outcomes.append("error")
                    return
                if f[0] == 1 and b'"document_sync"' in f[1][:40]:
                    outcomes.append("stored" if len(f[1]) > MIB else "kept")
                    return
        except OSError as e:
            outcomes.append(f"refused: {e}"[:60])
    # One after the other, as a host would: each sees the memory so far.
    for i in range(12):
        one(i)
    out["doc_outcomes"] = summary(outcomes)


def run_all(fns):
    ts = [threading.Thread(target=f, daemon=True) for f in fns]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)


def summary(items):
    counts = {}
    for x in items:
        counts[str(x)] = counts.get(str(x), 0) + 1
    return counts


ATTACKS = {"frag": attack_frag, "joined": attack_joined, "pipeline": attack_pipeline,
           "docs": attack_docs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--attack", choices=sorted(ATTACKS) + ["all"], required=True)
    a = ap.parse_args()
    calm = Calm(a.port)
    calm.thread.start()
    time.sleep(0.5)
    out = {"attack": a.attack}
    names = sorted(ATTACKS) if a.attack == "all" else [a.attack]
    run_all([lambda n=n: ATTACKS[n](a.port, out) for n in names])
    calm.stop.set()
    calm.thread.join(10)
    out["calm_pings"] = calm.pings
    out["calm_worst_ms"] = round(calm.worst * 1000, 1)
    out["calm_failure"] = calm.failure
    print(json.dumps(out))
    ok = calm.failure is None and calm.pings > 0
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
