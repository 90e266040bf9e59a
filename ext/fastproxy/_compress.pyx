# cython: freethreading_compatible = False
"""Response compression on the request path: which coding a client gets
(`negotiate`, Accept-Encoding with q-values), whether a response is worth
compressing (`Policy.decide`), and the streaming encoders.

gzip is zlib's deflate called from C (one z_stream per response, taken from a
small per-worker pool and reset, so a response does not pay for zlib's 256 KiB
of state being allocated); brotli and zstd go through the `brotli` and
`zstandard` packages (their work per call is in C too; we call them once per
upstream read). An encoder is fed every piece of a body and asked, once per
upstream read, for what it has (`take`: a sync flush), so a stream of events
reaches the client as it comes, in one chunk per read, and memory stays bounded
by one read.
"""
cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport uint32_t
from libc.string cimport memcpy

from fastproxy._http cimport K_LENGTH, K_NONE, MessageHead
from fastproxy._httpcache cimport RouteCache, Stored
from fastproxy.ascii cimport equal_ci, is_lower_literal, lower

import brotli as _brotli
import zstandard as _zstd


cdef extern from "zlib.h" nogil:
    ctypedef struct z_stream:
        unsigned char* next_in   # (const only with ZLIB_CONST)
        unsigned int avail_in
        unsigned long total_in
        unsigned char* next_out
        unsigned int avail_out
        unsigned long total_out
        const char* msg
        void* zalloc
        void* zfree
        void* opaque
    int deflateInit2(z_stream* strm, int level, int method, int windowBits, int memLevel,
                     int strategy)
    int deflate(z_stream* strm, int flush)
    int deflateEnd(z_stream* strm)
    const char* zlibVersion()
    int deflateReset(z_stream* strm)
    int Z_OK
    int Z_STREAM_END
    int Z_BUF_ERROR
    int Z_NO_FLUSH
    int Z_SYNC_FLUSH
    int Z_FINISH
    int Z_DEFLATED
    int Z_DEFAULT_STRATEGY


# The names of the codings, by number; what the config calls them.
NAMES = {"gzip": C_GZIP, "br": C_BR, "zstd": C_ZSTD}
LEVELS = {"gzip": (1, 9), "br": (0, 11), "zstd": (1, 19)}
DEFAULT_LEVELS = {"gzip": 5, "br": 4, "zstd": 3}
DEFAULT_ALGORITHMS = ("zstd", "br", "gzip")
DEFAULT_MIN_SIZE = 256
DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/xhtml+xml",
    "application/wasm",
    "application/manifest+json",
    "application/x-ndjson",
    "application/graphql-response+json",
    "application/vnd.api+json",
    "application/x-www-form-urlencoded",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "image/bmp",
    "font/ttf",
    "font/otf",
    "application/vnd.ms-fontobject",
    "*/*+json",
    "*/*+xml",
)

cdef tuple _NAME_BYTES = (b"", b"gzip", b"br", b"zstd")


cdef bytes coding_name(int coding):
    return <bytes>_NAME_BYTES[coding]


# -- negotiation (RFC 9110 §12.5.3) ---------------------------------------------------

cdef inline bint _ows(char c) noexcept nogil:
    return c == b' ' or c == b'\t'


cdef int _qvalue(const char* v, size_t n) noexcept nogil:
    """A qvalue in thousandths ("0.5" -> 500), or -1 when it is not one."""
    cdef size_t i
    cdef int w = 0, scale = 100
    if n == 0 or (v[0] != b'0' and v[0] != b'1'):
        return -1
    if n > 1 and (v[1] != b'.' or n > 5):
        return -1
    for i in range(2, n):
        if v[i] < b'0' or v[i] > b'9':
            return -1
        w += (v[i] - 48) * scale
        scale //= 10
    if v[0] == b'1':
        return 1000 if w == 0 else -1
    return w


cdef int _coding_of(const char* t, size_t n) noexcept nogil:
    """C_* for a coding token; -2 for "*"; -1 for anything else."""
    if n == 1 and t[0] == b'*':
        return -2
    if is_lower_literal(t, n, b"gzip", 4) or is_lower_literal(t, n, b"x-gzip", 6):
        return C_GZIP
    if is_lower_literal(t, n, b"br", 2):
        return C_BR
    if is_lower_literal(t, n, b"zstd", 4):
        return C_ZSTD
    return -1


