"""Config loading and validation: every key, every error path."""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

from fastproxy.config import (
    Config,
    ConfigError,
    ConfigIssue,
    Limits,
    Listener,
    LogSettings,
    Route,
    RouteMatch,
    RoutingSettings,
    ServerAddress,
    ServerSettings,
    Timeouts,
    Upstream,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

SRC = "test.toml"

FULL_CONFIG = """\
[server]
workers = 4
shutdown_timeout = "10s"
via = false
max_connections = 500

[limits]
max_line_bytes = "4k"
max_header_bytes = "16KiB"
max_header_count = 50
max_body_bytes = "1g"

[timeouts]
header = "500ms"
body = 20
keepalive = "5m"
send = 1.5
lingering_time = 0
lingering_timeout = "2s"

[log]
access = "access.log"
format = "combined"
level = "debug"

[routing]
merge_slashes = false

[[listeners]]
address = "127.0.0.1:8080"

[[listeners]]
address = "[::1]:8443"
name = "v6"
default_host = "WWW.Example.COM."

[upstreams.backend]
servers = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 2 }]
keepalive = 0
idle_timeout = "1h"
connect_timeout = "2s"
read_timeout = "90s"
send_timeout = "15s"

[upstreams."api.v1"]
servers = [{ address = "Api.Internal.:9100" }]

[[routes]]
name = "api"
match = { host = "API.Example.com.", path_prefix = "/api//v1" }
upstream = "api.v1"

[[routes]]
upstream = "backend"
"""


def match(
    hosts: tuple[str, ...] | None = None,
    prefixes: tuple[str, ...] = (),
    listeners: tuple[str, ...] | None = None,
) -> RouteMatch:
    """A RouteMatch with only the conditions config.py itself is concerned with."""
    return RouteMatch(
        hosts=hosts,
        paths=(),
        path_prefixes=prefixes,
        whole_segments=False,
        path_regex=None,
        methods=None,
        headers=(),
        query=(),
        client_ips=None,
        listeners=listeners,
    )


def upstream_route(index: int, upstream: str, m: RouteMatch, name: str | None = None) -> Route:
    return Route(index, name, m, upstream, None, None, None, None, None)


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config, with some top-level sections replaced."""
    data: dict[str, Any] = {
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {"backend": {"servers": ["127.0.0.1:9000"]}},
        "routes": [{"upstream": "backend"}],
    }
    data.update(sections)
    return data


def issues(data: Any) -> list[tuple[str, str]]:
    """(key, reason) for every issue parse_config reports (it must report some)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC)
    assert all(issue.file == SRC for issue in info.value.errors)
    return [(issue.key, issue.reason) for issue in info.value.errors]


def one_issue(data: Any) -> tuple[str, str]:
    found = issues(data)
    assert len(found) == 1, found
    return found[0]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------
# A full config and the defaults


