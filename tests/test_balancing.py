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


# -- the other algorithms, end to end ------------------------------------------------------


def get_as(port: int, path: str, headers: dict[str, str]) -> str:
    """The name of the origin that answered a GET with `headers`."""
    import requests

    r = requests.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return r.text.split(" ", 1)[0]


@pytest.mark.parametrize("algorithm", ["ring", "maglev"])
def test_hash_key_keeps_a_user_on_one_server(algorithm: str, make_origin: Callable[..., Origin],
                                             make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b", "c")]
    proxy = make_proxy({"pool": [o.address for o in origins]}, workers=2,
                       upstream_extra=f'balance = "{algorithm}"\nhash_key = "{{header.X-User}}"')
    seen: dict[str, set[str]] = {}
    for i in range(90):
        user = f"user{i % 30}"
        seen.setdefault(user, set()).add(get_as(proxy.port, f"/r{i}", {"X-User": user}))
    # Each user always on one server (on fresh connections, so both workers served),
    # and the 30 users spread over all three.
    assert all(len(servers) == 1 for servers in seen.values()), seen
    assert {s for servers in seen.values() for s in servers} == {"a", "b", "c"}


def test_hash_key_defaults_to_the_client_address(make_origin: Callable[..., Origin],
                                                 make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b", "c")]
    proxy = make_proxy({"pool": [o.address for o in origins]}, upstream_extra='balance = "ring"')
    names = {get_as(proxy.port, f"/r{i}", {}) for i in range(12)}
    assert len(names) == 1  # one client address: one server


def test_least_conn_avoids_the_busy_server(make_origin: Callable[..., Origin],
                                           make_proxy: ProxyFactory) -> None:
    import threading

    from servers import Reply

    def handler(name: str) -> Callable[..., Reply]:
        def answer(req: object) -> Reply:
            slow = getattr(req, "target", "").startswith("/slow")
            return Reply(body=f"{name} {getattr(req, 'target', '')}".encode(),
                         delay=1.5 if slow else 0.0)
        return answer

    origins = [make_origin(handler("a"), name="a"), make_origin(handler("b"), name="b")]
    proxy = make_proxy({"pool": [o.address for o in origins]},
                       upstream_extra='balance = "least_conn"')
    slow_result: list[str] = []
    slow = threading.Thread(target=lambda: slow_result.append(get_as(proxy.port, "/slow", {})))
    slow.start()
    try:
        deadline = __import__("time").monotonic() + 5
        while not any(o.requests for o in origins):
            assert __import__("time").monotonic() < deadline, "the slow request never arrived"
            __import__("time").sleep(0.01)
        busy = "a" if origins[0].requests else "b"
        quick = [get_as(proxy.port, f"/q{i}", {}) for i in range(6)]
        assert busy not in quick, (busy, quick)  # one in flight there, none on the other
    finally:
        slow.join(10)
    assert slow_result == [busy]


@pytest.mark.parametrize("algorithm", ["random", "p2c", "ewma", "weighted"])
def test_other_algorithms_serve_every_server(algorithm: str, make_origin: Callable[..., Origin],
                                             make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b")]
    proxy = make_proxy({"pool": [o.address for o in origins]},
                       upstream_extra=f'balance = "{algorithm}"')
    names = Counter(get_as(proxy.port, f"/r{i}", {}) for i in range(60))
    assert set(names) == {"a", "b"}, names
    assert sum(names.values()) == 60


# -- sticky sessions -------------------------------------------------------------------------


def sticky_get(port: int, cookie: str | None) -> tuple[str, str | None]:
    """(origin name, Set-Cookie or None) of a GET sending `cookie` as fpsrv."""
    import requests

    headers = {"Cookie": f"theme=dark; fpsrv={cookie}"} if cookie is not None else {}
    r = requests.get(f"http://127.0.0.1:{port}/s", headers=headers, timeout=5)
    assert r.status_code == 200, r.text
    return r.text.split(" ", 1)[0], r.headers.get("Set-Cookie")


def test_sticky_cookie_keeps_a_client_on_its_server(make_origin: Callable[..., Origin],
                                                    make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b", "c")]
    proxy = make_proxy({"pool": [o.address for o in origins]}, workers=2,
                       upstream_extra='sticky = { cookie = "fpsrv", max_age = "1h" }')
    first, set_cookie = sticky_get(proxy.port, None)
    assert set_cookie is not None
    name, _, rest = set_cookie.partition("=")
    value, _, attributes = rest.partition(";")
    assert name == "fpsrv" and len(value) == 16
    assert attributes.strip() == "Path=/; HttpOnly; SameSite=Lax; Max-Age=3600"
    # Round robin alone would rotate; the cookie holds the client (both workers).
    for _ in range(8):
        assert sticky_get(proxy.port, value) == (first, None)
    # Each server has its own value; an unknown value is replaced.
    values = {sticky_get(proxy.port, None)[1] for _ in range(9)}
    assert len(values) == 3
    _, new = sticky_get(proxy.port, "0123456789abcdef")
    assert new is not None and new.startswith("fpsrv=")


def test_sticky_client_moves_when_its_server_is_down(make_origin: Callable[..., Origin],
                                                     make_proxy: ProxyFactory) -> None:
    origins = [make_origin(name=n) for n in ("a", "b")]
    proxy = make_proxy({"pool": [o.address for o in origins]},
                       upstream_extra='sticky = { cookie = "fpsrv" }')
    first, set_cookie = sticky_get(proxy.port, None)
    assert set_cookie is not None
    value = set_cookie.split(";", 1)[0].split("=", 1)[1]
    dead = next(o for o in origins if o.name == first)
    dead.stop()
    server, moved = sticky_get(proxy.port, value)
    assert server != first
    assert moved is not None and moved.split(";", 1)[0] != f"fpsrv={value}"
    # From now on the client stays on its new server.
    new_value = moved.split(";", 1)[0].split("=", 1)[1]
    assert sticky_get(proxy.port, new_value) == (server, None)
