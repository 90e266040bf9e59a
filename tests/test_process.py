"""The process model: a master with N workers, restarts, graceful stop, startup failures."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import Origin, ProxyProcess, Reply, config_toml, free_port

ProxyFactory = Callable[..., ProxyProcess]


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh connection (Connection: close): (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    return int(head.split(b" ", 2)[1]), body


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_workers_both_serve(origin: Origin, make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"backend": [origin.address]}, workers=2)
    assert wait_for(lambda: len(proxy.worker_pids()) == 2, 5), proxy.worker_pids()
    workers = proxy.worker_pids()
    assert proxy.pid not in workers
    results = [get(proxy.port, f"/r{i}") for i in range(200)]
    assert [status for status, _ in results] == [200] * 200
    assert [body for _, body in results] == [f"origin /r{i}".encode() for i in range(200)]
    # Each worker keeps its own pooled upstream connection: requests that went through
    # both workers reached the origin over (at least) two connections.
    assert len({r.conn_id for r in origin.requests}) >= 2
    assert proxy.worker_pids() == workers


def test_killed_worker_is_replaced(origin: Origin, make_proxy: ProxyFactory) -> None:
    proxy = make_proxy({"backend": [origin.address]}, workers=2)
    assert wait_for(lambda: len(proxy.worker_pids()) == 2, 5)
    before = proxy.worker_pids()
    victim = before[0]
    os.kill(victim, signal.SIGKILL)  # a worker this test's proxy started
    assert wait_for(lambda: not alive(victim), 5)
    assert wait_for(lambda: len(set(proxy.worker_pids()) - set(before)) == 1
                    and len(proxy.worker_pids()) == 2, 5), (before, proxy.worker_pids())
    after = proxy.worker_pids()
    assert before[1] in after and victim not in after
    statuses = [get(proxy.port, f"/after{i}")[0] for i in range(50)]
    assert statuses == [200] * 50
    assert re.search(rf"worker {victim} \(slot \d\) died \(signal 9\)", proxy.log())
    assert proxy.proc is not None and proxy.proc.poll() is None


class InFlight(threading.Thread):
    """A request sent on its own connection; keeps whatever comes back."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.data = b""
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=15) as s:
                s.sendall(f"GET {self.path} HTTP/1.1\r\nHost: example.com\r\n"
                          f"Connection: close\r\n\r\n".encode())
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    self.data += chunk
        except OSError as e:
            self.error = e


def new_connection_refused(port: int) -> str:
    """What a new client gets: "refused", or what happened after connecting."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
    except ConnectionRefusedError:
        return "refused"
    with s:
        try:
            s.sendall(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
            data = s.recv(100)
        except TimeoutError:
            return "accepted, then no answer within 1 s"
        except OSError as e:
            return f"accepted, then {e}"
        return f"accepted, then {data[:40]!r}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_stop_finishes_in_flight_request(sig: int, make_origin: Callable[..., Origin],
                                                  make_proxy: ProxyFactory) -> None:
    slow = make_origin(lambda req: Reply(body=b"finally", delay=2.0))
    proxy = make_proxy({"backend": [slow.address]}, workers=2)  # shutdown_timeout = 5s
    assert wait_for(lambda: len(proxy.worker_pids()) == 2, 5)
    workers = proxy.worker_pids()
    req = InFlight(proxy.port, "/slow")
    req.start()
    assert wait_for(lambda: len(slow.requests) == 1, 5)
    start = time.monotonic()
    proxy.signal(sig)
    req.join(10)
    assert not req.is_alive() and req.error is None, req.error
    head, _, body = req.data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert body == b"finally"
    assert proxy.wait(7) == 0  # shutdown_timeout (5 s) + margin
    assert time.monotonic() - start < 4.5  # it did not wait for the timeout: nothing left
    assert not any(alive(pid) for pid in workers)
    assert "Traceback" not in proxy.log()


def test_new_connections_refused_during_graceful_stop(make_origin: Callable[..., Origin],
                                                      make_proxy: ProxyFactory) -> None:
    """Once stopping, the listeners are closed: a new client is refused at once (and can
    go elsewhere) instead of waiting in an accept queue nobody serves any more."""
    slow = make_origin(lambda req: Reply(body=b"finally", delay=2.0))
    proxy = make_proxy({"backend": [slow.address]}, workers=2)
    assert wait_for(lambda: len(proxy.worker_pids()) == 2, 5)
    req = InFlight(proxy.port, "/slow")
    req.start()
    assert wait_for(lambda: len(slow.requests) == 1, 5)
    proxy.signal(signal.SIGTERM)
    time.sleep(0.5)  # the workers close their listeners at once; one request is in flight
    assert proxy.proc is not None and proxy.proc.poll() is None
    assert new_connection_refused(proxy.port) == "refused"
    req.join(10)
    assert req.data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_stop_cuts_requests_slower_than_shutdown_timeout(
        make_origin: Callable[..., Origin], make_proxy: ProxyFactory) -> None:
    slow = make_origin(lambda req: Reply(body=b"too late", delay=20.0))
    proxy = make_proxy({"backend": [slow.address]}, shutdown_timeout="1s")
    req = InFlight(proxy.port, "/very-slow")
    req.start()
    assert wait_for(lambda: len(slow.requests) == 1, 5)
    workers = proxy.worker_pids()
    start = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(6) == 0
    elapsed = time.monotonic() - start
    assert 0.7 <= elapsed <= 3.0, elapsed  # 1 s + a worker tick + the master's 0.5 s poll
    req.join(5)
    assert not req.is_alive()
    assert req.data == b""  # cut without a response
    assert not any(alive(pid) for pid in workers)
    assert "shutdown timeout: cutting 1 connections" in proxy.log()


def run_serve(config: Path, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastproxy", "serve", str(config)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_serve_on_address_in_use_fails_cleanly(origin: Origin, tmp_path: Path) -> None:
    with socket.socket() as taken:  # no SO_REUSEPORT: the proxy cannot share it
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "proxy.toml"
        cfg.write_text(config_toml({"backend": [origin.address]}, port, tmp_path / "access.log"))
        result = run_serve(cfg)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "Traceback" not in out
    errors = [line for line in out.splitlines() if "Address already in use" in line]
    assert len(errors) == 1, out
    assert f"127.0.0.1:{port}" in errors[0]  # which address could not be used
    assert origin.connections == 0


def test_serve_bad_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(config_toml({"backend": ["127.0.0.1:9"]}, free_port(), tmp_path / "a.log")
                   .replace("workers = 1", "workers = 0")
                   + '\n[timeouts]\nheader = "10 s"\n')
    result = run_serve(cfg)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"error: {cfg}: server.workers: ") for line in lines), lines
    assert any(line.startswith(f"error: {cfg}: timeouts.header: ") for line in lines), lines
    assert result.stdout == ""
