"""Process integration (issue 11): systemd's NOTIFY_SOCKET, the pid file, and
switching the children to an unprivileged user."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from servers import Origin, ProxyProcess, free_port


def config(port: int, origin: Origin, server: str = "") -> str:
    return (f'[server]\nworkers = 2\n{server}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')


def get(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        # Closed without an answer (a worker killed with the connection in its accept
        # queue): a failed request, as a reset is.
        raise ConnectionResetError("closed without a response")
    return int(data.split(b" ", 2)[1])


def test_systemd_notifications(origin: Origin, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    port = free_port()
    proxy = ProxyProcess(config(port, origin), tmp_path, port)
    try:
        proxy.start()
        monkeypatch.delenv("NOTIFY_SOCKET")
        ready = listener.recv(4096).decode()
        assert ready.startswith("READY=1\n") and f"MAINPID={proxy.pid}" in ready, ready
        proxy.signal(signal.SIGHUP)
        assert listener.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert listener.recv(4096).decode().startswith("READY=1\nSTATUS=generation 2")
        assert get(port) == 200
        proxy.stop()
        assert listener.recv(4096).decode() == "STOPPING=1"
    finally:
        proxy.stop()
        listener.close()


def test_pid_file(origin: Origin, tmp_path: Path) -> None:
    port = free_port()
    proxy = ProxyProcess(config(port, origin, 'pid_file = "run/fastproxy.pid"'), tmp_path, port)
    (tmp_path / "run").mkdir()
    try:
        proxy.start()
        pid_file = tmp_path / "run" / "fastproxy.pid"
        deadline = time.monotonic() + 5
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pid_file.read_text() == f"{proxy.pid}\n"
        proxy.stop()
        assert not pid_file.exists()
    finally:
        proxy.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_children_run_as_the_configured_user(make_origin: Callable[..., Origin],
                                             tmp_path: Path) -> None:
    origin = make_origin()
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    tmp_path.chmod(0o755)
    proxy = ProxyProcess(config(port, origin, 'user = "nobody"'), tmp_path, port)
    try:
        proxy.start()
        workers = proxy.wait_worker_pids(2)
        assert len(workers) == 2
        assert get(port) == 200
        def uids(pid: int) -> list[str]:
            return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                        if line.startswith("Uid:")).split()[1:]

        # (A child just forked is root for a moment, until it switches.)
        deadline = time.monotonic() + 5
        while any(uids(pid) != [str(nobody.pw_uid)] * 4 for pid in workers) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        for pid in workers:
            assert uids(pid) == [str(nobody.pw_uid)] * 4, (pid, uids(pid))
        master = next(line for line in Path(f"/proc/{proxy.pid}/status").read_text()
                      .splitlines() if line.startswith("Uid:")).split()[1]
        assert master == "0"
        # A reload still opens what it needs (the master kept root) and the new
        # workers switch too.
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded: generation 2" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert get(port) == 200
    finally:
        proxy.stop()


def test_user_and_group_must_exist(tmp_path: Path) -> None:
    import tomllib

    from fastproxy.config import ConfigError, parse_config

    for server, message in (('user = "no-such-user-x"', "server.user: no such user"),
                            ('group = "no-such-group-x"', "server.group: no such group")):
        text = (f'[server]\n{server}\n[[listeners]]\naddress = "127.0.0.1:8080"\n'
                '[upstreams.a]\nservers = ["127.0.0.1:9"]\n[[routes]]\nupstream = "a"\n')
        with pytest.raises(ConfigError) as e:
            parse_config(tomllib.loads(text), str(tmp_path / "f.toml"))
        assert message in str(e.value)


def test_a_worker_killed_under_load_costs_only_its_requests(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    """Issue 11: kill -9 one of two workers under a steady load: it is replaced, the
    failures are at most the requests it had (one per client thread), the death is
    logged and counted."""
    origin = make_origin()
    port, admin = free_port(), free_port()
    text = config(port, origin, 'shutdown_timeout = "5s"') + (
        f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    proxy = ProxyProcess(text, tmp_path, port)
    ok: list[int] = []
    failed: list[str] = []
    stop = threading.Event()
    threads_count = 4

    def load() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                ok.append(get(port))
            except OSError as e:
                failed.append(repr(e))
            time.sleep(0.002)

    threads = [threading.Thread(target=load) for _ in range(threads_count)]
    try:
        proxy.start()
        workers = proxy.wait_worker_pids(3)  # two workers and the admin process
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("GET", "/status")
        status = json.loads(conn.getresponse().read())
        conn.close()
        victim = next(w["pid"] for w in status["workers"] if w["slot"] == 0)
        assert victim in workers
        for t in threads:
            t.start()
        time.sleep(1.0)
        before = len(ok)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while f"worker {victim} (slot 0) died (signal 9)" not in proxy.log() \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)  # replaced (after the back-off) and serving again
        stop.set()
        for t in threads:
            t.join(15)
        assert before > 20 and len(ok) > before + 20, (before, len(ok))
        assert len(failed) <= threads_count, failed
        assert set(ok) == {200}
        assert f"worker {victim} (slot 0) died (signal 9)" in proxy.log()
        conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
        conn.request("GET", "/metrics")
        metrics_text = conn.getresponse().read().decode()
        conn.close()
        assert "fastproxy_child_deaths_total 1\n" in metrics_text
    finally:
        stop.set()
        proxy.stop()


def test_the_disk_cache_survives_a_reload(make_origin: Callable[..., Origin],
                                                        tmp_path: Path) -> None:
    from servers import Received, Reply

    asked: list[str] = []

    def site(req: Received) -> Reply:
        asked.append(req.target)
        return Reply(200, [("Cache-Control", "max-age=600")], req.target.encode())

    origin = make_origin(site)
    port = free_port()
    cache = (f'[caches.c]\nmemory = "1m"\ndisk = {{ path = "{tmp_path / "disk"}", '
             'size = "8m" }\n')
    text = config(port, origin).replace('[[routes]]\nupstream = "app"\n',
                                        f'{cache}[[routes]]\nupstream = "app"\ncache = "c"\n')
    proxy = ProxyProcess(text, tmp_path, port)

    def fetch(path: str) -> tuple[bytes, str]:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                      if line.lower().startswith(b"cache-status:"))
        return body, status

    try:
        proxy.start()
        assert fetch("/kept")[1].endswith(";stored")
        proxy.config_path.write_text(text.replace("workers = 2", "workers = 1"))
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded: generation 2" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the old workers are gone; the new one has an empty memory tier
        body, status = fetch("/kept")
        assert body == b"/kept" and status.startswith("fastproxy;hit"), status
        assert asked == ["/kept"]
    finally:
        proxy.stop()