def test_full_config_loads_into_objects(tmp_path: Path) -> None:
    path = write(tmp_path / "proxy.toml", FULL_CONFIG)
    config = load_config(path)

    assert config.source == str(path)
    assert config.server == ServerSettings(
        workers=4, shutdown_timeout=10.0, via=False, max_connections=500
    )
    assert config.limits == Limits(
        max_line_bytes=4096,
        max_header_bytes=16384,
        max_header_count=50,
        max_body_bytes=1024**3,
    )
    assert config.timeouts == Timeouts(header=0.5, body=20.0, keepalive=300.0, send=1.5,
                                       lingering_time=0.0, lingering_timeout=2.0)
    assert config.log == LogSettings(
        access=str(tmp_path / "access.log"), format="combined", level="debug"
    )
    assert config.routing == RoutingSettings(merge_slashes=False)
    assert config.listeners == (
        Listener("127.0.0.1", 8080, "127.0.0.1:8080", None),
        Listener("::1", 8443, "v6", "www.example.com"),
    )
    assert list(config.upstreams) == ["backend", "api.v1"]
    assert config.upstreams["backend"] == Upstream(
        name="backend",
        servers=(
            ServerAddress("127.0.0.1", 9000, 1),
            ServerAddress("127.0.0.1", 9001, 2),
        ),
        keepalive=0,
        idle_timeout=3600.0,
        connect_timeout=2.0,
        read_timeout=90.0,
        send_timeout=15.0,
    )
    assert config.upstreams["api.v1"].servers == (ServerAddress("api.internal", 9100, 1),)
    assert config.routes == (
        # merge_slashes = false keeps the "//" in the prefix.
        upstream_route(0, "api.v1", match(("api.example.com",), ("/api//v1",)), "api"),
        upstream_route(1, "backend", match()),
    )
    assert config.routes[0].label == 'routes[0] "api"'
    assert config.routes[1].label == "routes[1]"
    assert config.warnings == ()
    assert config.summary() == (
        "config OK: 2 listeners (127.0.0.1:8080, [::1]:8443), "
        "2 upstreams (3 servers), 2 routes, 4 workers"
    )


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "proxy.toml", FULL_CONFIG))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.server.workers = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.routes = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.upstreams["backend"].servers[0].weight = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["other"] = config.upstreams["backend"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        config.listeners.append(config.listeners[0])  # type: ignore[attr-defined]
    assert isinstance(config.upstreams["backend"].servers, tuple)
    # slots=True: no per-instance dict to smuggle attributes into.
    with pytest.raises((AttributeError, TypeError)):
        config.limits.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(config.limits, "__dict__")


def test_config_does_not_alias_the_input() -> None:
    data = minimal()
    config = parse_config(data, SRC)
    data["upstreams"]["backend"]["servers"].append("127.0.0.1:1")
    data["upstreams"]["other"] = {"servers": ["127.0.0.1:2"]}
    assert len(config.upstreams["backend"].servers) == 1
    assert list(config.upstreams) == ["backend"]


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    config = parse_config(minimal(), SRC)
    assert config.server == ServerSettings(
        workers=3, shutdown_timeout=30.0, via=True, max_connections=10000
    )
    assert config.limits == Limits(
        max_line_bytes=8192,
        max_header_bytes=32768,
        max_header_count=100,
        max_body_bytes=64 * 1024**2,
    )
    assert config.timeouts == Timeouts(header=30.0, body=60.0, keepalive=75.0, send=60.0,
                                       lingering_time=30.0, lingering_timeout=5.0)
    assert config.log == LogSettings(access="stdout", format="combined", level="info")
    assert config.upstreams["backend"] == Upstream(
        name="backend",
        servers=(ServerAddress("127.0.0.1", 9000, 1),),
        keepalive=128,
        idle_timeout=30.0,
        connect_timeout=5.0,
        read_timeout=60.0,
        send_timeout=60.0,
    )
    assert config.routing == RoutingSettings(merge_slashes=True)
    assert config.listeners == (Listener("127.0.0.1", 8080, "127.0.0.1:8080", None),)
    assert config.routes == (upstream_route(0, "backend", match()),)
    assert config.routes[0].match.matches_everything
    assert config.summary() == (
        "config OK: 1 listener (127.0.0.1:8080), 1 upstream (1 server), 1 route, 3 workers"
    )


@pytest.mark.parametrize(("cpus", "workers"), [(None, 1), (1, 1), (64, 64), (4096, 1024)])
def test_workers_auto_follows_cpu_count(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, workers: int
) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    config = parse_config(minimal(server={"workers": "auto"}), SRC)
    assert config.server.workers == workers


def test_zero_shutdown_timeout_and_zero_body_limit_are_allowed() -> None:
    config = parse_config(
        minimal(server={"shutdown_timeout": 0}, limits={"max_body_bytes": 0}), SRC
    )
    assert config.server.shutdown_timeout == 0.0
    assert config.limits.max_body_bytes == 0


# --------------------------------------------------------------------------
# Durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (5, 5.0),
        (0.25, 0.25),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30", "invalid duration '30': expected a number of seconds, or a string like"),
        ("10 s", "invalid duration '10 s'"),
        ("5d", "invalid duration '5d'"),
        ("-1s", "invalid duration '-1s'"),
        ("1S", "invalid duration '1S'"),
        ("", "invalid duration ''"),
        (-1, "duration must not be negative, found integer -1"),
        (-0.5, "duration must not be negative, found float -0.5"),
        (float("inf"), "duration must be a finite number, found float inf"),
        (float("nan"), "duration must be a finite number, found float nan"),
        (True, "expected a duration (a number of seconds, or a string like"),
        ([1], "found array"),
        (None, "found NoneType"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1000, 1000),
        ("512", 512),
        ("512b", 512),
        ("16k", 16384),
        ("16K", 16384),
        ("16KB", 16384),
        ("16KiB", 16384),
        ("64m", 64 * 1024**2),
        ("64MiB", 64 * 1024**2),
        ("64mb", 64 * 1024**2),
        ("1g", 1024**3),
        ("1GiB", 1024**3),
        ("1GB", 1024**3),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.5k", "invalid size '1.5k': expected a number of bytes, or a string like"),
        ("16 k", "invalid size '16 k'"),
        ("16kk", "invalid size '16kk'"),
        ("1t", "invalid size '1t'"),
        ("k", "invalid size 'k'"),
        ("-1", "invalid size '-1'"),
        ("", "invalid size ''"),
        (-1, "size must not be negative, found integer -1"),
        (1024.0, "expected a size (a number of bytes, or a string like"),
        (False, "found boolean false"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert message in str(info.value)


# --------------------------------------------------------------------------
# Files: syntax errors, missing and unreadable files


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", "[server]\nvia = true\nworkers = \n[limits]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [issue] = info.value.errors
    assert issue.file == str(path)
    assert issue.key == "(toml)"
    assert "(at line 3, column 11)" in issue.reason
    assert str(info.value) == f"{path}: (toml): {issue.reason}"


def test_missing_file_is_one_issue(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        ConfigIssue(str(path), "(file)", "cannot read: No such file or directory")
    ]


def test_directory_instead_of_file_is_one_issue(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.errors == [
        ConfigIssue(str(tmp_path), "(file)", "cannot read: Is a directory")
    ]


def test_non_utf8_file_is_one_issue(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[server]\nvia = true\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [
        ConfigIssue(str(path), "(toml)", "not valid UTF-8 (invalid byte at offset 5)")
    ]


def test_top_level_must_be_a_table() -> None:
    assert one_issue([1, 2]) == ("(root)", "expected a table, found array")


# --------------------------------------------------------------------------
# Unknown keys


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        (minimal(listners=[]), "listners", "unknown key; did you mean 'listeners'?"),
        (minimal(server={"wrokers": 2}), "server.wrokers", "unknown key; did you mean 'workers'?"),
        (minimal(server={"banner": "x"}), "server.banner", "unknown key"),
        (
            minimal(timeouts={"idle": "5s"}),
            "timeouts.idle",
            "unknown key",
        ),
        (
            minimal(limits={"max_body_size": 1}),
            "limits.max_body_size",
            "unknown key; did you mean 'max_body_bytes'?",
        ),
        (
            minimal(listeners=[{"address": "127.0.0.1:80", "adress": "x"}]),
            "listeners[0].adress",
            "unknown key; did you mean 'address'?",
        ),
        (
            minimal(routes=[{"upstream": "backend", "upstrem": "x"}]),
            "routes[0].upstrem",
            "unknown key; did you mean 'upstream'?",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"hots": "a.com"}}]),
            "routes[0].match.hots",
            "unknown key; did you mean 'host'?",
        ),
        (
            minimal(upstreams={"backend": {"servers": ["a:1"], "keepalve": 3}}),
            "upstreams.backend.keepalve",
            "unknown key; did you mean 'keepalive'?",
        ),
        (
            minimal(upstreams={"backend": {"servers": [{"address": "a:1", "wieght": 2}]}}),
            "upstreams.backend.servers[0].wieght",
            "unknown key; did you mean 'weight'?",
        ),
    ],
)
def test_unknown_keys(data: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(data) == (key, reason)


# --------------------------------------------------------------------------
# Wrong types and out-of-range values


@pytest.mark.parametrize(
    ("data", "key", "reason"),
    [
        (minimal(server="fast"), "server", "expected a table, found string 'fast'"),
        (
            minimal(server={"workers": "many"}),
            "server.workers",
            "expected an integer or \"auto\", found string 'many'",
        ),
        (
            minimal(server={"workers": 2.0}),
            "server.workers",
            'expected an integer or "auto", found float 2.0',
        ),
        (
            minimal(server={"workers": 0}),
            "server.workers",
            'must be from 1 to 1024 or "auto", found 0',
        ),
        (
            minimal(server={"workers": 1025}),
            "server.workers",
            'must be from 1 to 1024 or "auto", found 1025',
        ),
        (
            minimal(server={"via": "yes"}),
            "server.via",
            "expected a boolean (true or false), found string 'yes'",
        ),
        (
            minimal(server={"max_connections": True}),
            "server.max_connections",
            "expected an integer, found boolean true",
        ),
        (
            minimal(server={"max_connections": 0}),
            "server.max_connections",
            "must be from 1 to 1000000, found 0",
        ),
        (
            minimal(limits={"max_header_count": 1.5}),
            "limits.max_header_count",
            "expected an integer, found float 1.5",
        ),
        (
            minimal(limits={"max_header_count": 10001}),
            "limits.max_header_count",
            "must be from 1 to 10000, found 10001",
        ),
        (
            minimal(limits={"max_header_bytes": "512"}),
            "limits.max_header_bytes",
            "must be from 1k to 1m (1024 to 1048576 bytes), found string '512'",
        ),
        (
            minimal(limits={"max_header_bytes": "2m"}),
            "limits.max_header_bytes",
            "must be from 1k to 1m (1024 to 1048576 bytes), found string '2m'",
        ),
        (
            minimal(limits={"max_line_bytes": "64k"}),
            "limits.max_line_bytes",
            "must not exceed limits.max_header_bytes (32768 bytes), found 65536 bytes",
        ),
        (
            minimal(limits={"max_body_bytes": "lots"}),
            "limits.max_body_bytes",
            "invalid size 'lots': expected a number of bytes, or a string like "
            '"512", "16k", "64MiB", "1g" (1024-based)',
        ),
        (
            minimal(timeouts={"header": "0s"}),
            "timeouts.header",
            "must be greater than 0, found string '0s'",
        ),
        (
            minimal(timeouts={"body": 0}),
            "timeouts.body",
            "must be greater than 0, found integer 0",
        ),
        (
            minimal(timeouts={"keepalive": "2d"}),
            "timeouts.keepalive",
            "invalid duration '2d': expected a number of seconds, or a string like "
            '"500ms", "30s", "5m", "1h"',
        ),
        (
            minimal(timeouts={"send": "25h"}),
            "timeouts.send",
            "must be at most 24h, found string '25h'",
        ),
        (
            minimal(server={"shutdown_timeout": -1}),
            "server.shutdown_timeout",
            "duration must not be negative, found integer -1",
        ),
        (
            minimal(log={"format": "jsn"}),
            "log.format",
            "expected \"combined\", \"json\" or a template naming at least one {variable}, "
            "found 'jsn'",
        ),
        (
            minimal(log={"level": "warn"}),
            "log.level",
            "unsupported value 'warn' (supported: debug, info, warning, error); "
            "did you mean 'warning'?",
        ),
        (minimal(log={"level": 3}), "log.level", "expected a string, found integer 3"),
        (
            minimal(log={"access": ""}),
            "log.access",
            'must not be empty (use "off" to disable the access log)',
        ),
        (
            minimal(listeners={"address": "127.0.0.1:80"}),
            "listeners",
            "expected an array of tables ([[listeners]]), found table",
        ),
        (
            minimal(listeners=["127.0.0.1:80"]),
            "listeners[0]",
            "expected a table, found string '127.0.0.1:80'",
        ),
        (
            minimal(listeners=[{"address": 8080}]),
            "listeners[0].address",
            'expected a string like "127.0.0.1:8080", found integer 8080',
        ),
        (minimal(listeners=[{}]), "listeners[0].address", "missing required key"),
        (
            minimal(upstreams=[]),
            "upstreams",
            "expected a table of upstreams ([upstreams.NAME]), found array",
        ),
        (
            minimal(upstreams={"backend": "127.0.0.1:9000"}),
            "upstreams.backend",
            "expected a table, found string '127.0.0.1:9000'",
        ),
        (
            minimal(upstreams={"backend": {"servers": "127.0.0.1:9000"}}),
            "upstreams.backend.servers",
            'expected an array of "host:port" strings or { address, weight } tables, '
            "found string '127.0.0.1:9000'",
        ),
        (
            minimal(upstreams={"backend": {"servers": [9000]}}),
            "upstreams.backend.servers[0]",
            'expected a string "host:port" or a table { address = ..., weight = ... }, '
            "found integer 9000",
        ),
        (
            minimal(upstreams={"backend": {"servers": ["a:1"], "keepalive": -1}}),
            "upstreams.backend.keepalive",
            "must be from 0 to 10000, found -1",
        ),
        (
            minimal(upstreams={"backend": {"servers": ["a:1"], "connect_timeout": "0ms"}}),
            "upstreams.backend.connect_timeout",
            "must be greater than 0, found string '0ms'",
        ),
        (
            minimal(upstreams={"backend": {"servers": ["a:1"], "read_timeout": "soon"}}),
            "upstreams.backend.read_timeout",
            "invalid duration 'soon': expected a number of seconds, or a string like "
            '"500ms", "30s", "5m", "1h"',
        ),
        (
            minimal(routes={"upstream": "backend"}),
            "routes",
            "expected an array of tables ([[routes]]), found table",
        ),
        (
            minimal(routes=[{"upstream": 1}]),
            "routes[0].upstream",
            "expected a string, found integer 1",
        ),
        (
            minimal(routes=[{}]),
            "routes[0]",
            "missing action: give one of upstream, redirect, respond",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": "/api"}]),
            "routes[0].match",
            "expected a table, found string '/api'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"path_prefix": "api"}}]),
            "routes[0].match.path_prefix",
            "must start with \"/\", found 'api'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"path_prefix": "/a b"}}]),
            "routes[0].match.path_prefix",
            "must not contain ' ', found '/a b'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"path_prefix": "/a?x=1"}}]),
            "routes[0].match.path_prefix",
            "must not contain '?', found '/a?x=1'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"host": "a.com:8080"}}]),
            "routes[0].match.host",
            "must not include a port, found 'a.com:8080'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"host": "a b.com"}}]),
            "routes[0].match.host",
            "invalid host name 'a b.com'",
        ),
        (
            minimal(routes=[{"upstream": "backend", "match": {"host": 5}}]),
            "routes[0].match.host",
            "expected a string or an array of strings, found integer 5",
        ),
        (
            minimal(routing={"merge_slashes": "yes"}),
            "routing.merge_slashes",
            "expected a boolean (true or false), found string 'yes'",
        ),
        (
            minimal(routing={"merge_slash": True}),
            "routing.merge_slash",
            "unknown key; did you mean 'merge_slashes'?",
        ),
        (minimal(routing=[]), "routing", "expected a table, found array"),
    ],
)
def test_wrong_values(data: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(data) == (key, reason)


def test_match_host_is_normalised() -> None:
    routes = [
        {"upstream": "backend", "match": {"host": "WWW.Example.COM."}},
        {"upstream": "backend", "match": {"host": "[0:0::1]"}},
        {"upstream": "backend", "match": {"host": "10.0.0.1", "path_prefix": "/x/"}},
    ]
    config = parse_config(minimal(routes=routes), SRC)
    assert [route.match for route in config.routes] == [
        match(("www.example.com",)),
        match(("[::1]",)),
        match(("10.0.0.1",), ("/x/",)),
    ]


# --------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "missing port in '127.0.0.1' (expected \"host:port\")"),
        ("127.0.0.1:", "port must be a number from 1 to 65535, found ''"),
        ("127.0.0.1:0", "port must be a number from 1 to 65535, found '0'"),
        ("127.0.0.1:70000", "port must be a number from 1 to 65535, found '70000'"),
        ("127.0.0.1:http", "port must be a number from 1 to 65535, found 'http'"),
        ("127.0.0.1:-80", "port must be a number from 1 to 65535, found '-80'"),
        (":0", "port must be a number from 1 to 65535, found '0'"),
        ("::1:8080", 'an IPv6 address must be in brackets, e.g. "[::1]:8080"'),
        ("[::1:8080", "missing ']' after the IPv6 address in '[::1:8080'"),
        ("[::1]", "missing port in '[::1]' (expected \"[v6]:port\")"),
        ("[::1]8080", "missing port in '[::1]8080' (expected \"[v6]:port\")"),
        ("[zz::1]:80", "invalid IPv6 address 'zz::1'"),
        ("[127.0.0.1]:80", "invalid IPv6 address '127.0.0.1'"),
        ("example.com:80", "host must be an IP address or \"localhost\", found 'example.com'"),
        ("256.0.0.1:80", "host must be an IP address or \"localhost\", found '256.0.0.1'"),
    ],
)
def test_bad_listener_address(address: str, reason: str) -> None:
    data = minimal(listeners=[{"address": "127.0.0.1:8080"}, {"address": address}])
    assert one_issue(data) == ("listeners[1].address", reason)


