"""Config of the client-facing protections: trusted proxies, access lists, rate
limits ([limits.NAME]) and the connection limits of [limits]. Defaults, every
valid form, and every error path with its key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest

from fastproxy._ratelimit import LimitTable, RateLimit
from fastproxy.cli import main as cli_main
from fastproxy.config import (
    ConfigError,
    Limits,
    RateLimitSpec,
    load_config,
    parse_config,
)
from fastproxy.routeconf import AccessList, parse_template

SRC = "security.toml"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def minimal(**sections: Any) -> dict[str, Any]:
    """The smallest valid config, with some top-level sections replaced."""
    data: dict[str, Any] = {
        "listeners": [{"address": "127.0.0.1:8080"}],
        "upstreams": {"backend": {"servers": ["127.0.0.1:9000"]}},
        "routes": [{"upstream": "backend"}],
    }
    data.update(sections)
    return data


def with_limit(table: Any, *, name: str = "x", used: bool = True) -> dict[str, Any]:
    """A config defining one [limits.NAME] (applied by the route unless `used` is false)."""
    route: dict[str, Any] = {"upstream": "backend"}
    if used:
        route["limits"] = [name]
    return minimal(limits={name: table}, routes=[route])


def with_listener_access(access: Any) -> dict[str, Any]:
    return minimal(listeners=[{"address": "127.0.0.1:8080", "access": access}])


def with_route_access(access: Any) -> dict[str, Any]:
    return minimal(routes=[{"upstream": "backend", "access": access}])


def issues(data: Any, base_dir: str | None = None) -> list[tuple[str, str]]:
    """(key, reason) for every issue parse_config reports (it must report some)."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC, base_dir=base_dir)
    assert all(issue.file == SRC for issue in info.value.errors)
    return [(issue.key, issue.reason) for issue in info.value.errors]


def one_issue(data: Any, base_dir: str | None = None) -> tuple[str, str]:
    found = issues(data, base_dir)
    assert len(found) == 1, found
    return found[0]


def net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


# --------------------------------------------------------------------------
# Defaults


def test_defaults() -> None:
    config = parse_config(minimal(), SRC)
    assert config.limits == Limits(
        max_line_bytes=8192, max_header_bytes=32768, max_header_count=100,
        max_body_bytes=64 * 1024**2, max_requests_per_connection=1000, max_in_flight=0,
        max_connections_per_ip=0, rate_limit_keys=100_000,
    )
    assert config.server.trusted_proxies == ()
    assert config.server.real_ip_header == "X-Forwarded-For"
    assert dict(config.rate_limits) == {}
    assert config.listeners[0].access is None
    assert config.routes[0].limits == ()
    assert config.routes[0].access is None


# --------------------------------------------------------------------------
# [limits]: the connection and request limits


@pytest.mark.parametrize(("name", "value"), [
    ("max_requests_per_connection", 0),            # 0: unlimited
    ("max_requests_per_connection", 1),
    ("max_requests_per_connection", 100_000_000),
    ("max_in_flight", 0),
    ("max_in_flight", 10_000_000),
    ("max_connections_per_ip", 0),
    ("max_connections_per_ip", 1_000_000),
    ("rate_limit_keys", 1),
    ("rate_limit_keys", 10_000_000),
])
def test_connection_limits_accept_their_range(name: str, value: int) -> None:
    config = parse_config(minimal(limits={name: value}), SRC)
    assert getattr(config.limits, name) == value


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("max_requests_per_connection", -1, "must be from 0 to 100000000, found -1"),
    ("max_requests_per_connection", 100_000_001,
     "must be from 0 to 100000000, found 100000001"),
    ("max_requests_per_connection", "10", "expected an integer, found string '10'"),
    ("max_in_flight", -1, "must be from 0 to 10000000, found -1"),
    ("max_in_flight", 1.5, "expected an integer, found float 1.5"),
    ("max_in_flight", True, "expected an integer, found boolean true"),
    ("max_connections_per_ip", 1_000_001, "must be from 0 to 1000000, found 1000001"),
    ("max_connections_per_ip", -5, "must be from 0 to 1000000, found -5"),
    ("rate_limit_keys", 0, "must be from 1 to 10000000, found 0"),
    ("rate_limit_keys", 10_000_001, "must be from 1 to 10000000, found 10000001"),
])
def test_connection_limits_refuse_bad_values(name: str, value: object, reason: str) -> None:
    assert one_issue(minimal(limits={name: value})) == (f"limits.{name}", reason)


