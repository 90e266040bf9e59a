"""Basic auth on routes: hashed passwords checked off the event loop, cached."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.auth import BasicAuth, credentials, hash_password, parse_hash
from fastproxy.cli import main
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, Reply, free_port

FAST = 10_000  # the fewest iterations allowed: keeps the tests quick


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def test_hash_and_verify() -> None:
    stored = hash_password("s3cret", FAST)
    iterations, salt, digest = parse_hash(stored)
    assert iterations == FAST and len(salt) == 16 and len(digest) == 32
    auth = BasicAuth("admin", {"alice": stored})
    assert auth.verify(basic("alice", "s3cret"))
    assert not auth.verify(basic("alice", "wrong"))
    assert not auth.verify(basic("mallory", "s3cret"))
    assert auth.cached(basic("alice", "s3cret")) is None  # not checked yet
    auth.remember(basic("alice", "s3cret"), True)
    assert auth.cached(basic("alice", "s3cret")) is True
    assert auth.cached(None) is False and auth.cached(b"Bearer x") is False
    assert credentials(b"Basic !!!") is None
    assert credentials(basic("a", "b:c")) == ("a", "b:c")


@pytest.mark.parametrize("bad", ["plain", "pbkdf2_sha256$10$c2FsdHNhbHQ$" + "A" * 43,
                                 "md5$1$2$3", "pbkdf2_sha256$x$y$z"])
def test_bad_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [{"address": "127.0.0.1:1"}],
                      "upstreams": {"a": {"servers": ["127.0.0.1:2"]}},
                      "routes": [{"upstream": "a",
                                  "basic_auth": {"realm": "x", "users": {"bob": bad}}}]})
    assert [i.key for i in info.value.errors] == ["routes[0].basic_auth.users.bob"]


def test_cli_hash_password(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hunter2\n"))
    assert main(["hash-password", "--iterations", str(FAST)]) == 0
    stored = capsys.readouterr().out.strip()
    assert BasicAuth("r", {"u": stored}).verify(basic("u", "hunter2"))


def status(port: int, path: str, auth: bytes | None = None) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        extra = b"Authorization: " + auth + b"\r\n" if auth else b""
        s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra
                  + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_basic_auth_end_to_end(make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    origin = make_origin(lambda req: Reply(body=b"secret " + req.target.encode()), name="app")
    stored = hash_password("open sesame", 400_000)  # slow enough to see the loop stay free
    port = free_port()
    text = (f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/admin" }\nupstream = "app"\n'
            f'basic_auth = {{ realm = "Admin area", users = {{ alice = "{stored}" }} }}\n'
            '[[routes]]\nrespond = { body = "public\\n" }\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        code, data = status(port, "/admin/x")
        assert code == 401
        assert b'\r\nWWW-Authenticate: Basic realm="Admin area", charset="UTF-8"\r\n' in data
        code, _ = status(port, "/admin/x", basic("alice", "nope"))
        assert code == 401
        # While a password is being checked, the worker keeps serving others.
        results: list[float] = []

        def slow_login() -> None:
            code, data = status(port, "/admin/y", basic("alice", "open sesame"))
            assert code == 200 and data.endswith(b"secret /admin/y")

        t = threading.Thread(target=slow_login)
        t.start()
        for _ in range(5):
            started = time.monotonic()
            assert status(port, "/")[0] == 200
            results.append(time.monotonic() - started)
        t.join(30)
        assert max(results) < 0.15, results
        # Checked once: the next request with the same credentials is answered at once.
        started = time.monotonic()
        assert status(port, "/admin/z", basic("alice", "open sesame"))[0] == 200
        assert time.monotonic() - started < 0.1
        assert [r.target for r in origin.requests] == ["/admin/y", "/admin/z"]
    finally:
        proxy.stop()