cdef void _parse_accept(const char* v, size_t n, int* q) noexcept nogil:
    """One Accept-Encoding value into q[C_*] (thousandths; q[0] is "*"). An element
    with a malformed weight is ignored; the first mention of a coding counts."""
    cdef size_t i = 0, start, tl, ps, pl, vs
    cdef int w, c
    cdef bint ok
    while i < n:
        while i < n and (_ows(v[i]) or v[i] == b','):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and v[i] != b',' and v[i] != b';' and not _ows(v[i]):
            i += 1
        tl = i - start
        w = 1000
        ok = True
        while True:
            while i < n and _ows(v[i]):
                i += 1
            if i >= n or v[i] != b';':
                break
            i += 1
            while i < n and _ows(v[i]):
                i += 1
            ps = i
            while i < n and v[i] != b'=' and v[i] != b',' and v[i] != b';' and not _ows(v[i]):
                i += 1
            pl = i - ps
            while i < n and _ows(v[i]):
                i += 1
            if i < n and v[i] == b'=':
                i += 1
                while i < n and _ows(v[i]):
                    i += 1
                vs = i
                while i < n and v[i] != b',' and v[i] != b';' and not _ows(v[i]):
                    i += 1
                if pl == 1 and lower(v[ps]) == b'q':
                    w = _qvalue(v + vs, i - vs)
                    if w < 0:
                        ok = False
            elif pl == 1 and lower(v[ps]) == b'q':
                ok = False
        if i < n and v[i] != b',':
            ok = False  # junk after the element: skip to the next one
            while i < n and v[i] != b',':
                i += 1
        if not ok or tl == 0:
            continue
        c = _coding_of(v + start, tl)
        if c == -2:
            c = 0
        if c >= 0 and q[c] < 0:
            q[c] = w


cdef int negotiate(MessageHead req, tuple codings) except -1:
    """The coding (C_*) of `codings` (server preference order) that the request's
    Accept-Encoding fields weigh highest, ties going to the earlier one; C_NONE
    when the client names none of them (nor "*") with a weight above 0, or sends
    no Accept-Encoding at all."""
    cdef int q[C_COUNT]
    cdef const uint32_t* o = req.offsets()
    cdef const char* raw = PyBytes_AS_STRING(req.raw)
    cdef int i, c, w, best = C_NONE, best_q = 0
    cdef bint seen = False
    for i in range(C_COUNT):
        q[i] = -1
    for i in range(req.header_count):
        if o[4 * i + 1] == 15 and is_lower_literal(raw + o[4 * i], 15, b"accept-encoding", 15):
            seen = True
            _parse_accept(raw + o[4 * i + 2], o[4 * i + 3], q)
    if not seen:
        return C_NONE
    for c in codings:
        w = q[c] if q[c] >= 0 else (q[0] if q[0] >= 0 else 0)
        if w > best_q:
            best = c
            best_q = w
    return best


def negotiate_header(value, codings=DEFAULT_ALGORITHMS):
    """Python entry for tests: the coding name chosen for an Accept-Encoding value
    (None: the header is absent) with the server order `codings`; None for identity."""
    cdef int q[C_COUNT]
    cdef int i, c, w, best = C_NONE, best_q = 0
    cdef bytes v
    if value is None:
        return None
    v = value.encode("latin-1") if isinstance(value, str) else bytes(value)
    for i in range(C_COUNT):
        q[i] = -1
    _parse_accept(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), q)
    for name in codings:
        c = NAMES[name]
        w = q[c] if q[c] >= 0 else (q[0] if q[0] >= 0 else 0)
        if w > best_q:
            best = c
            best_q = w
    return coding_name(best).decode() if best else None


# -- which responses --------------------------------------------------------------------