def test_connection_limit_typo_is_suggested() -> None:
    key, reason = one_issue(minimal(limits={"max_connection_per_ip": 5}))
    assert key == "limits.max_connection_per_ip"
    assert reason == "unknown key; did you mean 'max_connections_per_ip'?"


# --------------------------------------------------------------------------
# [limits.NAME]: valid forms


@pytest.mark.parametrize(("rate", "per_second"), [
    ("10/s", 10.0),
    ("600/m", 10.0),
    ("5r/s", 5.0),
    ("2/h", 2 / 3600),
    ("0.5/s", 0.5),
    ("1.5r/m", 1.5 / 60),
    ("999999999/s", 999_999_999.0),
])
def test_rate_forms(rate: str, per_second: float) -> None:
    spec = parse_config(with_limit({"rate": rate}), SRC).rate_limits["x"]
    assert spec.rate == pytest.approx(per_second)
    assert spec.rate_text == rate


def test_rate_limit_defaults() -> None:
    spec = parse_config(with_limit({"rate": "10/s"}), SRC).rate_limits["x"]
    assert spec == RateLimitSpec(name="x", key=parse_template("{client_ip}"), rate=10.0,
                                 burst=0, rate_text="10/s")


@pytest.mark.parametrize("burst", [0, 1, 40, 1_000_000])
def test_burst_values(burst: int) -> None:
    spec = parse_config(with_limit({"rate": "10/s", "burst": burst}), SRC).rate_limits["x"]
    assert spec.burst == burst


@pytest.mark.parametrize(("key", "template"), [
    ("client_ip", "{client_ip}"),
    ("host", "{host}"),
    ("path", "{path}"),
    ("header:X-Api-Key", "{header.X-Api-Key}"),
    ("cookie:session", "{cookie.session}"),
    ("query:token", "{query.token}"),
    ("{client_ip}:{header.x-api-key}", "{client_ip}:{header.x-api-key}"),
    ("{host}{path}", "{host}{path}"),
    ("tenant-{header.X-Tenant}", "tenant-{header.X-Tenant}"),
])
def test_rate_limit_key_forms(key: str, template: str) -> None:
    spec = parse_config(with_limit({"rate": "1/s", "key": key}), SRC).rate_limits["x"]
    assert spec.key == parse_template(template)


def test_route_key_is_one_bucket_per_route() -> None:
    spec = parse_config(with_limit({"rate": "1/s", "key": "route"}), SRC).rate_limits["x"]
    assert spec.key is None


def test_routes_name_limits_in_order() -> None:
    data = minimal(
        limits={"a": {"rate": "1/s"}, "b": {"rate": "2/s"}},
        routes=[{"match": {"path": "/one"}, "upstream": "backend", "limits": "b"},
                {"upstream": "backend", "limits": ["b", "a"]}])
    config = parse_config(data, SRC)
    assert [route.limits for route in config.routes] == [("b",), ("b", "a")]
    assert set(config.rate_limits) == {"a", "b"}


def test_limits_on_local_action_routes() -> None:
    data = minimal(limits={"a": {"rate": "1/s"}},
                   routes=[{"match": {"path": "/r"}, "limits": ["a"],
                            "redirect": {"to": "https://example.com/"}},
                           {"limits": "a", "respond": {"body": "ok"}, "access": {"deny": "::1"}},
                           ])
    config = parse_config(data, SRC)
    assert [route.limits for route in config.routes] == [("a",), ("a",)]


