#!/usr/bin/env python3
"""Writes the seed corpora under tools/fuzz/corpus/<target>/.

Seeds are real requests and messages, valid and broken. A seed's file name
is `<expected>--<what>`: `tests/fuzz_regressions.rs` replays every seed
through the target's `run` and asserts that the summary's first word is
`<expected>` (see each target's module docs for its summary). Files the
fuzzer adds (hash names, no `--`) are replayed for the invariants only.

Run from anywhere: python3 tools/fuzz/make_seeds.py
"""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def crlf(s):
    return s.replace("\n", "\r\n")


# ---- HTTP requests ---------------------------------------------------------

GET_ROOT = crlf("GET / HTTP/1.1\nHost: localhost:3001\nUser-Agent: curl/8.5.0\nAccept: */*\n\n")
GET_HEALTH = crlf("GET /health HTTP/1.1\nHost: sync.example\n\n")
BODY = '{"desired_room_code":"TEAM-42","desired_host_id":"host_abcdefgh"}'
POST_ROOMS = crlf(
    "POST /api/rooms HTTP/1.1\nHost: sync.example\nOrigin: https://tracker.example\n"
    "Content-Type: application/json\nContent-Length: %d\n\n" % len(BODY)
) + BODY
POST_EMPTY = crlf("POST /api/rooms HTTP/1.1\nHost: sync.example\nContent-Length: 0\n\n")
GET_ROOM = crlf("GET /api/rooms/TEAM-42 HTTP/1.1\nHost: sync.example\n\n")
GET_R1 = crlf("GET /api/rooms/R1 HTTP/1.1\nHost: sync.example\n\n")
HEAD_R1 = crlf("HEAD /api/rooms/R1 HTTP/1.1\nHost: sync.example\n\n")
OPTIONS = crlf(
    "OPTIONS /api/rooms HTTP/1.1\nHost: sync.example\nOrigin: https://tracker.example\n"
    "Access-Control-Request-Method: POST\nAccess-Control-Request-Headers: content-type\n\n"
)
UPGRADE = crlf(
    "GET /ws?token=eyJhbGciOiJIUzI1NiJ9.e30.sig HTTP/1.1\nHost: sync.example\n"
    "Upgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n"
    "Sec-WebSocket-Version: 13\nOrigin: https://tracker.example\n\n"
)
LOGIN_BODY = '{"email":"a@b.c","password":"hunter22"}'
LOGIN = crlf(
    "POST /api/auth/login HTTP/1.1\nHost: sync.example\nContent-Length: %d\n\n" % len(LOGIN_BODY)
) + LOGIN_BODY
ME = crlf("GET /api/auth/me HTTP/1.1\nHost: sync.example\nAuthorization: Bearer abc.def.ghi\n\n")
CLOSE = crlf("GET /health HTTP/1.0\n\n")
KEEP10 = crlf("GET /health HTTP/1.0\nConnection: keep-alive\n\n")
PROXIED = crlf(
    "POST /api/rooms HTTP/1.1\nHost: sync.example\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\n"
    "X-Real-IP: 203.0.113.9\nX-Forwarded-Proto: https\nContent-Length: 2\n\n{}"
)

