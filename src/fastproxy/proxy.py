"""The phases of one proxied request. This module alone knows their order:

route -> limits -> (100 Continue) -> balancer pick -> pooled or new upstream
connection -> rewritten head + streamed body -> response head rewrite ->
streamed response -> access log -> keep-alive or close.

An `Exchange` lives from the request head to the end of its response. It talks
to the client connection through a narrow interface (`ClientSide`) and to the
upstream through `UpstreamConnection`; neither knows the other.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

from fastproxy._http import BODY_CHUNKED, BODY_LENGTH, BODY_NONE, MessageHead
from fastproxy._rewrite import (
    FRAME_CHUNKED,
    FRAME_CLOSE,
    FRAME_PASS,
    build_request_head,
    build_response_head,
)
from fastproxy.responses import CONTINUE, local_body_size, local_response
from fastproxy.router import normalize_host
from fastproxy.upstream import ServerPool, UpstreamConnection, UpstreamGroup

if TYPE_CHECKING:
    from fastproxy.worker import Worker

log = logging.getLogger("fastproxy.proxy")

# Methods whose request may be sent again when a reused connection turns out
# dead before any byte of the answer (RFC 9110 §9.2.2), when it has no body.
_IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])
_PENDING_LIMIT = 64 * 1024
_CRLF = b"\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class ClientSide(Protocol):
    """What an exchange may do to the client connection."""

    transport: Any
    ip: bytes
    proto: bytes
    write_paused: bool

    def write(self, data: bytes) -> None: ...
    def write_all(self, parts: list[Any]) -> None: ...
    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None: ...
    def hold_reading(self, reason: int, on: bool) -> None: ...
    def abort(self) -> None: ...


HOLD_UPSTREAM = 2  # client reading held because the upstream cannot take more yet


class Exchange:
    __slots__ = (
        "client", "worker", "head", "target", "host", "status", "sent",
        "req_bytes", "req_done", "pending", "pending_size", "group", "tried", "pool",
        "conn", "resp_started", "resp_head", "framing", "keep", "finished",
        "local", "interim", "retried", "upstream_label", "out",
    )

    def __init__(self, client: ClientSide, worker: Worker, head: MessageHead) -> None:
        self.client = client
        self.worker = worker
        self.head = head
        self.target = head.target
        self.host = head.host
        self.status = 0
        self.sent = 0
        self.req_bytes = 0
        self.req_done = False
        self.pending: list[Any] | None = []
        self.pending_size = 0
        self.group: UpstreamGroup | None = None
        self.tried: list[ServerPool] | None = None  # servers that failed to connect
        self.pool: ServerPool | None = None
        self.conn: UpstreamConnection | None = None
        self.resp_started = False
        self.resp_head: MessageHead | None = None
        self.framing = FRAME_PASS
        self.keep = False
        self.finished = False
        self.local = False
        self.interim = False
        self.retried = False
        self.upstream_label = "-"
        # Client-bound bytes of the current upstream read, written with one
        # writelines (one syscall) when the read is handled.
        self.out: list[Any] = []

    # -- phase 1: route and limits -------------------------------------------
    def begin(self) -> None:
        head = self.head
        worker = self.worker
        target = self.target
        if target[:1] != b"/" and target != b"*":
            # absolute-form (RFC 9112 §3.2.2): the authority replaces Host.
            rest = target.split(b"://", 1)[1]
            end = len(rest)
            for stop in (b"/", b"?"):
                i = rest.find(stop)
                if 0 <= i < end:
                    end = i
            authority, path = rest[:end], rest[end:]
            if path[:1] != b"/":
                path = b"/" + path
            if not authority or b"@" in authority:
                self.respond_local(400, close=True)
                return
            self.host = authority
            self.target = path
        path = self.target if self.target != b"*" else b"/"
        router = worker.router
        group = router.match(normalize_host(self.host) if router.by_host else b"", path)
        if group is None:
            self.respond_local(404)
            return
        limit = worker.max_body
        if limit and head.body_kind == BODY_LENGTH and head.content_length > limit:
            self.respond_local(413, close=True)
            return
        if head.expect_continue and head.body_kind != BODY_NONE and head.http_minor == 1:
            self.client.write(CONTINUE)
        self.group = group
        self._use_server(group.pick())

    # -- phase 2: an upstream connection -------------------------------------
    def _use_server(self, pool: ServerPool) -> None:
        self.pool = pool
        self.upstream_label = pool.label
        conn = pool.take()
        if conn is not None:
            self._attach(conn)
        else:
            pool.connect(self)

    def connected(self, conn: UpstreamConnection) -> None:
        if self.finished:
            conn.pool.put(conn)  # fresh and unused: keep it for the next request
            return
        self._attach(conn)

    def connect_failed(self, pool: ServerPool, exc: BaseException, timed_out: bool) -> None:
        if self.finished:
            return
        log.warning("upstream %s: connect %s: %s", pool.label,
                    "timed out" if timed_out else "failed", exc or type(exc).__name__)
        tried = self.tried
        if tried is None:
            tried = self.tried = []
        tried.append(pool)
        untried = [p for p in self.group.pools if p not in tried]  # type: ignore[union-attr]
        if untried:
            self._use_server(untried[0])  # nothing was sent: another server may take it
        else:
            self.respond_error(504 if timed_out else 502)

    def _attach(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.attach(self, self.head.is_head_request)
        if self.client.write_paused:
            # A pipelined request behind a response the client has not read yet:
            # its pause signal came before this connection existed.
            conn.set_reading(False)
        host = self.host if self.host is not None else self.pool.label.encode()  # type: ignore[union-attr]
        worker = self.worker
        out = build_request_head(self.head, self.target, host, self.client.ip,
                                 self.client.proto, worker.via)
        pending = self.pending
        self.pending = None
        if pending:
            pending.insert(0, out)
            if self.pending_size > _PENDING_LIMIT:
                # Before the write: if it fills the upstream's buffer, its
                # pause_writing holds the client again.
                self.client.hold_reading(HOLD_UPSTREAM, False)
            conn.send_all(pending)
        else:
            conn.send(out)

    # -- request body, client -> upstream ------------------------------------
    def request_body(self, data: Any) -> None:
        n = len(data)
        self.req_bytes += n
        limit = self.worker.max_body
        if limit and self.req_bytes > limit:
            if self.conn is not None:
                self.conn.abort()
                self.conn = None
            if not self.resp_started:
                self.respond_local(413, close=True)
            else:
                self.client.abort()
                self.finish(False)
            return
        if self.local:
            return  # answered already; the body is read and dropped
        if self.head.body_kind == BODY_CHUNKED:
            parts: tuple[Any, ...] = (b"%x\r\n" % n, data, _CRLF)
        else:
            parts = (data,)
        conn = self.conn
        if conn is not None:
            conn.send_all(parts)
            conn.touch()
        elif self.pending is not None:
            self.pending.extend(parts)
            self.pending_size += n
            if self.pending_size > _PENDING_LIMIT:
                self.client.hold_reading(HOLD_UPSTREAM, True)

    def request_complete(self) -> None:
        self.req_done = True
        if self.local:
            if not self.finished:
                self.finish(self.keep)
            return
        if self.head.body_kind == BODY_CHUNKED:
            if self.conn is not None:
                self.conn.send(_LAST_CHUNK)
            elif self.pending is not None:
                self.pending.append(_LAST_CHUNK)

    def upstream_write_paused(self, paused: bool) -> None:
        self.client.hold_reading(HOLD_UPSTREAM, paused)

    # -- response, upstream -> client ----------------------------------------
    def upstream_head(self, head: MessageHead) -> None:
        if head.status < 200:
            self.interim = True  # 1xx: we answered 100-continue ourselves
            return
        self.interim = False
        req = self.head
        keep = req.keep_alive and self.req_done and not self.worker.closing
        kind = head.body_kind
        if kind in (BODY_NONE, BODY_LENGTH):
            framing = FRAME_PASS
        elif req.http_minor == 1:
            framing = FRAME_CHUNKED
        else:
            framing = FRAME_CLOSE
            keep = False
        self.framing = framing
        self.keep = keep
        self.status = head.status
        self.resp_head = head
        self.resp_started = True
        self.out.append(build_response_head(head, framing, keep, req.http_minor,
                                            self.worker.via))

    def upstream_body(self, data: Any) -> None:
        n = len(data)
        self.sent += n
        if self.framing == FRAME_CHUNKED:
            self.out += (b"%x\r\n" % n, data, _CRLF)
        else:
            self.out.append(data)

    def upstream_read_done(self) -> None:
        if self.out:
            self._flush()

    def _flush(self) -> None:
        out = self.out
        self.out = []
        self.client.write_all(out)

    def upstream_complete(self) -> None:
        if self.interim:
            return
        if self.framing == FRAME_CHUNKED:
            self.out.append(_LAST_CHUNK)
        if self.out:
            self._flush()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.release(self.req_done and self.resp_head.keep_alive)  # type: ignore[union-attr]
        self.finish(self.keep)

    def upstream_lost(self, conn: UpstreamConnection, exc: BaseException | None) -> None:
        self.conn = None
        if self.finished:
            return
        if not self.resp_started:
            if (conn.reused and not conn.got_bytes and not self.retried
                    and self.head.body_kind == BODY_NONE and self.head.method in _IDEMPOTENT):
                # A pooled connection the server had closed: send again on a new one.
                self.retried = True
                self.pending = []
                self.pool.connect(self)  # type: ignore[union-attr]
                return
            log.warning("upstream %s closed the connection before a response%s",
                        conn.pool.label, f": {exc}" if exc else "")
            self.respond_error(502)
        else:
            log.warning("upstream %s closed the connection mid-response", conn.pool.label)
            self.client.abort()
            self.finish(False)

    def upstream_failed(self, status: int, reason: str) -> None:
        self.conn = None
        if self.finished:
            return
        log.warning("upstream %s: %s", self.upstream_label, reason)
        if not self.resp_started:
            self.respond_error(status)
        else:
            self.client.abort()
            self.finish(False)

    # -- the client side stalls or goes away -----------------------------------
    def client_write_paused(self, paused: bool) -> None:
        if self.conn is not None:
            self.conn.set_reading(not paused)

    def client_lost(self) -> None:
        if self.finished:
            return
        if self.conn is not None:
            self.conn.abort()  # mid-exchange: the connection state is unknown
            self.conn = None
        if not self.resp_started:
            self.status = 499  # as nginx logs a client that closed early
        self.finish(False)

    # -- answers made here -----------------------------------------------------
    def respond_local(self, status: int, close: bool = False) -> None:
        """Answer without an upstream; the request body (if any) is drained."""
        req = self.head
        keep = not close and req.keep_alive and not self.worker.closing
        self.local = True
        self.status = status
        self.keep = keep
        self.resp_started = True
        self.sent = 0 if req.is_head_request else local_body_size(status)
        self.client.write(local_response(status, self.worker.clock, keep, req.is_head_request))
        if close or self.req_done:
            self.finish(keep)

    def respond_error(self, status: int) -> None:
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        self.respond_local(status, close=not self.req_done)

    def finish(self, keep: bool) -> None:
        if self.finished:
            return
        self.finished = True
        self.worker.access_log.record(self)
        self.client.exchange_done(self, keep)
