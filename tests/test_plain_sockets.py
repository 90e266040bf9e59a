"""Plain HTTP listeners on sockets of our own (fastproxy._tls.PlainConnection in the
worker's epoll set, FASTPROXY_PLAIN_SOCKETS=own) rather than uvloop's transports (the
default, or FASTPROXY_PLAIN_SOCKETS=uvloop): partial writes to a client that does not
read, back-pressure down to the upstream, a half-closed client, large uploads,
descriptor exhaustion on accept, and which path the switch selects. (The other
plain-HTTP test files pass with FASTPROXY_PLAIN_SOCKETS=own in the environment too.)"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import Origin, ProxyProcess, Received, Reply, answered, starve_descriptors

OriginFactory = Callable[..., Origin]
ProxyFactory = Callable[..., ProxyProcess]


def epoll_sets(pid: int) -> int:
    """How many epoll descriptors the process holds (uvloop's; ours is one more)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[eventpoll]":
                count += 1
        except OSError:
            pass
    return count


def exchange(port: int, request: bytes, *, rcvbuf: int = 0, wait: float = 0.0,
             half_close: bool = False) -> bytes:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    try:
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        if wait:
            time.sleep(wait)
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
        return bytes(data)
    finally:
        sock.close()


@pytest.fixture(autouse=True)
def own_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTPROXY_PLAIN_SOCKETS", "own")  # inherited by the proxies


@pytest.mark.parametrize("sockets", ["own", "uvloop", None])
def test_the_switch_selects_the_path(origin: Origin, make_proxy: ProxyFactory,
                                     monkeypatch: pytest.MonkeyPatch,
                                     sockets: str | None) -> None:
    if sockets is None:
        monkeypatch.delenv("FASTPROXY_PLAIN_SOCKETS")  # the default: uvloop's transports
    else:
        monkeypatch.setenv("FASTPROXY_PLAIN_SOCKETS", sockets)
    proxy = make_proxy({"backend": [origin.address]})
    data = exchange(proxy.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.count(b"HTTP/1.1 200") == 2 and data.endswith(b"origin /b"), data
    (worker,) = proxy.wait_worker_pids(1)
    # uvloop's own epoll set, plus ours when the sockets are ours.
    assert epoll_sets(worker) == (2 if sockets == "own" else 1)


def test_responses_to_a_client_that_does_not_read_keep_their_order(
        make_origin: OriginFactory, make_proxy: ProxyFactory) -> None:
    """The kernel takes part of a write, then nothing: the rest waits in the
    connection's buffer and goes out, in order, as the client reads again."""
    count, size = 400, 12000  # 4.8 MB of responses, pipelined

    def handler(req: Received) -> Reply:
        n = int(req.target.strip("/"))
        return Reply(body=(b"%06d" % n) * (size // 6))

    proxy = make_proxy({"backend": [make_origin(handler).address]})
    request = (b"".join(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(count - 1))
               + b"GET /%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (count - 1))
    data = exchange(proxy.port, request, rcvbuf=16384, wait=1.0)
    assert len(re.findall(rb"HTTP/1\.1 200 ", data)) == count
    rest = data
    for i in range(count):
        head, _, rest = rest.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), (i, head[:100])
        body, rest = rest[:size], rest[size:]
        assert body == (b"%06d" % i) * (size // 6), i
    assert rest == b""


def test_back_pressure_reaches_the_upstream(make_origin: OriginFactory,
                                            make_proxy: ProxyFactory) -> None:
    """A client that stops reading: the proxy's writes pause (pause_writing), so it
    stops reading the upstream, whose sending stalls; all arrives once it reads."""
    big = 48 * 1024 * 1024
    payload = random.Random(3).randbytes(big)
    origin = make_origin(lambda req: Reply(
        stream=(memoryview(payload)[i:i + 65536] for i in range(0, big, 65536)),
        stream_length=big))
    proxy = make_proxy({"backend": [origin.address]})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.settimeout(20)
    try:
        sock.connect(("127.0.0.1", proxy.port))
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + 10
        sent = -1
        while time.monotonic() < deadline:  # until the origin's sending has stalled
            time.sleep(0.5)
            if origin.stream_bytes_sent == sent and sent > 0:
                break
            sent = origin.stream_bytes_sent
        stalled_at = origin.stream_bytes_sent
        assert 0 < stalled_at < big, stalled_at
        data = bytearray()
        while chunk := sock.recv(1 << 16):
            data += chunk
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(body) == big and hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


def test_half_closed_client_gets_its_answer(make_origin: OriginFactory,
                                            make_proxy: ProxyFactory) -> None:
    origin = make_origin(lambda req: Reply(body=b"slow answer", delay=0.3))
    proxy = make_proxy({"backend": [origin.address]})
    data = exchange(proxy.port, b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"slow answer"), data


def test_large_upload_while_the_upstream_reads_slowly(make_origin: OriginFactory,
                                                      make_proxy: ProxyFactory) -> None:
    big = 8 * 1024 * 1024
    payload = random.Random(5).randbytes(big)
    origin = make_origin(lambda req: Reply(body=f"{req.body_length} {req.body_crc32}".encode()))
    origin.stream_request_bodies = True
    origin.body_read_delay = 0.5  # the client's reading pauses meanwhile
    origin.body_chunk_delay = 0.01
    proxy = make_proxy({"backend": [origin.address]})
    data = exchange(proxy.port, b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n" % big + payload)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert data.endswith(f"{big} {zlib.crc32(payload)}".encode())


def test_out_of_descriptors_pauses_accepting_then_serves_again(
        origin: Origin, make_proxy: ProxyFactory, tmp_path: Path) -> None:
    proxy = make_proxy({"backend": [origin.address]})
    assert exchange(proxy.port, b"GET /before HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n").endswith(b"origin /before")
    (worker,) = proxy.worker_pids()
    starve_descriptors(proxy, worker, "accept on a listener: Too many open files")
    # Its own retry picks the listener up again.
    data = answered(lambda: exchange(proxy.port, b"GET /after HTTP/1.1\r\nHost: x\r\n"
                                     b"Connection: close\r\n\r\n"),
                    b"origin /after", (OSError,))
    assert data.endswith(b"origin /after"), data
    assert proxy.log().count("accept on a listener") == 1  # one line, not one per retry
    assert proxy.worker_pids() == [worker]
    assert "Traceback" not in proxy.log()
