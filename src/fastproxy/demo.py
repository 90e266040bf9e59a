"""`fastproxy demo`: two small demo upstream servers and a proxy in front of them."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import tomllib
from importlib import resources
from typing import Any

from fastproxy._http import HttpParseError, MessageHead, RequestParser
from fastproxy.config import ConfigError, parse_config

DEMO_CONFIG = "demo.toml"


class DemoBackend(asyncio.Protocol):
    """A tiny origin server: tells which backend answered and what it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport: Any = None
        self.parser = RequestParser(self)
        self.head: MessageHead | None = None
        self.body = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            while data:
                n = self.parser.feed(data)
                data = data[n:]
        except HttpParseError as e:
            self.transport.write(b"HTTP/1.1 %d Bad Request\r\nConnection: close\r\n"
                                 b"Content-Length: 0\r\n\r\n" % e.status)
            self.transport.close()

    def on_head(self, head: MessageHead) -> None:
        self.head = head
        self.body = 0

    def on_body(self, data: Any) -> None:
        self.body += len(data)

    def on_message_complete(self) -> None:
        head = self.head
        assert head is not None
        path = head.target.decode("latin-1")
        if path.startswith("/big"):
            body = b"x" * (1024 * 1024)
            ctype = b"application/octet-stream"
        else:
            info = {
                "backend": self.name,
                "method": head.method.decode(),
                "path": path,
                "body_bytes": self.body,
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers()},
            }
            body = (json.dumps(info, indent=2) + "\n").encode()
            ctype = b"application/json"
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nServer: fastproxy-demo\r\nContent-Type: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (ctype, len(body)))
        if not head.is_head_request:
            self.transport.write(body)
        if not head.keep_alive:
            self.transport.close()


def run_backends(addresses: list[tuple[str, int]]) -> None:
    """Serve the demo backends until SIGTERM (runs in its own process)."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop: asyncio.Future[None] = loop.create_future()

        def request_stop() -> None:
            if not stop.done():
                stop.set_result(None)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop)
        for i, (host, port) in enumerate(addresses, 1):
            await loop.create_server(functools.partial(DemoBackend, f"demo-{i}"), host, port)
        await stop

    uvloop.run(main())


def run_demo(port: int = 8080) -> int:
    from fastproxy.master import serve

    config_file = resources.files("fastproxy").joinpath("data", DEMO_CONFIG)
    text = config_file.read_text()
    config_path = str(config_file)
    data = tomllib.loads(text)
    data["listeners"][0]["address"] = f"127.0.0.1:{port}"
    try:
        config = parse_config(data, source=f"<built-in {DEMO_CONFIG}>")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    backends = [(s.host, s.port) for s in config.upstreams["demo"].servers]
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            run_backends(backends)
        except BaseException as e:  # e.g. the port is taken
            print(f"demo backends: {e}", file=sys.stderr)
            code = 1
        finally:
            os._exit(code)
    url = f"http://127.0.0.1:{port}"
    print(f"""
fastproxy demo: a proxy on {url} in front of demo upstreams on
{', '.join(f'{h}:{p}' for h, p in backends)} (round robin). Try:

  curl -i {url}/                      # which backend answered, what it received
  curl -s {url}/ | grep backend       # run twice: the backends alternate
  curl -s -o /dev/null -w '%{{size_download}} bytes\\n' {url}/big
  curl -i -H 'Host: bad host' {url}/  # a malformed request gets a 400
  curl -i {url}/healthz               # answered by the proxy itself (a respond route)
  curl -s {url}/api/users             # "/api" stripped, an X-Request-Id added
  fastproxy route explain {config_path} GET {url}/api/users   # why it went there

The config it runs: {config_path} (also examples/{DEMO_CONFIG}). Ctrl-C stops it.
""", flush=True)
    try:
        return serve(config)
    finally:
        try:
            os.kill(pid, signal.SIGTERM)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
