"""The admin API end to end (a real proxy with `[admin]`), and cache purges: by URL,
by prefix, by tag, soft, in every worker, across a restart. The origin counts
what it is asked: a purge is proven by the next request reaching it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastproxy._httpcache import PURGE_SLOTS, Purges
from fastproxy.admin import (
    PURGE_LOG,
    PurgeError,
    StatusBoard,
    load_purges,
    parse_purge,
    purge_url,
)
from fastproxy.cachepolicy import tags_of
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, RawClient, RawResponse, Received, Reply, free_port

TOKEN = "s3cret-token-0123456789"


class Site:
    """Every path is cacheable for a minute; bodies carry the path's fetch count."""

    def __init__(self) -> None:
        self.asked: dict[str, int] = {}
        self.fail = False
        self.version = 1
        self.lock = threading.Lock()

    def __call__(self, req: Received) -> Reply:
        path = req.target
        with self.lock:
            self.asked[path] = self.asked.get(path, 0) + 1
            n = self.asked[path]
        if self.fail:
            return Reply(503, [], b"down")
        headers = [("Cache-Control", "max-age=60, stale-if-error=600"),
                   ("Content-Type", "text/plain"), ("ETag", f'"{path}-{n}"')]
        if path.startswith("/tagged-a"):
            headers.append(("Surrogate-Key", "product-1 sale"))
        if path.startswith("/tagged-b"):
            headers.append(("Cache-Tag", "sale,product-2"))
        if path == "/versioned":
            return Reply(200, headers, b"v%d" % self.version)
        return Reply(200, headers, f"{path} #{n}".encode())


def config_text(port: int, origin: Origin, admin_port: int, cache: str = "",
                workers: int = 1, admin: str = "", routes: str = "") -> str:
    return (f'[server]\nworkers = {workers}\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[admin]\naddress = "127.0.0.1:{admin_port}"\n{admin}\n'
            f'[caches.main]\nmemory = "8m"\n{cache}\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n{routes}'
            '[[routes]]\nupstream = "app"\ncache = "main"\n')


class Proxy(ProxyProcess):
    admin_port: int

    def admin(self, method: str, path: str, body: Any = None, token: str | None = None,
              raw: bytes | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=40)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            data = raw if raw is not None else (json.dumps(body).encode()
                                                if body is not None else None)
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            return resp.status, json.loads(payload) if payload else None, resp
        finally:
            conn.close()

    def purge(self, **what: Any) -> Any:
        status, body, _ = self.admin("POST", "/cache/purge", what)
        assert status == 200, body
        return body


def start(tmp_path: Path, origin: Origin, **kw: Any) -> Proxy:
    port, admin_port = free_port(), free_port()
    proxy = Proxy(config_text(port, origin, admin_port, **kw), tmp_path, port)
    proxy.admin_port = admin_port
    proxy.start()
    return proxy


def get(port: int, path: str, host: str = "site") -> RawResponse:
    with RawClient(port) as client:
        client.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        return client.read_response()


@pytest.fixture
def site() -> Site:
    return Site()