@pytest.mark.parametrize(
    ("address", "host", "port", "formatted"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[0:0:0:0:0:0:0:1]:443", "::1", 443, "[::1]:443"),
        ("[::]:80", "::", 80, "[::]:80"),
        (":8080", "0.0.0.0", 8080, "0.0.0.0:8080"),
        ("*:65535", "0.0.0.0", 65535, "0.0.0.0:65535"),
        ("localhost:1", "localhost", 1, "localhost:1"),
        ("LocalHost:2", "localhost", 2, "localhost:2"),
    ],
)
def test_listener_address_round_trip(address: str, host: str, port: int, formatted: str) -> None:
    config = parse_config(minimal(listeners=[{"address": address}]), SRC)
    # Without a name, a listener is named by its normalized address.
    assert config.listeners == (Listener(host, port, formatted, None),)
    assert config.listeners[0].address == formatted
    again = parse_config(minimal(listeners=[{"address": formatted}]), SRC)
    assert again.listeners == config.listeners


def test_duplicate_listener_addresses() -> None:
    data = minimal(
        listeners=[
            {"address": "127.0.0.1:8080"},
            {"address": ":9090"},
            {"address": "0.0.0.0:9090"},
            {"address": "[::1]:8080"},
            {"address": "[0::1]:8080"},
        ]
    )
    assert issues(data) == [
        ("listeners[2].address", "duplicate address '0.0.0.0:9090' (already used by listeners[1])"),
        ("listeners[4].address", "duplicate address '[0::1]:8080' (already used by listeners[3])"),
    ]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("backend", "missing port in 'backend' (expected \"host:port\")"),
        (":80", "missing host in ':80'"),
        ("a..b:80", "invalid host name 'a..b'"),
        ("-a.com:80", "invalid host name '-a.com'"),
        ("999.1.1.1:80", "invalid IPv4 address '999.1.1.1'"),
        ("host:0", "port must be a number from 1 to 65535, found '0'"),
        ("host:65536", "port must be a number from 1 to 65535, found '65536'"),
        ("::1:80", 'an IPv6 address must be in brackets, e.g. "[::1]:80"'),
        ("[fe80::zz]:80", "invalid IPv6 address 'fe80::zz'"),
    ],
)
def test_bad_upstream_server_address(address: str, reason: str) -> None:
    data = minimal(upstreams={"backend": {"servers": ["127.0.0.1:1", address]}})
    assert one_issue(data) == ("upstreams.backend.servers[1]", reason)


def test_upstream_server_hosts_are_normalised() -> None:
    servers = ["App-1.Internal.:80", "my_service:8000", "[::ffff:1.2.3.4]:9", "10.0.0.1:1"]
    config = parse_config(minimal(upstreams={"backend": {"servers": servers}}), SRC)
    assert config.upstreams["backend"].servers == (
        ServerAddress("app-1.internal", 80, 1),
        ServerAddress("my_service", 8000, 1),
        ServerAddress("::ffff:102:304", 9, 1),
        ServerAddress("10.0.0.1", 1, 1),
    )
    assert [s.address for s in config.upstreams["backend"].servers] == [
        "app-1.internal:80",
        "my_service:8000",
        "[::ffff:102:304]:9",
        "10.0.0.1:1",
    ]


def test_table_server_address_errors_name_the_address_key() -> None:
    data = minimal(upstreams={"backend": {"servers": [{"address": "nope"}, {"weight": 3}]}})
    assert issues(data) == [
        ("upstreams.backend.servers[0].address", "missing port in 'nope' (expected \"host:port\")"),
        ("upstreams.backend.servers[1].address", "missing required key"),
    ]