http_head = {
    "req--get-root": GET_ROOT,
    "req--get-health": GET_HEALTH,
    "req--post-rooms-json": POST_ROOMS,
    "req--post-rooms-empty": POST_EMPTY,
    "req--get-room": GET_ROOM,
    "req--options-preflight": OPTIONS,
    "req--ws-upgrade": UPGRADE,
    "req--login": LOGIN,
    "req--bearer": ME,
    "req--http10": CLOSE,
    "req--proxied": PROXIED,
    "req--leading-crlf": "\r\n\r\n" + GET_HEALTH,
    "req--bare-lf": "GET /health HTTP/1.1\nHost: x\n\n",
    "req--query-escapes": crlf("GET /api/auth/setup-info?token=a%2Bb+c&x=%zz HTTP/1.1\n\n"),
    "req--pipelined-first": GET_HEALTH + GET_ROOT,
    "more--empty": "",
    "more--request-line": "GET /hea",
    "more--head-no-end": crlf("GET / HTTP/1.1\nHost: a\n"),
    "more--body-short": POST_ROOMS[:-5],
    "e400--tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
    "e400--bad-content-length": crlf("POST / HTTP/1.1\nContent-Length: x\n\n"),
    "e400--signed-content-length": crlf("POST /api/rooms HTTP/1.1\nContent-Length: +2\n\n{}"),
    "e400--conflicting-lengths": crlf("POST / HTTP/1.1\nContent-Length: 1\nContent-Length: 2\n\nab"),
    "req--chunked": crlf("POST /api/rooms HTTP/1.1\nTransfer-Encoding: chunked\n\n2\n{}\n0\n\n"),
    "req--chunked-ext-trailer": crlf(
        'POST /api/rooms HTTP/1.1\nTransfer-Encoding: chunked\n\n4;x=y\n{"a"\n3\n:1}\n0\nX-T: v\n\n'
    ),
    "req--expect-continue": crlf("POST /api/rooms HTTP/1.1\nExpect: 100-continue\nContent-Length: 2\n\n{}"),
    "more--chunked-partial": crlf('POST /api/rooms HTTP/1.1\nTransfer-Encoding: chunked\n\n10\n{"desired'),
    "more--expect-continue": crlf("POST /api/rooms HTTP/1.1\nExpect: 100-continue\nContent-Length: 2\n\n"),
    "e501--gzip": crlf("POST /api/rooms HTTP/1.1\nTransfer-Encoding: gzip\n\n"),
    "e400--te-and-cl": crlf("POST / HTTP/1.1\nTransfer-Encoding: chunked\nContent-Length: 5\n\n0\n\n"),
    "e400--chunk-overrun": crlf("POST / HTTP/1.1\nTransfer-Encoding: chunked\n\n2\nabc\n0\n\n"),
    "e413--chunk-too-big": crlf("POST / HTTP/1.1\nTransfer-Encoding: chunked\n\nfffff\n"),
    "e400--absolute-form": crlf("GET http://evil.example/ HTTP/1.1\n\n"),
    "req--options-asterisk": crlf("OPTIONS * HTTP/1.1\nHost: sync.example\n\n"),
    "e400--get-asterisk": crlf("GET * HTTP/1.1\nHost: sync.example\n\n"),
    "e431--65-headers": crlf("GET / HTTP/1.1\n" + "".join("X-H%d: v\n" % i for i in range(65)) + "\n"),
    "e400--http2-preface": "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "e400--space-in-name": crlf("GET / HTTP/1.1\nBad Header: x\n\n"),
    "e400--non-utf8-host": b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
    "e400--bad-version": crlf("GET / HTTP/9.9\n\n"),
    "e413--huge-length": crlf("POST /api/rooms HTTP/1.1\nContent-Length: 99999999999\n\n"),
    "e413--over-limit": crlf("POST /api/rooms HTTP/1.1\nContent-Length: 1025\n\n"),
    "e431--too-many-headers": crlf("GET / HTTP/1.1\n" + "".join("X-H%d: v\n" % i for i in range(70)) + "\n"),
    "e431--long-header": "GET / HTTP/1.1\r\nX-Big: " + "a" * 17000,
}
for name, data in http_head.items():
    put("http_head", name, data)