def test_purge_by_url_prefix_and_tag(make_origin: Callable[..., Origin], site: Site,
                                     tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    paths = ["/a", "/a?x=1", "/static/x.css", "/static/y.js", "/other", "/tagged-a",
             "/tagged-b"]
    try:
        for path in paths:
            assert get(proxy.port, path).status == 200
            hit = get(proxy.port, path)
            assert hit.header("Cache-Status").startswith("fastproxy;hit"), path
        assert all(n == 1 for n in site.asked.values()), site.asked

        # By URL: that URL only (not another query of the same path).
        answer = proxy.purge(url="http://SITE/a")
        assert answer["purged"] == "url" and answer["value"] == "http://site/a"
        assert get(proxy.port, "/a").body == b"/a #2"
        assert get(proxy.port, "/a?x=1").header("Cache-Status").startswith("fastproxy;hit")
        assert get(proxy.port, "/a").header("Cache-Status").startswith("fastproxy;hit")

        # By prefix.
        proxy.purge(prefix="http://site/static/")
        assert get(proxy.port, "/static/x.css").body == b"/static/x.css #2"
        assert get(proxy.port, "/static/y.js").body == b"/static/y.js #2"
        assert get(proxy.port, "/other").header("Cache-Status").startswith("fastproxy;hit")

        # By tag: Surrogate-Key (spaces) and Cache-Tag (commas).
        proxy.purge(tag="product-2")
        assert get(proxy.port, "/tagged-a").header("Cache-Status").startswith("fastproxy;hit")
        assert get(proxy.port, "/tagged-b").body == b"/tagged-b #2"
        proxy.purge(tag="sale")
        assert get(proxy.port, "/tagged-a").body == b"/tagged-a #2"
        assert get(proxy.port, "/tagged-b").body == b"/tagged-b #3"
        assert site.asked["/other"] == 1 and site.asked["/a?x=1"] == 1 and site.asked["/a"] == 2

        # Everything.
        proxy.purge(all=True)
        assert get(proxy.port, "/other").body == b"/other #2"

        status, listed, _ = proxy.admin("GET", "/cache/purges")
        assert status == 200
        kinds = [(p["kind"], p["value"], p["soft"]) for p in listed["purges"]]
        assert kinds == [("url", "http://site/a", False),
                         ("prefix", "http://site/static/", False),
                         ("tag", "product-2", False), ("tag", "sale", False),
                         ("all", "", False)]
    finally:
        proxy.stop()


def test_soft_purge_keeps_the_response_for_stale_if_error(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        assert get(proxy.port, "/soft").body == b"/soft #1"
        assert get(proxy.port, "/hard").body == b"/hard #1"
        proxy.purge(url="http://site/soft", soft=True)
        proxy.purge(url="http://site/hard")
        site.fail = True
        # Soft: stale now, so the origin is asked (and fails): the stored
        # response is served under stale-if-error.
        soft = get(proxy.port, "/soft")
        assert soft.status == 200 and soft.body == b"/soft #1"
        assert "fwd=stale" in soft.header("Cache-Status"), soft.header("Cache-Status")
        assert site.asked["/soft"] == 2
        # Hard: gone, so the failure is what the client gets.
        hard = get(proxy.port, "/hard")
        assert hard.status == 503 and site.asked["/hard"] == 2
        site.fail = False
        # Revalidated once the origin is back: a fresh response again.
        assert get(proxy.port, "/soft").body == b"/soft #3"
    finally:
        proxy.stop()


def test_a_purge_reaches_every_worker(make_origin: Callable[..., Origin], site: Site,
                                      tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, workers=2)
    try:
        # New connections spread over both workers: each fills its memory tier.
        bodies = {get(proxy.port, "/versioned").body for _ in range(40)}
        assert bodies == {b"v1"}
        assert site.asked["/versioned"] == 2, "both workers should have filled"
        site.version = 2
        proxy.purge(url="http://site/versioned")
        after = [get(proxy.port, "/versioned").body for _ in range(40)]
        assert set(after) == {b"v2"}, after
        assert site.asked["/versioned"] == 4
    finally:
        proxy.stop()


def test_purges_of_a_disk_cache_survive_a_restart(make_origin: Callable[..., Origin],
                                                  site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    disk = tmp_path / "cache"
    cache = f'disk = {{ path = "{disk}", size = "16m" }}'
    proxy = start(tmp_path, origin, cache=cache)
    try:
        for path in ("/kept", "/purged", "/soft"):
            assert get(proxy.port, path).status == 200
        proxy.purge(url="http://site/purged")
        proxy.purge(url="http://site/soft", soft=True)
        assert (disk / PURGE_LOG).exists()
    finally:
        proxy.stop()
    proxy.start()  # the same config, files and log
    try:
        kept = get(proxy.port, "/kept")
        assert kept.header("Cache-Status").startswith("fastproxy;hit"), kept.header(
            "Cache-Status")
        assert get(proxy.port, "/purged").body == b"/purged #2"
        soft = get(proxy.port, "/soft")  # stale: revalidated (the ETag differs: a 200)
        assert soft.body == b"/soft #2"
        assert site.asked == {"/kept": 1, "/purged": 2, "/soft": 2}
    finally:
        proxy.stop()


def test_token_and_bad_requests(make_origin: Callable[..., Origin], site: Site,
                                tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, admin=f'token = "{TOKEN}"')
    try:
        status, body, resp = proxy.admin("GET", "/status")
        assert status == 401 and "token" in body["error"]
        assert resp.getheader("WWW-Authenticate", "").startswith("Bearer")
        assert proxy.admin("GET", "/status", token="wrong-token-0123456789")[0] == 401
        status, body, _ = proxy.admin("GET", "/status", token=TOKEN)
        assert status == 200 and body["generation"] == 1

        def purge(payload: Any = None, raw: bytes | None = None) -> tuple[int, str]:
            s, b, _ = proxy.admin("POST", "/cache/purge", payload, token=TOKEN, raw=raw)
            return s, b["error"] if s != 200 else ""

        assert purge(raw=b"{not json")[0] == 400
        assert "absolute" in purge({"url": "/relative"})[1]
        assert "exactly one" in purge({"url": "http://a/", "tag": "x"})[1]
        assert "exactly one" in purge({})[1]
        assert "no cache named 'nope'" in purge({"all": True, "cache": "nope"})[1]
        assert "unknown field" in purge({"uri": "http://a/"})[1]
        assert "soft must be" in purge({"tag": "x", "soft": "yes"})[1]
        assert "one tag" in purge({"tag": "a b"})[1]
        assert purge(raw=b"x" * (70 * 1024))[0] == 413
        assert proxy.admin("GET", "/cache/purge", token=TOKEN)[0] == 405
        assert proxy.admin("GET", "/nowhere", token=TOKEN)[0] == 404
        assert purge({"tag": "ok"})[0] == 200
        # A malformed request: 400, and the connection is closed.
        with socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5) as s:
            s.sendall(b"GET /status HTTP/1.1\r\nBad Header\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 400 ")
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop()


def test_status_and_reload(make_origin: Callable[..., Origin], site: Site,
                           tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, workers=2)
    try:
        status, body, _ = proxy.admin("GET", "/status")
        assert status == 200
        assert body["master_pid"] == proxy.pid and body["generation"] == 1
        import hashlib
        assert body["config"]["sha256"] == hashlib.sha256(
            proxy.config_path.read_bytes()).hexdigest()
        roles = sorted(str(w["slot"]) for w in body["workers"])
        assert roles == ["0", "1", "admin"]
        for worker in body["workers"]:
            os.kill(worker["pid"], 0)  # alive

        # A good reload: a new route answers.
        text = proxy.config_path.read_text().replace(
            "[[routes]]\n", '[[routes]]\nmatch = { path = "/new" }\nrespond = { status = 200, '
            'body = "new route" }\n[[routes]]\n', 1)
        proxy.config_path.write_text(text)
        status, body, _ = proxy.admin("POST", "/reload")
        assert status == 200 and body["ok"] and body["generation"] == 2, body
        # An old worker may still take a connection or two before it sees its
        # SIGTERM (the generations share the listening sockets): soon, only the
        # new config answers.
        deadline = time.monotonic() + 10
        while (new := get(proxy.port, "/new").body) != b"new route" \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert new == b"new route"
        status, body, _ = proxy.admin("GET", "/status")
        assert body["generation"] == 2 and body["last_reload"]["ok"]

        # A bad one: refused with the reason; the running config stays.
        proxy.config_path.write_text(text.replace('memory = "8m"', 'memory = "lots"'))
        status, body, _ = proxy.admin("POST", "/reload")
        assert status == 400 and "caches.main.memory" in body["error"], body
        assert get(proxy.port, "/new").body == b"new route"
        status, body, _ = proxy.admin("GET", "/status")
        assert body["generation"] == 2 and body["last_reload"]["ok"] is False
    finally:
        proxy.stop()


def test_the_command_line_calls_the_admin_api(make_origin: Callable[..., Origin],
                                              site: Site, tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, admin=f'token = "{TOKEN}"')

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fastproxy", *args], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    try:
        assert get(proxy.port, "/c").body == b"/c #1"
        done = cli("cache", "purge", str(proxy.config_path), "--url", "http://site/c")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["purged"] == "url"
        assert get(proxy.port, "/c").body == b"/c #2"
        done = cli("cache", "purge", str(proxy.config_path), "--tag", "a b")
        assert done.returncode == 1 and "one tag" in done.stderr
        done = cli("server", "drain", str(proxy.config_path), "app", origin.address)
        assert done.returncode == 0 and json.loads(done.stdout)["state"] == "drain", done.stderr
        done = cli("server", "enable", str(proxy.config_path), "app", "10.0.0.1:80")
        assert done.returncode == 1 and "has no server" in done.stderr
        done = cli("reload", str(proxy.config_path))
        assert done.returncode == 0 and json.loads(done.stdout)["generation"] == 2, done.stderr
    finally:
        proxy.stop()
    done = cli("reload", str(proxy.config_path))  # nobody listens now
    assert done.returncode == 1 and "cannot reach the admin API" in done.stderr
    bare = tmp_path / "bare.toml"
    bare.write_text(proxy.config_path.read_text().split("[admin]")[0] + "[upstreams.app]\n"
                    f'servers = ["{origin.address}"]\n[[routes]]\nupstream = "app"\n')
    done = cli("cache", "purge", str(bare), "--all")
    assert done.returncode == 2 and "has no [admin] section" in done.stderr


# -- config ------------------------------------------------------------------------------

def _parse(admin: str, tmp_path: Path, caches: str = "") -> Any:
    text = ('[[listeners]]\naddress = "127.0.0.1:8080"\n[upstreams.app]\n'
            f'servers = ["127.0.0.1:9000"]\n[[routes]]\nupstream = "app"\n{admin}\n{caches}')
    return parse_config(tomllib.loads(text), str(tmp_path / "fastproxy.toml"),
                        base_dir=str(tmp_path))


def test_admin_config(tmp_path: Path) -> None:
    config = _parse("[admin]", tmp_path)
    assert config.admin.address == "127.0.0.1:9901" and config.admin.token is None
    (tmp_path / "token").write_text(TOKEN + "\n")
    config = _parse('[admin]\naddress = "0.0.0.0:9000"\ntoken_file = "token"', tmp_path)
    assert config.admin.token == TOKEN and config.admin.port == 9000
    cases = {
        '[admin]\naddress = "0.0.0.0:9901"': "admin.address: the admin API on 0.0.0.0",
        '[admin]\ntoken = "short"': "admin.token: must be at least 16",
        '[admin]\naddress = "127.0.0.1:0"': "admin.address: port must be",
        f'[admin]\ntoken = "{TOKEN}"\ntoken_file = "token"': "give token or token_file",
        '[admin]\ntoken_file = "missing"': "admin.token_file: cannot read",
        '[admin]\nport = 1': "admin.port: unknown key",
    }
    for admin, message in cases.items():
        with pytest.raises(ConfigError) as e:
            _parse(admin, tmp_path)
        assert message in str(e.value), (admin, str(e.value))
    with pytest.raises(ConfigError) as e:
        _parse("", tmp_path, '[caches.c]\ntag_headers = ["Bad Header"]')
    assert "caches.c.tag_headers" in str(e.value)


def test_parse_purge_normalizes_like_the_proxy(tmp_path: Path) -> None:
    config = _parse("", tmp_path, "[caches.main]\n[caches.other]")
    assert purge_url(config, "http://Example.COM/a/./b/../c?q=1") == b"http://example.com/a/c?q=1"
    assert parse_purge(config, {"prefix": "HTTPS://Example.com/Static/"}) == (
        "prefix", b"https://example.com/Static/", "", False)
    assert parse_purge(config, {"tag": "t1", "cache": "other", "soft": True}) == (
        "tag", b"t1", "other", True)


# -- the shared table and the log -------------------------------------------------------

def test_purges_table_order_overflow_and_limits() -> None:
    table = Purges()
    assert table.seq == 0 and table.since(0) == ([], False)
    first = table.add("url", b"http://a/x", "", False, 100.0)
    table.add("tag", b"t", "main", True, 101.0)
    found, lost = table.since(0)
    assert not lost and [(f[0], f[2], f[3], f[4], f[5]) for f in found] == [
        (first, "url", False, "", b"http://a/x"), (first + 1, "tag", True, "main", b"t")]
    assert table.since(first)[0][0][0] == first + 1
    for i in range(PURGE_SLOTS + 10):
        table.add("prefix", b"http://a/%d" % i)
    found, lost = table.since(2)
    assert lost and len(found) == PURGE_SLOTS and found[-1][0] == table.seq
    found, lost = table.since(table.seq - 5)
    assert not lost and len(found) == 5
    with pytest.raises(ValueError):
        table.add("url", b"x" * 5000)
    with pytest.raises(KeyError):
        table.add("everything", b"")


def test_load_purges_from_the_logs(tmp_path: Path) -> None:
    disk = tmp_path / "d"
    disk.mkdir()
    lines = [json.dumps({"time": 1000.0 + i, "kind": "url", "text": f"http://a/{i}",
                         "soft": False, "cache": ""}) for i in range(PURGE_SLOTS + 5)]
    (disk / PURGE_LOG).write_text("\n".join([*lines[:3], "garbage", *lines[3:]]) + "\n")
    config = _parse("", tmp_path, f'[caches.main]\ndisk = {{ path = "{disk}", size = "8m" }}')
    table = Purges()
    loaded = load_purges(config.caches, table)
    found, lost = table.since(0)
    assert not lost and len(found) == loaded == PURGE_SLOTS
    # What did not fit became one purge of everything fetched before it.
    assert found[0][2] == "all" and found[0][4] == "main"
    assert found[0][1] == pytest.approx(1000.0 + 5)
    assert found[-1][5] == b"http://a/%d" % (PURGE_SLOTS + 4)
    # The log was rewritten to what is remembered.
    assert len((disk / PURGE_LOG).read_text().splitlines()) == PURGE_SLOTS


def test_tags_and_status_board() -> None:
    headers = [(b"Surrogate-Key", b"a  b"), (b"Cache-Tag", b"b,c, d"), (b"X-Other", b"e")]
    assert tags_of(headers, (b"surrogate-key", b"cache-tag")) == (b"a", b"b", b"c", b"d")
    assert tags_of(headers, ()) == ()
    board = StatusBoard()
    assert board.read() == {}
    board.publish({"generation": 3, "workers": [1, 2]})
    assert board.read() == {"generation": 3, "workers": [1, 2]}


# -- servers: drain, disable, enable ----------------------------------------------------

def _named_get(port: int, cookie: str | None = None) -> tuple[str, str | None]:
    """(origin name, the sticky cookie set) of a GET on a new connection."""
    with RawClient(port) as client:
        extra = f"Cookie: fpsrv={cookie}\r\n" if cookie else ""
        client.send(f"GET /s HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
        resp = client.read_response()
    assert resp.status == 200, resp
    set_cookie = resp.header("Set-Cookie")
    value = set_cookie.split("=", 1)[1].split(";", 1)[0] if set_cookie else None
    return resp.body.split(b" ", 1)[0].decode(), value


def test_drain_disable_and_enable_a_server(make_origin: Callable[..., Origin],
                                           make_proxy: Callable[..., ProxyProcess]) -> None:
    a, b = make_origin(name="a"), make_origin(name="b")
    admin_port = free_port()
    proxy = make_proxy({"pool": [a.address, b.address]}, workers=2,
                       upstream_extra='sticky = { cookie = "fpsrv" }',
                       extra=f'[admin]\naddress = "127.0.0.1:{admin_port}"\n')
    api = Proxy.__new__(Proxy)
    api.admin_port = admin_port

    def state(server: str, to: str) -> Any:
        status, body, _ = api.admin("POST", "/servers/state",
                                    {"upstream": "pool", "server": server, "state": to})
        assert status == 200, body
        return body

    # A client bound to a (its cookie), for the drain below.
    cookie = None
    for _ in range(10):
        name, value = _named_get(proxy.port)
        if name == "a":
            cookie = value
            break
    assert cookie is not None

    assert state(a.address, "drain")["changed"] is True
    status, listed, _ = api.admin("GET", "/upstreams")
    servers = listed["upstreams"]["pool"]["servers"]
    assert [(s["address"], s["admin"], s["health"]) for s in servers] == [
        (a.address, "drain", "up"), (b.address, "enabled", "up")]
    assert [(s["protocol"], s["tls"], s["proxy_protocol"]) for s in servers] == [
        ("http1", False, "off")] * 2
    # With the metrics: each server's tries and in-flight, the upstream's mean time. A
    # worker counts a request done after its client has the answer: poll for it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (
            all(s["in_flight"] == 0 for s in servers)
            and sum(s["requests"] for s in servers) == listed["upstreams"]["pool"]["responses"]):
        time.sleep(0.05)
        status, listed, _ = api.admin("GET", "/upstreams")
        servers = listed["upstreams"]["pool"]["servers"]
    assert servers[0]["requests"] >= 1 and servers[0]["in_flight"] == 0, servers
    assert sum(s["requests"] for s in servers) == listed["upstreams"]["pool"]["responses"]
    assert listed["upstreams"]["pool"]["mean_response_ms"] > 0
    # New clients (new connections, both workers) go to b only; a's own client
    # still reaches a.
    assert {_named_get(proxy.port)[0] for _ in range(20)} == {"b"}
    assert _named_get(proxy.port, cookie)[0] == "a"
    # Disabled: not even a's own clients.
    state(a.address, "disabled")
    assert {_named_get(proxy.port, cookie)[0] for _ in range(10)} == {"b"}
    # Enabled again: a takes new clients again.
    assert state(a.address, "enabled")["changed"] is True
    assert state(a.address, "enabled")["changed"] is False
    assert "a" in {_named_get(proxy.port)[0] for _ in range(20)}

    # The state survives a reload (the servers' state is carried over).
    state(b.address, "drain")
    proxy.signal(signal.SIGHUP)
    for _ in range(100):
        status, body, _ = api.admin("GET", "/status")
        if status == 200 and body.get("generation") == 2:
            break
        time.sleep(0.05)
    status, listed, _ = api.admin("GET", "/upstreams")
    assert listed["upstreams"]["pool"]["servers"][1]["admin"] == "drain"
    assert {_named_get(proxy.port)[0] for _ in range(10)} == {"a"}

    # Mistakes.
    for payload, code, message in (
            ({"upstream": "nope", "server": a.address, "state": "drain"}, 404, "no upstream"),
            ({"upstream": "pool", "server": "1.2.3.4:5", "state": "drain"}, 404, "no server"),
            ({"upstream": "pool", "server": a.address, "state": "off"}, 400, "state must be"),
            ({"upstream": "pool", "server": a.address, "state": "drain", "x": 1}, 400,
             "unknown field")):
        status, body, _ = api.admin("POST", "/servers/state", payload)
        assert status == code and message in body["error"], (payload, body)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_upstreams_show_each_servers_protocol_tls_and_proxy_protocol(
        make_origin: Callable[..., Origin], tmp_path: Path) -> None:
    """GET /upstreams names how the proxy speaks to each server: HTTP/1.1 or HTTP/2,
    TLS or not, and the PROXY header it sends (the server's own setting first)."""
    origin = make_origin(name="app")
    port, admin_port = free_port(), free_port()
    text = (f'[server]\nworkers = 1\n[log]\naccess = "off"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[admin]\naddress = "127.0.0.1:{admin_port}"\n'
            f'[upstreams.app]\nservers = ["{origin.address}", '
            '{ address = "https://127.0.0.1:9", proxy_protocol = "v1" }, '
            '{ address = "127.0.0.1:7", proxy_protocol = "off" }]\nproxy_protocol = "v2"\n'
            '[upstreams.grpc]\nservers = ["h2c://127.0.0.1:9", "127.0.0.1:7"]\n'
            'protocol = "h2"\n'
            '[[routes]]\nmatch = { path_prefix = "/g" }\nupstream = "grpc"\n'
            '[[routes]]\nupstream = "app"\n')
    proxy = Proxy(text, tmp_path, port)
    proxy.admin_port = admin_port
    proxy.start()
    try:
        status, listed, _ = proxy.admin("GET", "/upstreams")
        assert status == 200, listed
        shown = {name: [(s["address"], s["protocol"], s["tls"], s["proxy_protocol"])
                        for s in up["servers"]] for name, up in listed["upstreams"].items()}
        assert shown == {
            "app": [(origin.address, "http1", False, "v2"), ("127.0.0.1:9", "http1", True, "v1"),
                    ("127.0.0.1:7", "http1", False, "off")],
            "grpc": [("127.0.0.1:9", "h2", False, "off"), ("127.0.0.1:7", "h2", False, "off")]}
    finally:
        proxy.stop()


def test_reload_through_the_api_when_the_children_run_as_another_user(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    # The admin process runs as [server] user; the master stays root, so the
    # admin process may not signal it: the reload must reach the master anyway.
    origin = make_origin(site, name="app")
    tmp_path.chmod(0o755)
    port, admin_port = free_port(), free_port()
    text = config_text(port, origin, admin_port).replace(
        "[server]\n", '[server]\nuser = "nobody"\n', 1)
    proxy = Proxy(text, tmp_path, port)
    proxy.admin_port = admin_port
    try:
        proxy.start()
        status, body, _ = proxy.admin("GET", "/status")
        assert status == 200 and body["generation"] == 1, body
        status, body, _ = proxy.admin("POST", "/reload")
        assert status == 200 and body["ok"] and body["generation"] == 2, (status, body)
        status, body, _ = proxy.admin("GET", "/status")
        assert body["generation"] == 2
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop()


def test_head_gets_no_body(make_origin: Callable[..., Origin], site: Site,
                           tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        for path in (b"/status", b"/cache/purges", b"/nowhere"):
            with socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5) as s:
                s.sendall(b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 " if path != b"/nowhere"
                                   else b"HTTP/1.1 404 "), data
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            assert length > 0  # what a GET would get
            assert rest == b"", (path, rest[:80])
    finally:
        proxy.stop()


def test_deeply_nested_json_is_a_bad_request(make_origin: Callable[..., Origin], site: Site,
                                             tmp_path: Path) -> None:
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    try:
        for path in ("/cache/purge", "/servers/state"):
            status, body, _ = proxy.admin("POST", path, raw=b"[" * 50000)
            assert status == 400 and "JSON" in body["error"], (path, status, body)
        assert "Traceback" not in proxy.log()
    finally:
        proxy.stop()


def test_parse_purge_refuses_a_malformed_authority(tmp_path: Path) -> None:
    config = _parse("", tmp_path, "[caches.main]")
    for body in ({"url": "http://[::1/x"}, {"prefix": "http://[x/"}):
        with pytest.raises(PurgeError, match="IPv6"):
            parse_purge(config, body)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_rewriting_a_purge_log_keeps_its_owner(tmp_path: Path) -> None:
    # The master (root) rewrites the log when it holds too much; the admin
    # process, running as [server] user, must still be able to append to it.
    import pwd

    nobody = pwd.getpwnam("nobody")
    disk = tmp_path / "d"
    disk.mkdir()
    lines = [json.dumps({"time": 1000.0 + i, "kind": "url", "text": f"http://a/{i}",
                         "soft": False, "cache": ""}) for i in range(PURGE_SLOTS + 5)]
    log_path = disk / PURGE_LOG
    log_path.write_text("\n".join(lines) + "\n")
    os.chown(log_path, nobody.pw_uid, nobody.pw_gid)
    log_path.chmod(0o600)
    config = _parse("", tmp_path, f'[caches.main]\ndisk = {{ path = "{disk}", size = "8m" }}')
    load_purges(config.caches, Purges())
    assert len(log_path.read_text().splitlines()) == PURGE_SLOTS  # it was rewritten
    st = log_path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o600)


def test_a_prefix_covers_the_url_it_spells(tmp_path: Path) -> None:
    # The cache records URLs with the host as the proxy's default key has it (no
    # port, no trailing dot, lower case): a prefix must be normalized the same
    # way, or a purge by prefix says it purged and matches nothing.
    config = _parse("", tmp_path, "[caches.main]")
    for url in ("http://a:8080/static/x", "http://Example.com.:80/x", "https://a:443/x",
                "http://[::1]:8080/x", "http://a./x", "HTTP://A/Static/?q=1"):
        prefix = parse_purge(config, {"prefix": url})[1]
        assert purge_url(config, url).startswith(prefix), (url, prefix)
    assert parse_purge(config, {"prefix": "http://a:8080/St"})[1] == b"http://a/St"


def test_a_reload_leaves_no_socket_the_new_config_dropped_open(
        make_origin: Callable[..., Origin], site: Site, tmp_path: Path) -> None:
    # 2 workers -> 1 and a new admin address: the second worker's listening socket
    # and the old admin socket must close everywhere, or the kernel keeps queueing
    # connections on them that nobody accepts (clients hang instead of being
    # served or refused).
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin, workers=2)
    try:
        assert proxy.admin("GET", "/status")[0] == 200  # the master runs its loop
        old_admin, new_admin = proxy.admin_port, free_port()
        proxy.config_path.write_text(proxy.config_path.read_text().replace(
            "workers = 2", "workers = 1").replace(f":{old_admin}", f":{new_admin}"))
        proxy.signal(signal.SIGHUP)
        proxy.admin_port = new_admin
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status, body, _ = proxy.admin("GET", "/status")
                if status == 200 and body["generation"] == 2 and \
                        all(w["generation"] == 2 for w in body["workers"]):
                    break
            except OSError:
                pass
            time.sleep(0.05)
        assert body["generation"] == 2 and all(w["generation"] == 2 for w in body["workers"])
        for i in range(20):  # spread over the listening sockets by the kernel's hash
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=3) as s:
                s.sendall(f"GET /r{i} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"
                          .encode())
                assert s.recv(12).startswith(b"HTTP/1.1 "), i
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", old_admin), timeout=3).close()
    finally:
        proxy.stop()