cdef inline bint _has_token(const char* v, size_t n, const char* tok, size_t tl) noexcept nogil:
    """Does the comma list `v` have the directive `tok` (lower case), alone or with =?"""
    cdef size_t i = 0, start
    while i < n:
        while i < n and (_ows(v[i]) or v[i] == b','):
            i += 1
        start = i
        while i < n and v[i] != b',' and v[i] != b'=' and not _ows(v[i]):
            i += 1
        if is_lower_literal(v + start, i - start, tok, tl):
            return True
        while i < n and v[i] != b',':
            i += 1
    return False


@cython.final
cdef class Policy:
    """A route's `compress` settings, compiled: the codings in server order, their
    levels, the smallest body worth it and the media types that compress."""

    def __cinit__(self, algorithms=DEFAULT_ALGORITHMS, levels=None, long long min_size=256,
                  types=DEFAULT_TYPES):
        cdef list exact = [], majors = [], suffixes = []
        self.codings = tuple(NAMES[a] for a in algorithms)
        for name, code in NAMES.items():
            self.levels[<int>code] = DEFAULT_LEVELS[name]
        for name, level in (levels or {}).items():
            self.levels[<int>NAMES[name]] = level
        self.min_size = min_size
        for t in types:
            t = t.lower().encode("ascii")
            if t.startswith(b"*/*+"):
                suffixes.append(t[3:])
            elif t.endswith(b"/*"):
                majors.append(t[:len(t) - 1])
            else:
                exact.append(t)
        self.exact = frozenset(exact)
        self.majors = tuple(majors)
        self.suffixes = tuple(suffixes)

    def level(self, str name):
        return self.levels[<int>NAMES[name]]

    cdef bint type_ok(self, const char* v, size_t n) except -1:
        """Is the media type of this Content-Type value one that compresses?"""
        cdef size_t i = 0, end
        cdef bytes mt, p
        while i < n and _ows(v[i]):
            i += 1
        end = i
        while end < n and v[end] != b';' and not _ows(v[end]):
            end += 1
        if end == i or end - i > 127:
            return False
        mt = PyBytes_FromStringAndSize(v + i, end - i).lower()
        if mt in self.exact:
            return True
        for p in self.majors:
            if mt.startswith(p):
                return True
        for p in self.suffixes:
            if mt.endswith(p):
                return True
        return False

    cdef int choose(self, MessageHead req) except -1:
        return negotiate(req, self.codings)

    cdef int choose_for(self, MessageHead req) except -1:
        """The coding for a compressible response to `req` (C_NONE for a HEAD or a
        request with Cache-Control: no-transform)."""
        if req.is_head_request:
            return C_NONE
        cc = req.get(b"cache-control")
        if cc is not None and _has_token(PyBytes_AS_STRING(cc), PyBytes_GET_SIZE(cc),
                                         b"no-transform", 12):
            return C_NONE
        return negotiate(req, self.codings)

    cdef int decide(self, MessageHead req, MessageHead resp) except -2:
        """D_SKIP, D_IDENTITY or the coding (C_*) for this response to this request."""
        cdef const uint32_t* o = resp.offsets()
        cdef const char* raw = PyBytes_AS_STRING(resp.raw)
        cdef const char* name
        cdef const char* v
        cdef size_t nl, vl
        cdef int i, status = resp.status
        cdef bint typed = False
        if status < 200 or status == 204 or status == 304 or status == 206:
            return D_SKIP
        if resp.body_kind == K_LENGTH and resp.content_length < self.min_size:
            return D_SKIP
        if resp.body_kind == K_NONE and not req.is_head_request:
            return D_SKIP
        for i in range(resp.header_count):
            name = raw + o[4 * i]
            nl = o[4 * i + 1]
            if lower(name[0]) != b'c':
                continue
            v = raw + o[4 * i + 2]
            vl = o[4 * i + 3]
            if nl == 12:
                if not typed and is_lower_literal(name, nl, b"content-type", 12):
                    if not self.type_ok(v, vl):
                        return D_SKIP
                    typed = True
            elif nl == 16:
                if is_lower_literal(name, nl, b"content-encoding", 16):
                    return D_SKIP
            elif nl == 13:
                if is_lower_literal(name, nl, b"content-range", 13):
                    return D_SKIP
                if is_lower_literal(name, nl, b"cache-control", 13) and \
                        _has_token(v, vl, b"no-transform", 12):
                    return D_SKIP
        if not typed:
            return D_SKIP
        return self.choose_for(req)

    def decide_fields(self, int status, list fields, long long length, bint head=False,
                      request_fields=None):
        """decide() for a stored response (fields as (name, value) pairs) and a
        request's fields (None: only whether it is compressible: D_IDENTITY)."""
        cdef bytes v
        typed = False
        if status < 200 or status == 204 or status == 304 or status == 206:
            return D_SKIP
        if length < self.min_size:
            return D_SKIP
        for name, value in fields:
            n = name.lower()
            if n == b"content-encoding" or n == b"content-range":
                return D_SKIP
            if n == b"cache-control":
                v = value
                if _has_token(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), b"no-transform", 12):
                    return D_SKIP
            elif n == b"content-type" and not typed:
                v = value
                if not self.type_ok(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)):
                    return D_SKIP
                typed = True
        return D_IDENTITY if typed else D_SKIP

    cdef Encoder encoder(self, int coding, long long length):
        return new_encoder(coding, self.levels[coding], length)

    def new_encoder(self, str name, long long length=-1):
        """An encoder for tests and benchmarks (feed/take/release from Python)."""
        return self.encoder(NAMES[name], length)


