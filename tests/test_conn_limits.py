"""Connection and resource limits: requests per keep-alive connection, load
shedding past max_in_flight, connections per client address (instance-wide)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fastproxy._ratelimit import ConnTable
from servers import Origin, ProxyProcess, RawClient, Reply, free_port


def start(tmp_path: Path, limits: str, upstream: str, workers: int = 1) -> ProxyProcess:
    port = free_port()
    text = (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[limits]\n{limits}\n'
            f'[upstreams.app]\nservers = ["{upstream}"]\n[[routes]]\nupstream = "app"\n')
    return ProxyProcess(text, tmp_path, port).start()


def test_conn_table_counts_and_releases() -> None:
    table = ConnTable(100)
    assert [table.open(b"10.0.0.1", 2) for _ in range(3)] == [True, True, False]
    assert table.open(b"10.0.0.2", 2)  # another address has its own count
    table.close(b"10.0.0.1")
    assert table.count(b"10.0.0.1") == 1 and table.open(b"10.0.0.1", 2)
    table.close(b"10.0.0.9")  # never counted: nothing happens
    assert table.count(b"10.0.0.9") == 0


def test_max_requests_per_connection(make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, "max_requests_per_connection = 3", origin.address)
    try:
        with RawClient(proxy.port) as client:
            for i in range(3):
                client.send(f"GET /{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                resp = client.read_response()
                assert resp.status == 200
                assert resp.header("Connection") == ("close" if i == 2 else None)
            assert client.closed_by_peer()
    finally:
        proxy.stop()


def test_max_in_flight_sheds_load(make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    slow = make_origin(lambda req: Reply(delay=1.0, body=b"slow"), name="slow")
    proxy = start(tmp_path, "max_in_flight = 1", slow.address)
    try:
        first = RawClient(proxy.port)
        first.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        with RawClient(proxy.port) as second:
            second.send(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = second.read_response()
            assert resp.status == 503 and resp.header("Retry-After") == "1"
            assert b"at capacity" in resp.body
        assert first.read_response().status == 200
        first.close()
        with RawClient(proxy.port) as third:  # room again
            third.send(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
            assert third.read_response().status == 200
    finally:
        proxy.stop()


def test_max_connections_per_ip_across_workers(make_origin: Callable[..., Origin],
                                               tmp_path: Path) -> None:
    origin = make_origin(name="app")
    proxy = start(tmp_path, "max_connections_per_ip = 3", origin.address, workers=2)
    held: list[socket.socket] = []
    try:
        proxy.wait_worker_pids(2)
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")  # accepted and counted
            held.append(s)
        extra = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        data = b""
        while chunk := extra.recv(65536):
            data += chunk
        extra.close()
        assert data.startswith(b"HTTP/1.1 429 Too Many Requests"), data
        assert b"too many connections" in data
        held.pop().close()
        deadline = time.monotonic() + 15
        while True:  # the count drops once the worker sees the close
            s = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = s.recv(65536)
            if reply.startswith(b"HTTP/1.1 200 OK") or time.monotonic() > deadline:
                break
            s.close()
            time.sleep(0.05)
        held.append(s)
        assert reply.startswith(b"HTTP/1.1 200 OK"), reply
    finally:
        for s in held:
            s.close()
        proxy.stop()


def test_slow_clients_do_not_starve_others(make_origin: Callable[..., Origin],
                                           tmp_path: Path) -> None:
    """Slowloris: 200 connections trickling a header byte at a time; normal clients
    are still served, and the trickling ones are closed at the header timeout."""
    origin = make_origin(name="app")
    port = free_port()
    text = (f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
            f'[timeouts]\nheader = "2s"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    slow: list[socket.socket] = []
    stop = threading.Event()
    closed = [0]

    def trickle() -> None:
        deadline = time.monotonic() + 8
        while not stop.is_set() and time.monotonic() < deadline:
            for s in list(slow):
                try:
                    s.send(b"X")
                except OSError:
                    slow.remove(s)
                    closed[0] += 1
            time.sleep(0.5)

    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            slow.append(s)
        t = threading.Thread(target=trickle)
        t.start()
        served = 0
        for i in range(20):
            with RawClient(port) as client:
                client.send(f"GET /n{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                served += client.read_response().status == 200
        assert served == 20
        t.join(12)
        assert closed[0] == 200, closed[0]  # all cut at the 2 s header timeout
    finally:
        stop.set()
        for s in slow:
            s.close()
        proxy.stop()
