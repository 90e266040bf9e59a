"""TLS on listeners with OpenSSL driven from C (`[listeners.tls] engine = "openssl"`).

`TlsConnection` sits between the socket and the proxy's client protocol. Below
it is either the socket itself, in the worker's epoll set (`Poller`, accepted by
a `TlsAcceptor`: see "sockets driven without uvloop's transports" below), or,
behind a PROXY-protocol gate, uvloop's TCP transport, to which it is a buffered
protocol (`get_buffer`/`buffer_updated`). Either way the ciphertext lands in one
buffer shared by the worker's connections and goes straight into the
connection's input memory BIO; OpenSSL's records leave through an output BIO of
our own (see _Out). To the client protocol it is the transport (`write`,
`writelines`, `close`, `abort`, `write_eof`, `pause_reading`, ...). Every TLS operation is one C call into libssl: no
`ssl.SSLObject`, no Python exception per handshake step that waits for bytes,
no future or timer per connection.

`ServerContext` is the listener's policy as OpenSSL contexts, built from the
same settings as `tls.server_context` (one `SSL_CTX` per set of certificates
serving the same names, SNI by exact name then one-label wildcard, ALPN by the
server's order, client certificates, TLS 1.2+). It is built in the master
before the workers fork, so they share its session-ticket keys (OpenSSL makes
them in `SSL_CTX_new`), as with the Python contexts.

Errors: an OpenSSL failure (a malformed ClientHello, a bad record, a refused
name) ends that connection only: the alert OpenSSL wrote is sent, the error
queue is cleared, the TCP connection is closed. Nothing is raised or logged;
the client protocol was never told of a connection whose handshake failed, so
it counts it as a failed handshake when it is freed (as with uvloop's TLS).

Plain HTTP listeners use the same Poller and TlsAcceptor: `PlainServer` makes a
`PlainConnection` per socket, the client protocol's transport without TLS (see
"plain HTTP on the same sockets" below).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport (EAGAIN, ECONNABORTED, ECONNRESET, EINTR, EMFILE, ENFILE, ENOBUFS,
                         ENOMEM, EPIPE, errno)
from libc.stdint cimport uint16_t, uint32_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy, memmove, strerror
from posix.uio cimport iovec, writev
from posix.unistd cimport close, write

from fastproxy.openssl cimport *

from asyncio import get_running_loop

try:
    from uvloop.loop import TCPTransport as _TCPTransport
except ImportError:  # another event loop: always write through the transport
    _TCPTransport = None

cdef extern from "time.h" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int CLOCK_MONOTONIC
    int clock_gettime(int clk_id, timespec* tp)

cdef extern from "sys/socket.h" nogil:
    cdef struct linger:
        int l_onoff
        int l_linger
    int SOL_SOCKET
    int SO_LINGER
    int setsockopt(int fd, int level, int name, const void* value, unsigned int size)
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t
    cdef struct sockaddr:
        sa_family_t sa_family
    cdef struct sockaddr_storage:
        sa_family_t ss_family
    int AF_INET
    int AF_INET6
    int SOCK_NONBLOCK
    int SOCK_CLOEXEC
    int SHUT_WR
    int accept4(int fd, sockaddr* addr, socklen_t* addrlen, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int shutdown(int fd, int how)
    int getsockname(int fd, sockaddr* addr, socklen_t* addrlen)

cdef extern from "netinet/in.h" nogil:
    cdef struct in_addr:
        pass
    cdef struct in6_addr:
        pass
    cdef struct sockaddr_in:
        uint16_t sin_port
        in_addr sin_addr
    cdef struct sockaddr_in6:
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    int IPPROTO_TCP
    uint16_t ntohs(uint16_t)
    uint32_t ntohl(uint32_t)

cdef extern from "netinet/tcp.h" nogil:
    int TCP_NODELAY

cdef extern from "arpa/inet.h" nogil:
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)

cdef extern from "sys/epoll.h" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    uint32_t EPOLLIN
    uint32_t EPOLLOUT
    uint32_t EPOLLERR
    uint32_t EPOLLHUP
    uint32_t EPOLLRDHUP
    uint32_t EPOLLET
    int EPOLL_CTL_ADD
    int EPOLL_CTL_DEL
    int EPOLL_CLOEXEC
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)


cdef enum:
    IN_SIZE = 64 * 1024      # one socket read (libuv suggests 64 KiB)
    PLAIN_SIZE = 64 * 1024   # plaintext handed to the client protocol in one call
    RECORD = 16 * 1024       # the most plaintext one TLS record carries
    GATHER_SIZE = RECORD     # small parts of one writelines() joined into one record
    OUT_KEEP = 32 * 1024     # a larger output buffer is freed once it is sent
    EVENTS = 64              # epoll events taken in one wake-up of the poller
    ACCEPTS = 16             # connections accepted in one wake-up of a listener
    HIGH_WATER = 64 * 1024   # pause_writing above this much unsent (as uvloop's default)
    IOV = 64                 # parts of one writelines() sent in one writev


# -- the output BIO -------------------------------------------------------------------
# OpenSSL writes a connection's records into this BIO of ours instead of a memory BIO.
# While `direct` is set (TlsConnection sets it around an SSL_write of at most one
# record, when uvloop holds nothing unsent for the socket) a record goes from OpenSSL's
# buffer straight to the socket: no copy, no memory-BIO bookkeeping (its BIO_ctrl
# calls, the memset of BIO_reset). Otherwise, and for whatever the kernel does not
# take, the bytes are appended to `buf`, which _flush sends in one write.

ctypedef struct _Out:
    char* buf
    Py_ssize_t len
    Py_ssize_t cap
    int fd          # the socket (-1: never written to directly)
    bint direct     # write to fd while nothing is in buf
    bint gone       # a write to fd met EPIPE or ECONNRESET: the peer has gone


cdef void _out_sent(_Out* o) noexcept nogil:
    """The output buffer is empty again; a large one is not kept."""
    o.len = 0
    if o.cap > OUT_KEEP:
        free(o.buf)
        o.buf = NULL
        o.cap = 0


cdef int _out_append(_Out* o, const char* data, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t cap
    cdef char* grown
    if o.len + n > o.cap:
        cap = o.cap * 2 if o.cap else 4096
        while cap < o.len + n:
            cap *= 2
        grown = <char*>realloc(o.buf, cap)
        if grown == NULL:
            return -1
        o.buf = grown
        o.cap = cap
    memcpy(o.buf + o.len, data, n)
    o.len += n
    return 0


cdef int _out_write(BIO* bio, const char* data, int n) noexcept nogil:
    cdef _Out* o = <_Out*>BIO_get_data(bio)
    cdef Py_ssize_t done = 0, r
    BIO_clear_retry_flags(bio)
    if n <= 0:
        return 0
    if o.direct and o.len == 0:
        while True:
            r = write(o.fd, data, n)
            if r >= 0 or errno != EINTR:
                break
        if r == n:
            return n
        o.direct = False  # the rest is queued: what follows goes after it
        if r > 0:
            done = r
        elif errno == EPIPE or errno == ECONNRESET:
            o.gone = True  # nothing more can reach the peer: _flush closes
            return n
        # (EAGAIN, or another error the transport will meet and report)
    if _out_append(o, data + done, n - done) < 0:
        return -1
    return n


cdef long _out_ctrl(BIO* bio, int cmd, long num, void* ptr) noexcept nogil:
    if cmd == BIO_CTRL_FLUSH:
        return 1
    if cmd == BIO_CTRL_WPENDING or cmd == BIO_CTRL_PENDING:
        return (<_Out*>BIO_get_data(bio)).len
    return 0


cdef int _out_create(BIO* bio) noexcept nogil:
    BIO_set_init(bio, 1)
    return 1


cdef BIO_METHOD* _OUT_METHOD = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                            b"fastproxy output")
if (_OUT_METHOD == NULL or not BIO_meth_set_write(_OUT_METHOD, _out_write)
        or not BIO_meth_set_ctrl(_OUT_METHOD, _out_ctrl)
        or not BIO_meth_set_create(_OUT_METHOD, _out_create)):
    raise ImportError("OpenSSL could not make the output BIO method")


# The ciphertext of every read goes here first (TlsConnection._fd_read, or uvloop, which
# reads one socket at a time and calls buffer_updated at once), then into that
# connection's memory BIO.
cdef bytearray _inbuf = bytearray(IN_SIZE)
cdef object _inview = memoryview(_inbuf)
cdef char* _inptr = PyByteArray_AS_STRING(_inbuf)
cdef char _plain[PLAIN_SIZE]
cdef char _gather[GATHER_SIZE]

cdef unsigned char _SESSION_ID_CONTEXT[9]
memcpy(_SESSION_ID_CONTEXT, b"fastproxy", 9)


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef str _openssl_error():
    """The last OpenSSL error as text; the queue is cleared."""
    cdef char buf[256]
    cdef unsigned long code = ERR_peek_last_error()
    ERR_clear_error()
    if not code:
        return "unknown OpenSSL error"
    ERR_error_string_n(code, buf, sizeof(buf))
    return buf.decode("ascii", "replace")


# -- contexts ---------------------------------------------------------------------------

@cython.final
cdef class _Ctx:
    """Owns one SSL_CTX."""
    cdef SSL_CTX* ctx

    def __dealloc__(self):
        if self.ctx != NULL:
            SSL_CTX_free(self.ctx)


cdef int _no_passphrase(char* buf, int size, int rwflag, void* userdata) noexcept nogil:
    return 0  # never prompt on the terminal: an encrypted key fails to load


cdef int _select_context(SSL* ssl, int* alert, void* arg) noexcept:
    """SNI (OpenSSL's servername callback, inside the handshake; the GIL is held)."""
    cdef ServerContext context = <ServerContext>arg
    cdef const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)
    cdef _Ctx chosen
    if name == NULL:
        if context.refuse:
            alert[0] = SSL_AD_UNRECOGNIZED_NAME
            return SSL_TLSEXT_ERR_ALERT_FATAL
        return SSL_TLSEXT_ERR_OK
    try:
        key = (<bytes>name).lower()
        found = context.by_name.get(key)
        if found is None:
            dot = key.find(b".")
            if dot >= 0:
                found = context.by_name.get(b"*" + key[dot:])
    except Exception:
        found = None
    if found is None:
        if context.refuse:
            alert[0] = SSL_AD_UNRECOGNIZED_NAME
            return SSL_TLSEXT_ERR_ALERT_FATAL
        return SSL_TLSEXT_ERR_OK
    chosen = <_Ctx>found
    if chosen.ctx != context.default_ctx:
        SSL_set_SSL_CTX(ssl, chosen.ctx)
    return SSL_TLSEXT_ERR_OK


