"""Forward authentication: ask an auth service whether a request may go upstream.

The model is Traefik's `forwardAuth` and Caddy's `forward_auth` (nginx's
`auth_request` is the older cousin). Before a request goes upstream the proxy
sends the auth service `GET <path?query of the configured url>` with no body;
a 2xx answer lets the request through, anything else is the answer the client
gets. What we send and copy, and why:

* **Client fields.** By default every field of the client's request goes to the
  auth service (as Traefik, Caddy and nginx do: the service needs Cookie and
  Authorization), except hop-by-hop fields (Connection and the fields it names,
  Keep-Alive, TE, Trailer(s), Transfer-Encoding, Upgrade, Proxy-*), framing
  (Content-Length, Expect: there is no body) and Host (the auth service gets its
  own Host; the client's goes in X-Forwarded-Host). `request_headers` narrows
  that to a list of names, like Traefik's `authRequestHeaders`.
* **X-Forwarded-Method/Proto/Host/Uri/For** describe the client's request, as
  in Traefik (Caddy sends the same five; nginx sends none, operators add
  X-Original-URI themselves). X-Forwarded-For is the client address alone and
  X-Forwarded-Uri is the request target in origin form (path and query).
* **No trustForwardHeader.** Every client-supplied X-Forwarded-* field is
  dropped, never passed through, whatever `request_headers` says: an auth
  service that trusts X-Forwarded-For or -Uri must not see a client's forgery.
  Traefik passes them through with `trustForwardHeader = true`; here the
  trusted client address is already settled before this module runs (that is
  the listener's job), so the only correct value is the one we compute. The
  other client-address claims, `Forwarded` (RFC 7239) and `X-Real-IP`, are
  dropped too, and X-Real-IP is set to the client address: oauth2-proxy reads
  it by default, and a forged one there would defeat its IP rules.
* **Allowed (2xx).** The fields named in `copy_headers` (Traefik's
  `authResponseHeaders`, Caddy's `copy_headers`) are copied from the auth
  answer into the upstream request, every value of each, empty values skipped
  (as Caddy does). The proxy removes those names from the client's request
  *always*, also when the auth service did not send them (Traefik and Caddy
  both delete first, then set): otherwise a client could send its own X-User.
  The auth answer's body is read and discarded.
* **Refused (any other status, 3xx included).** The client gets the auth
  service's answer as Traefik and Caddy relay it: status, reason, header
  fields (Location, WWW-Authenticate, Set-Cookie ...) minus hop-by-hop ones
  and minus the service's own framing, and its body, de-chunked and sent with
  a Content-Length. nginx instead relays only 401 (with WWW-Authenticate) and
  403 and turns every other status into 500; that breaks the usual login
  redirect (302), which is why Traefik and Caddy relay everything.
* **Errors fail closed.** A connection refused or reset, a malformed answer or
  an oversized one (head over 16 KiB or 100 fields, body over `max_body`)
  refuses the request with our own 503; no answer within `timeout` (connect,
  send and read together) gives 504. Traefik answers 500 and Caddy 502 in
  these cases; 503/504 say more precisely what went wrong. Each error logs a
  WARNING on "fastproxy.auth" -- at most one line per `LOG_INTERVAL` seconds,
  with a count of the ones left out, so an outage cannot flood the log. A
  healthy service logs nothing.

Connections are HTTP/1.1 keep-alive, pooled per `ForwardAuth` (at most
`max_idle` idle ones, most recently used first, dropped after `idle_timeout`).
A pooled connection that turns out closed before any byte of the answer is
retried once on a fresh connection: the check is an idempotent GET. Answers
are read with the proxy's own strict response parser (llhttp), so the framing
rules are the ones the proxy applies to upstream answers: Content-Length,
chunked (trailers are read and dropped) or close-delimited bodies.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from fastproxy._http import BODY_CHUNKED, BODY_LENGTH, HttpParseError, MessageHead, ResponseParser
from fastproxy.responses import reason_phrase

log = logging.getLogger("fastproxy.auth")

HEAD_LIMIT = 16 * 1024   # status line + header section (and trailers) of an answer
FIELD_LIMIT = 100        # header fields in an answer
MAX_INTERIM = 8          # 1xx answers before the final one
LOG_INTERVAL = 10.0      # seconds between two error lines in the log

# Never sent to the auth service from the client's request (X-Forwarded-* and
# Proxy-* are matched by prefix).
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"trailer", b"trailers",
                         b"transfer-encoding", b"upgrade"})
_NOT_SENT = _HOP_BY_HOP | {b"content-length", b"expect", b"host", b"forwarded", b"x-real-ip"}
# Never copied from an answer into the upstream request: framing, routing and
# the fields the proxy itself writes.
_NOT_COPIED = _HOP_BY_HOP | {b"content-length", b"expect", b"host", b"forwarded"}

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs but HTAB: CR and LF among them
_TARGET = re.compile(r"[!-~]*")  # visible ASCII: no space, no control


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict of one check.

    allowed: send the request upstream, after removing the fields named in
    `drop` (lower-case) from it and adding `upstream_lines` ("Name: value\\r\\n"
    each). Refused: write `response` (a complete HTTP/1.1 response, framed by
    Content-Length, with no Connection field) to the client instead; when the
    client's request was HEAD, write only its head (up to the first blank line).
    `status` is the auth service's status, or ours (503/504) on an error.
    """

    allowed: bool
    status: int
    response: bytes = b""
    upstream_lines: bytes = b""
    drop: tuple[bytes, ...] = ()


