"""Header rewriting: build the upstream request head and the client response head.

Each head is serialized into one buffer that starts on the C stack and moves
to the heap only if it outgrows it, then becomes one bytes object. Hop-by-hop
headers (RFC 9110 §7.6.1) are dropped, including every header the Connection
header names; framing headers are written by us from the parsed framing, never
copied, so the next hop cannot read the body boundaries differently.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from fastproxy.ascii cimport equal_ci, is_lower_literal, lower
from fastproxy._http cimport K_CHUNKED, K_LENGTH, MessageHead

# Response framing chosen by the proxy for the client side.
FRAME_PASS = FR_PASS
FRAME_CHUNKED = FR_CHUNKED
FRAME_CLOSE = FR_CLOSE

cdef enum:
    STACK_BUF = 4096


cdef struct Writer:
    char* data
    size_t len
    size_t cap
    bint heap


cdef inline int w_reserve(Writer* w, size_t extra, char* stack) except -1:
    cdef size_t need = w.len + extra
    cdef size_t cap
    cdef char* nb
    if need <= w.cap:
        return 0
    cap = w.cap * 2
    while cap < need:
        cap *= 2
    nb = <char*>PyMem_Malloc(cap)
    if nb == NULL:
        raise MemoryError()
    memcpy(nb, w.data, w.len)
    if w.heap:
        PyMem_Free(w.data)
    w.data = nb
    w.cap = cap
    w.heap = True
    return 0


cdef inline int w_put(Writer* w, const char* s, size_t n, char* stack) except -1:
    w_reserve(w, n, stack)
    memcpy(w.data + w.len, s, n)
    w.len += n
    return 0


cdef inline int w_bytes(Writer* w, bytes b, char* stack) except -1:
    return w_put(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b), stack)


cdef inline size_t _next_token(const char* v, size_t vl, size_t* pos,
                               size_t* start) noexcept nogil:
    """The next comma-separated token of `v` at or after *pos, without surrounding
    blanks: its offset in *start, its length returned (0 when empty). *pos moves past it."""
    cdef size_t j = pos[0], end
    while j < vl and (v[j] == b' ' or v[j] == b'\t' or v[j] == b','):
        j += 1
    start[0] = j
    while j < vl and v[j] != b',':
        j += 1
    end = j
    while end > start[0] and (v[end - 1] == b' ' or v[end - 1] == b'\t'):
        end -= 1
    pos[0] = j
    return end - start[0]


cdef bint _listed(const char* v, size_t vl, const char* name, size_t nl) noexcept nogil:
    """Is `name` one of the comma-separated tokens in `v` (case-insensitive)?"""
    cdef size_t j = 0, start, n
    while j < vl:
        n = _next_token(v, vl, &j, &start)
        if n == nl and equal_ci(v + start, name, nl):
            return True
    return False


cdef bint _named_by_connection(MessageHead head, const char* name, size_t nl) noexcept:
    """Does any Connection header of `head` list `name`? (RFC 9110 §7.6.1)"""
    cdef const uint32_t* o = head.offsets()
    cdef const char* raw = PyBytes_AS_STRING(head.raw)
    cdef int i
    for i in range(head.header_count):
        if is_lower_literal(raw + o[4 * i], o[4 * i + 1], b"connection", 10):
            if _listed(raw + o[4 * i + 2], o[4 * i + 3], name, nl):
                return True
    return False


cdef bint _connection_names_more(MessageHead head) noexcept:
    """Does a Connection header list anything besides keep-alive (whose header we drop anyway)?"""
    cdef const uint32_t* o = head.offsets()
    cdef const char* raw = PyBytes_AS_STRING(head.raw)
    cdef const char* v
    cdef size_t j, vl, start, n
    cdef int i
    for i in range(head.header_count):
        if not is_lower_literal(raw + o[4 * i], o[4 * i + 1], b"connection", 10):
            continue
        v = raw + o[4 * i + 2]
        vl = o[4 * i + 3]
        j = 0
        while j < vl:
            n = _next_token(v, vl, &j, &start)
            if n and not is_lower_literal(v + start, n, b"keep-alive", 10):
                return True
    return False


cdef enum HeaderClass:
    H_KEEP = 0
    H_DROP = 1
    H_XFF = 2
    H_VIA = 3
    H_CONTENT_LENGTH = 4


cdef inline int _classify(const char* name, size_t n, bint request) noexcept nogil:
    """What to do with one header when forwarding it."""
    cdef char c = lower(name[0]) if n else 0
    if c == b'c':
        if is_lower_literal(name, n, b"connection", 10):
            return H_DROP
        if is_lower_literal(name, n, b"content-length", 14):
            return H_CONTENT_LENGTH
    elif c == b'k':
        if is_lower_literal(name, n, b"keep-alive", 10):
            return H_DROP
    elif c == b'p':
        if is_lower_literal(name, n, b"proxy-connection", 16):
            return H_DROP
    elif c == b't':
        if is_lower_literal(name, n, b"te", 2) or is_lower_literal(name, n, b"trailer", 7) or is_lower_literal(name, n, b"transfer-encoding", 17):
            return H_DROP
    elif c == b'u':
        if is_lower_literal(name, n, b"upgrade", 7):
            return H_DROP
    elif c == b'h':
        if is_lower_literal(name, n, b"http2-settings", 14):
            return H_DROP
        if request and is_lower_literal(name, n, b"host", 4):
            return H_DROP
    elif c == b'v':
        if is_lower_literal(name, n, b"via", 3):
            return H_VIA
    elif c == b'x' and request:
        if is_lower_literal(name, n, b"x-forwarded-for", 15):
            return H_XFF
        if is_lower_literal(name, n, b"x-forwarded-proto", 17) or is_lower_literal(name, n, b"x-forwarded-host", 16):
            return H_DROP
    elif c == b'e' and request:
        if is_lower_literal(name, n, b"expect", 6):
            return H_DROP  # the proxy answers 100-continue itself
    return H_KEEP


cdef bint _dropped(const char* name, size_t nl, tuple drop) noexcept:
    """Is `name` one of the lower-case names in `drop` (header edits)?"""
    cdef bytes d
    for d in drop:
        if is_lower_literal(name, nl, PyBytes_AS_STRING(d), PyBytes_GET_SIZE(d)):
            return True
    return False


cdef int _copy_headers(Writer* w, char* stack, MessageHead head, bint request,
                       Writer* xff, Writer* via, bint keep_length, tuple drop,
                       int comp=0, Writer* vary=NULL) except -1:
    cdef const uint32_t* o = head.offsets()
    cdef const char* raw = PyBytes_AS_STRING(head.raw)
    cdef const char* name
    cdef size_t nl, vl
    cdef int i, cls
    cdef Writer* target
    # Headers named by Connection are dropped; the usual "keep-alive" names none we keep.
    cdef bint check_connection = head.has_connection_header and _connection_names_more(head)
    for i in range(head.header_count):
        name = raw + o[4 * i]
        nl = o[4 * i + 1]
        cls = _classify(name, nl, request)
        if cls == H_DROP:
            continue
        if cls == H_CONTENT_LENGTH and not keep_length:
            continue
        # Framing is ours: a Connection token cannot remove Content-Length.
        if check_connection and cls != H_CONTENT_LENGTH and _named_by_connection(head, name, nl):
            continue
        if drop and cls == H_KEEP and _dropped(name, nl, drop):
            continue
        vl = o[4 * i + 3]
        if comp and cls == H_KEEP:
            # Compression (see _compress): Vary gains Accept-Encoding; an encoded
            # body has no byte ranges and only a weak ETag (as nginx does).
            if comp & COMP_VARY and is_lower_literal(name, nl, b"vary", 4):
                if vary.len:
                    w_put(vary, b", ", 2, NULL)
                w_put(vary, raw + o[4 * i + 2], vl, NULL)
                continue
            if comp & COMP_ENCODED:
                if is_lower_literal(name, nl, b"accept-ranges", 13):
                    continue
                if is_lower_literal(name, nl, b"etag", 4) and vl and raw[o[4 * i + 2]] == b'"':
                    w_put(w, name, nl, stack)
                    w_put(w, b": W/", 4, stack)
                    w_put(w, raw + o[4 * i + 2], vl, stack)
                    w_put(w, b"\r\n", 2, stack)
                    continue
        if cls == H_XFF or cls == H_VIA:
            # Several fields of one name combine into one list (RFC 9110 §5.3).
            target = xff if cls == H_XFF else via
            if target.len:
                w_put(target, b", ", 2, NULL)
            w_put(target, raw + o[4 * i + 2], vl, NULL)
            continue
        # "Name: value\r\n" with one capacity check.
        w_reserve(w, nl + vl + 4, stack)
        out = w.data + w.len
        memcpy(out, name, nl)
        out[nl] = b':'
        out[nl + 1] = b' '
        memcpy(out + nl + 2, raw + o[4 * i + 2], vl)
        out[nl + 2 + vl] = b'\r'
        out[nl + 3 + vl] = b'\n'
        w.len += nl + vl + 4
    return 0


cdef int _put_list(Writer* w, char* stack, const char* name, size_t nl, Writer* prior,
                   bytes own) except -1:
    w_put(w, name, nl, stack)
    if prior.len:
        w_put(w, prior.data, prior.len, stack)
        if own:
            w_put(w, b", ", 2, stack)
    w_bytes(w, own, stack)
    w_put(w, b"\r\n", 2, stack)
    return 0


cdef int _put_length(Writer* w, char* stack, long long n) except -1:
    cdef char num[64]
    cdef int k = snprintf(num, 64, b"Content-Length: %lld\r\n", n)
    w_put(w, num, k, stack)
    return 0


cdef inline void _free(Writer* w) noexcept:
    if w.heap:
        PyMem_Free(w.data)


def build_request_head(MessageHead head not None, bytes target not None, bytes host not None,
                       bytes client_ip not None, bytes proto not None, bytes via not None,
                       tuple drop=(), bytes extra=b"", bytes forwarded_host=None):
    """The head we send upstream for `head`, as one bytes object.

    `target` is origin-form; `host` goes into Host, and into X-Forwarded-Host
    unless `forwarded_host` (the client's host when a route rewrote Host) is
    given; `client_ip` is appended to X-Forwarded-For; `via` (b"" for none) is
    our Via entry, e.g. b"1.1 fastproxy". Header edits: fields named in `drop`
    (lower-case) are left out and `extra` (complete header lines) is added.
    """
    return request_head(head, target, host, client_ip, proto, via, drop, extra,
                        forwarded_host if forwarded_host is not None else host)


def build_response_head(MessageHead head not None, int framing, bint keep_alive,
                        int client_minor, bytes via not None, tuple drop=(), bytes extra=b"",
                        bytes coding=None, bint vary=False):
    """The head we send to the client for the upstream response `head`; with
    `coding`, for its body encoded so (Content-Encoding added, Content-Length and
    Accept-Ranges left out, a strong ETag made weak); with `vary`, Accept-Encoding
    merged into Vary."""
    return response_head(head, framing, keep_alive, client_minor, via, drop, extra, coding,
                         vary)


# The C entry points (see _rewrite.pxd); arguments are never None.
cdef bytes request_head(MessageHead head, bytes target, bytes host, bytes client_ip,
                        bytes proto, bytes via, tuple drop, bytes extra,
                        bytes forwarded_host):
    cdef char stack[STACK_BUF]
    cdef char xbuf[256]
    cdef char vbuf[256]
    cdef Writer w
    cdef Writer xff
    cdef Writer vw
    w.data = stack; w.len = 0; w.cap = STACK_BUF; w.heap = False
    xff.data = xbuf; xff.len = 0; xff.cap = 256; xff.heap = False
    vw.data = vbuf; vw.len = 0; vw.cap = 256; vw.heap = False
    try:
        w_bytes(&w, head.method, stack)
        w_put(&w, b" ", 1, stack)
        w_bytes(&w, target, stack)
        w_put(&w, b" HTTP/1.1\r\nHost: ", 17, stack)
        w_bytes(&w, host, stack)
        w_put(&w, b"\r\n", 2, stack)
        _copy_headers(&w, stack, head, True, &xff, &vw, False, drop)
        if extra:
            w_bytes(&w, extra, stack)
        _put_list(&w, stack, b"X-Forwarded-For: ", 17, &xff, client_ip)
        w_put(&w, b"X-Forwarded-Proto: ", 19, stack)
        w_bytes(&w, proto, stack)
        w_put(&w, b"\r\nX-Forwarded-Host: ", 20, stack)
        w_bytes(&w, forwarded_host, stack)
        w_put(&w, b"\r\n", 2, stack)
        if via:
            _put_list(&w, stack, b"Via: ", 5, &vw, via)
        elif vw.len:
            _put_list(&w, stack, b"Via: ", 5, &vw, b"")
        if head.body_kind == K_LENGTH:
            _put_length(&w, stack, head.content_length)
        elif head.body_kind == K_CHUNKED:
            w_put(&w, b"Transfer-Encoding: chunked\r\n", 28, stack)
        w_put(&w, b"\r\n", 2, stack)
        return PyBytes_FromStringAndSize(w.data, w.len)
    finally:
        _free(&w)
        _free(&xff)
        _free(&vw)


cdef bytes response_head(MessageHead head, int framing, bint keep_alive, int client_minor,
                         bytes via, tuple drop, bytes extra, bytes coding=None,
                         bint vary=False):
    cdef char stack[STACK_BUF]
    cdef char vbuf[256]
    cdef char varybuf[256]
    cdef char line[64]
    cdef Writer w
    cdef Writer vw
    cdef Writer vy
    cdef Writer unused
    cdef int k
    cdef int comp = (COMP_VARY if vary else 0) | (COMP_ENCODED if coding is not None else 0)
    w.data = stack; w.len = 0; w.cap = STACK_BUF; w.heap = False
    vw.data = vbuf; vw.len = 0; vw.cap = 256; vw.heap = False
    vy.data = varybuf; vy.len = 0; vy.cap = 256; vy.heap = False
    unused.data = NULL; unused.len = 0; unused.cap = 0; unused.heap = False
    try:
        # "HTTP/1.1 NNN " (the parser guarantees 100 <= status <= 999)
        memcpy(line, b"HTTP/1.1 ", 9)
        line[9] = <char>(48 + head.status // 100)
        line[10] = <char>(48 + head.status // 10 % 10)
        line[11] = <char>(48 + head.status % 10)
        line[12] = b' '
        w_put(&w, line, 13, stack)
        w_bytes(&w, head.reason, stack)
        w_put(&w, b"\r\n", 2, stack)
        _copy_headers(&w, stack, head, False, &unused, &vw,
                      framing == FR_PASS and coding is None, drop, comp, &vy)
        if extra:
            w_bytes(&w, extra, stack)
        if via:
            _put_list(&w, stack, b"Via: ", 5, &vw, via)
        elif vw.len:
            _put_list(&w, stack, b"Via: ", 5, &vw, b"")
        if vary:
            if vy.len and (_listed(vy.data, vy.len, b"accept-encoding", 15)
                           or _listed(vy.data, vy.len, b"*", 1)):
                _put_list(&w, stack, b"Vary: ", 6, &vy, b"")
            else:
                _put_list(&w, stack, b"Vary: ", 6, &vy, b"Accept-Encoding")
        if coding is not None:
            w_put(&w, b"Content-Encoding: ", 18, stack)
            w_bytes(&w, coding, stack)
            w_put(&w, b"\r\n", 2, stack)
        if framing == FR_CHUNKED:
            w_put(&w, b"Transfer-Encoding: chunked\r\n", 28, stack)
        if not keep_alive:
            w_put(&w, b"Connection: close\r\n", 19, stack)
        elif client_minor == 0:
            w_put(&w, b"Connection: keep-alive\r\n", 24, stack)
        w_put(&w, b"\r\n", 2, stack)
        return PyBytes_FromStringAndSize(w.data, w.len)
    finally:
        _free(&w)
        _free(&vw)
        _free(&vy)