@pytest.mark.parametrize(
    ("weight", "reason"),
    [
        (0, "must be from 1 to 1000, found 0"),
        (1001, "must be from 1 to 1000, found 1001"),
        ("2", "expected an integer, found string '2'"),
        (1.5, "expected an integer, found float 1.5"),
        (True, "expected an integer, found boolean true"),
    ],
)
def test_bad_weight(weight: object, reason: str) -> None:
    data = minimal(upstreams={"backend": {"servers": [{"address": "a:1", "weight": weight}]}})
    assert one_issue(data) == ("upstreams.backend.servers[0].weight", reason)


def test_duplicate_server_in_upstream() -> None:
    data = minimal(upstreams={"backend": {"servers": ["A:1", {"address": "a:1", "weight": 2}]}})
    assert one_issue(data) == (
        "upstreams.backend.servers[1].address",
        "duplicate server 'a:1' (already upstreams.backend.servers[0]; use weight instead)",
    )


# --------------------------------------------------------------------------
# Listener names and default hosts


def test_listener_names_and_default_hosts() -> None:
    data = minimal(
        listeners=[
            {"address": "127.0.0.1:8080", "name": "public", "default_host": "Bücher.Example."},
            {"address": "[::1]:8080", "default_host": "[0::1]"},
            {"address": ":9000", "default_host": "10.0.0.1"},
        ],
        routes=[
            {"upstream": "backend", "match": {"listener": ["public", "[::1]:8080"]}},
            {"upstream": "backend", "match": {"listener": "0.0.0.0:9000"}},
        ],
    )
    config = parse_config(data, SRC)
    assert config.listeners == (
        Listener("127.0.0.1", 8080, "public", "xn--bcher-kva.example"),
        Listener("::1", 8080, "[::1]:8080", "[::1]"),
        Listener("0.0.0.0", 9000, "0.0.0.0:9000", "10.0.0.1"),
    )
    assert [route.match.listeners for route in config.routes] == [
        ("public", "[::1]:8080"),
        ("0.0.0.0:9000",),
    ]


@pytest.mark.parametrize(
    ("listeners", "expected"),
    [
        (
            [{"address": ":1", "name": "a"}, {"address": ":2", "name": "a"}],
            [("listeners[1].name", "duplicate listener name 'a' (already used by listeners[0])")],
        ),
        (
            # An explicit name that is another listener's default name.
            [{"address": ":1"}, {"address": ":2", "name": "0.0.0.0:1"}],
            [
                (
                    "listeners[1].name",
                    "duplicate listener name '0.0.0.0:1' (already used by listeners[0])",
                )
            ],
        ),
        (
            [{"address": ":2", "name": "0.0.0.0:1"}, {"address": ":1"}],
            [
                (
                    "listeners[1]",
                    "its default name '0.0.0.0:1' (the address) is already used by "
                    "listeners[0]; give this listener a name",
                )
            ],
        ),
        ([{"address": ":1", "name": ""}], [("listeners[0].name", "must not be empty")]),
        (
            [{"address": ":1", "name": 7}],
            [("listeners[0].name", "expected a string, found integer 7")],
        ),
        (
            [{"address": ":1", "name": "a\nb"}],
            [("listeners[0].name", "must not contain control characters, found 'a\\nb'")],
        ),
        (
            [{"address": ":1", "default_host": "*.example.com"}],
            [
                (
                    "listeners[0].default_host",
                    "must be a single host name, not a wildcard, found '*.example.com'",
                )
            ],
        ),
        (
            [{"address": ":1", "default_host": "example.com:80"}],
            [("listeners[0].default_host", "must not include a port, found 'example.com:80'")],
        ),
        (
            [{"address": ":1", "default_host": ""}],
            [("listeners[0].default_host", "invalid host name ''")],
        ),
        (
            [{"address": ":1", "default_host": True}],
            [("listeners[0].default_host", "expected a string, found boolean true")],
        ),
        (
            [{"address": ":1", "nmae": "x"}],
            [("listeners[0].nmae", "unknown key; did you mean 'name'?")],
        ),
    ],
)
def test_bad_listener_names(listeners: list[Any], expected: list[tuple[str, str]]) -> None:
    assert issues(minimal(listeners=listeners)) == expected


def test_route_naming_an_unknown_listener() -> None:
    data = minimal(
        listeners=[{"address": ":1", "name": "public"}, {"address": ":2"}],
        routes=[
            {"upstream": "backend", "match": {"listener": "pubic"}},
            {"upstream": "backend", "match": {"listener": ["public", "0.0.0.0:3"]}},
        ],
    )
    assert issues(data) == [
        ("routes[0].match.listener", "unknown listener 'pubic' (defined: 0.0.0.0:2, public)"),
        (
            "routes[1].match.listener[1]",
            "unknown listener '0.0.0.0:3' (defined: 0.0.0.0:2, public)",
        ),
    ]


def test_route_naming_a_listener_with_a_bad_address_reports_only_the_address() -> None:
    # The unnamed listener's name (its address) is unknown: the route must not
    # add a second issue for what is one mistake.
    data = minimal(
        listeners=[{"address": "127.0.0.1:0"}],
        routes=[{"upstream": "backend", "match": {"listener": "127.0.0.1:0"}}],
    )
    assert issues(data) == [
        ("listeners[0].address", "port must be a number from 1 to 65535, found '0'")
    ]


def test_named_listener_with_a_bad_address_keeps_its_name_for_routes() -> None:
    data = minimal(
        listeners=[{"address": "127.0.0.1:0", "name": "public"}],
        routes=[
            {"upstream": "backend", "match": {"listener": "public"}},
            {"upstream": "backend", "match": {"listener": "other"}},
        ],
    )
    assert issues(data) == [
        ("listeners[0].address", "port must be a number from 1 to 65535, found '0'"),
        ("routes[1].match.listener", "unknown listener 'other' (defined: public)"),
    ]


@pytest.mark.parametrize(("merge", "prefix"), [(True, "/a/b/"), (False, "/a//b/")])
def test_merge_slashes_applies_to_config_paths(merge: bool, prefix: str) -> None:
    data = minimal(
        routing={"merge_slashes": merge},
        routes=[{"upstream": "backend", "match": {"path_prefix": "/a//b/"}}],
    )
    config = parse_config(data, SRC)
    assert config.routing == RoutingSettings(merge_slashes=merge)
    assert config.routes[0].match.path_prefixes == (prefix,)


# --------------------------------------------------------------------------
# Upstreams and routes


def test_empty_servers() -> None:
    data = minimal(upstreams={"backend": {"servers": []}})
    assert one_issue(data) == ("upstreams.backend.servers", "at least one server is required")


def test_missing_servers() -> None:
    data = minimal(upstreams={"backend": {"keepalive": 4}})
    assert one_issue(data) == ("upstreams.backend.servers", "missing required key")


def test_bad_upstream_name_is_quoted_and_its_body_still_checked() -> None:
    data = minimal(
        upstreams={"backend": {"servers": ["a:1"]}, "bad name": {"servers": []}},
    )
    assert issues(data) == [
        ('upstreams."bad name"', "invalid upstream name: use only letters, digits, '_', '.', '-'"),
        ('upstreams."bad name".servers', "at least one server is required"),
    ]


def test_upstream_name_with_dot_is_quoted_in_key_paths() -> None:
    data = minimal(upstreams={"api.v1": {"servers": ["a:0"]}}, routes=[{"upstream": "api.v1"}])
    assert one_issue(data) == (
        'upstreams."api.v1".servers[0]',
        "port must be a number from 1 to 65535, found '0'",
    )


def test_unknown_upstream_in_route() -> None:
    data = minimal(
        upstreams={"backend": {"servers": ["a:1"]}, "api": {"servers": ["b:1"]}},
        routes=[{"upstream": "backend"}, {"upstream": "nope", "match": {"host": "x.com"}}],
    )
    assert one_issue(data) == (
        "routes[1].upstream",
        "unknown upstream 'nope' (defined: api, backend)",
    )


