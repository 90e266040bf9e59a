"""Access-log formats and outputs (JSON, templates, several outputs, filters, syslog),
SIGUSR1 reopen under load, several workers on one file, the error log."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fastproxy.errorlog import JsonFormatter, RepeatFilter
from fastproxy.logformat import FIELDS, parse_template
from servers import Origin, ProxyProcess, Reply, config_toml, free_port
from test_accesslog import COMBINED, exchange

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "time": (str,), "client_ip": (str,), "method": (str,), "host": (str,), "path": (str,),
    "query": (str,), "protocol": (str,), "status": (int,), "bytes_sent": (int,),
    "bytes_received": (int,), "duration_ms": (float, int), "upstream_addr": (str,),
    "upstream_status": (int,), "upstream_connect_ms": (float, int),
    "upstream_response_ms": (float, int), "route": (str,), "cache_status": (str,),
    "request_id": (str,), "trace_id": (str,), "span_id": (str,), "user_agent": (str,),
    "referer": (str,), "tls_version": (str,), "tls_sni": (str,),
}
ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def validate_json_line(line: str) -> dict[str, object]:
    """A JSON access line: one object, every field, each null or of its type."""
    entry = json.loads(line)
    assert isinstance(entry, dict)
    assert list(entry) == list(FIELDS)
    for name, value in entry.items():
        assert value is None or isinstance(value, JSON_TYPES[name]), (name, value)
    assert isinstance(entry["time"], str) and ISO_TIME.fullmatch(entry["time"])
    return entry


@pytest.fixture
def own_proxies() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for p in started:
        p.stop()


def start_proxy(own: list[ProxyProcess], tmp_path: Path, origin: Origin, log: str,
                workers: int = 1, extra: str = "", server_extra: str = "",
                routes: str | None = None) -> ProxyProcess:
    """A proxy whose [log] holds `log` (instead of `access = ...`)."""
    port = free_port()
    text = config_toml({"backend": [origin.address]}, port, Path("off"), workers=workers,
                       extra=extra, server_extra=server_extra, routes=routes)
    text = text.replace('[log]\naccess = "off"\nlevel = "info"\n', '[log]\nlevel = "info"\n' + log)
    proxy = ProxyProcess(text, tmp_path, port)
    own.append(proxy)
    return proxy.start()


def wait_lines(path: Path, want: int, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= want:
            break
        time.sleep(0.02)
    return lines


def get(port: int, target: str, headers: str = "") -> bytes:
    return exchange(port, f"GET {target} HTTP/1.1\r\nHost: example.com\r\n{headers}\r\n"
                    .encode())


# -- formats ---------------------------------------------------------------------------


def test_json_lines(make_origin: Callable[..., Origin], tmp_path: Path,
                    own_proxies: list[ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(status=201 if "created" in req.target else 200,
                                           body=b"x" * 321))
    proxy = start_proxy(own_proxies, tmp_path, origin, 'access = "json.log"\nformat = "json"\n',
                        routes='[[routes]]\nname = "api"\nupstream = "backend"\n'
                               '[routes.match]\npath_prefix = "/api/"\n'
                               '[[routes]]\nupstream = "backend"\n')
    exchange(proxy.port, b"GET /api/created?a=1&b=%22 HTTP/1.1\r\nHost: example.com\r\n"
                         b'User-Agent: t "quoted" \xc3\xa9 \xff\r\nReferer: r\r\n\r\n')
    exchange(proxy.port, b"POST /other HTTP/1.1\r\nHost: example.com\r\n"
                         b"Content-Length: 5\r\n\r\nhello")
    exchange(proxy.port, b"BAD\r\n\r\n")  # refused before a request line
    lines = wait_lines(tmp_path / "json.log", 3)
    assert len(lines) == 3, lines
    first, second, refused = (validate_json_line(x) for x in lines)
    assert first["method"] == "GET" and first["path"] == "/api/created"
    assert first["query"] == "a=1&b=%22" and first["host"] == "example.com"
    assert (first["status"], first["bytes_sent"], first["protocol"]) == (201, 321, "HTTP/1.1")
    assert first["upstream_addr"] == origin.address and first["upstream_status"] == 201
    assert first["route"] == "api" and first["client_ip"] == "127.0.0.1"
    # Valid UTF-8 stays text; other bytes are shown as \xHH.
    assert first["user_agent"] == 't "quoted" \u00e9 \\xff' and first["referer"] == "r"
    assert first["cache_status"] is None and first["tls_version"] is None
    assert isinstance(first["request_id"], str) and len(first["request_id"]) == 32
    assert first["trace_id"] is None  # [tracing] traceparent is off
    duration = first["duration_ms"]
    connect = first["upstream_connect_ms"]
    upstream = first["upstream_response_ms"]
    assert isinstance(duration, float) and isinstance(connect, float)
    assert isinstance(upstream, float)
    assert 0 <= connect <= upstream <= duration < 5000
    # The second request reused the pooled connection: no connect time.
    assert second["upstream_connect_ms"] == 0 and second["route"] == "routes[1]"
    assert second["query"] is None and second["method"] == "POST"
    # Its head as parsed plus the 5-byte body.
    head = b"POST /other HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\n"
    assert second["bytes_received"] == len(head) + 5
    assert second["request_id"] != first["request_id"]
    assert refused["status"] == 400 and refused["method"] is None
    assert refused["upstream_addr"] is None and refused["route"] is None


def test_template_and_several_outputs(origin: Origin, tmp_path: Path,
                                      own_proxies: list[ProxyProcess]) -> None:
    log = ('[[log.access_outputs]]\nfile = "all.log"\n'
           '[[log.access_outputs]]\nfile = "errors.json"\nformat = "json"\nmin_status = 400\n'
           '[[log.access_outputs]]\nfile = "short.log"\n'
           'format = "{status} {method} {path} {{q={query}}} {duration_ms} {request}"\n')
    proxy = start_proxy(own_proxies, tmp_path, origin, log)
    get(proxy.port, "/ok?x=1")
    exchange(proxy.port, b"GET /missing HTTP/1.1\r\n\r\n")  # 400: no Host in HTTP/1.1
    get(proxy.port, "/q\x01")  # refused: a control byte in the target
    combined = wait_lines(tmp_path / "all.log", 3)
    errors = wait_lines(tmp_path / "errors.json", 2)
    short = wait_lines(tmp_path / "short.log", 3)
    assert len(combined) == 3 and all(COMBINED.match(x) for x in combined), combined
    assert [validate_json_line(x)["status"] for x in errors] == [400, 400]
    assert re.fullmatch(r"200 GET /ok \{q=x=1\} \d+\.\d{3} GET /ok\?x=1 HTTP/1\.1", short[0])
    assert short[1].startswith("400 - - {q=-} - -") or short[1].startswith("400 GET")
    assert len(short) == 3


def test_sample_rate(origin: Origin, tmp_path: Path, own_proxies: list[ProxyProcess]) -> None:
    proxy = start_proxy(own_proxies, tmp_path, origin,
                        '[[log.access_outputs]]\nfile = "sampled.log"\nsample = 0.25\n'
                        '[[log.access_outputs]]\nfile = "all.log"\n')
    n = 400
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        for i in range(n):
            s.sendall(b"GET /s%d HTTP/1.1\r\nHost: e.com\r\n\r\n" % i)
            buf = b""
            while not buf.endswith(b"origin /s%d" % i):
                chunk = s.recv(65536)
                assert chunk
                buf += chunk
    assert len(wait_lines(tmp_path / "all.log", n)) == n
    time.sleep(0.5)
    sampled = (tmp_path / "sampled.log").read_text().splitlines()
    # Binomial(400, 0.25): mean 100, sd 8.7; these bounds are 6 sd away.
    assert 48 <= len(sampled) <= 152, len(sampled)


def test_unit_template_parsing() -> None:
    assert parse_template("{status} {{x}}") == ((True, "status"), (False, " {x}"))
    for bad, reason in [("{nope}", "unknown variable {nope}"), ("{status", "unbalanced '{'"),
                        ("plain", "naming at least one"), ("{status}}", "unbalanced '}'")]:
        with pytest.raises(ValueError, match=re.escape(reason)):
            parse_template(bad)


# -- syslog ----------------------------------------------------------------------------

RFC5424 = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>\S+) "
    rb"(?P<app>\S+) (?P<pid>\d+) access - (?P<msg>.*)", re.S)


def read_octet_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet counting: "LEN SP MSG" repeated."""
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        assert length.isdigit(), data[:40]
        frames.append(rest[:int(length)])
        data = rest[int(length):]
    return frames