def test_size_limits_and_rate_limits_share_the_limits_table(tmp_path: Path) -> None:
    path = tmp_path / "both.toml"
    path.write_text(
        '[limits]\n'
        'max_body_bytes = "1m"\n'
        'max_in_flight = 50\n'
        'max_connections_per_ip = 20\n'
        '\n'
        '[limits.per_ip]\n'
        'rate = "10/s"\n'
        'burst = 20\n'
        '\n'
        '[limits.api]\n'
        'key = "header:X-Api-Key"\n'
        'rate = "600/m"\n'
        '\n'
        '[[listeners]]\naddress = "127.0.0.1:8080"\n'
        '[upstreams.backend]\nservers = ["127.0.0.1:9000"]\n'
        '[[routes]]\nupstream = "backend"\nlimits = ["api", "per_ip"]\n',
        encoding="utf-8")
    config = load_config(path)
    assert config.limits.max_body_bytes == 1024**2
    assert config.limits.max_in_flight == 50
    assert config.limits.max_connections_per_ip == 20
    assert config.limits.max_header_count == 100  # the other size keys keep their defaults
    assert set(config.rate_limits) == {"per_ip", "api"}
    assert config.rate_limits["per_ip"].burst == 20
    assert config.rate_limits["api"].key == parse_template("{header.X-Api-Key}")
    assert config.routes[0].limits == ("api", "per_ip")


def test_a_bad_size_key_and_a_bad_rate_limit_are_reported_together() -> None:
    data = minimal(limits={"max_body_bytes": "lots", "x": {"rate": "fast"}},
                   routes=[{"upstream": "backend", "limits": ["x"]}])
    assert [key for key, _ in issues(data)] == ["limits.max_body_bytes", "limits.x.rate"]


# --------------------------------------------------------------------------
# [limits.NAME]: errors


@pytest.mark.parametrize(("rate", "reason"), [
    ("ten", 'expected a rate like "10/s", "600/m" or "5r/s", found \'ten\''),
    ("10/d", 'expected a rate like "10/s", "600/m" or "5r/s", found \'10/d\''),
    ("10/sec", 'expected a rate like "10/s", "600/m" or "5r/s", found \'10/sec\''),
    ("10", 'expected a rate like "10/s", "600/m" or "5r/s", found \'10\''),
    ("-1/s", 'expected a rate like "10/s", "600/m" or "5r/s", found \'-1/s\''),
    ("", 'expected a rate like "10/s", "600/m" or "5r/s", found \'\''),
    ("0/s", "must be more than 0"),
    ("0.0/m", "must be more than 0"),
    (10, 'expected a string like "10/s" or "600/m", found integer 10'),
    (1.5, 'expected a string like "10/s" or "600/m", found float 1.5'),
])
def test_bad_rate(rate: object, reason: str) -> None:
    assert one_issue(with_limit({"rate": rate})) == ("limits.x.rate", reason)


def test_missing_rate() -> None:
    assert one_issue(with_limit({"burst": 5})) == (
        "limits.x.rate", 'missing required key (like "10/s" or "600/m")')


@pytest.mark.parametrize(("burst", "reason"), [
    (-1, "must be from 0 to 1000000, found -1"),
    (-100, "must be from 0 to 1000000, found -100"),
    (1_000_001, "must be from 0 to 1000000, found 1000001"),
    (1.5, "expected an integer, found float 1.5"),
    ("5", "expected an integer, found string '5'"),
    (True, "expected an integer, found boolean true"),
])
def test_bad_burst(burst: object, reason: str) -> None:
    assert one_issue(with_limit({"rate": "1/s", "burst": burst})) == ("limits.x.burst", reason)


