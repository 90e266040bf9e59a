"""[tracing]: request ids (kept when trusted, else made; upstream, client, log) and W3C
traceparent/tracestate (a span per hop, a new trace when absent, malformed ones never
forwarded). Also the config checks of [tracing] and [[log.access_outputs]]."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fastproxy._proxy import _request_id_test, _trace_test
from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, Reply, config_toml, free_port
from test_accesslog import exchange
from test_observability import validate_json_line, wait_lines

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT}-01"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture
def own_proxies() -> Iterator[list[ProxyProcess]]:
    started: list[ProxyProcess] = []
    yield started
    for p in started:
        p.stop()


def tracing_proxy(own: list[ProxyProcess], tmp_path: Path, origin: Origin, tracing: str,
                  server_extra: str = "") -> ProxyProcess:
    port = free_port()
    text = config_toml({"backend": [origin.address]}, port, Path("off"),
                       server_extra=server_extra, extra=f"[tracing]\n{tracing}")
    text = text.replace('[log]\naccess = "off"\n', '[log]\naccess = "access.log"\n'
                                                   'format = "json"\n')
    proxy = ProxyProcess(text, tmp_path, port)
    own.append(proxy)
    return proxy.start()


def ask(port: int, headers: str = "", target: str = "/t") -> tuple[dict[str, str], bytes]:
    raw = exchange(port, f"GET {target} HTTP/1.1\r\nHost: e.com\r\n{headers}\r\n".encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in fields, f"{name} twice in {head!r}"
        fields[name.lower()] = value.strip()
    return fields, body


def upstream_all(origin: Origin, name: str) -> list[str]:
    return [v for k, v in origin.requests[-1].headers if k.lower() == name]


# -- request ids ------------------------------------------------------------------------


def test_request_id_made_sent_returned_and_logged(origin: Origin, tmp_path: Path,
                                                  own_proxies: list[ProxyProcess]) -> None:
    proxy = tracing_proxy(own_proxies, tmp_path, origin, "request_id = true\n")
    ids = []
    for _ in range(2):
        # From a peer that is not a trusted proxy (none are): replaced.
        fields, _ = ask(proxy.port, "X-Request-ID: client-chosen\r\n")
        sent = upstream_all(origin, "x-request-id")
        assert len(sent) == 1 and sent[0] == fields["x-request-id"] != "client-chosen"
        ids.append(sent[0])
    assert ids[0] != ids[1] and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    fields, _ = ask(proxy.port, target="/../x")  # refused locally: 400, an id too
    assert fields.get("x-request-id")
    logged = [validate_json_line(x)["request_id"] for x in wait_lines(proxy.access_path, 3)]
    assert logged == [*ids, fields["x-request-id"]]


@pytest.mark.parametrize("trust,server_extra,kept", [
    ("always", "", True),
    ("never", 'trusted_proxies = ["127.0.0.0/8"]\n', False),
    ("trusted_proxies", 'trusted_proxies = ["127.0.0.0/8"]\n', True),
    ("trusted_proxies", 'trusted_proxies = ["10.0.0.0/8"]\n', False),
])
def test_request_id_trust(trust: str, server_extra: str, kept: bool, origin: Origin,
                          tmp_path: Path, own_proxies: list[ProxyProcess]) -> None:
    proxy = tracing_proxy(own_proxies, tmp_path, origin,
                          f'request_id = true\ntrust_request_id = "{trust}"\n'
                          'request_id_header = "Request-Id"\n', server_extra=server_extra)
    fields, _ = ask(proxy.port, "Request-Id: abc-123.X_y:z\r\n")
    assert (fields["request-id"] == "abc-123.X_y:z") is kept
    assert upstream_all(origin, "request-id") == [fields["request-id"]]
    # Malformed ones (a space, too long, two of them) are replaced even when trusted.
    for bad in ["Request-Id: a b\r\n", f"Request-Id: {'a' * 129}\r\n",
                "Request-Id: one\r\nRequest-Id: two\r\n"]:
        fields, _ = ask(proxy.port, bad)
        assert re.fullmatch(r"[0-9a-f]{32}", fields["request-id"]), bad
        assert upstream_all(origin, "request-id") == [fields["request-id"]]


def test_request_id_replaces_the_upstreams_and_templates_agree(
        make_origin: Callable[..., Origin], tmp_path: Path,
        own_proxies: list[ProxyProcess]) -> None:
    origin = make_origin(lambda req: Reply(headers=[("X-Request-ID", "from-upstream")]))
    port = free_port()
    text = config_toml({"backend": [origin.address]}, port, tmp_path / "a.log",
                       routes='[[routes]]\nupstream = "backend"\n'
                              '[routes.request_headers]\nset = { "X-Echo" = "{request_id}" }\n',
                       extra='[tracing]\nrequest_id = true\ntrust_request_id = "always"\n')
    proxy = ProxyProcess(text, tmp_path, port)
    own_proxies.append(proxy)
    proxy.start()
    fields, _ = ask(port, "X-Request-ID: kept-1\r\n")
    assert fields["x-request-id"] == "kept-1"  # ours only, not the upstream's
    assert upstream_all(origin, "x-echo") == ["kept-1"]
    assert upstream_all(origin, "x-request-id") == ["kept-1"]


def test_request_id_unit() -> None:
    assert _request_id_test(b"A-z_0.9~:+/=@")
    for bad in [b"", b"a b", b"a\"b", b"x" * 129, b"caf\xc3\xa9", b"a,b"]:
        assert not _request_id_test(bad), bad


# -- traceparent -------------------------------------------------------------------------


def test_traceparent_unit() -> None:
    valid, sent = _trace_test(VALID.encode())
    assert valid
    m = TRACEPARENT.fullmatch(sent.decode())
    assert m and m[1] == TRACE_ID and m[2] not in (PARENT, "0" * 16) and m[3] == "01"
    spans = {_trace_test(VALID.encode())[1][36:52] for _ in range(1000)}
    assert len(spans) == 1000
    for bad in [
        VALID.upper(),                                   # upper-case hex
        "01" + VALID[2:],                                # another version
        "ff" + VALID[2:],                                # the invalid version
        f"00-{'0' * 32}-{PARENT}-01",                    # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",                  # all-zero parent
        VALID + "-extra",                                # longer
        VALID[:-1],                                      # shorter
        VALID.replace("-", "_"),                         # separators
        f"00-{TRACE_ID[:-1]}g-{PARENT}-01",              # not hex
        f"00-{TRACE_ID}-{PARENT}-0x",
    ]:
        valid, sent = _trace_test(bad.encode())
        assert not valid, bad
        m = TRACEPARENT.fullmatch(sent.decode())
        assert m and m[1] != TRACE_ID and m[3] == "01"  # a new trace
    new = {_trace_test(None)[1][3:35] for _ in range(1000)}
    assert len(new) == 1000


def test_traceparent_continued_started_and_malformed(origin: Origin, tmp_path: Path,
                                                     own_proxies: list[ProxyProcess]) -> None:
    proxy = tracing_proxy(own_proxies, tmp_path, origin, "traceparent = true\n")
    # Continued: same trace, a new span, flags and tracestate as received.
    ask(proxy.port, f"traceparent: {VALID}\r\ntracestate: congo=t61rcWkgMzE\r\n"
                    "tracestate: rojo=00f067aa0ba902b7\r\n")
    sent = upstream_all(origin, "traceparent")
    m = TRACEPARENT.fullmatch(sent[0]) if len(sent) == 1 else None
    assert m and m[1] == TRACE_ID and m[2] != PARENT and m[3] == "01", sent
    assert upstream_all(origin, "tracestate") == ["congo=t61rcWkgMzE", "rojo=00f067aa0ba902b7"]
    # Absent: started.
    ask(proxy.port)
    started = upstream_all(origin, "traceparent")
    assert len(started) == 1 and TRACEPARENT.fullmatch(started[0])
    assert started[0][3:35] != TRACE_ID
    # Malformed (or two of them): replaced by a new trace, tracestate dropped.
    for bad in [f"traceparent: {VALID.upper()}\r\n", "traceparent: 00-xyz\r\n",
                f"traceparent: {VALID}\r\ntraceparent: {VALID}\r\n"]:
        ask(proxy.port, bad + "tracestate: congo=t61rcWkgMzE\r\n")
        again = upstream_all(origin, "traceparent")
        assert len(again) == 1 and TRACEPARENT.fullmatch(again[0]), again
        assert again[0][3:35] != TRACE_ID and upstream_all(origin, "tracestate") == []
    lines = [validate_json_line(x) for x in wait_lines(proxy.access_path, 5)]
    assert lines[0]["trace_id"] == TRACE_ID and lines[0]["span_id"] == m[2]
    assert lines[1]["trace_id"] == started[0][3:35]


def test_traceparent_without_starting(origin: Origin, tmp_path: Path,
                                      own_proxies: list[ProxyProcess]) -> None:
    proxy = tracing_proxy(own_proxies, tmp_path, origin,
                          "traceparent = true\nstart_trace = false\n")
    ask(proxy.port)
    assert upstream_all(origin, "traceparent") == []
    ask(proxy.port, "traceparent: 00-bad\r\ntracestate: a=b\r\n")
    assert upstream_all(origin, "traceparent") == [] and upstream_all(origin, "tracestate") == []
    ask(proxy.port, f"traceparent: {VALID}\r\n")
    assert upstream_all(origin, "traceparent")[0][3:35] == TRACE_ID
    lines = [json.loads(x) for x in wait_lines(proxy.access_path, 3)]
    assert [x["trace_id"] for x in lines] == [None, None, TRACE_ID]


def test_off_by_default_nothing_added(origin: Origin, tmp_path: Path,
                                      own_proxies: list[ProxyProcess]) -> None:
    proxy = tracing_proxy(own_proxies, tmp_path, origin, "")
    fields, _ = ask(proxy.port, "traceparent: 00-bad\r\nX-Request-ID: mine\r\n")
    assert "x-request-id" not in fields
    assert upstream_all(origin, "traceparent") == ["00-bad"]  # not ours to judge
    assert upstream_all(origin, "x-request-id") == ["mine"]


# -- config ------------------------------------------------------------------------------


def base(**sections: Any) -> dict[str, Any]:
    return {"listeners": [{"address": "127.0.0.1:8080"}],
            "upstreams": {"b": {"servers": ["127.0.0.1:9000"]}},
            "routes": [{"upstream": "b"}], **sections}


def config_issues(data: dict[str, Any], tmp_path: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, str(tmp_path / "f.toml"))
    assert all(issue.file == str(tmp_path / "f.toml") for issue in info.value.errors)
    return [(issue.key, issue.reason) for issue in info.value.errors]


@pytest.mark.parametrize("log,key,reason", [
    ({"access": "a.log", "access_outputs": [{"file": "b.log"}]}, "log.access_outputs",
     "give log.access or [[log.access_outputs]], not both"),
    ({"access_outputs": []}, "log.access_outputs", "give at least one output"),
    ({"access_outputs": {"file": "x"}}, "log.access_outputs", "expected an array of tables"),
    ({"access_outputs": [{"format": "json"}]}, "log.access_outputs[0]",
     "give exactly one of file, stream or syslog"),
    ({"access_outputs": [{"file": "a", "stream": "stdout"}]}, "log.access_outputs[0]",
     "(found file, stream)"),
    ({"access_outputs": [{"stream": "stdin"}]}, "log.access_outputs[0].stream",
     "unsupported value 'stdin'"),
    ({"access_outputs": [{"file": "a.log", "colour": 1}]}, "log.access_outputs[0].colour",
     "unknown key"),
    ({"access_outputs": [{"file": "a.log"}, {"file": "./a.log"}]},
     "log.access_outputs[1].file", "the same file as log.access_outputs[0]"),
    ({"access_outputs": [{"file": "nodir/a.log"}]}, "log.access_outputs[0].file",
     "does not exist"),
    ({"access_outputs": [{"file": "a.log", "format": "{status} {nope}"}]},
     "log.access_outputs[0].format", "unknown variable {nope}"),
    ({"access_outputs": [{"file": "a.log", "min_status": 1000}]},
     "log.access_outputs[0].min_status", "must be from 0 to 999"),
    ({"access_outputs": [{"file": "a.log", "sample": 0}]}, "log.access_outputs[0].sample",
     "above 0 and at most 1"),
    ({"access_outputs": [{"file": "a.log", "facility": "local0"}]},
     "log.access_outputs[0].facility", "applies to syslog outputs only"),
    ({"access_outputs": [{"syslog": "http://127.0.0.1:514"}]},
     "log.access_outputs[0].syslog", 'expected "udp://HOST:PORT"'),
    ({"access_outputs": [{"syslog": "udp://127.0.0.1"}]}, "log.access_outputs[0].syslog",
     "missing port"),
    ({"access_outputs": [{"syslog": "unix://dev/log"}]}, "log.access_outputs[0].syslog",
     "absolute socket path"),
    ({"access_outputs": [{"syslog": "udp://127.0.0.1:514", "facility": "local9"}]},
     "log.access_outputs[0].facility", "unsupported value 'local9'"),
    ({"access_outputs": [{"syslog": "tcp://[::1]:514", "app_name": "my app"}]},
     "log.access_outputs[0].app_name", "RFC 5424 APP-NAME"),
    ({"error_format": "xml"}, "log.error_format", "unsupported value 'xml'"),
    ({"error_repeats": -1}, "log.error_repeats", "must be from 0 to 1000000"),
])
def test_log_config_errors(log: dict[str, Any], key: str, reason: str,
                           tmp_path: Path) -> None:
    found = config_issues(base(log=log), tmp_path)
    assert any(k == key and reason in r for k, r in found), found


@pytest.mark.parametrize("tracing,key,reason", [
    ({"request_id": "yes"}, "tracing.request_id", "expected a boolean"),
    ({"request_id_header": "Host"}, "tracing.request_id_header", "writes itself"),
    ({"request_id_header": "bad name"}, "tracing.request_id_header", "expected a header name"),
    ({"trust_request_id": "sometimes"}, "tracing.trust_request_id", "unsupported value"),
    ({"sampled": True}, "tracing.sampled", "unknown key"),
])
def test_tracing_config_errors(tracing: dict[str, Any], key: str, reason: str,
                               tmp_path: Path) -> None:
    found = config_issues(base(tracing=tracing), tmp_path)
    assert any(k == key and reason in r for k, r in found), found


def test_log_config_outputs(tmp_path: Path) -> None:
    config = parse_config(base(log={"format": "json", "access_outputs": [
        {"file": "a.log"}, {"stream": "stderr", "format": "combined", "min_status": 500},
        {"syslog": "tcp://[::1]:6514", "sample": 0.5, "facility": "local7"},
        {"syslog": "udp://logs.example.:514"}]}), str(tmp_path / "f.toml"))
    outputs = config.log.access_outputs()
    assert [(o.kind, o.target, o.format) for o in outputs] == [
        ("file", str(tmp_path / "a.log"), "json"), ("stderr", "", "combined"),
        ("syslog", "tcp://[::1]:6514", "json"), ("syslog", "udp://logs.example:514", "json")]
    assert (outputs[1].min_status, outputs[2].sample, outputs[2].facility) == (500, 0.5,
                                                                                "local7")
    legacy = parse_config(base(log={"access": "x.log"}), str(tmp_path / "f.toml"))
    assert [(o.kind, o.format) for o in legacy.log.access_outputs()] == [("file", "combined")]
    assert parse_config(base(log={"access": "off"}), "<c>").log.access_outputs() == ()
    assert parse_config(base(), "<c>").tracing.request_id is False
