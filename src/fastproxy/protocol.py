"""The client side of a connection: bytes in, parsed requests out, in order.

One `ClientConnection` per accepted socket. It feeds the C parser, starts an
`Exchange` per request head, holds pipelined bytes until the previous
response is complete, enforces the client-side timeouts and limits, and
relays back-pressure between the client socket and the exchange.
"""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from typing import TYPE_CHECKING, Any

from fastproxy._http import HttpParseError, MessageHead, RequestParser
from fastproxy.proxy import HOLD_UPSTREAM, Exchange
from fastproxy.responses import local_body_size, local_response

if TYPE_CHECKING:
    from fastproxy.worker import Worker

log = logging.getLogger("fastproxy.client")

HOLD_PIPELINE = 1  # a pipelined request waits for the response before it

# What the deadline of a connection means when it passes.
WAIT_NONE = 0
WAIT_HEAD = 1       # reading a request head -> 408
WAIT_IDLE = 2       # keep-alive, between requests -> close quietly
WAIT_BODY = 3       # reading a request body -> 408
WAIT_SEND = 4       # the client does not read our response -> abort


class ClientConnection(asyncio.Protocol):
    __slots__ = (
        "worker", "transport", "parser", "exchange", "pending", "holds", "ip", "proto",
        "deadline", "waiting", "write_paused", "closed", "eof",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: Any = None
        self.parser: RequestParser | None = None
        self.exchange: Exchange | None = None
        self.pending: bytes | None = None
        self.holds = 0
        self.ip = b"-"
        self.proto = b"http"
        self.deadline = 0.0
        self.waiting = WAIT_NONE
        self.write_paused = False
        self.closed = False
        self.eof = False

    # -- asyncio.Protocol -----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        worker = self.worker
        self.transport = transport
        if len(worker.clients) >= worker.max_connections or worker.closing:
            self.closed = True
            transport.abort()  # type: ignore[attr-defined]
            return
        peer = transport.get_extra_info("peername")
        if peer:
            self.ip = peer[0].encode()
        limits = worker.limits
        self.parser = RequestParser(
            self,
            max_line_bytes=limits.max_line_bytes,
            max_header_bytes=limits.max_header_bytes,
            max_header_count=limits.max_header_count,
        )
        worker.clients.add(self)
        self._wait(WAIT_HEAD, worker.timeouts.header)

    def data_received(self, data: bytes) -> None:
        if self.pending is not None:  # reading is held; keep order
            self.pending += data
            return
        if self.waiting == WAIT_IDLE:
            self._wait(WAIT_HEAD, self.worker.timeouts.header)
        self._feed(data)

    def eof_received(self) -> bool:
        # A half-closed client still gets the answer to a request it completed.
        ex = self.exchange
        self.eof = True
        if ex is not None and ex.req_done and not ex.finished:
            return True  # keep the transport open to send the answer
        self.closed = True  # the transport closes now
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self.worker.clients.discard(self)
        ex = self.exchange
        if ex is not None:
            self.exchange = None
            ex.client_lost()
        self.pending = None
        # The parser holds our bound methods: drop it so this connection is
        # freed by reference counting, not left for the cyclic GC.
        self.parser = None

    def pause_writing(self) -> None:
        self.write_paused = True
        self._wait(WAIT_SEND, self.worker.timeouts.send)
        if self.exchange is not None:
            self.exchange.client_write_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.waiting == WAIT_SEND:
            if self.exchange is None:
                self._wait(WAIT_IDLE, self.worker.timeouts.keepalive)
            else:
                self._wait(WAIT_NONE, 0.0)
        if self.exchange is not None:
            self.exchange.client_write_paused(False)

    # -- request parser handler ---------------------------------------------
    def on_head(self, head: MessageHead) -> None:
        ex = Exchange(self, self.worker, head)
        self.exchange = ex
        if head.body_kind:
            self._wait(WAIT_BODY, self.worker.timeouts.body)
        else:
            self._wait(WAIT_NONE, 0.0)
        ex.begin()

    def on_body(self, data: Any) -> None:
        ex = self.exchange
        if ex is not None:
            if self.waiting == WAIT_BODY:
                self.deadline = monotonic() + self.worker.timeouts.body
            ex.request_body(data)

    def on_message_complete(self) -> None:
        if self.waiting == WAIT_BODY:
            self._wait(WAIT_NONE, 0.0)
        ex = self.exchange
        if ex is not None:
            ex.request_complete()

    # -- used by the exchange -------------------------------------------------
    # uvloop raises on writes to a closed handle: nothing is written once we
    # (or the client's EOF) started closing.
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def write_all(self, parts: list[Any]) -> None:
        if not self.closed:
            if len(parts) == 1:
                self.transport.write(parts[0])
            else:
                self.transport.writelines(parts)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def hold_reading(self, reason: int, on: bool) -> None:
        before = self.holds
        self.holds = before | reason if on else before & ~reason
        if self.closed:
            return
        if before and not self.holds:
            self.transport.resume_reading()
        elif not before and self.holds:
            self.transport.pause_reading()

    def exchange_done(self, exchange: Exchange, keep_alive: bool) -> None:
        if self.exchange is exchange:
            self.exchange = None
        if self.holds & HOLD_UPSTREAM:
            self.hold_reading(HOLD_UPSTREAM, False)  # that upstream is not ours any more
        if self.closed:
            return
        if not keep_alive or self.worker.closing or (self.eof and self.pending is None):
            self.closed = True
            self.transport.close()  # flushes what is written, then closes
            return
        if self.write_paused:
            self._wait(WAIT_SEND, self.worker.timeouts.send)
        else:
            self._wait(WAIT_IDLE, self.worker.timeouts.keepalive)
        pending = self.pending
        if pending is not None:
            self.pending = None
            self.hold_reading(HOLD_PIPELINE, False)
            self._wait(WAIT_HEAD, self.worker.timeouts.header)
            self._feed(pending)

    # -- internals ----------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        parser = self.parser
        while not self.closed:
            try:
                n = parser.feed(data)  # type: ignore[union-attr]
            except HttpParseError as e:
                self._refuse(e.status, e.reason)
                return
            if n == len(data):
                return
            data = data[n:]
            if self.exchange is not None:
                # The next request is pipelined: hold it until this response is out.
                self.pending = data
                self.hold_reading(HOLD_PIPELINE, True)
                return

    def _refuse(self, status: int, reason: str) -> None:
        """A request we cannot trust: answer `status` and close; nothing is forwarded."""
        ex = self.exchange
        self.exchange = None
        if ex is not None and not ex.finished:
            if ex.resp_started:
                # A bad chunk after the response began: the framing is gone.
                ex.client_lost()
                self.abort()
                return
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            ex.finished = True
            ex.status = status
            ex.sent = local_body_size(status)
            self.worker.access_log.record(ex)
        else:
            self.worker.access_log.refused(self.ip, status, local_body_size(status))
        log.info("client %s: %d %s", self.ip.decode(), status, reason)
        self.closed = True
        self.transport.write(local_response(status, self.worker.clock, False))
        self.transport.close()

    def _wait(self, what: int, seconds: float) -> None:
        if self.write_paused and self.waiting == WAIT_SEND:
            return  # the client is not reading: its send timeout keeps running
        # A fresh reading: the tick's cached time may be up to one tick old.
        self.waiting = what
        self.deadline = monotonic() + seconds if what else 0.0

    def timed_out(self) -> None:
        """Called by the worker's tick when `deadline` has passed."""
        what = self.waiting
        self.waiting = WAIT_NONE
        self.deadline = 0.0
        if self.closed:
            return
        if what == WAIT_IDLE or (what == WAIT_HEAD and not self.parser.mid_message):  # type: ignore[union-attr]
            self.closed = True  # nothing asked: close quietly, as nginx does
            self.transport.close()
        elif what == WAIT_HEAD or (what == WAIT_BODY and not (
                self.exchange is not None and self.exchange.resp_started)):
            self._refuse(408, "request timed out")
        else:
            if self.exchange is not None:
                self.exchange.client_lost()
                self.exchange = None
            self.abort()
