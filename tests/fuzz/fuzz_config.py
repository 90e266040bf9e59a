"""atheris fuzz target: the config loader (parse_config) and the router built from it.

An input whose first byte is odd is TOML text (the seeds in
tests/fuzz/corpus/config/ start with "#", 0x23): it goes through tomllib and
parse_config as load_config does. Any other input drives a FuzzedDataProvider
that builds the parsed data directly, picking keys from the config schema
(listeners, upstreams, [[routes]] with match/actions/rewrite/header edits) and
values from pools of good, bad and odd ones, mixed with arbitrary text and
values of the wrong type, so that the route checks are reached deeply rather
than stopping at TOML syntax errors. When a config is refused, it is checked
again without the routes, listeners, upstreams and sections that the issues
name (routes are checked one by one, so the rest still makes a config): most
inputs thus reach build_router with whatever part of them was right.

The only outcomes allowed are a Config or ConfigError (plus TOMLDecodeError,
and the RecursionError that load_config maps to ConfigError, from tomllib on
the text path). A Config must build the compiled router with
fastproxy.routing.build_router. Anything else is a crash.

    python tests/fuzz/fuzz_config.py -max_total_time=10
    python tests/fuzz/fuzz_config.py crash-<sha1>        # replay one input

Without corpus arguments it reads the seeds in tests/fuzz/corpus/config/ and
keeps what it learns in build/fuzz-corpus-config/; without -dict it writes
and uses build/fuzz-config.dict (TOML keys of the schema). The pure-Python
config modules (fastproxy.config, .routeconf, .routing) are instrumented, so
libFuzzer follows their branches; the compiled router is not.
"""

from __future__ import annotations

import datetime
import re
import sys
import tomllib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports(include=["fastproxy"]):
    from fastproxy.config import Config, ConfigError, ConfigIssue, Route, parse_config
    from fastproxy.routeconf import Template, key
    from fastproxy.routing import build_router

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus" / "config"
WORK_CORPUS = ROOT / "build" / "fuzz-corpus-config"
DICT = ROOT / "build" / "fuzz-config.dict"
SOURCE = "fuzz.toml"
BASE_DIR = str(HERE)  # relative log.access paths resolve here (nothing is written)

# re warns about regexes that may change meaning in future versions ("[[a]"): not a
# crash, and thousands of them would bury one in the log.
warnings.filterwarnings("ignore", "Possible ", FutureWarning)

# -- pools: (good, bad) values; an exhausted input gets the first good one ------------

LISTEN = (["127.0.0.1:8080", "0.0.0.0:80", "[::1]:8443", "*:81", "localhost:8000",
           "LOCALHOST:1", ":82"],
          ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:80", "[::1]80", "[::1",
           "example.com:80", "127.0.0.1:08080", "[fe80::1%eth0]:80"])
SERVERS = (["127.0.0.1:9000", "127.0.0.1:9001", "backend.internal:80", "[::1]:9000",
            "Backend.Internal.:80", "bücher.example:80", "xn--bcher-kva.example:80", "a_b:80"],
           ["straße.de:80", "1.2.3:80", "256.1.1.1:80", ":80", "a..b:80", "-a:80",
            "x" * 64 + ":80", "127.0.0.1:99999", "127.0.0.1"])
UPSTREAM_NAMES = (["web", "api", "a.b-c_d"], ["bad name", "", "é", "api "])
LISTENER_NAMES = (["public", "vpn", "é"], ["", "a\nb"])
ROUTE_NAMES = (["site", "api", "site "], ["", "a\tb"])
HOSTS = (["example.com", "*.example.com", "EXAMPLE.com.", "10.0.0.1", "[::1]", "*.a.b.example",
          "xn--bcher-kva.example", "bücher.example", "_srv.example", "[::ffff:1.2.3.4]"],
         ["[::1]:80", "example.com:80", "*.0.0.1", "*.", "*", "a.*.b", "*.*.com", "straße.de",
          "ς.gr", "a\u200db.com", "::1", "[::1", "[1:2:3]", "a..b", "-a.com",
          "a" * 64 + ".com", "1.2.3.4.5", "999.1.1.1", ".", ""])
