"""`fastproxy route explain`: which route a request takes, why earlier ones did not match,
and what goes upstream — through the same compiled router the workers run."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastproxy.cli import main

CONFIG = """
[[listeners]]
address = "127.0.0.1:18090"
name = "public"
default_host = "example.com"

[[listeners]]
address = "127.0.0.1:18091"
name = "internal"

[upstreams.api]
servers = ["127.0.0.1:9001", "127.0.0.1:9002"]
[upstreams.web]
servers = ["127.0.0.1:9003"]

[[routes]]
name = "health"
match = { path = "/healthz" }
respond = { body = "ok\\n" }

[[routes]]
name = "api"
upstream = "api"
[routes.match]
host = ["example.com", "*.example.com"]
path_prefix = "/api"
whole_segments = true
methods = ["GET", "POST"]
headers = { "X-Env" = "prod" }
[routes.rewrite]
strip_prefix = "/api"
set_query = { src = "{client_ip}" }
[routes.request_headers]
remove = ["Cookie"]
set = { "X-Request-Id" = "{request_id}" }
[routes.response_headers]
set = { "Strict-Transport-Security" = "max-age=31536000" }

[[routes]]
name = "old"
match = { path_regex = '^/old/(?P<rest>.*)$' }
redirect = { to = "https://{host}/new/{rest}", status = 308 }

[[routes]]
name = "admin"
match = { path_prefix = "/admin", client_ip = "10.0.0.0/8", listener = "internal" }
upstream = "web"

[[routes]]
upstream = "web"
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "routes.toml"
    path.write_text(CONFIG)
    return str(path)


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["route", "explain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_match_with_rewrites_and_edits(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = explain(capsys, config, "GET", "http://www.Example.com:8080/api/users?x=1",
                             "-H", "X-Env: prod", "-H", "Cookie: a=b", "--client-ip", "192.0.2.1")
    assert code == 0, err
    lines = out.splitlines()
    assert 'routes[0] "health": no — path "/api/users" is not /healthz' in lines
    assert any(line.startswith('routes[1] "api": MATCH (host example.com | *.example.com')
               for line in lines)
    assert 'action:    proxy to upstream "api" (127.0.0.1:9001, 127.0.0.1:9002)' in lines
    assert "  GET /users?x=1&src=192.0.2.1 HTTP/1.1" in lines
    assert "  Host: www.Example.com:8080" in lines
    assert not any(line.startswith("  Cookie") for line in lines)
    assert any(line.startswith("  X-Request-Id: ") and len(line) == 16 + 32 for line in lines)
    assert "  set Strict-Transport-Security: max-age=31536000" in lines
    assert "warning" not in out
    assert "routes[2]" not in out  # nothing after the match


def test_reasons_for_each_failed_condition(config: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, config, "DELETE", "/api/x", "-H", "Host: api.example.com")
    assert code == 0
    assert 'routes[1] "api": no — method DELETE is not GET | POST' in out
    assert "routes[2] \"old\": no — path \"/api/x\" does not match '^/old/(?P<rest>.*)$'" in out
    assert 'routes[3] "admin": no — path "/api/x" does not start with /admin' in out
    assert "routes[4]: MATCH (every request)" in out
    code, out, _ = explain(capsys, config, "GET", "/api/x", "-H", "Host: api.example.com",
                           "-H", "X-Env: dev")
    assert 'routes[1] "api": no — header x-env: wanted "prod", found "dev"' in out
    code, out, _ = explain(capsys, config, "GET", "/apix", "-H", "Host: api.example.com")
    assert 'no — path "/apix" does not start with /api as whole segments' in out
    code, out, _ = explain(capsys, config, "GET", "/api", "-H", "Host: example.net",
                           "--listener", "internal")
    assert 'routes[1] "api": no — host "example.net" is not example.com | *.example.com' in out
    code, out, _ = explain(capsys, config, "GET", "/admin", "--listener", "internal",
                           "--client-ip", "192.0.2.9")
    assert 'routes[3] "admin": no — client 192.0.2.9 is not in 10.0.0.0/8' in out
    code, out, _ = explain(capsys, config, "GET", "/admin", "--client-ip", "10.1.1.1")
    assert 'routes[3] "admin": no — listener "public" is not internal' in out
    code, out, _ = explain(capsys, config, "GET", "/admin", "--listener", "internal",
                           "--client-ip", "10.1.1.1")
    assert 'routes[3] "admin": MATCH' in out