@pytest.mark.parametrize(("key", "reason"), [
    ("", "expected client_ip, host, path, route, header:NAME, cookie:NAME, query:NAME or a "
         'template like "{client_ip}:{header.x-api-key}", found \'\''),
    ("ip", "expected client_ip, host, path, route, header:NAME, cookie:NAME, query:NAME or a "
           'template like "{client_ip}:{header.x-api-key}", found \'ip\''),
    ("header:", "missing the header name after 'header:'"),
    ("cookie:", "missing the cookie name after 'cookie:'"),
    ("query:", "missing the query name after 'query:'"),
    ("{nope}", "unknown variable {nope}"),
    ("{1}", "{1} refers to a regex group, but there is no match.path_regex"),
    ("{client_ip", "unmatched '{' at position 0 (write '{{' for a literal brace)"),
    (3, "expected a string, found integer 3"),
])
def test_bad_key(key: object, reason: str) -> None:
    found_key, found = one_issue(with_limit({"rate": "1/s", "key": key}))
    assert found_key == "limits.x.key"
    assert found.startswith(reason), found


def test_unknown_key_in_a_rate_limit_is_suggested() -> None:
    assert one_issue(with_limit({"rate": "1/s", "brust": 5})) == (
        "limits.x.brust", "unknown key; did you mean 'burst'?")


def test_every_problem_of_a_rate_limit_is_reported() -> None:
    found = issues(with_limit({"rate": "1/d", "burst": -1, "key": "header:", "per": "ip"}))
    assert sorted(key for key, _ in found) == [
        "limits.x.burst", "limits.x.key", "limits.x.per", "limits.x.rate"]


@pytest.mark.parametrize(("name", "key"), [
    ("bad name", 'limits."bad name"'),
    ("a/b", 'limits."a/b"'),
    ("é", 'limits."é"'),
])
def test_bad_rate_limit_name(name: str, key: str) -> None:
    assert one_issue(with_limit({"rate": "1/s"}, name=name)) == (
        key, "invalid rate-limit name: use only letters, digits, '_', '.', '-'")


def test_rate_limit_names_with_dots_and_dashes() -> None:
    config = parse_config(with_limit({"rate": "1/s"}, name="api.v1-per_ip"), SRC)
    assert set(config.rate_limits) == {"api.v1-per_ip"}


def test_a_rate_limit_must_be_a_table() -> None:
    # An array of tables ([[limits.x]]) is neither a size key nor a rate limit.
    key, reason = one_issue(minimal(limits={"x": [{"rate": "1/s"}]}))
    assert key == "limits.x"
    assert reason.startswith("unknown key")


# --------------------------------------------------------------------------
# routes[].limits: errors


def test_route_naming_an_undefined_limit() -> None:
    data = minimal(limits={"per_ip": {"rate": "1/s"}, "api": {"rate": "1/s"}},
                   routes=[{"upstream": "backend", "limits": ["per_ip", "per-ip"]}])
    assert one_issue(data) == (
        "routes[0].limits[1]",
        "unknown rate limit 'per-ip' (defined: api, per_ip; define it as [limits.NAME])")


def test_route_naming_an_undefined_limit_as_a_string() -> None:
    data = minimal(limits={"per_ip": {"rate": "1/s"}},
                   routes=[{"upstream": "backend", "limits": "nope"}])
    assert one_issue(data) == (
        "routes[0].limits",
        "unknown rate limit 'nope' (defined: per_ip; define it as [limits.NAME])")


def test_route_naming_a_limit_when_none_is_defined() -> None:
    data = minimal(routes=[{"upstream": "backend", "limits": ["per_ip"]}])
    assert one_issue(data) == (
        "routes[0].limits[0]",
        "unknown rate limit 'per_ip' (defined: none; define it as [limits.NAME])")


def test_route_naming_a_refused_limit_reports_only_the_limit() -> None:
    data = with_limit({"rate": "lots"})
    assert [key for key, _ in issues(data)] == ["limits.x.rate"]


@pytest.mark.parametrize(("limits", "key", "reason"), [
    ([], "routes[0].limits", "must not be empty"),
    (["x", "x"], "routes[0].limits[1]", "duplicate of limits[0]"),
    ([3], "routes[0].limits[0]", "expected a string, found integer 3"),
    (3, "routes[0].limits", "expected a string or an array of strings, found integer 3"),
])
def test_bad_route_limits(limits: object, key: str, reason: str) -> None:
    data = minimal(limits={"x": {"rate": "1/s"}},
                   routes=[{"upstream": "backend", "limits": limits}])
    found_key, found = one_issue(data)
    assert found_key == key
    assert found.startswith(reason), found


