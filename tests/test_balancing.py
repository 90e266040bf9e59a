"""Round robin across the servers of an upstream (nginx's smooth weighted round robin)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable

import pytest

from servers import Origin, ProxyProcess, free_port

ProxyFactory = Callable[..., ProxyProcess]


def get(port: int, path: str, sock: socket.socket | None = None) -> bytes:
    """GET on a fresh connection (or on `sock`, kept alive): the body."""
    own = sock is None
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, buf
            buf += chunk
        head, _, body = buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")))
        while len(body) < n:
            chunk = s.recv(65536)
            assert chunk
            body += chunk
        return body
    finally:
        if own:
            s.close()


def names_of(bodies: list[bytes]) -> list[str]:
    return [b.split(b" ", 1)[0].decode() for b in bodies]


@pytest.mark.parametrize("keepalive", [False, True], ids=["fresh-connections", "one-connection"])
def test_equal_weights_round_robin(keepalive: bool, make_origin: Callable[..., Origin],
                                   make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b", "c")]
    proxy = make_proxy({"pool": [o.address for o in origins]})
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5) if keepalive else None
    try:
        bodies = [get(proxy.port, f"/r{i}", sock) for i in range(30)]
    finally:
        if sock is not None:
            sock.close()
    assert [b.split(b" ", 1)[1] for b in bodies] == [f"/r{i}".encode() for i in range(30)]
    order = names_of(bodies)
    assert Counter(order) == {"a": 10, "b": 10, "c": 10}
    assert order == ["a", "b", "c"] * 10  # strict rotation, in config order
    assert [len(o.requests) for o in origins] == [10, 10, 10]


def test_weights_one_to_two(make_origin: Callable[..., Origin], make_proxy: ProxyFactory) -> None:
    light, heavy = make_origin(name="light"), make_origin(name="heavy")
    proxy = make_proxy({"pool": [(light.address, 1), (heavy.address, 2)]})
    order = names_of([get(proxy.port, f"/w{i}") for i in range(30)])
    assert Counter(order) == {"light": 10, "heavy": 20}
    # smooth: interleaved (heavy, light, heavy) rather than bunched (heavy, heavy, light)
    assert order == ["heavy", "light", "heavy"] * 10
    assert (len(light.requests), len(heavy.requests)) == (10, 20)


def test_weights_smooth_interleaving(make_origin: Callable[..., Origin],
                                     make_proxy: ProxyFactory) -> None:
    """nginx's example: weights 5, 1, 1 give a a b a c a a, never five a's in a row."""
    a, b, c = (make_origin(name=n) for n in ("a", "b", "c"))
    proxy = make_proxy({"pool": [(a.address, 5), (b.address, 1), (c.address, 1)]})
    order = names_of([get(proxy.port, f"/s{i}") for i in range(14)])
    assert order == ["a", "a", "b", "a", "c", "a", "a"] * 2


def test_down_server_is_skipped(make_origin: Callable[..., Origin],
                                make_proxy: ProxyFactory) -> None:
    """A server that refuses connections is passed over: every request still succeeds."""
    up = make_origin(name="up")
    proxy = make_proxy({"pool": [f"127.0.0.1:{free_port()}", up.address]})
    assert names_of([get(proxy.port, f"/d{i}") for i in range(6)]) == ["up"] * 6
    assert len(up.requests) == 6
