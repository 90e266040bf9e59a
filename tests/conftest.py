"""Fixtures: real origin servers and a real fastproxy process, cleaned up even on failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servers import Handler, Origin, ProxyProcess, config_toml, free_port


@pytest.fixture
def make_origin() -> Iterator[Callable[..., Origin]]:
    started: list[Origin] = []

    def make(handler: Handler | None = None, name: str = "origin", port: int = 0) -> Origin:
        origin = Origin(handler, name, port).start()
        started.append(origin)
        return origin

    yield make
    for origin in started:
        origin.stop()


@pytest.fixture
def origin(make_origin: Callable[..., Origin]) -> Origin:
    return make_origin()


@pytest.fixture
def make_proxy(tmp_path: Path) -> Iterator[Callable[..., ProxyProcess]]:
    """make_proxy({"backend": [origin.address]}, workers=1, extra="[limits]\\n...")"""
    started: list[ProxyProcess] = []

    def make(upstreams: dict[str, list[str]], **options: object) -> ProxyProcess:
        port = free_port()
        workdir = tmp_path / f"proxy{len(started)}"
        workdir.mkdir()
        text = config_toml(upstreams, port, workdir / "access.log", **options)  # type: ignore[arg-type]
        proc = ProxyProcess(text, workdir, port)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


@pytest.fixture
def proxy(origin: Origin, make_proxy: Callable[..., ProxyProcess]) -> ProxyProcess:
    """fastproxy (1 worker) in front of one origin server."""
    return make_proxy({"backend": [origin.address]})
