"""Process integration (issue 11): systemd's NOTIFY_SOCKET, the pid file, and
switching the children to an unprivileged user."""

from __future__ import annotations

import os
import pwd
import signal
import socket
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