def test_route_naming_an_invalid_upstream_reports_only_the_upstream() -> None:
    # The upstream is defined (with an error); the route must not add a second issue.
    data = minimal(upstreams={"backend": {"servers": []}})
    assert issues(data) == [("upstreams.backend.servers", "at least one server is required")]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {},
            [
                ("listeners", "missing: at least one [[listeners]] table is required"),
                ("upstreams", "missing: at least one [upstreams.NAME] table is required"),
                ("routes", "missing: at least one [[routes]] table is required"),
            ],
        ),
        (
            {"listeners": [], "upstreams": {}, "routes": []},
            [
                ("listeners", "at least one listener is required"),
                ("upstreams", "at least one upstream is required"),
                ("routes", "at least one route is required"),
            ],
        ),
        (
            {"listeners": [{"address": ":80"}], "routes": [{"upstream": "backend"}]},
            [("upstreams", "missing: at least one [upstreams.NAME] table is required")],
        ),
    ],
)
def test_missing_required_sections(data: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert issues(data) == expected


def test_multiple_errors_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path / "many.toml",
        """\
[server]
wrokers = 2
via = "yes"

[limits]
max_header_count = 0

[[listeners]]
address = "localhost"

[upstreams.backend]
servers = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 0 }]

[[routes]]
match = { path_prefix = "api" }
upstream = "backend"

[[routes]]
upstream = "frontend"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected = [
        ConfigIssue(str(path), "server.wrokers", "unknown key; did you mean 'workers'?"),
        ConfigIssue(
            str(path), "server.via", "expected a boolean (true or false), found string 'yes'"
        ),
        ConfigIssue(str(path), "limits.max_header_count", "must be from 1 to 10000, found 0"),
        ConfigIssue(
            str(path),
            "listeners[0].address",
            "missing port in 'localhost' (expected \"host:port\")",
        ),
        ConfigIssue(
            str(path), "upstreams.backend.servers[1].weight", "must be from 1 to 1000, found 0"
        ),
        ConfigIssue(str(path), "routes[0].match.path_prefix", "must start with \"/\", found 'api'"),
        ConfigIssue(
            str(path), "routes[1].upstream", "unknown upstream 'frontend' (defined: backend)"
        ),
    ]
    assert info.value.errors == expected
    assert str(info.value) == "\n".join(f"{i.file}: {i.key}: {i.reason}" for i in expected)


# --------------------------------------------------------------------------
# Warnings


def test_route_after_catch_all_is_unreachable() -> None:
    data = minimal(
        routes=[
            {"upstream": "backend", "match": {"host": "a.com"}},
            {"upstream": "backend", "match": {}},
            {"upstream": "backend", "match": {"path_prefix": "/api"}},
            {"upstream": "backend", "match": {"host": "b.com"}},
        ]
    )
    config = parse_config(data, SRC)
    assert config.warnings == (
        f"{SRC}: routes[2]: unreachable: routes[1] matches every request",
        f"{SRC}: routes[3]: unreachable: routes[1] matches every request",
    )
    assert len(config.routes) == 4


def test_route_shadowed_by_a_broader_prefix_is_unreachable() -> None:
    data = minimal(
        routes=[
            {"upstream": "backend", "match": {"path_prefix": "/api"}},
            {"upstream": "backend", "match": {"path_prefix": "/apix"}},
            {"upstream": "backend", "match": {"host": "a.com", "path_prefix": "/api/v1"}},
            {"upstream": "backend", "match": {"host": "a.com", "path_prefix": "/"}},
        ]
    )
    config = parse_config(data, SRC)
    # Prefixes are bytewise: "/api" takes "/apix..." too.
    assert config.warnings == (
        f"{SRC}: routes[1]: unreachable: routes[0] matches every request this route matches",
        f"{SRC}: routes[2]: unreachable: routes[0] matches every request this route matches",
    )


def test_upstream_used_only_by_a_later_route_is_used() -> None:
    data = minimal(
        upstreams={"backend": {"servers": ["a:1"]}, "spare": {"servers": ["b:1"]}},
        routes=[
            {"respond": {"status": 204}, "match": {"path": "/healthz"}},
            {"upstream": "spare", "match": {"host": "a.com"}},
            {"upstream": "backend"},
        ],
    )
    assert parse_config(data, SRC).warnings == ()


def test_upstream_named_only_by_redirects_is_unused() -> None:
    data = minimal(
        routes=[{"redirect": {"to": "https://{host}{request_uri}"}}],
    )
    config = parse_config(data, SRC)
    assert config.warnings == (f"{SRC}: upstreams.backend: not used by any route",)


def test_unused_upstream_is_a_warning() -> None:
    data = minimal(upstreams={"backend": {"servers": ["a:1"]}, "spare": {"servers": ["b:1"]}})
    config = parse_config(data, SRC)
    assert config.warnings == (f"{SRC}: upstreams.spare: not used by any route",)


# --------------------------------------------------------------------------
# The access log path


def test_relative_access_log_resolves_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "etc" / "logs").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    text = FULL_CONFIG.replace('access = "access.log"', 'access = "logs/./access.log"')
    write(tmp_path / "etc" / "proxy.toml", text)
    config = load_config(Path("..") / "etc" / "proxy.toml")
    assert config.log.access == str(tmp_path / "etc" / "logs" / "access.log")
    assert os.path.isabs(config.log.access)


def test_relative_access_log_without_a_file_uses_base_dir(tmp_path: Path) -> None:
    config = parse_config(minimal(log={"access": "a.log"}), SRC, base_dir=str(tmp_path))
    assert config.log.access == str(tmp_path / "a.log")


def test_absolute_access_log_is_kept(tmp_path: Path) -> None:
    target = str(tmp_path / "x.log")
    config = parse_config(minimal(log={"access": target}), SRC, base_dir="/")
    assert config.log.access == target


@pytest.mark.parametrize("stream", ["stdout", "stderr", "off"])
def test_access_log_streams_are_kept(stream: str) -> None:
    config = parse_config(minimal(log={"access": stream}), SRC)
    assert config.log.access == stream


def test_access_log_in_missing_directory(tmp_path: Path) -> None:
    data = minimal(log={"access": "nodir/access.log"})
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC, base_dir=str(tmp_path))
    assert [(i.key, i.reason) for i in info.value.errors] == [
        ("log.access", f"directory {str(tmp_path / 'nodir')!r} does not exist")
    ]


def test_access_log_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(minimal(log={"access": "."}), SRC, base_dir=str(tmp_path))
    assert [(i.key, i.reason) for i in info.value.errors] == [
        ("log.access", f"{str(tmp_path)!r} is a directory")
    ]


# --------------------------------------------------------------------------
# Robustness: odd inputs give issues, never a crash


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(server=None),
        lambda d: d.update(listeners=[None]),
        lambda d: d["upstreams"].update({1: {"servers": ["a:1"]}}),
        lambda d: d["upstreams"]["backend"].update(servers=[[], {}]),
        lambda d: d.update(routes=[[]]),
        lambda d: d["routes"][0].update(match={"host": "", "path_prefix": ""}),
    ],
)
def test_odd_input_is_reported_not_raised(mutate: Any) -> None:
    data = copy.deepcopy(minimal())
    mutate(data)
    assert issues(data)


def test_config_type_is_exported() -> None:
    config = parse_config(minimal(), SRC)
    assert isinstance(config, Config)
    assert config.source == SRC


# -- balancing keys ---------------------------------------------------------------------------

def with_upstream(**keys: Any) -> dict[str, Any]:
    return minimal(upstreams={"backend": {"servers": ["127.0.0.1:9000", "127.0.0.1:9001"],
                                          **keys}})


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted", "least_conn", "random",
                                       "p2c", "ewma", "ring", "maglev"])
def test_balance_algorithms_accepted(algorithm: str) -> None:
    up = parse_config(with_upstream(balance=algorithm), SRC).upstreams["backend"]
    assert up.balance == algorithm
    hashing = algorithm in ("ring", "maglev")
    assert (up.hash_key is not None) is hashing
    if hashing:
        assert up.hash_key is not None and up.hash_key.source == "{client_ip}"  # the default


def test_balance_defaults() -> None:
    up = parse_config(minimal(), SRC).upstreams["backend"]
    assert (up.balance, up.hash_key, up.balance_factor) == ("round_robin", None, 0.0)


def test_hash_key_and_factor() -> None:
    up = parse_config(with_upstream(balance="maglev", hash_key="{cookie.sid}{header.X-User}",
                                    balance_factor=1.25), SRC).upstreams["backend"]
    assert up.hash_key is not None and up.hash_key.source == "{cookie.sid}{header.X-User}"
    assert up.balance_factor == 1.25


@pytest.mark.parametrize(("keys", "key", "reason"), [
    ({"balance": "round-robin"}, "upstreams.backend.balance",
     "unsupported value 'round-robin' (supported: round_robin, weighted, least_conn, random, "
     "p2c, ewma, ring, maglev); did you mean 'round_robin'?"),
    ({"hash_key": "{client_ip}"}, "upstreams.backend.hash_key",
     'only used with balance = "ring" or "maglev"'),
    ({"balance": "p2c", "balance_factor": 1.5}, "upstreams.backend.balance_factor",
     'only used with balance = "ring" or "maglev"'),
    ({"balance": "ring", "balance_factor": 0.5}, "upstreams.backend.balance_factor",
     "must be 0 (off) or above 1 and at most 100, found 0.5"),
    ({"balance": "ring", "balance_factor": "2"}, "upstreams.backend.balance_factor",
     "expected a number, found string '2'"),
    ({"balance": "ring", "hash_key": ""}, "upstreams.backend.hash_key", "must not be empty"),
    ({"balance": "ring", "hash_key": "{1}"}, "upstreams.backend.hash_key",
     "{1} refers to a regex group, but there is no match.path_regex"),
])
def test_balance_keys_refused(keys: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(with_upstream(**keys)) == (key, reason)


def test_sticky_cookie() -> None:
    from fastproxy.config import StickyCookie

    up = parse_config(with_upstream(sticky={"cookie": "srv", "max_age": "2h", "secure": True}),
                      SRC).upstreams["backend"]
    assert up.sticky == StickyCookie("srv", 7200.0, True)
    assert parse_config(minimal(), SRC).upstreams["backend"].sticky is None


@pytest.mark.parametrize(("sticky", "key", "reason"), [
    ({}, "upstreams.backend.sticky.cookie", "missing required key"),
    ({"cookie": "a b"}, "upstreams.backend.sticky.cookie",
     "expected a cookie name (letters, digits and !#$%&'*+.^_`|~-), found string 'a b'"),
    ({"cookie": "s", "max_age": "soon"}, "upstreams.backend.sticky.max_age",
     "invalid duration 'soon': expected a number of seconds, or a string like "
     '"500ms", "30s", "5m", "1h"'),
    ({"cookie": "s", "domain": "x"}, "upstreams.backend.sticky.domain", "unknown key"),
    ("srv", "upstreams.backend.sticky", 'expected a table like { cookie = "srv" }, '
     "found string 'srv'"),
])
def test_sticky_refused(sticky: Any, key: str, reason: str) -> None:
    assert one_issue(with_upstream(sticky=sticky)) == (key, reason)


# -- server options, queueing, health checks, ejection, retries -------------------------------

RESILIENT_UPSTREAM = """\
[[listeners]]
address = "127.0.0.1:8080"

[[routes]]
upstream = "api"

[upstreams.api]
servers = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2, max_conns = 100 },
           { address = "127.0.0.1:9003", backup = true }]
