"""Config refusals where the protocol features meet: PROXY headers and HTTP/2
servers, tcp listeners and HTTP/2 servers, gRPC health checks and type = "tcp",
and the ALPN a tcp listener with tls offers."""

from __future__ import annotations

from typing import Any

import pytest

from fastproxy.config import ConfigError, parse_config

ROUTE = [{"upstream": "a"}]


def keys(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return [issue.key for issue in info.value.errors]


def http(upstream: dict[str, Any]) -> dict[str, Any]:
    return {"listeners": [{"address": "127.0.0.1:1"}], "upstreams": {"a": upstream},
            "routes": ROUTE}


def tcp(upstream: dict[str, Any]) -> dict[str, Any]:
    return {"listeners": [{"address": "127.0.0.1:1", "mode": "tcp", "upstream": "a"}],
            "upstreams": {"a": upstream}}


def test_no_proxy_header_on_http2_connections() -> None:
    assert keys(http({"servers": ["h2c://127.0.0.1:2"], "proxy_protocol": "v2"})) \
        == ["upstreams.a.proxy_protocol"]
    assert keys(http({"servers": ["127.0.0.1:2"], "protocol": "h2", "proxy_protocol": "v1"})) \
        == ["upstreams.a.proxy_protocol"]
    assert keys(http({"servers": [{"address": "h2c://127.0.0.1:2", "proxy_protocol": "v1"}]})) \
        == ["upstreams.a.servers[0].proxy_protocol"]
    # HTTP/1.1 servers beside them keep it.
    parse_config(http({"servers": ["127.0.0.1:2"], "proxy_protocol": "v2"}))


def test_tcp_listeners_refuse_http2_servers() -> None:
    assert keys(tcp({"servers": ["h2c://127.0.0.1:2"]})) == ["upstreams.a.servers[0].address"]
    assert keys(tcp({"servers": ["127.0.0.1:2"], "protocol": "h2"})) == ["upstreams.a.protocol"]
    parse_config(tcp({"servers": ["127.0.0.1:2"], "proxy_protocol": "v1"}))


def test_grpc_health_check_is_not_a_tcp_check() -> None:
    check = {"type": "tcp", "grpc_service": ""}
    assert keys(http({"servers": ["h2c://127.0.0.1:2"], "health_check": check})) \
        == ["upstreams.a.health_check.grpc_service"]


def test_tcp_listener_with_tls_offers_http11_unless_told(tmp_path: Any) -> None:
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("site.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    tls = {"certificates": [{"cert": str(tmp_path / "c.pem"), "key": str(tmp_path / "k.pem")}]}
    raw = tcp({"servers": ["127.0.0.1:2"]})
    raw["listeners"][0]["tls"] = tls
    assert parse_config(raw).listeners[0].tls.alpn == ("http/1.1",)
    raw["listeners"][0]["tls"] = {**tls, "alpn": ["h2"]}  # asked for: kept
    assert parse_config(raw).listeners[0].tls.alpn == ("h2",)
    # An HTTP listener offers HTTP/2 first by default.
    raw = http({"servers": ["127.0.0.1:2"]})
    raw["listeners"][0]["tls"] = tls
    assert parse_config(raw).listeners[0].tls.alpn == ("h2", "http/1.1")