DEFAULT_HOSTS = (["example.com", "EXAMPLE.com.", "10.0.0.1", "[::1]", "bücher.example"],
                 ["*.example.com", "example.com:80", "", "a..b"])
PATHS = (["/", "/api", "/api/", "/a/../b", "/%2e%2E/x", "/a//b", "/%41", "/é", "/%2F", "/~u",
          "/a/.", "/a%20b", "/A/%c3%a9"],
         ["/..", "/../a", "/%zz", "/%4", "api", "", "/a?b", "/a#b", "/a b", "/\x7f", "/\t"])
REGEXES = ([r"^/u/(?P<id>[0-9]+)$", r"^/img/(?P<w>\d+)x(?P<h>\d+)/(.*)$", r"^/(a)(b)?/(c)$",
            r"(?i)^/API", r"\d+", "[é]+", "é", r"\bword\b", r"(?P<name>a)(?P=name)",
            r"(?a)\w", r"(?x) a # c", "x" * 200, "", r"^/([^/]+)/(.*)$"],
           [r"(?P<host>x)", "(", "a{2,1}", "a(?i)",
            # str-only and bytes-only syntax (the router matches bytes)
            r"\u00e9", r"\U0001F600", r"\N{DIGIT ONE}", "(?u)x", "(?L)x", "(?P<é>x)"])
TEMPLATES = (["https://{host}{request_uri}", "/v1{path}", "x-{request_id}", "{{literal}}",
              "{listener}", "{method} {scheme} {client_ip} {query}", "é", ""],
             ["{1}", "{id}", "{w}", "{0}", "{", "}", "{host", "{nope}", "ok\n", "a\r\nb"])
HOST_TEMPLATES = (["api.internal", "{host}", "{host}:8080", "[::1]:80", "Upper.Example"],
                  ["{1}.internal", "{id}.internal", "a/b", "h:99999", "", "a b", "a@b"])
METHODS = (["GET", "get", "POST", "OPTIONS", "M-SEARCH"], ["BAD METHOD", "", "GÉT"])
HEADER_NAMES = (["X-Env", "x-env", "X-ENV", "Cache-Control", "Authorization", "Vary"],
                ["Host", "Content-Length", "Via", "Connection", "Bad Name", "", "é", "X-A:"])
HEADER_VALUES = (["1", "https://app.example.com", "a\tb", "", "é"], ["a\nb", "\x7f"])
QUERY_NAMES = (["v", "deep", "utm source", "a+b", "%41", "é", "="], [""])
CLIENT_IPS = (["10.0.0.0/8", "::1", "fd00::/8", "0.0.0.0/0", "::/0", "::ffff:10.0.0.0/104",
               "10.0.0.1"],
              ["10.0.0.1/8", "bad", "10.0.0.0/33", "fe80::1%eth0", ""])
REDIRECT_STATUSES = ([302, 301, 303, 307, 308], [200, 300, 0, True, "301"])
RESPOND_STATUSES = ([200, 204, 304, 403, 404, 503, 599], [199, 600, -1, False, "200"])
DURATIONS = (["30s", "500ms", 0, 1, 2.5, "5m", "1h", "1.5s", 86400],
             ["25h", -1, "s", "1d", 86401, 10**30, float("nan")])
SIZES = (["8k", "32k", "1m", 1024, 256, 0, "16KiB", "64MB", "1g"],
         [255, 10**19, "1t", -1, "1.5k"])
LINE_SIZES = (["8k", 256, "1m", "16KiB"], [255, "2m"])
HEAD_SIZES = (["32k", "1k", 1024, "1MiB"], [1023, "2m"])
INTS = ([1, 100, 1024, 10000], [0, 1025, 1_000_000, 1_000_001, -1, 2**64])
WORKERS = (["auto", 1, 4, 1024], [0, 1025, "2", "AUTO"])
WEIGHTS = ([1, 2, 1000], [0, 1001, True, "1"])
LOG_ACCESS = (["stdout", "stderr", "off", "access.log"],
              ["/", "no/such/dir/x.log", "", "a\x00b", "."])
