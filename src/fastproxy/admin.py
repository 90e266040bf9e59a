"""The admin API: JSON over HTTP/1.1 on `[admin] address`, served by a process of
its own (the master forks one per generation, next to the workers), so that a
slow or hostile admin client never costs a worker anything.

Endpoints (all answers are JSON; with `[admin] token`, every request needs
``Authorization: Bearer TOKEN``):

* ``GET /status``: version, uptime, the config file and its SHA-256, the
  generation, the workers' pids, the last reload's result;
* ``POST /reload``: reload the config file (as SIGHUP does) and answer with
  the result, once the master has one (the old generation's admin process
  answers it, then goes);
* ``POST /cache/purge``: a JSON object with one of ``url``, ``prefix``, ``tag``
  or ``all`` (true), and optionally ``cache`` (a cache's name; default every
  cache) and ``soft`` (true: mark stale, kept to revalidate and for
  stale-if-error; default false: removed);
* ``GET /cache/purges``: the purges the workers still apply;
* ``GET /api/stats?window=SECONDS``: the live dashboard's data (see
  `fastproxy.dashboard`): per-second series and totals of the last SECONDS
  (10..3600, default 300);
* ``GET /dashboard``: the dashboard page (HTML; it holds no data, so it is served
  without the token: the page asks for it and sends it with each /api/stats).

A purge is a record in the master's shared `Purges` table: each worker checks
a stored response against the purges made after it was fetched, the first
time it meets it (see `_httpcache.RouteCache.purged`), so a purge costs the
same for one URL or a million. Purges of caches with a disk tier are also
appended to ``purges.log`` in the cache's directory and read again when the
proxy starts, so that a restart does not bring purged files back.

The master publishes what only it knows (pids, reload results) on a small
shared `StatusBoard`; the admin process reads it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import mmap
import os
import signal
import socket
import struct
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from fastproxy import __version__
from fastproxy._actions import Template
from fastproxy._http import HttpParseError, MessageHead, RequestParser
from fastproxy._httpcache import (
    DEFAULT_KEY,
    PURGE_KINDS,
    PURGE_NAME_MAX,
    PURGE_SLOTS,
    PURGE_TEXT_MAX,
    Purges,
)
from fastproxy._peers import ADMIN_STATES, PeerTable, slot_layout
from fastproxy._router import new_context
from fastproxy._stats import Stats
from fastproxy.config import CacheSpec, Config
from fastproxy.dashboard import Sampler, TopLists, page, parse_window
from fastproxy.metrics import CLASSES, UPSTREAM_COUNTS, Layout, render
from fastproxy.metrics import SERVER as SERVER_FIELDS
from fastproxy.routeconf import parse_template

log = logging.getLogger("fastproxy.admin")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT = 10.0  # seconds a client has to send its whole request
WRITE_TIMEOUT = 10.0  # seconds a client has to take the whole answer
MAX_CLIENTS = 64  # connections served at once; more get 503 and are closed
RELOAD_WAIT = 30.0  # seconds POST /reload waits for the master's verdict
PURGE_LOG = "purges.log"


# -- what the master publishes -----------------------------------------------------------

class StatusBoard:
    """A JSON document the master writes and the admin process reads, in shared
    memory mapped before the fork. A sequence number, odd while a write is under
    way, lets a reader retry instead of reading half of one."""

    SIZE = 256 * 1024
    _HEAD = struct.Struct("<QI")  # sequence, length

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, self.SIZE, flags=mmap.MAP_SHARED)

    def publish(self, document: Mapping[str, Any]) -> None:
        data = json.dumps(document, separators=(",", ":")).encode()
        if len(data) > self.SIZE - self._HEAD.size:
            data = json.dumps({"error": "status too large"}).encode()
        seq, _ = self._HEAD.unpack_from(self._map, 0)
        self._HEAD.pack_into(self._map, 0, seq + 1, 0)  # odd: being written
        self._map[self._HEAD.size:self._HEAD.size + len(data)] = data
        self._HEAD.pack_into(self._map, 0, seq + 2, len(data))

    def read(self) -> dict[str, Any]:
        for _ in range(1000):
            seq, length = self._HEAD.unpack_from(self._map, 0)
            if seq % 2 == 0:
                data = self._map[self._HEAD.size:self._HEAD.size + length]
                if self._HEAD.unpack_from(self._map, 0)[0] == seq:
                    return json.loads(data) if data else {}
            time.sleep(0.0001)
        return {}


def config_digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


# -- purges ------------------------------------------------------------------------------

class PurgeError(ValueError):
    """A purge request that cannot be done: the message says why."""


_URL_KEY = Template(parse_template(DEFAULT_KEY))


def purge_url(config: Config, url: str) -> bytes:
    """The URL as the cache records it (scheme://host/path?query, the host and the
    path normalized as the proxy does for its default cache key)."""
    from fastproxy.routing import ExplainError, _parse, _request_bytes

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as e:  # a bracket left open: "Invalid IPv6 URL"
        raise PurgeError(f"url {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PurgeError(f"url must be absolute, like http://example.com/path, found {url!r}")
    try:
        head = _parse(_request_bytes("GET", url, ()), config)
    except ExplainError as e:
        raise PurgeError(f"url {url!r}: {e}") from None
    ctx = new_context(head, config.routing.merge_slashes, b"127.0.0.1", parts.scheme.encode(),
                      0, b"admin")
    if ctx.path is None:
        raise PurgeError(f"url {url!r}: the path or authority is invalid")
    return bytes(_URL_KEY.render_for(ctx))


def purge_prefix(config: Config, prefix: str) -> bytes:
    """A URL prefix: scheme and host as the cache records them (as for `purge_url`:
    lower case, no port, no trailing dot), the rest as given (compare it with what
    `fastproxy cache explain` shows as the URL)."""
    try:
        parts = urllib.parse.urlsplit(prefix)
    except ValueError as e:
        raise PurgeError(f"prefix {prefix!r}: {e}") from None
    _, sep, rest = prefix.partition("://")
    if parts.scheme not in ("http", "https") or not parts.netloc or not sep \
            or not rest.startswith(parts.netloc):
        raise PurgeError("prefix must start with a scheme and a host, like "
                         f"http://example.com/static/, found {prefix!r}")
    path = rest[len(parts.netloc):]
    try:
        path_bytes = path.encode("ascii")
    except UnicodeEncodeError:
        raise PurgeError("prefix must be ASCII (percent-encode the path)") from None
    origin = purge_url(config, f"{parts.scheme}://{parts.netloc}/")  # b"http://host/"
    return origin[:-1] + path_bytes


def parse_purge(config: Config, body: Any) -> tuple[str, bytes, str, bool]:
    """(kind, text, cache or "", soft) from a purge request's JSON object."""
    if not isinstance(body, dict):
        raise PurgeError('expected a JSON object like {"url": "http://example.com/a"}')
    unknown = sorted(set(body) - {"url", "prefix", "tag", "all", "cache", "soft"})
    if unknown:
        raise PurgeError(f"unknown field {unknown[0]!r}: use url, prefix, tag or all, "
                         "with cache and soft")
    kinds = [k for k in ("url", "prefix", "tag", "all") if k in body]
    if len(kinds) != 1:
        raise PurgeError("give exactly one of url, prefix, tag or all")
    kind = kinds[0]
    value = body[kind]
    soft = body.get("soft", False)
    if not isinstance(soft, bool):
        raise PurgeError("soft must be true or false")
    cache = body.get("cache", "")
    if not isinstance(cache, str):
        raise PurgeError("cache must be a cache's name")
    if cache and cache not in config.caches:
        known = ", ".join(sorted(config.caches)) or "none"
        raise PurgeError(f"no cache named {cache!r} (caches: {known})")
    if not config.caches:
        raise PurgeError("the config has no [caches]")
    if kind == "all":
        if value is not True:
            raise PurgeError("all must be true")
        text = b""
    elif not isinstance(value, str) or not value:
        raise PurgeError(f"{kind} must be a non-empty string")
    elif kind == "url":
        text = purge_url(config, value)
    elif kind == "prefix":
        text = purge_prefix(config, value)
    else:
        if any(c.isspace() or c == "," for c in value):
            raise PurgeError("tag must be one tag (no spaces or commas)")
        try:
            text = value.encode("ascii")
        except UnicodeEncodeError:
            raise PurgeError("tag must be ASCII") from None
    if len(text) > PURGE_TEXT_MAX:
        raise PurgeError(f"{kind} is too long (at most {PURGE_TEXT_MAX} bytes)")
    if len(cache.encode()) > PURGE_NAME_MAX:
        raise PurgeError("cache name too long")
    return kind, text, cache, soft


