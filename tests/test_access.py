"""Access lists by client address, and the real client address behind trusted proxies."""

from __future__ import annotations

import ipaddress
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy._url import IpSet, real_client
from servers import Origin, ProxyProcess, free_port

XFF, REAL_IP, FORWARDED = 0, 1, 2
TRUSTED = IpSet([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")])


@pytest.mark.parametrize(("header", "kind", "want"), [
    (None, XFF, b"10.0.0.1"),
    (b"203.0.113.7", XFF, b"203.0.113.7"),
    (b"198.51.100.1, 203.0.113.7", XFF, b"203.0.113.7"),            # the last untrusted
    (b"198.51.100.1, 203.0.113.7, 10.1.1.1", XFF, b"203.0.113.7"),  # skips trusted hops
    (b"10.2.2.2, 10.1.1.1", XFF, b"10.2.2.2"),                       # all trusted: the first
    (b"bogus, 203.0.113.7", XFF, b"203.0.113.7"),
    (b"203.0.113.7, bogus", XFF, b"10.0.0.1"),                       # stops at garbage
    (b"2001:db8::5", XFF, b"2001:db8::5"),
    (b" 203.0.113.9 ", REAL_IP, b"203.0.113.9"),
    (b"nope", REAL_IP, b"10.0.0.1"),
    (b'for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"', FORWARDED, b"2001:db8:cafe::17"),
    (b"for=192.0.2.43, for=10.3.3.3", FORWARDED, b"192.0.2.43"),
    (b'for="192.0.2.44:8080"', FORWARDED, b"192.0.2.44"),
    (b"for=unknown", FORWARDED, b"10.0.0.1"),
])
def test_real_client(header: bytes | None, kind: int, want: bytes) -> None:
    assert real_client(b"10.0.0.1", header, kind, TRUSTED) == want


def test_ip_set_of_ten_thousand_networks_matches_ipaddress() -> None:
    rnd = random.Random(7)
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for _ in range(10_000):
        if rnd.random() < 0.7:
            prefix = rnd.randint(8, 32)
            nets.append(ipaddress.ip_network((rnd.getrandbits(32) >> (32 - prefix) << (32 - prefix),
                                              prefix)))
        else:
            prefix = rnd.randint(16, 128)
            nets.append(ipaddress.ip_network(
                (rnd.getrandbits(128) >> (128 - prefix) << (128 - prefix), prefix)))
    ip_set = IpSet(nets)
    v4 = [n for n in nets if n.version == 4]
    v6 = [n for n in nets if n.version == 6]
    for _ in range(3000):
        if rnd.random() < 0.5:
            net = rnd.choice(nets)
            value = int(net.network_address) + rnd.randint(-2, min(net.num_addresses + 1, 1 << 20))
            address = ipaddress.ip_address(value % (1 << net.max_prefixlen)) if net.version == 6 \
                else ipaddress.IPv4Address(value % (1 << 32))
        else:
            address = ipaddress.ip_address(rnd.getrandbits(32)) if rnd.random() < 0.5 \
                else ipaddress.IPv6Address(rnd.getrandbits(128))
        pool = v4 if address.version == 4 else v6
        want = any(address in n for n in pool)
        assert ip_set.contains(str(address).encode()) is want, address


def start(tmp_path: Path, body: str, server: str = "") -> ProxyProcess:
    port = free_port()
    text = (f'[server]\nworkers = 1\n{server}\n[log]\naccess = "{tmp_path}/access.log"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n{body}')
    return ProxyProcess(text, tmp_path, port).start()


def status_of(port: int, path: str = "/", headers: str = "") -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_listener_and_route_access_lists(make_origin: Callable[..., Origin],
                                         tmp_path: Path) -> None:
    origin = make_origin(name="app")
    (tmp_path / "blocked.txt").write_text("# scanners\n192.0.2.0/24\n127.0.0.2\n\n")
    proxy = start(tmp_path, (
        f'[listeners.access]\ndeny_file = "blocked.txt"\n'
        f'[upstreams.app]\nservers = ["{origin.address}"]\n'
        '[[routes]]\nmatch = { path_prefix = "/admin" }\naccess = { allow = ["10.0.0.0/8"] }\n'
        'upstream = "app"\n'
        '[[routes]]\nupstream = "app"\n'))
    try:
        assert status_of(proxy.port, "/") == 200
        assert status_of(proxy.port, "/admin") == 403   # 127.0.0.1 is not in 10/8
        assert not [r for r in origin.requests if r.target == "/admin"]
    finally:
        proxy.stop()


def test_trusted_proxy_gives_the_real_client(make_origin: Callable[..., Origin],
                                             tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, (
        f'[upstreams.app]\nservers = ["{origin.address}"]\n'
        '[[routes]]\nmatch = { path_prefix = "/lan" }\naccess = { allow = ["203.0.113.0/24"] }\n'
        'upstream = "app"\n'
        '[[routes]]\naccess = { deny = ["198.51.100.0/24"] }\nupstream = "app"\n'),
        server='trusted_proxies = ["127.0.0.0/8"]')
    try:
        assert status_of(proxy.port, "/lan") == 403
        assert status_of(proxy.port, "/lan", "X-Forwarded-For: 203.0.113.7\r\n") == 200
        assert status_of(proxy.port, "/", "X-Forwarded-For: 198.51.100.9, 127.0.0.5\r\n") == 403
        assert status_of(proxy.port, "/") == 200
        # Upstream sees the whole chain, the peer appended; the access log, the client.
        got = next(r for r in origin.requests if r.target == "/lan")
        assert got.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
        deadline = time.monotonic() + 5  # the log is written a tick later
        while "203.0.113.7 - - " not in proxy.access_log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "203.0.113.7 - - " in proxy.access_log_text()
    finally:
        proxy.stop()


def test_a_forged_line_before_the_proxy_s_own_is_not_believed(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    """A proxy that adds its own X-Forwarded-For line (HAProxy's option forwardfor)
    after the client's: all lines are read, in order, so the client's forged
    address is not the one believed."""
    origin = make_origin(name="app")
    proxy = start(tmp_path, (
        f'[upstreams.app]\nservers = ["{origin.address}"]\n'
        '[[routes]]\naccess = { allow = ["10.8.0.0/16"] }\nupstream = "app"\n'),
        server='trusted_proxies = ["127.0.0.0/8"]')
    try:
        assert status_of(proxy.port, "/", "X-Forwarded-For: 203.0.113.5\r\n") == 403
        assert status_of(proxy.port, "/", "X-Forwarded-For: 10.8.0.1, 203.0.113.5\r\n") == 403
        assert status_of(proxy.port, "/", "X-Forwarded-For: 10.8.0.1\r\n"
                                          "X-Forwarded-For: 203.0.113.5\r\n") == 403
        assert status_of(proxy.port, "/", "X-Forwarded-For: 10.8.0.1\r\n") == 200
    finally:
        proxy.stop()
