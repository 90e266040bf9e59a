# cython: freethreading_compatible = False
"""The connection state machine of a worker, compiled.

`ClientConnection`    the client socket's asyncio protocol: bytes in, parsed
                      requests out, in order; client timeouts and back-pressure.
`Exchange`            one request from its head to the end of its response. It
                      alone knows the phase order: route -> limits ->
                      action (a redirect or static answer ends here; a
                      proxy action renders rewrites and header edits) -> (100
                      Continue) -> balancer pick -> pooled or new upstream
                      connection -> rewritten head + streamed body -> response
                      head rewrite -> streamed response -> access log ->
                      keep-alive or close.
`UpstreamConnection`  the upstream socket's protocol; reports the parsed
                      response to the exchange using it.
`ServerPool`          one upstream server: its idle keep-alive connections.
`Core`                the per-worker state these share.

The parsers call these classes as C methods (`ParserHandler`); they call each
other, the router (`_router`), the route actions (`_actions`), the balancer
(`_balance`) and the header rewriter (`_rewrite`) as C functions. No Python
frame runs per request unless the access log is on. This module imports only the standard library and the
other ext modules; the worker passes in the Python-layer objects it needs
(access log, local-response maker, config values).
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Clear
from libc.math cimport NAN
from libc.stdint cimport uint64_t
from libc.string cimport memcpy
from libc.errno cimport EINTR, errno
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec, writev


cdef extern from "<time.h>" nogil:
    enum: CLOCK_MONOTONIC_COARSE


cdef extern from "<sys/socket.h>" nogil:
    struct linger:
        int l_onoff
        int l_linger
    int SOL_SOCKET
    int SO_LINGER
    int setsockopt(int fd, int level, int name, const void* value, unsigned int size)

from fastproxy._http cimport (
    K_CHUNKED,
    K_LENGTH,
    K_NONE,
    MessageHead,
    ParserHandler,
    RequestParser,
    ResponseParser,
)
from fastproxy._balance cimport ALL_BUSY, NO_PEER, Balancer, RetryBudget, hash_bytes
from fastproxy._rewrite cimport FR_CHUNKED, FR_CLOSE, FR_PASS, request_head, response_head
from fastproxy._router cimport RequestContext, Router, Rule, new_context
from fastproxy._actions cimport LocalAction, ProxyAction, Template
from fastproxy._url cimport IpSet, cookie_get, real_client
from fastproxy._ratelimit cimport BanTable, ConnTable, RateLimit, ip_key
from fastproxy._cache cimport cache_key
from fastproxy._httpcache cimport RouteCache, Stored, wall_now
from fastproxy._compress cimport (C_NONE, D_IDENTITY, Encoder, Policy, coding_name,
                                  rewrite_prefix, stored_form, StoredForm)
from fastproxy._peers cimport now_ns
from fastproxy._tops cimport Analytics
from fastproxy._proxyproto cimport socket_addresses, tlv, upstream_header
from fastproxy._tls cimport TlsPipe
from fastproxy._proxyproto import (PP2_CLIENT_CERT_CONN, PP2_CLIENT_SSL, PP2_SUBTYPE_SSL_CIPHER,
                                   PP2_SUBTYPE_SSL_CN, PP2_SUBTYPE_SSL_VERSION, PP2_TYPE_ALPN,
                                   PP2_TYPE_AUTHORITY, PP2_TYPE_SSL)
from fastproxy._stats cimport (Stats, stat_add, ST_ACCEPTED, ST_CLOSED, ST_OPEN, ST_BYTES_IN,
                               ST_BYTES_OUT, ST_WAF, ST_RATE_LIMITED, ST_TLS_HANDSHAKES,
                               ST_DENIED, SV_REQUESTS,
                               SV_FAILURES, SV_IN_FLIGHT, UP_FAILURES, UP_COUNTS,
                               ROUTE_COUNTS, CA_HIT, CA_MISS, CA_STALE, CA_BYPASS)
from libc.stdint cimport int64_t

import asyncio
import logging
import os
from functools import partial
import ssl
from collections import deque

from fastproxy._http import HttpParseError
from fastproxy._tls import TlsConnection as _TlsTransport
from fastproxy._tls import PlainConnection as _OwnPlainTransport
from fastproxy._httpcache import DEFAULT_KEY
from fastproxy.routeconf import parse_template

try:
    from uvloop.loop import TCPTransport as _PlainTransport
except ImportError:  # another event loop: always write through the transport
    _PlainTransport = None

log_client = logging.getLogger("fastproxy.client")
log_proxy = logging.getLogger("fastproxy.proxy")
log_waf = logging.getLogger("fastproxy.waf")

# Methods whose request may be sent again when a reused connection turns out
# dead before any byte of the answer (RFC 9110 §9.2.2), when it has no body.
cdef frozenset _SAFE = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE"])
cdef frozenset _IDEMPOTENT = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT",
                                        b"DELETE"])
cdef bytes _CRLF = b"\r\n"
cdef bytes _LAST_CHUNK = b"0\r\n\r\n"
cdef tuple FILL_DROP = (b"if-none-match", b"if-modified-since", b"if-match",
                        b"if-unmodified-since", b"range", b"if-range")
cdef bytes _CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# What a stored response's URL is, for purges (the cache's default key).
cdef Template _CACHE_URL = Template(parse_template(DEFAULT_KEY))
cdef bytes _TOO_MANY_BODY = b"429 Too Many Requests: too many connections from this address\n"
cdef bytes _TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 429 Too Many Requests\r\nServer: fastproxy\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY))

cdef class Core
cdef class ClientConnection
cdef class Exchange
cdef class UpstreamConnection
cdef class ServerPool
cdef class WaitQueue
cdef class GroupBase
cdef class Tunnel

cdef enum:
    PENDING_LIMIT = 64 * 1024  # request body bytes buffered before an upstream is ready
    # A stored body bigger than this is compressed in slices of SLICE bytes, one per
    # loop iteration (about 1 ms each with gzip level 5), not in one go.
    SLICE_ABOVE = 64 * 1024
    SLICE = 64 * 1024
    # Upstream bytes compressed in one loop iteration before the loop runs again.
    YIELD_AFTER = 64 * 1024

# Shutdown: how long a connection that has sent nothing yet may take to send its
# first request (see Core.close_idle_clients).
DEF FRESH_GRACE = 2.0

# Why the client's reading is held (bits of ClientConnection.holds).
cdef enum:
    HOLD_PIPELINE = 1  # a pipelined request waits for the response before it
    HOLD_UPSTREAM = 2  # the upstream cannot take more of the request body yet

# What the deadline of a client connection means when it passes.
cdef enum:
    WAIT_NONE = 0
    WAIT_HEAD = 1  # reading a request head -> 408
    WAIT_IDLE = 2  # keep-alive, between requests -> close quietly
    WAIT_BODY = 3  # reading a request body -> 408
    WAIT_SEND = 4  # the client does not read our response -> abort
    WAIT_LINGER = 5  # lingering close: the client sent nothing for a while -> close
    WAIT_CLOSING = 6  # closed, but the client does not read the rest of our answer -> abort
    WAIT_TUNNEL = 7  # switched protocols: no bytes either way for the route's idle time -> close
    WAIT_H2 = 8  # an HTTP/2 connection: its session's deadline (idle, shutdown) -> the session

# The HTTP/2 client connection preface (RFC 9113 3.4): h2c with prior knowledge.
cdef bytes _H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


# -- writing to a socket -----------------------------------------------------------------
#
# uvloop writes at once when nothing is queued for the socket, but reaching that
# point costs about 1,000 instructions per write() call (Python-level method call,
# its buffer list, the iovec set-up). When the transport is a plain uvloop TCP
# transport that is open and has nothing queued, we make the same write(v) system
# call here. Whatever the kernel does not take goes to the transport, which keeps
# the order from then on (`queued`), buffers, and pauses the protocol as usual.
# TLS and other transports never match `_PlainTransport` and always go through
# the transport.

cdef enum:
    MAX_IOV = 16


cdef int plain_fd(object transport) noexcept:
    """The socket's file descriptor if we may write to it ourselves, else -1."""
    if _PlainTransport is None or type(transport) is not _PlainTransport:
        return -1
    try:
        return transport.get_extra_info("socket").fileno()
    except Exception:
        return -1


cdef int send_via_transport(object transport, object parts, bint single) except -1:
    if type(transport) is _TlsTransport or type(transport) is _OwnPlainTransport:
        # our TLS connection, or a plain one on our own socket: C calls
        if single:
            (<TlsPipe>transport).put(parts)
        elif len(parts) == 1:
            (<TlsPipe>transport).put(parts[0])
        else:
            (<TlsPipe>transport).put_parts(parts)  # joined into one record when small
    elif single:
        transport.write(parts)
    elif len(parts) == 1:
        transport.write(parts[0])
    elif type(transport) is not _PlainTransport:
        # uvloop's TLS (or another transport): one write, as uvloop's TLS transport makes a
        # record per write (a 1 KiB response went out as two records, a head and a
        # body, where nginx sends one); the join costs less than the extra record.
        transport.write(b"".join(parts))
    else:
        transport.writelines(parts)  # a plain socket: no copy
    return 0


cdef int send_parts(object transport, int fd, bint* queued, object parts, bint single) except -1:
    """Send `parts` (bytes-like objects; one object when `single`) in order."""
    cdef Py_buffer views[MAX_IOV]
    cdef iovec iov[MAX_IOV]
    cdef Py_ssize_t n = 1 if single else len(parts)
    cdef Py_ssize_t i, got = 0, total = 0, done, left
    if fd < 0 or n > MAX_IOV or transport.is_closing():
        # (is_closing: uvloop may have started to close the socket after an error;
        # its fd must not be written to from here any more.)
        queued[0] = True  # the transport may keep some of it: it goes first
        return send_via_transport(transport, parts, single)
    if queued[0]:
        if transport.get_write_buffer_size():
            return send_via_transport(transport, parts, single)
        queued[0] = False
    try:
        for i in range(n):
            PyObject_GetBuffer(parts if single else parts[i], &views[i], PyBUF_SIMPLE)
            got += 1
            iov[i].iov_base = views[i].buf
            iov[i].iov_len = views[i].len
            total += views[i].len
        while True:
            done = writev(fd, iov, <int>n)
            if done >= 0 or errno != EINTR:
                break
    finally:
        for i in range(got):
            PyBuffer_Release(&views[i])
    if done == total:
        return 0
    if done < 0:
        # EAGAIN, or an error the transport will meet and report itself.
        queued[0] = True
        return send_via_transport(transport, parts, single)
    # The kernel took part of it: the rest goes through the transport, in order.
    rest = []
    left = done
    for i in range(n):
        part = parts if single else parts[i]
        size = len(part)
        if left >= size:
            left -= size
            continue
        rest.append(memoryview(part)[left:] if left else part)
        left = 0
    queued[0] = True
    transport.writelines(rest)
    return 0


# -- request ids and W3C Trace Context ------------------------------------------------

cdef uint64_t _rng = 0  # splitmix64 state, seeded per worker (Core.__init__, after the fork)
cdef const char* _HEX = b"0123456789abcdef"


cdef inline uint64_t _random64() noexcept nogil:
    """splitmix64: span and trace ids (unique, unpredictable enough, no syscall)."""
    global _rng
    cdef uint64_t z
    _rng += <uint64_t>0x9E3779B97F4A7C15
    z = _rng
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline void _put_hex64(char* out, uint64_t x) noexcept nogil:
    cdef int i
    for i in range(15, -1, -1):
        out[i] = _HEX[x & 15]
        x >>= 4


cdef inline bint _lower_hex(const char* s, Py_ssize_t n, bint* nonzero) noexcept nogil:
    cdef Py_ssize_t i
    cdef char c
    for i in range(n):
        c = s[i]
        if not ((b'0' <= c <= b'9') or (b'a' <= c <= b'f')):
            return False
        if c != b'0':
            nonzero[0] = True
    return True


cdef bint valid_traceparent(bytes value) noexcept:
    """W3C Trace Context version 00: "00-" 32 lower-case hex "-" 16 lower-case hex "-"
    2 lower-case hex, where neither id is all zeros."""
    cdef const char* v = PyBytes_AS_STRING(value)
    cdef bint trace_set = False, parent_set = False, unused = False
    if PyBytes_GET_SIZE(value) != 55 or v[0] != b'0' or v[1] != b'0' or v[2] != b'-' \
            or v[35] != b'-' or v[52] != b'-':
        return False
    return (_lower_hex(v + 3, 32, &trace_set) and _lower_hex(v + 36, 16, &parent_set)
            and _lower_hex(v + 53, 2, &unused) and trace_set and parent_set)


cdef bytes next_traceparent(bytes incoming):
    """The traceparent sent upstream: the incoming (valid) trace with a new span id
    for this hop, or, when `incoming` is None, a new trace (sampled)."""
    cdef char out[55]
    cdef uint64_t span = 0, high = 0, low = 0
    while span == 0:
        span = _random64()
    if incoming is not None:
        memcpy(out, PyBytes_AS_STRING(incoming), 55)
    else:
        while high == 0 and low == 0:
            high = _random64()
            low = _random64()
        memcpy(out, b"00-", 3)
        _put_hex64(out + 3, high)
        _put_hex64(out + 19, low)
        out[35] = b'-'
        out[52] = b'-'
        out[53] = b'0'
        out[54] = b'1'
    _put_hex64(out + 36, span)
    return PyBytes_FromStringAndSize(out, 55)


cdef bint valid_request_id(bytes value) noexcept:
    """An incoming request id worth keeping: 1..128 of A-Z a-z 0-9 - . _ ~ : + / = @"""
    cdef const char* v = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value), i
    cdef char c
    if n == 0 or n > 128:
        return False
    for i in range(n):
        c = v[i]
        if not ((b'a' <= c <= b'z') or (b'A' <= c <= b'Z') or (b'0' <= c <= b'9')
                or c == b'-' or c == b'.' or c == b'_' or c == b'~' or c == b':'
                or c == b'+' or c == b'/' or c == b'=' or c == b'@'):
            return False
    return True


def _trace_test(bytes incoming):
    """For the tests: (valid, the traceparent sent upstream for `incoming` or None)."""
    if incoming is not None and valid_traceparent(incoming):
        return True, next_traceparent(incoming)
    return False, next_traceparent(None)


def _request_id_test(bytes value not None):
    return valid_request_id(value)


# What the trace edits drop from the upstream request (Exchange.trace_drop bits).
cdef enum:
    DROP_ID = 1            # the incoming request id (replaced)
    DROP_PARENT = 2        # traceparent (replaced, or malformed)
    DROP_STATE = 4         # tracestate (with a malformed or missing traceparent)