LOG_FORMATS = (["combined"], ["json", "Combined"])
LOG_LEVELS = (["info", "debug", "warning", "error"], ["warn", "INFO"])
BOOLS = ([True, False], [1, "true"])
# Pieces composed into regexes, templates and names: escapes, groups, flags, braces.
FRAGMENTS = ["(", ")", "(?P<", ">", "(?P<id>", "(?P=", "(?:", "(?", "i)", "a)", "u)", "L)",
             "x)", "s)", "[", "]", "^", "$", "|", "*", "+", "?", "{", "}", "{{", "}}", "\\",
             "\\d", "\\u0041", "\\N{DIGIT ONE}", "\\x41", "\\1", "\\g<1>", "\\w", "\\b",
             "{1}", "{0}", "{2}", "{id}", "{w}", "{host}", "{path}", "{query}",
             "{request_uri}", "{method}", "{scheme}", "{client_ip}", "{request_id}",
             "{listener}", "{nope}", "{ 1}", "{-1}", "/", ".", "..", "%", "%2e", "%41",
             "a", "Z", "0", "é", "\u00ff", "\U0001f600", " ", "\t", "\r\n", "\x00", "\x7f",
             ":", "@", "#", "&", "="]
MISC = [True, False, 0, -1, 1.5, float("nan"), float("inf"), "", "x", [], {},
        datetime.date(2024, 1, 1), datetime.time(1, 2),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)]

Pool = tuple[Sequence[Any], Sequence[Any]]


class Gen:
    """Decisions drawn from the input; an exhausted input gets the first, valid choice."""

    def __init__(self, data: bytes) -> None:
        self.f = atheris.FuzzedDataProvider(data)

    def pick(self, seq: Sequence[Any]) -> Any:
        return seq[self.f.ConsumeIntInRange(0, len(seq) - 1)]

    def count(self, lo: int, hi: int) -> int:
        return int(self.f.ConsumeIntInRange(lo, hi))

    def maybe(self) -> bool:
        """True (include an optional key) about half the time; False when exhausted."""
        return bool(self.f.ConsumeBool())

    def odd(self) -> bool:
        """True about one time in 32: time for a value or a structure of the wrong shape."""
        return bool(self.f.ConsumeIntInRange(0, 31) == 31)

    def value(self, pool: Pool) -> Any:
        """Mostly a good value of the pool, else a bad one, composed text, any text or junk."""
        good, bad = pool
        how = self.f.ConsumeIntInRange(0, 63)
        if how < 56 or (how < 60 and not bad):
            return self.pick(good)
        if how < 60:
            return self.pick(bad)
        if how < 62:
            return "".join(self.pick(FRAGMENTS) for _ in range(self.count(1, 6)))
        if how == 62:
            return self.f.ConsumeUnicodeNoSurrogates(self.count(0, 16))
        return self.junk()

    def name(self, pool: Pool) -> str:
        """A table key: like value(), but always a string."""
        value = self.value(pool)
        return value if isinstance(value, str) else str(value)

    def junk(self, depth: int = 1) -> Any:
        how = self.f.ConsumeIntInRange(0, 3)
        if how == 1 and depth > 0:
            return [self.junk(depth - 1) for _ in range(self.count(0, 2))]
        if how == 2 and depth > 0:
            return {self.pick(FRAGMENTS): self.junk(depth - 1) for _ in range(self.count(0, 2))}
        if how == 3:
            return self.f.ConsumeInt(self.count(1, 9))
        return self.pick(MISC)

    def strings(self, pool: Pool) -> Any:
        """A string or an array of values (possibly empty or with duplicates)."""
        if self.maybe():
            return [self.value(pool) for _ in range(0 if self.odd() else self.count(1, 3))]
        return self.value(pool)

    def table(self, fields: Sequence[tuple[str, Callable[[], Any]]]) -> Any:
        """Some of `fields` (name, maker), sometimes an unknown key, sometimes not a table."""
        if self.odd():
            return self.junk()
        result = {name: make() for name, make in fields if self.maybe()}
        if self.odd():
            result[self.pick(["nmae", "upstreams", "match", "x", ""])] = self.junk()
        return result

    def mapping(self, names: Pool, make: Callable[[], Any]) -> Any:
        if self.odd():
            return self.junk()
        return {self.name(names): make() for _ in range(self.count(1, 3))}


