"""The WAF in the request path: [waf] on every route unless `waf = false`."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from fastproxy.config import ConfigError, parse_config
from servers import Origin, ProxyProcess, free_port


def get(port: int, target: str, headers: str = "") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_waf_blocks_attacks_on_its_routes(make_origin: Callable[..., Origin],
                                          tmp_path: Path) -> None:
    origin = make_origin(name="app")
    port = free_port()
    text = (f'[log]\naccess = "off"\nlevel = "info"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            '[waf]\nrule_sets = ["traversal", "sqli", "xss", "scanners"]\n'
            '[[waf.rules]]\nid = "no-wp"\nmatch = { target = "path", prefix = "/wp-admin" }\n'
            'action = "block"\n'
            f'[upstreams.app]\nservers = ["{origin.address}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/raw" }\nwaf = false\nupstream = "app"\n'
            '[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        assert get(port, "/search?q=O%27Reilly+books")[0] == 200
        code, data = get(port, "/item?id=1%20UNION%20SELECT%20password%20FROM%20users")
        assert code == 403 and b"matched rule" in data
        assert get(port, "/static/..%2f..%2fetc/passwd")[0] == 403
        assert get(port, "/", "User-Agent: sqlmap/1.7\r\n")[0] == 403
        assert get(port, "/wp-admin/setup.php")[0] == 403
        # The route that turns it off forwards the same request.
        assert get(port, "/raw/item?id=1%20UNION%20SELECT%20password%20FROM%20users")[0] == 200
        targets = [r.target for r in origin.requests]
        assert "/search?q=O%27Reilly+books" in targets
        assert not any("UNION" in t for t in targets if not t.startswith("/raw"))
        assert "waf blocked sqli/" in proxy.log()
    finally:
        proxy.stop()


def test_waf_config_errors() -> None:
    base = {"listeners": [{"address": "127.0.0.1:1"}],
            "upstreams": {"a": {"servers": ["127.0.0.1:2"]}}, "routes": [{"upstream": "a"}]}
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "waf": {"rule_sets": ["sqli", "nope"]}})
    assert [i.key for i in info.value.errors] == ["waf"]
    with pytest.raises(ConfigError) as info:
        parse_config({**base, "waf": {"rules": [
            {"id": "evil", "match": {"target": "path", "regex": "(a+)+$"}, "action": "block"}]}})
    assert info.value.errors[0].key.startswith("waf.rules[0]")
    assert parse_config({**base, "waf": {}}).waf is not None