cdef int _select_alpn(SSL* ssl, const unsigned char** out, unsigned char* outlen,
                      const unsigned char* client, unsigned int client_len,
                      void* arg) noexcept:
    """ALPN: the first of our protocols the client offers (as Python's ssl does)."""
    cdef ServerContext context = <ServerContext>arg
    cdef Py_ssize_t n = len(context.alpn)
    if n == 0:
        return SSL_TLSEXT_ERR_NOACK
    if SSL_select_next_proto(<unsigned char**>out, outlen,
                             <const unsigned char*>PyBytes_AS_STRING(context.alpn),
                             <unsigned int>n, client, client_len) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_NOACK
    return SSL_TLSEXT_ERR_OK


@cython.final
cdef class ServerContext:
    """One TLS listener's OpenSSL contexts (see the module doc).

    groups: per context, the (cert, key) PEM paths it serves; names: a served name
    (lower case, "*.example.com" for a wildcard) -> its group's index; group 0 is
    the default one. Raises ValueError with OpenSSL's reason when a file is
    unusable (tls.check_certificates has said why long before, in practice)."""

    cdef SSL_CTX* default_ctx
    cdef list contexts          # _Ctx, by group
    cdef dict by_name           # bytes -> _Ctx
    cdef bint refuse
    cdef bytes alpn             # wire format: length-prefixed names
    cdef readonly int verify_mode
    cdef readonly double handshake_timeout

    def __init__(self, list groups not None, dict names not None, *, bint refuse=False,
                 str min_version="1.2", str ciphers not None, tuple alpn=(),
                 str client_auth="none", str client_ca=None,
                 double handshake_timeout=10.0):
        cdef _Ctx holder
        if not groups:
            raise ValueError("at least one certificate is needed")
        self.refuse = refuse
        self.handshake_timeout = handshake_timeout
        wire = bytearray()
        for proto in alpn:
            raw = proto.encode("ascii")
            if not 0 < len(raw) < 256:
                raise ValueError(f"alpn: bad protocol name {proto!r}")
            wire.append(len(raw))
            wire += raw
        self.alpn = bytes(wire)
        self.verify_mode = {"none": SSL_VERIFY_NONE, "optional": SSL_VERIFY_PEER,
                            "required": SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                            }[client_auth]
        self.contexts = []
        for files in groups:
            holder = _Ctx()
            holder.ctx = self._policy(min_version, ciphers, client_ca)
            self.contexts.append(holder)  # freed with us, whatever happens next
            for cert, key in files:
                self._load(holder.ctx, cert, key)
        self.default_ctx = (<_Ctx>self.contexts[0]).ctx
        self.by_name = {name.lower().encode("ascii"): self.contexts[index]
                        for name, index in names.items()}
        SSL_CTX_set_tlsext_servername_callback(self.default_ctx, _select_context)
        SSL_CTX_set_tlsext_servername_arg(self.default_ctx, <void*>self)

    cdef SSL_CTX* _policy(self, str min_version, str ciphers, str client_ca) except NULL:
        cdef SSL_CTX* ctx = SSL_CTX_new(TLS_server_method())
        if ctx == NULL:
            raise ValueError(f"OpenSSL: {_openssl_error()}")
        try:
            # Python's ssl defaults for a server context, plus tls.py's policy.
            SSL_CTX_set_options(ctx, (SSL_OP_ALL & ~SSL_OP_DONT_INSERT_EMPTY_FRAGMENTS)
                                | SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_COMPRESSION
                                | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_SINGLE_DH_USE
                                | SSL_OP_SINGLE_ECDH_USE | SSL_OP_NO_RENEGOTIATION)
            # As nginx: an idle connection keeps no 16 KiB record buffers.
            SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS)
            # As nginx: OpenSSL takes all the input BIO holds in one read (not a record
            # header, then its body); what it holds undecrypted is SSL_has_pending.
            SSL_CTX_set_read_ahead(ctx, 1)
            if (not SSL_CTX_set_min_proto_version(
                    ctx, TLS1_3_VERSION if min_version == "1.3" else TLS1_2_VERSION)
                    or not SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)):
                raise ValueError(f"min_version: {_openssl_error()}")
            suites = ciphers.encode("ascii")
            if not SSL_CTX_set_cipher_list(ctx, suites):
                raise ValueError(f"ciphers: selects no cipher suite OpenSSL knows: {ciphers!r}")
            if SSL_CTX_get_security_level(ctx) < 2:  # never below 2, as tls.py
                suites += b":@SECLEVEL=2"
                if not SSL_CTX_set_cipher_list(ctx, suites):
                    raise ValueError(f"ciphers: {_openssl_error()}")
            SSL_CTX_set_session_id_context(ctx, _SESSION_ID_CONTEXT, 9)
            SSL_CTX_set_verify(ctx, self.verify_mode, NULL)
            if client_ca is not None:
                if not SSL_CTX_load_verify_locations(ctx, client_ca.encode(), NULL):
                    raise ValueError(f"client_ca: {client_ca}: {_openssl_error()}")
            SSL_CTX_set_alpn_select_cb(ctx, _select_alpn, <void*>self)
            SSL_CTX_set_default_passwd_cb(ctx, _no_passphrase)
        except BaseException:
            SSL_CTX_free(ctx)
            raise
        return ctx

    cdef int _load(self, SSL_CTX* ctx, str cert, str key) except -1:
        if not SSL_CTX_use_certificate_chain_file(ctx, cert.encode()):
            raise ValueError(f"{cert}: {_openssl_error()}")
        if not SSL_CTX_use_PrivateKey_file(ctx, key.encode(), SSL_FILETYPE_PEM):
            raise ValueError(f"{key}: {_openssl_error()}")
        if not SSL_CTX_check_private_key(ctx):
            raise ValueError(f"{key}: the key does not match the certificate")
        return 0

    def server(self, app_factory not None):
        """This listener's protocol factory in one worker: a TlsConnection per
        accepted socket, around a client protocol from `app_factory`."""
        return TlsServer(self, app_factory)


