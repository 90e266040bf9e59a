# cython: freethreading_compatible = False
"""TCP passthrough listeners (`mode = "tcp"`), compiled.

`HelloReader`     reads a TLS ClientHello as it arrives (any split into TCP
                  segments or TLS records), bounded in size, and finds its
                  server_name (SNI); nothing is decrypted or changed.
`StreamHub`       what the tcp connections of one worker share: open
                  connections, limits, metrics, the access log; its `expire`
                  runs from the worker's tick (idle, ClientHello and close
                  deadlines).
`StreamListener`  one tcp listener's protocol factory: its upstreams (the
                  default one and the SNI table), idle timeout, access list.
`StreamClient`    the client socket's protocol: (peek the ClientHello) ->
                  pick a server (the upstream's balancer) -> connect, the next
                  server on a failure -> pass bytes both ways with
                  back-pressure, half-closes and resets.
`StreamUpstream`  the upstream socket's protocol.

This module imports only the standard library and the other ext modules; the
upstream groups (upstream.UpstreamGroup: `balancer`, `backup`, `config`,
`name`, `stats_base`) and the access log come from the worker.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from fastproxy._balance cimport ALL_BUSY, NO_PEER, Balancer, hash_bytes
from fastproxy._ratelimit cimport ConnTable, ip_key
from fastproxy._stats cimport (Stats, stat_add, ST_ACCEPTED, ST_BYTES_IN, ST_BYTES_OUT,
                               ST_CLOSED, ST_DENIED, ST_OPEN, SV_FAILURES, SV_IN_FLIGHT,
                               SV_REQUESTS, UP_FAILURES)
from fastproxy._url cimport IpSet

import asyncio
import logging

from fastproxy._proxyproto cimport socket_addresses, upstream_header

log = logging.getLogger("fastproxy.stream")


cdef extern from "<sys/socket.h>" nogil:
    struct linger:
        int l_onoff
        int l_linger
    int SOL_SOCKET
    int SO_LINGER
    int setsockopt(int fd, int level, int name, const void* value, unsigned int size)


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


LOG_EVERY = 10.0  # seconds: a kind of refusal is logged at most this often (per listener)
cdef dict _logged = {}  # (kind, where) -> [when last logged, refusals not logged since]


cdef int _log_limited(int level, str kind, str where, str message) except -1:
    """One line per `kind` and `where` per LOG_EVERY seconds, with how many were not
    logged in between: scanners and floods must not drown the log."""
    cdef double now = monotonic()
    key = (kind, where)
    entry = _logged.get(key)
    if entry is None:
        entry = _logged[key] = [-LOG_EVERY, 0]
    if now - <double>entry[0] < LOG_EVERY:
        entry[1] += 1
        return 0
    if entry[1]:
        message += f" (and {entry[1]} more since the last such line)"
    entry[0] = now
    entry[1] = 0
    log.log(level, "%s", message)
    return 0


# -- the ClientHello ------------------------------------------------------------------

cdef enum:
    HELLO_MORE = 0      # not complete yet
    HELLO_NAME = 1      # complete, with a server_name
    HELLO_NO_NAME = 2   # complete, without one
    HELLO_NOT_TLS = 3   # the first bytes are not a TLS handshake record
    HELLO_BAD = 4       # malformed
    HELLO_TOO_BIG = 5   # larger than the bound

    REC_MAX = 16384 + 256  # TLSPlaintext is at most 2^14 bytes; a little slack (RFC 8446 §5.1)
    HELLO_MAX_DEFAULT = 16384  # as nginx's preread buffer
    NAME_MAX = 255

HELLO_RESULTS = {"more": HELLO_MORE, "name": HELLO_NAME, "no_name": HELLO_NO_NAME,
                 "not_tls": HELLO_NOT_TLS, "bad": HELLO_BAD, "too_big": HELLO_TOO_BIG}
_RESULT_NAMES = {v: k for k, v in HELLO_RESULTS.items()}


cdef inline unsigned int _u16(const unsigned char* p) noexcept nogil:
    return (<unsigned int>p[0] << 8) | p[1]


cdef int _hello_name(const unsigned char* m, Py_ssize_t n, Py_ssize_t* at,
                     Py_ssize_t* size) noexcept nogil:
    """Parse a ClientHello body (after the 4-byte handshake header), `n` bytes:
    HELLO_NAME (the host_name at m[at:at+size]), HELLO_NO_NAME or HELLO_BAD."""
    cdef Py_ssize_t p = 0, end, ext_end, list_end, length, i
    cdef unsigned int ext_type, ext_len, name_len
    cdef bint seen = False
    cdef unsigned char c
    # legacy_version (3, x), random
    if n < 2 + 32 + 1 or m[0] != 3:
        return HELLO_BAD
    p = 34
    length = m[p]  # legacy_session_id
    p += 1
    if length > 32 or p + length + 2 > n:
        return HELLO_BAD
    p += length
    length = _u16(m + p)  # cipher_suites
    p += 2
    if length < 2 or length & 1 or p + length + 1 > n:
        return HELLO_BAD
    p += length
    length = m[p]  # legacy_compression_methods
    p += 1
    if length < 1 or p + length > n:
        return HELLO_BAD
    p += length
    if p == n:
        return HELLO_NO_NAME  # no extensions (an old client)
    if p + 2 > n:
        return HELLO_BAD
    length = _u16(m + p)
    p += 2
    if p + length != n:
        return HELLO_BAD  # the extensions fill the rest exactly
    while p < n:
        if p + 4 > n:
            return HELLO_BAD
        ext_type = _u16(m + p)
        ext_len = _u16(m + p + 2)
        p += 4
        ext_end = p + ext_len
        if ext_end > n:
            return HELLO_BAD
        if ext_type == 0:  # server_name (RFC 6066 §3)
            if seen:
                return HELLO_BAD  # an extension appears at most once (RFC 8446 §4.2)
            seen = True
            if ext_len == 0:
                p = ext_end  # an empty one is what a server sends back; no name
                continue
            if ext_len < 2 or p + 2 + _u16(m + p) != ext_end:
                return HELLO_BAD
            list_end = ext_end
            p += 2
            if p == list_end:
                return HELLO_BAD  # an empty server_name_list
            while p < list_end:
                if p + 3 > list_end:
                    return HELLO_BAD
                name_len = _u16(m + p + 1)
                if p + 3 + name_len > list_end:
                    return HELLO_BAD
                if m[p] == 0:  # host_name: one at most
                    if size[0] >= 0:
                        return HELLO_BAD
                    if name_len == 0 or name_len > NAME_MAX:
                        return HELLO_BAD
                    for i in range(name_len):
                        c = m[p + 3 + i]
                        if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122
                                or c == 45 or c == 46 or c == 95):
                            return HELLO_BAD
                        # No empty label (a dot first or after a dot); a trailing
                        # dot is dropped below.
                        if c == 46 and (i == 0 or m[p + 3 + i - 1] == 46):
                            return HELLO_BAD
                    at[0] = p + 3
                    size[0] = name_len
                p += 3 + name_len
        p = ext_end
    if size[0] >= 0:
        if m[at[0] + size[0] - 1] == 46:
            size[0] -= 1
            if size[0] == 0:
                return HELLO_BAD
        return HELLO_NAME
    return HELLO_NO_NAME


@cython.final
cdef class HelloReader:
    """Follows the TLS records of a connection's first bytes until the ClientHello
    handshake message is whole (it may span several records, each split over
    several reads), keeping only that message: state is O(1) per byte, and the
    message is at most `limit` bytes."""

    cdef unsigned char rec[5]       # the record header being read
    cdef int rec_got
    cdef Py_ssize_t rec_left        # bytes of the current record's body still to come
    cdef unsigned char head[4]      # the handshake header (type, 24-bit length)
    cdef unsigned char* msg         # the ClientHello body (malloc'd once its length is known)
    cdef Py_ssize_t msg_len         # its length (-1: not known yet)
    cdef Py_ssize_t got             # bytes of the handshake message so far (header included)
    cdef readonly Py_ssize_t limit  # the largest ClientHello body accepted
    cdef readonly int result
    cdef Py_ssize_t name_at, name_size
    cdef readonly Py_ssize_t records

    def __cinit__(self, Py_ssize_t limit=HELLO_MAX_DEFAULT):
        self.limit = limit
        self.msg_len = -1
        self.name_size = -1

    def __dealloc__(self):
        if self.msg != NULL:
            free(self.msg)
            self.msg = NULL

    cdef int feed_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Take the next `n` bytes; the result so far (HELLO_MORE: not complete)."""
        cdef Py_ssize_t take, i = 0, want
        cdef unsigned int length
        while i < n and self.result == HELLO_MORE:
            if self.rec_left == 0:
                # A record header, byte by byte (it may be split too).
                self.rec[self.rec_got] = p[i]
                i += 1
                self.rec_got += 1
                if self.rec_got == 1 and self.rec[0] != 22:
                    # Not a handshake record: not TLS (or an alert/garbage later).
                    self.result = HELLO_NOT_TLS if self.records == 0 else HELLO_BAD
                elif self.rec_got == 2 and self.rec[1] != 3:
                    self.result = HELLO_NOT_TLS if self.records == 0 else HELLO_BAD
                elif self.rec_got == 5:
                    self.rec_got = 0
                    length = _u16(self.rec + 3)
                    if length == 0 or length > REC_MAX:
                        self.result = HELLO_BAD  # no empty handshake records (RFC 8446 §5.1)
                    self.rec_left = length
                    self.records += 1
                continue
            take = min(self.rec_left, n - i)
            if self.got < 4:
                want = min(take, 4 - self.got)
                memcpy(self.head + self.got, p + i, want)
                self.got += want
                self.rec_left -= want
                i += want
                if self.got == 4:
                    if self.head[0] != 1:  # client_hello
                        self.result = HELLO_BAD
                        return self.result
                    self.msg_len = (<Py_ssize_t>self.head[1] << 16) | \
                        (<Py_ssize_t>self.head[2] << 8) | self.head[3]
                    if self.msg_len > self.limit:
                        self.result = HELLO_TOO_BIG
                        return self.result
                    self.msg = <unsigned char*>malloc(self.msg_len + 1)
                    if self.msg == NULL:
                        raise MemoryError()
                    if self.msg_len == 0:
                        self.result = HELLO_BAD
                        return self.result
                continue
            want = min(take, 4 + self.msg_len - self.got)
            memcpy(self.msg + self.got - 4, p + i, want)
            self.got += want
            self.rec_left -= want
            i += want
            if self.got == 4 + self.msg_len:
                # Whatever follows (the rest of the record, later records) is
                # the client's and is forwarded as it is; we have what we need.
                self.result = _hello_name(self.msg, self.msg_len, &self.name_at,
                                          &self.name_size)
        return self.result

    def feed(self, bytes data not None):
        """Take the next bytes; the result so far as its name ("more", "name",
        "no_name", "not_tls", "bad", "too_big")."""
        self.feed_c(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        return _RESULT_NAMES[self.result]

    @property
    def server_name(self):
        """The server_name sent, in lower case without a trailing dot (None: none)."""
        if self.result != HELLO_NAME:
            return None
        return PyBytes_FromStringAndSize(<char*>self.msg + self.name_at,
                                         self.name_size).lower()


def parse_client_hello(chunks):
    """(result name, server_name or None) after feeding `chunks` (bytes) in order."""
    cdef HelloReader reader = HelloReader()
    result = "more"
    for chunk in chunks:
        result = reader.feed(chunk)
        if result != "more":
            break
    return result, reader.server_name


# -- shared state ---------------------------------------------------------------------

# How a tcp connection ended (the access log's `end`).
END_NAMES = ("open", "closed", "client_reset", "upstream_reset", "idle_timeout",
             "connect_failed", "no_server", "busy", "denied", "bad_hello", "hello_timeout",
             "no_route", "too_many", "shutdown", "send_timeout")
cdef enum:
    E_OPEN = 0
    E_CLOSED = 1
    E_CLIENT_RESET = 2
    E_UPSTREAM_RESET = 3
    E_IDLE = 4
    E_CONNECT_FAILED = 5
    E_NO_SERVER = 6
    E_BUSY = 7
    E_DENIED = 8
    E_BAD_HELLO = 9
    E_HELLO_TIMEOUT = 10
    E_NO_ROUTE = 11
    E_TOO_MANY = 12
    E_SHUTDOWN = 13
    E_SEND_TIMEOUT = 14

# Client connection states.
cdef enum:
    S_PEEK = 0          # reading the ClientHello
    S_CONNECT = 1       # connecting to a server (client reading held)
    S_TUNNEL = 2        # passing bytes
    S_CLOSING = 3       # both sides closing (what is buffered goes out, or send_timeout)
    S_DONE = 4

# Why the client's reading is held (bits).
cdef enum:
    HOLD_CONNECT = 1
    HOLD_UPSTREAM = 2


@cython.final
cdef class StreamHub:
    """The tcp connections of one worker and what they share."""

    cdef readonly set conns
    cdef public bint closing
    cdef public Stats stats
    cdef public Py_ssize_t stats_instance
    cdef public ConnTable conn_table
    cdef long long max_per_ip
    cdef Py_ssize_t max_connections
    cdef public object http_clients   # the HTTP connections' set (max_connections is shared)
    cdef public object http_core      # ... and their Core: its h2_streams are not connections
    cdef object access_log
    cdef bint log_on
    cdef public object loop
    cdef double t_send
    cdef readonly long long refused_per_ip
    cdef readonly long long bad_hellos

    def __init__(self, config, access_log):
        self.conns = set()
        self.stats_instance = -1
        self.max_per_ip = config.limits.max_connections_per_ip
        self.max_connections = config.server.max_connections
        self.access_log = access_log
        self.log_on = access_log is not None and access_log.enabled
        self.t_send = config.timeouts.send
        self.http_clients = ()

    cdef inline void count(self, int what, int64_t v) noexcept:
        if self.stats is not None:
            stat_add(self.stats, self.stats_instance + what if self.stats_instance >= 0 else -1, v)

    def expire(self, double now):
        """Deadlines (the worker's tick): the ClientHello's, an idle tunnel's, a
        close that waits on a side which does not read."""
        cdef StreamClient c
        for c in [c for c in self.conns if (<StreamClient>c).deadline
                  and ((<StreamClient>c).deadline <= now or (<StreamClient>c).active)]:
            c.timed_out(now)

    def abort_all(self):
        """End of a shutdown: cut what is still open."""
        cdef StreamClient c
        for c in list(self.conns):
            c.cut(E_SHUTDOWN)


cdef inline bint _refused(tuple acl, bytes ip) except -1:
    cdef object allow = acl[0], deny = acl[1]
    if deny is not None and (<IpSet>deny).contains(ip):
        return True
    return allow is not None and not (<IpSet>allow).contains(ip)


@cython.final
cdef class StreamListener:
    """One tcp listener: calling it makes a `StreamClient` (the protocol factory)."""

    cdef StreamHub hub
    cdef readonly str name
    cdef object default             # the UpstreamGroup for connections no SNI rule takes
    cdef bint sni                   # route by the ClientHello's server_name
    cdef dict exact                 # name (bytes) -> UpstreamGroup
    cdef dict wild                  # ".suffix" (bytes) -> UpstreamGroup
    cdef double idle
    cdef double hello_timeout
    cdef Py_ssize_t hello_max
    cdef tuple access               # (allow IpSet or None, deny IpSet or None), or None

    def __init__(self, StreamHub hub not None, str name, default, sni_rules, double idle,
                 double hello_timeout, Py_ssize_t hello_max, access):
        """`sni_rules`: None (no SNI routing) or [(names, group)], names lower case,
        "*.suffix" for a wildcard (one or more labels)."""
        self.hub = hub
        self.name = name
        self.default = default
        self.idle = idle
        self.hello_timeout = hello_timeout
        self.hello_max = hello_max
        self.access = access
        self.sni = sni_rules is not None
        self.exact = {}
        self.wild = {}
        if sni_rules is not None:
            for names, group in sni_rules:
                for name in names:
                    key = name.lower().rstrip(".").encode("ascii")
                    if key.startswith(b"*."):
                        self.wild.setdefault(key[1:], group)
                    else:
                        self.exact.setdefault(key, group)

    def __call__(self):
        return StreamClient(self)

    def route(self, name):
        """The upstream group for `name` (bytes, lower case; None: no SNI), else None."""
        return self.route_c(name)

    cdef object route_c(self, bytes name):
        cdef Py_ssize_t i, n
        if name is not None:
            group = self.exact.get(name)
            if group is not None:
                return group
            if self.wild:
                # The longest suffix first: ".b.example.com" before ".example.com".
                n = len(name)
                for i in range(1, n):
                    if name[i] == 46:  # "."
                        group = self.wild.get(name[i:])
                        if group is not None:
                            return group
        return self.default


cdef int _set_rst(object transport) except -1:
    """Make the next abort() of `transport` send a TCP reset (not a FIN)."""
    cdef linger lg
    cdef int fd = -1
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            fd = -1
    if fd >= 0:
        lg.l_onoff = 1
        lg.l_linger = 0
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
    return 0


# -- the client side ------------------------------------------------------------------

@cython.final
cdef class StreamClient:
    """One accepted client socket of a tcp listener (see the module's doc)."""

    cdef StreamListener listener
    cdef StreamHub hub
    cdef object transport
    cdef StreamUpstream up
    cdef HelloReader hello
    cdef list early                 # client bytes read before the upstream connection exists
    cdef int state
    cdef int holds
    cdef readonly bytes ip
    cdef bint peer_given
    cdef bint ip_counted
    cdef bint counted               # counted as open (metrics)
    cdef bint down_eof              # the client sent its FIN
    cdef bint up_eof                # the upstream sent its FIN
    cdef bint write_paused          # the client's transport is full
    cdef bint half_close            # its transport can send a FIN and go on reading
    cdef public double deadline
    cdef public bint active         # bytes moved since the last tick (idle timeout)
    # the server
    cdef object group
    cdef Balancer balancer
    cdef Py_ssize_t peer
    cdef object pool
    cdef list tried
    cdef uint64_t key
    cdef int end
    cdef double start
    cdef readonly double connect_time
    cdef object connecting              # the connect's task (None: not connecting)
    cdef bint connect_expired           # ... which we cancelled: connect_timeout passed
    cdef readonly long long bytes_in    # from the client
    cdef readonly long long bytes_out   # to the client
    cdef readonly bytes server_name
    cdef tuple pp_addrs             # (client port, destination ip, port) from a PROXY header

    def __cinit__(self, StreamListener listener not None):
        self.listener = listener
        self.hub = listener.hub
        self.ip = b"-"
        self.peer = -1

    def set_peer(self, bytes ip not None, int port=0, bytes dst_ip=None, int dst_port=0):
        """The client's address from a PROXY protocol header (before connection_made);
        the port and the destination go on in a PROXY header to the server."""
        self.ip = ip
        self.peer_given = True
        if dst_ip is not None:
            self.pp_addrs = (port, dst_ip, dst_port)

    cdef bytes proxy_header(self, int version):
        """The PROXY header (`version` 1 or 2) for this connection's server, as an
        HTTP listener sends it (HAProxy's `send-proxy` in mode tcp): the client and
        its port, to the address it reached (as its own PROXY header named them, else
        the sockets'). An address the header cannot carry gives v1 UNKNOWN / v2 LOCAL."""
        cdef tuple addrs = self.pp_addrs
        if addrs is None:
            addrs = socket_addresses(self.transport)
            if self.peer_given:  # a port that is not the given client's
                addrs = (0, addrs[1], addrs[2])
        return upstream_header(version, None if self.ip == b"-" else self.ip, addrs[0],
                               addrs[1], addrs[2], None)

    # -- facts for the access log -----------------------------------------------------
    @property
    def listener_name(self):
        return self.listener.name

    @property
    def upstream_name(self):
        return self.group.name if self.group is not None else None

    @property
    def server(self):
        return self.pool.label if self.pool is not None else None

    @property
    def how(self):
        return END_NAMES[self.end]

    @property
    def duration(self):
        return monotonic() - self.start

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport):
        cdef StreamHub hub = self.hub
        cdef StreamListener listener = self.listener
        self.transport = transport
        self.half_close = transport.can_write_eof()
        self.start = monotonic()
        hub.count(ST_ACCEPTED, 1)
        hub.count(ST_OPEN, 1)
        self.counted = True
        hub.conns.add(self)
        if not self.peer_given:
            peer = transport.get_extra_info("peername")
            if peer:
                self.ip = (<str>peer[0]).encode("ascii")
        if len(hub.conns) + len(hub.http_clients) - (
                hub.http_core.h2_streams if hub.http_core is not None else 0) \
                > hub.max_connections:
            self.cut(E_TOO_MANY)
            return
        if listener.access is not None and _refused(listener.access, self.ip):
            hub.count(ST_DENIED, 1)
            self.cut(E_DENIED)
            return
        if hub.max_per_ip and hub.conn_table is not None:
            if not hub.conn_table.acquire(ip_key(self.ip), hub.max_per_ip):
                hub.refused_per_ip += 1
                self.cut(E_TOO_MANY)
                return
            self.ip_counted = True
        self.early = []
        if listener.sni:
            self.state = S_PEEK
            self.hello = HelloReader(listener.hello_max)
            self.deadline = self.start + listener.hello_timeout
        else:
            self.hold(HOLD_CONNECT, True)
            self.pick(listener.default)

    def data_received(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef int result
        self.bytes_in += n
        self.hub.count(ST_BYTES_IN, n)
        if self.state == S_TUNNEL:
            self.active = True
            self.up.transport.write(data)
            return
        if self.state == S_PEEK:
            self.early.append(data)
            result = self.hello.feed_c(<const unsigned char*>PyBytes_AS_STRING(data), n)
            if result == HELLO_MORE:
                return
            self.peeked(result)
            return
        if self.state == S_CONNECT:
            self.early.append(data)  # reading is held; what was in flight
            return
        # closing: the rest is dropped

    cdef int peeked(self, int result) except -1:
        cdef StreamListener listener = self.listener
        cdef bytes name = None
        if result == HELLO_NAME:
            name = self.hello.server_name
            self.server_name = name
        self.hello = None  # its buffer is not needed any more
        if result == HELLO_NAME or result == HELLO_NO_NAME:
            group = listener.route_c(name)
            if group is None:
                _log_limited(logging.INFO, "no_route", listener.name,
                             f"tcp {listener.name}: client {self.ip.decode('ascii', 'replace')}"
                             ": no upstream for server name "
                             f"{name.decode('ascii') if name is not None else '(none)'}; closed")
                self.cut(E_NO_ROUTE)
                return 0
            self.deadline = 0.0
            self.hold(HOLD_CONNECT, True)
            self.pick(group)
            return 0
        self.hub.bad_hellos += 1
        why = ("not a TLS ClientHello" if result == HELLO_NOT_TLS else
               f"ClientHello larger than {listener.hello_max} bytes" if result == HELLO_TOO_BIG
               else "malformed TLS ClientHello")
        _log_limited(logging.INFO, why, listener.name,
                     f"tcp {listener.name}: client {self.ip.decode('ascii', 'replace')}: "
                     f"{why}; closed")
        self.cut(E_BAD_HELLO)
        return 0

    def eof_received(self):
        self.down_eof = True
        if self.state == S_TUNNEL:
            if self.up_eof or not self.half_close:
                self.close_both(E_CLOSED)
                return False
            self.up.transport.write_eof()  # after what is buffered for it
            return True
        if self.state == S_CONNECT:
            return True  # passed on once connected
        if self.state == S_PEEK:
            self.hub.bad_hellos += 1
            self.cut(E_BAD_HELLO)  # closed before a whole ClientHello
        return False

    def connection_lost(self, exc):
        cdef StreamUpstream up = self.up
        cdef StreamHub hub = self.hub
        cdef int end = self.end
        if self.state == S_DONE:
            return
        if end == E_OPEN:
            end = E_CLIENT_RESET if exc is not None else E_CLOSED
        if up is not None and not up.lost:
            if exc is not None:
                up.reset()  # an abort is passed on as one
            elif not up.closed:
                up.closed = True
                up.transport.close()
            if not up.lost and up.transport.get_write_buffer_size():
                # What is left for a server that does not read: its send timeout.
                hub.loop.call_later(hub.t_send, _abort_open, up)
        self.finish(end)

    def pause_writing(self):
        self.write_paused = True
        if self.up is not None:
            self.up.set_reading(False)

    def resume_writing(self):
        self.write_paused = False
        if self.up is not None and self.state == S_TUNNEL:
            self.up.set_reading(True)

    # -- the server -------------------------------------------------------------------
    cdef int hold(self, int reason, bint on) except -1:
        cdef int before = self.holds
        if on:
            self.holds |= reason
        else:
            self.holds &= ~reason
        if self.state >= S_CLOSING:
            return 0
        if before == 0 and self.holds != 0:
            self.transport.pause_reading()
        elif before != 0 and self.holds == 0:
            self.transport.resume_reading()
        return 0

    cdef int pick(self, object group) except -1:
        """Choose a server of `group` (hashing algorithms: by the client address)."""
        cdef Py_ssize_t i
        cdef Balancer balancer
        self.state = S_CONNECT
        self.group = group
        balancer = <Balancer?>group.balancer
        self.balancer = balancer
        self.key = hash_bytes(PyBytes_AS_STRING(self.ip), PyBytes_GET_SIZE(self.ip))
        i = balancer.choose(self.key)
        if i == NO_PEER and group.backup is not None:
            self.balancer = <Balancer>group.backup
            i = self.balancer.choose(self.key)
        if i >= 0:
            self.connect(i)
            return 0
        self.count_failure()
        if i == ALL_BUSY:
            _log_limited(logging.WARNING, "busy", group.name,
                         f"tcp {self.listener.name}: upstream {group.name}: every server is at "
                         f"its max_conns; client {self.ip.decode('ascii', 'replace')} closed")
            self.cut(E_BUSY)
        else:
            _log_limited(logging.WARNING, "unavailable", group.name,
                         f"tcp {self.listener.name}: upstream {group.name}: no server is "
                         "available (all are down or ejected); client "
                         f"{self.ip.decode('ascii', 'replace')} closed")
            self.cut(E_NO_SERVER)
        return 0

    cdef int count_failure(self) except -1:
        cdef Py_ssize_t base
        if self.hub.stats is not None:
            base = self.group.stats_base
            if base >= 0:
                stat_add(self.hub.stats, base + UP_FAILURES, 1)
        return 0

    cdef int connect(self, Py_ssize_t i) except -1:
        cdef Py_ssize_t base
        self.peer = i
        self.balancer.started(i)
        self.pool = self.balancer.peers[i]
        if self.hub.stats is not None:
            base = self.pool.stats_base
            if base >= 0:
                stat_add(self.hub.stats, base + SV_REQUESTS, 1)
                stat_add(self.hub.stats, base + SV_IN_FLIGHT, 1)
        self.connect_time = monotonic()
        # The connect timeout is a deadline the tick checks (timed_out cancels the
        # task), not an asyncio.timeout: that one cost 6% of a connection's CPU time.
        self.deadline = self.connect_time + self.group.config.connect_timeout
        self.connect_expired = False
        self.connecting = self.hub.loop.create_task(_connect(self, self.pool))
        return 0

    cdef int release_peer(self, double seconds) except -1:
        """The connection left its server (seconds < 0: the connect failed)."""
        cdef Py_ssize_t base
        if self.peer < 0:
            return 0
        if self.hub.stats is not None:
            base = self.pool.stats_base
            if base >= 0:
                stat_add(self.hub.stats, base + SV_IN_FLIGHT, -1)
                if seconds < 0:
                    stat_add(self.hub.stats, base + SV_FAILURES, 1)
        self.balancer.finished(self.peer, seconds)
        self.peer = -1
        return 0

    cdef int connect_failed(self, object exc, bint timed_out) except -1:
        cdef Py_ssize_t i
        group = self.group
        self.connecting = None
        log.warning("tcp %s: upstream %s: connect %s: %s", self.listener.name, self.pool.label,
                    "timed out" if timed_out else "failed", exc or type(exc).__name__)
        if self.state != S_CONNECT:  # the client went away meanwhile
            self.release_peer(-1.0)
            return 0
        self.balancer.report(self.peer, False)
        if self.tried is None:
            self.tried = []
        self.tried.append(self.peer)
        self.release_peer(-1.0)
        # Nothing was sent: the next server (as an HTTP connect retry), then a backup.
        i = self.balancer.choose_other(self.key, self.tried)
        if i == NO_PEER and group.backup is not None and self.balancer is not group.backup:
            i = (<Balancer>group.backup).choose(self.key)
            if i >= 0:
                self.balancer = <Balancer>group.backup
                self.tried = None
        if i >= 0:
            self.connect(i)
            return 0
        self.count_failure()
        self.cut(E_CONNECT_FAILED)
        return 0

    cdef int connected(self, StreamUpstream up) except -1:
        cdef list early = self.early
        self.connecting = None
        if self.state != S_CONNECT:  # the client went away meanwhile
            up.closed = True
            up.transport.close()
            self.release_peer(float("nan"))
            return 0
        self.connect_time = monotonic() - self.connect_time
        self.balancer.report(self.peer, True)
        self.up = up
        up.client = self
        self.state = S_TUNNEL
        self.early = None
        version = self.pool.proxy_protocol
        if version:
            up.transport.write(self.proxy_header(version))
        if early:
            up.transport.writelines(early)  # may pause our reading (HOLD_UPSTREAM)
        if self.down_eof:
            up.transport.write_eof()
        if self.write_paused:
            up.set_reading(False)
        self.hold(HOLD_CONNECT, False)
        if self.listener.idle > 0:
            self.deadline = monotonic() + self.listener.idle
        return 0

    # -- from the upstream ------------------------------------------------------------
    cdef int from_upstream(self, bytes data) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        self.bytes_out += n
        self.hub.count(ST_BYTES_OUT, n)
        self.active = True
        if self.state == S_TUNNEL:
            self.transport.write(data)
        return 0

    cdef bint upstream_eof(self) except -1:
        self.up_eof = True
        if self.state != S_TUNNEL:
            return False
        if self.down_eof or not self.half_close:
            self.close_both(E_CLOSED)
            return False
        self.transport.write_eof()
        return True

    cdef int upstream_lost(self, object exc) except -1:
        if self.state == S_TUNNEL or self.state == S_CLOSING:
            if exc is not None and self.end == E_OPEN:
                self.end = E_UPSTREAM_RESET
                self.reset()
            else:
                self.close_both(E_CLOSED)
        return 0

    # -- ending ----------------------------------------------------------------------
    cdef int close_both(self, int end) except -1:
        """Close both sides once what is buffered for each is out; one that does not
        take it within the send timeout is cut (timed_out)."""
        cdef StreamUpstream up = self.up
        if self.state >= S_CLOSING:
            return 0
        if self.end == E_OPEN:
            self.end = end
        self.state = S_CLOSING
        self.deadline = monotonic() + self.hub.t_send
        self.active = False
        self.transport.close()
        if up is not None and not up.closed:
            up.closed = True
            up.transport.close()
        return 0

    cdef int cut(self, int end) except -1:
        """Close at once (nothing of ours is buffered, or it is given up)."""
        cdef StreamUpstream up = self.up
        if self.end == E_OPEN:
            self.end = end
        if self.state >= S_CLOSING and self.deadline == 0.0:
            return 0  # aborted already
        self.state = S_CLOSING
        self.deadline = 0.0
        if up is not None and not up.closed:
            up.closed = True
            up.transport.abort()
        self.transport.abort()
        return 0

    cdef int reset(self) except -1:
        """An abort on the other side: passed on as a TCP reset."""
        cdef StreamUpstream up = self.up
        self.state = S_CLOSING
        self.deadline = 0.0
        _set_rst(self.transport)
        self.transport.abort()
        if up is not None and not up.closed:
            up.closed = True
            up.transport.abort()
        return 0

    cdef int timed_out(self, double now) except -1:
        if self.active:
            self.active = False
            if self.state == S_TUNNEL and self.listener.idle > 0:
                self.deadline = now + self.listener.idle
                return 0
        if self.deadline == 0.0 or self.deadline > now:
            return 0
        if self.state == S_PEEK:
            self.hub.bad_hellos += 1
            _log_limited(logging.INFO, "hello_timeout", self.listener.name,
                         f"tcp {self.listener.name}: client "
                         f"{self.ip.decode('ascii', 'replace')}: no whole ClientHello within "
                         f"{self.listener.hello_timeout:g} s; closed")
            self.cut(E_HELLO_TIMEOUT)
        elif self.state == S_CONNECT:
            if self.connecting is not None:
                self.deadline = 0.0
                self.connect_expired = True
                self.connecting.cancel()  # _connect reports it as a timeout
        elif self.state == S_TUNNEL:
            self.end = E_IDLE
            self.close_both(E_IDLE)
        elif self.state == S_CLOSING:
            if self.end == E_OPEN:
                self.end = E_SEND_TIMEOUT
            self.cut(E_SEND_TIMEOUT)
        return 0

    cdef int finish(self, int end) except -1:
        cdef StreamHub hub = self.hub
        if self.end == E_OPEN:
            self.end = end
        self.state = S_DONE
        self.deadline = 0.0
        hub.conns.discard(self)
        if self.counted:
            self.counted = False
            hub.count(ST_CLOSED, 1)
            hub.count(ST_OPEN, -1)
        if self.ip_counted:
            self.ip_counted = False
            hub.conn_table.release(ip_key(self.ip))
        self.release_peer(float("nan"))
        self.early = None
        self.hello = None
        if self.connecting is not None:  # the client left while we connected
            connecting = self.connecting
            self.connecting = None
            connecting.cancel()
        if hub.log_on:
            hub.access_log.stream(self)
        up = self.up
        if up is not None:
            self.up = None
            (<StreamUpstream>up).client = None  # break the cycle
        return 0


# -- the upstream side ----------------------------------------------------------------

@cython.final
cdef class StreamUpstream:
    """The upstream socket of one tcp connection."""

    cdef StreamClient client
    cdef StreamClient owner     # until connection_made: the client it is made for
    cdef object transport
    cdef bint closed
    cdef bint lost
    cdef bint read_paused
    cdef bint write_paused

    cdef int set_reading(self, bint on) except -1:
        if self.closed or self.read_paused != on:
            return 0
        self.read_paused = not on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()
        return 0

    cdef int reset(self) except -1:
        self.closed = True
        _set_rst(self.transport)
        self.transport.abort()
        return 0

    def connection_made(self, transport):
        # Here, not when create_connection returns: the server may send first, and
        # its bytes can come before the coroutine runs again.
        cdef StreamClient owner = self.owner
        self.transport = transport
        self.owner = None
        if owner is not None:
            owner.connected(self)

    def data_received(self, bytes data):
        cdef StreamClient client = self.client
        if client is not None:
            client.from_upstream(data)

    def eof_received(self):
        cdef StreamClient client = self.client
        if client is None:
            return False
        return client.upstream_eof()

    def connection_lost(self, exc):
        cdef StreamClient client = self.client
        self.closed = True
        self.lost = True
        if client is not None:
            client.upstream_lost(exc)

    def pause_writing(self):
        self.write_paused = True
        if self.client is not None:
            self.client.hold(HOLD_UPSTREAM, True)

    def resume_writing(self):
        self.write_paused = False
        if self.client is not None:
            self.client.hold(HOLD_UPSTREAM, False)


def _abort_open(StreamUpstream up):
    if not up.lost:
        up.transport.abort()


cdef Py_ssize_t _next_address = 0  # new connections rotate over a name's addresses


async def _connect(StreamClient client, object pool):
    global _next_address
    loop = client.hub.loop
    addresses = pool.addresses
    host = pool.host
    if addresses:
        _next_address += 1
        host = addresses[_next_address % len(addresses)]
    cdef StreamUpstream up = StreamUpstream()
    up.owner = client
    try:
        await loop.create_connection(lambda: up, host, pool.port)
    except asyncio.CancelledError:
        if not client.connect_expired:
            raise  # the client left
        if up.transport is None:  # else it connected just in time (and is closed now)
            client.connect_failed(
                TimeoutError(f"no answer within {client.group.config.connect_timeout:g}s"),
                True)
    except OSError as e:
        if up.transport is None:
            client.connect_failed(e, False)