def stream(flags, cuts, data):
    if isinstance(data, str):
        data = data.encode()
    return bytes([flags, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + data


http_stream = {
    "end--one": stream(0, [], GET_HEALTH),
    "end--pipelined-three": stream(0, [5, 40, 90], GET_HEALTH + POST_ROOMS + GET_ROOM),
    "end--with-bodies": stream(0, [3, 77, 150, 151], POST_ROOMS + LOGIN + POST_EMPTY),
    "end--blank-lines-between": stream(0, [1, 2, 3], GET_HEALTH + "\r\n" + GET_ROOT),
    "more--body-pending": stream(0, [10], POST_ROOMS[:-1]),
    "close--http10": stream(0, [], CLOSE + GET_ROOT),
    "close--connection-close": stream(0, [20], crlf("GET / HTTP/1.1\nConnection: close\n\n") + GET_ROOT),
    # HTTP/1.0 connections close after the answer, keep-alive or not.
    "close--http10-keep-alive": stream(0, [7], KEEP10 + GET_ROOT),
    "upgrade--then-frames": stream(0, [30], UPGRADE + "\x81\x85\x00\x00\x00\x00hello"),
    "e400--garbage-after-request": stream(0, [2], GET_HEALTH + "\x00\x01garbage\r\n\r\n"),
    "e413--small-body-limit": stream(1, [4], POST_ROOMS),
    "e431--filler-overflow": stream(0x80, [200], "b" * 400 + "\r\n\r\n"),
    "end--filler-fits": stream(0x80, [16, 30], "\r\nHost: x\r\n\r\n"),
    "end--chunked-pipelined": stream(
        0,
        [40, 75, 90],
        crlf('POST /api/rooms HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n1\n{\n1\n}\n0\n\n')
        + GET_HEALTH,
    ),
    "more--chunked-trailer-pending": stream(
        0, [50], crlf("POST /api/rooms HTTP/1.1\nTransfer-Encoding: chunked\n\n2\n{}\n0\nX-T: 1\n")
    ),
}
for name, data in http_stream.items():
    put("http_stream", name, data)


# ---- WebSocket frames ------------------------------------------------------

MASK = b"\x37\xfa\x21\x3d"


def frame(opcode, payload, fin=True, mask=MASK, rsv=0):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if mask is None:
        head = bytes([b0])
        mbit = 0
    else:
        head = bytes([b0])
        mbit = 0x80
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def ws(limit, cuts, data):
    return bytes([limit, len(cuts)]) + b"".join(struct.pack("<H", c) for c in cuts) + data


JOIN = '{"action":"join","room_code":"R1","peer_id":"alice","is_host":false,"metadata":{"name":"Alice"}}'
BIG = 0x80
ws_frames = {
    "end--join": ws(BIG, [], frame(1, JOIN)),
    "end--session": ws(BIG, [3, 50, 51], frame(1, JOIN) + frame(9, b"hb") + frame(1, '{"action":"ping"}')
                       + frame(10, b"") + frame(1, '{"action":"broadcast","data":"hi"}')),
    "end--fragmented-text": ws(BIG, [9], frame(1, '{"action":', fin=False) + frame(9, b"")
                               + frame(0, '"ping"}')),
    "end--binary": ws(BIG, [], frame(2, bytes(range(20)))),
    "end--medium-16bit-length": ws(BIG, [100, 200], frame(1, '{"action":"broadcast","data":"' + "x" * 300 + '"}')),
    "more--partial-frame": ws(BIG, [], frame(1, JOIN)[:-3]),
    "peer-close--normal": ws(BIG, [], frame(1, '{"action":"leave"}') + frame(8, struct.pack(">H", 1000) + b"bye")),
    "peer-close--empty": ws(BIG, [], frame(8, b"") + frame(1, "after close")),
    "peer-close--bad-code": ws(BIG, [], frame(8, struct.pack(">H", 1005))),
    "c1002--unmasked": ws(BIG, [], frame(1, "hi", mask=None)),
    "c1002--rsv1": ws(BIG, [], frame(1, "hi", rsv=0x40)),
    "c1002--long-ping": ws(BIG, [], frame(9, b"p" * 126)),
    "c1002--fragmented-ping": ws(BIG, [], frame(9, b"p", fin=False)),
    "c1002--stray-continuation": ws(BIG, [], frame(0, "x")),
    "c1002--nested-message": ws(BIG, [], frame(1, "a", fin=False) + frame(1, "b")),
    "c1002--reserved-opcode": ws(BIG, [], frame(3, "x")),
    "c1002--reserved-control": ws(BIG, [], frame(11, "")),
    "c1002--one-byte-close": ws(BIG, [], frame(8, b"\x03")),
    "c1007--bad-utf8-text": ws(BIG, [], frame(1, b"\xff\xfe\xfd")),
    "c1007--bad-utf8-close-reason": ws(BIG, [], frame(8, struct.pack(">H", 1000) + b"\xc3")),
    "c1007--split-utf8-bad-end": ws(BIG, [], frame(1, "h\u00e9".encode()[:-1], fin=False) + frame(0, b"\x41")),
    "c1009--declared-huge": ws(BIG, [], b"\x81\xff" + struct.pack(">Q", 1 << 40) + MASK),
    "c1009--small-limit": ws(0, [], frame(1, "y" * 65)),
    "c1009--fragments-over-limit": ws(2, [40], frame(1, "a" * 60, fin=False) + frame(0, "b" * 40)),
    "end--fragments-at-limit": ws(2, [40], frame(1, "a" * 60, fin=False) + frame(0, "b" * 35, fin=False)
                                  + frame(0, "c")),
    "c1009--many-small-fragments": ws(0, [], b"".join(frame(1 if i == 0 else 0, "z" * 7, fin=False) for i in range(12))),
}
for name, data in ws_frames.items():
    put("ws_frames", name, data)


# ---- client message scripts -----------------------------------------------

def script(*lines):
    return "\n".join(lines)


J = lambda code, peer, host=False, meta=None: (
    '{"action":"join","room_code":"%s","peer_id":"%s","is_host":%s%s}'
    % (code, peer, "true" if host else "false", "" if meta is None else ',"metadata":' + meta)
)
ws_client_message = {
    "m2-r1-c0--host-and-peer": script("cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p", False, '{"n":"P"}')),
    "m3-r1-c0--broadcast-and-doc": script(
        "cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p"), "1" + '{"action":"broadcast","data":"hi \\"there\\""}',
        "0" + '{"action":"sync_document","document":"{\\"tasks\\":[]}"}', "2" + J("R1", "q"),
        "2" + '{"action":"request_sync"}', "1" + '{"action":"sync_document","document":"nope"}'),
    "m0-r0-c0--unknown-room": script("0" + J("NOPE", "p")),
    "m0-r1-c0--false-host": script("cR1 h", "0" + J("R1", "mallory", True)),
    "m0-r0-c0--not-joined": script('0{"action":"broadcast","data":"x"}', '0{"action":"request_sync"}',
                                  '0{"action":"sync_document","document":"x"}', '0{"action":"ping"}'),
    "m0-r0-c0--bad-input": script("0not json", '0{"action":"dance"}', '0{"action":"broadcast","data":5}',
                                 "0[]", '0{"room_code":"R"}', '0{"action":"join","room_code":"R","peer_id":""}'),
    "m3-r2-c1--move-and-replace": script("cA ha", "cB hb", "0" + J("A", "x"), "1" + J("A", "y"), "2" + J("B", "z"),
                                        "1" + J("B", "y"), "3" + J("B", "y")),
    "m1-r1-c1--leave": script("cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p"), '0{"action":"leave"}'),
    "m1-r1-c1--drop": script("cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p"), "x0"),
    "m0-r0-c1--expire": script("cR1 h", "0" + J("R1", "h", True), "x0", "t1", "t5"),
    "m1-r1-c1--rejoin-keeps-room": script("cR1 h", "0" + J("R1", "h", True), "x0", "t2", "1" + J("R1", "h", True), "t9"),
    "m1-r1-c1--slow-consumer": script("cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p"), "s1",
                                     *['0{"action":"broadcast","data":"%s"}' % ("d" * 900)] * 6),
    # The slow consumer reads again: it gets what was kept of its queue,
    # then the 1008, and answers the close.
    "m1-r1-c1--slow-consumer-resumes": script("cR1 h", "0" + J("R1", "h", True), "1" + J("R1", "p"), "s1",
                                             *['0{"action":"broadcast","data":"%s"}' % ("d" * 900)] * 6, "r1"),
    "m1-r1-c1--bad-utf8": script("cR1 h", "0" + J("R1", "p"), "1" + J("R1", "q")).encode() + b"\n1\xff\xfe",
    "m1-r1-c0--idle-forever": script("i0", "cR1 h", "0" + J("R1", "h", True), "t999999"),
    "m0-r1-c0--idle-hour": script("i3600", "cR1 h", "t3599"),
    "m0-r3-c0--random-codes": script("c", "c", "c h2"),
    "m0-r1-c0--restore": script("cR1 h", "cR1 other", "cbad!code", "c h\x01", "c" + "L" * 65),
    "m1-r1-c1--reconnect-same-slot": script("cR1 h", "0" + J("R1", "h", True), '0{"action":"leave"}',
                                           "0" + J("R1", "h", True)),
    "m2-r1-c0--big-metadata": script("cR1 h", "0" + J("R1", "a", False, '{"k":"' + "m" * 1000 + '"}'),
                                    "1" + J("R1", "b", False, '{"k":"' + "m" * 5000 + '"}'), "1" + J("R1", "b")),
    # A room_info over MAX_OUTBOUND_BYTES: a client that reads takes it
    # whole; one that stopped reading is closed with 1008.
    "m1-r1-c0--room-info-over-bound-reader-keeps-up": script(
        "cR1 h", "0" + J("R1", "a", False, '{"k":"' + "m" * 4050 + '"}')),
    "m0-r1-c1--room-info-over-bound-not-reading": script(
        "s0", "cR1 h", "0" + J("R1", "a", False, '{"k":"' + "m" * 4050 + '"}')),
    "m2-r1-c0--unicode-ids": script("cR1 h\u00e9", "0" + J("R1", "h\u00e9", True), "1" + J("R1", "\u0e02\u0e38\u0e19"),
                                   '1{"action":"broadcast","data":"\\u0000\\ud83d\\ude00"}'),
}
for name, data in ws_client_message.items():
    put("ws_client_message", name, data)