# -- sockets driven without uvloop's transports ----------------------------------------
# A TLS listener of a worker is served by a TlsAcceptor: its listening socket and every
# connection accepted on it are in one epoll set of ours (Poller), whose descriptor is
# the only one uvloop watches for them (loop.add_reader). A connection is registered
# once (edge-triggered, in and out) and read and written with plain system calls from
# TlsConnection; uvloop makes no transport, handle or registry entry for it.

@cython.final
cdef class Poller:
    """One worker's epoll set for its TLS listeners and their connections."""

    cdef int epfd
    cdef readonly object loop
    cdef object report

    def __cinit__(self, loop not None):
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, strerror(errno).decode())
        self.loop = loop
        self.report = loop.call_exception_handler
        loop.add_reader(self.epfd, self._ready)

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)

    def close(self):
        if self.epfd >= 0:
            self.loop.remove_reader(self.epfd)
            close(self.epfd)
            self.epfd = -1

    cdef int add(self, int fd, uint32_t events, object target) except -1:
        cdef epoll_event ev
        ev.events = events
        ev.data.ptr = <void*>target
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            return -1
        return 0

    def _ready(self):
        cdef epoll_event events[EVENTS]
        cdef object target
        cdef int i, n
        if self.epfd < 0:
            return
        n = epoll_wait(self.epfd, events, EVENTS, 0)
        for i in range(n):
            # A connection stays referenced while it is registered (TlsConnection._lost
            # lets go, from the loop, after its descriptor is closed): an event for one
            # closed earlier in this batch finds it alive and ignores it.
            target = <object>events[i].data.ptr
            try:
                if type(target) is PlainConnection:
                    (<PlainConnection>target)._events(events[i].events)
                elif type(target) is TlsConnection:
                    (<TlsConnection>target)._events(events[i].events)
                else:
                    (<TlsAcceptor>target)._events(events[i].events)
            except Exception as exc:
                if type(target) is PlainConnection:
                    (<PlainConnection>target)._failed()
                    what = "a connection's"
                elif type(target) is TlsConnection:
                    (<TlsConnection>target)._failed()
                    what = "a TLS connection's"
                else:
                    what = f"{(<TlsAcceptor>target).what}'s"
                self.report({"message": f"fastproxy: error in {what} event",
                             "exception": exc})


cdef class _Accepting:
    """What a TlsAcceptor hands its accepted sockets to: TlsServer or PlainServer."""

    cdef int _accepted(self, Poller poller, int fd, sockaddr_storage* addr) except -1:
        raise NotImplementedError


@cython.final
cdef class TlsServer(_Accepting):
    """One worker's side of a TLS listener: the protocol factory for
    `loop.create_server` and the handshakes in progress (their deadlines are
    checked by the worker's tick, `expire`, instead of a timer each)."""

    cdef ServerContext context
    cdef object app_factory
    cdef readonly set handshaking

    def __cinit__(self, ServerContext context not None, app_factory):
        self.context = context
        self.app_factory = app_factory
        self.handshaking = set()

    def __call__(self):
        cdef TlsConnection conn = TlsConnection.__new__(TlsConnection)
        conn.server = self
        conn.app = self.app_factory()
        conn.received = conn.app.data_received
        return conn

    cdef int _accepted(self, Poller poller, int fd, sockaddr_storage* addr) except -1:
        """A socket accept4 gave TlsAcceptor: its TlsConnection, registered with the
        poller (which holds it until TlsConnection._lost)."""
        cdef TlsConnection conn
        cdef int one = 1
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))  # as uvloop
        conn = TlsConnection.__new__(TlsConnection)
        conn.server = self
        conn.poller = poller
        conn.own = True
        conn.fd = fd
        conn.peer = addr[0]
        conn.high = HIGH_WATER
        conn.low = HIGH_WATER // 4
        try:
            conn.app = self.app_factory()
            conn.received = conn.app.data_received
            if poller.add(fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, conn) < 0:
                raise OSError(errno, strerror(errno).decode())
        except BaseException:
            conn.fd = -1
            close(fd)
            raise
        Py_INCREF(conn)  # the registration's reference
        conn.readable = True  # the ClientHello often came with the connection
        try:
            conn._start()
            if conn.fd >= 0 and not conn.closing:
                conn._fd_read()
        except Exception as exc:  # from the app (as Poller._ready does for an event)
            conn._failed()
            poller.report({"message": "fastproxy: error in a new TLS connection",
                           "exception": exc})
        return 0

    def expire(self, double now):
        """Close the connections whose handshake took longer than handshake_timeout."""
        cdef TlsConnection conn
        if not self.handshaking:
            return
        for conn in [c for c in self.handshaking if (<TlsConnection>c).deadline <= now]:
            self.handshaking.discard(conn)
            conn.close()  # a FIN, as uvloop's TLS does


