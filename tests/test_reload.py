"""SIGHUP reload: a new generation of workers on the same sockets, the old one
drained; a bad config keeps the running one; listeners come and go."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path

from servers import ProxyProcess, free_port


def config(port: int, body: str, *, extra_listener: int | None = None, workers: int = 2) -> str:
    text = (f'[server]\nworkers = {workers}\nshutdown_timeout = "5s"\n'
            f'[log]\naccess = "off"\nlevel = "info"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n')
    if extra_listener is not None:
        text += f'[[listeners]]\naddress = "127.0.0.1:{extra_listener}"\n'
    return (text + '[upstreams.unused]\nservers = ["127.0.0.1:9"]\n'
            f'[[routes]]\nrespond = {{ body = "{body}\\n" }}\n')


def get(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_reload_changes_routes_without_failing_a_request(tmp_path: Path) -> None:
    port = free_port()
    proxy = ProxyProcess(config(port, "v1"), tmp_path, port).start()
    results: list[bytes] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 20000:
            try:
                results.append(get(port))
            except OSError as e:
                errors.append(repr(e))

    threads = [threading.Thread(target=load) for _ in range(2)]
    try:
        old_workers = set(proxy.wait_worker_pids(2))
        for t in threads:
            t.start()
        for version in ("v2", "v3", "v4"):
            proxy.config_path.write_text(config(port, version))
            proxy.signal(signal.SIGHUP)
            assert wait_for(lambda v=version: get(port) == f"{v}\n".encode()), proxy.log()
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    try:
        assert not errors, errors[:5]
        assert len(results) > 50
        assert set(results) <= {b"v1\n", b"v2\n", b"v3\n", b"v4\n"}
        assert wait_for(lambda: len(proxy.worker_pids()) == 2)
        assert not old_workers & set(proxy.worker_pids())  # the first ones have exited
        assert proxy.log().count("reloaded: generation") == 3
    finally:
        proxy.stop()


def test_a_bad_config_keeps_the_running_one(tmp_path: Path) -> None:
    port = free_port()
    proxy = ProxyProcess(config(port, "good"), tmp_path, port).start()
    try:
        workers = set(proxy.wait_worker_pids(2))
        proxy.config_path.write_text(config(port, "bad") + "\n[limits]\nmax_body_bytes = -1\n")
        proxy.signal(signal.SIGHUP)
        assert wait_for(lambda: "reload failed" in proxy.log())
        assert "limits.max_body_bytes" in proxy.log()
        assert get(port) == b"good\n"
        assert set(proxy.worker_pids()) == workers
    finally:
        proxy.stop()


def test_reload_opens_and_closes_listeners(tmp_path: Path) -> None:
    port, extra = free_port(), free_port()
    proxy = ProxyProcess(config(port, "one"), tmp_path, port).start()
    try:
        proxy.config_path.write_text(config(port, "two", extra_listener=extra))
        proxy.signal(signal.SIGHUP)
        assert wait_for(lambda: _answers(extra) == b"two\n"), proxy.log()
        assert get(port) == b"two\n"
        proxy.config_path.write_text(config(port, "three"))
        proxy.signal(signal.SIGHUP)
        assert wait_for(lambda: get(port) == b"three\n")
        assert wait_for(lambda: _answers(extra) is None), "the removed listener still answers"
    finally:
        proxy.stop()


def _answers(port: int) -> bytes | None:
    try:
        return get(port)
    except OSError:
        return None


class KeepAliveClient:
    """A client that keeps its connection, as browsers do: a request on a reused
    connection that the server closed before answering (it was idle) is sent again
    on a new one (RFC 9112 §9.3.1); any other failure is a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.resent = 0

    def get(self) -> bytes:
        reused = self.sock is not None
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            self.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the response head")
                data += chunk
        except OSError:
            self.close()
            if reused and not data:  # the idle connection was closed: send it again
                self.resent += 1
                return self.get()
            raise
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                self.close()
                raise ConnectionResetError("closed inside the body")
            body += chunk
        if b"connection: close" in head.lower():
            self.close()
        return body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def test_five_reloads_under_steady_load_fail_nothing(tmp_path: Path) -> None:
    """Issue 11: keep-alive and new-connection clients at a fixed pace while the
    routes change five times (and one bad config is refused in between): no
    request fails, no connection is refused, every new route takes effect."""
    port = free_port()
    proxy = ProxyProcess(config(port, "v0"), tmp_path, port).start()
    results: list[bytes] = []
    errors: list[str] = []
    stop = threading.Event()
    clients: list[KeepAliveClient] = []

    def paced(fresh: bool) -> None:
        client = None if fresh else KeepAliveClient(port)
        if client is not None:
            clients.append(client)
        deadline = time.monotonic() + 40
        next_at = time.monotonic()
        while not stop.is_set() and time.monotonic() < deadline and len(results) < 40000:
            try:
                results.append(get(port) if client is None else client.get())
            except OSError as e:
                errors.append(f"{'new' if fresh else 'keep-alive'}: {e!r}")
            next_at += 0.005  # 200 requests/s per thread
            time.sleep(max(0.0, next_at - time.monotonic()))
        if client is not None:
            client.close()

    threads = [threading.Thread(target=paced, args=(fresh,)) for fresh in (True, True, False,
                                                                           False)]
    try:
        proxy.wait_worker_pids(2)
        for t in threads:
            t.start()
        time.sleep(0.5)
        for n in range(1, 6):
            if n == 3:  # a bad config: refused, the running one stays
                proxy.config_path.write_text(config(port, "bad") + "\n[limits]\nbogus = 1\n")
                proxy.signal(signal.SIGHUP)
                assert wait_for(lambda: "reload failed" in proxy.log())
                assert get(port) == b"v2\n"
            proxy.config_path.write_text(config(port, f"v{n}"))
            proxy.signal(signal.SIGHUP)
            assert wait_for(lambda n=n: get(port) == f"v{n}\n".encode()), proxy.log()
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    try:
        assert not errors, errors[:5]
        assert len(results) > 1000, len(results)
        assert set(results) <= {f"v{n}\n".encode() for n in range(6)}
        assert proxy.log().count("reloaded: generation") == 5
        assert proxy.log().count("reload failed") == 1
    finally:
        proxy.stop()