# --------------------------------------------------------------------------
# Access lists: valid forms


def test_access_list_forms() -> None:
    config = parse_config(with_listener_access(
        {"allow": ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"], "deny": "10.1.0.0/16"}), SRC)
    assert config.listeners[0].access == AccessList(
        allow=(net("10.0.0.0/8"), net("2001:db8::/32"), net("192.0.2.7/32")),
        deny=(net("10.1.0.0/16"),))


def test_deny_only_leaves_allow_open() -> None:
    access = parse_config(with_route_access({"deny": ["192.0.2.0/24"]}), SRC).routes[0].access
    assert access == AccessList(allow=None, deny=(net("192.0.2.0/24"),))


def test_empty_allow_refuses_everyone() -> None:
    # Documented: an allow that lists nothing lets nobody in (it is not "no allow").
    access = parse_config(with_route_access({"allow": []}), SRC).routes[0].access
    assert access == AccessList(allow=(), deny=())


def test_access_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "deny.txt").write_text(
        "# scanners\n\n192.0.2.0/24   # one\n  2001:db8:bad::/48\n198.51.100.7\n",
        encoding="utf-8")
    (tmp_path / "lists" / "allow.txt").write_text("10.0.0.0/8\n", encoding="utf-8")
    path = tmp_path / "proxy.toml"
    path.write_text(
        '[[listeners]]\naddress = "127.0.0.1:8080"\n'
        '[listeners.access]\ndeny = ["203.0.113.0/24"]\ndeny_file = "lists/deny.txt"\n'
        '[upstreams.backend]\nservers = ["127.0.0.1:9000"]\n'
        '[[routes]]\nupstream = "backend"\n'
        'access = { allow = "172.16.0.0/12", allow_file = "lists/allow.txt" }\n',
        encoding="utf-8")
    config = load_config(path)
    assert config.listeners[0].access == AccessList(
        allow=None,
        deny=(net("203.0.113.0/24"), net("192.0.2.0/24"), net("2001:db8:bad::/48"),
              net("198.51.100.7/32")))
    assert config.routes[0].access == AccessList(
        allow=(net("172.16.0.0/12"), net("10.0.0.0/8")), deny=())


# --------------------------------------------------------------------------
# Access lists: errors


@pytest.mark.parametrize(("make", "path"), [
    (with_listener_access, "listeners[0].access"),
    (with_route_access, "routes[0].access"),
])
def test_access_with_no_lists(make: Any, path: str) -> None:
    assert one_issue(make({})) == (path, "give allow, deny, allow_file or deny_file")


def test_access_unknown_key_is_suggested() -> None:
    found = issues(with_route_access({"alow": ["10.0.0.0/8"]}))
    assert ("routes[0].access.alow", "unknown key; did you mean 'allow'?") in found


@pytest.mark.parametrize(("access", "key", "reason"), [
    ({"deny": ["10.0.0.1/8"]}, "listeners[0].access.deny[0]",
     "host bits are set in '10.0.0.1/8'; did you mean '10.0.0.0/8'?"),
    ({"allow": ["10.0.0.0/8", "2001:db8::1/32"]}, "listeners[0].access.allow[1]",
     "host bits are set in '2001:db8::1/32'; did you mean '2001:db8::/32'?"),
    ({"deny": "192.168.1.1/24"}, "listeners[0].access.deny",
     "host bits are set in '192.168.1.1/24'; did you mean '192.168.1.0/24'?"),
    ({"deny": ["example.com"]}, "listeners[0].access.deny[0]",
     'expected an IP address or a CIDR network like "10.0.0.0/8", found \'example.com\''),
    ({"allow": ["10.0.0.0/33"]}, "listeners[0].access.allow[0]",
     'expected an IP address or a CIDR network like "10.0.0.0/8", found \'10.0.0.0/33\''),
    ({"deny": [7]}, "listeners[0].access.deny[0]", "expected a string, found integer 7"),
    ({"deny": 7}, "listeners[0].access.deny", "expected an array of CIDR strings"),
])
def test_bad_cidr(access: dict[str, Any], key: str, reason: str) -> None:
    found_key, found = one_issue(with_listener_access(access))
    assert found_key == key
    assert found.startswith(reason), found


def test_every_bad_entry_is_reported() -> None:
    found = issues(with_route_access({"allow": ["10.0.0.1/8", "ok?"], "deny": "x"}))
    assert [key for key, _ in found] == [
        "routes[0].access.allow[0]", "routes[0].access.allow[1]", "routes[0].access.deny"]


def test_access_must_be_a_table() -> None:
    key, reason = one_issue(with_route_access(["10.0.0.0/8"]))
    assert key == "routes[0].access"
    assert reason.startswith("expected a table like { allow = ")


@pytest.mark.parametrize("kind", ["allow_file", "deny_file"])
def test_unreadable_access_file(tmp_path: Path, kind: str) -> None:
    missing = tmp_path / "missing.txt"
    assert one_issue(with_route_access({kind: "missing.txt"}), str(tmp_path)) == (
        f"routes[0].access.{kind}", f"cannot read {missing}: No such file or directory")


def test_access_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    assert one_issue(with_listener_access({"allow_file": "lists"}), str(tmp_path)) == (
        "listeners[0].access.allow_file", f"cannot read {tmp_path / 'lists'}: Is a directory")


def test_access_file_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "deny.txt").write_bytes(b"10.0.0.0/8\n\xff\xfe\n")
    key, reason = one_issue(with_listener_access({"deny_file": "deny.txt"}), str(tmp_path))
    assert key == "listeners[0].access.deny_file"
    assert reason.startswith(f"cannot read {tmp_path / 'deny.txt'}: ")


def test_access_file_name_must_be_a_string() -> None:
    assert one_issue(with_listener_access({"deny_file": 3})) == (
        "listeners[0].access.deny_file", "expected a string, found integer 3")


def test_bad_lines_in_a_deny_file_name_their_line(tmp_path: Path) -> None:
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text(
        "# header\n192.0.2.0/24\n\n10.0.0.1/8   # typo\nexample.com\n", encoding="utf-8")
    found = issues(with_listener_access({"deny_file": "blocklist.txt"}), str(tmp_path))
    assert found == [
        ("listeners[0].access.deny_file",
         f"{blocklist} line 4: host bits are set in '10.0.0.1/8'; did you mean '10.0.0.0/8'?"),
        ("listeners[0].access.deny_file",
         f"{blocklist} line 5: expected an IP address or a CIDR network like"
         " \"10.0.0.0/8\", found 'example.com'"),
    ]


# --------------------------------------------------------------------------
# [server] trusted_proxies and real_ip_header


def test_trusted_proxies_forms() -> None:
    config = parse_config(minimal(server={
        "trusted_proxies": ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"],
        "real_ip_header": "Forwarded"}), SRC)
    assert config.server.trusted_proxies == (
        net("10.0.0.0/8"), net("192.0.2.7/32"), net("2001:db8::/32"), net("::1/128"))
    assert config.server.real_ip_header == "Forwarded"


def test_trusted_proxies_as_one_string() -> None:
    config = parse_config(minimal(server={"trusted_proxies": "127.0.0.1"}), SRC)
    assert config.server.trusted_proxies == (net("127.0.0.1/32"),)


def test_trusted_proxies_may_be_empty() -> None:
    assert parse_config(minimal(server={"trusted_proxies": []}), SRC).server.trusted_proxies == ()


@pytest.mark.parametrize(("value", "found"), [
    (8, "integer 8"),
    ({"cidr": "10.0.0.0/8"}, "table"),
    (True, "boolean true"),
])
def test_trusted_proxies_not_a_list(value: object, found: str) -> None:
    assert one_issue(minimal(server={"trusted_proxies": value})) == (
        "server.trusted_proxies", f'expected an array of CIDRs like "10.0.0.0/8", found {found}')


@pytest.mark.parametrize(("value", "reason"), [
    (["10.0.0.1/8"], "host bits are set in '10.0.0.1/8'; did you mean '10.0.0.0/8'?"),
    ("10.0.0.1/8", "host bits are set in '10.0.0.1/8'; did you mean '10.0.0.0/8'?"),
    (["lb.internal"],
     'expected an IP address or a CIDR network like "10.0.0.0/8", found \'lb.internal\''),
    ([10], "expected a string, found integer 10"),
])
def test_trusted_proxies_bad_entry(value: object, reason: str) -> None:
    key, found = one_issue(minimal(server={"trusted_proxies": value}))
    assert key.startswith("server.trusted_proxies")
    assert found == reason


def test_trusted_proxies_report_every_bad_entry_at_its_index() -> None:
    # As every other list of CIDRs: each bad entry at its own index, all at once.
    found = issues(minimal(server={"trusted_proxies": ["10.0.0.0/8", "lb", "10.0.0.1/8"]}))
    assert [key for key, _ in found] == ["server.trusted_proxies[1]",
                                         "server.trusted_proxies[2]"]


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"])
def test_real_ip_header_values(header: str) -> None:
    config = parse_config(minimal(server={"trusted_proxies": ["10.0.0.0/8"],
                                          "real_ip_header": header}), SRC)
    assert config.server.real_ip_header == header


@pytest.mark.parametrize(("header", "hint"), [
    ("X-Client-IP", "; did you mean 'X-Real-IP'?"),
    ("x-forwarded-for", "; did you mean 'X-Forwarded-For'?"),
    ("CF-Connecting-IP", ""),
])
def test_real_ip_header_must_be_one_of_three(header: str, hint: str) -> None:
    assert one_issue(minimal(server={"real_ip_header": header})) == (
        "server.real_ip_header",
        f"unsupported value {header!r} (supported: X-Forwarded-For, X-Real-IP, Forwarded)"
        f"{hint}")


def test_real_ip_header_must_be_a_string() -> None:
    key, reason = one_issue(minimal(server={"real_ip_header": ["X-Real-IP"]}))
    assert key == "server.real_ip_header"
    assert reason.startswith("expected a string")


# --------------------------------------------------------------------------
# What the runtime makes of an accepted limit


def test_an_accepted_rate_and_burst_allow_a_first_request() -> None:
    # The limiter keeps burst x (1e9 / rate) nanoseconds in an int64: a pair that
    # would overflow it ("0.1/h" with burst 1000000) is refused here (a burst
    # taking over a year to refill), and RateLimit clamps it anyway.
    data = with_limit({"rate": "0.1/h", "burst": 1_000_000})
    try:
        config = parse_config(data, SRC)
    except ConfigError as exc:
        assert {issue.key for issue in exc.errors} <= {"limits.x.rate", "limits.x.burst"}
        return
    spec = config.rate_limits["x"]
    limit = RateLimit("x", None, spec.rate, spec.burst, LimitTable(64))
    allowed, _ = limit.headers(b"client", now=1000.0)
    assert allowed


# --------------------------------------------------------------------------
# The shipped example


def test_security_example_passes_check_without_warnings(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check", str(EXAMPLES / "security.toml")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("config OK:")
    assert err == ""


def test_security_example_uses_every_protection() -> None:
    config = load_config(EXAMPLES / "security.toml")
    assert config.warnings == ()
    assert config.server.trusted_proxies
    listener_access = config.listeners[0].access
    assert listener_access is not None and listener_access.deny
    assert net("203.0.113.0/24") in listener_access.deny  # from blocklist.txt
    assert any(route.access is not None and route.access.allow for route in config.routes)
    assert len(config.rate_limits) >= 2
    assert {name for route in config.routes for name in route.limits} == set(config.rate_limits)
    assert config.limits.max_connections_per_ip > 0
    assert config.limits.max_in_flight > 0
    assert config.limits.max_requests_per_connection > 0