@cython.final
cdef class TlsAcceptor:
    """A listener's socket in one worker, in the poller's set: up to ACCEPTS
    connections per wake-up, each a TlsConnection (TLS listeners, `server` a TlsServer)
    or a PlainConnection (plain HTTP, a PlainServer) on its own descriptor. `close()`
    stops accepting and closes the listening socket (as uvloop's Server.close)."""

    cdef Poller poller
    cdef _Accepting server
    cdef str what               # "a TLS listener" or "a listener", for the log
    cdef object sock
    cdef int fd
    cdef object resume_handle
    cdef double reported        # when a failing accept was last logged
    cdef readonly long long accept_errors

    def __cinit__(self, Poller poller not None, _Accepting server not None, sock not None):
        self.poller = poller
        self.server = server
        self.what = "a TLS listener" if type(server) is TlsServer else "a listener"
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self._watch()

    cdef int _watch(self) except -1:
        # Level-triggered: what one wake-up leaves in the backlog wakes it again.
        if self.poller.add(self.fd, EPOLLIN, self) < 0:
            raise OSError(errno, strerror(errno).decode())
        return 0  # (the poller keeps no reference: the worker holds us)

    cdef int _events(self, uint32_t events) except -1:
        cdef sockaddr_storage addr
        cdef socklen_t size
        cdef int fd, i
        for i in range(ACCEPTS):
            if self.fd < 0:
                return 0
            size = sizeof(addr)
            fd = accept4(self.fd, <sockaddr*>&addr, &size, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                if errno == EINTR or errno == ECONNABORTED:
                    continue
                if errno in (EMFILE, ENFILE, ENOBUFS, ENOMEM):
                    # Out of descriptors or memory: stop accepting for a moment instead of
                    # waking at once again for the same backlog (uvloop logs and goes on).
                    self._pause(errno)
                return 0
            self.server._accepted(self.poller, fd, &addr)
        return 0

    cdef int _pause(self, int err) except -1:
        cdef epoll_event ev
        cdef double now = monotonic()
        epoll_ctl(self.poller.epfd, EPOLL_CTL_DEL, self.fd, &ev)
        self.accept_errors += 1
        if now - self.reported >= 10.0 or self.reported == 0:  # one line per 10 s at most
            self.reported = now
            self.poller.report({"message": f"fastproxy: accept on {self.what}: "
                                           f"{strerror(err).decode()} (failed "
                                           f"{self.accept_errors} times so far); "
                                           f"retrying every 0.1s"})
        self.resume_handle = self.poller.loop.call_later(0.1, self._resume)
        return 0

    def _resume(self):
        self.resume_handle = None
        if self.fd >= 0:
            self._watch()

    def close(self):
        cdef epoll_event ev
        if self.fd < 0:
            return
        if self.resume_handle is not None:
            self.resume_handle.cancel()
            self.resume_handle = None
        elif self.poller.epfd >= 0:
            epoll_ctl(self.poller.epfd, EPOLL_CTL_DEL, self.fd, &ev)
        self.fd = -1
        self.sock.close()

    def is_serving(self):
        return self.fd >= 0


cdef class TlsPipe:
    cdef int put(self, object data) except -1:
        raise NotImplementedError

    cdef int put_parts(self, object parts) except -1:
        raise NotImplementedError

    cdef int cut(self) except -1:
        raise NotImplementedError


@cython.final
cdef class TlsConnection(TlsPipe):
    """One TLS connection: below, uvloop's TCP transport (as its protocol) or, when
    accepted by a TlsAcceptor, the socket itself; above, the client protocol's
    transport."""

    cdef TlsServer server
    cdef SSL* ssl
    cdef BIO* rbio
    cdef BIO* wbio
    cdef object transport       # uvloop's TCP transport
    cdef readonly object app    # the client protocol (made at accept)
    cdef object received        # its data_received, looked up once
    cdef double deadline        # of the handshake
    cdef bint established       # the handshake is done; the app got connection_made
    cdef bint app_paused        # the app paused reading
    cdef bint tcp_paused
    cdef bint tcp_closed        # we closed or aborted the TCP transport, or it is gone
    cdef bint closing           # close() or abort() was called
    cdef bint eof_sent          # write_eof(): close_notify and FIN sent
    cdef bint eof_seen          # the client's close_notify or FIN was read
    cdef bint eof_pending       # ... but not yet told to the app (its reading is paused)
    cdef bint tcp_eof           # the TCP transport reported the client's FIN
    cdef int fd                 # the socket, written to directly by _flush (-1: never)
    cdef bint queued            # the transport may hold unsent bytes of ours
    cdef bint resume_scheduled
    cdef _Out out               # the output BIO's state (see _Out)
    # Accepted by a TlsAcceptor ("own"): the socket is ours, `transport` is None.
    cdef bint own
    cdef Poller poller
    cdef bint readable          # edge-triggered: the socket may hold more to read
    cdef bint rdhup             # the poller reported the client's FIN (or an error)
    cdef bint write_paused      # the app was told pause_writing
    cdef bint resume_write_scheduled
    cdef bint close_when_sent   # close() with bytes unsent: close once they are out
    cdef bint eof_when_sent     # write_eof() with bytes unsent: FIN once they are out
    cdef Py_ssize_t high, low   # write buffer limits
    cdef sockaddr_storage peer  # from accept4
    cdef object peername

    def __dealloc__(self):
        if self.ssl != NULL:
            SSL_free(self.ssl)  # frees both BIOs
            self.ssl = NULL
        free(self.out.buf)
        self.out.buf = NULL
        if self.own and self.fd >= 0:  # (never: _lost comes first)
            close(self.fd)

    # -- below: the protocol of uvloop's TCP transport -----------------------------------
    def connection_made(self, transport):
        self.transport = transport
        self.fd = -1
        if _TCPTransport is not None and type(transport) is _TCPTransport:
            try:
                self.fd = transport.get_extra_info("socket").fileno()
            except Exception:
                self.fd = -1
        self._start()

    cdef int _start(self) except -1:
        """A new connection: its SSL object and BIOs, waiting for the ClientHello."""
        cdef SSL* ssl = SSL_new(self.server.context.default_ctx)
        if ssl == NULL:
            ERR_clear_error()
            self._kill()
            return 0
        self.ssl = ssl
        self.rbio = BIO_new(BIO_s_mem())
        self.wbio = BIO_new(_OUT_METHOD)
        self.out.fd = self.fd
        if self.rbio == NULL or self.wbio == NULL:
            if self.rbio != NULL:
                BIO_free(self.rbio)
            if self.wbio != NULL:
                BIO_free(self.wbio)
            self.rbio = self.wbio = NULL
            ERR_clear_error()
            self._kill()
            return 0
        BIO_set_mem_eof_return(self.rbio, -1)  # an empty input BIO means "want read"
        BIO_set_data(self.wbio, &self.out)
        SSL_set_bio(ssl, self.rbio, self.wbio)
        SSL_set_accept_state(ssl)
        self.deadline = monotonic() + self.server.context.handshake_timeout
        self.server.handshaking.add(self)
        return 0

    cdef int _kill(self) except -1:
        """No SSL object could be made: cut the connection."""
        self.tcp_closed = self.closing = True
        if self.own:
            self._fd_close(False, None)
        else:
            self.transport.abort()
        return 0

    def get_buffer(self, Py_ssize_t sizehint):
        return _inview

    def buffer_updated(self, Py_ssize_t nbytes):
        self._received(nbytes)

    cdef int _received(self, Py_ssize_t nbytes) except -1:
        """`nbytes` of ciphertext are in _inbuf."""
        if self.ssl == NULL or self.tcp_closed or nbytes <= 0:
            return 0
        if BIO_write(self.rbio, _inptr, <int>nbytes) != nbytes:
            ERR_clear_error()
            self._fail()
            return 0
        if self.established:
            if not self.app_paused:
                self._read()
        else:
            self._handshake()
        return 0

    def eof_received(self):
        return self._eof_received()

    cdef bint _eof_received(self) except -1:
        if self.tcp_eof:
            return True
        self.tcp_eof = True
        if not self.established or self.closing:
            self.closing = self.tcp_closed = True  # uvloop closes it on our False
            return False
        if self.eof_seen:
            return True  # the client's close_notify came first: the app was told then
        self.eof_seen = True
        if self.app_paused and self._has_input():
            self.eof_pending = True  # told once the app has read what came before
            return True
        keep = self.app.eof_received()
        if not keep:
            self.closing = self.tcp_closed = True  # uvloop closes the transport itself
        return keep

    def connection_lost(self, exc):
        self._connection_lost(exc)

    cdef int _connection_lost(self, exc) except -1:
        cdef object app = self.app
        self.tcp_closed = self.closing = True
        self.server.handshaking.discard(self)
        self.app = self.received = None  # the app holds us as its transport: no cycle left
        if self.ssl != NULL:
            SSL_free(self.ssl)
            self.ssl = NULL
        free(self.out.buf)
        self.out.buf = NULL
        self.out.len = self.out.cap = 0
        if self.established and app is not None:
            app.connection_lost(exc)
        return 0

    # -- below, when the socket is ours (accepted by a TlsAcceptor) -----------------------
    cdef int _events(self, uint32_t events) except -1:
        if self.fd < 0:
            return 0  # closed earlier in this batch of events
        if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.rdhup = True
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
            self._fd_read()
        if events & (EPOLLOUT | EPOLLERR) and self.out.len and self.fd >= 0:
            self._fd_writable()
        return 0

    cdef int _failed(self) noexcept:
        # An exception escaped from the app: as uvloop would, cut the connection.
        try:
            self.abort()
        except Exception:
            pass
        return 0

    cdef int _fd_read(self) except -1:
        """Read the socket until it is empty, the app pauses or the connection ends."""
        cdef ssize_t n
        while (self.readable and self.fd >= 0 and not self.tcp_paused and not self.closing
               and not self.tcp_eof):
            n = recv(self.fd, _inptr, IN_SIZE, 0)
            if n > 0:
                if n < IN_SIZE and not self.rdhup:
                    # As nginx: a short read emptied the socket; more data is a new edge.
                    self.readable = False
                self._received(n)
            elif n == 0:
                self.readable = False
                if not self._eof_received():
                    self._fd_close(True, None)
            elif errno == EINTR:
                continue
            else:
                self.readable = False
                if errno != EAGAIN:
                    self._fd_close(False, OSError(errno, strerror(errno).decode()))
                return 0
        return 0

    cdef int _fd_writable(self) except -1:
        """The socket takes bytes again: send what waits, then a FIN or the close that
        waited for it; resume the app's writing below the low-water mark."""
        if self.out.gone:
            return self._gone()
        if self.out.len:
            self._fd_flush()
        if self.fd < 0:
            return 0
        if self.out.len == 0:
            if self.close_when_sent:
                self._fd_close(False, None)
                return 0
            if self.eof_when_sent:
                self.eof_when_sent = False
                shutdown(self.fd, SHUT_WR)
        if self.write_paused and self.out.len <= self.low:
            self.write_paused = False
            if self.established and self.app is not None:
                self.app.resume_writing()
        return 0

    def _writable_again(self):
        self.resume_write_scheduled = False
        if self.write_paused and self.out.len <= self.low and self.fd >= 0:
            self.write_paused = False
            if self.established and self.app is not None:
                self.app.resume_writing()

    cdef int _fd_close(self, bint graceful, object exc) except -1:
        """Close our socket: now, or (graceful) once what waits is sent. The app hears
        of it (connection_lost) from the loop, as from a transport."""
        if self.fd < 0:
            return 0
        self.tcp_closed = self.closing = True
        if graceful and self.out.len:
            self.close_when_sent = True
            return 0
        self.server.handshaking.discard(self)
        close(self.fd)
        self.fd = self.out.fd = -1
        self.poller.loop.call_soon(self._lost, exc)
        return 0

    def _lost(self, exc):
        try:
            self._connection_lost(exc)
        finally:
            Py_DECREF(self)  # the registration's reference (see TlsServer._accepted)

    def pause_writing(self):
        if self.established and self.app is not None:
            self.app.pause_writing()

    def resume_writing(self):
        if self.established and self.app is not None:
            self.app.resume_writing()

    # -- above: the transport of the client protocol --------------------------------------
    def write(self, data):
        self.put(data)

    def writelines(self, parts):
        self.put_parts(parts)

    cdef int put(self, object data) except -1:
        cdef Py_buffer view
        if self.ssl == NULL or self.closing or self.eof_sent:
            return 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len and not self._encrypt(<const char*>view.buf, view.len,
                                              view.len <= RECORD):
                return 0
        finally:
            PyBuffer_Release(&view)
        self._flush()
        return 0

    cdef int put_parts(self, object parts) except -1:
        """Small parts are joined into one record (a 1 KiB response is one record,
        not a head record and a body record); large ones are encrypted in place."""
        cdef Py_buffer view
        cdef Py_ssize_t used = 0
        cdef bint first = True  # nothing encrypted yet in this call
        if self.ssl == NULL or self.closing or self.eof_sent:
            return 0
        for part in parts:
            PyObject_GetBuffer(part, &view, PyBUF_SIMPLE)
            try:
                if used + view.len <= GATHER_SIZE:
                    memcpy(_gather + used, view.buf, view.len)
                    used += view.len
                    continue
                first = False
                if used:
                    if not self._encrypt(_gather, used, False):
                        return 0
                    used = 0
                if view.len <= GATHER_SIZE:
                    memcpy(_gather, view.buf, view.len)
                    used = view.len
                elif not self._encrypt(<const char*>view.buf, view.len, False):
                    return 0
            finally:
                PyBuffer_Release(&view)
        # A response that fits in one record (the usual case) goes to the socket from
        # OpenSSL's buffer (see _Out).
        if used and not self._encrypt(_gather, used, first):
            return 0
        self._flush()
        return 0

    def can_write_eof(self):
        return True

    def write_eof(self):
        """close_notify, then a FIN once what was written is out; reading goes on."""
        if self.closing or self.eof_sent:
            return
        self.eof_sent = True
        self._shutdown()
        if self.own:
            if self.fd >= 0 and not self.tcp_closed:
                if self.out.len:
                    self.eof_when_sent = True
                else:
                    shutdown(self.fd, SHUT_WR)
        elif not self.tcp_closed:
            self.transport.write_eof()

    def close(self):
        """close_notify, then close the TCP connection once what was written is out."""
        if self.closing:
            return
        self.closing = True
        self.server.handshaking.discard(self)
        if not self.eof_sent:
            self._shutdown()
        if self.own:
            self._fd_close(True, None)
        elif not self.tcp_closed:
            self.tcp_closed = True
            self.transport.close()

    cdef int cut(self) except -1:
        self.abort()
        return 0

    def abort(self):
        """Cut the connection with a TCP reset (SO_LINGER 0), whatever is unsent."""
        cdef linger lg
        self.closing = True
        if self.own:
            if self.fd >= 0:
                lg.l_onoff = 1
                lg.l_linger = 0
                setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
                self._fd_close(False, None)
            return
        if self.tcp_closed:
            return
        self.tcp_closed = True
        try:
            fd = self.transport.get_extra_info("socket").fileno()
        except Exception:
            fd = -1
        if fd >= 0:
            lg.l_onoff = 1
            lg.l_linger = 0
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
        self.transport.abort()

    def is_closing(self):
        return self.closing or self.tcp_closed

    def pause_reading(self):
        self.app_paused = True
        if not self.tcp_paused and not self.tcp_closed and not self.tcp_eof:
            self.tcp_paused = True
            if not self.own:
                self.transport.pause_reading()

    def resume_reading(self):
        self.app_paused = False
        if self.tcp_paused and not self.tcp_closed and not self.tcp_eof:
            self.tcp_paused = False
            if not self.own:
                self.transport.resume_reading()
        if (self.ssl != NULL and (self.eof_pending or self._has_input()
                                  or (self.readable and self.fd >= 0 and self.own))
                and not self.resume_scheduled):
            # Records that came before the pause: delivered from the loop, never from
            # inside the app's own call (it resumes before it feeds what it holds).
            self.resume_scheduled = True
            get_running_loop().call_soon(self._resumed)

    def _resumed(self):
        self.resume_scheduled = False
        if self.ssl == NULL or self.app_paused or self.closing:
            return
        self._read()
        if self.eof_pending and not self.app_paused and not self.closing and self.ssl != NULL:
            self.eof_pending = False
            if not self.app.eof_received():
                self.close()
        if self.own and self.readable and not self.app_paused:
            self._fd_read()

    def get_write_buffer_size(self):
        if self.own:
            return self.out.len
        if self.tcp_closed:
            return 0
        return self.transport.get_write_buffer_size()

    def set_write_buffer_limits(self, high=None, low=None):
        if not self.own:
            self.transport.set_write_buffer_limits(high, low)
            return
        self.high, self.low = _write_limits(high, low)

    def get_extra_info(self, name, default=None):
        cdef sockaddr_storage here
        cdef socklen_t size = sizeof(here)
        if name == "ssl_object":
            return self if self.established else default
        if not self.own:
            return self.transport.get_extra_info(name, default)
        if name == "peername":
            if self.peername is None:
                self.peername = _address(&self.peer)
            return self.peername
        if name == "sockname" and self.fd >= 0:
            if getsockname(self.fd, <sockaddr*>&here, &size) == 0:
                return _address(&here)
        return default

    # -- what the client protocol reads of `ssl_object` (tls.describe_peer_cert) ---------
    def getpeercert(self, bint binary_form=False):
        """As ssl.SSLObject.getpeercert: the DER (binary_form) or, when client
        certificates are asked for (else {}), subject, issuer and serialNumber as
        Python decodes them; None without a certificate."""
        cdef X509* cert
        cdef unsigned char* der = NULL
        cdef int n
        if self.ssl == NULL:
            return None
        cert = SSL_get1_peer_certificate(self.ssl)
        if cert == NULL:
            return None
        try:
            if binary_form:
                n = i2d_X509(cert, &der)
                if n < 0:
                    ERR_clear_error()
                    return None
                try:
                    return PyBytes_FromStringAndSize(<char*>der, n)
                finally:
                    OPENSSL_free(der)
            if not SSL_CTX_get_verify_mode(SSL_get_SSL_CTX(self.ssl)) & SSL_VERIFY_PEER:
                return {}
            return {"subject": _name_tuple(X509_get_subject_name(cert)),
                    "issuer": _name_tuple(X509_get_issuer_name(cert)),
                    "serialNumber": _serial(cert)}
        finally:
            X509_free(cert)

    def cipher(self):
        """As ssl.SSLObject.cipher(): (name, protocol version, secret bits)."""
        cdef const SSL_CIPHER* suite
        if self.ssl == NULL:
            return None
        suite = SSL_get_current_cipher(self.ssl)
        if suite == NULL:
            return None
        return (SSL_CIPHER_get_name(suite).decode(), SSL_CIPHER_get_version(suite).decode(),
                SSL_CIPHER_get_bits(suite, NULL))

    def version(self):
        return None if self.ssl == NULL else SSL_get_version(self.ssl).decode()

    @property
    def sni_name(self):
        """The server name the client asked for (SNI), or None."""
        cdef const char* name
        if self.ssl == NULL:
            return None
        name = SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name)
        return None if name == NULL else (<bytes>name).decode("ascii", "replace")

    def selected_alpn_protocol(self):
        cdef const unsigned char* data = NULL
        cdef unsigned int n = 0
        if self.ssl == NULL:
            return None
        SSL_get0_alpn_selected(self.ssl, &data, &n)
        return (<char*>data)[:n].decode("ascii") if n else None

    # -- internals ------------------------------------------------------------------------
    cdef bint _has_input(self) noexcept:
        # SSL_has_pending: decrypted bytes, or records read ahead but not yet decrypted.
        return self.ssl != NULL and (SSL_has_pending(self.ssl)
                                     or BIO_ctrl_pending(self.rbio) > 0)

    cdef int _handshake(self) except -1:
        cdef int r = SSL_do_handshake(self.ssl)
        cdef int err
        if r == 1:
            self.established = True
            self.server.handshaking.discard(self)
            self._flush()  # the Finished flight, session tickets
            self.app.connection_made(self)
            if not self.app_paused and not self.closing and self._has_input():
                self._read()
            return 0
        err = SSL_get_error(self.ssl, r)
        self._flush()  # the server's flight, or the alert of a failure
        if err != SSL_ERROR_WANT_READ:
            ERR_clear_error()
            self._fail()
        return 0

    cdef int _read(self) except -1:
        """Decrypt what the input BIO holds and hand it to the app, until it is empty
        or the app pauses reading or closes."""
        cdef int r = 0, err = SSL_ERROR_NONE
        cdef Py_ssize_t used
        while self.ssl != NULL and not self.app_paused and not self.closing:
            used = 0
            while used < PLAIN_SIZE:
                r = SSL_read(self.ssl, _plain + used, <int>(PLAIN_SIZE - used))
                if r <= 0:
                    err = SSL_get_error(self.ssl, r)
                    break
                used += r
                if not SSL_has_pending(self.ssl) and BIO_ctrl_pending(self.rbio) == 0:
                    # All read: spare the SSL_read that would only say "want read".
                    r = -1
                    err = SSL_ERROR_WANT_READ
                    break
            if used:
                self.received(PyBytes_FromStringAndSize(_plain, used))
                if r > 0:
                    continue  # the buffer was full: there may be more
            if self.ssl == NULL:
                return 0
            if self.out.len:
                self._flush()  # a KeyUpdate answer, a no_renegotiation alert
            if err == SSL_ERROR_WANT_READ:
                return 0
            if err == SSL_ERROR_ZERO_RETURN:  # the client's close_notify
                ERR_clear_error()
                if self.eof_seen:
                    return 0
                self.eof_seen = True
                if not self.closing and not self.app.eof_received():
                    self.close()
                return 0
            ERR_clear_error()
            self._fail()
            return 0
        return 0

    cdef bint _encrypt(self, const char* data, Py_ssize_t n, bint one_record) except -1:
        """SSL_write all of it. `one_record`: it fits in one record, which may go to
        the socket at once (see _Out) when nothing of ours waits to be sent."""
        cdef int r
        if one_record and self.out.len == 0 and self._direct_ok():
            self.out.direct = True
        try:
            while n > 0:
                r = SSL_write(self.ssl, data, <int>min(n, 1 << 30))
                if r <= 0:
                    ERR_clear_error()
                    self._fail()
                    return False
                data += r
                n -= r
        finally:
            self.out.direct = False
        return True

    cdef bint _direct_ok(self) except -1:
        """May we write to the socket ourselves now? Not when uvloop holds bytes of
        ours for it (their order), nor once it is closing: after an error uvloop closes
        the descriptor on its own schedule, and its number may already belong to
        another connection."""
        if self.own:
            return self.fd >= 0 and not self.tcp_closed
        if self.fd < 0 or self.tcp_closed or self.transport.is_closing():
            return False
        if self.queued:
            if self.transport.get_write_buffer_size():
                return False
            self.queued = False
        return True

    cdef int _flush(self) except -1:
        """Send what OpenSSL wrote to the output buffer (see _Out), as one TCP write:
        straight to the socket when uvloop has nothing queued for it (as _proxy's
        send_parts does for plain sockets), else through the transport, which then
        keeps the order until its buffer is empty again."""
        cdef Py_ssize_t n = self.out.len
        cdef Py_ssize_t done = 0
        if self.out.gone:
            return self._gone()
        if self.own:
            if n > 0:
                self._fd_flush()
            if self.write_paused and self.out.len <= self.low and not self.resume_write_scheduled:
                # Sent from inside a call of the app's (a write): resume_writing comes from
                # the loop, as a transport's does.
                self.resume_write_scheduled = True
                self.poller.loop.call_soon(self._writable_again)
            return 0
        if n <= 0:
            return 0
        if self.tcp_closed:
            _out_sent(&self.out)
            return 0
        if self._direct_ok():
            while True:
                done = write(self.fd, self.out.buf, n)
                if done >= 0 or errno != EINTR:
                    break
            if done == n:
                _out_sent(&self.out)
                return 0
            if done < 0:
                if errno == EPIPE or errno == ECONNRESET:
                    return self._gone()
                done = 0  # EAGAIN, or an error the transport will meet and report
        data = PyBytes_FromStringAndSize(self.out.buf + done, n - done)
        _out_sent(&self.out)
        self.queued = True
        self.transport.write(data)
        return 0

    cdef int _fd_flush(self) except -1:
        """Our socket: write what waits; keep what the kernel does not take, to be sent
        when the poller says it may (and pause the app's writing above `high`)."""
        cdef Py_ssize_t n = self.out.len
        cdef Py_ssize_t done
        if self.fd < 0:
            _out_sent(&self.out)
            return 0
        while True:
            done = write(self.fd, self.out.buf, n)
            if done >= 0 or errno != EINTR:
                break
        if done == n:
            _out_sent(&self.out)
            return 0
        if done < 0:
            if errno == EPIPE or errno == ECONNRESET:
                return self._gone()
            if errno != EAGAIN:
                _out_sent(&self.out)
                return self._fd_close(False, OSError(errno, strerror(errno).decode()))
            done = 0
        if done:
            memmove(self.out.buf, self.out.buf + done, n - done)
            self.out.len = n - done
        if (self.out.len > self.high and not self.write_paused and self.established
                and not self.closing and self.app is not None):
            self.write_paused = True
            self.app.pause_writing()
        return 0

    cdef int _gone(self) except -1:
        """The peer has gone (reset, or shut down its reading): drop what is left to
        send and close, instead of handing it to the transport only for its write to
        fail again and build an exception (a client that closes right after its
        handshake, before the session tickets arrive, does this each time)."""
        self.out.gone = False
        _out_sent(&self.out)
        self.closing = True
        self.server.handshaking.discard(self)
        if self.own:
            self._fd_close(False, None)
        elif not self.tcp_closed:
            self.tcp_closed = True
            self.transport.close()
        return 0

    cdef int _shutdown(self) except -1:
        if self.ssl != NULL and self.established:
            if SSL_shutdown(self.ssl) < 0:
                ERR_clear_error()
            self._flush()
        return 0

    cdef int _fail(self) except -1:
        """An OpenSSL error: send what it wrote (an alert), then close."""
        if not self.tcp_closed:
            self._flush()
        self.closing = True
        self.server.handshaking.discard(self)
        if self.own:
            self._fd_close(True, None)
        elif not self.tcp_closed:
            self.tcp_closed = True
            self.transport.close()
        return 0


