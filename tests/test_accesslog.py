"""The access log: nginx "combined" lines, escaped, one per request, flushed promptly."""

from __future__ import annotations

import calendar
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servers import Origin, ProxyProcess, Reply, config_toml, free_port

ProxyFactory = Callable[..., ProxyProcess]

COMBINED = re.compile(
    r'^(?P<ip>\d+\.\d+\.\d+\.\d+) - - '
    r'\[(?P<time>\d{2}/(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)/\d{4}'
    r':\d{2}:\d{2}:\d{2}) \+0000\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>[^"]*)" "(?P<ua>[^"]*)"$'
)


def exchange(port: int, data: bytes, responses: int = 1, timeout: float = 5.0,
             head: bool = False) -> bytes:
    """Send `data`, read until `responses` Content-Length framed responses have arrived
    (without bodies for `head` requests)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        got = 0
        pos = 0
        while got < responses:
            end = buf.find(b"\r\n\r\n", pos)
            if end >= 0:
                m = re.search(rb"\r\ncontent-length: (\d+)", buf[pos:end].lower())
                n = int(m.group(1)) if m and not head else 0
                if len(buf) >= end + 4 + n:
                    pos = end + 4 + n
                    got += 1
                    continue
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def log_lines(proxy: ProxyProcess, want: int, timeout: float = 2.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(proxy.access_log()) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    return proxy.access_log()


def parse(line: str) -> dict[str, str]:
    m = COMBINED.match(line)
    assert m, f"not a combined log line: {line!r}"
    return m.groupdict()


def test_combined_format(make_origin: Callable[..., Origin], make_proxy: ProxyFactory) -> None:
    body = b"b" * 1234
    origin = make_origin(lambda req: Reply(body=body))
    proxy = make_proxy({"backend": [origin.address]})
    before = time.time()
    resp = exchange(proxy.port, b"GET /path/x?q=1&r=%20 HTTP/1.1\r\nHost: example.com\r\n"
                                b"Referer: http://ref.example/page\r\n"
                                b"User-Agent: test-agent/1.0 (x11)\r\n\r\n")
    assert resp.endswith(body)
    lines = log_lines(proxy, 1)
    assert len(lines) == 1, lines
    f = parse(lines[0])
    assert f == {"ip": "127.0.0.1", "time": f["time"], "request": "GET /path/x?q=1&r=%20 HTTP/1.1",
                 "status": "200", "bytes": "1234", "referer": "http://ref.example/page",
                 "ua": "test-agent/1.0 (x11)"}
    stamp = calendar.timegm(time.strptime(f["time"], "%d/%b/%Y:%H:%M:%S"))
    assert int(before) - 1 <= stamp <= time.time() + 1  # UTC, as "+0000" says


def test_missing_referer_and_agent_are_dashes(origin: Origin, proxy: ProxyProcess) -> None:
    exchange(proxy.port, b"GET /plain HTTP/1.0\r\n\r\n")
    f = parse(log_lines(proxy, 1)[0])
    assert (f["request"], f["status"], f["referer"], f["ua"]) == ("GET /plain HTTP/1.0", "200",
                                                                  "-", "-")
    assert f["bytes"] == str(len(b"origin /plain"))


@pytest.mark.parametrize("method,status,expected", [
    ("HEAD", 200, 0),       # no body sent for HEAD
    ("GET", 204, 0),
    ("GET", 304, 0),
    ("GET", 200, 100_000),
    ("GET", 404, 5),        # an upstream's error body is counted like any other
])
def test_bytes_is_body_bytes_sent(method: str, status: int, expected: int,
                                  make_origin: Callable[..., Origin],
                                  make_proxy: ProxyFactory) -> None:
    origin = make_origin(lambda req: Reply(status=status, body=b"z" * 100_000 if status == 200
                                           else b"nope!" if status == 404 else b""))
    proxy = make_proxy({"backend": [origin.address]})
    exchange(proxy.port, f"{method} /b HTTP/1.1\r\nHost: example.com\r\n\r\n".encode(),
             head=method == "HEAD")
    f = parse(log_lines(proxy, 1)[0])
    assert (f["request"], f["status"], f["bytes"]) == (f"{method} /b HTTP/1.1", str(status),
                                                       str(expected))


def test_local_error_bytes(make_proxy: ProxyFactory) -> None:
    """The proxy's own answer (502 Bad Gateway\\n) is counted too."""
    proxy = make_proxy({"backend": [f"127.0.0.1:{free_port()}"]})
    resp = exchange(proxy.port, b"GET /down HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert resp.endswith(b"\r\n\r\n502 Bad Gateway\n")
    f = parse(log_lines(proxy, 1)[0])
    assert (f["request"], f["status"], f["bytes"]) == ("GET /down HTTP/1.1", "502",
                                                       str(len(b"502 Bad Gateway\n")))


def test_referer_agent_and_target_are_escaped(origin: Origin, proxy: ProxyProcess) -> None:
    exchange(proxy.port, b'GET /q"uote\\d HTTP/1.1\r\nHost: example.com\r\n'
                         b'Referer: http://r.example/"x"\r\n'
                         b'User-Agent: Mozilla "evil" \\back\\ caf\xe9\t!\r\n\r\n')
    lines = log_lines(proxy, 1)
    assert len(lines) == 1
    f = parse(lines[0])  # the quotes inside do not end the fields
    assert f["request"] == "GET /q\\x22uote\\x5Cd HTTP/1.1"
    assert f["referer"] == "http://r.example/\\x22x\\x22"
    assert f["ua"] == "Mozilla \\x22evil\\x22 \\x5Cback\\x5C caf\\xE9\\x09!"


def test_a_line_per_pipelined_request(origin: Origin, proxy: ProxyProcess) -> None:
    reqs = b"".join(b"GET /p%d HTTP/1.1\r\nHost: example.com\r\nUser-Agent: ua%d\r\n\r\n"
                    % (i, i) for i in range(1, 4))
    resp = exchange(proxy.port, reqs, responses=3)
    assert resp.count(b"HTTP/1.1 200 OK") == 3
    lines = log_lines(proxy, 3)
    assert [(parse(x)["request"], parse(x)["ua"]) for x in lines] == [
        ("GET /p1 HTTP/1.1", "ua1"), ("GET /p2 HTTP/1.1", "ua2"), ("GET /p3 HTTP/1.1", "ua3")]


def test_flushed_within_a_second(origin: Origin, proxy: ProxyProcess) -> None:
    exchange(proxy.port, b"GET /first HTTP/1.1\r\nHost: example.com\r\n\r\n")
    time.sleep(1.2)  # idle: nothing else would trigger a write
    exchange(proxy.port, b"GET /flush-me HTTP/1.1\r\nHost: example.com\r\n\r\n")
    done = time.monotonic()
    while time.monotonic() - done < 1.0 and not any("/flush-me" in x for x in proxy.access_log()):
        time.sleep(0.02)
    assert any("/flush-me" in x for x in proxy.access_log()), proxy.access_log()


@pytest.fixture
def own_proxies() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for p in started:
        p.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_access_off_writes_nothing(workers: int, origin: Origin, tmp_path: Path,
                                   own_proxies: list[ProxyProcess]) -> None:
    port = free_port()
    text = config_toml({"backend": [origin.address]}, port, Path("off"), workers=workers)
    assert 'access = "off"' in text
    proxy = ProxyProcess(text, tmp_path, port)
    own_proxies.append(proxy)
    proxy.start()
    for i in range(5):
        assert b"200 OK" in exchange(port, b"GET /quiet%d HTTP/1.1\r\nHost: e.com\r\n\r\n" % i)
    exchange(port, b"GET / HTTP/1.1\r\n\r\n")  # a refused one too
    time.sleep(0.6)  # two worker ticks
    assert len(origin.requests) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fastproxy.log", "fastproxy.toml"]
    assert "quiet" not in proxy.log()
    assert not (Path.cwd() / "off").exists()


def test_request_line_kept_when_refused_after_the_head(origin: Origin,
                                                       make_proxy: ProxyFactory) -> None:
    """A request refused in its body (bad chunk: 400, body timeout: 408) had a valid head:
    its line shows the request, as for a 413 over the body limit, not "-"."""
    proxy = make_proxy({"backend": [origin.address]}, extra='[timeouts]\nbody = "1s"\n')
    exchange(proxy.port, b"POST /bad-chunk HTTP/1.1\r\nHost: e.com\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    exchange(proxy.port, b"POST /stalled HTTP/1.1\r\nHost: e.com\r\nContent-Length: 9\r\n\r\nab")
    lines = log_lines(proxy, 2)
    assert [(parse(x)["request"], parse(x)["status"]) for x in lines] == [
        ("POST /bad-chunk HTTP/1.1", "400"), ("POST /stalled HTTP/1.1", "408")]