# -- encoders ---------------------------------------------------------------------------

cdef class Encoder:
    """Fed a body piece by piece; `take` returns the compressed bytes so far, flushed
    so that the client can decode everything fed (or the end of the stream)."""

    cdef int feed(self, object data) except -1:
        raise NotImplementedError

    cdef bytes take(self, bint final):
        raise NotImplementedError

    cdef int release(self) except -1:
        return 0

    def py_feed(self, data):
        self.feed(data)

    def py_take(self, bint final=False):
        return self.take(final)

    def py_release(self):
        self.release()


cdef enum:
    GZIP_POOL = 8          # reset z_streams kept per level, per worker
    OUT_START = 16384


cdef list _gzip_pool = [[] for _ in range(10)]


@cython.final
cdef class GzipEncoder(Encoder):
    cdef z_stream zs
    cdef bint ready
    cdef int level
    cdef char* buf
    cdef size_t len
    cdef size_t cap

    def __cinit__(self, int level):
        self.coding = C_GZIP
        self.level = level
        if deflateInit2(&self.zs, level, Z_DEFLATED, 16 + 15, 8, Z_DEFAULT_STRATEGY) != Z_OK:
            raise MemoryError("zlib: deflateInit2 failed")
        self.ready = True
        self.buf = <char*>PyMem_Malloc(OUT_START)
        if self.buf == NULL:
            raise MemoryError()
        self.cap = OUT_START

    def __dealloc__(self):
        if self.ready:
            deflateEnd(&self.zs)
        if self.buf != NULL:
            PyMem_Free(self.buf)

    cdef int _grow(self, size_t need) except -1:
        cdef size_t cap = self.cap
        cdef char* nb
        while cap - self.len < need:
            cap *= 2
        if cap != self.cap:
            nb = <char*>PyMem_Realloc(self.buf, cap)
            if nb == NULL:
                raise MemoryError()
            self.buf = nb
            self.cap = cap
        return 0

    cdef int _run(self, int flush) except -1:
        """deflate() until the input is used up (and, with a flush, all is out)."""
        cdef int rc
        while True:
            if self.cap - self.len < 64:
                self._grow(self.cap)
            self.zs.next_out = <unsigned char*>(self.buf + self.len)
            self.zs.avail_out = <unsigned int>(self.cap - self.len)
            rc = deflate(&self.zs, flush)
            self.len = self.cap - self.zs.avail_out
            if rc == Z_STREAM_END:
                return 0
            if rc != Z_OK and rc != Z_BUF_ERROR:
                raise RuntimeError(f"zlib: deflate failed ({rc})")
            if self.zs.avail_in == 0 and self.zs.avail_out != 0 and flush != Z_FINISH:
                return 0
            if rc == Z_BUF_ERROR and self.zs.avail_in == 0 and flush == Z_NO_FLUSH:
                return 0

    cdef int feed(self, object data) except -1:
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.taken_in += view.len
            self.pending = True
            self.zs.next_in = <unsigned char*>view.buf
            self.zs.avail_in = <unsigned int>view.len
            self._run(Z_NO_FLUSH)
        finally:
            self.zs.next_in = NULL
            self.zs.avail_in = 0
            PyBuffer_Release(&view)
        return 0

    cdef bytes take(self, bint final):
        cdef bytes out
        if self.done:
            return b""
        self.pending = False
        self._run(Z_FINISH if final else Z_SYNC_FLUSH)
        if final:
            self.done = True
        out = PyBytes_FromStringAndSize(self.buf, self.len)
        self.len = 0
        return out

    cdef int release(self) except -1:
        cdef list pool = <list>_gzip_pool[self.level]
        if len(pool) < GZIP_POOL and deflateReset(&self.zs) == Z_OK:
            self.done = False
            self.pending = False
            self.taken_in = 0
            self.len = 0
            if self.cap > 1 << 20:  # a burst of output: do not keep a big buffer
                PyMem_Free(self.buf)
                self.buf = <char*>PyMem_Malloc(OUT_START)
                if self.buf == NULL:
                    self.cap = 0
                    raise MemoryError()
                self.cap = OUT_START
            pool.append(self)
        return 0