# -- plain HTTP on the same sockets ---------------------------------------------------
# A plain (non-TLS) HTTP listener's connections too are driven from the Poller, unless
# the listener has `proxy_protocol` (the gate reads the header through uvloop) or
# FASTPROXY_PLAIN_SOCKETS=uvloop. A PlainConnection is the client protocol's transport:
# each read is one recv into the shared buffer handed over as `bytes` in one C-level
# call of the app's data_received (looked up once); writes go to the socket with
# send/writev, and what the kernel does not take waits in a buffer of the
# connection's own (`_Out`, as TLS uses it) until the poller says it is writable.

@cython.final
cdef class PlainServer(_Accepting):
    """One worker's side of a plain HTTP listener: a PlainConnection, around a client
    protocol from `app_factory`, per socket its TlsAcceptor accepts."""

    cdef object app_factory

    def __cinit__(self, app_factory not None):
        self.app_factory = app_factory

    cdef int _accepted(self, Poller poller, int fd, sockaddr_storage* addr) except -1:
        cdef PlainConnection conn
        cdef int one = 1
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))  # as uvloop
        conn = PlainConnection.__new__(PlainConnection)
        conn.poller = poller
        conn.fd = fd
        conn.peer = addr[0]
        conn.high = HIGH_WATER
        conn.low = HIGH_WATER // 4
        try:
            conn.app = self.app_factory()
            conn.received = conn.app.data_received
            if poller.add(fd, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, conn) < 0:
                raise OSError(errno, strerror(errno).decode())
        except BaseException:
            conn.fd = -1
            close(fd)
            raise
        Py_INCREF(conn)  # the registration's reference (let go by _lost)
        try:
            conn.app.connection_made(conn)
            # The request often came with the connection: read it now rather than
            # after one more wake-up.
            conn.readable = True
            conn._fd_read()
        except Exception as exc:  # from the app (as Poller._ready does for an event)
            conn._failed()
            poller.report({"message": "fastproxy: error in a new connection",
                           "exception": exc})
        return 0


