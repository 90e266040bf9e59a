"""Config of tcp listeners (`mode = "tcp"`): what is accepted, and every refusal
names the file, the key and the reason; `fastproxy check` prints them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastproxy.config import ConfigError, SniRule, TcpSettings, parse_config

SRC = "tcp.toml"


def config(listener: dict[str, Any], **more: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "listeners": [{"address": "127.0.0.1:5432", "mode": "tcp", **listener}],
        "upstreams": {"pg": {"servers": ["127.0.0.1:15432"]},
                      "a": {"servers": ["127.0.0.1:15433"]}},
    }
    data.update(more)
    return data


def issues(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SRC)
    assert all(issue.file == SRC for issue in info.value.errors)
    return [(issue.key, issue.reason) for issue in info.value.errors]


def test_accepted_with_defaults_and_no_routes() -> None:
    cfg = parse_config(config({"upstream": "pg"}), SRC)
    (listener,) = cfg.listeners
    assert listener.mode == "tcp"
    assert listener.tcp == TcpSettings("pg", None, 600.0, 5.0, 16384)
    assert cfg.routes == ()

def test_sni_rules_parsed() -> None:
    cfg = parse_config(config({
        "sni": [{"names": ["A.Example.com.", "*.b.example.com"], "upstream": "a"}],
        "idle_timeout": "1h", "client_hello_timeout": "2s",
        "client_hello_max_bytes": "4k"}), SRC)
    tcp = cfg.listeners[0].tcp
    assert tcp is not None
    assert tcp.upstream is None
    assert tcp.sni == (SniRule(("a.example.com", "*.b.example.com"), "a"),)
    assert (tcp.idle_timeout, tcp.client_hello_timeout, tcp.client_hello_max_bytes) == \
        (3600.0, 2.0, 4096)


@pytest.mark.parametrize(("listener", "key", "reason"), [
    ({"upstream": "pg", "default_host": "a.com"}, "listeners[0].default_host",
     "HTTP only"),
    ({"upstream": "pg", "https_redirect": 443}, "listeners[0].https_redirect", "HTTP only"),
    ({"upstream": "pg", "max_body_bytes": "1m"}, "listeners[0].max_body_bytes", "HTTP only"),
    ({}, "listeners[0]", "needs upstream"),
    ({"upstream": "nope"}, "listeners[0].upstream", "unknown upstream 'nope'"),
    ({"upstream": "pg", "mode": "udp"}, "listeners[0].mode", "unsupported value 'udp'"),
    ({"upstream": "pg", "client_hello_timeout": "1s"}, "listeners[0].client_hello_timeout",
     "only with sni"),
    ({"sni": []}, "listeners[0].sni", "at least one"),
    ({"sni": [{"names": ["a.com"]}]}, "listeners[0].sni[0]", "needs names"),
    ({"sni": [{"names": ["a..com"], "upstream": "a"}]}, "listeners[0].sni[0].names[0]",
     "expected a host name"),
    ({"sni": [{"names": ["a.com"], "upstream": "zz"}]}, "listeners[0].sni[0].upstream",
     "unknown upstream"),
    ({"sni": [{"names": ["a.com"], "upstream": "a"}, {"names": ["A.com"], "upstream": "pg"}]},
     "listeners[0].sni[1].names", "already routed by listeners[0].sni[0]"),
    ({"sni": [{"names": ["a.com"], "upstream": "a", "port": 1}]}, "listeners[0].sni[0].port",
     "unknown key"),
    ({"upstream": "pg", "idle_timeout": "0s"}, "listeners[0].idle_timeout",
     "greater than 0"),
    ({"upstream": "pg", "sni": [{"names": ["a.com"], "upstream": "a"}],
      "client_hello_max_bytes": 100}, "listeners[0].client_hello_max_bytes", "must be from"),
])
def test_refused(listener: dict[str, Any], key: str, reason: str) -> None:
    found = issues(config(listener))
    assert any(k == key and reason in r for k, r in found), found


def test_sni_with_tls_refused(tmp_path: Path) -> None:
    import trustme

    cert = trustme.CA().issue_cert("a.com")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    tls = {"certificates": [{"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}]}
    found = issues(config({"sni": [{"names": ["a.com"], "upstream": "a"}], "tls": tls}))
    assert found == [("listeners[0].sni", "routing by SNI passes TLS through unread; with tls "
                      "the proxy terminates TLS itself: give one or the other")]
    # tls alone is fine: terminated, then plain bytes.
    assert parse_config(config({"upstream": "pg", "tls": tls}), SRC).listeners[0].tls


def test_tcp_keys_refused_on_http_listener() -> None:
    data = {"listeners": [{"address": "127.0.0.1:8080", "upstream": "pg",
                           "idle_timeout": "1m"}],
            "upstreams": {"pg": {"servers": ["127.0.0.1:1"]}},
            "routes": [{"upstream": "pg"}]}
    found = issues(data)
    assert [k for k, _ in found] == ["listeners[0].upstream", "listeners[0].idle_timeout"]
    assert all('only for mode = "tcp" listeners' in r for _, r in found)


def test_route_naming_a_tcp_listener_refused() -> None:
    data = config({"upstream": "pg", "name": "db"})
    data["listeners"].append({"address": "127.0.0.1:8080", "name": "web"})
    data["routes"] = [{"match": {"listener": "web"}, "upstream": "a"},
                      {"match": {"listener": ["web", "db"]}, "upstream": "a"}]
    found = issues(data)
    assert found == [("routes[1].match.listener", "'db' is a mode = \"tcp\" listener: routes "
                      "apply to HTTP listeners only (a tcp listener's connections go to its "
                      "upstream)")]


def test_routes_still_required_with_an_http_listener() -> None:
    data = config({"upstream": "pg"})
    data["listeners"].append({"address": "127.0.0.1:8080"})
    assert ("routes", "missing: at least one [[routes]] table is required") in issues(data)


def test_upstream_options_that_cannot_apply() -> None:
    data = config({"upstream": "pg"})
    data["upstreams"]["pg"] = {"servers": ["https://127.0.0.1:1"],
                               "sticky": {"cookie": "s"}}
    keys = [k for k, _ in issues(data)]
    assert "upstreams.pg.servers[0].address" in keys
    assert "upstreams.pg.sticky" in keys
    data["upstreams"]["pg"] = {"servers": ["127.0.0.1:1"], "balance": "ring",
                               "hash_key": "{host}"}
    assert [k for k, _ in issues(data)] == ["upstreams.pg.hash_key"]
    data["upstreams"]["pg"]["hash_key"] = "{client_ip}"
    parse_config(data, SRC)


def test_health_check_type_tcp() -> None:
    data = config({"upstream": "pg"})
    data["upstreams"]["pg"]["health_check"] = {"type": "tcp", "interval": "3s"}
    check = parse_config(data, SRC).upstreams["pg"].health_check
    assert check is not None and check.type == "tcp"
    data["upstreams"]["pg"]["health_check"] = {"type": "tcp", "path": "/x"}
    assert issues(data) == [("upstreams.pg.health_check.path",
                             'not with type = "tcp" (a connect that succeeds passes; nothing '
                             "is sent)")]


def test_unused_upstream_warning_counts_tcp_use() -> None:
    cfg = parse_config(config({"upstream": "pg"}), SRC)
    assert cfg.warnings == (f"{SRC}: upstreams.a: not used by any route",)


def test_fastproxy_check_explains(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[listeners]]\naddress = "127.0.0.1:5432"\nmode = "tcp"\n'
                    'upstream = "pg"\ndefault_host = "x.com"\n\n'
                    '[upstreams.pg]\nservers = ["127.0.0.1:1"]\n')
    result = subprocess.run([sys.executable, "-m", "fastproxy", "check", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert f"{path}: listeners[0].default_host: not for a mode = \"tcp\" listener" \
        in result.stderr, result.stderr
    good = tmp_path / "good.toml"
    good.write_text(path.read_text().replace('default_host = "x.com"\n', ""))
    result = subprocess.run([sys.executable, "-m", "fastproxy", "check", str(good)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK: 1 listener (127.0.0.1:5432 tcp), ")
