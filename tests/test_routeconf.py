"""The route schema (docs/routing-spec.md): every key, every error path, templates, shadowing."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy.config import ConfigError, Route, RouteMatch, parse_config
from fastproxy.routeconf import (
    VARIABLES,
    HeaderEdits,
    Redirect,
    Respond,
    Rewrite,
    Template,
    ValueTest,
    Var,
    parse_template,
    route_warnings,
    shadows,
)

SRC = "routes.toml"
KNOWN = ", ".join(VARIABLES) + ", header.NAME, cookie.NAME, query.NAME"
UPSTREAMS = {"backend": {"servers": ["127.0.0.1:9000"]}, "api": {"servers": ["127.0.0.1:9001"]}}
LISTENERS = [{"address": "127.0.0.1:8080", "name": "public"}, {"address": "127.0.0.1:8081"}]


def data(*routes: Any, **sections: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "listeners": LISTENERS,
        "upstreams": UPSTREAMS,
        "routes": list(routes),
    }
    result.update(sections)
    return result


def parse_routes(*routes: Any, **sections: Any) -> tuple[Route, ...]:
    return parse_config(data(*routes, **sections), SRC).routes


def one_route(route: dict[str, Any], **sections: Any) -> Route:
    [parsed] = parse_routes(route, **sections)
    return parsed


def issues(*routes: Any, **sections: Any) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data(*routes, **sections), SRC)
    return [(issue.key, issue.reason) for issue in info.value.errors]


def warnings(*routes: Any) -> list[str]:
    prefix = f"{SRC}: "
    result = []
    for warning in parse_config(data(*routes), SRC).warnings:
        assert warning.startswith(prefix)
        if "not used by any route" not in warning:
            result.append(warning[len(prefix) :])
    return result


def t(source: str, *parts: str | Var) -> Template:
    return Template(source, parts)


def up(**route: Any) -> dict[str, Any]:
    """An upstream route with the given keys."""
    return {"upstream": "backend", **route}


def matching(**match: Any) -> dict[str, Any]:
    return up(match=match)


# --------------------------------------------------------------------------
# Accepted: one example per key


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


ACCEPTED: list[tuple[str, dict[str, Any], Callable[[Route], Any], Any]] = [
    ("name", up(name="api"), lambda r: (r.name, r.label), ("api", 'routes[0] "api"')),
    ("no name", up(), lambda r: (r.name, r.label), (None, "routes[0]")),
    ("name quoted in label", up(name='a "b"'), lambda r: r.label, 'routes[0] "a \\"b\\""'),
    (
        "host string",
        matching(host="API.Example.COM."),
        lambda r: r.match.hosts,
        ("api.example.com",),
    ),
    (
        "host array",
        matching(host=["a.com", "*.B.com", "[0:0::1]", "10.0.0.1", "Bücher.de", "*.bücher.de"]),
        lambda r: r.match.hosts,
        ("a.com", "*.b.com", "[::1]", "10.0.0.1", "xn--bcher-kva.de", "*.xn--bcher-kva.de"),
    ),
    ("host underscore", matching(host="my_service"), lambda r: r.match.hosts, ("my_service",)),
    ("path string", matching(path="/healthz"), lambda r: r.match.paths, ("/healthz",)),
    (
        "path array normalized",
        matching(path=["/a/./b//c", "/%7euser", "/ü", "/x/%2f", "/a/b/.."]),
        lambda r: r.match.paths,
        ("/a/b/c", "/~user", "/%C3%BC", "/x/%2F", "/a/"),
    ),
    ("path_prefix", matching(path_prefix="/api"), lambda r: r.match.path_prefixes, ("/api",)),
    (
        "path_prefix array",
        matching(path_prefix=["/api/", "/v1//x"]),
        lambda r: (r.match.path_prefixes, r.match.whole_segments),
        (("/api/", "/v1/x"), False),
    ),
    (
        "whole_segments",
        matching(path_prefix="/api", whole_segments=True),
        lambda r: r.match.whole_segments,
        True,
    ),
    (
        "path_regex",
        matching(path_regex="^/u/(?P<id>[0-9]+)$"),
        lambda r: r.match.path_regex,
        "^/u/(?P<id>[0-9]+)$",
    ),
    ("methods string", matching(methods="get"), lambda r: r.match.methods, ("GET",)),
    (
        "methods array",
        matching(methods=["GET", "head", "M-SEARCH"]),
        lambda r: r.match.methods,
        ("GET", "HEAD", "M-SEARCH"),
    ),
    (
        "headers",
        matching(
            headers={
                "X-Env": "canary",
                "X-Debug": True,
                "X-Old": False,
                "User-Agent": {"regex": "curl"},
            }
        ),
        lambda r: r.match.headers,
        (
            ValueTest("x-env", "equals", "canary"),
            ValueTest("x-debug", "present", None),
            ValueTest("x-old", "absent", None),
            ValueTest("user-agent", "regex", "curl"),
        ),
    ),
    (
        "headers empty and tab values",
        matching(headers={"X-A": "", "X-B": "a\tb"}),
        lambda r: r.match.headers,
        (ValueTest("x-a", "equals", ""), ValueTest("x-b", "equals", "a\tb")),
    ),
    (
        "query",
        matching(query={"debug": True, "V": "2", "gone": False, "q x": {"regex": "^a"}, "n": "\n"}),
        lambda r: r.match.query,
        (
            ValueTest("debug", "present", None),
            ValueTest("V", "equals", "2"),
            ValueTest("gone", "absent", None),
            ValueTest("q x", "regex", "^a"),
            # Decoded arguments may hold anything, newlines included.
            ValueTest("n", "equals", "\n"),
        ),
    ),
    (
        "client_ip string",
        matching(client_ip="::1"),
        lambda r: r.match.client_ips,
        (net("::1/128"),),
    ),
    (
        "client_ip array",
        matching(client_ip=["10.0.0.0/8", "192.168.1.5", "2001:db8::/32"]),
        lambda r: r.match.client_ips,
        (net("10.0.0.0/8"), net("192.168.1.5/32"), net("2001:db8::/32")),
    ),
    ("listener string", matching(listener="public"), lambda r: r.match.listeners, ("public",)),
    (
        "listener array",
        matching(listener=["public", "127.0.0.1:8081"]),
        lambda r: r.match.listeners,
        ("public", "127.0.0.1:8081"),
    ),
    (
        "upstream",
        {"upstream": "api"},
        lambda r: (r.upstream, r.redirect, r.respond),
        ("api", None, None),
    ),
    (
        "redirect",
        {"redirect": {"to": "https://{host}{request_uri}", "status": 301}},
        lambda r: (r.upstream, r.redirect),
        (
            None,
            Redirect(
                t(
                    "https://{host}{request_uri}",
                    "https://",
                    Var("host", False),
                    Var("request_uri", False),
                ),
                301,
            ),
        ),
    ),
    (
        "redirect default status",
        {"redirect": {"to": "/new"}},
        lambda r: r.redirect,
        Redirect(t("/new", "/new"), 302),
    ),
    (
        "respond",
        {"respond": {"status": 503, "body": "down\n", "headers": {"Content-Type": "text/plain"}}},
        lambda r: r.respond,
        Respond(503, t("down\n", "down\n"), (("Content-Type", t("text/plain", "text/plain")),)),
    ),
    ("respond defaults", {"respond": {}}, lambda r: r.respond, Respond(200, t(""), ())),
    (
        "respond 204 no body",
        {"respond": {"status": 204}},
        lambda r: r.respond,
        Respond(204, t(""), ()),
    ),
    (
        "respond body with captures",
        {"respond": {"body": "user {id}\n"}, "match": {"path_regex": "^/u/(?P<id>[0-9]+)$"}},
        lambda r: r.respond.body if r.respond else None,
        t("user {id}\n", "user ", Var("id", True), "\n"),
    ),
    (
        "rewrite",
        up(
            match={"path_regex": "^/u/([0-9]+)"},
            rewrite={
                "strip_prefix": "/api//",
                "regex": "^/old/(.*)$",
                "replace": "/new/{1}",
                "add_prefix": "/v2",
                "set_query": {"version": "2", "user": "{1}"},
                "remove_query": ["utm_source", "utm_medium"],
                "host": "backend.internal:8080",
            },
        ),
        lambda r: r.rewrite,
        Rewrite(
            strip_prefix="/api/",
            regex="^/old/(.*)$",
            replace=t("/new/{1}", "/new/", Var(1, True)),
            add_prefix="/v2",
            set_query=(("version", t("2", "2")), ("user", t("{1}", Var(1, True)))),
            remove_query=("utm_source", "utm_medium"),
            host=t("backend.internal:8080", "backend.internal:8080"),
        ),
    ),
    (
        "rewrite remove_query string, host template",
        up(rewrite={"remove_query": "x", "host": "{host}.internal"}),
        lambda r: r.rewrite,
        Rewrite(
            None,
            None,
            None,
            None,
            (),
            ("x",),
            t("{host}.internal", Var("host", False), ".internal"),
        ),
    ),
    (
        "rewrite host literal IPv6 with port",
        up(rewrite={"host": "[::1]:8080"}),
        lambda r: r.rewrite.host if r.rewrite else None,
        t("[::1]:8080", "[::1]:8080"),
    ),
    ("empty rewrite is none", up(rewrite={}), lambda r: r.rewrite, None),
    (
        "request_headers",
        up(
            request_headers={
                "remove": ["X-Debug", "Cookie"],
                "set": {"X-Real-IP": "{client_ip}"},
                "add": {"X-Tag": "a", "x-tag2": "{{b}}"},
            }
        ),
        lambda r: r.request_headers,
        HeaderEdits(
            remove=("X-Debug", "Cookie"),
            set=(("X-Real-IP", t("{client_ip}", Var("client_ip", False))),),
            add=(("X-Tag", t("a", "a")), ("x-tag2", t("{{b}}", "{b}"))),
        ),
    ),
    (
        "request_headers remove string",
        up(request_headers={"remove": "X-Debug"}),
        lambda r: r.request_headers,
        HeaderEdits(("X-Debug",), (), ()),
    ),
    (
        "response_headers on respond",
        {"respond": {}, "response_headers": {"set": {"Cache-Control": "no-store"}}},
        lambda r: r.response_headers,
        HeaderEdits((), (("Cache-Control", t("no-store", "no-store")),), ()),
    ),
    (
        "response_headers on redirect",
        {"redirect": {"to": "/x"}, "response_headers": {"remove": ["Server"]}},
        lambda r: r.response_headers,
        HeaderEdits(("Server",), (), ()),
    ),
    ("empty response_headers is none", up(response_headers={}), lambda r: r.response_headers, None),
    (
        "no match conditions",
        up(match={}),
        lambda r: r.match,
        RouteMatch(None, (), (), False, None, None, (), (), None, None),
    ),
]


@pytest.mark.parametrize(
    ("route", "get", "expected"),
    [case[1:] for case in ACCEPTED],
    ids=[case[0] for case in ACCEPTED],
)
def test_accepted(route: dict[str, Any], get: Callable[[Route], Any], expected: Any) -> None:
    assert get(one_route(route)) == expected


def test_every_route_key_has_an_accepted_example() -> None:
    # Keeps ACCEPTED in step with the schema: a new key without an example fails here.
    seen: set[str] = set()
    for _, route, _, _ in ACCEPTED:
        seen.update(route)
        seen.update(f"match.{k}" for k in route.get("match", {}))
        for action in ("redirect", "respond", "rewrite", "request_headers", "response_headers"):
            if isinstance(route.get(action), dict):
                seen.update(f"{action}.{k}" for k in route[action])
    assert seen >= {
        "name", "match", "upstream", "redirect", "respond", "rewrite", "request_headers",
        "response_headers", "match.host", "match.path", "match.path_prefix",
        "match.whole_segments", "match.path_regex", "match.methods", "match.headers",
        "match.query", "match.client_ip", "match.listener", "redirect.to", "redirect.status",
        "respond.status", "respond.body", "respond.headers", "rewrite.strip_prefix",
        "rewrite.regex", "rewrite.replace", "rewrite.add_prefix", "rewrite.set_query",
        "rewrite.remove_query", "rewrite.host", "request_headers.remove", "request_headers.set",
        "request_headers.add", "response_headers.set", "response_headers.remove",
    }  # fmt: skip


def test_route_objects_are_frozen_and_hold_no_mutable_containers() -> None:
    [route] = parse_routes(
        up(
            name="all",
            match={
                "host": ["a.com"],
                "path_prefix": ["/a"],
                "methods": ["GET"],
                "headers": {"X-A": True},
                "query": {"q": "1"},
                "client_ip": ["10.0.0.0/8"],
                "listener": ["public"],
            },
            rewrite={"set_query": {"a": "b"}, "remove_query": ["c"]},
            request_headers={"remove": ["X-B"], "set": {"X-C": "d"}, "add": {"X-D": "e"}},
            response_headers={"set": {"X-E": "f"}},
        )
    )

    def walk(value: Any) -> None:
        assert not isinstance(value, (list, dict, set)), value
        if dataclasses.is_dataclass(value):
            assert not hasattr(value, "__dict__"), type(value)  # slots
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(value, dataclasses.fields(value)[0].name, None)
            for field in dataclasses.fields(value):
                walk(getattr(value, field.name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(route)


def test_the_paths_normalize_path_rejects_are_refused_with_a_reason() -> None:
    assert issues(matching(path="/a/../../b"), matching(path_prefix="/a%zz")) == [
        ("routes[0].match.path", "'..' climbs above the root, found '/a/../../b'"),
        (
            "routes[1].match.path_prefix",
            "'%' must start an escape of two hex digits, found '/a%zz'",
        ),
    ]


# --------------------------------------------------------------------------
# Refused: one example per error path, with its key path and reason

VALUE_FORMS = 'a string (equals), true (present), false (absent) or { regex = "..." }'

REFUSED: list[tuple[dict[str, Any], str, str]] = [
    # route table and keys
    (
        {"upstream": "backend", "upstrem": "x"},
        "routes[0].upstrem",
        "unknown key; did you mean 'upstream'?",
    ),
    (up(name=""), "routes[0].name", "must not be empty"),
    (up(name=5), "routes[0].name", "expected a string, found integer 5"),
    (up(name="a\x00"), "routes[0].name", "must not contain control characters, found 'a\\x00'"),
    (up(match="/api"), "routes[0].match", "expected a table, found string '/api'"),
    (matching(hots="a.com"), "routes[0].match.hots", "unknown key; did you mean 'host'?"),
    # actions
    ({}, "routes[0]", "missing action: give one of upstream, redirect, respond"),
    (
        up(respond={}),
        "routes[0].respond",
        "only one action per route (upstream is given too)",
    ),
    ({"upstream": 1}, "routes[0].upstream", "expected a string, found integer 1"),
    ({"upstream": "nope"}, "routes[0].upstream", "unknown upstream 'nope' (defined: api, backend)"),
    # hosts
    (
        matching(host=[]),
        "routes[0].match.host",
        "must not be empty (leave the key out to match anything)",
    ),
    (
        matching(host=5),
        "routes[0].match.host",
        "expected a string or an array of strings, found integer 5",
    ),
    (matching(host=["a.com", 5]), "routes[0].match.host[1]", "expected a string, found integer 5"),
    (
        matching(host=["a.com", "b.com", "A.com."]),
        "routes[0].match.host[2]",
        "duplicate of host[0]",
    ),
    (
        matching(host="a.com:80"),
        "routes[0].match.host",
        "must not include a port, found 'a.com:80'",
    ),
    (
        matching(host="[::1]:80"),
        "routes[0].match.host",
        "must not include a port, found '[::1]:80'",
    ),
    (matching(host="[::1"), "routes[0].match.host", "missing ']' after the IPv6 address in '[::1'"),
    (
        matching(host="::1"),
        "routes[0].match.host",
        "an IPv6 address must be in brackets, e.g. \"[::1]\", found '::1'",
    ),
    (matching(host="[zz::1]"), "routes[0].match.host", "invalid IPv6 address 'zz::1'"),
    (matching(host="a b.com"), "routes[0].match.host", "invalid host name 'a b.com'"),
    (matching(host="a..com"), "routes[0].match.host", "invalid host name 'a..com'"),
    (matching(host="300.1.1.1"), "routes[0].match.host", "invalid IPv4 address '300.1.1.1'"),
    (
        matching(host="x" * 64 + ".com"),
        "routes[0].match.host",
        f"invalid host name {'x' * 64 + '.com'!r}",
    ),
    (
        matching(host="a.*.com"),
        "routes[0].match.host",
        "a wildcard must be a whole leading label, as in \"*.example.com\", found 'a.*.com'",
    ),
    (
        matching(host="*example.com"),
        "routes[0].match.host",
        "a wildcard must be a whole leading label, as in \"*.example.com\", found '*example.com'",
    ),
    (
        matching(host="*.*.com"),
        "routes[0].match.host",
        "a wildcard must be a whole leading label, as in \"*.example.com\", found '*.*.com'",
    ),
    (
        matching(host="*"),
        "routes[0].match.host",
        "a wildcard must be a whole leading label, as in \"*.example.com\", found '*'",
    ),
    (
        matching(host="*.0.0.1"),
        "routes[0].match.host",
        "a wildcard cannot stand for part of an IP address, found '*.0.0.1'",
    ),
    (
        matching(host="straße.de"),
        "routes[0].match.host",
        "host name 'straße.de' contains a character that IDNA versions encode differently"
        " (ß, ς, or a zero-width joiner); write the label in its xn-- form",
    ),
    # paths
    (matching(path="healthz"), "routes[0].match.path", "must start with \"/\", found 'healthz'"),
    (matching(path=["/a", "b"]), "routes[0].match.path[1]", "must start with \"/\", found 'b'"),
    (matching(path=["/a", "/./a"]), "routes[0].match.path[1]", "duplicate of path[0]"),
    (matching(path="/a?x=1"), "routes[0].match.path", "must not contain '?', found '/a?x=1'"),
    (matching(path="/a#x"), "routes[0].match.path", "must not contain '#', found '/a#x'"),
    (matching(path="/a b"), "routes[0].match.path", "must not contain ' ', found '/a b'"),
    (matching(path="/a\x7f"), "routes[0].match.path", "must not contain '\\x7f', found '/a\\x7f'"),
    (matching(path="/.."), "routes[0].match.path", "'..' climbs above the root, found '/..'"),
    (
        matching(path_prefix="api"),
        "routes[0].match.path_prefix",
        "must start with \"/\", found 'api'",
    ),
    (
        matching(path_prefix="/a%2"),
        "routes[0].match.path_prefix",
        "'%' must start an escape of two hex digits, found '/a%2'",
    ),
    (
        matching(path_prefix=[]),
        "routes[0].match.path_prefix",
        "must not be empty (leave the key out to match anything)",
    ),
    (
        matching(path="/a", path_prefix="/b"),
        "routes[0].match.path_prefix",
        "only one of path, path_prefix, path_regex may be given (path is given too)",
    ),
    (
        matching(path_prefix="/b", path_regex="^/"),
        "routes[0].match.path_regex",
        "only one of path, path_prefix, path_regex may be given (path_prefix is given too)",
    ),
    (
        matching(whole_segments=True),
        "routes[0].match.whole_segments",
        "only allowed with path_prefix",
    ),
    (
        matching(path="/a", whole_segments=False),
        "routes[0].match.whole_segments",
        "only allowed with path_prefix",
    ),
    (
        matching(path_prefix="/a", whole_segments="yes"),
        "routes[0].match.whole_segments",
        "expected a boolean (true or false), found string 'yes'",
    ),
    (
        matching(path_regex="^/(a"),
        "routes[0].match.path_regex",
        "invalid regular expression: missing ), unterminated subpattern at position 2",
    ),
    (
        matching(path_regex="^/café$"),
        "routes[0].match.path_regex",
        "must be ASCII: a path is matched percent-encoded (write é as %C3%A9)",
    ),
    (
        # Matched on bytes: a str-only flag is refused here, not in the worker.
        matching(path_regex=r"(?u)^/\w+$"),
        "routes[0].match.path_regex",
        "invalid regular expression: bad inline flags: cannot use 'u' flag with a bytes pattern"
        " at position 3",
    ),
    (matching(path_regex=1), "routes[0].match.path_regex", "expected a string, found integer 1"),
    (
        matching(path_regex="^/(?P<host>[a-z]+)"),
        "routes[0].match.path_regex",
        "group name 'host' is also a template variable; rename the group",
    ),
    # methods
    (
        matching(methods="GET POST"),
        "routes[0].match.methods",
        "invalid method 'GET POST': expected a token like \"GET\"",
    ),
    (matching(methods=["GET", "get"]), "routes[0].match.methods[1]", "duplicate of methods[0]"),
    (
        matching(methods=[]),
        "routes[0].match.methods",
        "must not be empty (leave the key out to match anything)",
    ),
    (
        matching(methods=["GET", True]),
        "routes[0].match.methods[1]",
        "expected a string, found boolean true",
    ),
    # headers and query
    (
        matching(headers=["X-A"]),
        "routes[0].match.headers",
        f"expected a table of names to {VALUE_FORMS}, found array",
    ),
    (
        matching(headers={"X A": True}),
        'routes[0].match.headers."X A"',
        "invalid header name 'X A': expected a token like \"X-Env\"",
    ),
    (
        matching(headers={"X-A": True, "x-a": False}),
        'routes[0].match.headers."x-a"',
        "duplicate header name (also given as 'X-A')",
    ),
    (
        matching(headers={"X-A": 2}),
        'routes[0].match.headers."X-A"',
        f"expected {VALUE_FORMS}, found integer 2",
    ),
    (
        matching(headers={"X-A": "a\nb"}),
        'routes[0].match.headers."X-A"',
        "can never match: header values hold no control characters, found 'a\\nb'",
    ),
    (
        matching(headers={"X-A": {"regex": "a", "regx": "a"}}),
        'routes[0].match.headers."X-A".regx',
        "unknown key; did you mean 'regex'?",
    ),
    (matching(headers={"X-A": {}}), 'routes[0].match.headers."X-A".regex', "missing required key"),
    (
        matching(headers={"X-A": {"regex": "("}}),
        'routes[0].match.headers."X-A".regex',
        "invalid regular expression: missing ), unterminated subpattern at position 0",
    ),
    (matching(query={"": True}), 'routes[0].match.query.""', "argument name must not be empty"),
    (
        matching(query={"v": 2}),
        "routes[0].match.query.v",
        f"expected {VALUE_FORMS}, found integer 2",
    ),
    (
        matching(query={"v": {"regex": "["}}),
        "routes[0].match.query.v.regex",
        "invalid regular expression: unterminated character set at position 0",
    ),
    # client_ip
    (
        matching(client_ip="10.0.0.1/8"),
        "routes[0].match.client_ip",
        "host bits are set in '10.0.0.1/8'; did you mean '10.0.0.0/8'?",
    ),
    (
        matching(client_ip=["::1", "2001:db8::1/32"]),
        "routes[0].match.client_ip[1]",
        "host bits are set in '2001:db8::1/32'; did you mean '2001:db8::/32'?",
    ),
    (
        matching(client_ip="localhost"),
        "routes[0].match.client_ip",
        "expected an IP address or a CIDR network like \"10.0.0.0/8\", found 'localhost'",
    ),
    (
        matching(client_ip="10.0.0.0/33"),
        "routes[0].match.client_ip",
        "expected an IP address or a CIDR network like \"10.0.0.0/8\", found '10.0.0.0/33'",
    ),
    (
        matching(client_ip=["10.0.0.0/8", "10.0.0.0/8"]),
        "routes[0].match.client_ip[1]",
        "duplicate of client_ip[0]",
    ),
    # listener
    (
        matching(listener="pubic"),
        "routes[0].match.listener",
        "unknown listener 'pubic' (defined: 127.0.0.1:8081, public)",
    ),
    (
        matching(listener=["public", "x"]),
        "routes[0].match.listener[1]",
        "unknown listener 'x' (defined: 127.0.0.1:8081, public)",
    ),
    (
        matching(listener=["public", "public"]),
        "routes[0].match.listener[1]",
        "duplicate of listener[0]",
    ),
    # redirect
    (
        {"redirect": "/new"},
        "routes[0].redirect",
        'expected a table like { to = "https://{host}{request_uri}", status = 301 }, '
        "found string '/new'",
    ),
    ({"redirect": {}}, "routes[0].redirect.to", "missing required key"),
    ({"redirect": {"to": ""}}, "routes[0].redirect.to", "must not be empty"),
    ({"redirect": {"to": "/x", "code": 301}}, "routes[0].redirect.code", "unknown key"),
    (
        {"redirect": {"to": "/x", "status": 200}},
        "routes[0].redirect.status",
        "must be one of 301, 302, 303, 307, 308, found 200",
    ),
    (
        {"redirect": {"to": "/x", "status": "301"}},
        "routes[0].redirect.status",
        "expected an integer, found string '301'",
    ),
    (
        {"redirect": {"to": "/x\r\nSet-Cookie: a"}},
        "routes[0].redirect.to",
        "must not contain control characters, found '/x\\r\\nSet-Cookie: a'",
    ),
    (
        {"redirect": {"to": "/{hots}"}},
        "routes[0].redirect.to",
        f"unknown variable {{hots}} (known: {KNOWN}); did you mean 'host'?",
    ),
    # respond
    (
        {"respond": {"status": 199}},
        "routes[0].respond.status",
        "must be from 200 to 599, found 199",
    ),
    (
        {"respond": {"status": 600}},
        "routes[0].respond.status",
        "must be from 200 to 599, found 600",
    ),
    (
        {"respond": {"status": True}},
        "routes[0].respond.status",
        "expected an integer, found boolean true",
    ),
    (
        {"respond": {"status": 204, "body": "x"}},
        "routes[0].respond.body",
        "must be empty: a 204 response has no body",
    ),
    (
        {"respond": {"status": 205, "body": "x"}},
        "routes[0].respond.body",
        "must be empty: a 205 response has no body",
    ),
    (
        {"respond": {"status": 304, "body": "{path}"}},
        "routes[0].respond.body",
        "must be empty: a 304 response has no body",
    ),
    ({"respond": {"body": 1}}, "routes[0].respond.body", "expected a string, found integer 1"),
    (
        {"respond": {"body": "}"}},
        "routes[0].respond.body",
        "unmatched '}' at position 0 (write '}}' for a literal brace)",
    ),
    ({"respond": {"bdy": ""}}, "routes[0].respond.bdy", "unknown key; did you mean 'body'?"),
    (
        {"respond": {"headers": {"Content-Length": "3"}}},
        'routes[0].respond.headers."Content-Length"',
        "'Content-Length' is set by the proxy itself and cannot be edited",
    ),
    (
        {"respond": {"headers": {"X-A": "a\x01"}}},
        'routes[0].respond.headers."X-A"',
        "must not contain control characters, found 'a\\x01'",
    ),
    (
        {"respond": []},
        "routes[0].respond",
        'expected a table like { status = 200, body = "ok" }, found array',
    ),
    # rewrite
    (
        {"respond": {}, "rewrite": {"add_prefix": "/a"}},
        "routes[0].rewrite",
        "only allowed on a route with upstream (nothing is forwarded otherwise)",
    ),
    (up(rewrite="/x"), "routes[0].rewrite", "expected a table, found string '/x'"),
    (
        up(rewrite={"strip_prefx": "/a"}),
        "routes[0].rewrite.strip_prefx",
        "unknown key; did you mean 'strip_prefix'?",
    ),
    (
        up(rewrite={"strip_prefix": "api"}),
        "routes[0].rewrite.strip_prefix",
        "must start with \"/\", found 'api'",
    ),
    (
        up(rewrite={"add_prefix": "/../v2"}),
        "routes[0].rewrite.add_prefix",
        "'..' climbs above the root, found '/../v2'",
    ),
    (
        up(rewrite={"regex": "^/a"}),
        "routes[0].rewrite.replace",
        "missing: rewrite.regex needs a replace template",
    ),
    (up(rewrite={"replace": "/b"}), "routes[0].rewrite.replace", "only allowed with rewrite.regex"),
    (
        up(rewrite={"regex": "*", "replace": "/b"}),
        "routes[0].rewrite.regex",
        "invalid regular expression: nothing to repeat at position 0",
    ),
    (
        up(rewrite={"regex": "^/(a)", "replace": "/{2}"}),
        "routes[0].rewrite.replace",
        "{2} refers to group 2, but rewrite.regex has only 1 group",
    ),
    (
        up(match={"path_regex": "^/(?P<id>x)"}, rewrite={"regex": "^/(a)", "replace": "/{id}"}),
        "routes[0].rewrite.replace",
        f"unknown variable {{id}} (known: {KNOWN})",
    ),
    (
        up(rewrite={"regex": "^/(?P<path>a)", "replace": "/"}),
        "routes[0].rewrite.regex",
        "group name 'path' is also a template variable; rename the group",
    ),
    (
        up(rewrite={"replace": "/b", "regex": "/", "set_query": []}),
        "routes[0].rewrite.set_query",
        "expected a table of argument names, found array",
    ),
    (
        up(rewrite={"set_query": {"": "x"}}),
        'routes[0].rewrite.set_query.""',
        "argument name must not be empty",
    ),
    (
        up(rewrite={"set_query": {"v": "{1}"}}),
        "routes[0].rewrite.set_query.v",
        "{1} refers to a regex group, but there is no match.path_regex",
    ),
    (
        up(rewrite={"set_query": {"v": "a\nb"}}),
        "routes[0].rewrite.set_query.v",
        "must not contain control characters, found 'a\\nb'",
    ),
    (
        up(rewrite={"remove_query": [""]}),
        "routes[0].rewrite.remove_query[0]",
        "argument name must not be empty",
    ),
    (
        up(rewrite={"remove_query": []}),
        "routes[0].rewrite.remove_query",
        "must not be empty (leave the key out to match anything)",
    ),
    (up(rewrite={"host": ""}), "routes[0].rewrite.host", "must not be empty"),
    (
        up(rewrite={"host": "a.com:0"}),
        "routes[0].rewrite.host",
        "port must be a number from 1 to 65535, found '0'",
    ),
    (up(rewrite={"host": "a b"}), "routes[0].rewrite.host", "invalid host name 'a b'"),
    (
        up(rewrite={"host": "{host}/x"}),
        "routes[0].rewrite.host",
        "must not contain '/', found '{host}/x'",
    ),
    (
        up(rewrite={"host": "{nope}"}),
        "routes[0].rewrite.host",
        f"unknown variable {{nope}} (known: {KNOWN})",
    ),
    # header edits
    (
        {"respond": {}, "request_headers": {"set": {"X-A": "b"}}},
        "routes[0].request_headers",
        "only allowed on a route with upstream (nothing is forwarded otherwise)",
    ),
    (
        up(request_headers={"remve": ["X-A"]}),
        "routes[0].request_headers.remve",
        "unknown key; did you mean 'remove'?",
    ),
    (
        up(request_headers={"set": {"Host": "x"}}),
        'routes[0].request_headers.set."Host"',
        "'Host' is set by the proxy itself and cannot be edited; use rewrite.host",
    ),
    (
        up(request_headers={"set": {"X-Real-IP": "{clientip}"}}),
        'routes[0].request_headers.set."X-Real-IP"',
        f"unknown variable {{clientip}} (known: {KNOWN}); did you mean 'client_ip'?",
    ),
    (
        up(request_headers={"add": {"x-forwarded-for": "1.2.3.4"}}),
        'routes[0].request_headers.add."x-forwarded-for"',
        "'x-forwarded-for' is set by the proxy itself and cannot be edited",
    ),
    (
        up(request_headers={"remove": ["X-A", "Connection"]}),
        "routes[0].request_headers.remove[1]",
        "'Connection' is set by the proxy itself and cannot be edited",
    ),
    (
        up(request_headers={"remove": ["X-A", "X-A"]}),
        "routes[0].request_headers.remove[1]",
        "duplicate of remove[0]",
    ),
    (
        up(request_headers={"remove": ["X A"]}),
        "routes[0].request_headers.remove[0]",
        "invalid header name 'X A': expected a token like \"X-Env\"",
    ),
    (
        up(request_headers={"set": {"X-A": "1", "x-a": "2"}}),
        'routes[0].request_headers.set."x-a"',
        "duplicate header name (also given as 'X-A')",
    ),
    (
        up(request_headers={"set": {"X-A": 1}}),
        'routes[0].request_headers.set."X-A"',
        "expected a string, found integer 1",
    ),
    (
        up(request_headers={"add": {"X-A": "a\x00"}}),
        'routes[0].request_headers.add."X-A"',
        "must not contain control characters, found 'a\\x00'",
    ),
    (
        up(request_headers={"set": "X-A"}),
        "routes[0].request_headers.set",
        "expected a table of header names to values, found string 'X-A'",
    ),
    (
        up(response_headers={"set": {"Transfer-Encoding": "chunked"}}),
        'routes[0].response_headers.set."Transfer-Encoding"',
        "'Transfer-Encoding' is set by the proxy itself and cannot be edited",
    ),
    (
        up(response_headers={"set": {"Host": "x"}}),
        'routes[0].response_headers.set."Host"',
        "'Host' is set by the proxy itself and cannot be edited",
    ),
    (
        up(response_headers={"set": {"X-Id": "id {{{request_id"}}),
        'routes[0].response_headers.set."X-Id"',
        "unmatched '{' at position 5 (write '{{' for a literal brace)",
    ),
    (
        up(response_headers={"set": {"X-Id": "{1}"}}, match={"path_regex": "^/$"}),
        'routes[0].response_headers.set."X-Id"',
        "{1} refers to group 1, but match.path_regex has only 0 groups",
    ),
]


@pytest.mark.parametrize(("route", "key", "reason"), REFUSED, ids=[case[1] for case in REFUSED])
def test_refused(route: dict[str, Any], key: str, reason: str) -> None:
    assert issues(route) == [(key, reason)]


@pytest.mark.parametrize(
    "proxy_owned",
    [
        "Host", "Content-Length", "Transfer-Encoding", "Connection", "Keep-Alive",
        "Proxy-Connection", "TE", "Trailer", "Upgrade", "X-Forwarded-For", "X-Forwarded-Proto",
        "X-Forwarded-Host", "Via",
    ],
)  # fmt: skip
@pytest.mark.parametrize("edit", ["remove", "set", "add"])
def test_every_proxy_owned_header_is_refused_in_every_edit(proxy_owned: str, edit: str) -> None:
    value: Any = [proxy_owned.lower()] if edit == "remove" else {proxy_owned.upper(): "x"}
    [(key, reason)] = issues(up(response_headers={edit: value}))
    assert key.startswith(f"routes[0].response_headers.{edit}")
    assert "is set by the proxy itself and cannot be edited" in reason


def test_two_actions_report_each_extra_one() -> None:
    route = {"upstream": "backend", "redirect": {"to": "/x"}, "respond": {}}
    assert issues(route) == [
        ("routes[0].redirect", "only one action per route (upstream is given too)"),
        ("routes[0].respond", "only one action per route (upstream is given too)"),
    ]


def test_every_problem_of_every_route_is_reported_together() -> None:
    found = issues(
        up(name="a", match={"host": ["a.com", "b:1"], "methods": "GE T"}),
        {"name": "a", "redirect": {"to": "/{x}", "status": 200}},
        up(rewrite={"regex": "("}, request_headers={"set": {"Via": "x"}}),
        {"upstream": "nope"},
    )
    assert [key for key, _ in found] == [
        "routes[0].match.host[1]",
        "routes[0].match.methods",
        "routes[1].name",
        "routes[1].redirect.to",
        "routes[1].redirect.status",
        "routes[2].rewrite.regex",
        "routes[2].rewrite.replace",
        'routes[2].request_headers.set."Via"',
        "routes[3].upstream",
    ]
    assert found[2] == ("routes[1].name", "duplicate route name 'a' (already used by routes[0])")


def test_a_broken_path_regex_does_not_also_fail_its_captures() -> None:
    # The regex is refused once; templates naming its groups add no second error.
    route = up(
        match={"path_regex": "^/(?P<id>[0-9]+"},
        rewrite={"set_query": {"id": "{id}", "n": "{1}"}},
    )
    [(key, _)] = issues(route)
    assert key == "routes[0].match.path_regex"


def test_odd_input_is_reported_not_raised() -> None:
    odd: list[Any] = [
        up(match={"host": [[]], "path": [{}], "headers": {"X": []}, "client_ip": [None]}),
        up(
            rewrite={"set_query": {"a": None}, "remove_query": [1]},
            request_headers={"remove": [[]]},
        ),
        {"respond": {"headers": {"X": {}}}, "response_headers": {"add": []}},
        {"redirect": {"to": ["x"]}},
        None,
    ]
    found = issues(*odd)
    assert {key.split(".")[0] for key, _ in found} == {f"routes[{i}]" for i in range(5)}


# --------------------------------------------------------------------------
# Templates


@pytest.mark.parametrize(
    ("source", "regex", "parts"),
    [
        ("", None, ()),
        ("plain", None, ("plain",)),
        ("{host}", None, (Var("host", False),)),
        ("a{host}b{path}", None, ("a", Var("host", False), "b", Var("path", False))),
        ("{{host}}", None, ("{host}",)),
        ("{{{host}}}", None, ("{", Var("host", False), "}")),
        ("a{{b", None, ("a{b",)),
        ("a}}b{{", None, ("a}b{",)),
        ("{host}{path}", None, (Var("host", False), Var("path", False))),
        ("{0}", "^/x$", (Var(0, True),)),
        ("/{1}/{2}", "^/(a)/(b)$", ("/", Var(1, True), "/", Var(2, True))),
        ("{01}", "^/(a)$", (Var(1, True),)),
        ("{id}", "^/(?P<id>[0-9]+)$", (Var("id", True),)),
        ("{id}{1}", "^/(?P<id>[0-9]+)$", (Var("id", True), Var(1, True))),
        ("é{method}", None, ("é", Var("method", False))),
        *((f"{{{name}}}", None, (Var(name, False),)) for name in VARIABLES),
    ],
)
def test_template_parts(source: str, regex: str | None, parts: tuple[str | Var, ...]) -> None:
    compiled = re.compile(regex) if regex is not None else None
    assert parse_template(source, compiled) == Template(source, parts)


@pytest.mark.parametrize(
    ("source", "regex", "reason"),
    [
        ("{", None, "unmatched '{' at position 0 (write '{{' for a literal brace)"),
        ("ab{host", None, "unmatched '{' at position 2 (write '{{' for a literal brace)"),
        ("a{b{host}", None, "unmatched '{' at position 1 (write '{{' for a literal brace)"),
        ("}", None, "unmatched '}' at position 0 (write '}}' for a literal brace)"),
        ("{host}}", None, "unmatched '}' at position 6 (write '}}' for a literal brace)"),
        (
            "{}",
            None,
            "invalid variable {} at position 0: expected a variable name or a group number",
        ),
        (
            "x{a-b}",
            None,
            "invalid variable {a-b} at position 1: expected a variable name or a group number",
        ),
        (
            "{ host }",
            None,
            "invalid variable { host } at position 0: expected a variable name or a group number",
        ),
        (
            "{1a}",
            None,
            "invalid variable {1a} at position 0: expected a variable name or a group number",
        ),
        (
            "{Host}",
            None,
            f"unknown variable {{Host}} (known: {KNOWN}); did you mean 'host'?",
        ),
        ("{1}", None, "{1} refers to a regex group, but there is no match.path_regex"),
        ("{0}", None, "{0} refers to a regex group, but there is no match.path_regex"),
        ("{2}", "^/(a)$", "{2} refers to group 2, but match.path_regex has only 1 group"),
        ("{3}", "^/(a)(b)$", "{3} refers to group 3, but match.path_regex has only 2 groups"),
        (
            "{name}",
            "^/(?P<id>a)(?P<nam>b)$",
            f"unknown variable {{name}} (known: {KNOWN}; "
            "groups of match.path_regex: id, nam); did you mean 'nam'?",
        ),
    ],
)
def test_template_errors(source: str, regex: str | None, reason: str) -> None:
    compiled = re.compile(regex) if regex is not None else None
    with pytest.raises(ValueError) as info:
        parse_template(source, compiled)
    assert str(info.value) == reason


def test_template_regex_key_names_the_regex_in_messages() -> None:
    with pytest.raises(
        ValueError, match=r"^\{1\} refers to a regex group, but there is no rewrite.regex$"
    ):
        parse_template("{1}", None, "rewrite.regex")


def test_template_with_unchecked_captures_accepts_any_group() -> None:
    parsed = parse_template("{9}{x}{host}", None, check_captures=False)
    assert parsed.parts == (Var(9, True), Var("x", True), Var("host", False))


def test_templates_in_routes_see_the_regex_they_belong_to() -> None:
    [route] = parse_routes(
        up(
            match={"path_regex": "^/u/(?P<id>[0-9]+)/(x)$"},
            rewrite={"regex": "^/u/(.*)$", "replace": "/users/{1}", "set_query": {"u": "{id}-{2}"}},
            request_headers={"set": {"X-User": "{id}"}},
            response_headers={"add": {"X-Path": "{2}"}},
        )
    )
    assert route.rewrite is not None and route.request_headers and route.response_headers
    assert route.rewrite.replace == t("/users/{1}", "/users/", Var(1, True))
    assert route.rewrite.set_query == (("u", t("{id}-{2}", Var("id", True), "-", Var(2, True))),)
    assert route.request_headers.set == (("X-User", t("{id}", Var("id", True))),)
    assert route.response_headers.add == (("X-Path", t("{2}", Var(2, True))),)


# --------------------------------------------------------------------------
# Shadowing: unreachable routes are warned about, only when certain


def m(**match: Any) -> RouteMatch:
    return one_route(up(match=match)).match


SHADOWED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({}, {"host": "a.com", "path": "/x"}),
    ({"host": "a.com"}, {"host": "A.com.", "path_prefix": "/x"}),
    ({"host": ["a.com", "b.com"]}, {"host": "b.com"}),
    ({"host": "*.x.com"}, {"host": ["y.x.com", "a.b.x.com", "*.y.x.com"]}),
    ({"host": "*.x.com"}, {"host": "*.x.com", "methods": "GET"}),
    ({"path_prefix": "/api"}, {"path_prefix": "/apix"}),
    ({"path_prefix": "/api"}, {"path_prefix": "/api/v1", "whole_segments": True}),
    ({"path_prefix": "/api"}, {"path": ["/api", "/api/x", "/apix"]}),
    ({"path_prefix": ["/a", "/b"]}, {"path_prefix": ["/b/c", "/a"]}),
    ({"path_prefix": "/"}, {"path_regex": "^/x"}),
    ({"path_prefix": "/", "whole_segments": True}, {}),
    ({"path_prefix": "/api", "whole_segments": True}, {"path_prefix": "/api/"}),
    (
        {"path_prefix": "/api", "whole_segments": True},
        {"path_prefix": "/api", "whole_segments": True},
    ),
    ({"path_prefix": "/api", "whole_segments": True}, {"path": ["/api", "/api/x"]}),
    ({"path_prefix": "/api/", "whole_segments": True}, {"path_prefix": "/api/x"}),
    ({"path": ["/a", "/b"]}, {"path": "/b"}),
    ({"path": "/a"}, {"path": "/./a"}),
    ({"path_regex": "^/u/"}, {"path_regex": "^/u/", "methods": "GET"}),
    ({"methods": ["GET", "HEAD"]}, {"methods": "head"}),
    ({"headers": {"X-A": "1"}}, {"headers": {"x-a": "1", "X-B": True}}),
    ({"query": {"a": True}}, {"query": {"a": True, "b": "2"}}),
    ({"client_ip": "10.0.0.0/8"}, {"client_ip": ["10.1.0.0/16", "10.2.3.4"]}),
    ({"client_ip": ["::/0", "0.0.0.0/0"]}, {"client_ip": ["10.0.0.0/8", "::1"]}),
    ({"listener": ["public", "127.0.0.1:8081"]}, {"listener": "public"}),
    (
        {"host": "*.x.com", "path_prefix": "/a", "methods": "GET", "client_ip": "10.0.0.0/8"},
        {
            "host": "b.x.com",
            "path": "/a/b",
            "methods": "GET",
            "client_ip": "10.0.0.1",
            "query": {"q": True},
        },
    ),
]

NOT_SHADOWED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"host": "a.com"}, {}),
    ({"host": "a.com"}, {"host": "b.com"}),
    ({"host": "a.com"}, {"host": ["a.com", "b.com"]}),
    ({"host": "*.x.com"}, {"host": "x.com"}),
    ({"host": "*.x.com"}, {"host": "ax.com"}),
    ({"host": "*.y.x.com"}, {"host": "*.x.com"}),
    ({"host": "b.x.com"}, {"host": "*.x.com"}),
    ({"path_prefix": "/api"}, {}),
    ({"path_prefix": "/api"}, {"path_prefix": "/ap"}),
    ({"path_prefix": "/api"}, {"path_regex": "^/api"}),
    ({"path_prefix": "/api", "whole_segments": True}, {"path_prefix": "/apix"}),
    ({"path_prefix": "/api", "whole_segments": True}, {"path_prefix": "/api"}),
    ({"path_prefix": "/api", "whole_segments": True}, {"path": "/apix"}),
    ({"path_prefix": ["/a", "/b"]}, {"path_prefix": ["/a", "/c"]}),
    ({"path": "/a"}, {"path_prefix": "/a"}),
    ({"path": "/a"}, {"path": ["/a", "/b"]}),
    ({"path_regex": "^/"}, {"path_prefix": "/x"}),
    ({"path_regex": "^/a"}, {"path_regex": "^/a$"}),
    ({"methods": "GET"}, {}),
    ({"methods": "GET"}, {"methods": ["GET", "POST"]}),
    ({"headers": {"X-A": True}}, {}),
    ({"headers": {"X-A": True}}, {"headers": {"X-A": "1"}}),
    ({"headers": {"X-A": "1"}}, {"headers": {"X-A": "2"}}),
    ({"query": {"a": True}}, {"query": {"A": True}}),
    ({"client_ip": "10.0.0.0/8"}, {}),
    ({"client_ip": "10.0.0.0/16"}, {"client_ip": "10.0.0.0/8"}),
    ({"client_ip": "0.0.0.0/0"}, {"client_ip": "::1"}),
    ({"listener": "public"}, {}),
    ({"listener": "public"}, {"listener": "127.0.0.1:8081"}),
    ({"host": "a.com", "path_prefix": "/a"}, {"host": "a.com"}),
    ({"host": "a.com", "path_prefix": "/a"}, {"path_prefix": "/a/b"}),
]


@pytest.mark.parametrize(("earlier", "later"), SHADOWED)
def test_shadowed_route_is_warned_about(earlier: dict[str, Any], later: dict[str, Any]) -> None:
    assert shadows(m(**earlier), m(**later))
    what = "matches every request" if not earlier else "matches every request this route matches"
    assert warnings(matching(**earlier), matching(**later)) == [
        f"routes[1]: unreachable: routes[0] {what}"
    ]


@pytest.mark.parametrize(("earlier", "later"), NOT_SHADOWED)
def test_route_that_may_be_reached_is_not_warned_about(
    earlier: dict[str, Any], later: dict[str, Any]
) -> None:
    assert not shadows(m(**earlier), m(**later))
    assert warnings(matching(**earlier), matching(**later)) == []


def test_shadow_warning_names_the_earlier_route_and_ignores_actions() -> None:
    found = warnings(
        {"name": "health", "respond": {}, "match": {"path": "/healthz"}},
        {"redirect": {"to": "/"}, "match": {"path": "/healthz", "methods": "GET"}},
        {"name": "all", "upstream": "backend"},
        up(match={"host": "a.com"}),
        up(name="late"),
    )
    assert found == [
        'routes[1]: unreachable: routes[0] "health" matches every request this route matches',
        'routes[3]: unreachable: routes[2] "all" matches every request',
        'routes[4]: unreachable: routes[2] "all" matches every request',
    ]


def test_only_the_first_shadowing_route_is_named() -> None:
    assert warnings(
        matching(path_prefix="/a"), matching(path_prefix="/a/b"), matching(path="/a/b/c")
    ) == [
        "routes[1]: unreachable: routes[0] matches every request this route matches",
        "routes[2]: unreachable: routes[0] matches every request this route matches",
    ]


def test_matches_everything_means_no_condition_at_all() -> None:
    assert m().matches_everything
    for condition in (
        {"host": "a.com"},
        {"path": "/"},
        {"path_prefix": "/"},
        {"path_regex": "^/"},
        {"methods": "GET"},
        {"headers": {"X": True}},
        {"query": {"q": True}},
        {"client_ip": "0.0.0.0/0"},
        {"listener": "public"},
    ):
        assert not m(**condition).matches_everything, condition


# The indexed warning pass against the plain pairwise one it replaces.

_HOSTS = ["a.x", "b.a.x", "*.x", "*.a.x", "c.y", "*.y"]


def _pairwise_warnings(routes: list[Route]) -> list[tuple[str, str]]:
    out = []
    for j, later in enumerate(routes):
        for earlier in routes[:j]:
            if shadows(earlier.match, later.match):
                what = ("matches every request" if earlier.match.matches_everything
                        else "matches every request this route matches")
                out.append((f"routes[{later.index}]", f"unreachable: {earlier.label} {what}"))
                break
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.none() | st.lists(st.sampled_from(_HOSTS), min_size=1, max_size=3, unique=True),
    st.sampled_from([None, "/", "/a", "/a/b"])), min_size=1, max_size=10))
def test_indexed_warnings_equal_pairwise(spec: list[tuple[list[str] | None, str | None]]) -> None:
    routes = []
    for i, (hosts, prefix) in enumerate(spec):
        m = RouteMatch(hosts=tuple(hosts) if hosts else None, paths=(),
                       path_prefixes=(prefix,) if prefix else (), whole_segments=False,
                       path_regex=None, methods=None, headers=(), query=(), client_ips=None,
                       listeners=None)
        routes.append(Route(index=i, name=None, match=m, upstream="u", redirect=None,
                            respond=None, rewrite=None, request_headers=None,
                            response_headers=None))
    assert route_warnings(routes) == _pairwise_warnings(routes)


@pytest.mark.parametrize(("source", "want"), [
    ("{header.X-User}", Var("header.x-user", False)),
    ("{cookie.sid}", Var("cookie.sid", False)),
    ("{query.Page}", Var("query.Page", False)),
])
def test_lookup_variables(source: str, want: Var) -> None:
    assert parse_template(source).parts == (want,)


@pytest.mark.parametrize("source", ["{header.}", "{header}", "{cookies.x}", "{header.a b}"])
def test_lookup_variables_refused(source: str) -> None:
    with pytest.raises(ValueError):
        parse_template(source)


def test_tls_and_client_cert_conditions() -> None:
    route = one_route(matching(tls=True, client_cert={"subject": {"regex": "CN=alice"},
                                                      "verify": "SUCCESS"}))
    assert route.match.tls is True
    assert route.match.client_cert == (ValueTest("subject", "regex", "CN=alice"),
                                       ValueTest("verify", "equals", "SUCCESS"))
    assert not route.match.matches_everything
    assert [(k, r.startswith("unknown key"))
            for k, r in issues(matching(client_cert={"email": "x"}))] == [
        ("routes[0].match.client_cert.email", True)]
    assert [k for k, _ in issues(matching(tls=False, client_cert={"verify": "SUCCESS"}))] == [
        "routes[0].match.client_cert"]
    assert [k for k, _ in issues(matching(tls="yes"))] == ["routes[0].match.tls"]
    # A TLS-only route does not hide a later route for the same requests over plain HTTP.
    assert warnings(matching(tls=True), up()) == []
    assert warnings(up(), matching(tls=True))  # but a catch-all hides a TLS route


# --------------------------------------------------------------------------
# tunnel_idle_timeout (protocol switches)


def test_tunnel_idle_timeout() -> None:
    assert one_route(up()).tunnel_idle_timeout == 60.0
    assert one_route(up(tunnel_idle_timeout="5m")).tunnel_idle_timeout == 300.0
    assert one_route(up(tunnel_idle_timeout=0)).tunnel_idle_timeout == 0.0


@pytest.mark.parametrize("route,reason", [
    (up(tunnel_idle_timeout="2d"), "invalid duration"),
    (up(tunnel_idle_timeout="25h"), "must be from 0 (no timeout) to 24h"),
    (up(tunnel_idle_timeout=True), "expected a duration"),
    ({"respond": {}, "tunnel_idle_timeout": "1s"}, "only allowed on a route with upstream"),
])
def test_tunnel_idle_timeout_refused(route: dict[str, Any], reason: str) -> None:
    [(key, why)] = issues(route)
    assert key == "routes[0].tunnel_idle_timeout"
    assert reason in why