cdef inline double monotonic() noexcept nogil:
    """time.monotonic() without a Python call (the same clock)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline double coarse() noexcept nogil:
    """The same clock at the kernel tick's resolution (1-10 ms), for deadlines: the
    worker checks them every 0.25 s (worker.TICK), and this read costs about a sixth
    of monotonic()'s (no clock source read: 5 ns against 32 ns here). A deadline set
    from it is at most a tick early."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef class Core:
    """What the connections of one worker share: limits, timeouts, the router,
    the access log, the registries of open connections, the closing flag."""

    cdef public object loop     # set by the worker once its loop exists
    cdef readonly set clients
    cdef readonly set upstream_conns
    cdef public bint closing
    cdef public Router router   # -> the upstream group (upstream.UpstreamGroup)
    cdef object access_log      # .record(exchange), .refused(ip, status, sent)
    cdef bint log_on
    cdef object clock
    cdef object local_response  # (status, clock, keep_alive, head_only) -> bytes
    cdef object local_body_size  # status -> int
    cdef double t_header, t_body, t_keepalive, t_send, t_linger, t_linger_total
    cdef tuple listener_sizes   # per listener: (max_line, max_head, max_count, max_body)
    cdef double min_rate        # bytes/s a request body must average (0: no minimum)
    cdef Py_ssize_t max_connections
    cdef bytes via
    cdef bint merge_slashes
    cdef tuple listener_names   # bytes, by listener index
    cdef list queues            # WaitQueue of every upstream (their deadlines)
    # Per listener: None (plain) or an object with `hsts_line` (bytes or None),
    # `cert_headers` (tuple of (field str, lower-case name, b"Name: ")), `cert_drop`
    # (those lower-case names) and
    # `describe` (ssl_object -> dict of str: client-certificate facts); set by the worker.
    cdef public list tls_listeners
    cdef readonly long long handshake_failures   # TLS handshakes that never completed
    cdef long long max_requests     # per keep-alive connection (0: no limit)
    cdef long long max_in_flight    # requests at once in this worker (0: no limit)
    cdef readonly long long in_flight
    cdef readonly long long shed    # requests refused by max_in_flight
    cdef long long max_per_ip       # connections per client address (0: no limit)
    cdef public ConnTable conn_table  # the instance's counts per address (set by the worker)
    cdef public IpSet trusted       # trusted proxies (None: the peer is the client)
    cdef bytes real_ip_header       # lower case
    cdef int real_ip_kind           # 0: X-Forwarded-For, 1: X-Real-IP, 2: Forwarded
    # Per listener: None, or (allow IpSet or None, deny IpSet or None); set by the worker.
    cdef public list listener_access
    cdef readonly long long refused_per_ip
    cdef readonly BanTable bans     # [auto_ban] (None: off)
    cdef IpSet ban_exempt
    cdef bint ban_waf               # WAF blocks count as refusals
    cdef unsigned char ban_status[100]  # ... and answers with these 4xx statuses
    cdef readonly long long banned  # requests refused because their client is banned
    # Metrics (_stats; None: off): this worker's counters, and where the instance's
    # own series and the series of requests that matched no route start.
    cdef public Stats stats
    cdef public Py_ssize_t stats_instance
    cdef public Py_ssize_t stats_noroute
    cdef public Analytics analytics  # the dashboard's top paths, clients, agents; or None
    # HTTP/2 to clients: (outer client, transport, first bytes) -> a session (set by the
    # worker; None: HTTP/1.1 only), and which listeners take h2c with prior knowledge.
    cdef public object h2_factory
    cdef tuple listener_h2c
    # (status, response bytes) -> the gRPC form of an answer made here (HTTP 200,
    # grpc-status), for requests with a gRPC content type; None: answered as made.
    cdef public object grpc_local
    # The ClientConnections in `clients` that are HTTP/2 streams, not connections:
    # [server] max_connections counts connections only.
    cdef public Py_ssize_t h2_streams

    cdef void instance_add(self, int what, int64_t v) noexcept:
        """Count on the instance's own series (metrics), when they are on."""
        if self.stats is not None and self.stats_instance >= 0:
            self.stats.mine[self.stats_instance + what] += v
    # [tracing]
    cdef bint rid_on                # request ids go upstream and back
    cdef int rid_trust              # 0: never kept, 1: from trusted proxies, 2: always
    cdef bytes rid_name             # its field, lower case
    cdef bytes rid_prefix           # b"X-Request-ID: "
    cdef tuple rid_drop             # (rid_name,): an upstream's own is not passed on
    cdef bint tp_on                 # traceparent: a span per hop
    cdef bint tp_start              # ... and a new trace when there is none
    cdef tuple trace_drops          # by DROP_* bits: the names left out upstream

    def __init__(self, config, router, access_log, clock, local_response, local_body_size):
        limits = config.limits
        timeouts = config.timeouts
        self.clients = set()
        self.upstream_conns = set()
        self.stats_instance = -1
        self.stats_noroute = -1
        self.router = router
        self.access_log = access_log
        self.log_on = access_log.enabled
        self.clock = clock
        self.local_response = local_response
        self.local_body_size = local_body_size
        self.t_header = timeouts.header
        self.t_body = timeouts.body
        self.t_keepalive = timeouts.keepalive
        self.t_send = timeouts.send
        self.t_linger = timeouts.lingering_timeout
        self.t_linger_total = timeouts.lingering_time
        self.listener_sizes = tuple(
            (l.size(limits, "max_line_bytes"), l.size(limits, "max_header_bytes"),
             l.size(limits, "max_header_count"), l.size(limits, "max_body_bytes"))
            for l in config.listeners)
        self.min_rate = timeouts.body_min_rate
        self.max_connections = config.server.max_connections
        self.via = b"1.1 fastproxy" if config.server.via else b""
        self.merge_slashes = config.routing.merge_slashes
        self.listener_names = tuple(l.name.encode() for l in config.listeners)
        self.listener_h2c = tuple(bool(getattr(l, "h2c", False)) for l in config.listeners)
        self.queues = []
        self.max_requests = limits.max_requests_per_connection
        self.max_in_flight = limits.max_in_flight
        self.max_per_ip = limits.max_connections_per_ip
        self.real_ip_header = config.server.real_ip_header.lower().encode()
        self.real_ip_kind = ("x-forwarded-for", "x-real-ip", "forwarded").index(
            config.server.real_ip_header.lower())
        self.listener_access = [None] * len(self.listener_names)
        self.tls_listeners = [None] * len(self.listener_names)
        self.set_tracing(config.tracing)

    def set_tracing(self, tracing):
        """[tracing]: request ids and traceparent (config.Tracing)."""
        global _rng
        _rng = int.from_bytes(os.urandom(8), "little")  # per worker: made after the fork
        self.rid_on = tracing.request_id
        self.rid_trust = ("never", "trusted_proxies", "always").index(tracing.trust_request_id)
        self.rid_name = tracing.request_id_header.lower().encode()
        self.rid_prefix = tracing.request_id_header.encode() + b": "
        self.rid_drop = (self.rid_name,)
        self.tp_on = tracing.traceparent
        self.tp_start = tracing.start_trace
        self.trace_drops = tuple(
            ((self.rid_name,) if bits & DROP_ID else ()) +
            ((b"traceparent",) if bits & DROP_PARENT else ()) +
            ((b"tracestate",) if bits & DROP_STATE else ()) for bits in range(8))

    def set_auto_ban(self, BanTable table not None, IpSet exempt, bint waf, statuses):
        """Count refusals (WAF blocks when `waf`, answers with a status in
        `statuses`) per client in `table`, except for clients in `exempt`."""
        cdef int status
        self.bans = table
        self.ban_exempt = exempt
        self.ban_waf = waf
        for status in range(400, 500):
            self.ban_status[status - 400] = status in statuses

    cdef int ban_event(self, bytes ip) except -1:
        """One refusal of the client `ip`; the one that bans it is logged."""
        cdef int64_t ban
        if self.ban_exempt is not None and self.ban_exempt.contains(ip):
            return 0
        ban = self.bans.event(ip_key(ip), now_ns())
        if ban:
            log_proxy.warning("auto-ban: client %s refused for %d s after repeated refusals",
                              ip.decode("ascii", "replace"), ban // 1000000000)
        return 0

    def new_queue(self, Py_ssize_t capacity, double timeout):
        """A queue for the requests of one upstream waiting for a server with room."""
        queue = WaitQueue(capacity, timeout)
        self.queues.append(queue)
        return queue

    def client_factory(self, int listener):
        """The protocol factory of listener number `listener` (config order)."""
        if not 0 <= listener < len(self.listener_names):
            raise ValueError(f"no listener number {listener}")
        def new_client():
            return ClientConnection(self, listener)
        return new_client

    def expire(self, double now):
        """Act on every deadline that has passed (the worker's tick calls this)."""
        cdef ClientConnection client
        cdef UpstreamConnection conn
        for client in [c for c in self.clients
                       if (<ClientConnection>c).deadline and (<ClientConnection>c).deadline <= now]:
            client.timed_out()
        for conn in [c for c in self.upstream_conns
                     if (<UpstreamConnection>c).deadline and
                     (<UpstreamConnection>c).deadline <= now]:
            conn.timed_out()
        for queue in self.queues:
            (<WaitQueue>queue).expire(now)

    def close_idle_clients(self):
        """Shutdown: close the keep-alive connections that are between requests. A
        connection that has not sent its first request yet (accepted just before
        the listener closed, its request on the way) gets FRESH_GRACE seconds to
        send it, as nginx does, instead of a reset."""
        cdef ClientConnection client
        cdef double grace = monotonic() + FRESH_GRACE
        for client in list(self.clients):
            if client.h2 is not None and not client.lingering:
                client.h2.shutdown()  # GOAWAY; the streams in flight finish
            elif client.lingering:
                client.lingering = False
                client.transport.close()
            elif client.exchange is None and not client.closed:
                if client.waiting == WAIT_HEAD and client.served == 0:
                    if client.deadline > grace:
                        client.deadline = grace
                    continue
                client.closed = True
                client.transport.close()

    def abort_all(self):
        """End of a shutdown: cut every connection still open."""
        cdef ClientConnection client
        cdef UpstreamConnection conn
        for client in list(self.clients):
            client.reset()  # closed ones too: a close may be waiting on a client that never reads
        for conn in list(self.upstream_conns):
            conn.abort()


# -- the client side ------------------------------------------------------------------

@cython.final
cdef class ClientConnection(ParserHandler):
    """One accepted client socket. Feeds the request parser, starts an
    `Exchange` per request head, holds pipelined bytes until the previous
    response is complete, enforces the client-side timeouts and relays
    back-pressure between the client socket and the exchange."""

    cdef Core core
    cdef readonly object transport
    cdef RequestParser parser
    cdef readonly Exchange exchange
    cdef bytes pending          # pipelined bytes held until the current exchange ends
    cdef int holds
    cdef readonly bytes ip
    cdef readonly bytes proto
    cdef double deadline
    cdef int waiting
    cdef bint write_paused
    cdef bint closed
    cdef bint eof
    cdef readonly bint lingering  # answered and half-closed; reading and dropping input
    cdef double linger_end
    cdef list out               # client-bound bytes of one upstream read (reused)
    cdef int fd                 # for send_parts: -1 = always through the transport
    cdef bint queued            # the transport may hold unsent bytes
    cdef readonly int listener  # index of the listener that accepted it
    cdef bint made              # connection_made ran (for TLS: the handshake completed)
    cdef int served             # requests answered on it
    cdef bint ip_counted        # counted in core.conn_table (released when it closes)
    cdef readonly dict tls      # TLS facts (client certificate) for routing; None: plain
    cdef tuple tls_drop         # client-certificate headers removed from requests
    cdef bytes tls_extra        # ... and sent with the verified values instead
    cdef bytes hsts             # Strict-Transport-Security line for responses, or None
    cdef long long max_body     # the listener's request body limit (0: none)
    cdef bint peer_given        # `ip` came from a PROXY protocol header
    cdef double body_start      # when the current request body began (body_min_rate)
    cdef long long body_bytes   # ... and how much of it came since
    cdef double held_since      # when reading was last paused (holds became non-zero)
    cdef Tunnel tunnel          # after a switch of protocols (101): bytes go through it
    # PROXY protocol to upstreams (see proxy_header): the client's port and the address
    # it reached, from its PROXY header or the socket (None: not looked up yet) ...
    cdef tuple pp_addrs
    cdef bytes pp_for           # ... and the headers made for this client address
    cdef bytes pp_v1, pp_v2
    cdef bytes pp_tlvs          # v2 TLVs of a TLS client (b"": none; None: not made yet)
    cdef object h2              # the HTTP/2 session this socket speaks (None: HTTP/1.x)
    cdef readonly bint stream   # one HTTP/2 stream over a virtual transport (h2server)
    cdef bytes h2c_head         # h2c listener: the first bytes, until the preface is known

    def __cinit__(self, Core core not None, int listener=0):
        self.core = core
        self.listener = listener
        self.out = []
        self.fd = -1
        self.ip = b"-"
        self.proto = b"http"

    def __dealloc__(self):
        # Made at accept; on a TLS listener connection_made comes only after the
        # handshake, so one that never got it is a handshake that failed or timed out.
        if not self.made and self.core is not None:
            self.core.handshake_failures += 1

    def set_peer(self, bytes ip not None, int port=0, bytes dst_ip=None, int dst_port=0):
        """The client's address as a PROXY protocol header gave it (before
        connection_made): used instead of the TCP peer's everywhere. The port and
        the destination go on in the PROXY headers sent to upstreams."""
        self.ip = ip
        self.peer_given = True
        if dst_ip is not None:
            self.pp_addrs = (port, dst_ip, dst_port)

    cdef bytes proxy_header(self, bytes src, int version):
        """The PROXY protocol header (`version` 1 or 2) that starts a connection to an
        upstream for a request of client `src` (the client address after
        trusted_proxies): src and its port (0 when `src` came from a trusted proxy's
        header, which names no port), to the address this client reached (as its own
        PROXY header named them, else the socket's). Made once per client connection
        and address; an address the header cannot carry gives v1 UNKNOWN / v2 LOCAL."""
        cdef bytes header
        cdef int port
        if src != self.pp_for:
            self.pp_for = src
            self.pp_v1 = self.pp_v2 = None
        header = self.pp_v1 if version == 1 else self.pp_v2
        if header is not None:
            return header
        if self.pp_addrs is None:
            self.pp_addrs = socket_addresses(self.transport)
        port = <int>self.pp_addrs[0] if src == self.ip else 0
        if version != 1 and self.pp_tlvs is None:
            self.pp_tlvs = b"" if self.tls is None or self.transport is None else \
                tls_tlvs(self.transport.get_extra_info("ssl_object"))
        header = upstream_header(version, src, port, self.pp_addrs[1], self.pp_addrs[2],
                                 (self.pp_tlvs or None) if version != 1 else None)
        if version == 1:
            self.pp_v1 = header
        else:
            self.pp_v2 = header
        return header

    def set_stream(self, bytes ip not None, ClientConnection outer=None):
        """Make this connection one HTTP/2 stream of a client connection from `ip`
        (before connection_made): it is not counted as a connection, and its
        transport is the stream's. The PROXY headers to upstreams name the port and
        destination of `outer` (the socket's connection: what its own PROXY header
        said, if any)."""
        self.ip = ip
        self.peer_given = True
        self.stream = True
        if outer is not None:
            self.pp_addrs = outer.pp_addrs
            if outer.tls is not None:
                # The stream shares its socket's handshake: the same TLS facts (read
                # only), not worked out again for every stream (connection_made).
                self.proto = outer.proto
                self.hsts = outer.hsts
                self.tls = outer.tls
                self.tls_drop = outer.tls_drop
                self.tls_extra = outer.tls_extra
                self.pp_tlvs = outer.pp_tlvs

    def h2_wait(self, double seconds):
        """The HTTP/2 session's deadline on this socket (0: none)."""
        self._wait(WAIT_H2 if seconds > 0 else WAIT_NONE, seconds)

    def h2_close(self, bint abort):
        """The HTTP/2 session ends the socket: at once, or after what was written with
        a lingering close (its GOAWAY must not be lost to a reset for unread input)."""
        if abort:
            self.reset()
        else:
            self._close(True)

    # -- asyncio.Protocol ---------------------------------------------------------
    def connection_made(self, transport):
        cdef Core core = self.core
        self.made = True
        self.transport = transport
        if not self.stream:
            core.instance_add(ST_ACCEPTED, 1)
            core.instance_add(ST_OPEN, 1)
        if len(core.clients) - core.h2_streams >= core.max_connections and not self.stream:
            self.closed = True
            transport.abort()
            return
        if not self.peer_given:
            peer = transport.get_extra_info("peername")
            if peer:
                self.ip = (<str>peer[0]).encode("ascii")
        if core.max_per_ip and core.conn_table is not None and not self.stream:
            if not core.conn_table.acquire(ip_key(self.ip), core.max_per_ip):
                # Told why, in one write, without reading what it sends.
                self.closed = True
                core.refused_per_ip += 1
                transport.write(_TOO_MANY_CONNECTIONS)
                transport.close()
                return
            self.ip_counted = True
        self.fd = plain_fd(transport)
        info = core.tls_listeners[self.listener]
        if info is not None and self.stream and self.tls is not None:
            pass  # the socket's TLS facts, copied by set_stream
        elif info is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            self.tls_made(info, ssl_object)
            if (core.h2_factory is not None and not self.stream and ssl_object is not None
                    and ssl_object.selected_alpn_protocol() == "h2"):
                core.clients.add(self)
                self.h2 = core.h2_factory(self, transport, None)
                return
        elif core.h2_factory is not None and core.listener_h2c[self.listener]:
            self.h2c_head = b""
        sizes = <tuple>core.listener_sizes[self.listener]
        self.parser = RequestParser(self, max_line_bytes=sizes[0], max_header_bytes=sizes[1],
                                    max_header_count=sizes[2])
        self.max_body = sizes[3]
        if self.stream:
            core.h2_streams += 1
        core.clients.add(self)
        self._wait(WAIT_HEAD, core.t_header)

    cdef int tls_made(self, object info, object ssl_object) except -1:
        """A TLS connection: the scheme, HSTS and the client-certificate facts."""
        cdef list lines
        self.proto = b"https"
        if not self.stream:  # (an HTTP/2 stream shares its connection's handshake)
            self.core.instance_add(ST_TLS_HANDSHAKES, 1)
        self.hsts = info.hsts_line
        self.tls = info.describe(ssl_object) if ssl_object is not None else {}
        if info.cert_headers:
            lines = []
            for field, _, prefix in info.cert_headers:
                value = self.tls.get(field)
                if value is not None:
                    # The facts are ASCII (RFC 4514 escapes the rest); never a CR/LF.
                    lines.append(prefix + (<str>value).encode("ascii", "replace")
                                 .replace(b"\r", b"?").replace(b"\n", b"?") + _CRLF)
            self.tls_drop = info.cert_drop
            self.tls_extra = b"".join(lines)
        return 0

    def data_received(self, bytes data):
        if self.h2 is not None:
            self.h2.data_received(data)
            return
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return
        if self.h2c_head is not None:
            # An h2c listener: the client preface chooses HTTP/2 (prior knowledge).
            data = self.h2c_head + data
            if len(data) < 24 and _H2_PREFACE.startswith(data):
                self.h2c_head = data
                return
            self.h2c_head = None
            if data.startswith(_H2_PREFACE) and not self.closed:
                self.parser = None
                self._wait(WAIT_NONE, 0.0)
                self.h2 = self.core.h2_factory(self, self.transport, data)
                return
        if self.lingering:  # dropped: the answer is out and the connection ends
            self.deadline = min(coarse() + self.core.t_linger, self.linger_end)
            return
        if self.pending is not None:  # reading is held; keep order
            self.pending += data
            return
        if self.exchange is not None and self.exchange.req_done:
            # The next request, pipelined in a read of its own: held until this
            # response is out (parsed now, it would start a second exchange whose
            # response could go out first).
            self.pending = data
            self.hold_reading(HOLD_PIPELINE, True)
            return
        if self.waiting == WAIT_IDLE:
            self._wait(WAIT_HEAD, self.core.t_header)
        self._feed(data)

    def eof_received(self):
        # A half-closed client still gets the answer to a request it completed.
        cdef Exchange ex = self.exchange
        self.eof = True
        if self.h2 is not None:
            return self.h2.eof_received()
        if self.tunnel is not None:
            return self.tunnel.eof(False)
        if ex is not None and ex.req_done and not ex.finished:
            return True  # keep the transport open to send the answer
        if not self.closed:
            self.closed = True  # the transport closes now, once its buffer is flushed
            self.waiting = WAIT_CLOSING
            self.deadline = coarse() + self.core.t_send
        return False

    def connection_lost(self, exc):
        cdef Exchange ex = self.exchange
        cdef Core core = self.core
        self.closed = True
        if self.stream and self in core.clients:
            core.h2_streams -= 1
        core.clients.discard(self)
        if self.h2 is not None:
            session = self.h2
            self.h2 = None
            session.connection_lost(exc)
        if self.made and not self.stream:
            core.instance_add(ST_CLOSED, 1)
            core.instance_add(ST_OPEN, -1)
        if self.ip_counted:
            self.ip_counted = False
            self.core.conn_table.release(ip_key(self.ip))
        if ex is not None:
            self.exchange = None
            ex.client_lost()
        self.pending = None
        # The parser holds a reference to us: drop it so this connection is
        # freed by reference counting, not left for the cyclic GC.
        self.parser = None
        if self.tunnel is not None:
            tunnel = self.tunnel
            self.tunnel = None
            (<Tunnel>tunnel).lost(False)

    def pause_writing(self):
        self.write_paused = True
        if self.h2 is not None:
            self._wait(WAIT_SEND, self.core.t_send)
            self.h2.pause_writing()
            return
        if self.tunnel is not None:
            self.tunnel.client_paused(True)
            return
        self._wait(WAIT_SEND, self.core.t_send)
        if self.exchange is not None:
            self.exchange.client_write_paused(True)

    def resume_writing(self):
        self.write_paused = False
        if self.h2 is not None:
            if self.waiting == WAIT_SEND:
                self._wait(WAIT_NONE, 0.0)
            self.h2.resume_writing()
            return
        if self.tunnel is not None:
            self.tunnel.client_paused(False)
            return
        if self.waiting == WAIT_SEND:
            if self.exchange is None:
                self._wait(WAIT_IDLE, self.core.t_keepalive)
            else:
                self._wait(WAIT_NONE, 0.0)
        if self.exchange is not None:
            self.exchange.client_write_paused(False)

    # -- request parser handler -----------------------------------------------------
    cdef int on_head(self, MessageHead head) except -1:
        cdef Exchange ex = new_exchange(self, head)
        self.exchange = ex
        if head.body_kind:
            self._wait(WAIT_BODY, self.core.t_body)
            self.body_start = monotonic()
            self.body_bytes = 0
        else:
            self._wait(WAIT_NONE, 0.0)
        ex.begin()
        return 0

    cdef int on_body(self, object data) except -1:
        cdef Exchange ex = self.exchange
        cdef double now, by
        if ex is not None:
            if self.waiting == WAIT_BODY:
                now = monotonic()
                self.deadline = now + self.core.t_body
                if self.core.min_rate > 0:
                    # The whole body so far must have come at min_rate on average,
                    # after the first `body` seconds (a trickle cannot hold it open).
                    self.body_bytes += len(data)
                    by = self.body_start + self.core.t_body + self.body_bytes / self.core.min_rate
                    if by < self.deadline:
                        self.deadline = by
            ex.request_body(data)
        return 0

    cdef int on_message_complete(self) except -1:
        cdef Exchange ex = self.exchange
        if self.waiting == WAIT_BODY:
            self._wait(WAIT_NONE, 0.0)
        if ex is not None:
            ex.request_complete()
        return 0

    # -- used by the exchange ---------------------------------------------------------
    # uvloop raises on writes to a closed handle: nothing is written once we
    # (or the client's EOF) started closing.
    cdef int write(self, bytes data) except -1:
        if not self.closed:
            send_parts(self.transport, self.fd, &self.queued, data, True)
        return 0

    cdef int write_all(self, list parts) except -1:
        # One gather write (measured cheaper than joining a head and a 1 KiB body).
        if not self.closed:
            send_parts(self.transport, self.fd, &self.queued, parts, False)
        return 0

    cdef int abort(self) except -1:
        """Cut the connection: a reset, so a client never mistakes a cut response
        (a close-delimited one above all) for a complete one."""
        if not self.closed:
            self.reset()
        return 0

    cdef int reset(self) except -1:
        """Abort with a TCP reset, whatever state the connection is in (until
        connection_lost the socket is still this connection's)."""
        cdef linger lg
        self.closed = True
        self.lingering = False
        if self.transport is None:
            return 0
        if type(self.transport) is _OwnPlainTransport:
            (<TlsPipe>self.transport).cut()  # SO_LINGER 0, then close
            return 0
        if self.fd >= 0:
            # uvloop's abort() only drops its own buffer; the kernel would still
            # send what it holds and then a FIN.
            lg.l_onoff = 1
            lg.l_linger = 0
            setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
        self.transport.abort()
        return 0

    cdef int hold_reading(self, int reason, bint on) except -1:
        cdef int before = self.holds
        cdef double held
        self.holds = (before | reason) if on else (before & ~reason)
        if self.closed:
            return 0
        if before and not self.holds:
            self.transport.resume_reading()
            if self.waiting == WAIT_BODY:
                # The time we did not read is not the client's: the body deadlines
                # (gap and minimum rate) move by it.
                held = monotonic() - self.held_since
                self.deadline += held
                self.body_start += held
        elif not before and self.holds:
            self.transport.pause_reading()
            self.held_since = monotonic()
        return 0

    cdef int exchange_done(self, Exchange exchange, bint keep_alive) except -1:
        cdef Core core = self.core
        cdef bytes pending
        self.served += 1
        if self.exchange is exchange:
            self.exchange = None
        if self.tunnel is not None:
            return 0  # switched protocols: the connection is the tunnel's now
        if self.holds & HOLD_UPSTREAM:
            self.hold_reading(HOLD_UPSTREAM, False)  # that upstream is not ours any more
        if self.closed:
            return 0
        if not keep_alive or core.closing or (self.eof and self.pending is None):
            # Bytes of this request or of later ones may still be coming: linger.
            self._close(not exchange.req_done or self.pending is not None)
            return 0
        if self.write_paused:
            self._wait(WAIT_SEND, core.t_send)
        else:
            self._wait(WAIT_IDLE, core.t_keepalive)
        pending = self.pending
        if pending is not None:
            self.pending = None
            self._wait(WAIT_HEAD, core.t_header)
            self._feed(pending)
            # Reading resumes only after the held bytes are parsed: a TLS transport
            # hands over what it has decrypted within resume_reading, and those
            # later bytes went to the parser first (pipelined requests reordered).
            if self.pending is None:
                self.hold_reading(HOLD_PIPELINE, False)
        return 0

    # -- internals --------------------------------------------------------------------
    cdef int _feed(self, bytes data) except -1:
        cdef RequestParser parser = self.parser
        cdef Py_ssize_t n
        while not self.closed:
            try:
                n = parser.feed(data)
            except HttpParseError as e:
                self._refuse(e.status, e.reason)
                return 0
            if n == len(data):
                return 0
            data = data[n:]
            if self.exchange is not None:
                # The next request is pipelined: hold it until this response is out.
                self.pending = data
                self.hold_reading(HOLD_PIPELINE, True)
                return 0
        return 0

    cdef int _refuse(self, int status, str reason, bint linger=True) except -1:
        """A request we cannot trust: answer `status` and close; nothing is forwarded."""
        cdef Core core = self.core
        cdef Exchange ex = self.exchange
        self.exchange = None
        if ex is not None and not ex.finished:
            if ex.resp_started:
                # A bad chunk after the response began: the framing is gone. Abort
                # first, so that the exchange ending does not close gracefully.
                self.abort()
                ex.client_lost()
                return 0
            if ex.conn is not None:
                ex.conn.abort()
                ex.conn = None
            ex.finished = True
            ex.status = status
            ex.sent = core.local_body_size(status)
            ex.settle(PEER_UNKNOWN)  # the request's share of limits, queues, the server
            if core.stats is not None:
                ex.count_request()
            if core.log_on:
                core.access_log.record(ex)
        elif core.log_on:
            core.access_log.refused(self, status, core.local_body_size(status))
        if core.bans is not None and 400 <= status < 500 and core.ban_status[status - 400] \
                and (core.trusted is None or not core.trusted.contains(self.ip)):
            # A bad request counts against its sender; not against a trusted proxy,
            # which speaks for many clients.
            core.ban_event(self.ip)
        log_client.info("client %s: %d %s", self.ip.decode(), status, reason)
        self.write(core.local_response(status, core.clock, False))
        self._close(linger)
        return 0

    cdef int _close(self, bint linger) except -1:
        """End the connection after what was written. With `linger`, when the client
        may still be sending (the rest of a request body, pipelined requests), do it
        as nginx's lingering close does: half-close after the answer, then read and
        drop input until the client has been quiet for lingering_timeout (or
        lingering_time in all). Closing with unread input would make the kernel
        send a reset, which can destroy the answer before the client reads it."""
        cdef Core core = self.core
        cdef double now
        if self.closed:
            return 0
        self.closed = True
        self.pending = None
        if linger and not self.eof and core.t_linger_total > 0:
            try:
                self.transport.write_eof()  # FIN once the answer is flushed
            except Exception:
                linger = False
        else:
            linger = False
        if not linger:
            self.transport.close()  # flushes what is written, then closes
            # A client that never reads the rest would keep it open: send timeout.
            self.waiting = WAIT_CLOSING
            self.deadline = coarse() + core.t_send
            return 0
        self.lingering = True
        if self.holds:
            self.holds = 0
            self.transport.resume_reading()
        now = monotonic()
        self.linger_end = now + core.t_linger_total
        self.waiting = WAIT_LINGER
        self.deadline = min(now + core.t_linger, self.linger_end)
        return 0

    cdef inline void _wait(self, int what, double seconds) noexcept:
        if self.closed:
            return  # _close set the last deadline
        if self.write_paused and self.waiting == WAIT_SEND:
            return  # the client is not reading: its send timeout keeps running
        self.waiting = what
        self.deadline = coarse() + seconds if what else 0.0

    cdef int timed_out(self) except -1:
        """The worker's tick found `deadline` passed."""
        cdef int what = self.waiting
        cdef double now
        cdef Exchange ex
        self.waiting = WAIT_NONE
        self.deadline = 0.0
        if what == WAIT_TUNNEL and not self.closed:
            self.tunnel.idle_out()
            return 0
        if what == WAIT_H2 and not self.closed and self.h2 is not None:
            self.h2.timed_out()
            return 0
        if what == WAIT_LINGER and self.lingering:
            now = monotonic()
            if now < self.linger_end and self.transport.get_write_buffer_size():
                # The answer is still going out: the quiet time counts from its end.
                self.waiting = WAIT_LINGER
                self.deadline = min(now + self.core.t_linger, self.linger_end)
                return 0
        if self.closed:
            # Lingering is over, or a close waits on a client that does not read.
            self.reset()
            return 0
        if what == WAIT_BODY and self.holds:
            # We are not reading the body (hold_reading): not the client's delay.
            self._wait(WAIT_BODY, self.core.t_body)
            return 0
        if what == WAIT_IDLE or (what == WAIT_HEAD and not self.parser._mid_message):
            self._close(False)  # nothing asked: close quietly, as nginx does
        elif what == WAIT_HEAD or (what == WAIT_BODY and not (
                self.exchange is not None and self.exchange.resp_started)):
            self._refuse(408, "request timed out", False)  # no lingering for the slow
        else:
            ex = self.exchange
            self.exchange = None
            self.abort()  # first: the exchange ending must not turn it into a graceful close
            if ex is not None:
                ex.client_lost()
        return 0


def _forward_checked(Exchange ex, future):
    """On the loop, when an auth service check is over."""
    try:
        decision = future.result()
    except asyncio.CancelledError:  # the worker is stopping
        decision = None
    except Exception:  # a broken check is a refusal, never a crash
        log_proxy.exception("forward auth check failed")
        decision = None
    ex.forward_done(decision)


def _limits_checked(Exchange ex, future, int64_t longest):
    """On the loop, when a route's limits with a store among them are checked."""
    try:
        result = future.result()
    except asyncio.CancelledError:  # the worker is stopping
        result = None
    except Exception:  # a broken check refuses, never crashes
        log_proxy.exception("rate-limit check failed")
        result = None
    ex.limits_checked(result, longest)


def _fill_wait_over(Exchange ex):
    """lock_timeout: a request that waited for another's fill goes on alone."""
    if not ex.waiting_fill or ex.finished:
        return
    waiters = ex.cache.fills.get(ex.cache_primary)
    if waiters is not None and ex in waiters:
        waiters.remove(ex)
    ex.fill_over(None)


def _disk_found(Exchange ex, found):
    """On the loop, when the disk tier answered a lookup."""
    ex.shared_found(found, None)


def _redis_found(Exchange ex, found):
    """On the loop, when the Redis tier answered a lookup."""
    ex.shared_found(found, "redis")


def _shared_committed(RouteCache cache, uint64_t primary, ok):
    """On the loop, when a response kept on disk or in Redis only (too big for the
    memory tier) is written (or failed): the requests that waited for it look
    again (there) or fetch it themselves."""
    waiters = cache.fills.pop(primary, None)
    if waiters:
        for ex in <list>waiters:
            (<Exchange>ex).fill_retry(None)


def _held(Exchange ex):
    ex.hold_over()


def _next_slice(Exchange ex):
    ex.next_slice()


def _read_on(Exchange ex):
    """The loop ran once since the upstream's reading was stopped for compression."""
    ex.read_on()


def _auth_checked(Exchange ex, auth, bytes header, future):
    """On the loop, when a password check done in a thread is over."""
    try:
        ok = bool(future.result())
    except Exception:  # a broken check is a refusal, never a crash
        log_proxy.exception("basic auth check failed")
        ok = False
    auth.remember(header, ok)
    ex.auth_done(ok)


# Trailer fields that are never passed on, whatever the sender meant by them, to an
# HTTP/1.1 client, an HTTP/2 client (trailer_fields) or an HTTP/2 server alike: kinds
# RFC 9110 §6.5.1 says cannot be trailers because they are needed before the content
# (framing, routing, authentication, content format: the proxy acted on the header
# section's, for its checks, compression and cache), Set-Cookie (its definition does
# not allow trailers, so a sender may not generate it there), and the connection's
# own fields (RFC 9110 §7.6.1), which RFC 9113 §8.2.2 forbids in any HTTP/2 field
# block. HTTP/2 adds only pseudo-fields (RFC 9113 §8.1), which a name parsed from an
# HTTP/1.1 trailer line cannot be.
cdef frozenset _TRAILER_DROP = frozenset([
    b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive", b"te",
    b"trailer", b"upgrade", b"proxy-connection", b"content-type", b"content-encoding",
    b"authorization", b"set-cookie"])


cdef list _passed_trailers(bytes trailers):
    """The lines of a trailer section a parser kept ("name: value"), less those never
    passed on."""
    if not trailers:
        return []
    return [line for line in trailers.split(_CRLF)
            if line and line.partition(b":")[0].strip().lower() not in _TRAILER_DROP]


cdef bytes last_chunk(bytes trailers):
    """The end of a chunked body: the last chunk with the trailer fields a parser
    kept (`trailers`, "name: value" lines), less those never passed on."""
    lines = _passed_trailers(trailers)
    if not lines:
        return _LAST_CHUNK
    return b"0\r\n" + _CRLF.join(lines) + b"\r\n\r\n"


def trailer_fields(bytes trailers):
    """The trailer fields that last_chunk passes on, as (lowercase name, value) pairs:
    an HTTP/2 client's trailing HEADERS."""
    cdef list out = []
    for line in _passed_trailers(trailers):
        name, sep, value = line.partition(b":")
        name = name.strip().lower()
        if sep and name:
            out.append((name, value.strip()))
    return out


cdef bint is_grpc(MessageHead head) except -1:
    """A gRPC message (content type application/grpc, +proto, -web ...)."""
    if head is None:
        return False
    value = head.get(b"content-type")
    return value is not None and len(value) >= 16 and value[:16].lower() == b"application/grpc"


cdef bytes upgrade_wanted(bytes value):
    """The Upgrade value to pass on, or None when the request is forwarded as a
    plain one: h2c among the protocols (we do not speak HTTP/2 to upstreams and the
    server must not switch this connection to it; nginx ignores it too)."""
    cdef bytes token
    for token in value.lower().split(b","):
        token = token.strip()
        if token == b"h2c" or token.startswith(b"h2c/"):
            return None
    return value


cdef inline bint refused(tuple acl, bytes ip) except -1:
    """An access list (allow IpSet or None, deny IpSet or None) refuses `ip`."""
    cdef object allow = acl[0], deny = acl[1]
    if deny is not None and (<IpSet>deny).contains(ip):
        return True
    return allow is not None and not (<IpSet>allow).contains(ip)


# What the balancer hears when a request leaves its server (Exchange.peer_done).
cdef enum:
    PEER_ANSWERED = 0
    PEER_FAILED = 1
    PEER_UNKNOWN = 2

# Why a try failed before the response began (Exchange.next_try).
cdef enum:
    TRY_CONNECT = 0   # no connection: nothing was sent, always retried
    TRY_RESET = 1     # the connection closed before a response head
    TRY_TIMEOUT = 2   # no response head in time
    TRY_STATUS = 3    # a 502/503/504 named in retry.on


# -- one request ----------------------------------------------------------------------

cdef Exchange new_exchange(ClientConnection client, MessageHead head):
    cdef Exchange ex = Exchange.__new__(Exchange)
    ex.client = client
    ex.core = client.core
    ex.head = head
    ex.target = head.target
    ex.host = head.host
    ex.upstream_label = "-"
    ex.peer = -1
    ex.t_start = monotonic()
    ex.connect_time = -1.0
    ex.upstream_time = -1.0
    ex.max_body = client.max_body
    ex.out = client.out
    if ex.out:
        PyList_Clear(ex.out)  # left by an exchange cut short
    return ex


@cython.final
@cython.freelist(64)
cdef class Exchange:
    """One request, from its head to the end of its response."""

    cdef readonly ClientConnection client
    cdef Core core
    cdef readonly MessageHead head
    cdef readonly bytes target
    cdef readonly bytes host
    cdef readonly int status
    cdef readonly long long sent
    cdef readonly long long req_bytes   # request body bytes received
    cdef long long max_body     # the listener's or the route's limit (0: none)
    cdef bint req_done
    cdef bint connecting        # between the pick and an attached connection
    cdef list pending           # request body that arrived while connecting
    cdef Py_ssize_t pending_size
    cdef GroupBase group
    cdef Balancer balancer
    cdef Py_ssize_t peer        # index of `pool` in the balancer, -1 when none is in use
    cdef double peer_start      # when the request went to that peer
    cdef bint sticky            # the group has a sticky cookie
    cdef bytes sticky_value     # ... and the request named this server in it (or None)
    cdef uint64_t key           # the hash of the upstream's hash_key (0: none)
    cdef list tried             # peer indexes (in `balancer`) whose try failed
    cdef int retries            # tries after the first, not counting connect failures
    cdef list kept              # the request body as sent, for a retry (None: not kept)
    cdef Py_ssize_t kept_size
    cdef Py_ssize_t kept_limit
    cdef WaitQueue queued       # the queue this request waits in (None: not waiting)
    cdef bint counted           # in core.in_flight
    cdef double queue_deadline
    cdef ServerPool pool
    cdef UpstreamConnection conn
    cdef bint resp_started
    cdef MessageHead resp_head
    cdef int framing
    cdef bint keep
    cdef bint finished
    cdef bint local
    cdef bint interim
    cdef bint retried
    cdef bint continued         # 100 Continue was sent already
    cdef bytearray inspected    # the start of the body, for the WAF (None: not read)
    cdef bint waf_waiting       # the WAF waits for `inspected` to fill
    cdef bint waf_hit           # the WAF blocked it
    # The route's cache (see from_cache)
    cdef RouteCache cache       # set when this request uses it (or invalidates it)
    cdef uint64_t cache_primary # hash of the rendered key
    cdef bytes cache_text       # the key itself, when the cache debugs
    cdef str fwd                # Cache-Status "fwd" of a forwarded request
    cdef Stored stale           # a stored response being revalidated (or for errors)
    cdef Stored refreshed       # the stored response a 304 refreshed: answered at the end
    cdef bytes validators       # If-None-Match / If-Modified-Since lines sent
    cdef list capture           # the body being stored (None: not storing)
    cdef Py_ssize_t capture_size
    cdef object fresh           # cachepolicy.Freshness of the response being stored
    cdef bytes shared_key       # the key itself, for the disk and Redis tiers (None: neither)
    cdef object disk_write      # diskcache.DiskWrite of the response being stored, or None
    cdef bint disk_checked      # the disk tier was asked for this request already
    cdef bint redis_checked     # the Redis tier was asked for this request already
    cdef bint filling           # others with the same key may wait for this one
    cdef bint waiting_fill      # this one waits for another's fill
    cdef bint background        # a refresh nobody waits for (stale-while-revalidate)
    cdef double request_time    # wall clock when the request went upstream
    cdef bint cache_hit         # answered from the cache (metrics)
    # Compression of the response (the route's `compress`)
    cdef Encoder encoder        # encoding the upstream's body (None: sent as it comes)
    cdef list enc_capture       # ... and what it made, kept for the cache (None: not kept)
    cdef Py_ssize_t enc_size
    cdef int resp_coding        # the coding of the response (C_NONE: identity)
    cdef long long enc_yielded  # encoder.taken_in when the loop last ran in between
    cdef bytes head_extra       # a compressed response's head waits (see send_head)
    cdef Py_ssize_t head_slot   # ... for its place in `out`
    cdef Stored slicing         # a stored body being encoded in slices (see stream_stored)
    cdef StoredForm slice_form
    cdef Py_ssize_t slice_off
    cdef bint slice_waiting     # ... held until the client reads again
    cdef bint slice_close       # ... and the connection ends after it
    cdef tuple auth_drop        # forward_auth: fields the auth service's answer replaces
    cdef bytes auth_extra       # ... and its lines that replace them
    cdef readonly str upstream_label
    cdef readonly RequestContext ctx   # what the route and its templates saw
    cdef readonly Rule rule
    cdef bytes upstream_host    # Host sent upstream
    cdef tuple req_drop         # header edits: names left out, lines added
    cdef bytes req_extra
    cdef tuple resp_drop
    cdef bytes resp_extra
    # Client-bound bytes of the current upstream read, written in one call
    # (one syscall) when the read is handled; the client connection's list.
    cdef list out
    # For the access log (seconds; -1: does not apply)
    cdef readonly double t_start        # monotonic, when the request head was parsed
    cdef readonly double connect_time   # connecting to the upstream (0: a pooled connection)
    cdef readonly double upstream_time  # from the request going upstream to the response's end
    cdef readonly int upstream_status   # of the last upstream response head (0: none)
    cdef bytes cache_line               # the Cache-Status line of an answer from the cache
    # [tracing]
    cdef bytes rid                      # the request id sent upstream and back (None: off)
    cdef bytes rid_line                 # b"X-Request-ID: <id>\r\n" for the response
    cdef bytes trace_extra              # lines added upstream (request id, traceparent)
    cdef int trace_drop                 # DROP_* bits: incoming fields replaced
    cdef readonly bytes traceparent     # the one sent upstream (None: none)
    cdef bytes upgrade                  # the protocol asked for (Upgrade), to pass on (None: none)
    cdef bint log_at_close              # switched (101): logged when the tunnel closes

    @property
    def request_id(self):
        if self.rid is not None:
            return self.rid
        return self.ctx.request_id() if self.ctx is not None else None

    @property
    def trace_id(self):
        return self.traceparent[3:35] if self.traceparent is not None else None

    @property
    def span_id(self):
        return self.traceparent[36:52] if self.traceparent is not None else None

    @property
    def cache_status(self):
        """As nginx's $upstream_cache_status: HIT, STALE, REVALIDATED, MISS, EXPIRED,
        BYPASS; None when the route has no cache."""
        cdef bytes line = self.cache_line
        if self.cache is None:
            return None
        if line is not None:
            if b"fwd-status=304" in line:
                return "REVALIDATED"
            if b"stale" in line:
                return "STALE"
            return "HIT"
        if self.fwd == "uri-miss" or self.fwd == "vary-miss":
            return "MISS"
        if self.fwd == "stale":
            return "EXPIRED"
        return "BYPASS"

    cdef int trace_begin(self, RequestContext ctx) except -1:
        """[tracing]: the request id (kept from the client when trusted, else made)
        and the traceparent for the upstream (this hop's span, or a new trace)."""
        cdef Core core = self.core
        cdef MessageHead head = self.head
        cdef bytes rid = None
        cdef bytes extra = b""
        cdef list found
        cdef int drop = 0
        if core.rid_on:
            if core.rid_trust == 2 or (core.rid_trust == 1 and core.trusted is not None
                                       and core.trusted.contains(self.client.ip)):
                found = head.get_all(core.rid_name)
                if len(found) == 1 and valid_request_id(<bytes>found[0]):
                    rid = <bytes>found[0]
                    ctx._request_id = rid  # what {request_id} renders too
            if rid is None:
                rid = ctx.request_id()
                drop = DROP_ID
                extra = core.rid_prefix + rid + _CRLF
            self.rid = rid
            self.rid_line = core.rid_prefix + rid + _CRLF
        if core.tp_on:
            found = head.get_all(b"traceparent")
            if len(found) == 1 and valid_traceparent(<bytes>found[0]):
                # The same trace, this hop's span; tracestate goes on as received.
                self.traceparent = next_traceparent(<bytes>found[0])
                drop |= DROP_PARENT
            else:
                # Absent or malformed: never forwarded broken; tracestate without a
                # valid traceparent means nothing.
                drop |= DROP_PARENT | DROP_STATE
                if core.tp_start:
                    self.traceparent = next_traceparent(None)
            if self.traceparent is not None:
                extra += b"traceparent: " + self.traceparent + _CRLF
        self.trace_drop = drop
        if extra:
            self.trace_extra = extra
        return 0

    # -- phase 1: route and limits ----------------------------------------------------
    cdef int begin(self) except -1:
        cdef MessageHead head = self.head
        cdef Core core = self.core
        cdef ClientConnection client = self.client
        if core.max_requests and client.served + 1 >= core.max_requests:
            head.keep_alive = False  # the connection's last request: "Connection: close"
        if core.max_in_flight:
            if core.in_flight >= core.max_in_flight:
                core.shed += 1
                self.respond_text(503, b"Service Unavailable",
                                  b"503 Service Unavailable: the proxy is at capacity\n",
                                  b"Retry-After: 1\r\n")
                return 0
            core.in_flight += 1
            self.counted = True
        cdef RequestContext ctx = new_context(
            head, core.merge_slashes, client.ip, client.proto, client.listener,
            <bytes>core.listener_names[client.listener])
        if core.rid_on or core.tp_on:
            self.trace_begin(ctx)
        if ctx.path is None:  # a bad authority or path
            self.respond_local(400, True)
            return 0
        ctx.tls = client.tls
        self.ctx = ctx
        if core.trusted is not None and core.trusted.contains(client.ip):
            # Every line of the header, in order: a proxy may add a line of its own
            # after the client's (HAProxy does), and the client's must not be the
            # one believed.
            lines = head.get_all(core.real_ip_header)
            ctx.client_ip = real_client(client.ip, b", ".join(lines) if lines else None,
                                        core.real_ip_kind, core.trusted)
        if core.bans is not None and self.refuse_banned(ctx.client_ip):
            return 0
        acl = core.listener_access[client.listener]
        if acl is not None and refused(<tuple>acl, ctx.client_ip):
            core.instance_add(ST_DENIED, 1)
            self.respond_text(403, b"Forbidden", b"403 Forbidden\n", b"")
            return 0
        self.host = ctx.host_header
        self.target = ctx.target
        self.rule = core.router.route(ctx, self.host)
        if self.rule is None:
            self.respond_local(404, False)
            return 0
        if self.rule.max_body >= 0:
            self.max_body = self.rule.max_body
        if self.max_body and head.body_kind == K_LENGTH and head.content_length > self.max_body:
            self.respond_local(413, True)  # before any filter answers 100 Continue
            return 0
        if self.rule.access is not None and refused(<tuple>self.rule.access, ctx.client_ip):
            core.instance_add(ST_DENIED, 1)
            self.respond_text(403, b"Forbidden", b"403 Forbidden\n", b"")
            return 0
        if self.rule.waf is not None and head.body_kind != K_NONE and \
                self.rule.waf.wants_body(head.get(b"content-type")):
            # The WAF reads the first body_limit bytes of the body: they are kept as
            # they come, and the body is held back (in `pending`, as while
            # connecting) until the WAF has seen them.
            self.inspected = bytearray()
            self.connecting = True
        if self.rule.limits and self.rate_limited(self.rule.limits):
            return 0
        self.inspect()
        return 0

    cdef bint refuse_banned(self, bytes ip) except -1:
        """A banned client gets 403 with Retry-After, and the connection closes."""
        cdef int64_t left = self.core.bans.banned(ip_key(ip), now_ns())
        if not left:
            return False
        self.core.banned += 1
        self.core.instance_add(ST_DENIED, 1)
        self.head.keep_alive = False
        self.respond_text(403, b"Forbidden",
                          b"403 Forbidden: refused for a while after repeated refused "
                          b"requests\n",
                          b"Retry-After: %d\r\n" % ((left + 999999999) // 1000000000))
        return True

    cdef int inspect(self) except -1:
        """The WAF, then the filters after it and the action."""
        waf = self.rule.waf
        if waf is None:
            self.authenticate()
        elif self.inspected is None:
            if not self.waf_blocked(b""):
                self.authenticate()
        elif self.req_done or len(self.inspected) >= waf.body_limit:
            self.body_inspected()
        else:
            self.waf_waiting = True
            self.connecting = True
            self.send_continue()
        return 0

    cdef int hold_over(self) except -1:
        """A request held back by a rate limit's `delay` goes on."""
        if self.finished:
            return 0
        self.connecting = False
        self.inspect()
        return 0

    cdef int authenticate(self) except -1:
        """The filters after the WAF, then the route's action."""
        if self.rule.auth is not None and not self.authorized():
            return 0
        self.ask_auth_service()
        return 0

    cdef int ask_auth_service(self) except -1:
        """forward_auth: the route's auth service decides (forward_done goes on);
        without one, the action."""
        cdef MessageHead head = self.head
        auth = self.rule.forward_auth
        if auth is None:
            self.act()
            return 0
        # A body arriving meanwhile waits in `pending`, as while connecting.
        self.connecting = True
        future = asyncio.ensure_future(
            auth.check(head.method, head.target, self.host or b"", self.client.proto,
                       self.ctx.client_ip, head.headers()), loop=self.core.loop)
        future.add_done_callback(lambda f, ex=self: _forward_checked(ex, f))
        return 0

    cdef int forward_done(self, object decision) except -1:
        """The auth service's verdict: on, with its header lines, or its answer."""
        cdef MessageHead head = self.head
        cdef bytes data, lines
        cdef Py_ssize_t cut
        cdef bint close, keep
        self.connecting = False
        if self.finished:
            return 0
        if decision is None:
            self.respond_text(503, b"Service Unavailable",
                              b"503 Service Unavailable: the auth check failed\n", b"")
        elif decision.allowed:
            if decision.drop:
                self.auth_drop = decision.drop
                self.auth_extra = decision.upstream_lines
            self.act()
        else:
            # Relayed as the service sent it, with our own Connection field.
            data = decision.response
            cut = data.find(b"\r\n\r\n") + 2
            close = not self.req_done
            keep = not close and head.keep_alive and not self.core.closing
            lines = data[:cut] + (b"Connection: keep-alive\r\n\r\n" if keep
                                  else b"Connection: close\r\n\r\n")
            if head.is_head_request:
                self.send_local(decision.status, lines, 0, keep, close)
            else:
                self.send_local(decision.status, lines + data[cut + 2:],
                                len(data) - cut - 2, keep, close)
        return 0

    cdef int body_inspected(self) except -1:
        """The WAF's part of the body is here (or the whole body was shorter)."""
        cdef bytes body = bytes(self.inspected)
        self.inspected = None
        self.waf_waiting = False
        self.connecting = False
        if not self.waf_blocked(body):
            self.authenticate()
        return 0

    cdef int send_continue(self) except -1:
        """Answer "Expect: 100-continue" (once): the client may send the body now."""
        cdef MessageHead head = self.head
        if not self.continued and head.expect_continue and head.body_kind != K_NONE \
                and head.http_minor == 1:
            self.continued = True
            self.client.write(_CONTINUE)
        return 0

    cdef bint waf_blocked(self, bytes body) except -1:
        """The attack rules on the request as received (method, raw path and query,
        headers, the start of the body): a block answers 403."""
        cdef MessageHead head = self.head
        waf = self.rule.waf
        path, _, query = head.target.partition(b"?")
        verdict = waf.inspect(head.method, path, query, head.headers(), body)
        for seen in waf.last_logs:
            log_waf.info("waf log %s/%s on %s: %s (%s)", seen.rule_set, seen.rule_id,
                         seen.target, seen.excerpt, self.ctx.client_ip.decode())
        if verdict is not None and verdict.action == "block":
            self.waf_hit = True
            log_waf.warning("waf blocked %s/%s on %s: %s (%s)", verdict.rule_set,
                            verdict.rule_id, verdict.target, verdict.excerpt,
                            self.ctx.client_ip.decode())
            self.respond_text(403, b"Forbidden",
                              b"403 Forbidden: the request matched rule %s\n"
                              % verdict.rule_id.encode("ascii", "replace"), b"")
            return True
        return False

    cdef int act(self) except -1:
        """The route's action, once every filter let the request through."""
        action = self.rule.action
        if type(action) is not ProxyAction:
            self.answer(<LocalAction?>action)
            return 0
        if self.head.upgrade is not None:
            self.upgrade = upgrade_wanted(self.head.upgrade)
            if self.upgrade is not None:
                # A switch of protocols is never answered from the cache.
                self.send_continue()
                self.proxy(<ProxyAction>action)
                return 0
        if self.rule.cache is not None and self.from_cache():
            return 0
        self.send_continue()
        self.proxy(<ProxyAction>action)
        return 0

    # -- the route's cache ------------------------------------------------------------
    cdef bint from_cache(self) except -1:
        """The route's cache (RFC 9111): True when the answer came from it, or when
        the request waits for another one fetching the same key or for the disk;
        False to go on upstream (storing the answer when it may)."""
        cdef RouteCache cache = <RouteCache>self.rule.cache
        cdef MessageHead head = self.head
        cdef RequestContext ctx = self.ctx
        cdef bytes method = head.method
        key = cache.template.render(ctx, ctx.captures)
        self.cache = cache
        self.cache_primary = cache_key(key)
        if cache.debug:
            self.cache_text = key
        if cache.disk is not None or cache.redis is not None:
            self.shared_key = key
        if method != b"GET" and method != b"HEAD":
            self.fwd = "method"  # forwarded; a success invalidates what is stored
            return False
        found = cache.lookup(self.cache_primary, head)
        if found is None:
            if cache.disk is not None and not self.disk_checked:
                return self.read_disk()
            return self.missed(cache.index.peek(self.cache_primary) is not None)
        return self.use_stored(<Stored>found)

    cdef bint missed(self, bint vary_miss) except -1:
        """Nothing stored here answers this request: ask Redis when the cache has
        that tier, else the upstream (filling the cache)."""
        cdef RouteCache cache = self.cache
        self.fwd = "vary-miss" if vary_miss else "uri-miss"
        if cache.redis is not None and not self.redis_checked:
            return self.read_redis()
        if self.only_cached():
            self.respond_text(504, b"Gateway Timeout",
                              b"504 Gateway Timeout: not in the cache (only-if-cached)\n",
                              cache.status_line(fwd=self.fwd, key=self.cache_text))
            return True
        return self.fill_or_wait()

    cdef bint only_cached(self) except -1:
        """The client said only-if-cached: never forwarded (a 504 instead)."""
        cc = self.head.get(b"cache-control")
        return cc is not None and b"only-if-cached" in cc.lower()

    cdef bint use_stored(self, Stored stored, str tier=None) except -1:
        """A stored response selected for this request: serve it, or revalidate it.
        `tier`: "redis" when it came from there (Cache-Status shows it)."""
        cdef RouteCache cache = self.cache
        cdef MessageHead head = self.head
        cdef double now = wall_now()
        if not stored.no_cache and now < stored.fresh_until and cache.plain(head):
            # The fast path: fresh, and a request that asks nothing more of it.
            self.serve_stored(stored, now, b"Cache-Status: fastproxy;hit;ttl=%d\r\n"
                              % <long long>(stored.fresh_until - now)
                              if self.cache_text is None and tier is None else
                              cache.status_line(hit=True, ttl=stored.fresh_until - now,
                                                key=self.cache_text, detail=tier), False)
            return True
        decision = cache.decide(stored, head.headers(), now)
        verdict = decision.verdict.value
        if verdict == "only-if-cached":
            self.respond_text(504, b"Gateway Timeout",
                              b"504 Gateway Timeout: stale in the cache (only-if-cached)\n",
                              cache.status_line(fwd="stale", key=self.cache_text))
            return True
        if verdict != "revalidate":  # fresh, stale allowed, or stale-while-revalidate
            if verdict == "stale-while-revalidate":
                self.refresh_in_background(stored)
            self.serve_stored(stored, now, cache.status_line(
                hit=True, ttl=decision.ttl, key=self.cache_text,
                detail=tier if verdict == "fresh" else verdict), True)
            return True
        self.stale = stored
        self.fwd = "stale" if stored.fresh_until <= now else "request"
        return self.fill_or_wait()

    cdef bint read_disk(self) except -1:
        """The memory tier missed: look in the disk tier. From the kernel's caches
        when it can be done without waiting (answered now), else in a thread
        (shared_found goes on): then a GET that would fill the cache holds the key
        meanwhile, so requests for it wait for this lookup (and the fetch after it)
        instead of reading too."""
        cdef RouteCache cache = self.cache
        cdef bint fills = (not self.head.is_head_request and self.head.body_kind == K_NONE
                           and not self.only_cached())
        self.disk_checked = True
        found = cache.disk.lookup_now(self.cache_primary, self.shared_key, self.head.headers())
        if found != "would-block":
            return self.shared_answer(found, self.adopted(found), None)
        if fills:
            waiters = cache.fills.get(self.cache_primary)
            if waiters is not None:
                self.fwd = "vary-miss" if cache.index.peek(self.cache_primary) is not None \
                    else "uri-miss"
                (<list>waiters).append(self)
                self.waiting_fill = True
                self.connecting = True
                self.core.loop.call_later(cache.lock_timeout, _fill_wait_over, self)
                return True
        if not cache.disk.read(self.cache_primary, self.shared_key, self.head.headers(),
                               partial(_disk_found, self)):
            return self.missed(cache.index.peek(self.cache_primary) is not None)
        if fills:
            cache.fills[self.cache_primary] = []
            self.filling = True
        self.connecting = True  # a request body waits in `pending`
        return True

    cdef bint read_redis(self) except -1:
        """Memory (and disk) missed: ask the Redis tier, in a task (shared_found goes
        on). A GET that would fill the cache holds the key meanwhile, so requests
        for it wait for this lookup (and the fetch after it) instead of asking
        Redis too. Redis known to be down: a miss at once."""
        cdef RouteCache cache = self.cache
        cdef bint fills = (not self.head.is_head_request and self.head.body_kind == K_NONE
                           and not self.only_cached())
        self.redis_checked = True
        if fills:
            waiters = cache.fills.get(self.cache_primary)
            if waiters is not None:
                (<list>waiters).append(self)
                self.waiting_fill = True
                self.connecting = True
                self.core.loop.call_later(cache.lock_timeout, _fill_wait_over, self)
                return True
        if not cache.redis.read(self.cache_primary, self.shared_key, self.head.headers(),
                                partial(_redis_found, self)):
            return self.missed(self.fwd == "vary-miss")
        if fills:
            cache.fills[self.cache_primary] = []
            self.filling = True
        self.connecting = True  # a request body waits in `pending`
        return True

    cdef Stored adopted(self, object found):
        """The response the disk or Redis tier found (kept in memory when it fits,
        and not purged or invalidated since), or None."""
        if type(found) is not tuple:
            return None
        return self.cache.adopt(self.cache_primary, <Stored>found[0], <tuple>found[1])

    cdef bint shared_answer(self, object found, Stored stored, str tier) except -1:
        """Serve or revalidate what the disk or Redis tier found (`stored`, adopted),
        or go on as a miss."""
        if stored is not None:
            return self.use_stored(stored, tier)
        return self.missed(found == "vary-miss" or self.fwd == "vary-miss" or
                           self.cache.index.peek(self.cache_primary) is not None)

    cdef int shared_found(self, object found, str tier) except -1:
        """The answer of the disk tier (from a thread, see diskcache.DiskStore.lookup)
        or of the Redis tier (from a task, see rediscache.RedisCache.lookup)."""
        cdef RouteCache cache = self.cache
        cdef bint answered
        cdef Stored stored
        self.connecting = False
        stored = self.adopted(found)
        if self.finished:  # the client went away (finish() let the waiters go)
            return 0
        waiters = None
        if self.filling:
            waiters = cache.fills.pop(self.cache_primary, None)
            self.filling = False
        answered = self.shared_answer(found, stored, tier)
        if waiters:
            mine = cache.fills.get(self.cache_primary) if self.filling else None
            if mine is not None:
                (<list>mine).extend(<list>waiters)  # they wait for this fetch now
            else:
                for ex in <list>waiters:  # answered from this read when it is theirs
                    (<Exchange>ex).fill_retry(stored)
        if not answered and not self.finished:
            self.send_continue()
            self.proxy(<ProxyAction>self.rule.action)
        return 0

    cdef bint fill_or_wait(self) except -1:
        """Fetch for the cache, unless a request for the same key is already at it:
        then wait for its answer (request collapsing), at most lock_timeout."""
        cdef RouteCache cache = self.cache
        if self.head.is_head_request or self.head.body_kind != K_NONE:
            return False  # forwarded as it is; nothing is stored from it
        waiters = cache.fills.get(self.cache_primary)
        if waiters is not None:
            (<list>waiters).append(self)
            self.waiting_fill = True
            self.connecting = True
            self.core.loop.call_later(cache.lock_timeout, _fill_wait_over, self)
            return True
        cache.fills[self.cache_primary] = []
        self.filling = True
        if self.stale is not None:
            self.validators = cache.validator_lines(self.stale)
        return False

    cdef int fill_done(self, object stored) except -1:
        """This request's fetch for the cache is over (`stored`: what it stored, or
        None): the requests waiting for it go on."""
        waiters = self.cache.fills.pop(self.cache_primary, None)
        self.filling = False
        if waiters:
            for ex in <list>waiters:
                (<Exchange>ex).fill_over(stored)
        return 0

    cdef int fill_over(self, object stored) except -1:
        """The fill this request waited for is over (None: it stored nothing)."""
        cdef double now
        if not self.waiting_fill or self.finished:
            return 0
        self.waiting_fill = False
        self.connecting = False
        if stored is not None:
            found = self.cache.lookup(self.cache_primary, self.head)
            if found is None and self.cache.disk is not None and self.cache.selects(
                    <Stored>stored, self.head.headers()):
                found = stored  # kept on disk only (too big for memory): the fill's copy
            now = wall_now()
            if found is not None and now < (<Stored>found).fresh_until:
                self.serve_stored(<Stored>found, now, self.cache.status_line(
                    fwd=self.fwd, fwd_status=(<Stored>found).status, collapsed=True,
                    ttl=(<Stored>found).fresh_until - now, key=self.cache_text), True)
                return 0
        self.stale = None  # goes upstream alone, as it came
        self.send_continue()
        self.proxy(<ProxyAction>self.rule.action)
        return 0

    cdef int fill_retry(self, Stored read) except -1:
        """What this request waited for is in the cache now, or another request will
        fetch it: look again, as if it had just come. `read`: what the disk read
        it waited for found (used when it is this request's variant; a response
        too big for memory is not read again for each waiting request)."""
        if not self.waiting_fill or self.finished:
            return 0
        self.waiting_fill = False
        self.connecting = False
        self.stale = None
        if read is not None and self.cache.selects(read, self.head.headers()):
            self.disk_checked = True
            if not self.use_stored(read):
                self.send_continue()
                self.proxy(<ProxyAction>self.rule.action)
            return 0
        self.disk_checked = False  # a file may be there now
        self.redis_checked = False  # ... or a value in Redis
        if not self.from_cache():
            self.send_continue()
            self.proxy(<ProxyAction>self.rule.action)
        return 0

    cdef int refresh_in_background(self, Stored stored) except -1:
        """stale-while-revalidate: fetch the response again for the cache, with an
        exchange whose client is a closed stand-in (nothing is written to it)."""
        cdef ClientConnection client = self.client
        cdef ClientConnection nobody
        cdef Exchange ex
        if self.cache_primary in self.cache.fills or self.head.body_kind != K_NONE:
            return 0  # a fetch is on its way already
        nobody = ClientConnection(self.core, client.listener)
        nobody.made = True
        nobody.closed = True
        nobody.ip = client.ip
        nobody.proto = client.proto
        ex = new_exchange(nobody, self.head)
        nobody.exchange = ex  # holds it, as a client holds its exchange, until it is done
        ex.background = True
        ex.req_done = True
        ex.ctx = self.ctx
        ex.rule = self.rule
        ex.host = self.host
        ex.target = self.target
        ex.cache = self.cache
        ex.cache_primary = self.cache_primary
        ex.cache_text = self.cache_text
        ex.shared_key = self.shared_key
        ex.stale = stored
        ex.fwd = "stale"
        ex.fill_or_wait()
        ex.proxy(<ProxyAction>self.rule.action)
        return 0

    cdef int serve_stored(self, Stored stored, double now, bytes cache_line,
                          bint full) except -1:
        """Answer from a stored response; `full`: also look at the request's
        conditionals (304) and Range (206/416)."""
        cdef MessageHead req = self.head
        self.cache_hit = self.fwd is None  # else a revalidation's or an error's answer
        cdef Core core = self.core
        cdef RouteCache cache = self.cache
        cdef bint close = req.expect_continue and req.body_kind != K_NONE and not self.req_done
        cdef bint keep = req.keep_alive and not core.closing and not close
        cdef long long age = <long long>(stored.initial_age + (
            now - stored.response_time if now > stored.response_time else 0))
        cdef int status = stored.status
        cdef bytes body = stored.body
        cdef bytes head_part = stored.prefix
        cdef bytes length_line = stored.length_line
        cdef list parts
        cdef int slices = 0         # a coding to encode the body in, slice by slice
        edits = (<ProxyAction>self.rule.action).response_edits
        if full:
            if cache.conditional(stored, req.headers(), now) == 304:
                status = 304
                head_part = b"HTTP/1.1 304 Not Modified\r\n" + cache.not_modified_lines(stored)
                body = b""
                length_line = b""
            elif req.method == b"GET":
                span = cache.byte_range(stored, req)
                if span is not None:
                    fields = stored.prefix[stored.prefix.find(_CRLF) + 2:]
                    if span[0] < 0:
                        status = 416
                        head_part = (b"HTTP/1.1 416 Range Not Satisfiable\r\n" + fields
                                     + b"Content-Range: bytes */%d\r\n" % len(stored.body))
                        body = b""
                    else:
                        status = 206
                        head_part = (b"HTTP/1.1 206 Partial Content\r\n" + fields
                                     + b"Content-Range: bytes %d-%d/%d\r\n"
                                     % (span[0], span[1], len(stored.body)))
                        body = stored.body[span[0]:span[1] + 1]
                    length_line = b"Content-Length: %d\r\n" % len(body)
        policy = self.rule.compress
        if policy is not None and status == 304:
            form = stored_form(stored, <Policy>policy)
            if (<StoredForm>form).compressible:
                # The fields a 200 would carry: Vary, and the weak ETag of an encoded one.
                head_part = rewrite_prefix(head_part, (<Policy>policy).choose_for(req) != C_NONE)
        elif policy is not None and status == stored.status:
            form = stored_form(stored, <Policy>policy)
            if (<StoredForm>form).compressible:
                coding = (<Policy>policy).choose_for(req)
                if coding == C_NONE:
                    head_part = (<StoredForm>form).vary_prefix
                else:
                    head_part = (<StoredForm>form).enc_prefix + b"Content-Encoding: " + \
                        coding_name(coding) + _CRLF
                    if coding not in (<StoredForm>form).bodies and \
                            len(stored.body) > SLICE_ABOVE:
                        # Encoded in slices, between which the loop runs (and kept
                        # when it is done): the head goes now, chunked.
                        slices = coding
                        length_line = b"Transfer-Encoding: chunked\r\n" \
                            if req.http_minor == 1 else b""
                        if req.http_minor != 1:
                            keep = False
                    else:
                        body = (<StoredForm>form).body(cache, self.cache_primary, stored,
                                                       <Policy>policy, coding)
                        length_line = b"Content-Length: %d\r\n" % len(body)
        if edits is not None and edits.drop:
            # The route removes some fields from responses: from stored ones too.
            cut = head_part.find(_CRLF) + 2
            head_part = head_part[:cut] + b"".join(
                line + _CRLF for line in head_part[cut:].split(_CRLF)
                if line and line.partition(b":")[0].strip().lower() not in edits.drop)
        parts = [head_part, b"Age: %d\r\n" % age, cache_line]
        if core.via:
            parts.append(b"Via: " + core.via + _CRLF)
        if edits is not None:
            parts.append(edits.render(self.ctx))
        if self.client.hsts is not None:
            parts.append(self.client.hsts)
        if self.rid_line is not None:
            parts.append(self.rid_line)
        self.cache_line = cache_line
        parts.append(length_line)
        parts.append(b"Connection: keep-alive\r\n\r\n" if keep else b"Connection: close\r\n\r\n")
        if slices:
            self.stream_stored(stored, <StoredForm>form, slices, parts, keep, close)
            return 0
        if req.is_head_request:
            body = b""
        if body:
            parts.append(body)
        self.send_parts(status, parts, len(body), keep, close)
        return 0

    cdef int stream_stored(self, Stored stored, StoredForm form, int coding, list parts,
                           bint keep, bint close) except -1:
        """Answer with a stored body encoded now, SLICE bytes per loop iteration (a big
        body would otherwise hold the loop for its whole compression): the head
        first, then one chunk per slice; the result is kept for the next requests."""
        self.local_begin(stored.status, 0, keep)
        self.client.write_all(parts)
        self.encoder = (<Policy>self.rule.compress).encoder(coding, len(stored.body))
        self.resp_coding = coding
        self.enc_capture = []
        self.slicing = stored
        self.slice_form = form
        self.slice_off = 0
        self.framing = FR_CHUNKED if self.head.http_minor == 1 else FR_CLOSE
        self.slice_close = close
        self.core.loop.call_soon(_next_slice, self)
        return 0

    cdef int read_on(self) except -1:
        if self.conn is not None and not self.finished and not self.client.write_paused:
            self.conn.set_reading(True)
        return 0

    cdef int next_slice(self) except -1:
        cdef Stored stored = self.slicing
        cdef Py_ssize_t end, size
        cdef list out = self.out
        if stored is None or self.finished or self.encoder is None:
            return 0
        if self.client.write_paused:
            self.slice_waiting = True  # client_write_paused(False) goes on
            return 0
        size = len(stored.body)
        end = self.slice_off + SLICE
        if end > size:
            end = size
        self.encoder.feed(memoryview(stored.body)[self.slice_off:end])
        self.slice_off = end
        self.encoded(end == size)
        if end < size:
            self.client.write_all(out)
            PyList_Clear(out)
            self.core.loop.call_soon(_next_slice, self)
            return 0
        if self.framing == FR_CHUNKED:
            out.append(_LAST_CHUNK)
        self.client.write_all(out)
        PyList_Clear(out)
        self.encoder.release()
        self.encoder = None
        if self.enc_capture is not None:
            self.slice_form.keep(self.cache, self.cache_primary, stored, self.resp_coding,
                                 b"".join(self.enc_capture))
            self.enc_capture = None
        self.slicing = None
        self.slice_form = None
        if self.slice_close or self.req_done:
            self.finish(self.keep)
        return 0

    cdef bint cache_head(self, MessageHead head) except -1:
        """An upstream's answer to a request of a cached route. True when it is not
        passed on: a 304 that refreshed the stored response (answered when the
        exchange completes), or an error answered with a stale response."""
        cdef RouteCache cache = self.cache
        cdef double now = wall_now()
        cdef UpstreamConnection conn
        cdef bint stored_ok
        if self.stale is not None:
            if self.validators and head.status == 304:
                new = cache.refreshed(self.cache_primary, self.stale, self.head.headers(), head,
                                      self.request_time, now, self.shared_key)
                self.refreshed = new if new is not None else self.stale
                self.resp_head = head
                return True
            if head.status in (500, 502, 503, 504) and \
                    cache.usable_on_error(self.stale, self.head.headers(), now):
                conn = self.conn
                self.conn = None
                conn.abort()  # its error body is not read
                self.peer_done(PEER_ANSWERED)
                self.serve_stored(self.stale, now, cache.status_line(
                    fwd="stale", fwd_status=head.status,
                    ttl=self.stale.fresh_until - now, key=self.cache_text,
                    detail="stale-if-error"), True)
                if self.filling:
                    self.fill_done(None)
                return True
        if self.filling:
            stored_ok, reason, fresh = cache.admit(self.head.method, self.head.headers(), head,
                                                   self.request_time, now)
            if stored_ok and head.body_kind == K_LENGTH and head.content_length > cache.store_limit:
                stored_ok = False
                reason = "larger than max_object"
            if stored_ok:
                if head.body_kind != K_LENGTH or head.content_length <= cache.capture_limit:
                    self.capture = []  # for the memory tier, or Redis
                if cache.disk is not None:
                    self.disk_write = cache.disk.begin(self.cache_primary)
                if self.capture is None and self.disk_write is None:
                    stored_ok = False
                    reason = "larger than max_object in memory, and the disk is busy"
            if stored_ok:
                self.fresh = fresh
                line = cache.status_line(fwd=self.fwd, fwd_status=head.status, stored=True,
                                         ttl=fresh.lifetime - fresh.corrected_initial_age,
                                         key=self.cache_text)
            else:
                line = cache.status_line(fwd=self.fwd, fwd_status=head.status, stored=False,
                                         key=self.cache_text, detail=reason)
        else:
            line = cache.status_line(fwd=self.fwd or "uri-miss", fwd_status=head.status,
                                     key=self.cache_text)
            if self.fwd == "method" and head.status < 400 and self.head.method not in _SAFE:
                cache.invalidate_after(self.cache_primary, self.head.method, head.status,
                                       self.host or b"", self.target, head.headers(),
                                       self.client.proto)
        self.resp_extra = line + self.resp_extra if self.resp_extra else line
        return False

    cdef bint authorized(self) except -1:
        """Basic auth of the route: True to go on; False when answered (401) or when
        the password is being checked in a thread (auth_done carries on)."""
        auth = self.rule.auth
        header = self.head.get(b"authorization")
        verdict = auth.cached(header)
        if verdict is True:
            return True
        if verdict is False:
            self.respond_text(401, b"Unauthorized", b"401 Unauthorized\n", auth.challenge)
            return False
        # Not seen yet: PBKDF2 is slow on purpose, so it runs off the loop; a request
        # body arriving meanwhile waits in `pending`, as while connecting.
        self.connecting = True
        future = self.core.loop.run_in_executor(None, auth.verify, header)
        future.add_done_callback(lambda f, ex=self, a=auth, h=header: _auth_checked(ex, a, h, f))
        return False

    cdef int auth_done(self, bint ok) except -1:
        self.connecting = False
        if self.finished:
            return 0
        if ok:
            self.ask_auth_service()
        else:
            self.respond_text(401, b"Unauthorized", b"401 Unauthorized\n",
                              self.rule.auth.challenge)
        return 0

    cdef bint rate_limited(self, tuple limits) except -1:
        """Check the route's rate limits in order; the first that refuses answers 429
        (with Retry-After and the RateLimit fields) and the request goes no further.
        A key that renders empty (no such header, cookie...) is not limited. True
        also when a limit with `delay` holds the request back (hold_over goes on)."""
        cdef RateLimit limit
        cdef bytes key
        cdef long long remaining
        cdef int64_t reset, wait, hold, longest = 0
        cdef int64_t now = now_ns()
        cdef Py_ssize_t i
        for i in range(len(limits)):
            if type(limits[i]) is not RateLimit:
                # A limit kept in Redis: this one and the rest are checked by a
                # coroutine (limits_checked goes on).
                self.limits_later(limits[i:], longest)
                return True
            limit = <RateLimit>limits[i]
            key = self.limit_key(limit.key)
            if not key:
                continue
            wait = limit.check(key, now, &remaining, &reset, &hold)
            if wait:
                self.core.instance_add(ST_RATE_LIMITED, 1)
                self.respond_text(429, b"Too Many Requests",
                                  b"429 Too Many Requests: rate limit \"%s\"\n"
                                  % limit.name.encode(),
                                  limit.lines(wait, remaining, reset))
                return True
            if hold > longest:
                longest = hold
        if longest:
            # Held back to the limit's pace; a body arriving meanwhile waits.
            self.connecting = True
            self.core.loop.call_later(longest / 1e9, _held, self)
            return True
        return False

    cdef bytes limit_key(self, object template):
        """What a limit counts for this request: its rendered key template (empty:
        not limited), or the route when it has none."""
        cdef RequestContext ctx = self.ctx
        if template is None:
            return b"route %d" % self.rule.index
        return (<Template>template).render(ctx, ctx.captures)

    cdef int limits_later(self, tuple limits, int64_t longest) except -1:
        """Check `limits` (a store limit first) off the request path's C code."""
        cdef list pairs = []
        for limit in limits:
            key = self.limit_key(limit.key)
            if key:
                pairs.append((limit, key))
        self.connecting = True  # a body arriving meanwhile waits in `pending`
        # Imported here: only a config with a store limit loads the Redis client.
        from fastproxy.redisstore import check_limits
        future = asyncio.ensure_future(check_limits(pairs), loop=self.core.loop)
        future.add_done_callback(lambda f, ex=self, n=longest: _limits_checked(ex, f, n))
        return 0

    cdef int limits_checked(self, tuple result, int64_t longest) except -1:
        cdef int64_t hold
        self.connecting = False
        if self.finished:
            return 0
        if result is None or result[0] == "unavailable":
            self.respond_text(503, b"Service Unavailable",
                              b"503 Service Unavailable: the rate-limit store cannot be "
                              b"reached\n", b"Retry-After: 1\r\n")
        elif result[0] == "refused":
            limit = result[1]
            self.core.instance_add(ST_RATE_LIMITED, 1)
            self.respond_text(429, b"Too Many Requests",
                              b"429 Too Many Requests: rate limit \"%s\"\n"
                              % limit.name.encode(),
                              limit.lines(result[2], result[3], result[4]))
        else:
            hold = result[1]
            if hold < longest:
                hold = longest
            if hold:
                self.connecting = True
                self.core.loop.call_later(hold / 1e9, _held, self)
            else:
                self.inspect()
        return 0

    cdef int proxy(self, ProxyAction action) except -1:
        cdef RequestContext ctx = self.ctx
        self.upstream_host = self.host
        if action.rewrites:
            if self.target != b"*":  # OPTIONS * keeps its target
                self.target = action.target(ctx)
                if self.target is None:
                    self.respond_local(400, True)
                    return 0
            self.upstream_host = action.upstream_host(ctx, self.host)
        if action.request_edits is not None:
            self.req_drop = action.request_edits.drop
            self.req_extra = action.request_edits.render(ctx)
        if action.response_edits is not None:
            self.resp_drop = action.response_edits.drop
            self.resp_extra = action.response_edits.render(ctx)
        if self.client.tls_drop is not None:
            # Client-certificate headers: only the proxy's own (verified) values pass.
            self.req_drop = self.client.tls_drop + (self.req_drop or ())
            self.req_extra = self.client.tls_extra + (self.req_extra or b"")
        if self.auth_drop is not None:
            self.req_drop = self.auth_drop + (self.req_drop or ())
            self.req_extra = self.auth_extra + (self.req_extra or b"")
        if self.trace_drop:
            self.req_drop = <tuple>self.core.trace_drops[self.trace_drop] + (self.req_drop or ())
        if self.trace_extra is not None:
            self.req_extra = self.trace_extra + (self.req_extra or b"")
        if self.upgrade is not None:
            # Hop-by-hop fields, dropped from the client's head with the others: ours.
            self.req_extra = (self.req_extra or b"") + b"Connection: upgrade\r\nUpgrade: " \
                + self.upgrade + _CRLF
        if self.filling:
            # A whole response to store: the client's conditionals and Range are
            # answered from it; ours (revalidation) go instead.
            self.req_drop = FILL_DROP + (self.req_drop or ())
            if self.validators:
                self.req_extra = self.validators + (self.req_extra or b"")
            self.request_time = wall_now()
        cdef GroupBase group = <GroupBase?>action.group
        self.group = group
        self.balancer = group.balancer
        group.budget.deposit()
        if self.head.body_kind != K_NONE and self.head.method in _IDEMPOTENT:
            # Keep the body as it goes, for a retry, while it fits.
            self.kept_limit = group.retry_buffer
            if self.kept_limit and group.retry_on:
                # What arrived while a filter held the request (in `pending`) is
                # part of the body to keep.
                if self.pending_size > self.kept_limit:
                    self.kept = None
                else:
                    self.kept = list(self.pending) if self.pending else []
                    self.kept_size = self.pending_size
        self.key = self.hash_key(ctx)
        cookie = group.sticky_cookie
        if cookie is not None:
            # Sticky sessions: the server the client's cookie names, if it is one of
            # ours and usable; else the balancer's choice (and the response sets
            # the cookie).
            self.sticky = True
            header = self.head.get(b"cookie")
            if header is not None:
                self.sticky_value = cookie_get(header, cookie)
                peer = group.sticky_peers.get(self.sticky_value)
                if peer is not None and self.balancer.usable(peer):
                    self.use_server(peer)
                    return 0
        self.dispatch(False)
        return 0

    cdef bint dispatch(self, bint from_queue) except -1:
        """Send the request to the balancer's choice; when no primary is usable, to
        a backup; when every server is at its max_conns, wait in the queue; when
        none is usable, answer 503 at once. False: still busy (from the queue)."""
        cdef Py_ssize_t i
        cdef GroupBase group = self.group
        i = self.balancer.choose(self.key)
        if i == NO_PEER and group.backup is not None and self.balancer is not group.backup:
            self.balancer = <Balancer>group.backup
            self.sticky = False  # a backup stands in; the cookie keeps naming the primary
            i = self.balancer.choose(self.key)
        if i >= 0:
            self.use_server(i)
        elif i == ALL_BUSY:
            if from_queue:
                return False
            if group.waiting is not None and group.waiting.push(self):
                self.connecting = True  # a request body waits in `pending`
            else:
                self.respond_unavailable(group.busy)
        else:
            self.respond_unavailable(group.unavailable)
        return True

    cdef uint64_t hash_key(self, RequestContext ctx) except? 0:
        """The xxh3 of the upstream's hash_key for this request (0 when it has none)."""
        template = self.group.hash_key
        if template is None:
            return 0
        cdef bytes key = (<Template>template).render(ctx, ctx.captures)
        return hash_bytes(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

    cdef bytes proxy_header(self, int version):
        """The PROXY header for a new connection of this request (see ServerPool.connect)."""
        cdef bytes src = self.ctx.client_ip if self.ctx is not None else self.client.ip
        return self.client.proxy_header(src, version)

    cdef int answer(self, LocalAction action) except -1:
        """A redirect or a static response; a request body is read and dropped."""
        cdef MessageHead req = self.head
        cdef Core core = self.core
        cdef bint keep = req.keep_alive and not core.closing
        cdef long long body_len = 0
        cdef bytes data
        # A client waiting for "100 Continue" may never send the body it announced:
        # end the connection after the answer (lingering) rather than wait for it.
        cdef bint close = req.expect_continue and req.body_kind != K_NONE and not self.req_done
        if close:
            keep = False
        data = action.answer(self.ctx, core.clock.http_date, keep, req.is_head_request, &body_len)
        self.send_local(action.status, data, body_len, keep, close)
        return 0

    # -- phase 2: an upstream connection ---------------------------------------------
    cdef int use_server(self, Py_ssize_t peer) except -1:
        """Send the request to the balancer's peer number `peer`."""
        cdef UpstreamConnection conn
        cdef ServerPool pool = <ServerPool?>self.balancer.peers[peer]
        self.peer = peer
        self.peer_start = monotonic()
        self.balancer.started(peer)
        self.pool = pool
        if self.core.stats is not None and pool.stats_base >= 0:
            stat_add(self.core.stats, pool.stats_base + SV_REQUESTS, 1)
            stat_add(self.core.stats, pool.stats_base + SV_IN_FLIGHT, 1)
        self.upstream_label = pool.label
        # A connection that may switch protocols is never one from the pool (nor
        # goes back to it once switched).
        if self.upgrade is not None:
            conn = None
        elif pool.proxy_protocol:
            # Only a connection whose header named this very client (see take_for).
            conn = pool.take_for(self.proxy_header(pool.proxy_protocol))
        else:
            conn = pool.take()
        if conn is not None:
            self.connect_time = 0.0
            self.attach(conn)
        else:
            self.connecting = True
            pool.connect(self)
        return 0

    cdef int connected(self, UpstreamConnection conn) except -1:
        if self.finished:
            if not conn.closed:
                conn.pool.put(conn)  # fresh and unused: keep it for the next request
            return 0
        self.connect_time = monotonic() - self.peer_start
        self.attach(conn)
        return 0

    cdef int connect_failed(self, ServerPool pool, object exc, bint timed_out) except -1:
        if self.finished:
            return 0
        if isinstance(exc, ssl.SSLCertVerificationError):
            log_proxy.warning("upstream %s: TLS certificate verification failed: %s",
                              pool.label, exc.verify_message or exc)
        elif isinstance(exc, ssl.SSLError):
            log_proxy.warning("upstream %s: TLS handshake failed: %s", pool.label,
                              exc.reason or exc)
        else:
            log_proxy.warning("upstream %s: connect %s: %s", pool.label,
                              "timed out" if timed_out else "failed",
                              exc or type(exc).__name__)
        self.try_failed()
        if not self.next_try(TRY_CONNECT):
            self.respond_error(504 if timed_out else 502)
        return 0

    cdef int try_failed(self) except -1:
        """The current try failed before a response: tell the passive checks and
        the balancer, and do not try that server again for this request."""
        if self.peer >= 0:
            self.balancer.report(self.peer, False)
            if self.tried is None:
                self.tried = []
            self.tried.append(self.peer)
        self.peer_done(PEER_FAILED)
        return 0

    cdef Py_ssize_t retry_peer(self, int why) except -2:
        """The peer for another try after `why`, or NO_PEER: a connect failure
        always may (nothing was sent); the others only for an idempotent request
        whose body, if any, was kept whole, within `retries` and the budget."""
        cdef Py_ssize_t i
        cdef GroupBase group = self.group
        if why != TRY_CONNECT:
            if self.retries >= <int>group.retries or self.head.method not in _IDEMPOTENT:
                return NO_PEER
            if why == TRY_RESET and not group.retry_reset:
                return NO_PEER
            if why == TRY_TIMEOUT and not group.retry_timeout:
                return NO_PEER
            if self.head.body_kind != K_NONE and not (self.req_done and self.kept is not None):
                return NO_PEER
            if group.budget.tokens < 1.0:
                return NO_PEER  # before the pick: a pick moves round robin on
        i = self.balancer.choose_other(self.key, self.tried if self.tried is not None else [])
        if i == NO_PEER and why != TRY_STATUS and group.backup is not None \
                and self.balancer is not group.backup:
            # Every primary failed or is unusable: the backups stand in.
            i = (<Balancer>group.backup).choose(self.key)
            if i >= 0:
                self.balancer = <Balancer>group.backup
                self.sticky = False
                self.tried = None
        if i >= 0 and why != TRY_CONNECT:
            if not group.budget.withdraw():
                return NO_PEER
            self.retries += 1
        return i

    cdef bint next_try(self, int why) except -1:
        """Start another try after the current one failed (see retry_peer)."""
        cdef Py_ssize_t i = self.retry_peer(why)
        if i < 0:
            return False
        self.start_try(i)
        return True

    cdef int start_try(self, Py_ssize_t i) except -1:
        if self.kept is not None and self.req_done:
            # Replayed from the copy: the pending list of the failed try was sent.
            self.pending = list(self.kept)
            self.pending_size = self.kept_size
        self.interim = False
        self.use_server(i)
        return 0

    cdef int attach(self, UpstreamConnection conn) except -1:
        cdef ClientConnection client = self.client
        cdef list pending = self.pending
        cdef bytes out, host
        self.conn = conn
        self.connecting = False
        self.pending = None
        conn.attach(self, self.head.is_head_request, self.upgrade is not None)
        if client.write_paused:
            # A pipelined request behind a response the client has not read yet:
            # its pause signal came before this connection existed.
            conn.set_reading(False)
        host = self.host if self.host is not None else self.pool.label_bytes
        out = request_head(self.head, self.target,
                           self.upstream_host if self.upstream_host else host,
                           client.ip, client.proto, self.core.via, self.req_drop,
                           self.req_extra, host)
        if pending:
            pending.insert(0, out)
            if self.pending_size > PENDING_LIMIT:
                # Before the write: if it fills the upstream's buffer, its
                # pause_writing holds the client again.
                client.hold_reading(HOLD_UPSTREAM, False)
            conn.send_all(pending)
        else:
            conn.send(out)
        return 0

    # -- request body, client -> upstream ---------------------------------------------
    cdef int request_body(self, object data) except -1:
        cdef Py_ssize_t n = len(data)
        cdef Core core = self.core
        cdef UpstreamConnection conn = self.conn
        cdef tuple parts
        cdef Py_ssize_t limit
        self.req_bytes += n
        if self.max_body and self.req_bytes > self.max_body:
            if conn is not None:
                conn.abort()
                self.conn = None
            if not self.resp_started:
                self.respond_local(413, True)
            else:
                self.client.abort()
                self.finish(False)
            return 0
        if self.local:
            return 0  # answered already; the body is read and dropped
        if self.head.body_kind == K_CHUNKED:
            parts = (b"%x\r\n" % n, data, _CRLF)
        else:
            parts = (data,)
        if self.kept is not None:
            if self.kept_size + n > self.kept_limit:
                self.kept = None  # too big to keep: this request is not retried
            else:
                self.kept.extend(parts)
                self.kept_size += n
        if conn is not None:
            conn.send_all(parts)
            conn.touch()
        elif self.connecting:
            if self.pending is None:
                self.pending = []
            self.pending.extend(parts)
            self.pending_size += n
            if self.pending_size > PENDING_LIMIT:
                self.client.hold_reading(HOLD_UPSTREAM, True)
        if self.inspected is not None:
            limit = self.rule.waf.body_limit
            if len(self.inspected) < limit:
                self.inspected += data[:limit - len(self.inspected)]
            if self.waf_waiting and len(self.inspected) >= limit:
                self.body_inspected()
        return 0

    cdef int request_complete(self) except -1:
        cdef ClientConnection client
        self.req_done = True
        if self.upgrade is not None and not self.local:
            # What the client sends next is the new protocol's if the upstream agrees
            # (101), the next request if not: held until we know.
            client = self.client
            if client.pending is None:
                client.pending = b""
                client.hold_reading(HOLD_PIPELINE, True)
        if self.local:
            if not self.finished and self.slicing is None:  # (a stream ends by itself)
                self.finish(self.keep)
            return 0
        if self.head.body_kind == K_CHUNKED:
            # The request's trailer fields go on to HTTP/2 servers (as trailing HEADERS);
            # HTTP/1.1 servers get none, as before (few read them, some refuse them).
            last = _LAST_CHUNK
            if self.pool is not None and self.pool.h2 is not None \
                    and self.client.parser is not None:
                last = last_chunk(self.client.parser.trailers)
            if self.kept is not None:
                self.kept.append(last)
            if self.conn is not None:
                self.conn.send(last)
            elif self.connecting:
                if self.pending is None:
                    self.pending = []
                self.pending.append(last)
        if self.waf_waiting:
            self.body_inspected()
        return 0

    cdef int upstream_write_paused(self, bint paused) except -1:
        self.client.hold_reading(HOLD_UPSTREAM, paused)
        return 0

    # -- response, upstream -> client ----------------------------------------------------
    cdef int upstream_head(self, MessageHead head) except -1:
        cdef MessageHead req = self.head
        cdef bint keep
        cdef int framing
        cdef Py_ssize_t retry
        cdef UpstreamConnection conn
        if head.status < 200:
            if head.status == 101:  # (the parser lets it through only when we asked)
                self.switch(head)
                return 0
            self.interim = True  # 1xx: we answered 100-continue ourselves
            return 0
        self.interim = False
        self.upstream_status = head.status
        if self.peer >= 0:
            if 502 <= head.status <= 504:
                self.balancer.report(self.peer, False)
                if head.status in self.group.retry_statuses:
                    if self.tried is None:
                        self.tried = []
                    self.tried.append(self.peer)
                    retry = self.retry_peer(TRY_STATUS)
                    if retry >= 0:
                        # Not passed on: the connection (and the rest of this
                        # response) is dropped and another server asked.
                        conn = self.conn
                        self.conn = None
                        conn.abort()
                        self.peer_done(PEER_FAILED)
                        self.start_try(retry)
                        return 0
            else:
                self.balancer.report(self.peer, True)
        if self.cache is not None and self.cache_head(head):
            return 0
        keep = req.keep_alive and self.req_done and not self.core.closing
        coding = None
        vary = False
        policy = self.rule.compress
        if policy is not None and not self.background and not is_grpc(head):
            # (gRPC compresses per message itself; a content-coding over the stream
            # would break its clients, whatever the route's types say.)
            decision = (<Policy>policy).decide(req, head)
            if decision >= D_IDENTITY:
                vary = True  # compressed for some clients: caches must tell them apart
                if decision != C_NONE:
                    coding = coding_name(decision)
                    self.resp_coding = decision
                    self.encoder = (<Policy>policy).encoder(
                        decision, head.content_length if head.body_kind == K_LENGTH else -1)
                    if self.capture is not None:
                        self.enc_capture = []  # the encoded form is kept with the stored one
        if self.encoder is None and (head.body_kind == K_NONE or head.body_kind == K_LENGTH):
            framing = FR_PASS
        elif req.http_minor == 1:
            framing = FR_CHUNKED
        else:
            framing = FR_CLOSE
            keep = False
        self.framing = framing
        self.keep = keep
        self.status = head.status
        self.resp_head = head
        self.resp_started = True
        extra = self.resp_extra
        drop = self.resp_drop
        if self.client.hsts is not None:
            extra = extra + self.client.hsts if extra else self.client.hsts
        if self.rid_line is not None:
            # Ours replaces any the upstream sent.
            extra = extra + self.rid_line if extra else self.rid_line
            drop = self.core.rid_drop + drop if drop else self.core.rid_drop
        if self.sticky and self.peer >= 0:
            # The server that answered is not the one the cookie named (none, an
            # unknown one, or one that failed): name it now.
            if self.sticky_value != self.group.sticky_values[self.peer]:
                line = <bytes>self.group.sticky_lines[self.peer]
                extra = extra + line if extra else line
        if self.encoder is not None:
            # The head waits for the end of this read: when the whole body came in
            # it, the compressed length is known and goes in Content-Length.
            self.head_extra = extra if extra is not None else b""
            self.resp_drop = drop  # with the request id's field (see send_head)
            self.head_slot = len(self.out)
            self.out.append(None)
            return 0
        self.out.append(response_head(head, framing, keep, req.http_minor, self.core.via,
                                      drop, extra, coding, vary))
        return 0

    cdef int switch(self, MessageHead head) except -1:
        """The upstream switched protocols (101): its head goes to the client, then
        both connections become a `Tunnel` and this exchange ends (logged as 101)."""
        cdef ClientConnection client = self.client
        cdef UpstreamConnection conn = self.conn
        cdef Tunnel tunnel
        cdef bytes pending, extra, drop_line
        cdef bint held
        if not self.req_done or client.closed:
            # RFC 9110 §7.8: the switch takes effect after the whole request.
            conn.abort()
            self.upstream_failed(502, "switched protocols before the request was complete")
            return 0
        self.upstream_status = 101
        self.status = 101
        self.resp_head = head
        self.resp_started = True
        self.interim = False
        extra = self.resp_extra
        drop = self.resp_drop
        if client.hsts is not None:
            extra = extra + client.hsts if extra else client.hsts
        if self.rid_line is not None:
            extra = extra + self.rid_line if extra else self.rid_line
            drop = self.core.rid_drop + drop if drop else self.core.rid_drop
        drop_line = b"Connection: upgrade\r\nUpgrade: " + head.upgrade + _CRLF
        extra = extra + drop_line if extra else drop_line
        client.write(response_head(head, FR_PASS, True, 1, self.core.via, drop, extra))
        tunnel = Tunnel.__new__(Tunnel)
        tunnel.client = client
        tunnel.conn = conn
        tunnel.exchange = self
        self.log_at_close = True
        tunnel.idle = self.rule.tunnel_idle
        self.conn = None
        conn.sink = None
        conn.tunnel = tunnel
        conn.deadline = 0.0
        client.tunnel = tunnel
        pending = client.pending
        client.pending = None
        if pending:
            # Before reading resumes (a TLS transport may hand over later bytes
            # within resume_reading): the client's bytes stay in order.
            tunnel.from_client(pending)
        # Reading on each side follows whether the other side takes bytes now.
        held = client.holds != 0
        client.holds = 0
        if held and not conn.write_paused:
            client.transport.resume_reading()
        elif not held and conn.write_paused:
            client.transport.pause_reading()
        tunnel.down_held = conn.write_paused
        if conn.read_paused != client.write_paused:
            conn.read_paused = client.write_paused
            if conn.read_paused:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()
        client.waiting = WAIT_TUNNEL
        client.deadline = coarse() + tunnel.idle if tunnel.idle > 0 else 0.0
        self.finish(False)
        if client.eof:
            tunnel.eof(False)  # the client had half-closed already
        return 0

    cdef int send_head(self, long long length) except -1:
        """The head of a compressed response, into its place in `out`: with a
        Content-Length when `length` >= 0 (the whole body was compressed), else
        chunked (or delimited by the connection's end for HTTP/1.0)."""
        cdef MessageHead req = self.head
        cdef bytes extra = self.head_extra
        self.head_extra = None
        if length >= 0:
            self.framing = FR_PASS
            self.keep = req.keep_alive and self.req_done and not self.core.closing
            extra += b"Content-Length: %d\r\n" % length
        self.out[self.head_slot] = response_head(
            self.resp_head, self.framing, self.keep, req.http_minor, self.core.via,
            self.resp_drop, extra, coding_name(self.resp_coding), True)
        return 0

    cdef int upstream_body(self, object data) except -1:
        cdef Py_ssize_t n = len(data)
        if self.capture is not None or self.disk_write is not None:
            self.capture_size += n
            if type(data) is not bytes:
                data = bytes(data)  # a view of a buffer that is reused
            if self.capture is not None:
                if self.capture_size > self.cache.capture_limit:
                    self.capture = None  # longer than announced, or unannounced and too long
                else:
                    self.capture.append(data)
            if self.disk_write is not None and not self.disk_write.add(data):
                self.disk_write = None  # too long for the disk, or its writer is behind
        if self.refreshed is not None:
            return 0  # a 304's (there is none)
        if self.encoder is not None:
            self.encoder.feed(data)  # what it makes goes out when the read is handled
            return 0
        self.sent += n
        if self.framing == FR_CHUNKED:
            self.out.append(b"%x\r\n" % n)
            self.out.append(data)
            self.out.append(_CRLF)
        else:
            self.out.append(data)
        return 0

    cdef int encoded(self, bint final) except -1:
        """What the encoder has made so far (flushed: the client can decode all it was
        fed) into `out`; with `final`, the end of the encoded stream."""
        cdef bytes data = self.encoder.take(final)
        cdef Py_ssize_t n = len(data)
        if not n:
            return 0
        self.sent += n
        if self.enc_capture is not None:
            self.enc_size += n
            if self.capture is None and self.slicing is None:
                self.enc_capture = None
            else:
                self.enc_capture.append(data)
        if self.framing == FR_CHUNKED:
            self.out.append(b"%x\r\n" % n)
            self.out.append(data)
            self.out.append(_CRLF)
        else:
            self.out.append(data)
        return 0

    cdef int flush(self) except -1:
        cdef list out = self.out
        cdef UpstreamConnection conn
        if self.head_extra is not None:
            self.send_head(-1)  # the body goes on in later reads: chunked
        if self.encoder is not None and self.encoder.pending:
            self.encoded(False)  # one chunk per upstream read: a stream is not held back
            conn = self.conn
            if self.encoder.taken_in - self.enc_yielded >= YIELD_AFTER and conn is not None \
                    and not conn.read_paused:
                # libuv reads a socket up to 32 times per loop iteration: compressing all
                # that (8 MiB) would hold the loop for a long time. Stop reading until
                # the loop has run once.
                self.enc_yielded = self.encoder.taken_in
                conn.set_reading(False)
                self.core.loop.call_soon(_read_on, self)
        if out:
            self.client.write_all(out)
            PyList_Clear(out)  # emptied and reused
        return 0

    cdef int upstream_complete(self) except -1:
        cdef UpstreamConnection conn
        cdef double now
        if self.interim:
            return 0
        if self.refreshed is not None:
            # A 304 refreshed the stored response: that is the answer.
            conn = self.conn
            self.conn = None
            if conn is not None:
                conn.release(self.req_done and self.resp_head.keep_alive)
            self.peer_done(PEER_ANSWERED)
            now = wall_now()
            if self.filling:
                self.fill_done(self.refreshed)
            self.serve_stored(self.refreshed, now, self.cache.status_line(
                fwd=self.fwd, fwd_status=304, ttl=self.refreshed.fresh_until - now,
                key=self.cache_text), True)
            return 0
        conn = self.conn
        trailers = conn.parser.trailers if conn is not None and conn.parser is not None else None
        if trailers is not None and (self.capture is not None or self.disk_write is not None):
            # A response with trailer fields is not stored (the cache keeps a head
            # and a body): it is passed on only.
            self.capture = None
            if self.disk_write is not None:
                self.disk_write.abort()
                self.disk_write = None
        if self.encoder is not None:
            if self.head_extra is not None and trailers is None:
                # Head and whole body in one read: sent with its length.
                self.framing = FR_PASS
                self.encoded(True)
                self.send_head(self.sent)
            else:
                self.encoded(True)
            self.encoder.release()
            self.encoder = None
        if self.framing == FR_CHUNKED:
            self.out.append(last_chunk(trailers))  # trailer fields reach a chunked client
        self.flush()
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.release(self.req_done and self.resp_head.keep_alive)
        if self.capture is not None or self.disk_write is not None:
            self.store_response()
        self.finish(self.keep)
        return 0

    cdef int store_response(self) except -1:
        """The response is complete: keep it in memory, write it to disk, to Redis."""
        cdef RouteCache cache = self.cache
        write = self.disk_write
        body = b"".join(self.capture) if self.capture is not None else None
        self.capture = None
        self.disk_write = None
        committed = None
        if self.filling and (body is None or len(body) > cache.max_object) and (
                write is not None or (body is not None and cache.redis is not None)):
            # On disk or in Redis only: those waiting for it look again once it is there.
            committed = partial(_shared_committed, cache, self.cache_primary)
        stored = cache.store(self.cache_primary, self.head.headers(), self.resp_head, body,
                             self.request_time, wall_now(), self.fresh, self.shared_key, write,
                             committed, _CACHE_URL.render(self.ctx, self.ctx.captures))
        if stored is not None and self.enc_capture is not None:
            # What was encoded for this client is the stored response's variant in
            # that coding: later hits in it are not compressed again.
            form = stored_form(<Stored>stored, <Policy>self.rule.compress)
            (<StoredForm>form).keep(cache, self.cache_primary, <Stored>stored,
                                    self.resp_coding, b"".join(self.enc_capture))
        self.enc_capture = None
        if committed is not None and cache.fills.get(self.cache_primary) is not None:
            self.filling = False  # the fill is over when the write is (_shared_committed)
        else:
            self.fill_done(stored)
        return 0

    cdef int upstream_lost(self, UpstreamConnection conn, object exc) except -1:
        self.conn = None
        if self.finished:
            return 0
        if not self.resp_started:
            if (conn.reused and not conn.got_bytes and not self.retried
                    and self.head.body_kind == K_NONE and self.head.method in _IDEMPOTENT):
                # A pooled connection the server had closed: send again on a new one.
                self.retried = True
                self.connecting = True
                self.pool.connect(self)
                return 0
            if not self.retried and self.peer >= 0 and exc is not None \
                    and getattr(exc, "refused", False) and exc.replay is not None:
                self.retry_refused(conn, exc)
                return 0
            log_proxy.warning("upstream %s closed the connection before a response%s",
                                 conn.pool.label, f": {exc}" if exc else "")
            self.try_failed()
            if not self.next_try(TRY_RESET):
                self.respond_error(502)
        else:
            log_proxy.warning("upstream %s closed the connection mid-response",
                                 conn.pool.label)
            self.client.abort()
            self.finish(False)
        return 0

    cdef int retry_refused(self, UpstreamConnection conn, object exc) except -1:
        """An HTTP/2 server refused the stream without acting on it (REFUSED_STREAM,
        or above its GOAWAY's last stream id: h2upstream.StreamRefused) and the
        body written so far is in `exc.replay`: the request goes once more, as
        Envoy does, whatever its method, to another server if the balancer has
        one, else to this one (on another stream or connection). Not a failure
        of the server for the passive checks, nor a retry of the budget."""
        cdef Py_ssize_t i, peer = self.peer
        cdef Balancer balancer = self.balancer
        log_proxy.info("upstream %s refused the stream (%s): sent again", conn.pool.label, exc)
        self.retried = True
        if self.tried is None:
            self.tried = []
        self.tried.append(peer)
        self.peer_done(PEER_UNKNOWN)
        i = balancer.choose_other(self.key, self.tried)
        if i < 0:
            i = peer
        self.pending = list(exc.replay)
        self.pending_size = exc.replay_size
        self.interim = False
        # A hold from the refused stream's pause_writing: its resume never comes
        # (the new try's connection holds the client again if it must).
        self.client.hold_reading(HOLD_UPSTREAM, False)
        self.use_server(i)
        return 0

    cdef int upstream_timeout(self) except -1:
        """No answer (or no progress) from the upstream in time."""
        self.conn = None
        if self.finished:
            return 0
        log_proxy.warning("upstream %s: timed out", self.upstream_label)
        if not self.resp_started:
            self.try_failed()
            if not self.next_try(TRY_TIMEOUT):
                self.respond_error(504)
        else:
            self.client.abort()
            self.finish(False)
        return 0

    cdef int upstream_failed(self, int status, str reason) except -1:
        self.conn = None
        if self.finished:
            return 0
        log_proxy.warning("upstream %s: %s", self.upstream_label, reason)
        if not self.resp_started:
            self.try_failed()
            self.respond_error(status)
        else:
            self.client.abort()
            self.finish(False)
        return 0

    # -- the client side stalls or goes away ----------------------------------------------
    cdef int client_write_paused(self, bint paused) except -1:
        if self.conn is not None:
            self.conn.set_reading(not paused)
        elif not paused and self.slice_waiting:
            self.slice_waiting = False
            self.core.loop.call_soon(_next_slice, self)
        return 0

    cdef int client_lost(self) except -1:
        if self.finished:
            return 0
        if self.conn is not None:
            self.conn.abort()  # mid-exchange: the connection state is unknown
            self.conn = None
        if not self.resp_started:
            self.status = 499  # as nginx logs a client that closed early
        self.peer_done(PEER_ANSWERED if self.resp_head is not None else PEER_UNKNOWN)
        self.finish(False)
        return 0

    # -- answers made here ------------------------------------------------------------------
    cdef int respond_local(self, int status, bint close) except -1:
        """Answer without an upstream; the request body (if any) is drained."""
        cdef MessageHead req = self.head
        cdef Core core = self.core
        cdef bint keep = not close and req.keep_alive and not core.closing
        self.send_local(status, core.local_response(status, core.clock, keep, req.is_head_request),
                        0 if req.is_head_request else core.local_body_size(status), keep, close)
        return 0

    cdef int send_parts(self, int status, list parts, long long body_len, bint keep,
                        bint close) except -1:
        """send_local for a response in parts (HSTS included by the caller)."""
        self.local_begin(status, body_len, keep)
        self.client.write_all(parts)
        if close or self.req_done:
            self.finish(keep)
        return 0

    cdef int send_local(self, int status, bytes data, long long body_len, bint keep,
                        bint close) except -1:
        """Send a response made here; `close`: end now, without reading the request body."""
        if status >= 400 and self.core.grpc_local is not None and is_grpc(self.head):
            # A gRPC client reads the call's status from grpc-status, not from HTTP.
            data = self.core.grpc_local(status, data)
            body_len = 0
        self.local_begin(status, body_len, keep)
        if self.client.hsts is not None:
            # On every response of a TLS listener, errors and local answers too.
            cut = data.find(_CRLF) + 2
            data = data[:cut] + self.client.hsts + data[cut:]
        if self.rid_line is not None:
            cut = data.find(_CRLF) + 2
            data = data[:cut] + self.rid_line + data[cut:]
        self.client.write(data)
        if close or self.req_done:
            self.finish(keep)
        return 0

    cdef int local_begin(self, int status, long long body_len, bint keep) except -1:
        self.local = True
        self.connecting = False
        if self.pending is not None:
            # Body held for a filter: dropped, and read again (to drain it) if held.
            self.pending = None
            self.pending_size = 0
            if self.client.holds & HOLD_UPSTREAM:
                self.client.hold_reading(HOLD_UPSTREAM, False)
        self.status = status
        self.keep = keep
        self.resp_started = True
        self.sent = body_len
        return 0

    cdef int respond_error(self, int status) except -1:
        cdef double now
        if self.conn is not None:
            self.conn.abort()
            self.conn = None
        if self.stale is not None:
            now = wall_now()
            if self.cache.usable_on_error(self.stale, self.head.headers(), now):
                self.serve_stored(self.stale, now, self.cache.status_line(
                    fwd="stale", ttl=self.stale.fresh_until - now, key=self.cache_text,
                    detail="stale-if-error"), True)
                return 0
        self.respond_local(status, not self.req_done)
        return 0

    cdef int respond_unavailable(self, bytes body) except -1:
        """503 made here, at once: no server can take the request (`body` says why)."""
        if self.queued is not None:
            self.queued.remove(self)
        self.respond_text(503, b"Service Unavailable", body, b"Retry-After: 1\r\n")
        return 0

    cdef int respond_text(self, int status, bytes reason, bytes body, bytes extra) except -1:
        """A text response made here with header lines `extra`; a request body not
        read yet ends the connection (lingering)."""
        cdef MessageHead req = self.head
        cdef Core core = self.core
        cdef bint close = not self.req_done
        cdef bint keep = not close and req.keep_alive and not core.closing
        cdef bytes data = (
            b"HTTP/1.1 %d %s\r\nServer: fastproxy\r\nDate: %s\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
            b"%sConnection: %s\r\n\r\n"
            % (status, reason, core.clock.http_date, len(body), extra,
               b"keep-alive" if keep else b"close"))
        if not req.is_head_request:
            data += body
        self.send_local(status, data, 0 if req.is_head_request else len(body), keep, close)
        return 0

    cdef int peer_done(self, int outcome) except -1:
        """Tell the balancer the request left its peer: with its duration when the
        upstream answered, as a failure when it did not, without a sample when
        the client went away first."""
        cdef double seconds
        if self.peer >= 0:
            if outcome == PEER_ANSWERED:
                seconds = monotonic() - self.peer_start
                self.upstream_time = seconds
            elif outcome == PEER_FAILED:
                seconds = -1.0
            else:
                seconds = NAN
            if self.core.stats is not None:
                self.count_try(outcome, seconds)
            self.balancer.finished(self.peer, seconds)
            self.peer = -1
            if self.balancer.capped and self.group.waiting is not None:
                self.group.waiting.wake()  # a server has room now
        return 0

    cdef int count_try(self, int outcome, double seconds) except -1:
        """Metrics of one try on a server (see peer_done)."""
        cdef Stats stats = self.core.stats
        cdef ServerPool pool = self.pool
        cdef Py_ssize_t base = -1
        cdef int status
        if pool is not None and pool.stats_base >= 0:
            stat_add(stats, pool.stats_base + SV_IN_FLIGHT, -1)
            if outcome == PEER_FAILED:
                stat_add(stats, pool.stats_base + SV_FAILURES, 1)
        if self.group is not None:
            base = self.group.stats_base
        if base < 0 or outcome == PEER_UNKNOWN:
            return 0
        if outcome == PEER_FAILED or self.resp_head is None:
            stat_add(stats, base + UP_FAILURES, 1)
            return 0
        status = self.resp_head.status // 100 - 1
        stat_add(stats, base + (status if 0 <= status < 5 else 4), 1)
        stats.observe(base + UP_COUNTS, <int64_t>(seconds * 1e6))
        return 0

    cdef int count_request(self) except -1:
        """Metrics of a request that is over (see finish)."""
        cdef Core core = self.core
        cdef Stats stats = core.stats
        cdef Py_ssize_t base = self.rule.stats_base if self.rule is not None \
            else core.stats_noroute
        cdef Py_ssize_t inst = core.stats_instance
        cdef int status = self.status // 100 - 1
        cdef bytes method = self.head.method
        cdef int m
        if status < 0 or status > 4:
            status = 4 if status > 4 else 0
        if base >= 0:
            if method == b"GET":
                m = 0
            elif method == b"HEAD":
                m = 1
            elif method == b"POST":
                m = 2
            elif method == b"PUT":
                m = 3
            elif method == b"DELETE":
                m = 4
            elif method == b"PATCH":
                m = 5
            elif method == b"OPTIONS":
                m = 6
            else:
                m = 7
            stat_add(stats, base + m * 5 + status, 1)
            stats.observe(base + ROUTE_COUNTS, <int64_t>((monotonic() - self.t_start) * 1e6))
        if inst >= 0:
            stat_add(stats, inst + ST_BYTES_IN, self.req_bytes)
            stat_add(stats, inst + ST_BYTES_OUT, self.sent)
            if self.waf_hit:
                stat_add(stats, inst + ST_WAF, 1)
        if core.analytics is not None:
            self.note_tops(core.analytics)
        if self.cache is not None and self.cache.stats_base >= 0:
            if self.cache_hit:
                m = CA_HIT
            elif self.fwd is None or self.fwd == "uri-miss" or self.fwd == "vary-miss":
                m = CA_MISS
            elif self.fwd == "stale":
                m = CA_STALE
            else:
                m = CA_BYPASS
            stat_add(stats, self.cache.stats_base + m, 1)
        return 0

    cdef int note_tops(self, Analytics analytics) except -1:
        """The dashboard's heavy hitters: the path (as routed, else the target
        without its query), the client (as the routes saw it), the User-Agent."""
        cdef RequestContext ctx = self.ctx
        cdef bytes path
        cdef bytes client
        if ctx is not None and ctx.path is not None:
            path = ctx.path
            client = ctx.client_ip
        else:
            path = self.head.target.partition(b"?")[0]
            client = self.client.ip
        analytics.note(path, client, self.head.get(b"user-agent"))
        return 0

    cdef int settle(self, int outcome) except -1:
        """Give back what the request held: its place in max_in_flight and in a
        queue, and its server (told `outcome`). Once, however the exchange ends."""
        if self.counted:
            self.counted = False
            self.core.in_flight -= 1
        if self.queued is not None:
            self.queued.remove(self)
        self.peer_done(outcome)
        return 0

    cdef int finish(self, bint keep) except -1:
        cdef Core core = self.core
        if self.finished:
            return 0
        self.finished = True
        self.settle(PEER_ANSWERED if self.resp_head is not None else PEER_FAILED)
        if self.encoder is not None:
            self.encoder.release()  # cut short: its state is reset for another response
            self.encoder = None
        if self.disk_write is not None:
            self.disk_write.abort()  # cut short: its temporary file goes
            self.disk_write = None
        if self.filling:
            self.fill_done(None)  # ended without storing: the waiters go on alone
        if self.background:
            self.client.exchange_done(self, False)
            return 0
        # Refusals count for auto-ban when they were answered (not a client that
        # went away first: 499).
        if core.bans is not None and self.ctx is not None and self.resp_started and (
                (self.waf_hit and core.ban_waf) or (
                    400 <= self.status < 499 and core.ban_status[self.status - 400])):
            core.ban_event(self.ctx.client_ip)
        if core.stats is not None:
            self.count_request()
        if core.log_on and not self.log_at_close:
            core.access_log.record(self)
        self.client.exchange_done(self, keep)
        return 0

    cdef int tunnel_over(self, long long to_client, long long to_upstream) except -1:
        """The tunnel this exchange switched to is closing: its bytes count as this
        request's (the body bytes sent and received, as nginx's $body_bytes_sent and
        $request_length cover a WebSocket), in the metrics too, and its one access
        log line is written now, with the whole duration."""
        cdef Core core = self.core
        self.sent += to_client
        self.req_bytes += to_upstream
        if core.stats is not None and core.stats_instance >= 0:
            stat_add(core.stats, core.stats_instance + ST_BYTES_IN, to_upstream)
            stat_add(core.stats, core.stats_instance + ST_BYTES_OUT, to_client)
        if core.log_on:
            core.access_log.record(self)
        return 0


# -- the upstream side --------------------------------------------------------------------

@cython.final
cdef class UpstreamConnection(ParserHandler):
    """One connection to an upstream server. While it carries a request it
    reports the parsed response to that exchange; between requests it sits
    idle in its pool, newest first, until reused or timed out."""

    cdef readonly ServerPool pool
    cdef object transport
    cdef ResponseParser parser
    cdef Exchange sink
    cdef double deadline
    cdef bint reused
    cdef bint got_bytes
    cdef bint closed
    cdef bint read_paused
    cdef bint write_paused
    cdef bint in_read   # inside data_received
    cdef bint parked    # released during that read: pool it once the read is done
    cdef int fd         # for send_parts: -1 = always through the transport
    cdef bint queued    # the transport may hold unsent bytes
    cdef Tunnel tunnel  # after a switch of protocols (101): bytes go through it
    cdef bytes pp_key   # the PROXY header it started with (None: none)

    def __cinit__(self, ServerPool pool not None):
        self.pool = pool
        self.parser = ResponseParser(self)
        self.fd = -1

    # -- owner side -------------------------------------------------------------------
    cdef int attach(self, Exchange sink, bint head_request, bint upgrade) except -1:
        self.sink = sink
        self.got_bytes = False
        self.parser._skip_body = head_request
        self.parser.upgrade_asked = upgrade
        self.deadline = coarse() + self.pool.head_timeout
        return 0

    cdef inline void touch(self) noexcept:
        """Progress on the request side: push the read deadline out."""
        if not self.write_paused:
            self.deadline = coarse() + (self.pool.read_timeout if self.got_bytes
                                        else self.pool.head_timeout)

    cdef int release(self, bint reusable) except -1:
        """The exchange is over: back to the pool, or closed."""
        self.sink = None
        if self.read_paused:
            self.set_reading(True)
        if reusable and not self.closed:
            if self.in_read:
                # Not into the pool before the rest of this read is checked: a
                # pipelined request could otherwise take it and be answered with
                # bytes the upstream sent before it saw that request.
                self.parked = True
            else:
                self.pool.put(self)
        else:
            self.close()
        return 0

    cdef int send(self, bytes data) except -1:
        if not self.closed:
            send_parts(self.transport, self.fd, &self.queued, data, True)
        return 0

    cdef int send_all(self, object parts) except -1:
        if not self.closed:
            send_parts(self.transport, self.fd, &self.queued, parts, False)
        return 0

    cdef int set_reading(self, bint on) except -1:
        if self.transport is None or self.closed:
            return 0
        if on and self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
            self.touch()
        elif not on and not self.read_paused:
            # Held back by a slow client: its send timeout applies, not our read timeout.
            self.read_paused = True
            self.transport.pause_reading()
            self.deadline = 0.0
        return 0

    cdef int close(self) except -1:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
        return 0

    cdef int abort(self) except -1:
        self.sink = None
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        return 0

    cdef int timed_out(self) except -1:
        cdef Exchange sink = self.sink
        if self.tunnel is not None:  # a tunnel's close waits on a peer that does not read
            self.transport.abort()
            return 0
        if sink is None:  # idle in the pool for too long
            self.pool.discard(self)
            self.close()
            return 0
        self.abort()
        sink.upstream_timeout()
        return 0

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport):
        # Registered in core.upstream_conns by _connect once the connect completed:
        # a connect that times out after this point never calls connection_lost.
        self.transport = transport
        self.fd = plain_fd(transport)

    def data_received(self, bytes data):
        cdef ResponseParser parser = self.parser
        cdef Py_ssize_t n
        if self.sink is None:
            if self.tunnel is not None:
                self.tunnel.from_upstream(data)
                return
            # Nothing was asked: an idle connection must stay silent.
            self.pool.discard(self)
            self.abort()
            return
        self.got_bytes = True
        self.deadline = coarse() + self.pool.read_timeout
        self.in_read = True
        try:
            while True:
                try:
                    n = parser.feed(data)
                except HttpParseError as e:
                    self._fail(e.reason)
                    return
                if n == len(data):
                    if self.sink is not None:
                        self.sink.flush()
                    break
                data = data[n:]
                if self.tunnel is not None:
                    self.tunnel.from_upstream(data)  # the new protocol's first bytes
                    return
                if self.sink is None:
                    # Bytes after the end of the response: the upstream cannot be trusted.
                    self.parked = False
                    self.abort()
                    return
        finally:
            self.in_read = False
        if self.parked:
            self.parked = False
            if not self.closed:
                self.pool.put(self)

    def eof_received(self):
        if self.tunnel is not None:
            return self.tunnel.eof(True)
        if self.sink is not None and self.got_bytes and (<object>self.parser).message_needs_eof:
            try:
                (<object>self.parser).feed_eof()  # completes a close-delimited body
            except HttpParseError as e:
                self._fail(e.reason)
        # The transport closes now; connection_lost comes later. Stop writes and
        # pooling from this moment (uvloop raises on writes to a closed handle).
        self.closed = True
        self.pool.discard(self)
        return False

    def connection_lost(self, exc):
        cdef Exchange sink = self.sink
        self.closed = True
        self.pool.discard(self)
        self.pool.core.upstream_conns.discard(self)
        if sink is not None:
            self.sink = None
            sink.upstream_lost(self, exc)
        self.parser = None  # it holds a reference to us: break the cycle
        if self.tunnel is not None:
            tunnel = self.tunnel
            self.tunnel = None
            (<Tunnel>tunnel).lost(True)

    def pause_writing(self):
        # The upstream stalls reading our request: send_timeout runs from now.
        self.write_paused = True
        if self.tunnel is not None:
            self.tunnel.upstream_paused(True)
            return
        self.deadline = coarse() + self.pool.send_timeout
        if self.sink is not None:
            self.sink.upstream_write_paused(True)

    def resume_writing(self):
        self.write_paused = False
        if self.tunnel is not None:
            self.tunnel.upstream_paused(False)
            return
        self.deadline = coarse() + self.pool.read_timeout
        if self.sink is not None:
            self.sink.upstream_write_paused(False)

    # -- response parser handler ------------------------------------------------------
    # The sink may let go in the middle of one feed (the client went away):
    # the rest of that chunk is then dropped.
    cdef int on_head(self, MessageHead head) except -1:
        cdef Exchange sink = self.sink  # held: a switch (101) ends the exchange in the call
        if sink is not None:
            sink.upstream_head(head)
        return 0

    cdef int on_body(self, object data) except -1:
        cdef Exchange sink = self.sink  # held: the exchange may let go of us in the call
        if sink is not None:
            sink.upstream_body(data)
        return 0

    cdef int on_message_complete(self) except -1:
        # Held: upstream_complete releases this connection (sink = None) and may end
        # the client's exchange before it returns (pipelined requests over TLS freed
        # it mid-method: a worker crash).
        cdef Exchange sink = self.sink
        if sink is not None:
            sink.upstream_complete()
        return 0

    cdef int _fail(self, str reason) except -1:
        cdef Exchange sink = self.sink
        self.abort()
        if sink is not None:
            sink.upstream_failed(502, reason)
        return 0


@cython.final
cdef class Tunnel:
    """A client connection and an upstream connection after a switch of protocols
    (101, e.g. WebSocket): bytes from each side are written to the other as they
    come, unparsed. Back-pressure both ways: a side whose writes are paused pauses
    reading on the other. No bytes either way for `idle` seconds closes both (the
    client connection's deadline, WAIT_TUNNEL). A FIN is passed on as a half-close
    (when both transports can), both sides close after the second; a side that is
    lost (closed, reset) closes the other after what is buffered for it is sent."""

    cdef ClientConnection client
    cdef UpstreamConnection conn
    cdef double idle            # seconds (0: no idle timeout)
    cdef bint down_held         # we paused reading the client (the upstream's writes are paused)
    cdef bint down_eof          # the client sent its FIN
    cdef bint up_eof            # the upstream sent its FIN
    cdef bint closing
    cdef bint down_lost
    cdef bint up_lost
    cdef long long to_client
    cdef long long to_upstream
    cdef Exchange exchange      # the switch: told the byte counts at close, then logged

    cdef int from_client(self, bytes data) except -1:
        if self.closing:
            return 0
        self.to_upstream += len(data)
        self.conn.send(data)
        if self.idle > 0:
            self.client.deadline = coarse() + self.idle
        return 0

    cdef int from_upstream(self, bytes data) except -1:
        if self.closing or not data:
            return 0
        self.to_client += len(data)
        self.client.write(data)
        if self.idle > 0:
            self.client.deadline = coarse() + self.idle
        return 0

    cdef int client_paused(self, bint paused) except -1:
        """The client does not take more now (or again does): hold the upstream."""
        cdef UpstreamConnection conn = self.conn
        if self.closing or self.up_lost or conn.read_paused == paused:
            return 0
        conn.read_paused = paused
        if paused:
            conn.transport.pause_reading()
        else:
            conn.transport.resume_reading()
        return 0

    cdef int upstream_paused(self, bint paused) except -1:
        """The upstream does not take more now (or again does): hold the client."""
        if self.closing or self.down_lost or self.down_held == paused:
            return 0
        self.down_held = paused
        if paused:
            self.client.transport.pause_reading()
        else:
            self.client.transport.resume_reading()
        return 0

    cdef bint eof(self, bint from_upstream) except -1:
        """One side sent its FIN: True keeps that side's transport open (it may still
        be written to)."""
        cdef object this, other
        if from_upstream:
            self.up_eof = True
            this = self.conn.transport
            other = self.client.transport
        else:
            self.down_eof = True
            this = self.client.transport
            other = self.conn.transport
        if self.closing:
            return False
        if (self.up_eof and self.down_eof) or not (this.can_write_eof() and other.can_write_eof()):
            self.close()
            return False
        other.write_eof()  # after what is buffered for it
        return True

    cdef int idle_out(self) except -1:
        log_proxy.info("upstream %s: tunnel idle for %g s, closed (%d bytes to the client, "
                       "%d to the upstream)", self.conn.pool.label, self.idle, self.to_client,
                       self.to_upstream)
        self.close()
        return 0

    cdef int close(self) except -1:
        """Close both sides after what is buffered for each is sent; a side that does
        not take it in its send timeout is cut (timed_out of each connection)."""
        cdef ClientConnection client = self.client
        cdef UpstreamConnection conn = self.conn
        cdef double now = monotonic()
        cdef Exchange ex = self.exchange
        if self.closing:
            return 0
        self.closing = True
        if ex is not None:  # nothing more passes from here on: the counts are final
            self.exchange = None
            ex.tunnel_over(self.to_client, self.to_upstream)
        if not self.down_lost and client is not None:
            client.closed = True
            client.transport.close()
            client.waiting = WAIT_CLOSING
            client.deadline = now + client.core.t_send
        if not self.up_lost and conn is not None:
            conn.closed = True
            conn.transport.close()
            conn.deadline = now + conn.pool.send_timeout
        return 0

    cdef int lost(self, bint upstream) except -1:
        """One side's transport is gone (its connection did its own bookkeeping)."""
        if upstream:
            self.up_lost = True
        else:
            self.down_lost = True
        self.close()
        if self.up_lost and self.down_lost:
            self.client = None
            self.conn = None
        return 0


@cython.final
cdef class ServerPool:
    """One upstream server: its address, idle connections and reuse counters."""

    cdef readonly Core core
    cdef readonly str host
    cdef readonly int port
    cdef readonly int weight
    cdef readonly str label
    cdef bytes label_bytes       # Host for HTTP/1.0 requests that sent none
    cdef list idle
    cdef Py_ssize_t keepalive
    cdef double read_timeout, send_timeout, idle_timeout, connect_timeout
    cdef double head_timeout    # for the response head of one try (retry.per_try_timeout)
    cdef readonly long long connects   # counted for the metrics (not exported yet)
    cdef public Py_ssize_t stats_base  # the server's first counter in _stats (-1: none)
    cdef readonly long long reuses
    cdef readonly tuple addresses      # resolved IPs of a host name (empty: connect to `host`)
    cdef object ssl                    # client SSLContext for an https:// server, or None
    cdef str server_hostname           # SNI and the name verified, with `ssl`
    cdef Py_ssize_t next_address       # new connections rotate over them
    cdef readonly int proxy_protocol   # PROXY header version sent first (0: none)
    # HTTP/2 to this server (h2upstream.H2Upstream, set by the worker), or None: each
    # request is a stream, its UpstreamConnection's transport; nothing is pooled here.
    cdef public object h2

    def __init__(self, upstream, str host, int port, int weight, Core core not None):
        self.core = core
        self.host = host
        self.port = port
        self.weight = weight
        self.label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.label_bytes = self.label.encode()
        self.stats_base = -1
        self.idle = []
        self.addresses = ()
        self.keepalive = upstream.keepalive
        self.read_timeout = upstream.read_timeout
        self.send_timeout = upstream.send_timeout
        self.idle_timeout = upstream.idle_timeout
        self.connect_timeout = upstream.connect_timeout
        per_try = upstream.retry.per_try_timeout
        self.head_timeout = per_try if 0 < per_try < self.read_timeout else self.read_timeout

    cdef UpstreamConnection take(self):
        cdef UpstreamConnection conn
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.reused = True
                self.reuses += 1
                return conn
        return None

    cdef UpstreamConnection take_for(self, bytes key):
        """An idle connection that started with the PROXY header `key`, newest first:
        a connection that named one client never carries another's requests."""
        cdef UpstreamConnection conn
        cdef Py_ssize_t i = len(self.idle) - 1
        while i >= 0:
            conn = <UpstreamConnection>self.idle[i]
            if conn.pp_key == key:
                del self.idle[i]
                if not conn.closed:
                    conn.reused = True
                    self.reuses += 1
                    return conn
            i -= 1
        return None

    cdef int put(self, UpstreamConnection conn) except -1:
        cdef UpstreamConnection oldest
        if self.h2 is not None:
            conn.close()
            return 0
        if len(self.idle) >= self.keepalive or self.core.closing:
            if self.proxy_protocol and self.keepalive and not self.core.closing:
                # Per-client connections: the least recently used one makes room
                # (its client has most likely gone).
                oldest = <UpstreamConnection>self.idle.pop(0)
                oldest.close()
            else:
                conn.close()
                return 0
        conn.deadline = coarse() + self.idle_timeout
        self.idle.append(conn)
        return 0

    cdef int discard(self, UpstreamConnection conn) except -1:
        # Newest last: a connection that goes away is usually near the end.
        cdef Py_ssize_t i
        for i in range(len(self.idle) - 1, -1, -1):
            if self.idle[i] is conn:
                del self.idle[i]
                return 0
        return 0

    cdef int connect(self, Exchange waiter) except -1:
        """Open a new connection and report to `waiter` (no coroutine when pooled)."""
        cdef UpstreamConnection conn
        self.connects += 1
        if self.h2 is not None:
            # A stream on an HTTP/2 connection that is up and has room: at once.
            conn = self.h2.take(partial(UpstreamConnection, self))
            if conn is not None:
                self.core.upstream_conns.add(conn)
                waiter.connected(conn)
                return 0
            self.core.loop.create_task(_connect(self, waiter))
        elif self.proxy_protocol:
            self.core.loop.create_task(
                _connect(self, waiter, waiter.proxy_header(self.proxy_protocol)))
        else:
            self.core.loop.create_task(_connect(self, waiter))
        return 0

    def set_proxy_protocol(self, str version not None):
        """Start every new connection with a PROXY protocol header: "v1", "v2" or "off"."""
        versions = {"off": 0, "v1": 1, "v2": 2}
        if version not in versions:
            raise ValueError(f"proxy_protocol: {version!r} is not off, v1 or v2")
        self.proxy_protocol = versions[version]

    def set_tls(self, context, str server_hostname):
        """Speak TLS to this server with `context`, naming it `server_hostname`."""
        self.ssl = context
        self.server_hostname = server_hostname

    @property
    def tls(self):
        return self.ssl is not None

    def set_addresses(self, addresses):
        """The addresses a resolution of `host` gave (new connections use them)."""
        self.addresses = tuple(addresses)
        self.next_address = 0

    cdef str connect_host(self):
        cdef Py_ssize_t n = len(self.addresses)
        if n == 0:
            return self.host
        self.next_address = (self.next_address + 1) % n
        return <str>self.addresses[self.next_address]

    def close_idle(self):
        cdef UpstreamConnection conn
        if self.h2 is not None:
            self.h2.close_idle()
        while self.idle:
            conn = self.idle.pop()
            conn.close()


cdef class GroupBase:
    """What a request reads of its upstream group, as C fields rather than Python
    attributes: upstream.UpstreamGroup extends it and sets them (None where it says
    so)."""

    cdef public Balancer balancer       # the primaries
    cdef public Balancer backup         # the backup servers' (None: none)
    cdef public RetryBudget budget
    cdef public Template hash_key       # what the hashing balancers hash (None: nothing)
    cdef public bytes sticky_cookie     # the sticky cookie's name (None: not sticky)
    cdef public tuple sticky_values     # each primary's cookie value ...
    cdef public dict sticky_peers       # ... the primary a value names ...
    cdef public tuple sticky_lines      # ... and its Set-Cookie line
    cdef public int retries
    cdef public frozenset retry_on
    cdef public bint retry_reset
    cdef public bint retry_timeout
    cdef public frozenset retry_statuses
    cdef public Py_ssize_t retry_buffer
    cdef public WaitQueue waiting       # None: no queue
    cdef public bytes busy              # the 503 bodies: every server at max_conns ...
    cdef public bytes unavailable       # ... and none usable
    cdef public Py_ssize_t stats_base   # the upstream's first counter in _stats (-1: none)


@cython.final
cdef class WaitQueue:
    """The requests of one upstream waiting, first come first served, for a
    server below its max_conns; at most `capacity`, each for up to `timeout`."""

    cdef object items   # deque of Exchange, deadlines in order
    cdef readonly Py_ssize_t capacity
    cdef readonly double timeout

    def __cinit__(self, Py_ssize_t capacity, double timeout):
        self.items = deque()
        self.capacity = capacity
        self.timeout = timeout

    def __len__(self):
        return len(self.items)

    cdef bint push(self, Exchange ex) except -1:
        if len(self.items) >= self.capacity:
            return False
        ex.queued = self
        ex.queue_deadline = coarse() + self.timeout
        self.items.append(ex)
        return True

    cdef int remove(self, Exchange ex) except -1:
        ex.queued = None
        try:
            self.items.remove(ex)
        except ValueError:
            pass
        return 0

    cdef int wake(self) except -1:
        """A server has room: the first waiting request tries again."""
        cdef Exchange ex
        while self.items:
            ex = <Exchange>self.items.popleft()
            ex.queued = None
            if ex.finished:
                continue
            if not ex.dispatch(True):
                # Room went to none of the usable servers (e.g. one that is down).
                ex.queued = self
                self.items.appendleft(ex)
            return 0
        return 0

    cdef int expire(self, double now) except -1:
        cdef Exchange ex
        while self.items and (<Exchange>self.items[0]).queue_deadline <= now:
            ex = <Exchange>self.items.popleft()
            ex.queued = None
            if not ex.finished:
                ex.respond_unavailable(ex.group.busy)
        return 0


def tls_tlvs(ssl_object):
    """The v2 TLVs that describe a client's TLS connection: ALPN, AUTHORITY (its
    SNI) and SSL (TLS version, cipher, and the CN of a verified client certificate),
    as HAProxy's send-proxy-v2-ssl-cn sends. b"" when nothing can be said."""
    cdef list parts = []
    cdef int client = PP2_CLIENT_SSL
    cdef unsigned int verify = 1     # 0: a client certificate was presented and verified
    cdef bytes sub = b""
    if ssl_object is None:
        return b""
    try:
        alpn = ssl_object.selected_alpn_protocol()
        if alpn:
            parts.append(tlv(PP2_TYPE_ALPN, alpn.encode("ascii", "replace")))
        sni = getattr(ssl_object, "sni_name", None) or getattr(ssl_object, "fastproxy_sni", None)
        if sni:
            parts.append(tlv(PP2_TYPE_AUTHORITY, (<str>sni).encode("ascii", "replace")))
        version = ssl_object.version()
        if version:
            sub += tlv(PP2_SUBTYPE_SSL_VERSION, version.encode("ascii", "replace"))
        cipher = ssl_object.cipher()
        if cipher:
            sub += tlv(PP2_SUBTYPE_SSL_CIPHER, cipher[0].encode("ascii", "replace"))
        cert = ssl_object.getpeercert()  # {} or None unless verified
        if cert:
            client |= PP2_CLIENT_CERT_CONN
            verify = 0
            for rdn in cert.get("subject", ()):
                for name, value in rdn:
                    if name == "commonName":
                        sub += tlv(PP2_SUBTYPE_SSL_CN, (<str>value).encode("utf-8"))
                        break
        parts.append(tlv(PP2_TYPE_SSL, bytes((client,)) + verify.to_bytes(4, "big") + sub))
    except (ValueError, ssl.SSLError) as e:
        log_proxy.info("PROXY v2 TLVs of a TLS client left out: %s", e)
        return b""
    return b"".join(parts)


class _BeforeTls(asyncio.Protocol):
    """An upstream connection's protocol while its PROXY header goes out, before the
    TLS handshake (nothing is read meanwhile: the server speaks after the handshake)."""


async def _connect_with_header(ServerPool pool, bytes header):
    """A new connection whose first bytes are the PROXY `header`: for an https://
    server, in the clear before the ClientHello (as HAProxy's send-proxy with ssl)."""
    loop = pool.core.loop
    cdef UpstreamConnection conn = UpstreamConnection(pool)
    conn.pp_key = header
    if pool.ssl is None:
        await loop.create_connection(lambda: conn, pool.connect_host(), pool.port)
        conn.send(header)  # before the request head (attach) and any body
        return conn
    raw, _ = await loop.create_connection(_BeforeTls, pool.connect_host(), pool.port)
    try:
        raw.write(header)
        transport = await loop.start_tls(raw, conn, pool.ssl,
                                         server_hostname=pool.server_hostname,
                                         ssl_handshake_timeout=pool.connect_timeout)
    except BaseException:
        raw.abort()
        raise
    conn.connection_made(transport)
    return conn


async def _connect(ServerPool pool, Exchange waiter, bytes header=None):
    loop = pool.core.loop
    try:
        async with asyncio.timeout(pool.connect_timeout):
            if pool.h2 is not None:
                conn = await pool.h2.open(lambda: UpstreamConnection(pool), pool.connect_host())
            elif header is not None:
                conn = await _connect_with_header(pool, header)
            elif pool.ssl is None:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(pool), pool.connect_host(), pool.port)
            else:
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(pool), pool.connect_host(), pool.port,
                    ssl=pool.ssl, server_hostname=pool.server_hostname,
                    ssl_handshake_timeout=pool.connect_timeout)
    except TimeoutError as e:
        waiter.connect_failed(pool, e, True)
        return
    except OSError as e:
        waiter.connect_failed(pool, e, False)
        return
    if (<UpstreamConnection>conn).closed:
        waiter.connect_failed(pool, ConnectionError("closed right after connecting"), False)
        return
    pool.core.upstream_conns.add(conn)
    waiter.connected(<UpstreamConnection>conn)