slow_start = "30s"
queue = 50
queue_timeout = "2500ms"
resolve_interval = "1m"

[upstreams.api.health_check]
path = "/healthz?deep=1&x=%20"
method = "HEAD"
host = "API.Internal:8443"
interval = "3s"
timeout = "3s"
status = ["200-299", 404, "418"]
body = "ok"
rise = 1
fall = 100

[upstreams.api.eject]
failures = 0
time = "1m"
max_time = "1m"

[upstreams.api.retry]
retries = 10
on = ["502", "reset", "timeout", "503", "504"]
budget = 1
per_try_timeout = "2s"
buffer = "64MiB"
"""


def test_resilience_keys_load_into_objects(tmp_path: Path) -> None:
    from fastproxy.config import Ejection, HealthCheck, RetryPolicy

    up = load_config(write(tmp_path / "proxy.toml", RESILIENT_UPSTREAM)).upstreams["api"]
    assert up.servers == (
        ServerAddress("127.0.0.1", 9001, 1),
        ServerAddress("127.0.0.1", 9002, 2, max_conns=100),
        ServerAddress("127.0.0.1", 9003, 1, backup=True),
    )
    assert (up.slow_start, up.queue, up.queue_timeout, up.resolve_interval) == (
        30.0, 50, 2.5, 60.0
    )
    assert up.health_check == HealthCheck(
        path="/healthz?deep=1&x=%20",
        method="HEAD",
        host="api.internal:8443",
        interval=3.0,
        timeout=3.0,  # equal to the interval is allowed
        status=((200, 299), (404, 404), (418, 418)),
        body="ok",
        rise=1,
        fall=100,
    )
    assert up.eject == Ejection(failures=0, time=60.0, max_time=60.0)
    assert up.retry == RetryPolicy(
        retries=10,
        on=frozenset({"reset", "timeout", "502", "503", "504"}),
        budget=1.0,
        per_try_timeout=2.0,
        buffer=64 * 1024**2,
    )
    assert isinstance(up.retry.on, frozenset) and isinstance(up.retry.budget, float)


def test_resilience_defaults() -> None:
    from fastproxy.config import Ejection, RetryPolicy

    up = parse_config(minimal(), SRC).upstreams["backend"]
    assert up.servers[0].max_conns == 0 and up.servers[0].backup is False
    assert (up.slow_start, up.queue, up.queue_timeout, up.resolve_interval) == (
        0.0, 100, 10.0, 30.0
    )
    assert up.health_check is None  # no active checks unless asked for
    assert up.eject == Ejection(failures=5, time=10.0, max_time=300.0)  # on by default
    assert up.retry == RetryPolicy(retries=2, on=frozenset({"reset", "timeout"}), budget=0.2,
                                   per_try_timeout=0.0, buffer=65536)


def test_empty_tables_give_the_dataclass_defaults() -> None:
    """The field tables' defaults (shown in the docs) agree with the dataclasses'."""
    from fastproxy.config import Ejection, HealthCheck, RetryPolicy

    up = parse_config(with_upstream(health_check={}, eject={}, retry={}),
                      SRC).upstreams["backend"]
    assert up.health_check == HealthCheck()
    assert up.health_check.status == ((200, 399),)
    assert (up.health_check.host, up.health_check.body) == (None, None)
    assert up.eject == Ejection()
    assert up.retry == RetryPolicy()


def test_retry_on_may_be_empty() -> None:
    up = parse_config(with_upstream(retry={"on": [], "budget": 0, "retries": 0}),
                      SRC).upstreams["backend"]
    assert (up.retry.on, up.retry.budget, up.retry.retries) == (frozenset(), 0.0, 0)


@pytest.mark.parametrize("balance", ["ring", "maglev", "least_conn"])
def test_backup_servers_with_any_balance_and_sticky(balance: str) -> None:
    data = minimal(upstreams={"backend": {
        "servers": ["a:1", {"address": "b:1", "backup": True}, {"address": "c:1", "backup": False}],
        "balance": balance,
        "sticky": {"cookie": "srv"},
    }})
    servers = parse_config(data, SRC).upstreams["backend"].servers
    assert [server.backup for server in servers] == [False, True, False]


def test_every_server_a_backup_is_refused() -> None:
    data = minimal(upstreams={"backend": {"servers": [{"address": "a:1", "backup": True},
                                                      {"address": "b:1", "backup": True}]}})
    assert one_issue(data) == (
        "upstreams.backend.servers",
        "every server is a backup: at least one must be a primary server (without backup = true)",
    )


def test_a_bad_backup_value_is_reported_once() -> None:
    # The entry with backup = "yes" might be meant as a primary: no second error.
    data = minimal(upstreams={"backend": {"servers": [{"address": "a:1", "backup": True},
                                                      {"address": "b:1", "backup": "yes"}]}})
    assert one_issue(data) == ("upstreams.backend.servers[1].backup",
                               "expected a boolean (true or false), found string 'yes'")


DURATION_SYNTAX = 'a number of seconds, or a string like "500ms", "30s", "5m", "1h"'
DURATION_HINT = f"expected {DURATION_SYNTAX}"


@pytest.mark.parametrize(("server", "key", "reason"), [
    ({"address": "a:1", "max_conns": -1}, "max_conns", "must be from 0 to 1000000, found -1"),
    ({"address": "a:1", "max_conns": 1_000_001}, "max_conns",
     "must be from 0 to 1000000, found 1000001"),
    ({"address": "a:1", "max_conns": "10"}, "max_conns", "expected an integer, found string '10'"),
    ({"address": "a:1", "max_conns": True}, "max_conns",
     "expected an integer, found boolean true"),
    ({"address": "a:1", "backup": 1}, "backup",
     "expected a boolean (true or false), found integer 1"),
    ({"address": "a:1", "max_con": 1}, "max_con", "unknown key; did you mean 'max_conns'?"),
])
def test_server_options_refused(server: dict[str, Any], key: str, reason: str) -> None:
    data = minimal(upstreams={"backend": {"servers": ["b:1", server]}})
    assert one_issue(data) == (f"upstreams.backend.servers[1].{key}", reason)


@pytest.mark.parametrize(("keys", "key", "reason"), [
    ({"slow_start": -1}, "slow_start", "duration must not be negative, found integer -1"),
    ({"slow_start": "30"}, "slow_start", f"invalid duration '30': {DURATION_HINT}"),
    ({"slow_start": "25h"}, "slow_start", "must be at most 24h, found string '25h'"),
    ({"queue": -1}, "queue", "must be from 0 to 1000000, found -1"),
    ({"queue": 1_000_001}, "queue", "must be from 0 to 1000000, found 1000001"),
    ({"queue": 1.0}, "queue", "expected an integer, found float 1.0"),
    ({"queue_timeout": 0}, "queue_timeout", "must be greater than 0, found integer 0"),
    ({"resolve_interval": "0s"}, "resolve_interval", "must be greater than 0, found string '0s'"),
    ({"resolve_interval": True}, "resolve_interval",
     f"expected a duration ({DURATION_SYNTAX}), found boolean true"),
])
def test_upstream_resilience_keys_refused(keys: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(with_upstream(**keys)) == (f"upstreams.backend.{key}", reason)


def test_queue_zero_and_slow_start_zero_are_allowed() -> None:
    up = parse_config(with_upstream(queue=0, slow_start="0s"), SRC).upstreams["backend"]
    assert (up.queue, up.slow_start) == (0, 0.0)


@pytest.mark.parametrize(("name", "value", "hint"), [
    ("health_check", True, ' like { path = "/healthz" }'),
    ("health_check", "/healthz", ' like { path = "/healthz" }'),
    ("eject", False, ' like { failures = 5, time = "10s" } (failures = 0 turns ejection off)'),
    ("retry", 2, " like { retries = 2 }"),
    ("retry", [], " like { retries = 2 }"),
])
def test_resilience_tables_must_be_tables(name: str, value: object, hint: str) -> None:
    from fastproxy.routeconf import describe

    assert one_issue(with_upstream(**{name: value})) == (
        f"upstreams.backend.{name}", f"expected a table{hint}, found {describe(value)}"
    )


@pytest.mark.parametrize(("table", "key"), [
    ({"path": "/", "port": 8080}, "port"),
    ({"expect": 200}, "expect"),
])
def test_health_check_unknown_key(table: dict[str, Any], key: str) -> None:
    found = one_issue(with_upstream(health_check=table))
    assert found[0] == f"upstreams.backend.health_check.{key}"
    assert found[1].startswith("unknown key")


@pytest.mark.parametrize(("name", "table"), [
    ("eject", {"failures": 3, "duration": "1s"}),
    ("retry", {"retries": 1, "retry_on": ["reset"]}),
])
def test_eject_and_retry_unknown_key(name: str, table: dict[str, Any]) -> None:
    bad = next(key for key in table if key not in ("failures", "retries"))
    found = one_issue(with_upstream(**{name: table}))
    assert found[0] == f"upstreams.backend.{name}.{bad}"
    assert found[1].startswith("unknown key")


@pytest.mark.parametrize(("path", "stored"), [
    ("/", "/"),
    ("/healthz", "/healthz"),
    ("/status?full=1&format=json", "/status?full=1&format=json"),
    ("/a%20b/~user/x.y-z_:@!$&'()*+,;=", "/a%20b/~user/x.y-z_:@!$&'()*+,;="),
    ("/a/../b//c", "/a/../b//c"),  # sent as written: not normalized like route paths
    ("/q?next=/a?b", "/q?next=/a?b"),
])
def test_health_check_paths(path: str, stored: str) -> None:
    hc = parse_config(with_upstream(health_check={"path": path}), SRC).upstreams["backend"]
    assert hc.health_check is not None and hc.health_check.path == stored


@pytest.mark.parametrize(("path", "reason"), [
    ("healthz", "must start with \"/\" (a path, optionally with a ?query), found 'healthz'"),
    ("", "must start with \"/\" (a path, optionally with a ?query), found ''"),
    ("http://a/x", "must start with \"/\" (a path, optionally with a ?query), found 'http://a/x'"),
    ("/a b", "must not contain ' ' (percent-encode it), found '/a b'"),
    ("/a#frag", "must not contain '#' (percent-encode it), found '/a#frag'"),
    ("/é", "must not contain 'é' (percent-encode it), found '/é'"),
    ("/a\x00", "must not contain '\\x00' (percent-encode it), found '/a\\x00'"),
    ("/a\r\nX: y", "must not contain '\\r' (percent-encode it), found '/a\\r\\nX: y'"),
    ("/a\tb", "must not contain '\\t' (percent-encode it), found '/a\\tb'"),
    ("/%zz", "'%' must start an escape of two hex digits, found '/%zz'"),
    ("/100%", "'%' must start an escape of two hex digits, found '/100%'"),
    (1, "expected a string, found integer 1"),
])
def test_bad_health_check_path(path: object, reason: str) -> None:
    assert one_issue(with_upstream(health_check={"path": path})) == (
        "upstreams.backend.health_check.path", reason
    )


@pytest.mark.parametrize(("host", "stored"), [
    ("api.internal", "api.internal"),
    ("API.Internal.", "api.internal"),
    ("api.internal:8080", "api.internal:8080"),
    ("10.0.0.1", "10.0.0.1"),
    ("10.0.0.1:80", "10.0.0.1:80"),
    ("[::1]", "[::1]"),
    ("[0::1]:8443", "[::1]:8443"),
    ("bücher.example", "xn--bcher-kva.example"),
])
def test_health_check_host(host: str, stored: str) -> None:
    up = parse_config(with_upstream(health_check={"host": host}), SRC).upstreams["backend"]
    assert up.health_check is not None and up.health_check.host == stored


@pytest.mark.parametrize(("host", "reason"), [
    ("a b", "invalid host name 'a b'"),
    ("", "invalid host name ''"),
    ("*.example.com", "must be a single host name, not a wildcard, found '*.example.com'"),
    ("api:0", "port must be a number from 1 to 65535, found '0'"),
    ("api:", "port must be a number from 1 to 65535, found ''"),
    ("::1", 'an IPv6 address must be in brackets, e.g. "[::1]", found \'::1\''),
    ("[::1]x", "expected \"[v6]\" or \"[v6]:port\", found '[::1]x'"),
    ("[::1", "missing ']' after the IPv6 address in '[::1'"),
    ("999.0.0.1", "invalid IPv4 address '999.0.0.1'"),
    (["a"], "expected a string, found array"),
])
def test_bad_health_check_host(host: object, reason: str) -> None:
    assert one_issue(with_upstream(health_check={"host": host})) == (
        "upstreams.backend.health_check.host", reason
    )


def test_health_check_status_forms() -> None:
    up = parse_config(with_upstream(health_check={"status": [200, "204", "300-399", "100-599"]}),
                      SRC).upstreams["backend"]
    assert up.health_check is not None
    assert up.health_check.status == ((200, 200), (204, 204), (300, 399), (100, 599))


@pytest.mark.parametrize(("status", "key", "reason"), [
    ([], "status", 'must not be empty: give at least one of statuses or ranges'),
    ("200-399", "status", "expected an array of statuses or ranges, found string '200-399'"),
    (200, "status", "expected an array of statuses or ranges, found integer 200"),
    (["2xx"], "status[0]", 'expected a status "NNN" or a range "NNN-NNN", found \'2xx\''),
    (["200 - 399"], "status[0]",
     'expected a status "NNN" or a range "NNN-NNN", found \'200 - 399\''),
    ([200, "399-200"], "status[1]",
     "the range must go from low to high (200-399), found '399-200'"),
    ([99], "status[0]", "statuses must be from 100 to 599, found integer 99"),
    (["600"], "status[0]", "statuses must be from 100 to 599, found string '600'"),
    (["200-600"], "status[0]", "statuses must be from 100 to 599, found string '200-600'"),
    ([True], "status[0]",
     'expected a status (200, "200") or a range ("200-399"), found boolean true'),
    ([200.0], "status[0]",
     'expected a status (200, "200") or a range ("200-399"), found float 200.0'),
])
def test_bad_health_check_status(status: object, key: str, reason: str) -> None:
    assert one_issue(with_upstream(health_check={"status": status})) == (
        f"upstreams.backend.health_check.{key}", reason
    )


def test_every_bad_status_is_reported() -> None:
    assert issues(with_upstream(health_check={"status": ["2xx", 200, 700]})) == [
        ("upstreams.backend.health_check.status[0]",
         'expected a status "NNN" or a range "NNN-NNN", found \'2xx\''),
        ("upstreams.backend.health_check.status[2]",
         "statuses must be from 100 to 599, found integer 700"),
    ]


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"method": "POST"}, "method", "unsupported value 'POST' (supported: GET, HEAD, OPTIONS)"),
    ({"method": "get"}, "method", "unsupported value 'get' (supported: GET, HEAD, OPTIONS)"),
    ({"interval": 0}, "interval", "must be greater than 0, found integer 0"),
    ({"interval": "25h"}, "interval", "must be at most 24h, found string '25h'"),
    ({"timeout": "0s", "interval": "1s"}, "timeout", "must be greater than 0, found string '0s'"),
    ({"body": ""}, "body", "must not be empty (leave the key out to accept any body)"),
    ({"body": "x" * 65537}, "body",
     "must be at most 64k bytes (only the first 64k of a body are searched)"),
    ({"body": 1}, "body", "expected a string, found integer 1"),
    ({"rise": 0}, "rise", "must be from 1 to 100, found 0"),
    ({"rise": 101}, "rise", "must be from 1 to 100, found 101"),
    ({"fall": 0}, "fall", "must be from 1 to 100, found 0"),
    ({"fall": "3"}, "fall", "expected an integer, found string '3'"),
    # The timeout must fit in the interval, the default one too.
    ({"interval": "1s", "timeout": "1500ms"}, "timeout",
     "must not exceed interval (1s), found 1.5s"),
    ({"timeout": "10s"}, "timeout", "must not exceed the default interval (5s), found 10s"),
    ({"interval": "1s"}, "timeout", "must not exceed interval (1s), found 2s"),
])
def test_health_check_refused(table: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(with_upstream(health_check=table)) == (
        f"upstreams.backend.health_check.{key}", reason
    )


def test_health_check_body_at_the_limit() -> None:
    body = "é" * 32768  # 65536 bytes in UTF-8
    up = parse_config(with_upstream(health_check={"body": body}), SRC).upstreams["backend"]
    assert up.health_check is not None and up.health_check.body == body


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"failures": -1}, "failures", "must be from 0 to 1000, found -1"),
    ({"failures": 1001}, "failures", "must be from 0 to 1000, found 1001"),
    ({"failures": False}, "failures", "expected an integer, found boolean false"),
    ({"time": 0}, "time", "must be greater than 0, found integer 0"),
    ({"max_time": "0s"}, "max_time", "must be greater than 0, found string '0s'"),
    ({"max_time": "2d"}, "max_time", f"invalid duration '2d': {DURATION_HINT}"),
    ({"time": "30s", "max_time": "10s"}, "max_time", "must be at least time (30s), found 10s"),
    ({"max_time": "5s"}, "max_time", "must be at least the default time (10s), found 5s"),
    ({"time": "10m"}, "max_time", "must be at least time (600s), found 300s, the default"),
])
def test_eject_refused(table: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(with_upstream(eject=table)) == (f"upstreams.backend.eject.{key}", reason)


@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"retries": -1}, "retries", "must be from 0 to 10, found -1"),
    ({"retries": 11}, "retries", "must be from 0 to 10, found 11"),
    ({"on": "reset"}, "on", "expected an array of conditions, found string 'reset'"),
    ({"on": ["resett"]}, "on[0]",
     "unknown condition 'resett' (supported: reset, timeout, 502, 503, 504); "
     "did you mean 'reset'?"),
    ({"on": ["reset", "500"]}, "on[1]",
     "unknown condition '500' (supported: reset, timeout, 502, 503, 504)"),
    ({"on": ["reset", "timeout", "reset"]}, "on[2]", "duplicate 'reset' (already at index 0)"),
    ({"on": [502]}, "on[0]", 'expected a string, found integer 502 (write "502")'),
    ({"on": [True]}, "on[0]", "expected a string, found boolean true"),
    ({"budget": -0.1}, "budget", "must be from 0 to 1, found -0.1"),
    ({"budget": 1.5}, "budget", "must be from 0 to 1, found 1.5"),
    ({"budget": float("nan")}, "budget", "must be from 0 to 1, found nan"),
    ({"budget": "20%"}, "budget", "expected a number from 0 to 1, found string '20%'"),
    ({"budget": True}, "budget", "expected a number from 0 to 1, found boolean true"),
    ({"per_try_timeout": -1}, "per_try_timeout",
     "duration must not be negative, found integer -1"),
    ({"buffer": "65m"}, "buffer",
     "must be from 0 to 64m (0 to 67108864 bytes), found string '65m'"),
    ({"buffer": "1.5k"}, "buffer",
     "invalid size '1.5k': expected a number of bytes, or a string like "
     '"512", "16k", "64MiB", "1g" (1024-based)'),
])
def test_retry_refused(table: dict[str, Any], key: str, reason: str) -> None:
    assert one_issue(with_upstream(retry=table)) == (f"upstreams.backend.retry.{key}", reason)


def test_every_resilience_issue_is_reported_at_once() -> None:
    data = minimal(upstreams={"backend": {
        "servers": [{"address": "a:1", "max_conns": -1}, "b:1"],
        "queue": -1,
        "health_check": {"path": "x", "rise": 0, "colour": "red"},
        "eject": {"time": "1m", "max_time": "30s"},
        "retry": {"on": ["reset", "reset"], "budget": 2},
    }})
    assert [key for key, _ in issues(data)] == [
        "upstreams.backend.servers[0].max_conns",
        "upstreams.backend.queue",
        "upstreams.backend.health_check.colour",
        "upstreams.backend.health_check.path",
        "upstreams.backend.health_check.rise",
        "upstreams.backend.eject.max_time",
        "upstreams.backend.retry.on[1]",
        "upstreams.backend.retry.budget",
    ]


def test_resilience_warnings() -> None:
    data = minimal(upstreams={"backend": {"servers": ["a:1"], "balance": "maglev",
                                          "slow_start": "30s", "queue": 10,
                                          "queue_timeout": "1s"}})
    assert parse_config(data, SRC).warnings == (
        f'{SRC}: upstreams.backend.slow_start: has no effect with balance = "maglev" '
        "(a returning server gets its keys back at once)",
        f"{SRC}: upstreams.backend.queue: has no effect: no server has a max_conns",
        f"{SRC}: upstreams.backend.queue_timeout: has no effect: no server has a max_conns",
    )
    quiet = minimal(upstreams={"backend": {
        "servers": [{"address": "a:1", "max_conns": 5}], "balance": "ring", "slow_start": 0,
        "queue": 10,
    }})
    assert parse_config(quiet, SRC).warnings == ()


# HTTP/2 to clients: h2c on plain listeners, the [limits] keys.

def test_h2c_and_http2_limits() -> None:
    config = parse_config(minimal(listeners=[{"address": "127.0.0.1:8080", "h2c": True}],
                                  limits={"h2_max_concurrent_streams": 10,
                                          "h2_max_resets": 5, "h2_max_control_frames": 7}),
                          SRC)
    assert config.listeners[0].h2c is True
    limits = config.limits
    assert (limits.h2_max_concurrent_streams, limits.h2_max_resets,
            limits.h2_max_control_frames) == (10, 5, 7)
    defaults = parse_config(minimal(), SRC)
    assert defaults.listeners[0].h2c is False
    assert (defaults.limits.h2_max_concurrent_streams, defaults.limits.h2_max_resets,
            defaults.limits.h2_max_control_frames) == (128, 200, 100)


def test_h2c_needs_a_boolean_and_limits_their_range() -> None:
    assert one_issue(minimal(listeners=[{"address": "127.0.0.1:8080", "h2c": "yes"}])) == (
        "listeners[0].h2c", "expected a boolean (true or false), found string 'yes'")
    assert one_issue(minimal(limits={"h2_max_concurrent_streams": 0}))[0] == (
        "limits.h2_max_concurrent_streams")