@cython.final
cdef class PlainConnection(TlsPipe):
    """One plain TCP connection on a socket of ours (accepted by a TlsAcceptor for a
    PlainServer): the client protocol's transport, as uvloop's TCPTransport is."""

    cdef readonly object app    # the client protocol
    cdef object received        # its data_received, looked up once
    cdef Poller poller
    cdef int fd                 # -1 once closed
    cdef _Out out               # what the kernel did not take yet (only TLS's BIO reads out.fd)
    cdef bint readable          # edge-triggered: the socket may hold more to read
    cdef bint rdhup             # the poller reported the client's FIN (or an error)
    cdef bint paused            # the app paused reading
    cdef bint eof_seen          # the client's FIN was read
    cdef bint closing           # close() or abort() was called, or the socket is gone
    cdef bint eof_sent          # write_eof() was called
    cdef bint eof_when_sent     # ... with bytes unsent: FIN once they are out
    cdef bint close_when_sent   # close() with bytes unsent: close once they are out
    cdef bint write_paused      # the app was told pause_writing
    cdef bint resume_scheduled
    cdef Py_ssize_t high, low   # write buffer limits
    cdef sockaddr_storage peer  # from accept4
    cdef object peername

    def __dealloc__(self):
        free(self.out.buf)
        self.out.buf = NULL
        if self.fd >= 0:  # (never: _lost comes first)
            close(self.fd)

    # -- the poller's side ----------------------------------------------------------------
    cdef int _events(self, uint32_t events) except -1:
        if self.fd < 0:
            return 0  # closed earlier in this batch of events
        if events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.rdhup = True
        if events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self.readable = True
            self._fd_read()
        if events & (EPOLLOUT | EPOLLERR) and self.fd >= 0 and (
                self.out.len or self.write_paused):
            self._fd_writable()
        return 0

    cdef int _failed(self) noexcept:
        # An exception escaped from the app: as uvloop would, cut the connection.
        try:
            self.abort()
        except Exception:
            pass
        return 0

    cdef int _fd_read(self) except -1:
        """Read the socket until it is empty, the app pauses or the connection ends."""
        cdef ssize_t n
        while self.readable and self.fd >= 0 and not self.paused and not self.closing \
                and not self.eof_seen:
            n = recv(self.fd, _inptr, IN_SIZE, 0)
            if n > 0:
                if n < IN_SIZE and not self.rdhup:
                    # As nginx: a short read emptied the socket; more data is a new edge.
                    self.readable = False
                self.received(PyBytes_FromStringAndSize(_inptr, n))
            elif n == 0:
                self.readable = False
                self.eof_seen = True
                if not self.app.eof_received():
                    self.close()  # as uvloop does when eof_received returns false
            elif errno == EINTR:
                continue
            else:
                self.readable = False
                if errno != EAGAIN:
                    self._fd_close(OSError(errno, strerror(errno).decode()))
                return 0
        return 0

    cdef int _fd_writable(self) except -1:
        """The socket takes bytes again: send what waits, then a FIN or the close that
        waited for it; resume the app's writing below the low-water mark."""
        if self.out.len:
            self._fd_flush()
        if self.fd < 0:
            return 0
        if self.out.len == 0:
            if self.close_when_sent:
                self._fd_close(None)
                return 0
            if self.eof_when_sent:
                self.eof_when_sent = False
                shutdown(self.fd, SHUT_WR)
        if self.write_paused and self.out.len <= self.low:
            self.write_paused = False
            if self.app is not None:
                self.app.resume_writing()
        return 0

    cdef int _fd_close(self, object exc) except -1:
        """Close the socket now; the app hears of it (connection_lost) from the loop,
        as from a transport."""
        if self.fd < 0:
            return 0
        self.closing = True
        close(self.fd)
        self.fd = -1
        self.out.len = 0
        self.poller.loop.call_soon(self._lost, exc)
        return 0

    def _lost(self, exc):
        cdef object app = self.app
        try:
            self.app = self.received = None  # the app holds us: no cycle left
            free(self.out.buf)
            self.out.buf = NULL
            self.out.len = self.out.cap = 0
            if app is not None:
                app.connection_lost(exc)
        finally:
            Py_DECREF(self)  # the registration's reference (see PlainServer._accepted)

    # -- the client protocol's side: a transport ------------------------------------------
    def write(self, data):
        self.put(data)

    def writelines(self, parts):
        self.put_parts(parts)

    cdef int put(self, object data) except -1:
        cdef Py_buffer view
        cdef ssize_t done = 0
        if self.fd < 0 or self.closing or self.eof_sent:
            return 0
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                return 0
            if self.out.len == 0:
                while True:
                    done = write(self.fd, view.buf, view.len)
                    if done >= 0 or errno != EINTR:
                        break
                if done == view.len:
                    return 0
                if done < 0:
                    if errno != EAGAIN:
                        return self._fd_close(OSError(errno, strerror(errno).decode()))
                    done = 0
            if _out_append(&self.out, <const char*>view.buf + done, view.len - done) < 0:
                raise MemoryError()
        finally:
            PyBuffer_Release(&view)
        self._check_high()
        return 0

    cdef int put_parts(self, object parts) except -1:
        cdef Py_buffer views[IOV]
        cdef iovec iov[IOV]
        cdef Py_ssize_t n, i, got = 0, total = 0, left, size
        cdef ssize_t done = -1
        if self.fd < 0 or self.closing or self.eof_sent:
            return 0
        if type(parts) is not list and type(parts) is not tuple:
            parts = list(parts)
        n = len(parts)
        if n == 1:
            return self.put(parts[0])
        if self.out.len or n > IOV:
            was_empty = self.out.len == 0
            for part in parts:
                PyObject_GetBuffer(part, &views[0], PyBUF_SIMPLE)
                try:
                    if _out_append(&self.out, <const char*>views[0].buf, views[0].len) < 0:
                        raise MemoryError()
                finally:
                    PyBuffer_Release(&views[0])
            if was_empty and self.out.len:  # (more parts than one writev takes)
                self._fd_flush()
            self._check_high()
            return 0
        try:
            for i in range(n):
                PyObject_GetBuffer(parts[i], &views[i], PyBUF_SIMPLE)
                got += 1
                iov[i].iov_base = views[i].buf
                iov[i].iov_len = views[i].len
                total += views[i].len
            while True:
                done = writev(self.fd, iov, <int>n)
                if done >= 0 or errno != EINTR:
                    break
            if done == total:
                return 0
            if done < 0:
                if errno != EAGAIN:
                    return self._fd_close(OSError(errno, strerror(errno).decode()))
                done = 0
            left = done  # keep what the kernel did not take, in order
            for i in range(n):
                size = views[i].len
                if left >= size:
                    left -= size
                    continue
                if _out_append(&self.out, <const char*>views[i].buf + left, size - left) < 0:
                    raise MemoryError()
                left = 0
        finally:
            for i in range(got):
                PyBuffer_Release(&views[i])
        self._check_high()
        return 0

    cdef int _check_high(self) except -1:
        if (self.out.len > self.high and not self.write_paused and not self.closing
                and self.app is not None):
            self.write_paused = True
            self.app.pause_writing()  # as uvloop: from inside the write
        return 0

    cdef int _fd_flush(self) except -1:
        """Write what waits; keep what the kernel does not take."""
        cdef Py_ssize_t n = self.out.len
        cdef ssize_t done
        while True:
            done = write(self.fd, self.out.buf, n)
            if done >= 0 or errno != EINTR:
                break
        if done == n:
            _out_sent(&self.out)
            return 0
        if done < 0:
            if errno != EAGAIN:
                return self._fd_close(OSError(errno, strerror(errno).decode()))
            return 0
        if done:
            memmove(self.out.buf, self.out.buf + done, n - done)
            self.out.len = n - done
        return 0

    def can_write_eof(self):
        return True

    def write_eof(self):
        """A FIN once what was written is out; reading goes on."""
        if self.fd < 0 or self.closing or self.eof_sent:
            return
        self.eof_sent = True
        if self.out.len:
            self.eof_when_sent = True
        else:
            shutdown(self.fd, SHUT_WR)

    def close(self):
        """Stop reading; close once what was written is out (connection_lost then)."""
        if self.closing:
            return
        self.closing = True
        if self.fd < 0:
            return
        if self.out.len:
            self.close_when_sent = True
        else:
            self._fd_close(None)

    def abort(self):
        """Close now, dropping what is unsent (as uvloop's abort: the kernel still
        sends what it holds; `cut` resets instead)."""
        self.closing = True
        self._fd_close(None)

    cdef int cut(self) except -1:
        cdef linger lg
        self.closing = True
        if self.fd >= 0:
            lg.l_onoff = 1
            lg.l_linger = 0
            setsockopt(self.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg))
            self._fd_close(None)
        return 0

    def is_closing(self):
        return self.closing

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False
        if self.readable and self.fd >= 0 and not self.resume_scheduled:
            # What came during the pause: read from the loop, never from inside the
            # app's own call (as a transport does).
            self.resume_scheduled = True
            self.poller.loop.call_soon(self._resumed)

    def _resumed(self):
        self.resume_scheduled = False
        if not self.paused:
            self._fd_read()

    def get_write_buffer_size(self):
        return self.out.len

    def get_write_buffer_limits(self):
        return (self.low, self.high)

    def set_write_buffer_limits(self, high=None, low=None):
        self.high, self.low = _write_limits(high, low)
        self._check_high()

    def get_extra_info(self, name, default=None):
        cdef sockaddr_storage here
        cdef socklen_t size = sizeof(here)
        if name == "peername":
            if self.peername is None:
                self.peername = _address(&self.peer)
            return self.peername
        if name == "sockname" and self.fd >= 0:
            if getsockname(self.fd, <sockaddr*>&here, &size) == 0:
                return _address(&here)
        return default