class _AuthError(Exception):
    """The auth service could not give a usable answer (-> 503)."""


class _Stale(_AuthError):
    """The connection closed before any byte of the answer: retry a pooled one."""


class _Answer:
    __slots__ = ("head", "body")

    def __init__(self, head: MessageHead, body: bytes) -> None:
        self.head = head
        self.body = body


class _AuthConnection(asyncio.Protocol):
    """One connection to the auth service; one request at a time."""

    def __init__(self, max_body: int) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self, max_header_bytes=HEAD_LIMIT,
                                     max_header_count=FIELD_LIMIT)
        self.max_body = max_body
        self.waiter: asyncio.Future[_Answer] | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._head: MessageHead | None = None
        self._body = bytearray()
        self._received = False
        self._interim = 0
        self._done = False

    # -- used by ForwardAuth

    def send(self, request: bytes) -> asyncio.Future[_Answer]:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise _Stale("the connection was closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self._head = None
        self._body = bytearray()
        self._received = False
        self._interim = 0
        self._done = False
        transport.write(request)
        return self.waiter

    def abort(self) -> None:
        self.reusable = False
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for, or the rest of an answer we gave up on.
            self.abort()
            return
        self._received = True
        try:
            for _ in range(MAX_INTERIM + 2):  # one final answer after a few 1xx ones
                n = self.parser.feed(data)
                if self._done:
                    if n < len(data):
                        self.reusable = False  # more than one answer: do not trust it again
                    self._complete()
                    return
                if n >= len(data):
                    return
                data = data[n:]
            raise _AuthError("too many interim answers")
        except HttpParseError as e:
            self._fail(_AuthError(f"malformed answer: {e.reason}"))
        except _AuthError as e:
            self._fail(e)

    def eof_received(self) -> bool:
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc)

    # -- parser callbacks

    def on_head(self, head: MessageHead) -> None:
        status = head.status
        if status < 200:
            self._interim += 1
            if self._interim > MAX_INTERIM:
                raise _AuthError("too many interim answers")
            return
        if status > 599:
            raise _AuthError(f"invalid status {status}")
        te = head.get_all(b"transfer-encoding")
        if te and (head.body_kind != BODY_CHUNKED or len(te) != 1
                   or te[0].lower() != b"chunked"):
            raise _AuthError("unsupported Transfer-Encoding")
        if head.body_kind == BODY_LENGTH and head.content_length > self.max_body:
            raise _AuthError(f"body of {head.content_length} bytes is over the "
                             f"{self.max_body} byte limit")
        self._head = head

    def on_body(self, chunk: bytes | memoryview) -> None:
        if len(self._body) + len(chunk) > self.max_body:
            raise _AuthError(f"body is over the {self.max_body} byte limit")
        self._body += chunk

    def on_message_complete(self) -> None:
        if self._head is not None:  # else an interim answer ended
            self._done = True

    # -- internals

    def _complete(self) -> None:
        head = self._head
        waiter = self.waiter
        assert head is not None and waiter is not None
        if not head.keep_alive:
            self.reusable = False
        if not waiter.done():
            waiter.set_result(_Answer(head, bytes(self._body)))

    def _fail(self, exc: _AuthError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def _end(self, exc: Exception | None) -> None:
        """The peer closed (exc None) or the connection broke."""
        self.closed = True
        self.reusable = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if not self._received:
            why = "reset" if exc is not None else "closed"
            waiter.set_exception(_Stale(f"the connection was {why} before an answer"))
            return
        if exc is not None:  # a reset never ends a close-delimited body
            self._fail(_AuthError(f"connection broke mid-answer: {exc}"))
            return
        try:
            self.parser.feed_eof()
        except HttpParseError as e:
            self._fail(_AuthError(f"malformed answer: {e.reason}"))
            return
        except _AuthError as e:
            self._fail(e)
            return
        if self._done:
            self._complete()
        else:
            self._fail(_AuthError("connection closed before the answer was complete"))


def _token_list(values: Iterable[bytes]) -> set[bytes]:
    out: set[bytes] = set()
    for value in values:
        for item in value.split(b","):
            item = item.strip().lower()
            if item:
                out.add(item)
    return out


def _origin_form(uri: bytes) -> bytes:
    """The path and query of an absolute-form request target (others as they are)."""
    low = uri[:8].lower()
    if low.startswith(b"http://") or low.startswith(b"https://"):
        slash = uri.find(b"/", uri.find(b"//") + 2)
        return uri[slash:] if slash >= 0 else b"/"
    return uri


def _header_names(names: Iterable[str], what: str, refused: frozenset[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        raw = name.encode("latin-1", "replace")
        if not _TOKEN.fullmatch(raw):
            raise ValueError(f"{what}: {name!r} is not a valid header field name")
        low = raw.lower()
        if low in refused or low.startswith(b"proxy-") or low.startswith(b"x-forwarded-"):
            raise ValueError(f"{what}: {name!r} is managed by the proxy and cannot be listed")
        if raw not in out:
            out.append(raw)
    return out


def _local_response(status: int, text: str) -> bytes:
    body = text.encode() + b"\n"
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Cache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s"
            % (status, reason_phrase(status).encode(), len(body), body))


class ForwardAuth:
    """A client for one auth service, with its own keep-alive pool.

    Counters: `checks` = `allowed` + `denied` + `errors`; `connects` (new
    connections), `reused` (answers on a pooled connection) and `retries`
    (stale pooled connections retried on a fresh one).
    """

    def __init__(self, url: str, *, timeout: float = 5.0, copy_headers: Sequence[str] = (),
                 request_headers: Sequence[str] | None = None, max_body: int = 65536,
                 ssl_context: ssl.SSLContext | None = None, max_idle: int = 32,
                 idle_timeout: float = 30.0) -> None:
        self.url = url
        self._parse_url(url)
        if self.tls:
            self._ssl: ssl.SSLContext | None = ssl_context or ssl.create_default_context()
        elif ssl_context is not None:
            raise ValueError(f"forward auth url {url!r}: an ssl_context needs an https:// url")
        else:
            self._ssl = None
        if not timeout > 0:
            raise ValueError("forward auth timeout must be positive")
        if max_body < 0:
            raise ValueError("forward auth max_body must not be negative")
        if max_idle < 0 or not idle_timeout > 0:
            raise ValueError("forward auth max_idle must be >= 0 and idle_timeout positive")
        if isinstance(copy_headers, str) or isinstance(request_headers, str):
            raise ValueError("copy_headers and request_headers are lists of names")
        self.timeout = float(timeout)
        self.max_body = max_body
        self.max_idle = max_idle
        self.idle_timeout = float(idle_timeout)
        self._copy = [(name, name.lower())
                      for name in _header_names(copy_headers, "copy_headers", _NOT_COPIED)]
        self._drop = tuple(low for _, low in self._copy)
        self._only: frozenset[bytes] | None = None
        if request_headers is not None:
            self._only = frozenset(n.lower() for n in _header_names(
                request_headers, "request_headers", _NOT_SENT))
        self._idle: deque[_AuthConnection] = deque()
        self._closed = False
        self._next_log = 0.0
        self._unlogged = 0
        self.checks = 0
        self.allowed = 0
        self.denied = 0
        self.errors = 0
        self.connects = 0
        self.reused = 0
        self.retries = 0

    def _parse_url(self, url: str) -> None:
        def bad(reason: str) -> ValueError:
            return ValueError(f"forward auth url {url!r}: {reason}")

        if not isinstance(url, str) or not url.isascii() or not _TARGET.fullmatch(url):
            raise bad("must be printable ASCII without spaces")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise bad("must start with http:// or https://")
        if "@" in parts.netloc:
            raise bad("credentials in the url are not supported")
        if parts.fragment or "#" in url:
            raise bad("a fragment (#...) makes no sense here")
        host = parts.hostname or ""
        if not host:
            raise bad("a host is missing")
        try:
            port = parts.port
        except ValueError:
            raise bad("the port is not a number from 1 to 65535") from None
        if port == 0:
            raise bad("the port is not a number from 1 to 65535")
        path = parts.path or "/"
        if not path.startswith("/"):
            raise bad("the path must start with /")
        target = path + ("?" + parts.query if parts.query or url.endswith("?") else "")
        self.tls = scheme == "https"
        self.host = host
        self.port = port or (443 if self.tls else 80)
        authority = f"[{host}]" if ":" in host else host
        if port is not None and port != (443 if self.tls else 80):
            authority += f":{port}"
        self._head = f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n".encode()

    # -- the check

    async def check(self, method: bytes, uri: bytes, host: bytes, proto: bytes,
                    client_ip: bytes, headers: Sequence[tuple[bytes, bytes]]) -> Decision:
        """Ask the auth service about one request.

        Never raises for the auth service's faults (they are refused Decisions);
        raises ValueError if method, uri, host, proto or client_ip holds a control
        character, which the request parser never lets through.
        """
        request = self._request(method, uri, host, proto, client_ip, headers)
        self.checks += 1
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(request)
        except TimeoutError:
            return self._error(504, f"no answer within {self.timeout:g}s",
                               "authentication service timed out")
        except _AuthError as e:
            return self._error(503, str(e), "authentication service unavailable")
        except OSError as e:
            return self._error(503, f"connection failed: {e}", "authentication service unavailable")
        head = answer.head
        if 200 <= head.status < 300:
            lines = []
            for name, low in self._copy:
                for value in head.get_all(low):
                    if _BAD_VALUE.search(value):  # the parser refuses these; never trust one
                        return self._error(503, f"invalid {name.decode()} value",
                                           "authentication service unavailable")
                    if value:
                        lines.append(b"%s: %s\r\n" % (name, value))
            self.allowed += 1
            return Decision(True, head.status, b"", b"".join(lines), self._drop)
        self.denied += 1
        return Decision(False, head.status, _relay(head, answer.body))

    def _request(self, method: bytes, uri: bytes, host: bytes, proto: bytes,
                 client_ip: bytes, headers: Sequence[tuple[bytes, bytes]]) -> bytes:
        out = [self._head]
        named: set[bytes] = set()
        for name, value in headers:
            if name.lower() == b"connection":
                named |= _token_list((value,))
        only = self._only
        for name, value in headers:
            low = name.lower()
            if only is not None:
                if low not in only:
                    continue
            elif (low in _NOT_SENT or low.startswith(b"x-forwarded-")
                  or low.startswith(b"proxy-")):
                continue
            if low in named or not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                continue
            out.append(b"%s: %s\r\n" % (name, value))
        for field, value in ((b"X-Forwarded-Method", method), (b"X-Forwarded-Proto", proto),
                             (b"X-Forwarded-Host", host),
                             (b"X-Forwarded-Uri", _origin_form(uri)),
                             (b"X-Forwarded-For", client_ip), (b"X-Real-IP", client_ip)):
            if _BAD_VALUE.search(value):
                raise ValueError(f"{field.decode()} value {value!r} has control characters")
            if value:
                out.append(b"%s: %s\r\n" % (field, value))
        out.append(b"\r\n")
        return b"".join(out)

    async def _exchange(self, request: bytes) -> _Answer:
        conn = self._take_idle()
        if conn is not None:
            try:
                answer = await self._roundtrip(conn, request)
            except _Stale:
                self.retries += 1  # the server closed it while idle: once more, fresh
            else:
                self.reused += 1
                return answer
        return await self._roundtrip(await self._connect(), request)

    async def _roundtrip(self, conn: _AuthConnection, request: bytes) -> _Answer:
        try:
            answer = await conn.send(request)
        except BaseException:  # errors, our timeout, the caller's cancellation
            conn.abort()
            raise
        self._release(conn)
        return answer

    async def _connect(self) -> _AuthConnection:
        loop = asyncio.get_running_loop()
        max_body = self.max_body
        try:
            _, conn = await loop.create_connection(
                lambda: _AuthConnection(max_body), self.host, self.port, ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None)
        except ssl.SSLError as e:
            raise _AuthError(f"TLS handshake failed: {e}") from None
        except TimeoutError:
            raise
        except OSError as e:
            raise _AuthError(f"cannot connect to {self.host}:{self.port}: "
                             f"{e.strerror or e}") from None
        self.connects += 1
        return conn

    def _take_idle(self) -> _AuthConnection | None:
        now = time.monotonic()
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed or now - conn.idle_since > self.idle_timeout:
                conn.close()
                continue
            return conn
        return None

    def _release(self, conn: _AuthConnection) -> None:
        conn.waiter = None
        if not conn.reusable or conn.closed or self._closed:
            conn.close()
            return
        idle = self._idle
        if len(idle) >= self.max_idle:
            for old in [c for c in idle if c.closed]:
                idle.remove(old)
            if len(idle) >= self.max_idle:
                conn.close()
                return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _error(self, status: int, detail: str, text: str) -> Decision:
        self.errors += 1
        now = time.monotonic()
        if now >= self._next_log:
            more = (f" ({self._unlogged} more errors since the last report)"
                    if self._unlogged else "")
            log.warning("forward auth %s: %s; answering %d%s", self.url, detail, status, more)
            self._next_log = now + LOG_INTERVAL
            self._unlogged = 0
        else:
            self._unlogged += 1
        return Decision(False, status, _local_response(status, text))

    @property
    def idle_connections(self) -> int:
        return sum(1 for c in self._idle if not c.closed)

    async def close(self) -> None:
        """Close the idle connections; checks still running finish without pooling."""
        self._closed = True
        idle = self._idle
        while idle:
            idle.pop().close()
        await asyncio.sleep(0)  # let the transports run their close callbacks


def _relay(head: MessageHead, body: bytes) -> bytes:
    """The auth service's refusal as our response: its fields minus hop-by-hop and framing."""
    hop = _HOP_BY_HOP | _token_list(head.get_all(b"connection"))
    out = [b"HTTP/1.1 %d %s\r\n" % (head.status, head.reason)]
    for name, value in head.headers():
        low = name.lower()
        if low in hop or low == b"content-length" or low.startswith(b"proxy-"):
            continue
        out.append(b"%s: %s\r\n" % (name, value))
    # A 304's Content-Length would describe another response; a 204 has none (RFC
    # 9110 §8.6).
    if head.status not in (204, 304):
        out.append(b"Content-Length: %d\r\n" % len(body))
    out.append(b"\r\n")
    out.append(body)
    return b"".join(out)