def purge_logs(config: Config, cache: str) -> list[str]:
    """The purge logs a purge of `cache` ("" for all) goes to: one per disk tier."""
    return [os.path.join(spec.disk.path, PURGE_LOG) for name, spec in config.caches.items()
            if spec.disk is not None and cache in ("", name)]


def append_purge(paths: Iterable[str], record: Mapping[str, Any]) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, line)  # one write with O_APPEND: whole lines
            finally:
                os.close(fd)
        except OSError as e:
            log.error("cannot record the purge in %s: %s (it applies until a restart)",
                      path, e.strerror or e)


def load_purges(caches: Mapping[str, CacheSpec], purges: Purges) -> int:
    """Put the purges recorded in the disk tiers' logs into a new `purges` table
    (oldest first), and rewrite the logs to what was kept. When a log holds more
    than the table does, what it loses is replaced by one purge of the whole
    cache at the newest lost purge's time: nothing purged comes back. Returns the
    number of purges loaded."""
    records: dict[tuple[Any, ...], dict[str, Any]] = {}
    per_log: dict[str, list[dict[str, Any]]] = {}
    for spec in caches.values():
        if spec.disk is None:
            continue
        path = os.path.join(spec.disk.path, PURGE_LOG)
        kept: list[dict[str, Any]] = []
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    try:
                        record = json.loads(line)
                        if record["kind"] not in PURGE_KINDS:
                            raise ValueError(record["kind"])
                        float(record["time"])
                        record["text"].encode("latin-1")
                    except (ValueError, KeyError, TypeError, AttributeError):
                        log.warning("%s:%d: not a purge record, skipped", path, number)
                        continue
                    record["cache"] = record.get("cache") or ""
                    kept.append(record)
        except FileNotFoundError:
            continue
        except OSError as e:
            log.error("cannot read %s: %s", path, e.strerror or e)
            continue
        per_log[path] = kept
        for record in kept:
            key = (record["time"], record["kind"], record["text"], bool(record.get("soft")),
                   record["cache"])
            records[key] = record
    ordered = sorted(records.values(), key=lambda r: float(r["time"]))
    room = PURGE_SLOTS - len(caches)
    lost, ordered = ordered[:max(0, len(ordered) - room)], ordered[max(0, len(ordered) - room):]
    floors: dict[str, float] = {}
    for record in lost:
        for name in ([record["cache"]] if record["cache"] else list(caches)):
            floors[name] = max(floors.get(name, 0.0), float(record["time"]))
    for name, when in sorted(floors.items(), key=lambda item: item[1]):
        purges.add("all", b"", name, False, when)
    for record in ordered:
        purges.add(record["kind"], record["text"].encode("latin-1"), record["cache"],
                   bool(record.get("soft")), float(record["time"]))
    if lost:
        log.warning("the purge logs held %d purges more than are remembered: the oldest "
                    "ones are replaced by purges of everything fetched before them", len(lost))
    remembered = {id(r) for r in ordered}
    for path, kept in per_log.items():
        if len(kept) > PURGE_SLOTS:
            _rewrite(path, [r for r in kept if id(r) in remembered] + [
                {"time": when, "kind": "all", "text": "", "soft": False, "cache": name}
                for name, when in floors.items()])
    return len(ordered) + len(floors)


