"""The command line: `fastproxy check`, `--version`, and how serve/demo are reached."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

import fastproxy
from fastproxy import cli
from fastproxy.config import Config

SRC_DIR = Path(__file__).resolve().parents[1] / "src"

GOOD = """\
[server]
workers = 2

[[listeners]]
address = "127.0.0.1:8080"

[upstreams.backend]
servers = ["127.0.0.1:9000", { address = "127.0.0.1:9001", weight = 2 }]

[upstreams.api]
servers = ["[::1]:9100"]

[[routes]]
match = { path_prefix = "/api" }
upstream = "api"

[[routes]]
upstream = "backend"
"""

BAD = """\
[server]
wrokers = 2

[[listeners]]
address = "127.0.0.1:0"

[upstreams.backend]
servers = ["127.0.0.1:9000"]

[[routes]]
upstream = "nope"
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if SRC_DIR.is_dir():  # a checkout; copied beside an installed package (ci/install-test.sh)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "fastproxy", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_check_good_config(tmp_path: Path) -> None:
    path = write(tmp_path / "good.toml", GOOD)
    result = run("check", str(path))
    assert result.returncode == 0
    assert result.stdout == (
        "config OK: 1 listener (127.0.0.1:8080), 2 upstreams (3 servers), 2 routes, 2 workers\n"
    )
    assert result.stderr == ""


def test_check_prints_warnings_on_stderr(tmp_path: Path) -> None:
    text = GOOD + '\n[[routes]]\nmatch = { host = "a.com" }\nupstream = "api"\n'
    path = write(tmp_path / "warn.toml", text)
    result = run("check", str(path))
    assert result.returncode == 0
    assert result.stdout.startswith("config OK: 1 listener (127.0.0.1:8080), ")
    assert result.stderr == (
        f"warning: {path}: routes[2]: unreachable: routes[1] matches every request\n"
    )


def test_check_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.toml", BAD)
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}: server.wrokers: unknown key; did you mean 'workers'?",
        f"error: {path}: listeners[0].address: port must be a number from 1 to 65535, found '0'",
        f"error: {path}: routes[0].upstream: unknown upstream 'nope' (defined: backend)",
    ]
    assert "Traceback" not in result.stderr


ROUTING = """\
[server]
workers = 1

[routing]
merge_slashes = false

[[listeners]]
address = "127.0.0.1:8080"
name = "public"
default_host = "example.com"

[upstreams.api]
servers = ["127.0.0.1:9100"]

[[routes]]
name = "health"
match = { path = "/healthz", methods = ["GET", "HEAD"] }
respond = { body = "ok\\n", headers = { "Content-Type" = "text/plain" } }

[[routes]]
name = "old"
match = { host = ["example.com", "*.example.com"], path_prefix = "/old", whole_segments = true }
redirect = { to = "https://{host}/new{path}", status = 308 }

[[routes]]
name = "users"
match = { path_regex = '^/u/(?P<id>[0-9]+)$', listener = "public", client_ip = "10.0.0.0/8" }
upstream = "api"

[routes.rewrite]
regex = '^/u/(.*)$'
replace = "/users/{1}"
set_query = { id = "{id}" }
host = "api.internal"

[routes.request_headers]
set = { "X-Real-IP" = "{client_ip}" }
remove = ["X-Debug"]

[routes.response_headers]
add = { "X-Request-Id" = "{request_id}" }

[[routes]]
name = "health-again"
match = { path = "/healthz", methods = "GET", headers = { "X-Probe" = true } }
upstream = "api"
"""


def test_check_full_routing_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", ROUTING)
    result = run("check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "config OK: 1 listener (127.0.0.1:8080), 1 upstream (1 server), 4 routes, 1 worker\n"
    )
    # The shadow warning names the earlier route by its label.
    assert result.stderr == (
        f'warning: {path}: routes[3]: unreachable: routes[0] "health" matches every request'
        " this route matches\n"
    )


def test_check_reports_every_route_error_with_its_key_path(tmp_path: Path) -> None:
    text = ROUTING.replace('"*.example.com"', '"a.*.example.com"')
    text = text.replace('replace = "/users/{1}"', 'replace = "/users/{2}"')
    text = text.replace('"X-Real-IP" = "{client_ip}"', '"X-Forwarded-For" = "{clientip}"')
    text = text.replace("status = 308", "status = 200")
    text = text.replace('listener = "public"', 'listener = "pubic"')
    path = write(tmp_path / "bad-routing.toml", text)
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {path}: routes[1].match.host[1]: a wildcard must be a whole leading label,"
        " as in \"*.example.com\", found 'a.*.example.com'",
        f"error: {path}: routes[1].redirect.status: must be one of 301, 302, 303, 307, 308,"
        " found 200",
        f"error: {path}: routes[2].match.listener: unknown listener 'pubic' (defined: public)",
        f"error: {path}: routes[2].rewrite.replace: {{2}} refers to group 2, but rewrite.regex"
        " has only 1 group",
        f'error: {path}: routes[2].request_headers.set."X-Forwarded-For":'
        " 'X-Forwarded-For' is set by the proxy itself and cannot be edited",
    ]