@cython.final
cdef class BrotliEncoder(Encoder):
    cdef object comp
    cdef list parts

    def __cinit__(self, int level, long long length):
        cdef int lgwin = 19  # 512 KiB: what an on-the-fly encoder needs at most
        if length >= 0:
            while lgwin > 16 and (1 << (lgwin - 1)) >= length:
                lgwin -= 1
        self.coding = C_BR
        self.comp = _brotli.Compressor(mode=_brotli.MODE_TEXT, quality=level, lgwin=lgwin)
        self.parts = []

    cdef int feed(self, object data) except -1:
        self.taken_in += len(data)
        self.pending = True
        out = self.comp.process(data)
        if out:
            self.parts.append(out)
        return 0

    cdef bytes take(self, bint final):
        cdef bytes out
        if self.done:
            return b""
        self.pending = False
        if final:
            self.done = True
            self.parts.append(self.comp.finish())
        else:
            self.parts.append(self.comp.flush())
        out = b"".join(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts.clear()
        return out


cdef list _zstd_pool = [[] for _ in range(23)]
cdef object _FLUSH_BLOCK = _zstd.COMPRESSOBJ_FLUSH_BLOCK
cdef object _FLUSH_FINISH = _zstd.COMPRESSOBJ_FLUSH_FINISH


@cython.final
cdef class ZstdEncoder(Encoder):
    cdef object comp        # a ZstdCompressor: one stream at a time, so pooled with us
    cdef object stream
    cdef int level
    cdef list parts

    def __cinit__(self, int level):
        self.coding = C_ZSTD
        self.level = level
        self.comp = _zstd.ZstdCompressor(level=level)
        self.parts = []

    cdef int start(self, long long length) except -1:
        self.stream = self.comp.compressobj(size=length if length >= 0 else -1)
        return 0

    cdef int feed(self, object data) except -1:
        self.taken_in += len(data)
        self.pending = True
        out = self.stream.compress(data)
        if out:
            self.parts.append(out)
        return 0

    cdef bytes take(self, bint final):
        cdef bytes out
        if self.done:
            return b""
        self.pending = False
        if final:
            self.done = True
            self.parts.append(self.stream.flush(_FLUSH_FINISH))
        else:
            self.parts.append(self.stream.flush(_FLUSH_BLOCK))
        out = b"".join(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts.clear()
        return out

    cdef int release(self) except -1:
        cdef list pool = <list>_zstd_pool[self.level]
        self.stream = None
        if len(pool) < GZIP_POOL:
            self.done = False
            self.pending = False
            self.taken_in = 0
            self.parts.clear()
            pool.append(self)
        return 0


cdef Encoder new_encoder(int coding, int level, long long length):
    """An encoder for one response (`length`: its size when known, else -1)."""
    cdef list pool
    cdef ZstdEncoder z
    if coding == C_GZIP:
        pool = <list>_gzip_pool[level]
        if pool:
            return <Encoder>pool.pop()
        return GzipEncoder(level)
    if coding == C_ZSTD:
        pool = <list>_zstd_pool[level]
        z = <ZstdEncoder>pool.pop() if pool else ZstdEncoder(level)
        z.start(length)
        return z
    return BrotliEncoder(level, length)


cdef bytes compress_whole(int coding, int level, bytes body):
    """`body` in one piece (a stored response's encoded variant)."""
    cdef Encoder enc = new_encoder(coding, level, len(body))
    cdef bytes out
    enc.feed(body)
    out = enc.take(True)
    enc.release()
    return out


def compress(str name, int level, bytes body not None):
    """`body` compressed with coding `name` at `level` in one piece."""
    return compress_whole(NAMES[name], level, body)


# -- stored responses (the cache) --------------------------------------------------------

cdef bytes rewrite_prefix(bytes prefix, bint encoded):
    """A stored response's prefix (status line and fields) for a compressible
    response: Vary with Accept-Encoding; when `encoded`, also no Accept-Ranges and
    a weak ETag."""
    cdef list lines = prefix.split(b"\r\n")
    cdef list out = [lines[0]]
    cdef list vary = []
    for line in lines[1:]:
        if not line:
            continue
        name = line.partition(b":")[0].strip().lower()
        if name == b"vary":
            vary.append(line.partition(b":")[2].strip())
            continue
        if encoded:
            if name == b"accept-ranges":
                continue
            if name == b"etag":
                value = line.partition(b":")[2].strip()
                if value.startswith(b'"'):
                    line = line.partition(b":")[0] + b": W/" + value
        out.append(line)
    tokens = [t.strip().lower() for v in vary for t in v.split(b",")]
    if b"accept-encoding" not in tokens and b"*" not in tokens:
        vary.append(b"Accept-Encoding")
    out.append(b"Vary: " + b", ".join(v for v in vary if v))
    return b"\r\n".join(out) + b"\r\n"


@cython.final
cdef class StoredForm:
    """What a route's compression makes of one stored response, computed once: whether
    it compresses, its heads, and its body in each coding asked so far (counted
    against the cache's budget with the stored response, dropped with it)."""

    def __cinit__(self, Stored stored, Policy policy):
        self.compressible = policy.decide_fields(stored.status, stored.headers,
                                                 len(stored.body)) == D_IDENTITY
        self.bodies = {}
        if self.compressible:
            self.vary_prefix = rewrite_prefix(stored.prefix, False)
            self.enc_prefix = rewrite_prefix(stored.prefix, True)

    cdef int keep(self, RouteCache cache, uint64_t primary, Stored stored, int coding,
                  bytes data) except -1:
        if coding not in self.bodies and cache.charge(primary, stored, len(data)):
            self.bodies[coding] = data
        return 0

    cdef bytes body(self, RouteCache cache, uint64_t primary, Stored stored, Policy policy,
                    int coding):
        """The body in `coding`: compressed on the first request for it, then kept."""
        data = self.bodies.get(coding)
        if data is None:
            data = compress_whole(coding, policy.levels[coding], stored.body)
            self.keep(cache, primary, stored, coding, data)
        return <bytes>data

    def encoded(self, RouteCache cache not None, uint64_t primary, Stored stored not None,
                Policy policy not None, str name):
        """body() from Python (tests): the stored body in coding `name`."""
        return self.body(cache, primary, stored, policy, NAMES[name])


def form_of(Stored stored not None, Policy policy not None):
    """The StoredForm of `stored` for `policy` (made on first use)."""
    return stored_form(stored, policy)


cdef StoredForm stored_form(Stored stored, Policy policy):
    cdef dict forms = stored.encodings
    if forms is None:
        forms = {}
        stored.encodings = forms
    form = forms.get(policy)
    if form is None:
        form = StoredForm(stored, policy)
        forms[policy] = form
    return <StoredForm>form


def zlib_version():
    """The version of the zlib this module runs with (for `fastproxy --version`)."""
    return zlibVersion().decode("ascii", "replace")