def gen_config(g: Gen) -> dict[str, Any]:
    data: dict[str, Any] = {}
    sections = {
        "server": [("workers", lambda: g.value(WORKERS)),
                   ("shutdown_timeout", lambda: g.value(DURATIONS)),
                   ("via", lambda: g.value(BOOLS)),
                   ("max_connections", lambda: g.value(INTS))],
        "limits": [("max_line_bytes", lambda: g.value(LINE_SIZES)),
                   ("max_header_bytes", lambda: g.value(HEAD_SIZES)),
                   ("max_header_count", lambda: g.value(INTS)),
                   ("max_body_bytes", lambda: g.value(SIZES))],
        "timeouts": [(name, lambda: g.value(DURATIONS))
                     for name in ("header", "body", "keepalive", "send", "lingering_time",
                                  "lingering_timeout")],
        "log": [("access", lambda: g.value(LOG_ACCESS)),
                ("format", lambda: g.value(LOG_FORMATS)),
                ("level", lambda: g.value(LOG_LEVELS))],
        "routing": [("merge_slashes", lambda: g.value(BOOLS))],
    }
    for section, fields in sections.items():
        if g.maybe():
            data[section] = g.table(fields)

    listener_names: list[str] = []
    if not g.odd():
        listeners = []
        for _ in range(g.count(1, 3)):
            item: dict[str, Any] = {"address": g.value(LISTEN)}
            if isinstance(item["address"], str):
                listener_names.append(item["address"])  # (not normalized: may be unknown)
            if g.maybe():
                item["name"] = g.value(LISTENER_NAMES)
                if isinstance(item["name"], str):
                    listener_names.append(item["name"])
            if g.maybe():
                item["default_host"] = g.value(DEFAULT_HOSTS)
            listeners.append(item if not g.odd() else g.junk())
        data["listeners"] = listeners
    elif g.maybe():
        data["listeners"] = g.junk()

    upstream_names: list[str] = []
    if not g.odd():
        upstreams: dict[str, Any] = {}
        for _ in range(g.count(1, 3)):
            name = g.name(UPSTREAM_NAMES)
            upstream_names.append(name)
            upstreams[name] = gen_upstream(g)
        data["upstreams"] = upstreams
    elif g.maybe():
        data["upstreams"] = g.junk()

    if not g.odd():
        data["routes"] = [gen_route(g, (upstream_names or ["web"], ["nope"]),
                                    (listener_names or ["public"], ["nope"]))
                          for _ in range(g.count(1, 4))]
    elif g.maybe():
        data["routes"] = g.junk()
    return data


def gen_upstream(g: Gen) -> Any:
    if g.odd():
        return g.junk()
    table: dict[str, Any] = {} if g.odd() else {"servers": gen_servers(g)}
    for name, pool in (("keepalive", INTS), ("idle_timeout", DURATIONS),
                       ("connect_timeout", DURATIONS), ("read_timeout", DURATIONS),
                       ("send_timeout", DURATIONS)):
        if g.maybe():
            table[name] = g.value(pool)
    return table


def gen_servers(g: Gen) -> Any:
    if g.odd():
        return g.junk()
    servers: list[Any] = []
    for _ in range(g.count(1, 3)):
        if g.maybe():
            server: dict[str, Any] = {} if g.odd() else {"address": g.value(SERVERS)}
            if g.maybe():
                server["weight"] = g.value(WEIGHTS)
            servers.append(server)
        else:
            servers.append(g.value(SERVERS))
    return servers


def gen_value_test(g: Gen) -> Any:
    how = g.count(0, 3)
    if how == 1:
        return g.value(([True, False], []))
    if how == 2:
        return g.table([("regex", lambda: g.value(REGEXES))])
    return g.value(HEADER_VALUES)