class Collector:
    """A syslog collector on a real socket: UDP, TCP or a unix datagram socket."""

    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind = kind
        self.data: list[bytes] = []
        self._stop = False
        if kind == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"udp://127.0.0.1:{self.sock.getsockname()[1]}"
        elif kind == "tcp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(8)
            self.address = f"tcp://127.0.0.1:{self.sock.getsockname()[1]}"
        else:
            path = str(tmp_path / "log.sock")
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.sock.bind(path)
            self.address = f"unix://{path}"
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        conns: list[socket.socket] = []
        while not self._stop:
            try:
                if self.kind == "tcp":
                    conn, _ = self.sock.accept()
                    conn.settimeout(0.2)
                    conns.append(conn)
                else:
                    self.data.append(self.sock.recv(65536))
            except TimeoutError:
                pass
            for conn in conns:
                try:
                    chunk = conn.recv(65536)
                    if chunk:
                        self.data.append(chunk)
                except TimeoutError:
                    pass
        for conn in conns:
            conn.close()

    def messages(self) -> list[bytes]:
        if self.kind == "tcp":
            return read_octet_frames(b"".join(self.data))
        return list(self.data)

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("kind", ["udp", "tcp", "unix"])
def test_syslog(kind: str, origin: Origin, tmp_path: Path,
                own_proxies: list[ProxyProcess]) -> None:
    collector = Collector(kind, tmp_path)
    try:
        proxy = start_proxy(own_proxies, tmp_path, origin,
                            f'[[log.access_outputs]]\nsyslog = "{collector.address}"\n'
                            'facility = "local3"\napp_name = "edge"\nformat = "json"\n')
        for i in range(5):
            get(proxy.port, f"/sys{i}")
        deadline = time.monotonic() + 5
        while len(collector.messages()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        messages = collector.messages()
    finally:
        collector.close()
    assert len(messages) == 5, messages
    pids = set()
    for i, message in enumerate(messages):
        m = RFC5424.fullmatch(message)
        assert m, message
        assert int(m["pri"]) == 19 * 8 + 6  # local3.info
        assert m["app"] == b"edge"
        pids.add(int(m["pid"]))
        assert validate_json_line(m["msg"].decode())["path"] == f"/sys{i}"
    assert pids == set(proxy.worker_pids())


def test_syslog_collector_down_then_up(origin: Origin, tmp_path: Path,
                                       own_proxies: list[ProxyProcess]) -> None:
    """Lines are dropped (and said so) while the TCP collector is away; sending
    resumes when it is back; the proxy keeps answering all along."""
    placeholder = socket.socket()
    placeholder.bind(("127.0.0.1", 0))
    port = placeholder.getsockname()[1]
    placeholder.close()  # nothing listens there now
    proxy = start_proxy(own_proxies, tmp_path, origin,
                        f'[[log.access_outputs]]\nsyslog = "tcp://127.0.0.1:{port}"\n')
    assert b"200 OK" in get(proxy.port, "/lost")
    deadline = time.monotonic() + 5
    while "lines are dropped" not in proxy.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "access log syslog tcp://127.0.0.1:%d" % port in proxy.log()
    server = socket.socket()
    server.bind(("127.0.0.1", port))
    server.listen(1)
    server.settimeout(5)
    try:
        time.sleep(1.1)  # past the retry pause
        assert b"200 OK" in get(proxy.port, "/found")
        conn, _ = server.accept()
        conn.settimeout(5)
        data = b""
        while b"/found" not in data:
            chunk = conn.recv(65536)
            assert chunk
            data += chunk
        conn.close()
    finally:
        server.close()
    frames = read_octet_frames(data)
    assert len(frames) == 1 and b'"GET /found HTTP/1.1" 200' in frames[0]


# -- reopen and several workers ------------------------------------------------------


def load(port: int, requests: int, connections: int, tag: str,
         agent: bytes = b"load") -> None:
    """`requests` GETs over `connections` keep-alive connections at once (bounded)."""
    errors: list[BaseException] = []

    def run(index: int, count: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                for i in range(count):
                    s.sendall(b"GET /%s/%d/%d HTTP/1.1\r\nHost: e.com\r\nUser-Agent: %s\r\n\r\n"
                              % (tag.encode(), index, i, agent))
                    want = b"origin /%s/%d/%d" % (tag.encode(), index, i)
                    buf = b""
                    while not buf.endswith(want):
                        chunk = s.recv(65536)
                        if not chunk:
                            raise ConnectionError(f"closed after {buf[:100]!r}")
                        buf += chunk
        except BaseException as e:  # reported below
            errors.append(e)

    per = requests // connections
    threads = [threading.Thread(target=run, args=(c, per)) for c in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]


def test_reopen_on_sigusr1_under_load(origin: Origin, tmp_path: Path,
                                      own_proxies: list[ProxyProcess]) -> None:
    """logrotate's way: rename, SIGUSR1 to the master, while requests keep coming.
    Every request has exactly one whole line, in the old file or in the new one."""
    proxy = start_proxy(own_proxies, tmp_path, origin, 'access = "access.log"\n', workers=2)
    assert len(proxy.wait_worker_pids(2)) == 2
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    total = 3000
    during = threading.Thread(target=load, args=(proxy.port, total, 6, "r"))
    during.start()
    # Rotate while the load runs: once some lines are in.
    deadline = time.monotonic() + 30
    while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    os.rename(path, rotated)
    proxy.signal(signal.SIGUSR1)
    during.join(90)
    assert not during.is_alive()
    deadline = time.monotonic() + 5
    count = 0
    while time.monotonic() < deadline:
        old = rotated.read_text().splitlines()
        new = path.read_text().splitlines() if path.exists() else []
        count = len(old) + len(new)
        if count >= total:
            break
        time.sleep(0.05)
    assert len(old) > 0 and len(new) > 0, (len(old), len(new))
    for line in old + new:
        assert COMBINED.match(line), line
    requests = sorted(COMBINED.match(x)["request"] for x in old + new)  # type: ignore[index]
    assert len(requests) == total and len(set(requests)) == total
    assert "reopening the log files of 2 worker(s)" in proxy.log()


def test_workers_never_split_lines(origin: Origin, tmp_path: Path,
                                   own_proxies: list[ProxyProcess]) -> None:
    """Two workers append long JSON lines to one file and to one pipe (stdout)."""
    proxy = start_proxy(own_proxies, tmp_path, origin,
                        '[[log.access_outputs]]\nfile = "shared.json"\nformat = "json"\n'
                        '[[log.access_outputs]]\nstream = "stdout"\nformat = "json"\n',
                        workers=2)
    assert len(proxy.wait_worker_pids(2)) == 2
    total = 2000
    load(proxy.port, total, 8, "w", agent=b"a" * 1500)  # lines of ~1.9 KB
    lines = wait_lines(tmp_path / "shared.json", total)
    assert len(lines) == total
    paths = {validate_json_line(x)["path"] for x in lines}
    assert len(paths) == total
    # stdout goes to fastproxy.log with the error log (text lines, whole too).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = [x for x in proxy.log().splitlines() if x.startswith("{")]
        if len(out) >= total:
            break
        time.sleep(0.05)
    assert len({validate_json_line(x)["path"] for x in out}) == total


# -- the error log -----------------------------------------------------------------------


def test_error_log_json_and_repeats(make_origin: Callable[..., Origin], tmp_path: Path,
                                    own_proxies: list[ProxyProcess]) -> None:
    """Upstream failures repeat one message: at most error_repeats of them a minute."""
    origin = make_origin()
    dead = f"127.0.0.1:{free_port()}"
    port = free_port()
    text = config_toml({"backend": [dead]}, port, Path("off"))
    text = text.replace('level = "info"\n',
                        'level = "info"\nerror_format = "json"\nerror_repeats = 3\n')
    proxy = ProxyProcess(text, tmp_path, port)
    own_proxies.append(proxy)
    proxy.start()
    answers = [get(port, f"/down{i}").split(b" ", 2)[1] for i in range(8)]
    # Connect failures (502) until passive checks eject the server (503).
    assert answers.count(b"502") >= 5 and set(answers) <= {b"502", b"503"}, answers
    time.sleep(0.3)
    entries = [json.loads(x) for x in proxy.log().splitlines()]
    assert all(set(e) == {"time", "level", "pid", "logger", "message"} for e in entries)
    failures = [e for e in entries if "connect failed" in e["message"]]
    assert len(failures) == 3, failures
    assert failures[0]["level"] == "warning" and failures[0]["logger"] == "fastproxy.proxy"
    del origin


def test_repeat_filter_reports_what_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("fastproxy.errorlog.time.monotonic", lambda: clock[0])
    filt = RepeatFilter(2)

    def record(msg: str, arg: object) -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, msg, (arg,), None)

    passed = [filt.filter(record("upstream %s down", i)) for i in range(5)]
    assert passed == [True, True, False, False, False]
    assert filt.filter(record("another %s", 1))  # another template has its own count
    clock[0] += 61
    again = record("upstream %s down", 9)
    assert filt.filter(again)
    assert again.getMessage() == ("upstream 9 down [3 more like this were not logged in the "
                                  "last minute]")
    line = json.loads(JsonFormatter().format(again))
    assert line["message"] == again.getMessage() and line["level"] == "warning"


def test_cache_status_field(make_origin: Callable[..., Origin], tmp_path: Path,
                            own_proxies: list[ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(headers=[("Cache-Control", "max-age=60")],
                                           body=b"cached"))
    proxy = start_proxy(own_proxies, tmp_path, origin,
                        'access = "access.log"\nformat = "{cache_status} {upstream_addr}"\n',
                        extra='[caches.c]\nmemory = "1m"\n',
                        routes='[[routes]]\nupstream = "backend"\ncache = "c"\n')
    for _ in range(2):
        assert get(proxy.port, "/c").endswith(b"cached")
    exchange(proxy.port, b"POST /c HTTP/1.1\r\nHost: example.com\r\nContent-Length: 0\r\n\r\n")
    assert wait_lines(tmp_path / "access.log", 3) == [
        f"MISS {origin.address}", "HIT -", f"BYPASS {origin.address}"]