def test_connections_beyond_the_cap_get_503(make_origin: Callable[..., Origin], site: Site,
                                            tmp_path: Path) -> None:
    """Idle connections cannot pin the admin process: past MAX_CLIENTS at once a
    connection is answered 503 at once, and a slot freed is usable again."""
    from fastproxy.admin import MAX_CLIENTS
    origin = make_origin(site, name="app")
    proxy = start(tmp_path, origin)
    idle: list[socket.socket] = []
    try:
        assert proxy.admin("GET", "/status")[0] == 200
        for _ in range(MAX_CLIENTS):  # each sends nothing: held until READ_TIMEOUT
            idle.append(socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5))
        # The admin process takes the idle connections in its own time: a refusal
        # shows that all of them are held.
        deadline = time.monotonic() + 20
        while True:
            with socket.create_connection(("127.0.0.1", proxy.admin_port), timeout=5) as s:
                s.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            if data.startswith(b"HTTP/1.1 503 "):
                break
            assert data.startswith(b"HTTP/1.1 200 "), data[:100]
            assert time.monotonic() < deadline, "no connection was refused"
            time.sleep(0.05)
        assert b"Retry-After: 1" in data
        for s in idle:
            s.close()
        idle.clear()
        deadline = time.monotonic() + 20
        while proxy.admin("GET", "/status")[0] != 200:
            assert time.monotonic() < deadline, "the admin API stayed full"
            time.sleep(0.1)
        assert "connections at once" in proxy.log()
        assert "Traceback" not in proxy.log()
    finally:
        for s in idle:
            s.close()
        proxy.stop()