def gen_match(g: Gen, listeners: Pool) -> Any:
    if g.odd():
        return g.junk()
    table: dict[str, Any] = {}
    if g.maybe():
        table["host"] = g.strings(HOSTS)
    # At most one of path, path_prefix, path_regex; whole_segments only with a prefix
    # (the odd input breaks these rules).
    which = g.count(0, 3)
    if which == 1 or g.odd():
        table["path"] = g.strings(PATHS)
    if which == 2 or g.odd():
        table["path_prefix"] = g.strings(PATHS)
        if g.maybe():
            table["whole_segments"] = g.value(BOOLS)
    if which == 3 or g.odd():
        table["path_regex"] = g.value(REGEXES)
    if g.odd():
        table["whole_segments"] = g.value(BOOLS)
    for name, make in (
        ("methods", lambda: g.strings(METHODS)),
        ("headers", lambda: g.mapping(HEADER_NAMES, lambda: gen_value_test(g))),
        ("query", lambda: g.mapping(QUERY_NAMES, lambda: gen_value_test(g))),
        ("client_ip", lambda: g.strings(CLIENT_IPS)),
        ("listener", lambda: g.strings(listeners)),
    ):
        if g.maybe():
            table[name] = make()
    if g.odd():
        table[g.pick(["paths", "hosts", "x", ""])] = g.junk()
    return table


def gen_header_edits(g: Gen) -> Any:
    return g.table([
        ("remove", lambda: g.strings(HEADER_NAMES)),
        ("set", lambda: g.mapping(HEADER_NAMES, lambda: g.value(TEMPLATES))),
        ("add", lambda: g.mapping(HEADER_NAMES, lambda: g.value(TEMPLATES))),
    ])


def gen_route(g: Gen, upstreams: Pool, listeners: Pool) -> Any:
    if g.odd():
        return g.junk()
    route: dict[str, Any] = {}
    if g.maybe():
        route["name"] = g.value(ROUTE_NAMES)
    if g.maybe():
        route["match"] = gen_match(g, listeners)
    # One action, upstream first; the odd input has none or two.
    actions: list[tuple[str, Callable[[], Any]]] = [
        ("upstream", lambda: g.value(upstreams)),
        ("redirect", lambda: gen_redirect(g)),
        ("respond", lambda: gen_respond(g)),
    ]
    first = g.count(0, 2)
    route[actions[first][0]] = actions[first][1]()
    if g.odd():
        name, make = g.pick(actions)
        route[name] = make()
    if g.odd():
        route.pop(actions[first][0], None)
    # rewrite and request_headers belong to upstream routes (but for the odd input).
    if (first == 0 or g.odd()) and g.maybe():
        route["rewrite"] = gen_rewrite(g)
    if (first == 0 or g.odd()) and g.maybe():
        route["request_headers"] = gen_header_edits(g)
    if g.maybe():
        route["response_headers"] = gen_header_edits(g)
    if g.odd():
        route[g.pick(["nmae", "action", "x"])] = g.junk()
    return route


def gen_redirect(g: Gen) -> Any:
    if g.odd():
        return g.junk()
    table: dict[str, Any] = {} if g.odd() else {"to": g.value(TEMPLATES)}
    if g.maybe():
        table["status"] = g.value(REDIRECT_STATUSES)
    return table


def gen_respond(g: Gen) -> Any:
    return g.table([
        ("status", lambda: g.value(RESPOND_STATUSES)),
        ("body", lambda: g.value(TEMPLATES)),
        ("headers", lambda: g.mapping(HEADER_NAMES, lambda: g.value(TEMPLATES))),
    ])


def gen_rewrite(g: Gen) -> Any:
    if g.odd():
        return g.junk()
    table: dict[str, Any] = {}
    if g.maybe():
        table["strip_prefix"] = g.value(PATHS)
    if g.maybe():  # regex and replace go together (but for the odd input)
        if not g.odd():
            table["regex"] = g.value(REGEXES)
        if not g.odd():
            table["replace"] = g.value(TEMPLATES)
    for name, make in (
        ("add_prefix", lambda: g.value(PATHS)),
        ("set_query", lambda: g.mapping(QUERY_NAMES, lambda: g.value(TEMPLATES))),
        ("remove_query", lambda: g.strings(QUERY_NAMES)),
        ("host", lambda: g.value(HOST_TEMPLATES)),
    ):
        if g.maybe():
            table[name] = make()
    return table