def test_listener_default_host(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, config, "GET", "/api/v", "-H", "Host: unknown.net",
                           "-H", "X-Env: prod")
    assert code == 0
    assert ('routed as: host "example.com" (the listener\'s default_host: no route names '
            '"unknown.net"), path "/api/v"') in out
    assert 'routes[1] "api": MATCH' in out


def test_redirect_and_respond(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = explain(capsys, config, "GET", "/old/a/%62?q", "-H", "Host: Example.COM")
    assert code == 0
    assert "action:    redirect (answered by the proxy)" in out
    assert "  HTTP/1.1 308 Permanent Redirect" in out
    assert "  Location: https://example.com/new/a/b" in out
    code, out, _ = explain(capsys, config, "GET", "/a/../healthz")
    assert 'routes[0] "health": MATCH (path = /healthz)' in out
    assert "  Content-Length: 3" in out
    assert out.rstrip().endswith("ok")


def test_no_match_and_refused_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "one.toml"
    path.write_text(CONFIG.split("[[routes]]")[0]
                    + '[[routes]]\nmatch = { path = "/only" }\nupstream = "api"\n'
                    + '[[routes]]\nmatch = { path = "/web" }\nupstream = "web"\n')
    code, out, _ = explain(capsys, str(path), "GET", "/other")
    assert code == 0
    assert "answer:    404 Not Found (no route matches)" in out
    code, out, _ = explain(capsys, str(path), "GET", "/../etc/passwd")
    assert "answer:    400 Bad Request" in out
    code, out, _ = explain(capsys, str(path), "GET", "/%zz")
    assert "answer:    400 Bad Request" in out


@pytest.mark.parametrize(("args", "message"), [
    (["GET", "ftp://example.com/"], "URL must be http://host/path or /path"),
    (["GET", "example.com/x"], "URL must be http://host/path or /path"),
    (["GET", "/x", "-H", "no colon"], "header must be 'Name: value'"),
    (["GET", "/x", "--client-ip", "nope"], "invalid client address 'nope'"),
    (["GET", "/x", "--listener", "nope"], "unknown listener 'nope' (defined: public, internal)"),
    (["G(T", "/x"], "the proxy would answer 400"),
    (["GET", "/x", "-H", "Host: a", "-H", "Host: b"], "more than one Host header"),
    (["GET", "/caf\u00e9"], "must be ASCII"),
])
def test_bad_requests_are_usage_errors(config: str, capsys: pytest.CaptureFixture[str],
                                       args: list[str], message: str) -> None:
    code, out, err = explain(capsys, config, *args)
    assert code == 2
    assert out == ""
    assert message in err
    assert "Traceback" not in err


def test_bad_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace('upstream = "web"\n', 'upstream = "nope"\n', 1))
    code, _, err = explain(capsys, str(path), "GET", "/")
    assert code == 1
    assert "routes[3].upstream" in err and "unknown upstream 'nope'" in err


def test_subcommand_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route"]) == 2
    assert "a subcommand is required (explain)" in capsys.readouterr().err


def test_query_reason_shows_the_value_the_rule_read(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "q.toml"
    path.write_text(CONFIG.split("[[routes]]")[0]
                    + '[[routes]]\nmatch = { query = { v = "2" } }\nupstream = "api"\n'
                    + '[[routes]]\nupstream = "web"\n')
    code, out, _ = explain(capsys, str(path), "GET", "/x?v=%31&v=2")
    assert code == 0
    assert 'routes[0]: no — query v: wanted "2", found "1"' in out  # the first, decoded
    code, out, _ = explain(capsys, str(path), "GET", "/x")
    assert 'routes[0]: no — query v: wanted "2", found absent' in out