def _rewrite(path: str, records: list[dict[str, Any]]) -> None:
    temp = f"{path}.tmp.{os.getpid()}"
    try:
        before = os.stat(path)
        with open(temp, "w", encoding="utf-8") as f:
            for record in sorted(records, key=lambda r: float(r["time"])):
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
            # The master (maybe root) rewrites what the admin process (maybe
            # [server] user) appends to: the file keeps its owner and mode.
            os.fchmod(f.fileno(), before.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.fchown(f.fileno(), before.st_uid, before.st_gid)
        os.replace(temp, path)
    except OSError as e:
        log.error("cannot rewrite %s: %s", path, e.strerror or e)


# -- the HTTP side -----------------------------------------------------------------------

class _Head:
    """The parser's sink: keeps the request head; a body is read by length."""

    def __init__(self) -> None:
        self.head: MessageHead | None = None

    def on_head(self, head: MessageHead) -> None:
        self.head = head

    def on_body(self, data: Any) -> None:
        pass

    def on_message_complete(self) -> None:
        pass


class Raw:
    """An answer that is not JSON."""

    def __init__(self, data: bytes, content_type: str) -> None:
        self.data = data
        self.content_type = content_type


class Answer(Exception):
    """An answer other than 200: raised by a handler."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large",
            500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}


class AdminServer:
    """The admin process: serves the admin API on the master's socket until SIGTERM,
    then finishes what it is answering."""

    def __init__(self, config: Config, sock: socket.socket, generation: int,
                 purges: Purges | None, board: StatusBoard, table: PeerTable,
                 stats: Stats | None = None, layout: Layout | None = None,
                 reload_fd: int | None = None) -> None:
        self.config = config
        self.reload_fd = reload_fd  # the master's reload pipe (None: signal it)
        self.stats = stats
        self.layout = layout
        self.table = table
        self.first_slot, _ = slot_layout(config.upstreams)
        self.sock = sock
        self.generation = generation
        self.purges = purges
        self.board = board
        settings = config.admin
        assert settings is not None
        self.token = settings.token.encode() if settings.token else None
        self.busy: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections turned away by MAX_CLIENTS
        self.stopping: asyncio.Event | None = None
        self.sampler = Sampler(layout) if stats is not None and layout is not None else None
        self.tops = TopLists() if self.sampler is not None and config.metrics.analytics \
            else None

    def run(self) -> int:
        import uvloop

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master decides
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()
        return 0

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGQUIT, self.stopping.set)
        server = await asyncio.start_server(self._client, sock=self.sock, limit=MAX_HEAD)
        log.info("admin API on %s", self.config.admin.address if self.config.admin else "")
        sampling = asyncio.ensure_future(self._sample()) if self.sampler is not None else None
        await self.stopping.wait()
        if sampling is not None:
            sampling.cancel()
        server.close()  # the socket stays open in the master for the next generation
        if self.busy:
            await asyncio.wait(list(self.busy), timeout=RELOAD_WAIT + 5)

    async def _sample(self) -> None:
        """Once a second (on the second), the counters' differences for the dashboard."""
        assert self.sampler is not None and self.stats is not None
        while True:
            try:
                self.sampler.sample(self.stats.totals())
                if self.tops is not None:
                    stats = self.stats
                    self.tops.update([stats.note(b) for b in range(1, stats.blocks)],
                                     time.time())
            except Exception:
                log.exception("dashboard sampling failed")
            await asyncio.sleep(1.0 - time.time() % 1.0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.busy) >= MAX_CLIENTS:
            # Without a cap, clients that open connections and send nothing would
            # each hold a task (and a socket) for READ_TIMEOUT: answer at once,
            # without reading, and close.
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("admin API: more than %d connections at once; %d refused so far",
                            MAX_CLIENTS, self.refused)
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        self.busy.add(task)
        try:
            methods: list[bytes] = []
            status, body, extra = await self._answer(reader, methods)
            if isinstance(body, Raw):
                data, kind = body.data, body.content_type
            else:
                data, kind = json.dumps(body, indent=1).encode() + b"\n", "application/json"
            lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}",
                     f"Content-Type: {kind}", f"Content-Length: {len(data)}",
                     "Cache-Control: no-store", "Connection: close",
                     *(f"{k}: {v}" for k, v in extra)]
            if methods == [b"HEAD"]:
                data = b""  # the head a GET would get (its Content-Length too), no body
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            writer.transport.abort()  # a client that does not read its answer
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("admin request failed")
        finally:
            writer.close()
            self.busy.discard(task)

    async def _answer(self, reader: asyncio.StreamReader, methods: list[bytes]
                      ) -> tuple[int, Any, tuple[tuple[str, str], ...]]:
        try:
            head, body = await asyncio.wait_for(self._read(reader), READ_TIMEOUT)
            methods.append(head.method)
            if self.token is not None and not self._authorized(head) \
                    and head.target.split(b"?", 1)[0] != b"/dashboard":
                raise Answer(401, "a bearer token is required",
                             (("WWW-Authenticate", 'Bearer realm="fastproxy admin"'),))
            return 200, await self._route(head, body), ()
        except Answer as a:
            return a.status, {"error": a.message}, a.headers
        except TimeoutError:
            return 408, {"error": "the request took too long to arrive"}, ()

    async def _read(self, reader: asyncio.StreamReader) -> tuple[MessageHead, bytes]:
        try:
            data = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise Answer(400, f"the request head is longer than {MAX_HEAD} bytes") from None
        sink = _Head()
        try:
            RequestParser(sink, max_line_bytes=8192, max_header_bytes=MAX_HEAD,
                          max_header_count=100).feed(data)
        except HttpParseError as e:
            raise Answer(400, f"malformed request: {e.reason}") from None
        head = sink.head
        if head is None:
            raise Answer(400, "malformed request")
        length = head.get(b"content-length")
        if head.get(b"transfer-encoding") is not None:
            raise Answer(400, "send the body with Content-Length")
        body = b""
        if length is not None:
            size = int(length)  # the parser checked it is a number
            if size > MAX_BODY:
                raise Answer(413, f"the body is longer than {MAX_BODY} bytes")
            body = await reader.readexactly(size)
        return head, body

    def _authorized(self, head: MessageHead) -> bool:
        value = head.get(b"authorization") or b""
        scheme, _, token = value.partition(b" ")
        return (self.token is not None and scheme.lower() == b"bearer"
                and hmac.compare_digest(token.strip(), self.token))

    async def _route(self, head: MessageHead, body: bytes) -> Any:
        path, _, query = head.target.partition(b"?")
        routes = {b"/": ({b"GET"}, self.index), b"/status": ({b"GET"}, self.status),
                  b"/reload": ({b"POST"}, self.reload),
                  b"/upstreams": ({b"GET"}, self.upstreams),
                  b"/metrics": ({b"GET"}, self.metrics),
                  b"/servers/state": ({b"POST"}, self.server_state),
                  b"/cache/purge": ({b"POST"}, self.purge),
                  b"/cache/purges": ({b"GET"}, self.list_purges),
                  b"/api/stats": ({b"GET"}, lambda body: self.api_stats(query)),
                  b"/dashboard": ({b"GET"}, self.dashboard)}
        if path not in routes:
            raise Answer(404, f"no such endpoint: {path.decode('latin-1')} (see GET /)")
        methods, handler = routes[path]
        method = head.method
        if method == b"HEAD":
            method = b"GET"
        if method not in methods:
            allowed = ", ".join(m.decode() for m in sorted(methods))
            raise Answer(405, f"use {allowed}", (("Allow", allowed),))
        return await handler(body)

    # -- endpoints ---------------------------------------------------------------------

    async def index(self, body: bytes) -> Any:
        return {"endpoints": {"GET /status": "the proxy's state",
                              "POST /reload": "reload the config file",
                              "GET /upstreams": "upstreams and their servers' state",
                              "GET /metrics": "Prometheus metrics ([metrics])",
                              "POST /servers/state": '{"upstream": NAME, "server": '
                                                     '"HOST:PORT", "state": "drain"|'
                                                     '"disabled"|"enabled"}',
                              "POST /cache/purge": 'purge: {"url"|"prefix"|"tag": "...", '
                                                   '"cache": NAME, "soft": true}',
                              "GET /cache/purges": "the purges in force",
                              "GET /api/stats?window=SECONDS": "the dashboard's data: "
                                                               "series and tops of the last "
                                                               "SECONDS (10..3600)",
                              "GET /dashboard": "the live dashboard (HTML)"}}

    async def status(self, body: bytes) -> Any:
        board = self.board.read()
        now = time.time()
        started = board.get("started", now)
        return {"version": __version__, "pid": os.getpid(), **board,
                "uptime": round(now - started, 3),
                "admin_generation": self.generation}

    async def reload(self, body: bytes) -> Any:
        before = self.board.read().get("reloads", 0)
        try:
            if self.reload_fd is not None:
                # Not a signal: this process may run as [server] user, the master as root.
                os.write(self.reload_fd, b"R")
            else:
                os.kill(os.getppid(), signal.SIGHUP)
        except BlockingIOError:
            pass  # the pipe is full of asks the master has not read yet: one reload is due
        except OSError as e:
            raise Answer(503, f"cannot ask the master to reload: {e.strerror or e}") from None
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            board = self.board.read()
            if board.get("reloads", 0) > before:
                result = board.get("last_reload", {})
                if not result.get("ok"):
                    raise Answer(400, result.get("error", "reload failed"))
                return result
        raise Answer(504, "the master gave no reload result in time")

    async def metrics(self, body: bytes) -> Any:
        if self.stats is None or self.layout is None:
            raise Answer(404, "metrics are off ([metrics] enabled = false)")
        text = render(self.stats, self.layout, self.config, self.table, self.first_slot,
                      self.board.read(), __version__)
        return Raw(text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    async def api_stats(self, query: bytes) -> Any:
        if self.sampler is None or self.stats is None:
            raise Answer(404, "metrics are off ([metrics] enabled = false): "
                              "the dashboard has no data")
        try:
            seconds = parse_window(query.decode("latin-1"))
        except ValueError as e:
            raise Answer(400, str(e)) from None
        upstreams = []
        for name, upstream in self.config.upstreams.items():
            first = self.first_slot[name]
            servers = []
            for i, server in enumerate(upstream.servers):
                state = self.table.state(first + i)
                health = ("down" if not state["up"] else
                          "ejected" if state["ejected_for"] > 0 else "up")
                servers.append({"address": server.address, "health": health,
                                "admin": state["admin"], "backup": server.backup})
            upstreams.append({"name": name, "servers": servers})
        tops = self.tops.window(seconds, time.time()) if self.tops is not None else None
        return self.sampler.report(seconds, upstreams, tops)

    async def dashboard(self, body: bytes) -> Any:
        return Raw(page(), "text/html; charset=utf-8")

    async def upstreams(self, body: bytes) -> Any:
        out: dict[str, dict[str, Any]] = {}
        layout = self.layout
        totals = self.stats.totals() if self.stats is not None and layout is not None else None
        for name, upstream in self.config.upstreams.items():
            first = self.first_slot[name]
            servers = []
            for i, server in enumerate(upstream.servers):
                state = self.table.state(first + i)
                entry = {"address": server.address, "weight": server.weight,
                         "backup": server.backup, "max_conns": server.max_conns,
                         "protocol": "h2" if server.h2 or upstream.protocol == "h2"
                         else "http1",
                         "tls": server.tls,
                         "proxy_protocol": upstream.server_proxy_protocol(server),
                         "health": "up" if state["up"] else "down",
                         "ejections": state["ejections"],
                         "ejected_for": round(state["ejected_for"], 3),
                         "admin": state["admin"]}
                base = layout.servers.get((name, server.address), -1) if layout else -1
                if totals is not None and base >= 0:
                    entry.update(zip(SERVER_FIELDS, totals[base:base + len(SERVER_FIELDS)],
                                     strict=True))
                servers.append(entry)
            out[name] = {"balance": upstream.balance, "servers": servers}
            base = layout.upstreams.get(name, -1) if layout else -1
            if totals is not None and layout is not None and base >= 0:
                # Since the start: tries answered, failed, and their mean time.
                at = base + UPSTREAM_COUNTS + len(layout.buckets)
                count = totals[at + 2]
                out[name].update(
                    responses=sum(totals[base:base + len(CLASSES)]),
                    failures=totals[base + len(CLASSES)],
                    mean_response_ms=round(totals[at + 1] / count / 1000, 3) if count else None)
        return {"upstreams": out}

    async def server_state(self, body: bytes) -> Any:
        request = _json_object(body)
        unknown = sorted(set(request) - {"upstream", "server", "state"})
        if unknown:
            raise Answer(400, f"unknown field {unknown[0]!r}: use upstream, server, state")
        name, address, state = (request.get(k) for k in ("upstream", "server", "state"))
        if state not in ADMIN_STATES:
            raise Answer(400, "state must be one of " + ", ".join(ADMIN_STATES))
        upstream = self.config.upstreams.get(name) if isinstance(name, str) else None
        if upstream is None:
            known = ", ".join(sorted(self.config.upstreams))
            raise Answer(404, f"no upstream named {name!r} (upstreams: {known})")
        where = [i for i, server in enumerate(upstream.servers) if server.address == address]
        if not where:
            known = ", ".join(server.address for server in upstream.servers)
            raise Answer(404, f"upstream {name} has no server {address!r} (servers: {known})")
        changed = self.table.set_admin(self.first_slot[upstream.name] + where[0], state)
        log.warning("server %s of upstream %s: %s (admin API)", address, name, state)
        return {"upstream": name, "server": address, "state": state, "changed": changed}

    async def purge(self, body: bytes) -> Any:
        if self.purges is None:
            raise Answer(400, "the config has no [caches]")
        request = _json_object(body)
        try:
            kind, text, cache, soft = parse_purge(self.config, request)
        except PurgeError as e:
            raise Answer(400, str(e)) from None
        when = time.time()
        seq = self.purges.add(kind, text, cache, soft, when)
        record = {"time": when, "kind": kind, "text": text.decode("latin-1"), "soft": soft,
                  "cache": cache}
        logs = purge_logs(self.config, cache)
        if logs:  # a disk write each: not on the loop
            await asyncio.get_running_loop().run_in_executor(None, append_purge, logs, record)
        log.info("purge %d: %s %s%s%s", seq, kind, text.decode("latin-1"),
                 " (soft)" if soft else "", f" in cache {cache}" if cache else "")
        return {"purged": kind, "value": text.decode("latin-1"), "soft": soft,
                "caches": [cache] if cache else sorted(self.config.caches), "seq": seq,
                "time": when}

    async def list_purges(self, body: bytes) -> Any:
        if self.purges is None:
            return {"purges": []}
        found, lost = self.purges.since(0)
        return {"purges": [{"seq": seq, "time": when, "kind": kind, "soft": soft,
                            "cache": cache or None, "value": text.decode("latin-1")}
                           for seq, when, kind, soft, cache, text in found],
                "older_forgotten": lost}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"null")
    except ValueError as e:
        raise Answer(400, f"the body is not JSON: {e}") from None
    except RecursionError:
        raise Answer(400, "the body is not JSON this API takes: nested too deep") from None
    if not isinstance(value, dict):
        raise Answer(400, "expected a JSON object")
    return value


# -- the client side (fastproxy cache purge, fastproxy reload) ---------------------------

def call(config: Config, method: str, path: str, body: Any = None,
         timeout: float = RELOAD_WAIT + 10) -> tuple[int, Any]:
    """Ask the running proxy's admin API (the config's [admin] address and token):
    (status, decoded JSON). OSError when it cannot be reached."""
    import http.client

    settings = config.admin
    if settings is None:
        raise PurgeError(f"{config.source} has no [admin] section: the admin API is off")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "localhost") else settings.host
    conn = http.client.HTTPConnection(host.strip("[]"), settings.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if settings.token:
        headers["Authorization"] = f"Bearer {settings.token}"
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
    except http.client.HTTPException as e:
        raise OSError(f"bad answer from the admin API: {e}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(payload) if payload else None
    except ValueError:
        return resp.status, {"error": payload.decode("latin-1", "replace")[:200]}