# -- checks -----------------------------------------------------------------------------

_INDEXED_ISSUE = re.compile(r"(routes|listeners)\[([0-9]+)\]")


def check(data: Any) -> None:
    """parse_config on `data`; when refused, again without the parts it named (3 times
    at most), so that an input reaches build_router with whatever of it was right."""
    for _ in range(4):
        try:
            config = parse_config(data, SOURCE, base_dir=BASE_DIR)
        except ConfigError as e:
            check_error(e)
            data = without_issues(data, e)
            if data is None:
                return
            continue
        check_config(config)
        return


def without_issues(data: Any, e: ConfigError) -> dict[str, Any] | None:
    """`data` without each route, listener, upstream, section and unknown key that an issue
    names, or None if an issue names something else (e.g. missing listeners)."""
    if not isinstance(data, dict):
        return None
    drop: dict[str, set[Any]] = {"routes": set(), "listeners": set(), "upstreams": set(),
                                 "": set()}
    upstreams = data.get("upstreams")
    if not isinstance(upstreams, dict):
        upstreams = {}
    others = [n for n in data if n not in ("routes", "listeners", "upstreams")]
    for issue in e.errors:
        m = _INDEXED_ISSUE.match(issue.key)
        if m is not None:
            drop[m.group(1)].add(int(m.group(2)))
            continue
        found = False
        for where, names in (("", others), ("upstreams", list(upstreams))):
            for name in names:
                path = key(where, name)
                if issue.key == path or issue.key.startswith(path + "."):
                    drop[where].add(name)  # a section goes back to its defaults
                    found = True
        if not found:
            return None
    result = {n: v for n, v in data.items() if n not in drop[""]}
    if drop["upstreams"]:
        result["upstreams"] = {n: v for n, v in upstreams.items() if n not in drop["upstreams"]}
    for name in ("routes", "listeners"):
        if drop[name]:
            items = result.get(name)
            if not isinstance(items, list):
                return None
            result[name] = [item for i, item in enumerate(items) if i not in drop[name]]
    return result


def check_error(e: ConfigError) -> None:
    if not e.errors:
        raise AssertionError("ConfigError without issues")
    for issue in e.errors:
        if not isinstance(issue, ConfigIssue) or issue.file != SOURCE:
            raise AssertionError(f"bad issue {issue!r}")
        if not isinstance(issue.key, str) or not issue.key:
            raise AssertionError(f"issue without a key path: {issue!r}")
        if not isinstance(issue.reason, str) or not issue.reason:
            raise AssertionError(f"issue without a reason: {issue!r}")
    str(e)


def check_config(config: Config) -> None:
    if not isinstance(config, Config):
        raise AssertionError(f"parse_config returned {type(config).__name__}")
    if not config.listeners or not config.upstreams or not config.routes:
        raise AssertionError("a Config without listeners, upstreams or routes")
    for route in config.routes:
        actions = [a for a in (route.upstream, route.redirect, route.respond) if a is not None]
        if len(actions) != 1:
            raise AssertionError(f"{route.label} has {len(actions)} actions")
        if route.upstream is not None and route.upstream not in config.upstreams:
            raise AssertionError(f"{route.label} names an unknown upstream {route.upstream!r}")
        note_route(route)
    config.summary()
    # The router a worker would build: upstream routes proxy to their upstream's name.
    build_router(config, {name: name for name in config.upstreams})