def test_check_toml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path / "syntax.toml", "[server]\nworkers = = 2\n")
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {path}: (toml): ")
    assert "line 2" in line
    assert "Traceback" not in result.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    result = run("check", str(path))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"error: {path}: (file): cannot read: No such file or directory\n"


def test_version() -> None:
    import uvloop

    from fastproxy import _compress, _http, _tls

    result = run("--version")
    assert result.returncode == 0
    assert result.stderr == ""
    openssl = _tls.openssl_version()
    assert result.stdout == (
        f"fastproxy {fastproxy.__version__}\n"
        f"Python {platform.python_version()} ({platform.python_implementation()})\n"
        f"uvloop {uvloop.__version__}\n"
        "llhttp 9.3.0 (compiled in)\n"
        f"OpenSSL {openssl} (TLS engine)\n"
        f"zlib {_compress.zlib_version()} (gzip)\n"
    )
    # The compiled llhttp is the pinned sdist's (build_support pins 9.3.0.0).
    assert _http.llhttp_version() == "9.3.0"
    # The TLS engine's OpenSSL is a 3.x ("3.0.13"), as _tls needs. It need not be the
    # one Python's ssl module reports (a wheel carries its own).
    assert re.fullmatch(r"3\.\d+\.\d+\S*", openssl), openssl
    assert re.fullmatch(r"1\.\d+(\.\d+)*", _compress.zlib_version())


def test_no_command_is_a_usage_error() -> None:
    result = run()
    assert result.returncode == 2
    assert result.stdout == ""
    assert "a command is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_are_a_usage_error() -> None:
    result = run("check")
    assert result.returncode == 2
    assert "the following arguments are required: CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------
# In-process: serve and demo hand over to modules imported lazily


def test_serve_passes_the_loaded_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[Config] = []

    def serve(config: Config) -> int:
        seen.append(config)
        return 7

    monkeypatch.setitem(sys.modules, "fastproxy.master", types.SimpleNamespace(serve=serve))
    path = write(tmp_path / "good.toml", GOOD)
    assert cli.main(["serve", str(path)]) == 7
    [config] = seen
    assert config.source == str(path)
    assert list(config.upstreams) == ["backend", "api"]
    assert capsys.readouterr().err == ""


def test_serve_refuses_bad_config_without_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def serve(config: Config) -> int:
        raise AssertionError("serve must not be called with a bad config")

    monkeypatch.setitem(sys.modules, "fastproxy.master", types.SimpleNamespace(serve=serve))
    path = write(tmp_path / "bad.toml", BAD)
    assert cli.main(["serve", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"error: {path}: server.wrokers: unknown key; did you mean 'workers'?"
    assert len(err) == 3


@pytest.mark.parametrize(("argv", "port"), [(["demo"], 8080), (["demo", "--port", "9999"], 9999)])
def test_demo_runs_with_port(monkeypatch: pytest.MonkeyPatch, argv: list[str], port: int) -> None:
    calls: list[dict[str, Any]] = []

    def run_demo(**kwargs: Any) -> int:
        calls.append(kwargs)
        return 0

    monkeypatch.setitem(sys.modules, "fastproxy.demo", types.SimpleNamespace(run_demo=run_demo))
    assert cli.main(argv) == 0
    assert calls == [{"port": port}]


def test_keyboard_interrupt_exits_130_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def serve(config: Config) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "fastproxy.master", types.SimpleNamespace(serve=serve))
    path = write(tmp_path / "good.toml", GOOD)
    assert cli.main(["serve", str(path)]) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""


@pytest.mark.parametrize("name", ["demo.toml", "routing.toml", "balancing.toml", "caching.toml",
                                  "compression.toml", "protocols.toml"])
def test_shipped_examples_pass_check_without_warnings(name: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from fastproxy.cli import main

    path = Path(__file__).resolve().parent.parent / "examples" / name
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("config OK:")
    assert "warning" not in err and "error" not in err


def test_shipped_tls_example_passes_check(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """examples/tls.toml names certificate files that are not shipped (private keys have
    no place in the repository): check it beside certificates made here."""
    import shutil

    import trustme

    from fastproxy.cli import main

    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ecdsa_ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    issued = {
        "site-rsa": ca.issue_cert("example.com", "www.example.com",
                                  key_type=trustme.KeyType.RSA),
        "site-ecdsa": ecdsa_ca.issue_cert("example.com", "www.example.com"),
        "api": ecdsa_ca.issue_cert("api.example.com", "*.api.example.com"),
    }
    for name, cert in issued.items():
        cert.cert_chain_pems[0].write_to_path(str(certs / f"{name}.pem"))
        cert.private_key_pem.write_to_path(str(certs / f"{name}.key"))
    ca.cert_pem.write_to_path(str(certs / "clients-ca.pem"))
    ecdsa_ca.cert_pem.write_to_path(str(certs / "internal-ca.pem"))
    example = Path(__file__).resolve().parent.parent / "examples" / "tls.toml"
    path = Path(shutil.copy(example, tmp_path / "tls.toml"))
    assert main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == ("config OK: 3 listeners (0.0.0.0:8443, 0.0.0.0:9443, 0.0.0.0:8080),"
                   f" 2 upstreams (4 servers), 2 routes, {os.cpu_count()} workers\n")
    assert err == ""