cdef tuple _write_limits(high, low):
    """set_write_buffer_limits' (high, low), defaults as uvloop's transports."""
    if high is None:
        high = HIGH_WATER if low is None else 4 * low
    if low is None:
        low = high // 4
    if not high >= low >= 0:
        raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
    return high, low


cdef object _address(sockaddr_storage* addr):
    """A socket address as Python's socket module gives it."""
    cdef char host[64]
    cdef sockaddr_in* v4
    cdef sockaddr_in6* v6
    if addr.ss_family == AF_INET:
        v4 = <sockaddr_in*>addr
        if inet_ntop(AF_INET, &v4.sin_addr, host, sizeof(host)) == NULL:
            return ""
        return (host.decode("ascii"), ntohs(v4.sin_port))
    if addr.ss_family == AF_INET6:
        v6 = <sockaddr_in6*>addr
        if inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof(host)) == NULL:
            return ""
        return (host.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo),
                v6.sin6_scope_id)
    return ""


cdef object _name_tuple(X509_NAME* name):
    """A Name as getpeercert() gives it: RDNs, each a tuple of (attribute, value)."""
    cdef char buf[256]
    cdef unsigned char* value = NULL
    cdef int i, n, level = -1, entry_set
    cdef X509_NAME_ENTRY* entry
    rdns = []
    rdn = []
    for i in range(X509_NAME_entry_count(name)):
        entry = X509_NAME_get_entry(name, i)
        entry_set = X509_NAME_ENTRY_set(entry)
        if rdn and entry_set != level:
            rdns.append(tuple(rdn))
            rdn = []
        level = entry_set
        n = OBJ_obj2txt(buf, sizeof(buf), X509_NAME_ENTRY_get_object(entry), 0)
        key = buf[:n].decode("ascii", "replace") if n > 0 else ""
        n = ASN1_STRING_to_UTF8(&value, X509_NAME_ENTRY_get_data(entry))
        if n < 0:
            ERR_clear_error()
            text = ""
        else:
            try:
                text = (<char*>value)[:n].decode("utf-8", "replace")
            finally:
                OPENSSL_free(value)
                value = NULL
        rdn.append((key, text))
    if rdn:
        rdns.append(tuple(rdn))
    return tuple(rdns)


cdef str _serial(X509* cert):
    cdef char buf[128]
    cdef int n
    cdef BIO* bio = BIO_new(BIO_s_mem())
    if bio == NULL:
        ERR_clear_error()
        return ""
    try:
        i2a_ASN1_INTEGER(bio, X509_get_serialNumber(cert))
        n = BIO_read(bio, buf, sizeof(buf))
        return buf[:n].decode("ascii", "replace") if n > 0 else ""
    finally:
        BIO_free(bio)


def openssl_version():
    """The version text of the libssl this module runs with (for `fastproxy --version`)."""
    return OpenSSL_version(OPENSSL_VERSION_STRING).decode("ascii", "replace")