def note_route(route: Route) -> int:
    """Branches per feature of an accepted route: the compiled router is not instrumented,
    so these give libFuzzer's coverage a reason to keep (and grow) accepted configs that
    reach more of it. The count itself is not used."""
    n = 0
    m = route.match
    if m.hosts is not None:
        if any(h.startswith("*.") for h in m.hosts):
            n += 1
        if any(h.startswith("[") for h in m.hosts):
            n += 1
        if len(m.hosts) > 1:
            n += 1
    if m.paths:
        n += 1
    if m.path_prefixes:
        if m.whole_segments:
            n += 1
        else:
            n += 1
    if m.path_regex is not None:
        if re.compile(m.path_regex).groups:
            n += 1
        else:
            n += 1
    if m.methods is not None:
        n += 1
    for test in (*m.headers, *m.query):
        if test.kind == "regex":
            n += 1
        elif test.kind == "equals":
            n += 2
        elif test.kind == "present":
            n += 3
        else:
            n += 4
    if m.client_ips is not None:
        n += 1
    if m.listeners is not None:
        n += 1
    if route.redirect is not None:
        n += note_template(route.redirect.to)
    if route.respond is not None:
        n += note_template(route.respond.body)
        if route.respond.headers:
            n += 1
    rw = route.rewrite
    if rw is not None:
        if rw.strip_prefix is not None:
            n += 1
        if rw.replace is not None:
            n += note_template(rw.replace)
        if rw.add_prefix is not None:
            n += 1
        if rw.set_query:
            n += 1
        if rw.remove_query:
            n += 1
        if rw.host is not None:
            n += note_template(rw.host)
    for edits in (route.request_headers, route.response_headers):
        if edits is not None:
            if edits.remove:
                n += 1
            for _, template in (*edits.set, *edits.add):
                n += note_template(template)
    return n


def note_template(template: Template) -> int:
    n = 0
    for part in template.parts:
        if isinstance(part, str):
            n += 1
        elif part.capture and isinstance(part.name, int):
            n += 2
        elif part.capture:
            n += 3
        else:
            n += 4
    return n


def TestOneInput(data: bytes) -> None:
    if data[:1] and data[0] & 1:
        text = data.decode("utf-8", "replace")
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return
        except RecursionError:
            return  # load_config reports this as ConfigError "nested too deeply"
        check(parsed)
    else:
        check(gen_config(Gen(data)))


# TOML pieces of the schema for libFuzzer's dictionary (the text inputs).
DICT_WORDS = [
    "[[listeners]]", "[[routes]]", "[upstreams.", "[routes.match]", "[routes.rewrite]",
    "[routes.redirect]", "[routes.respond]", "[routes.request_headers]",
    "[routes.response_headers]", "[server]", "[limits]", "[timeouts]", "[log]", "[routing]",
    "address", "default_host", "servers", "weight", "keepalive", "match", "host", "path",
    "path_prefix", "whole_segments", "path_regex", "methods", "headers", "query", "client_ip",
    "listener", "upstream", "redirect", "respond", "rewrite", "request_headers",
    "response_headers", "strip_prefix", "regex", "replace", "add_prefix", "set_query",
    "remove_query", "remove", "set", "add", "status", "body", "to", "name", "merge_slashes",
    "{host}", "{path}", "{query}", "{request_uri}", "{listener}", "{1}", "{{", "}}", "(?P<",
    "\\u00e9", "\\N{DIGIT ONE}", "*.", "%2e", "/..", "[::1]", " = ", "\"", "'", "{ ", " }",
    "true", "false", "127.0.0.1:", "10.0.0.0/8",
]


def write_dict(path: Path) -> None:
    def quote(word: str) -> str:
        return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else
                       "".join(f"\\x{b:02x}" for b in c.encode()) for c in word)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'"{quote(w)}"\n' for w in DICT_WORDS))


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a and not a.startswith("-") for a in args[1:]):
        WORK_CORPUS.mkdir(parents=True, exist_ok=True)
        args += [str(WORK_CORPUS), str(SEEDS)]  # new inputs go to the first one
    if not any(a.startswith("-dict=") for a in args):
        write_dict(DICT)
        args.append(f"-dict={DICT}")
    for fn in (TestOneInput, check, without_issues, check_error, check_config,
               note_route, note_template, gen_config, gen_upstream, gen_servers, gen_value_test,
               gen_match, gen_header_edits, gen_route, gen_redirect, gen_respond, gen_rewrite,
               Gen.value, Gen.junk, Gen.strings,
               Gen.table, Gen.mapping):
        atheris.instrument_func(fn)
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