# ---- REST routes -----------------------------------------------------------

def api_raw(flags, data):
    return bytes([flags & ~1]) + (data.encode() if isinstance(data, str) else data)


def api_body(flags, body):
    return bytes([flags | 1]) + body.encode()


WS_BAD = crlf("GET /ws HTTP/1.1\nHost: sync.example\nUpgrade: websocket\nConnection: Upgrade\nSec-WebSocket-Version: 8\n\n")
api_rooms = {
    "200,200--root-and-health": api_raw(0, GET_ROOT + GET_HEALTH),
    "200,200--create-then-get": api_raw(0, POST_ROOMS + GET_ROOM),
    "200--get-r1": api_raw(0, GET_R1),
    "200--head-r1": api_raw(0, HEAD_R1),
    "404--unknown-room": api_raw(0, crlf("GET /api/rooms/nope HTTP/1.1\nHost: sync.example\n\n")),
    "404--unknown-route": api_raw(0, crlf("GET /nothing HTTP/1.1\nHost: sync.example\n\n")),
    "405--put-rooms": api_raw(0, crlf("PUT /api/rooms HTTP/1.1\nHost: sync.example\nContent-Length: 0\n\n")),
    "400--no-host": api_raw(0, crlf("GET /health HTTP/1.1\n\n")),
    "200--http10-no-host": api_raw(0, crlf("GET /health HTTP/1.0\n\n")),
    "400--two-hosts": api_raw(0, crlf("GET /health HTTP/1.1\nHost: a.example\nHost: b.example\n\n")),
    "204--options-asterisk": api_raw(0, crlf("OPTIONS * HTTP/1.1\nHost: sync.example\n\n")),
    "405--delete-health": api_raw(0, crlf("DELETE /health HTTP/1.1\nHost: sync.example\n\n")),
    "204--preflight": api_raw(2, OPTIONS),
    "upgrade--valid": api_raw(0, UPGRADE),
    "403--origin-not-allowed": api_raw(2, UPGRADE.replace("https://tracker.example", "https://evil.example")),
    "400--bad-ws-version": api_raw(0, WS_BAD),
    "503,503--accounts-off": api_raw(0, LOGIN + ME),
    "200,200,200,200,200,429--rate-limited": api_raw(0, POST_EMPTY * 6),
    "200--proxied-https": api_raw(4, PROXIED),
    "200--restore-r1": api_raw(0, crlf("POST /api/rooms HTTP/1.1\nHost: sync.example\nContent-Length: 48\n\n") + '{"desired_room_code":"R1","desired_host_id":"h"} '),
    "409--restore-r1-without-host": api_raw(0, crlf("POST /api/rooms HTTP/1.1\nHost: sync.example\nContent-Length: 27\n\n") + '{"desired_room_code":"R1"} '),
    "200--peer-with-metadata": api_raw(8, '{"name":"Alice","color":"#f00"}\n' + GET_R1),
    "200,200--peer-null-metadata": api_raw(8, "null\n" + GET_R1 + HEAD_R1),
    "200--peer-bad-metadata": api_raw(8, "{oops\n" + GET_R1),
    "200--body-empty": api_body(0, ""),
    "200--body-whitespace": api_body(0, " \n\t "),
    "200--body-desired": api_body(0, BODY),
    "200--body-restore": api_body(0, '{"desired_room_code":"R1","desired_host_id":"h"}'),
    "409--body-restore-wrong-host": api_body(0, '{"desired_room_code":"R1","desired_host_id":"someone"}'),
    "400--body-bad-code": api_body(0, '{"desired_room_code":"has space"}'),
    "400--body-long-code": api_body(0, '{"desired_room_code":"%s"}' % ("A" * 65)),
    "400--body-control-host": api_body(0, '{"desired_host_id":"a\\u0007b"}'),
    "400--body-unknown-field": api_body(0, '{"room":"x"}'),
    "400--body-not-json": api_body(0, "desired_room_code=R1"),
    "400--body-wrong-type": api_body(0, '{"desired_room_code":42}'),
    "400--body-array": api_body(0, "[]"),
    "400--body-array-of-fields": api_body(0, '["ARR", "host_arr"]'),
    "400--body-empty-host": api_body(0, '{"desired_host_id":""}'),
    "503--memory-tight-new-room": api_body(16, BODY),
    "200--memory-tight-restore": api_body(16, '{"desired_room_code":"R1","desired_host_id":"h"}'),
    "200,503--memory-tight-get-then-post": api_raw(16, GET_R1 + POST_EMPTY),
}
for name, data in api_rooms.items():
    put("api_rooms", name, data)


