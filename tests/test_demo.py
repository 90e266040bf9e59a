"""`fastproxy demo`: two demo backends behind the proxy, stopped by Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from servers import free_port

BACKEND_PORTS = (9101, 9102)  # fixed in fastproxy/data/demo.toml


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    busy = [p for p in BACKEND_PORTS if not port_free(p)]
    if busy:
        pytest.skip(f"the demo backends need 127.0.0.1 ports {BACKEND_PORTS}; in use: {busy}")
    port = free_port()
    out = tmp_path / "demo.out"
    with open(out, "wb") as f:
        # Its own session, so that Ctrl-C can be imitated for its process group only.
        proc = subprocess.Popen([sys.executable, "-m", "fastproxy", "demo", "--port", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    family: set[int] = set()
    try:
        deadline = time.monotonic() + 15
        while not (listening(port) and all(listening(p) for p in BACKEND_PORTS)):
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "demo did not start:\n" + out.read_text()
            time.sleep(0.05)
        while len(children(proc.pid)) < 3 and time.monotonic() < deadline:  # backends + 2 workers
            time.sleep(0.05)
        family.update(children(proc.pid))
        yield proc, port, out
    finally:
        family.update(children(proc.pid))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this fixture created
            proc.wait(5)
        for pid in family:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_demo_serves_and_stops_on_ctrl_c(demo: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    proc, port, out = demo
    assert f"http://127.0.0.1:{port}" in out.read_text()
    family = children(proc.pid)
    assert len(family) == 3, family

    with requests.Session() as s:  # one connection: one worker, whose balancer alternates
        answers = [s.get(f"http://127.0.0.1:{port}/", timeout=5) for _ in range(4)]
        assert [r.status_code for r in answers] == [200] * 4
        backends = [json.loads(r.text)["backend"] for r in answers]
        assert set(backends) == {"demo-1", "demo-2"}
        assert backends[0] != backends[1] and backends[:2] == backends[2:], backends
        info = json.loads(answers[0].text)
        assert info["path"] == "/" and info["method"] == "GET"
        assert info["headers"]["X-Forwarded-For"] == "127.0.0.1"

        big = s.get(f"http://127.0.0.1:{port}/big", timeout=10)
        assert big.status_code == 200
        assert len(big.content) == 1024 * 1024
        assert big.content == b"x" * (1024 * 1024)

        bad = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "bad host"}, timeout=5)
        assert bad.status_code == 400

        health = s.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert (health.status_code, health.text) == (200, "ok\n")
        api = json.loads(s.get(f"http://127.0.0.1:{port}/api/users?x=1", timeout=5).text)
        assert api["path"] == "/users?x=1"
        assert len(api["headers"]["X-Request-Id"]) == 32
    assert "route explain" in out.read_text()

    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C goes to the whole foreground group
    assert proc.wait(10) == 0, out.read_text()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in family if alive(pid)] == []
    assert not listening(port)
    assert not any(listening(p) for p in BACKEND_PORTS)
    assert "Traceback" not in out.read_text()


def test_demo_stops_on_sigint_to_the_main_process_only(
        demo: tuple[subprocess.Popen[bytes], int, Path]) -> None:
    """`kill -INT <pid>` (not the whole group) also takes the backends down."""
    proc, port, out = demo
    family = children(proc.pid)
    assert len(family) == 3, family
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0, out.read_text()
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in family if alive(pid)] == []
    assert not any(listening(p) for p in BACKEND_PORTS)
    assert "Traceback" not in out.read_text()
