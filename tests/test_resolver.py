"""Servers named by host name: resolved by each worker, re-resolved, last good kept."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fastproxy.config import parse_config
from fastproxy.resolver import Resolver, is_ip_literal, unique_addresses
from fastproxy.worker import Worker
from servers import Origin, ProxyProcess, free_port


def info(ip: str, family: int = socket.AF_INET) -> tuple[Any, ...]:
    """One getaddrinfo result for `ip`, port 80."""
    return (family, socket.SOCK_STREAM, 6, "", (ip, 80))


def worker_for(servers: list[str], tmp_path: Path) -> Worker:
    config = parse_config({
        "log": {"access": "off"},
        "listeners": [{"address": f"127.0.0.1:{free_port()}"}],
        "upstreams": {"app": {"servers": servers, "resolve_interval": "50ms"}},
        "routes": [{"upstream": "app"}],
    }, str(tmp_path / "test.toml"))
    return Worker(config, [])


def test_ip_literals_need_no_resolution() -> None:
    assert is_ip_literal("127.0.0.1") and is_ip_literal("::1")
    assert not is_ip_literal("localhost") and not is_ip_literal("example.internal")


def test_unique_addresses_keep_order() -> None:
    infos = [info("10.0.0.2"), info("10.0.0.1"), info("10.0.0.2"), info("::1", socket.AF_INET6)]
    assert unique_addresses(infos) == ["10.0.0.2", "10.0.0.1", "::1"]


def test_localhost_is_resolved_into_the_pool(tmp_path: Path) -> None:
    worker = worker_for(["localhost:8080", "127.0.0.1:8081"], tmp_path)
    named, literal = worker.groups["app"].pools

    async def main() -> tuple[bool, bool]:
        resolver = Resolver(asyncio.get_running_loop())
        watched = resolver.watch(literal, 0.05)
        ok = await resolver.refresh(named)
        resolver.stop()
        return watched, ok

    watched, ok = asyncio.run(main())
    assert not watched  # an IP address is used as it is
    assert ok and "127.0.0.1" in named.addresses
    assert literal.addresses == ()


def test_a_failed_resolution_keeps_the_last_good_addresses(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    worker = worker_for(["backend.internal:80"], tmp_path)
    pool = worker.groups["app"].pools[0]
    answers: list[Any] = [
        [info("10.1.0.1"), info("10.1.0.2")],
        socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
        [],
        [info("10.1.0.3")],
    ]

    async def lookup(host: str, port: int) -> list[Any]:
        assert (host, port) == ("backend.internal", 80)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def main() -> list[tuple[str, ...]]:
        resolver = Resolver(asyncio.get_running_loop(), lookup)
        seen = []
        for _ in range(4):
            await resolver.refresh(pool)
            seen.append(pool.addresses)
        return seen

    with caplog.at_level("WARNING", logger="fastproxy.resolver"):
        seen = asyncio.run(main())
    assert seen == [("10.1.0.1", "10.1.0.2"), ("10.1.0.1", "10.1.0.2"),
                    ("10.1.0.1", "10.1.0.2"), ("10.1.0.3",)]
    warnings = [r.getMessage() for r in caplog.records]
    assert any("Temporary failure" in m and "10.1.0.1, 10.1.0.2" in m for m in warnings)
    assert any("no addresses" in m for m in warnings)


def test_periodic_re_resolution_runs(tmp_path: Path) -> None:
    worker = worker_for(["backend.internal:80"], tmp_path)
    pool = worker.groups["app"].pools[0]
    calls: list[float] = []

    async def lookup(host: str, port: int) -> list[Any]:
        calls.append(asyncio.get_running_loop().time())
        return [info(f"10.2.0.{len(calls)}")]

    async def main() -> None:
        resolver = Resolver(asyncio.get_running_loop(), lookup)
        assert resolver.watch(pool, 0.05)
        await asyncio.sleep(0.3)
        resolver.stop()

    asyncio.run(main())
    assert 3 <= len(calls) <= 10
    assert pool.addresses == (f"10.2.0.{len(calls)}",)


def test_proxy_reaches_a_server_by_host_name(make_origin: Callable[..., Origin],
                                             tmp_path: Path) -> None:
    origin = make_origin(name="named")
    port = free_port()
    text = (f'[log]\naccess = "off"\nlevel = "info"\n[[listeners]]\naddress = "127.0.0.1:{port}"\n'
            f'[upstreams.app]\nservers = ["localhost:{origin.port}"]\n'
            f'[[routes]]\nupstream = "app"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        for i in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(f"GET /n{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(f"named /n{i}".encode())
        assert "resolves to" in proxy.log()
    finally:
        proxy.stop()