# ---- query strings and tokens ---------------------------------------------

http_query = {
    "b1t0--bearer-jwt": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
    "b1t0--lowercase-scheme": "bearer   abc  ",
    "b0t0--basic": "Basic dXNlcjpwYXNz",
    "b0t0--bearer-empty": "Bearer ",
    "b0t1--query-token": "token=a%2Bb+c&x=1",
    "b0t1--query-second": "x=%zz&token=%E0%B8%82",
    "b0t1--query-bad-escape-kept": "token=%zz",
    "b0t1--query-bad-utf8-replaced": "token=%ff",
    "b0t1--query-empty-value": "token",
    "b0t0--plain": "hello world",
}
for name, data in http_query.items():
    put("http_query", name, data)


# ---- rate limits ---------------------------------------------------------

def rl(rate, burst, cap, ops):
    return struct.pack("<d", rate) + struct.pack("<d", burst) + bytes([cap]) + bytes(ops)


ratelimit = {
    "a5r1--default-burst": rl(2.0, 5.0, 15, [1, 0] * 6),
    "a7r0--refill": rl(2.0, 5.0, 15, [1, 0] * 5 + [1, 14, 1, 14]),
    "a10r0--many-clients": rl(2.0, 1.0, 3, [x for k in range(10) for x in (k, 1)]),
    "a1r1--slow-rate": rl(1e-9, 1.0, 15, [3, 0, 3, 255]),
    "a1r1--tiny-rate": rl(1e-30, 1.0, 15, [3, 0, 3, 0]),
    "a5r1--nan-rate-uses-default": rl(float("nan"), -1.0, 15, [2, 0] * 6),
}
for name, data in ratelimit.items():
    put("ratelimit", name, data)
