"""Malformed and ambiguous requests: refused with the right 4xx/5xx, closed, never forwarded.

Each case is sent on a raw socket to one proxy (1 worker) in front of one
origin. The proxy must answer one status line, close the connection, and the
origin must not have received anything (for a bad chunked body, whose head is
valid, the proxy may already have connected and sent the head, but the origin
must never see a complete request). After every case the same worker still
serves a fresh valid request.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from servers import Origin, ProxyProcess, config_toml, free_port

SETTLE = 0.1  # time for anything the proxy might still forward to reach the origin


@dataclass
class Ended:
    data: bytes
    how: str  # "eof" (FIN), "reset" (RST) or "timeout"


def send_and_read(port: int, data: bytes, timeout: float = 3.0) -> Ended:
    """Send `data` in one go and read until the proxy closes (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    out = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # the proxy may close before taking everything: then read what it said
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return Ended(bytes(out), "timeout")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                return Ended(bytes(out), "timeout")
            except ConnectionResetError:
                return Ended(bytes(out), "reset")
            if not chunk:
                return Ended(bytes(out), "eof")
            out += chunk


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """(status, headers, body, rest) of the first response in `data` (Content-Length framed)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data[:300]!r}"
    lines = head.split(b"\r\n")
    version, status, _ = lines[0].split(b" ", 2)
    assert version == b"HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        assert colon, line
        headers[name.decode().lower()] = value.strip().decode()
    n = int(headers["content-length"])
    return int(status), headers, rest[:n], rest[n:]


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin(name="origin").start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def proxy(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    # No upstream keep-alive: every forwarded request shows as a new origin connection.
    tmp = tmp_path_factory.mktemp("malformed")
    port = free_port()
    text = config_toml({"backend": [origin.address]}, port, tmp / "access.log",
                       upstream_extra="keepalive = 0\n")
    proc = ProxyProcess(text, tmp, port)
    try:
        proc.start()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def first_worker(proxy: ProxyProcess) -> int:
    pids = proxy.worker_pids()
    assert len(pids) == 1, pids
    return pids[0]


@pytest.fixture
def clean_origin(origin: Origin, proxy: ProxyProcess, first_worker: int) -> Origin:
    time.sleep(0.05)  # let the previous test's closes land before forgetting them
    origin.raw.clear()
    origin.requests.clear()
    origin.errors.clear()
    origin.connections = 0
    return origin


def assert_still_serving(proxy: ProxyProcess, origin: Origin, first_worker: int) -> None:
    """The worker that refused the request is still the one serving (not crashed and replaced)."""
    before = len(origin.requests)
    got = send_and_read(proxy.port, b"GET /alive HTTP/1.1\r\nHost: example.com\r\n"
                                    b"Connection: close\r\n\r\n")
    assert got.how == "eof", got
    status, _, body, rest = split_response(got.data)
    assert status == 200
    assert body == b"origin /alive"
    assert rest == b""
    assert [r.target for r in origin.requests[before:]] == ["/alive"]
    assert proxy.worker_pids() == [first_worker], proxy.log()


def req(*headers: bytes, line: bytes = b"GET / HTTP/1.1", body: bytes = b"") -> bytes:
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


H = b"Host: example.com"
POST = b"POST /upload HTTP/1.1"
CHUNKED = b"Transfer-Encoding: chunked"

_rng = random.Random(1234)
GARBAGE = bytes(_rng.randrange(256) for _ in range(600))
TLS_HELLO = bytes.fromhex(
    "16030100c4010000c00303" + "ab" * 32 + "000020c02bc02fc02cc030cca9cca8c013c014009c009d"
    "002f0035000a010000770000000e000c0000096c6f63616c686f7374") + b"\r\n\r\n"

# (id, request bytes, expected status). The head is malformed: nothing may be forwarded.
HEAD_CASES: list[tuple[str, bytes, int]] = [
    # -- framing: Content-Length and Transfer-Encoding --------------------------
    ("cl-then-te", req(H, b"Content-Length: 5", CHUNKED, line=POST, body=b"0\r\n\r\n"), 400),
    ("te-then-cl", req(H, CHUNKED, b"Content-Length: 5", line=POST, body=b"0\r\n\r\n"), 400),
    ("cl-with-te-gzip", req(H, b"Content-Length: 5", b"Transfer-Encoding: gzip", line=POST,
                            body=b"hello"), 400),
    ("two-cl-same", req(H, b"Content-Length: 5", b"Content-Length: 5", line=POST,
                        body=b"hello"), 400),
    ("two-cl-different", req(H, b"Content-Length: 5", b"Content-Length: 6", line=POST,
                             body=b"hello!"), 400),
    ("cl-plus-sign", req(H, b"Content-Length: +5", line=POST, body=b"hello"), 400),
    ("cl-minus-sign", req(H, b"Content-Length: -5", line=POST, body=b"hello"), 400),
    ("cl-comma-list-same", req(H, b"Content-Length: 5, 5", line=POST, body=b"hello"), 400),
    ("cl-comma-list-different", req(H, b"Content-Length: 5,6", line=POST, body=b"hello!"), 400),
    ("cl-inner-space", req(H, b"Content-Length: 5 5", line=POST, body=b"hello"), 400),
    ("cl-hex", req(H, b"Content-Length: 0x5", line=POST, body=b"hello"), 400),
    ("cl-decimal-point", req(H, b"Content-Length: 5.0", line=POST, body=b"hello"), 400),
    ("cl-empty", req(H, b"Content-Length:", line=POST), 400),
    ("cl-overflow", req(H, b"Content-Length: 184467440737095516160", line=POST,
                        body=b"hello"), 400),
    ("te-twice", req(H, CHUNKED, CHUNKED, line=POST, body=b"0\r\n\r\n"), 400),
    ("te-chunked-chunked", req(H, b"Transfer-Encoding: chunked, chunked", line=POST,
                               body=b"0\r\n\r\n"), 400),
    # chunked is not the final coding: the length cannot be determined (RFC 9112 6.3 rule 4)
    ("te-gzip-only", req(H, b"Transfer-Encoding: gzip", line=POST, body=b"hello"), 400),
    ("te-gzip-chunked", req(H, b"Transfer-Encoding: gzip, chunked", line=POST,
                            body=b"0\r\n\r\n"), 501),
    ("te-in-http10", req(H, CHUNKED, line=b"POST /upload HTTP/1.0", body=b"0\r\n\r\n"), 400),
    ("te-space-before-colon", req(H, b"Transfer-Encoding : chunked", b"Content-Length: 5",
                                  line=POST, body=b"hello"), 400),
    # -- line endings and folding -------------------------------------------------
    ("obs-fold-space", req(H, b"X-Folded: a", b" b"), 400),
    ("obs-fold-tab", req(H, b"X-Folded: a", b"\tb"), 400),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: example.com\n\n", 400),
    ("bare-lf-after-request-line", b"GET / HTTP/1.1\nHost: example.com\r\n\r\n", 400),
    ("bare-lf-in-headers", b"GET / HTTP/1.1\r\nHost: example.com\nX-A: b\r\n\r\n", 400),
    ("bare-cr-in-request-line", b"GET / HTTP/1.1\rHost: example.com\r\n\r\n", 400),
    ("bare-cr-in-value", req(H, b"X-A: a\rb"), 400),
    ("bare-cr-ending-header", b"GET / HTTP/1.1\r\nHost: example.com\rX-A: b\r\n\r\n", 400),
    ("whitespace-before-first-header", req(b" Host: example.com"), 400),
    # -- header field syntax ----------------------------------------------------------
    ("nul-in-name", req(H, b"X-\x00A: b"), 400),
    ("nul-in-value", req(H, b"X-A: a\x00b"), 400),
    ("ctl-0x01-in-value", req(H, b"X-A: a\x01b"), 400),
    ("ctl-0x1f-in-value", req(H, b"X-A: a\x1fb"), 400),
    ("del-in-value", req(H, b"X-A: a\x7fb"), 400),
    ("ctl-in-name", req(H, b"X-\x01A: b"), 400),
    ("non-token-in-name", req(H, b"X-(A): b"), 400),
    ("space-before-colon", req(b"Host : example.com"), 400),
    ("tab-before-colon", req(H, b"X-A\t: b"), 400),
    ("space-in-name", req(H, b"X A: b"), 400),
    ("tab-in-name", req(H, b"X\tA: b"), 400),
    ("empty-name", req(H, b": b"), 400),
    ("no-colon", req(H, b"X-A b"), 400),
    # -- Host ---------------------------------------------------------------------
    ("missing-host-http11", req(b"Accept: */*"), 400),
    ("two-hosts", req(H, b"Host: other.example"), 400),
    ("two-hosts-same", req(H, H), 400),
    ("host-with-space", req(b"Host: exa mple.com"), 400),
    ("host-with-slash", req(b"Host: example.com/evil"), 400),
    ("host-with-userinfo", req(b"Host: user@example.com"), 400),
    ("host-with-quote", req(b'Host: exa"mple.com'), 400),
    ("host-with-nul", req(b"Host: example.com\x00.evil"), 400),
    # -- request line ---------------------------------------------------------------
    ("http09-request-line", b"GET /\r\n\r\n", 400),
    ("lower-case-method", req(H, line=b"get / HTTP/1.1"), 400),
    ("lower-case-protocol", req(H, line=b"GET / http/1.1"), 400),
    ("http-2.0", req(H, line=b"GET / HTTP/2.0"), 505),
    ("not-http-protocol", req(H, line=b"GET / RTSP/1.0"), 400),
    ("double-space", req(H, line=b"GET  / HTTP/1.1"), 400),
    ("double-space-before-version", req(H, line=b"GET /  HTTP/1.1"), 400),
    ("trailing-space", req(H, line=b"GET / HTTP/1.1 "), 400),
    ("tab-separated", req(H, line=b"GET\t/\tHTTP/1.1"), 400),
    ("space-in-target", req(H, line=b"GET /a b HTTP/1.1"), 400),
    ("missing-version", req(H, line=b"GET /"), 400),
    ("relative-target", req(H, line=b"GET index.html HTTP/1.1"), 400),
    ("asterisk-target-for-get", req(H, line=b"GET * HTTP/1.1"), 400),
    ("absolute-form-with-userinfo",
     req(H, line=b"GET http://user:secret@example.com/ HTTP/1.1"), 400),
    ("absolute-form-empty-authority", req(H, line=b"GET http:///x HTTP/1.1"), 400),
    ("connect", req(b"Host: example.com:443", line=b"CONNECT example.com:443 HTTP/1.1"), 405),
    ("unknown-expect", req(H, b"Expect: 200-ok", b"Content-Length: 5", line=POST,
                           body=b"hello"), 417),
    ("garbage-bytes", GARBAGE, 400),
    ("tls-client-hello", TLS_HELLO, 400),
    ("ssh-banner", b"SSH-2.0-OpenSSH_9.6\r\n\r\n", 400),
    # -- sizes (default limits: line 8k, head 32k, 100 fields) -------------------------
    ("request-line-20k", req(H, line=b"GET /" + b"a" * 20 * 1024 + b" HTTP/1.1"), 414),
    ("headers-40k", req(H, *[b"X-Pad-%d: %s" % (i, b"v" * 1000) for i in range(40)]), 431),
    ("headers-200", req(H, *[b"X-H%d: v" % i for i in range(200)]), 431),
    ("header-value-64k", req(H, b"X-Big: " + b"v" * 64 * 1024), 431),
]

# A valid chunked head followed by a broken body: the head may have been forwarded.
BODY_CASES: list[tuple[str, bytes, int]] = [
    ("chunk-size-not-hex", req(H, CHUNKED, line=POST, body=b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-overflow", req(H, CHUNKED, line=POST,
                                body=b"1ffffffffffffffff\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-negative", req(H, CHUNKED, line=POST, body=b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-empty", req(H, CHUNKED, line=POST, body=b"\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-trailing-space", req(H, CHUNKED, line=POST,
                                      body=b"5 \r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-size-0x-prefix", req(H, CHUNKED, line=POST, body=b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-missing-crlf", req(H, CHUNKED, line=POST, body=b"5\r\nhelloXX0\r\n\r\n"), 400),
    ("chunk-size-bare-lf", req(H, CHUNKED, line=POST, body=b"5\nhello\r\n0\r\n\r\n"), 400),
    ("chunk-data-bare-lf", req(H, CHUNKED, line=POST, body=b"5\r\nhello\n0\r\n\r\n"), 400),
]


def check_refused(got: Ended, status: int) -> None:
    assert got.data.startswith(b"HTTP/1.1 %d " % status), got.data[:200]
    code, headers, body, rest = split_response(got.data)
    assert code == status
    assert headers["connection"] == "close"
    assert body.startswith(b"%d " % status) and body.endswith(b"\n"), body
    assert rest == b"", f"bytes after the error response: {rest[:200]!r}"
    # closed by the proxy right after the response, with a FIN (a RST can destroy
    # the response before the client reads it)
    assert got.how == "eof", got.how


@pytest.mark.parametrize("data,status", [c[1:] for c in HEAD_CASES],
                         ids=[c[0] for c in HEAD_CASES])
def test_malformed_head_refused(data: bytes, status: int, proxy: ProxyProcess,
                                clean_origin: Origin, first_worker: int) -> None:
    origin = clean_origin
    got = send_and_read(proxy.port, data)
    check_refused(got, status)
    time.sleep(SETTLE)
    assert origin.raw == b""
    assert origin.connections == 0
    assert origin.requests == []
    assert_still_serving(proxy, origin, first_worker)


@pytest.mark.parametrize("data,status", [c[1:] for c in BODY_CASES],
                         ids=[c[0] for c in BODY_CASES])
def test_malformed_chunked_body_refused(data: bytes, status: int, proxy: ProxyProcess,
                                        clean_origin: Origin, first_worker: int) -> None:
    origin = clean_origin
    got = send_and_read(proxy.port, data)
    check_refused(got, status)
    time.sleep(SETTLE)
    assert origin.requests == []
    assert origin.errors == []  # nothing the origin could misread reached it
    assert_still_serving(proxy, origin, first_worker)


def test_malformed_chunk_in_second_send(proxy: ProxyProcess, clean_origin: Origin,
                                        first_worker: int) -> None:
    """The head is forwarded first; a bad chunk arriving later still never completes it."""
    origin = clean_origin
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(req(H, CHUNKED, line=POST, body=b"5\r\nhello\r\n"))
        deadline = time.monotonic() + 3
        while b"POST /upload " not in origin.raw and time.monotonic() < deadline:
            time.sleep(0.02)
        assert origin.raw.startswith(b"POST /upload HTTP/1.1\r\n")  # streamed on
        time.sleep(0.1)
        s.sendall(b"zz\r\nworld\r\n0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    check_refused(Ended(data, "eof"), 400)
    time.sleep(SETTLE)
    assert origin.requests == []
    assert origin.errors == []
    assert_still_serving(proxy, origin, first_worker)


SMUGGLE_CASES = [
    # CL.TE: a front end reading Content-Length would see one request, a back end
    # reading chunked would see "GET /smuggled" as a second one.
    ("cl-te", b"POST /attack HTTP/1.1\r\nHost: example.com\r\nContent-Length: 44\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
              b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    # TE.CL: the reverse.
    ("te-cl", b"POST /attack HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n"
              b"Content-Length: 4\r\n\r\n2c\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"
              b"\r\n0\r\n\r\n"),
    # two lengths: one reader takes 0, another 44
    ("cl-cl", b"POST /attack HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n"
              b"Content-Length: 44\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    # an obfuscated Transfer-Encoding some servers ignore
    ("te-obfuscated", b"POST /attack HTTP/1.1\r\nHost: example.com\r\nContent-Length: 44\r\n"
                      b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n"
                      b"GET /smuggled HTTP/1.1\r\nHost: example.com\r\n\r\n"),
]


@pytest.mark.parametrize("attack", [c[1] for c in SMUGGLE_CASES], ids=[c[0] for c in SMUGGLE_CASES])
def test_smuggling_behind_valid_request(attack: bytes, proxy: ProxyProcess, clean_origin: Origin,
                                        first_worker: int) -> None:
    origin = clean_origin
    valid = b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n"
    got = send_and_read(proxy.port, valid + attack)
    status, _, body, rest = split_response(got.data)
    assert status == 200
    assert body == b"origin /first"
    check_refused(Ended(rest, got.how), 400)
    time.sleep(SETTLE)
    assert [r.target for r in origin.requests] == ["/first"]
    assert b"/attack" not in origin.raw
    assert b"/smuggled" not in origin.raw
    assert origin.errors == []
    assert_still_serving(proxy, origin, first_worker)


def test_access_log_records_refusals(proxy: ProxyProcess, clean_origin: Origin) -> None:
    """A refused request still gets an access log line with its status."""
    cases = {400: req(b"Accept: */*"), 405: req(b"Host: a:443", line=b"CONNECT a:443 HTTP/1.1"),
             414: req(H, line=b"GET /" + b"a" * 9000 + b" HTTP/1.1"),
             417: req(H, b"Expect: nope"), 431: req(H, *[b"X-H%d: v" % i for i in range(101)]),
             501: req(H, b"Transfer-Encoding: gzip, chunked", line=POST),
             505: req(H, line=b"GET / HTTP/2.0")}
    time.sleep(0.6)  # lines of earlier tests are flushed on the worker's tick
    before = len(proxy.access_log())
    for data in cases.values():
        send_and_read(proxy.port, data)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and len(proxy.access_log()) < before + len(cases):
        time.sleep(0.05)
    lines = proxy.access_log()[before:]
    statuses = [int(line.split('" ', 1)[1].split()[0]) for line in lines]
    assert statuses == list(cases), lines


def test_log_has_no_traceback(proxy: ProxyProcess) -> None:
    assert "Traceback" not in proxy.log(), proxy.log()[-3000:]
